//! The wire: inline commands, HELLO 3 with RESP3 replies forwarded byte for
//! byte, binary-safe keys and values, large values, and protocol errors.

mod support;

use redis::Commands;
use support::*;

#[test]
fn inline_commands_work_like_redis() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"PING\r\nSET session:inline \"a b\"\r\nGET session:inline\nECHO 'x y'\r\n");
    assert_eq!(raw.read_frame(), b"+PONG\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"$3\r\na b\r\n");
    assert_eq!(raw.read_frame(), b"$3\r\nx y\r\n");
    let v: String = r.session.direct().get("session:inline").unwrap();
    assert_eq!(v, "a b");
}

#[test]
fn hello_3_round_trip_with_resp3_replies() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
    let hello = raw.read_frame();
    assert!(
        hello.starts_with(b"%7\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    assert!(String::from_utf8_lossy(&hello).contains("$5\r\nproto\r\n:3\r\n"));

    // A RESP3 map from the backend, forwarded as the backend sent it.
    raw.send(b"*4\r\n$4\r\nHSET\r\n$6\r\nuser:h\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(raw.read_frame(), b":1\r\n");
    raw.send(b"*2\r\n$7\r\nHGETALL\r\n$6\r\nuser:h\r\n");
    assert_eq!(raw.read_frame(), b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    // RESP3 null, double and set.
    raw.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n");
    assert_eq!(raw.read_frame(), b"_\r\n");
    raw.send(b"*3\r\n$4\r\nSADD\r\n$9\r\nsession:s\r\n$1\r\nm\r\n");
    assert_eq!(raw.read_frame(), b":1\r\n");
    raw.send(b"*2\r\n$8\r\nSMEMBERS\r\n$9\r\nsession:s\r\n");
    assert_eq!(raw.read_frame(), b"~1\r\n$1\r\nm\r\n");
    raw.send(b"*4\r\n$4\r\nZADD\r\n$6\r\nrate:z\r\n$3\r\n1.5\r\n$1\r\nm\r\n");
    assert_eq!(raw.read_frame(), b":1\r\n");
    raw.send(b"*3\r\n$6\r\nZSCORE\r\n$6\r\nrate:z\r\n$1\r\nm\r\n");
    assert_eq!(raw.read_frame(), b",1.5\r\n");
    // Keyway's own replies follow the protocol too.
    raw.send(b"*2\r\n$6\r\nCLIENT\r\n$7\r\nGETNAME\r\n");
    assert_eq!(raw.read_frame(), b"_\r\n");

    // Back to RESP2: the same commands answer in RESP2 forms.
    raw.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n");
    assert!(raw.read_frame().starts_with(b"*14\r\n"));
    raw.send(b"*2\r\n$7\r\nHGETALL\r\n$6\r\nuser:h\r\n");
    assert_eq!(raw.read_frame(), b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    raw.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n");
    assert_eq!(raw.read_frame(), b"$-1\r\n");

    raw.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n4\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-NOPROTO unsupported protocol version\r\n"
    );
}

#[test]
fn binary_keys_and_values() {
    let r = Reference::start();
    let mut c = r.client();
    let key: &[u8] = b"session:\r\n\0\xff\xfe";
    let value: &[u8] = b"\0\r\n\xc3\x28binary\r\n";
    let _: () = c.set(key, value).unwrap();
    let got: Vec<u8> = c.get(key).unwrap();
    assert_eq!(got, value);
    let direct: Vec<u8> = r.session.direct().get(key).unwrap();
    assert_eq!(direct, value);
}

#[test]
fn one_and_sixty_four_mebibyte_values() {
    let r = Reference::start();
    let mut c = r.client();
    for (key, size) in [("user:big1", 1 << 20), ("rate:big64", 64 << 20)] {
        let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let _: () = c.set(key, &value).unwrap();
        let got: Vec<u8> = c.get(key).unwrap();
        assert_eq!(got.len(), size);
        assert!(got == value, "{key} came back different");
        let len: usize = c.strlen(key).unwrap();
        assert_eq!(len, size);
    }
}

#[test]
fn protocol_errors_get_redis_errors_and_close() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"*1\r\n:12\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert!(raw.is_closed());
    let mut raw = r.keyway.raw();
    raw.send(b"*abc\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(raw.is_closed());
    assert_eq!(
        r.keyway.metric(r#"keyway_errors_total{kind="protocol"}"#),
        2.0
    );
    // Other clients never noticed.
    let mut c = r.client();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn keyway_answers_connection_commands_like_redis() {
    let r = Reference::start();
    let mut c = r.client();
    let err = redis::cmd("GET").query::<()>(&mut c).unwrap_err();
    assert_eq!(err.to_string(), "An error was signalled by the server - ResponseError: wrong number of arguments for 'get' command");
    let err = redis::cmd("NOSUCHCMD")
        .arg("a")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown command 'NOSUCHCMD'"),
        "{err}"
    );
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("app-1")
        .query(&mut c)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut c).unwrap();
    assert_eq!(name, "app-1");
    let _: () = redis::cmd("CLIENT")
        .arg("SETINFO")
        .arg("lib-name")
        .arg("redis-rs")
        .query(&mut c)
        .unwrap();
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut c).unwrap();
    assert!(
        info.contains("name=app-1") && info.contains("lib-name=redis-rs"),
        "{info}"
    );
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    assert!(info.contains(&format!("id={id} ")));
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(
        info.contains("redis_version:7."),
        "INFO server carries the backend version: {info}"
    );
    assert!(info.contains("# Keyway") && info.contains("pool_session:address=127.0.0.1:"));
    let t: Vec<String> = redis::cmd("TIME").query(&mut c).unwrap();
    assert_eq!(t.len(), 2);
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut c).unwrap();
    assert!(count > 200);
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut c).unwrap();
    assert_eq!(echo, "hi");
}

