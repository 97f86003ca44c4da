//! MULTI / EXEC / DISCARD / WATCH through keyway, with Redis's semantics:
//! QUEUED replies, EXECABORT after a queue-time error (including CROSSPOOL),
//! nil from EXEC when a WATCHed key changed, nothing left half-done.

mod support;

use std::io::Write;
use std::time::Duration;

use redis::Commands;
use support::*;

#[test]
fn multi_exec_runs_atomically_on_the_keys_pool() {
    let r = Reference::start();
    let mut c = r.client();
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("rate:t:1", 5)
        .incr("rate:t:2", 7)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (5, 7));
    let v: i64 = r.realtime.direct().get("rate:t:2").unwrap();
    assert_eq!(v, 7);
}

#[test]
fn raw_transaction_replies_are_redis_replies() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"MULTI\r\nSET session:t 1\r\nINCR session:t\r\nPING\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), b"*3\r\n+OK\r\n:2\r\n+PONG\r\n");
    raw.send(b"EXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nDISCARD\r\n");
    assert_eq!(raw.read_frame(), b"-ERR EXEC without MULTI\r\n");
    assert_eq!(raw.read_frame(), b"-ERR DISCARD without MULTI\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"-ERR MULTI calls can not be nested\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
}

#[test]
fn queue_time_errors_abort_the_transaction() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    // Cross-pool command queued: refused at queue time, EXEC aborts.
    raw.send(b"MULTI\r\nSET session:q 1\r\nSET user:q 1\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    let err = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        err.starts_with("-CROSSPOOL keys of this command map to pools 'session' and 'cache'"),
        "{err}"
    );
    assert_eq!(
        raw.read_frame(),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    // Wrong arity and unknown commands too.
    raw.send(b"MULTI\r\nGET\r\nNOPE x\r\nSET session:q 2\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert!(raw.read_frame().starts_with(b"-ERR unknown command 'NOPE'"));
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    // Nothing of either transaction ran.
    let mut s = r.session.direct();
    assert!(!s.exists::<_, bool>("session:q").unwrap());
    assert!(!r.cache.direct().exists::<_, bool>("user:q").unwrap());
}

#[test]
fn watch_conflict_makes_exec_return_nil() {
    let r = Reference::start();
    let mut c = r.client();
    let mut other = r.client();
    let _: () = c.set("session:w", 1).unwrap();
    let _: () = redis::cmd("WATCH").arg("session:w").query(&mut c).unwrap();
    let _: () = other.set("session:w", 2).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let q: String = redis::cmd("SET")
        .arg("session:w")
        .arg(3)
        .query(&mut c)
        .unwrap();
    assert_eq!(q, "QUEUED");
    let exec: redis::Value = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(
        exec,
        redis::Value::Nil,
        "EXEC after a WATCH conflict is nil"
    );
    let v: i64 = other.get("session:w").unwrap();
    assert_eq!(v, 2);

    // Without a conflict the watched transaction runs.
    let _: () = redis::cmd("WATCH").arg("session:w").query(&mut c).unwrap();
    let (v,): (i64,) = redis::pipe()
        .atomic()
        .incr("session:w", 10)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 12);
    // WATCH of keys in two pools is refused.
    let err = redis::cmd("WATCH")
        .arg("session:w")
        .arg("user:w")
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSPOOL"));
}

#[test]
fn a_client_leaving_mid_transaction_leaves_nothing_behind() {
    let r = Reference::start();
    {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", r.keyway.port)).unwrap();
        stream
            .write_all(
                b"WATCH session:gone\r\nMULTI\r\nSET session:gone 1\r\nINCR session:gone\r\n",
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!r
        .session
        .direct()
        .exists::<_, bool>("session:gone")
        .unwrap());
    // The pool's connections are clean: a later transaction works normally.
    let mut c = r.client();
    let (v,): (i64,) = redis::pipe()
        .atomic()
        .incr("session:gone", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 1);
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut r.session.direct())
        .unwrap();
    assert!(
        !clients.contains("flags=x"),
        "no backend connection is left in MULTI: {clients}"
    );
}

