//! Per-client state kept by keyway: SELECT, RESET releasing leases and
//! subscriptions, CLIENT LIST/KILL over keyway's own clients, CLIENT REPLY,
//! and clear refusals for what a shared connection cannot do.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn reset_returns_to_a_fresh_connection() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"HELLO 3\r\n");
    raw.read_frame();
    raw.send(b"SELECT 2\r\nWATCH session:r\r\nMULTI\r\nRESET\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+RESET\r\n");
    // Back to RESP2, db 0, no transaction.
    raw.send(b"EXEC\r\nSET session:r db0\r\nGET missing\r\n");
    assert_eq!(raw.read_frame(), b"-ERR EXEC without MULTI\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"$-1\r\n");
    let v: String = redis::cmd("GET")
        .arg("session:r")
        .query(&mut r.session.direct())
        .unwrap();
    assert_eq!(v, "db0");
    // The WATCH's leased connection was released: no backend client is left watching.
    std::thread::sleep(Duration::from_millis(100));
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut r.session.direct())
        .unwrap();
    assert!(!list.contains("flags=x"), "{list}");

    // RESET also leaves subscriber mode.
    raw.send(b"SUBSCRIBE chat:r\r\n");
    raw.read_frame();
    raw.send(b"RESET\r\nPING\r\n");
    assert_eq!(raw.read_frame(), b"+RESET\r\n");
    assert_eq!(raw.read_frame(), b"+PONG\r\n");
}

#[test]
fn client_list_and_kill_are_about_keyways_clients() {
    let r = Reference::start();
    let mut victim = r.keyway.raw();
    victim.send(b"CLIENT SETNAME victim\r\nCLIENT ID\r\n");
    victim.read_frame();
    let id = String::from_utf8(victim.read_frame()).unwrap();
    let id = id.trim_start_matches(':').trim();
    let mut c = r.client();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(
        list.contains(&format!("id={id} ")) && list.contains("name=victim"),
        "{list}"
    );
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut c)
        .unwrap();
    assert_eq!(killed, 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(victim.is_closed());
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(!list.contains("name=victim"), "{list}");
}

#[test]
fn client_reply_off_and_skip() {
    let r = Reference::start();
    let mut raw = r.keyway.raw();
    raw.send(b"CLIENT REPLY OFF\r\nSET session:q 1\r\nCLIENT REPLY ON\r\nCLIENT REPLY SKIP\r\nGET session:q\r\nGET session:q\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n", "only ON is answered");
    assert_eq!(
        raw.read_frame(),
        b"$1\r\n1\r\n",
        "the GET after SKIP was not answered"
    );
}

#[test]
fn unsupported_connection_features_are_refused_clearly() {
    let r = Reference::start();
    let mut c = r.client();
    for (cmd, expected) in [
        (
            vec!["CLIENT", "TRACKING", "ON"],
            "CLIENT TRACKING is not supported by keyway",
        ),
        (
            vec!["CLIENT", "NO-TOUCH", "ON"],
            "CLIENT NO-TOUCH is not supported by keyway",
        ),
        (vec!["MONITOR"], "'MONITOR' is not supported by keyway"),
    ] {
        let err = redis::cmd(cmd[0])
            .arg(&cmd[1..])
            .query::<redis::Value>(&mut c)
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    let ok: String = redis::cmd("CLIENT")
        .arg("NO-EVICT")
        .arg("ON")
        .query(&mut c)
        .unwrap();
    assert_eq!(ok, "OK");
}
