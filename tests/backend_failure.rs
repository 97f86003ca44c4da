//! Backends that go away: an immediate, named error instead of a hang,
//! other pools unaffected, service back as soon as the backend is; a
//! connection that breaks mid-pipeline fails exactly its in-flight requests.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

#[test]
fn a_down_backend_fails_fast_and_recovers() {
    let mut r = Reference::start();
    let mut c = r.client();
    let _: () = c.set("session:a", "1").unwrap();
    r.session.stop();

    let started = Instant::now();
    let err = c.get::<_, String>("session:a").unwrap_err();
    assert!(
        err.to_string().contains("backend 'session' "),
        "the error names the pool: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no hang: {:?}",
        started.elapsed()
    );
    // Further requests fail immediately too, with the reason.
    let err = c.get::<_, String>("session:a").unwrap_err();
    assert!(
        err.to_string().contains("backend 'session' unavailable"),
        "{err}"
    );

    // The other pools keep serving, on the same client connection.
    let _: () = c.set("user:a", "2").unwrap();
    let v: String = c.get("user:a").unwrap();
    assert_eq!(v, "2");

    r.session.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.set::<_, _, ()>("session:b", "back") {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("backend 'session'"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("session pool did not come back: {e}"),
        }
    }
    let v: String = r.session.direct().get("session:b").unwrap();
    assert_eq!(v, "back");
}

/// A script that keeps the session backend busy for a second.
const BUSY: &str =
    "local t = redis.call('TIME') while redis.call('TIME')[1] - t[1] < 1 do end return 'done'";

/// Writes `requests` through keyway, kills the session backend while they
/// are in flight, and returns the connection to read the replies from.
fn send_then_kill_the_session_backend(r: &mut Reference, requests: &[u8]) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", r.keyway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(requests).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    r.session.stop();
    BufReader::new(stream)
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{}\r\n", a.len(), a).as_bytes());
    }
    out
}

#[test]
fn a_connection_lost_mid_pipeline_fails_only_its_in_flight_requests() {
    let mut r = Reference::start();
    // Scripts that keep the session backend busy for a second each, with
    // writes to the cache pool interleaved; the session backend is killed
    // while they are in flight.
    const N: usize = 40;
    let mut buf = Vec::new();
    for i in 0..N {
        if i % 2 == 0 {
            buf.extend(encode(&["EVAL", BUSY, "1", "session:busy"]));
        } else {
            buf.extend(encode(&["SET", &format!("user:{i}"), &i.to_string()]));
        }
    }
    let mut reader = send_then_kill_the_session_backend(&mut r, &buf);
    let mut lost = 0;
    for i in 0..N {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if i % 2 == 0 {
            if line.starts_with("$4") {
                // A script that finished before the kill: its payload follows.
                let mut payload = String::new();
                reader.read_line(&mut payload).unwrap();
                assert_eq!(payload, "done\r\n");
            } else {
                assert_eq!(
                    line, "-ERR backend 'session' connection lost\r\n",
                    "request {i}"
                );
                lost += 1;
            }
        } else {
            assert_eq!(
                line, "+OK\r\n",
                "request {i} went to the cache pool and must succeed"
            );
        }
    }
    assert!(
        lost > 0,
        "killing the backend mid-pipeline failed no request"
    );
    assert_eq!(
        r.keyway
            .metric(r#"keyway_errors_total{kind="connection_lost"}"#),
        lost as f64,
        "each lost reply is counted once"
    );
    let v: String = r.cache.direct().get("user:39").unwrap();
    assert_eq!(v, "39");
}

#[test]
fn a_connection_lost_under_one_clients_run_of_requests_fails_each_of_them() {
    let mut r = Reference::start();
    // One client's requests in a row to one pool share one reply
    // destination on the backend connection; each must still get its own
    // error, counted once, when the connection goes.
    const N: usize = 12;
    let mut buf = Vec::new();
    for _ in 0..N {
        buf.extend(encode(&["EVAL", BUSY, "1", "session:busy"]));
    }
    let mut reader = send_then_kill_the_session_backend(&mut r, &buf);
    let mut lost = 0;
    for i in 0..N {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(
            line, "-ERR backend 'session' connection lost\r\n",
            "request {i}"
        );
        lost += 1;
    }
    println!("{lost} of {N} requests in flight failed with the connection");
    assert_eq!(
        r.keyway
            .metric(r#"keyway_errors_total{kind="connection_lost"}"#),
        lost as f64,
        "each lost reply is counted once"
    );
    // The client goes on: its next request to another pool is answered.
    let mut stream = reader.into_inner();
    stream
        .write_all(&encode(&["SET", "user:after", "1"]))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "+OK\r\n");
}