#[test]
fn transaction_sees_the_clients_earlier_pipelined_writes() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    let mut batch = Vec::new();
    for _ in 0..200 {
        batch.extend_from_slice(b"INCR session:order\r\n");
    }
    batch.extend_from_slice(b"MULTI\r\nGET session:order\r\nEXEC\r\n");
    raw.send(&batch);
    for i in 1..=200 {
        assert_eq!(raw.read_frame(), format!(":{i}\r\n").into_bytes());
    }
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), b"*1\r\n$3\r\n200\r\n");
}

/// Queued, a command keyway answers itself or sends to every server would
/// run on the transaction's one server and answer for it alone: SLOWLOG
/// would show that server's log (every tenant's commands with their keys
/// and values), FLUSHALL would empty one pool of several. Refused there,
/// as SELECT is.
#[test]
fn inside_multi_nothing_answers_for_one_server_alone() {
    let r = Reference::start_with("[policy]\nallow = [\"FLUSHALL\"]\n");
    let _: () = r.session.direct().set("session:f", "1").unwrap();
    let _: () = r.cache.direct().set("user:f", "1").unwrap();
    let mut raw = r.keyway.raw();
    for (command, name) in [
        (&b"SLOWLOG GET 10\r\n"[..], "SLOWLOG"),
        (b"LATENCY HISTOGRAM set\r\n", "LATENCY"),
        (b"FLUSHALL\r\n", "FLUSHALL"),
    ] {
        raw.send(b"MULTI\r\n");
        assert_eq!(raw.read_frame(), b"+OK\r\n");
        raw.send(command);
        let refused = String::from_utf8(raw.read_frame()).unwrap();
        assert_eq!(
            refused,
            format!("-ERR '{name}' inside MULTI is not supported by keyway\r\n")
        );
        raw.send(b"EXEC\r\n");
        assert!(raw.read_frame().starts_with(b"-EXECABORT"));
    }
    let kept: (bool, bool) = (
        r.session.direct().exists("session:f").unwrap(),
        r.cache.direct().exists("user:f").unwrap(),
    );
    assert_eq!(
        kept,
        (true, true),
        "nothing of the aborted transactions ran"
    );
    // Outside MULTI the allowed FLUSHALL empties every pool.
    raw.send(b"FLUSHALL\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    let gone: (bool, bool) = (
        r.session.direct().exists("session:f").unwrap(),
        r.cache.direct().exists("user:f").unwrap(),
    );
    assert_eq!(gone, (false, false));
}

