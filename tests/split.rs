//! Multi-key commands: split across pools and merged with Redis's own
//! semantics, or refused with CROSSPOOL when they cannot be split, in which
//! case nothing is executed anywhere.

mod support;

use redis::Commands;
use support::*;

#[test]
fn mget_keeps_order_across_pools() {
    let r = Reference::start();
    let mut c = r.client();
    let _: () = redis::cmd("MSET")
        .arg(&[
            "session:1",
            "s1",
            "user:1",
            "u1",
            "rate:1",
            "r1",
            "session:2",
            "s2",
        ])
        .query(&mut c)
        .unwrap();
    // MSET split: every part applied on its own pool.
    let s: Vec<String> = r.session.direct().keys("*").unwrap();
    let mut s = s;
    s.sort();
    assert_eq!(s, ["session:1", "session:2"]);
    let u: Option<String> = r.cache.direct().get("user:1").unwrap();
    assert_eq!(u.as_deref(), Some("u1"));

    let got: Vec<Option<String>> = c
        .mget(&[
            "rate:1",
            "session:2",
            "missing",
            "user:1",
            "session:1",
            "rate:1",
        ])
        .unwrap();
    assert_eq!(
        got,
        [
            Some("r1"),
            Some("s2"),
            None,
            Some("u1"),
            Some("s1"),
            Some("r1")
        ]
        .map(|v| v.map(String::from))
    );
}

#[test]
fn counts_are_summed() {
    let r = Reference::start();
    let mut c = r.client();
    let _: () = c
        .mset(&[("session:a", 1), ("user:a", 2), ("rate:a", 3)])
        .unwrap();
    let n: i64 = redis::cmd("EXISTS")
        .arg(&["session:a", "user:a", "rate:a", "nope", "user:a"])
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 4, "EXISTS counts duplicates, as Redis does");
    let n: i64 = redis::cmd("TOUCH")
        .arg(&["session:a", "rate:a", "nope"])
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 2);
    let n: i64 = c.del(&["session:a", "user:a", "nope"]).unwrap();
    assert_eq!(n, 2);
    let n: i64 = redis::cmd("UNLINK")
        .arg(&["rate:a", "session:a"])
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let left: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(left, 0);
}

#[test]
fn non_splittable_cross_pool_commands_are_refused_and_run_nowhere() {
    let r = Reference::start();
    let mut c = r.client();
    let _: () = c.set("session:x", "1").unwrap();
    let _: () = c.set("user:x", "2").unwrap();
    let cases: Vec<redis::Cmd> = vec![
        redis::cmd("RENAME").arg("session:x").arg("user:y").clone(),
        redis::cmd("MSETNX")
            .arg(&["session:n", "1", "user:n", "2"])
            .clone(),
        redis::cmd("SUNIONSTORE")
            .arg(&["user:dst", "session:x", "user:x"])
            .clone(),
        redis::cmd("SMOVE")
            .arg(&["session:x", "user:x", "m"])
            .clone(),
        redis::cmd("EVAL")
            .arg("return redis.call('SET', KEYS[1], 1)")
            .arg(2)
            .arg("session:e")
            .arg("user:e")
            .clone(),
    ];
    for cmd in cases {
        let err = cmd.query::<redis::Value>(&mut c).unwrap_err();
        assert_eq!(err.code(), Some("CROSSPOOL"), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("keys of this command map to pools 'session' and 'cache'")
                || text.contains("keys of this command map to pools 'cache' and 'session'"),
            "{text}"
        );
    }
    // Nothing ran: the source keys are untouched and no new keys appeared.
    let mut s = r.session.direct();
    let mut ca = r.cache.direct();
    let keys: Vec<String> = s.keys("*").unwrap();
    assert_eq!(keys, ["session:x"]);
    let mut keys: Vec<String> = ca.keys("*").unwrap();
    keys.sort();
    assert_eq!(keys, ["user:x"]);
    // The connection is still usable after the refusals.
    let v: String = c.get("user:x").unwrap();
    assert_eq!(v, "2");
}

#[test]
fn same_pool_multi_key_commands_pass_through() {
    let r = Reference::start();
    let mut c = r.client();
    let _: () = c.set("session:from", "v").unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("session:from")
        .arg("session:to")
        .query(&mut c)
        .unwrap();
    let v: String = r.session.direct().get("session:to").unwrap();
    assert_eq!(v, "v");
    let n: i64 = redis::cmd("EVAL")
        .arg("return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])")
        .arg(2)
        .arg("rate:a")
        .arg("rate:b")
        .arg(5)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 10);
    let v: i64 = r.realtime.direct().get("rate:b").unwrap();
    assert_eq!(v, 5);
}
