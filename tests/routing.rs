//! Routing: each key lands on the pool its prefix names, checked on the
//! backends directly; command and db rules apply where the key says nothing.

mod support;

use redis::Commands;
use support::*;

fn exists(conn: &mut redis::Connection, key: &str) -> bool {
    conn.exists(key).expect("EXISTS")
}

#[test]
fn keys_land_on_the_pool_of_their_prefix() {
    let r = Reference::start();
    let mut c = r.client();
    let _: () = c.set("session:abc", "token").unwrap();
    let _: () = c.set("user:42:profile", "{\"name\":\"a\"}").unwrap();
    let n: i64 = c.incr("rate:api:42:chat", 1).unwrap();
    assert_eq!(n, 1);
    let _: () = c.set("unprefixed", "x").unwrap();

    let (mut s, mut ca, mut rt) = (r.session.direct(), r.cache.direct(), r.realtime.direct());
    assert!(
        exists(&mut s, "session:abc")
            && !exists(&mut ca, "session:abc")
            && !exists(&mut rt, "session:abc")
    );
    assert!(exists(&mut ca, "user:42:profile") && !exists(&mut s, "user:42:profile"));
    assert!(exists(&mut rt, "rate:api:42:chat") && !exists(&mut ca, "rate:api:42:chat"));
    assert!(
        exists(&mut ca, "unprefixed"),
        "the default pool takes unprefixed keys"
    );

    // And the client reads back what it wrote, as from one Redis.
    let v: String = c.get("session:abc").unwrap();
    assert_eq!(v, "token");
    let v: i64 = c.get("rate:api:42:chat").unwrap();
    assert_eq!(v, 1);
}

#[test]
fn selected_db_is_kept_and_db_rules_route() {
    let r = Reference::start();
    let mut c = r.client();
    redis::cmd("SELECT").arg(3).query::<()>(&mut c).unwrap();
    let _: () = c.set("plain", "in-db3").unwrap();
    let _: () = c.set("user:7", "prefix-wins").unwrap();

    let mut s = r.session.direct();
    redis::cmd("SELECT").arg(3).query::<()>(&mut s).unwrap();
    assert!(
        exists(&mut s, "plain"),
        "db 3 routes to session and stays db 3"
    );
    let mut ca = r.cache.direct();
    redis::cmd("SELECT").arg(3).query::<()>(&mut ca).unwrap();
    assert!(
        exists(&mut ca, "user:7"),
        "a matching prefix wins over the db rule"
    );

    let err = redis::cmd("SELECT")
        .arg(16)
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(
        err.to_string().contains("DB index is out of range"),
        "{err}"
    );
}

#[test]
fn command_rules_route_keyless_and_index_commands() {
    let session = RedisServer::start();
    let cache = RedisServer::start();
    let realtime = RedisServer::start();
    let config = reference_config(&session.url(), &cache.url(), &realtime.url()).replace(
        r#"commands = [{ command = "TS.*", pool = "realtime" }]"#,
        r#"commands = [{ command = "PF*", pool = "realtime" }]"#,
    );
    let kw = Keyway::start(&config);
    let mut c = kw.client();
    let added: i64 = redis::cmd("PFADD")
        .arg("hll:visitors")
        .arg("a")
        .query(&mut c)
        .unwrap();
    assert_eq!(added, 1);
    assert!(exists(&mut realtime.direct(), "hll:visitors"));
    assert!(!exists(&mut cache.direct(), "hll:visitors"));
    // A prefix still wins over the command rule.
    let _: i64 = redis::cmd("PFADD")
        .arg("session:hll")
        .arg("a")
        .query(&mut c)
        .unwrap();
    assert!(exists(&mut session.direct(), "session:hll"));
}

#[test]
fn publish_routes_by_channel_prefix() {
    let r = Reference::start();
    let mut direct_sub = r.session.direct();
    let mut pubsub = direct_sub.as_pubsub();
    pubsub.subscribe("session:events").unwrap();
    let mut c = r.client();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("session:events")
        .arg("hello")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        receivers, 1,
        "PUBLISH reached the session pool's subscriber"
    );
    let msg = pubsub.get_message().unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
}
