//! Pub/Sub through keyway: channels route by prefix, patterns reach every
//! pool they could match with each message delivered once, RESP2 subscriber
//! mode restrictions, RESP3 pushes mixed with replies, PUBSUB aggregation.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

#[test]
fn published_through_keyway_reaches_keyway_and_direct_subscribers() {
    let r = Reference::start();
    let mut sub_conn = r.client();
    let mut sub = sub_conn.as_pubsub();
    sub.subscribe("chat:room:1").unwrap();
    sub.subscribe("session:events").unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut direct = r.cache.direct();
    let mut direct_sub = direct.as_pubsub();
    direct_sub.subscribe("chat:room:1").unwrap();
    direct_sub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let mut c = r.client();
    let n: i64 = c.publish("chat:room:1", "hello").unwrap();
    assert_eq!(
        n, 2,
        "one keyway subscriber and one direct subscriber on the cache pool"
    );
    let n: i64 = c.publish("session:events", "login").unwrap();
    assert_eq!(n, 1);
    // Messages of channels on two pools come over two backend links: each
    // arrives once, but not necessarily in publishing order (a known
    // difference from one Redis, listed in docs/testing.md).
    let mut got: Vec<(String, String)> = (0..2)
        .map(|_| {
            let m = sub.get_message().unwrap();
            (
                m.get_channel_name().to_string(),
                m.get_payload::<String>().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("chat:room:1".to_string(), "hello".to_string()),
            ("session:events".to_string(), "login".to_string())
        ]
    );
    let m = direct_sub.get_message().unwrap();
    assert_eq!(m.get_payload::<String>().unwrap(), "hello");
}

#[test]
fn patterns_cover_every_pool_once() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"PSUBSCRIBE *:news\r\n");
    assert_eq!(
        raw.read_frame(),
        b"*3\r\n$10\r\npsubscribe\r\n$6\r\n*:news\r\n:1\r\n"
    );
    let mut c = r.client();
    for ch in ["session:news", "user:news", "rate:news"] {
        let n: i64 = c.publish(ch, ch).unwrap();
        assert_eq!(n, 1, "{ch}");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let frame = String::from_utf8(raw.read_frame()).unwrap();
        assert!(frame.starts_with("*4\r\n$8\r\npmessage\r\n"), "{frame}");
        got.push(frame);
    }
    for ch in ["session:news", "user:news", "rate:news"] {
        assert_eq!(
            got.iter().filter(|f| f.contains(ch)).count(),
            1,
            "{ch} delivered once"
        );
    }
}

#[test]
fn resp2_subscriber_mode_rules() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"SUBSCRIBE session:a user:b\r\n");
    assert_eq!(
        raw.read_frame(),
        b"*3\r\n$9\r\nsubscribe\r\n$9\r\nsession:a\r\n:1\r\n"
    );
    assert_eq!(
        raw.read_frame(),
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\nuser:b\r\n:2\r\n"
    );
    raw.send(b"GET x\r\nPING\r\nPING hi\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(raw.read_frame(), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(raw.read_frame(), b"*2\r\n$4\r\npong\r\n$2\r\nhi\r\n");
    raw.send(b"UNSUBSCRIBE\r\n");
    // One confirmation per channel, counting down to zero.
    let first = String::from_utf8(raw.read_frame()).unwrap();
    let second = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        first.starts_with("*3\r\n$11\r\nunsubscribe\r\n") && first.ends_with(":1\r\n"),
        "{first}"
    );
    assert!(second.ends_with(":0\r\n"), "{second}");
    assert!(
        (first.clone() + &second).contains("session:a") && (first + &second).contains("user:b")
    );
    // Out of subscriber mode: ordinary commands again.
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_frame(), b"+PONG\r\n");
}

#[test]
fn resp3_pushes_interleave_with_replies() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"HELLO 3\r\n");
    raw.read_frame();
    raw.send(b"SUBSCRIBE chat:live\r\n");
    assert_eq!(
        raw.read_frame(),
        b">3\r\n$9\r\nsubscribe\r\n$9\r\nchat:live\r\n:1\r\n"
    );
    raw.send(b"SET user:r3 v\r\nGET user:r3\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"$1\r\nv\r\n");
    let mut c = r.client();
    let _: i64 = c.publish("chat:live", "pushed").unwrap();
    assert_eq!(
        raw.read_frame(),
        b">3\r\n$7\r\nmessage\r\n$9\r\nchat:live\r\n$6\r\npushed\r\n"
    );
    raw.send(b"GET user:r3\r\n");
    assert_eq!(raw.read_frame(), b"$1\r\nv\r\n");
}