/// WATCH takes a connection in the client's database and protocol; a
/// SELECT or HELLO after it applies to EXEC, as on Redis, instead of the
/// transaction writing into the database the client left.
#[test]
fn exec_runs_in_the_database_and_protocol_chosen_after_watch() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"WATCH user:w\r\nSELECT 2\r\nMULTI\r\nSET user:w v\r\nEXEC\r\n");
    for reply in [&b"+OK\r\n"[..], b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n"] {
        assert_eq!(raw.read_frame(), reply);
    }
    assert_eq!(raw.read_frame(), b"*1\r\n+OK\r\n");
    let in_db = |db: i64| -> Option<String> {
        let mut c = r.cache.direct();
        let _: () = redis::cmd("SELECT").arg(db).query(&mut c).unwrap();
        c.get("user:w").unwrap()
    };
    assert_eq!((in_db(0), in_db(2)), (None, Some("v".to_string())));

    let _: () = r.cache.direct().hset("user:h", "f", "v").unwrap();
    let mut raw = r.keyway.raw();
    raw.send(b"HELLO 3\r\n");
    assert!(raw.read_frame().starts_with(b"%7\r\n"));
    raw.send(b"WATCH user:h\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    raw.send(b"HELLO 2\r\n");
    assert!(raw.read_frame().starts_with(b"*14\r\n"));
    raw.send(b"MULTI\r\nHGETALL user:h\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    // Redis's RESP2 reply, not the RESP3 map the watch connection spoke.
    assert_eq!(raw.read_frame(), b"*1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
}

/// EXEC waits for its server no longer than a forwarded request does: a
/// server that does not answer fails the transaction after
/// `request_timeout_ms`, its connection is closed (not handed on), and the
/// client's next transaction runs.
#[test]
fn exec_times_out_like_any_request() {
    let [session, cache, realtime] = reference_servers();
    let keyway = Keyway::start(
        &reference_config(&session.url(), &cache.url(), &realtime.url())
            .replace("[backend]\n", "[backend]\nrequest_timeout_ms = 200\n"),
    );
    // Busy for 600 ms inside the transaction.
    const BUSY: &str = "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end local s = now() while now() - s < 600000 do end return 1";
    let eval = format!(
        "*4\r\n$4\r\nEVAL\r\n${}\r\n{BUSY}\r\n$1\r\n1\r\n$9\r\nuser:slow\r\n",
        BUSY.len()
    );
    let mut raw = keyway.raw();
    raw.send(format!("MULTI\r\n{eval}").as_bytes());
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    let started = std::time::Instant::now();
    raw.send(b"EXEC\r\n");
    let exec = raw.read_frame();
    let waited = started.elapsed();
    println!("EXEC of a 600 ms script, 200 ms timeout: failed after {waited:?}");
    assert_eq!(exec, b"-ERR backend 'cache' timed out after 200ms\r\n");
    assert!(waited < Duration::from_millis(500), "waited {waited:?}");
    std::thread::sleep(Duration::from_millis(600));
    raw.send(b"MULTI\r\nINCR user:after\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), b"*1\r\n:1\r\n");
    assert_eq!(keyway.metric(r#"keyway_errors_total{kind="timeout"}"#), 1.0);
}

/// A pool whose URL names a database puts the client's db 0 there; a
/// transaction runs there too (its lease is not moved to the backend's
/// db 0), and a second WATCH after a SELECT watches the database the client
/// is in now.
#[test]
fn transactions_run_in_the_pools_own_database() {
    let [session, cache, realtime] = reference_servers();
    let keyway = Keyway::start(&reference_config(
        &format!("{}/5", session.url()),
        &cache.url(),
        &realtime.url(),
    ));
    let mut raw = keyway.raw();
    raw.send(b"SET session:a plain\r\nMULTI\r\nSET session:tx 1\r\nGET session:a\r\nEXEC\r\nGET session:tx\r\n");
    for reply in [&b"+OK\r\n"[..], b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"] {
        assert_eq!(raw.read_frame(), reply);
    }
    assert_eq!(raw.read_frame(), b"*2\r\n+OK\r\n$5\r\nplain\r\n");
    assert_eq!(raw.read_frame(), b"$1\r\n1\r\n");
    let in_db = |db: i64, key: &str| -> bool {
        let mut c = session.direct();
        let _: () = redis::cmd("SELECT").arg(db).query(&mut c).unwrap();
        c.exists(key).unwrap()
    };
    assert!(in_db(5, "session:tx") && !in_db(0, "session:tx"));

    // WATCH in db 1, SELECT 0, WATCH again: the second watch is on db 0
    // (the pool's db 5), where another client's write must abort EXEC.
    let mut other = keyway.client();
    raw.send(b"SELECT 1\r\nWATCH session:w1\r\nSELECT 0\r\nWATCH session:acct\r\n");
    for _ in 0..4 {
        assert_eq!(raw.read_frame(), b"+OK\r\n");
    }
    let _: () = other.set("session:acct", "50").unwrap();
    raw.send(b"MULTI\r\nSET session:acct 90\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(
        raw.read_frame(),
        b"*-1\r\n",
        "the watched write aborts EXEC"
    );
    let acct: String = other.get("session:acct").unwrap();
    assert_eq!(acct, "50");
}