/// The same bytes to Redis and through keyway: the same reply bytes.
fn same_as_redis(r: &Reference, input: &[u8], frames: usize) {
    let mut direct = RawClient::connect(r.session.port);
    let mut proxied = r.keyway.raw();
    direct.send(input);
    proxied.send(input);
    for i in 0..frames {
        let want = direct.read_frame();
        let got = proxied.read_frame();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "reply {i} to {:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(got, want);
    }
}

#[test]
fn edge_replies_match_redis_byte_for_byte() {
    let r = Reference::start();
    // EXEC refused inside MULTI discards the transaction.
    same_as_redis(&r, b"MULTI\r\nEXEC x\r\nPING\r\nEXEC\r\n", 4);
    // Inline splitting: \v and \f only between words, quotes anywhere.
    same_as_redis(
        &r,
        b"SET session:a\x0bb c\x0cd\r\nGET session:a\x0bb\r\n\x0b\x0cECHO a'b'\r\nECHO \"q\"\x0b\r\n",
        4,
    );
    // Integers as Redis reads them.
    same_as_redis(
        &r,
        b"SELECT 01\r\nSELECT -0\r\nSELECT +1\r\nSELECT 0\r\n",
        4,
    );
    // A client's non-UTF-8 bytes come back as they were sent.
    same_as_redis(&r, b"MULTI\r\nNOSUCH \xff\xfe 'x\xe9'\r\nEXEC\r\n", 3);
    // Unbalanced quotes inside a word: a protocol error, as Redis.
    same_as_redis(&r, b"ECHO a\"b\"c\r\n", 1);
    // A connection without client-side caching, as Redis describes one;
    // CLIENT arguments checked as Redis checks them.
    same_as_redis(
        &r,
        b"CLIENT GETREDIR\r\nCLIENT TRACKINGINFO\r\nCLIENT CACHING yes\r\nCLIENT TRACKING off\r\nCLIENT NO-EVICT maybe\r\nCLIENT NO-EVICT on\r\nCLIENT TRACKING maybe\r\nCLIENT BOGUS x\r\nCLIENT bogus\r\nSLOWLOG GET abc\r\n",
        10,
    );
    // CLIENT KILL filters Redis refuses are refused before anyone is
    // killed (a filter keyway did not check matched every client).
    let bystander = r.keyway.raw();
    same_as_redis(
        &r,
        b"CLIENT KILL SKIPME maybe\r\nCLIENT KILL TYPE bogus\r\nCLIENT KILL USER nosuch\r\nCLIENT KILL ID 0\r\nCLIENT KILL ID -3\r\nCLIENT KILL ADDR 9.9.9.9:1 SKIPME no\r\nCLIENT KILL TYPE master\r\nCLIENT KILL ADDR\r\n",
        8,
    );
    let mut bystander = bystander;
    bystander.send(b"PING\r\n");
    assert_eq!(bystander.read_frame(), b"+PONG\r\n", "no client was killed");
    // EXEC refused outside MULTI: Redis's EXECABORT, and WATCH ends.
    same_as_redis(
        &r,
        b"WATCH session:w\r\nEXEC x\r\nSET session:w 1\r\nMULTI\r\nEXEC\r\n",
        5,
    );
    // In RESP3 (HELLO's own map differs: client ids, keyway's fields).
    let mut direct = RawClient::connect(r.session.port);
    let mut proxied = r.keyway.raw();
    for client in [&mut direct, &mut proxied] {
        client.send(b"HELLO 3\r\n");
        client.read_frame();
        client.send(b"CLIENT TRACKINGINFO\r\nSLOWLOG GET -2\r\n");
    }
    for _ in 0..2 {
        assert_eq!(
            String::from_utf8_lossy(&proxied.read_frame()),
            String::from_utf8_lossy(&direct.read_frame())
        );
    }
}