#[test]
fn pubsub_introspection_sums_over_pools() {
    let r = Reference::start();
    let mut a = r.keyway.raw();
    a.send(b"SUBSCRIBE session:x user:y\r\nPSUBSCRIBE rate:*\r\n");
    for _ in 0..3 {
        a.read_frame();
    }
    let mut c = r.client();
    let mut chans: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").query(&mut c).unwrap();
    chans.sort();
    assert_eq!(chans, ["session:x", "user:y"]);
    let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("session:x")
        .arg("user:y")
        .arg("none")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        numsub,
        [
            ("session:x".into(), 1),
            ("user:y".into(), 1),
            ("none".into(), 0)
        ]
    );
    let numpat: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut c).unwrap();
    assert_eq!(numpat, 1, "rate:* goes to the realtime pool only");
}

#[test]
fn a_flooded_subscriber_can_still_subscribe() {
    // While a SUBSCRIBE waits for the backend's confirmation, the link
    // forwarding a flood of messages may fill the client's push queue; the
    // session keeps taking messages meanwhile, or neither would move.
    const FLOOD: usize = 30_000;
    let r = Reference::start();
    let mut sub = RawClient::connect(r.keyway.port);
    sub.send(b"SUBSCRIBE chat:flood\r\n");
    assert!(String::from_utf8_lossy(&sub.read_frame()).contains("chat:flood"));

    let cache_port = r.cache.port;
    let publisher = std::thread::spawn(move || {
        let mut publish = Vec::new();
        for i in 0..FLOOD {
            let payload = format!("{i:0>8}{}", "x".repeat(92));
            publish.extend_from_slice(
                format!("*3\r\n$7\r\nPUBLISH\r\n$10\r\nchat:flood\r\n$100\r\n{payload}\r\n")
                    .as_bytes(),
            );
        }
        let mut direct = RawClient::connect(cache_port);
        direct.send(&publish);
        for _ in 0..FLOOD {
            direct.read_frame();
        }
    });
    std::thread::sleep(Duration::from_millis(30));
    sub.send(b"SUBSCRIBE chat:second\r\n");

    let mut next = 0;
    let mut confirmed = false;
    while next < FLOOD || !confirmed {
        let frame = sub.read_frame();
        let text = String::from_utf8_lossy(&frame);
        if text.contains("\r\nsubscribe\r\n") {
            assert!(text.contains("chat:second"), "{text}");
            confirmed = true;
            continue;
        }
        let payload = text
            .rsplit("\r\n$100\r\n")
            .next()
            .unwrap_or_default()
            .get(..8)
            .unwrap_or_default();
        assert_eq!(payload, format!("{next:0>8}"), "messages in order");
        next += 1;
    }
    publisher.join().unwrap();

    let mut c = r.client();
    let n: i64 = c.publish("chat:second", "after").unwrap();
    assert_eq!(n, 1);
    let frame = String::from_utf8_lossy(&sub.read_frame()).into_owned();
    assert!(frame.contains("after"), "{frame}");
}

#[test]
fn messages_keep_flowing_after_an_unsubscribe() {
    let r = Reference::start();
    let mut sub = RawClient::connect(r.keyway.port);
    sub.send(b"SUBSCRIBE chat:a chat:b\r\n");
    sub.read_frame();
    sub.read_frame();
    sub.send(b"UNSUBSCRIBE chat:a\r\n");
    let frame = String::from_utf8_lossy(&sub.read_frame()).into_owned();
    assert!(
        frame.contains("unsubscribe") && frame.contains("chat:a"),
        "{frame}"
    );
    let mut c = r.client();
    let n: i64 = c.publish("chat:b", "still here").unwrap();
    assert_eq!(n, 1);
    let frame = String::from_utf8_lossy(&sub.read_frame()).into_owned();
    assert!(frame.contains("still here"), "{frame}");
}

