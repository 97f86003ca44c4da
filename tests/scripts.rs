//! Scripts and functions: EVAL family routes by declared keys, SCRIPT LOAD
//! and FUNCTION LOAD reach every pool so EVALSHA works wherever keys land.

mod support;

use support::*;

#[test]
fn script_load_fans_out_so_evalsha_works_in_every_pool() {
    // SCRIPT FLUSH empties every tenant's script cache: lifted explicitly.
    let r = Reference::start_with("[policy]\nallow = [\"SCRIPT FLUSH\"]\n");
    let mut c = r.client();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('INCR', KEYS[1])")
        .query(&mut c)
        .unwrap();
    for key in ["session:n", "user:n", "rate:n"] {
        let v: i64 = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(key)
            .query(&mut c)
            .unwrap();
        assert_eq!(v, 1, "{key}");
    }
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000")
        .query(&mut c)
        .unwrap();
    assert_eq!(exists, [1, 0]);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    let err = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg("user:n")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOSCRIPT"), "{err}");
    let ro: i64 = redis::cmd("EVAL_RO")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("rate:n")
        .query(&mut c)
        .unwrap();
    assert_eq!(ro, 1);
}

#[test]
fn functions_load_everywhere_and_fcall_routes_by_key() {
    // FUNCTION DELETE removes a library every tenant may call: lifted explicitly.
    let r = Reference::start_with("[policy]\nallow = [\"FUNCTION DELETE\"]\n");
    let mut c = r.client();
    let lib = "#!lua name=kw\nredis.register_function('bump', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut c)
        .unwrap();
    assert_eq!(name, "kw");
    let v: i64 = redis::cmd("FCALL")
        .arg("bump")
        .arg(1)
        .arg("session:f")
        .arg(3)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 3);
    let v: i64 = redis::cmd("FCALL")
        .arg("bump")
        .arg(1)
        .arg("rate:f")
        .arg(4)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 4);
    let v: i64 = redis::cmd("GET")
        .arg("rate:f")
        .query(&mut r.realtime.direct())
        .unwrap();
    assert_eq!(v, 4);
    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("kw")
        .query(&mut c)
        .unwrap();
    let err = redis::cmd("FCALL")
        .arg("bump")
        .arg(1)
        .arg("user:f")
        .arg(1)
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("Function not found"), "{err}");
}
