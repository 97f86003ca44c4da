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

/// A busy script holds its shared backend connection; SCRIPT KILL must not
/// queue behind it: it reaches the server at once and frees everyone.
#[test]
fn script_kill_reaches_a_busy_server() {
    // Redis takes other commands (SCRIPT KILL among them) once a script has
    // run past busy-reply-threshold.
    let busy_after = ["--busy-reply-threshold", "100"];
    let (session, cache, realtime) = (
        RedisServer::start_with(&busy_after),
        RedisServer::start_with(&busy_after),
        RedisServer::start_with(&busy_after),
    );
    let keyway = Keyway::start(&reference_config(
        &session.url(),
        &cache.url(),
        &realtime.url(),
    ));
    let port = keyway.port;
    const BUSY: &str = "local t = redis.call('TIME') local s = t[1] while true do local n = redis.call('TIME') if n[1] - s > 5 then break end end return 1";
    let busy = std::thread::spawn(move || {
        let mut c = connect(port);
        redis::cmd("EVAL")
            .arg(BUSY)
            .arg(1)
            .arg("user:busy")
            .query::<i64>(&mut c)
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    let started = std::time::Instant::now();
    let killed: String = redis::cmd("SCRIPT")
        .arg("KILL")
        .query(&mut keyway.client())
        .unwrap();
    assert_eq!(killed, "OK");
    let err = busy.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    let v: Option<String> = redis::cmd("GET")
        .arg("user:other")
        .query(&mut keyway.client())
        .unwrap();
    assert_eq!(v, None);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "killed and served in {:?}",
        started.elapsed()
    );
    // With nothing running, Redis's own answer.
    let err = redis::cmd("SCRIPT")
        .arg("KILL")
        .query::<String>(&mut keyway.client())
        .unwrap_err();
    assert_eq!(err.code(), Some("NOTBUSY"), "{err}");
}