#[test]
fn a_subscription_follows_its_pool_by_name_across_a_renumbering_reload() {
    let mut r = Reference::start();
    let mut sub = r.keyway.raw();
    sub.send(b"SUBSCRIBE session:news\r\n");
    sub.read_frame();
    // A pool named to sort first renumbers every other pool.
    let extra = RedisServer::start();
    let config = std::fs::read_to_string(&r.keyway.config_path).unwrap();
    let config = config.replace(
        "[pools.session]",
        &format!("[pools.aaa]\nurl = \"{}\"\n[pools.session]", extra.url()),
    );
    std::fs::write(&r.keyway.config_path, config).unwrap();
    let (status, body) = r.keyway.http("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    // The session server restarts: the link reconnects to the session pool.
    r.session.restart();
    let mut publisher = r.client();
    let delivered = r.keyway.wait_until(Duration::from_secs(10), || {
        let n: i64 = redis::cmd("PUBLISH")
            .arg("session:news")
            .arg("hello")
            .query(&mut publisher)
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(50));
        n == 1
    });
    assert!(
        delivered,
        "the subscription was restored on the session server"
    );
    let frame = String::from_utf8(sub.read_frame()).unwrap();
    assert!(
        frame.contains("session:news") && frame.contains("hello"),
        "{frame}"
    );
}

#[test]
fn a_subscribe_the_server_refuses_is_answered_and_holds_nothing() {
    let server = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "kw",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
            "&news:*",
        ])
        .query(&mut server.direct())
        .unwrap();
    let kw = Keyway::start(&format!(
        "[pools.main]\nurl = \"redis://kw:pw@127.0.0.1:{}\"\n[routes]\ndefault = \"main\"\n",
        server.port
    ));
    // What Redis answers that user directly.
    let mut direct = RawClient::connect(server.port);
    direct.send(b"AUTH kw pw\r\nSUBSCRIBE other\r\n");
    direct.read_frame();
    let refused = direct.read_frame();
    assert!(
        refused.starts_with(b"-NOPERM"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    for _ in 0..3 {
        let mut c = kw.raw();
        c.send(b"SUBSCRIBE other\r\n");
        assert_eq!(
            c.read_frame(),
            refused,
            "the server's refusal, as it gave it"
        );
        // Not subscribed: an ordinary command works.
        c.send(b"PING\r\n");
        assert_eq!(c.read_frame(), b"+PONG\r\n");
        c.send(b"PSUBSCRIBE other*\r\n");
        assert!(c.read_frame().starts_with(b"-NOPERM"));
        c.send(b"SUBSCRIBE news:1\r\n");
        let ok = String::from_utf8(c.read_frame()).unwrap();
        assert!(ok.contains("subscribe") && ok.contains("news:1"), "{ok}");
    }
    // A live subscription holds a leased connection (so the gauge is read)…
    let mut live = kw.raw();
    live.send(b"SUBSCRIBE news:2\r\n");
    live.read_frame();
    let leased = kw.wait_until(Duration::from_secs(5), || {
        kw.metric("keyway_backend_connections{pool=\"main\",state=\"leased\"}") >= 1.0
    });
    assert!(leased, "a subscription's lease is counted");
    drop(live);
    // …and none is left behind once the clients are gone.
    let released = kw.wait_until(Duration::from_secs(5), || {
        kw.metric("keyway_backend_connections{pool=\"main\",state=\"leased\"}") == 0.0
    });
    assert!(released, "leases left behind");
}

/// A client that subscribed in RESP3 and switched to RESP2 (HELLO 2) reads
/// its messages as RESP2 arrays, as from Redis: its subscription link
/// still speaks RESP3, and a RESP2 parser refuses a `>` push.
#[test]
fn a_subscriber_that_switches_to_resp2_gets_resp2_messages() {
    let r = Reference::start();
    let message = |port: u16, publish: &mut dyn FnMut()| {
        let mut raw = RawClient::connect(port);
        raw.send(b"HELLO 3\r\n");
        assert!(raw.read_frame().starts_with(b"%7\r\n"));
        raw.send(b"SUBSCRIBE user:sw\r\n");
        assert_eq!(
            raw.read_frame(),
            b">3\r\n$9\r\nsubscribe\r\n$7\r\nuser:sw\r\n:1\r\n"
        );
        raw.send(b"HELLO 2\r\n");
        assert!(raw.read_frame().starts_with(b"*14\r\n"));
        publish();
        raw.read_frame()
    };
    let mut direct = r.cache.direct();
    let redis = message(r.cache.port, &mut || {
        let _: i64 = direct.publish("user:sw", "hi").unwrap();
    });
    let mut publisher = r.client();
    let keyway = message(r.keyway.port, &mut || {
        let _: i64 = publisher.publish("user:sw", "hi").unwrap();
    });
    assert_eq!(
        redis,
        b"*3\r\n$7\r\nmessage\r\n$7\r\nuser:sw\r\n$2\r\nhi\r\n"
    );
    assert_eq!(keyway, redis);
}
