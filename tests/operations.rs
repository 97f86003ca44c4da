//! Operations: hot reload under load, graceful drain with a pipeline in
//! flight, max clients, oversized requests, backend timeouts, idle clients,
//! the Unix socket, and a client that never reads its replies.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

fn servers() -> (RedisServer, RedisServer, RedisServer) {
    (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    )
}

fn config_with(
    s: &RedisServer,
    c: &RedisServer,
    r: &RedisServer,
    server: &str,
    extra: &str,
) -> String {
    format!(
        "{}\n{extra}",
        reference_config(&s.url(), &c.url(), &r.url())
            .replace("[backend]\n", &format!("[server]\n{server}\n[backend]\n"))
    )
}

#[test]
fn reload_under_load_fails_no_unconcerned_request() {
    let (s, c, r) = servers();
    let extra_pool = RedisServer::start();
    let users = "[auth]\n[[auth.users]]\nname = \"app\"\npassword_env = \"APP_PW\"\n[[auth.users]]\nname = \"leaving\"\npassword_env = \"APP_PW\"\n";
    let kw = Keyway::start_with_env(&config_with(&s, &c, &r, "", users), &[("APP_PW", "pw")]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (stop, done, port) = (stop.clone(), done.clone(), kw.port);
        workers.push(std::thread::spawn(move || {
            let client = redis::Client::open(format!("redis://app:pw@127.0.0.1:{port}/")).unwrap();
            let mut conn = client.get_connection().unwrap();
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut pipe = redis::pipe();
                for i in 0..50 {
                    pipe.cmd("SET")
                        .arg(format!("session:w{w}:{i}"))
                        .arg(i)
                        .ignore();
                    pipe.cmd("GET").arg(format!("user:w{w}:{i}"));
                }
                match pipe.query::<Vec<Option<String>>>(&mut conn) {
                    Ok(_) => {
                        done.fetch_add(100, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    let mut leaving = redis::Client::open(format!("redis://leaving:pw@127.0.0.1:{}/", kw.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = leaving.set("session:before", 1).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Change routes, add a pool, remove a user; reload with SIGHUP.
    let new_config = config_with(
        &s,
        &c,
        &r,
        "",
        "[auth]\n[[auth.users]]\nname = \"app\"\npassword_env = \"APP_PW\"\n",
    )
    .replace(
        "[routes]\n",
        &format!(
            "[pools.extra]\nurl = \"{}\"\n\n[routes]\n",
            extra_pool.url()
        ),
    )
    .replace(
        "prefixes = [\n",
        "prefixes = [\n  { prefix = \"moved:\", pool = \"extra\" },\n",
    );
    std::fs::write(&kw.config_path, &new_config).unwrap();
    kw.signal("HUP");
    assert!(kw.wait_until(Duration::from_secs(5), || kw
        .metric(r#"keyway_config_reloads_total{result="ok"}"#)
        == 1.0));
    std::thread::sleep(Duration::from_millis(300));

    // An invalid file through POST /reload: refused, nothing changes.
    std::fs::write(
        &kw.config_path,
        new_config.replace("pool = \"extra\"", "pool = \"nope\""),
    )
    .unwrap();
    let (status, body) = kw.http("POST", "/reload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown pool 'nope'"), "{body}");
    assert_eq!(
        kw.metric(r#"keyway_config_reloads_total{result="error"}"#),
        1.0
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let failures = w.join().unwrap();
        assert!(
            failures.is_empty(),
            "unconcerned clients saw failures: {failures:?}"
        );
    }
    assert!(done.load(Ordering::Relaxed) > 1000);

    // The new route and pool serve; the removed user must authenticate again.
    let mut app = redis::Client::open(format!("redis://app:pw@127.0.0.1:{}/", kw.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = app.set("moved:key", "x").unwrap();
    assert!(extra_pool.direct().exists::<_, bool>("moved:key").unwrap());
    let err = leaving.get::<_, i64>("session:before").unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
}

#[test]
fn drain_answers_every_request_it_read() {
    let (s, c, r) = servers();
    let mut kw = Keyway::start(&config_with(&s, &c, &r, "drain_timeout_ms = 5000", ""));
    let mut stream = TcpStream::connect(("127.0.0.1", kw.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A slow script first keeps everything behind it in flight.
    const BUSY: &str = "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end local s = now() while now() - s < 500000 do end return 1";
    let mut batch = format!(
        "*4\r\n$4\r\nEVAL\r\n${}\r\n{BUSY}\r\n$1\r\n1\r\n$6\r\nuser:x\r\n",
        BUSY.len()
    )
    .into_bytes();
    const N: usize = 2000;
    for i in 0..N {
        batch.extend_from_slice(
            format!(
                "*2\r\n$4\r\nINCR\r\n${}\r\nuser:n{}\r\n",
                format!("user:n{i}").len(),
                i
            )
            .as_bytes(),
        );
    }
    stream.write_all(&batch).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    kw.signal("TERM");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(kw.http("GET", "/readyz").0, 503, "readyz turns 503 at once");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, ":1\r\n", "the slow script's reply");
    for i in 0..N {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(
            line, ":1\r\n",
            "request {i} was read before the signal and is answered"
        );
    }
    line.clear();
    assert_eq!(
        reader.read_line(&mut line).unwrap(),
        0,
        "then the connection closes"
    );
    assert_eq!(
        kw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "keyway exits 0 after the drain"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", kw.port)).is_err(),
        "no longer accepting"
    );
}

/// SIGTERM while the application is still working (its own shutdown runs
/// in parallel): keyway stops accepting but serves connected clients until
/// they close, closing only those idle for a second.
#[test]
fn drain_serves_clients_finishing_their_own_shutdown() {
    let (s, c, r) = servers();
    let mut kw = Keyway::start(&config_with(&s, &c, &r, "drain_timeout_ms = 10000", ""));
    let mut idle = kw.raw();
    let mut talker = kw.raw();
    let pipeline_conn = TcpStream::connect(("127.0.0.1", kw.port)).unwrap();
    pipeline_conn
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A 50,000-command pipeline written just before the signal.
    const N: usize = 50_000;
    let mut writer = pipeline_conn.try_clone().unwrap();
    let write = std::thread::spawn(move || {
        let batch = b"*2\r\n$4\r\nINCR\r\n$8\r\nuser:cnt\r\n".repeat(N);
        writer.write_all(&batch).unwrap();
    });
    std::thread::sleep(Duration::from_millis(20));
    let signalled = Instant::now();
    kw.signal("TERM");
    // A client that keeps working for 3 s after the signal is answered.
    let mut answered = 0;
    while signalled.elapsed() < Duration::from_secs(3) {
        talker.send(b"PING\r\n");
        assert_eq!(talker.read_frame(), b"+PONG\r\n");
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    write.join().unwrap();
    let mut reader = BufReader::new(pipeline_conn);
    let mut line = String::new();
    for i in 1..=N {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!(":{i}\r\n"), "reply {i} of the pipeline");
    }
    // The idle client was closed after its grace; nothing new is accepted.
    assert!(idle.is_closed(), "an idle client is closed while draining");
    assert!(TcpStream::connect(("127.0.0.1", kw.port)).is_err());
    drop(talker);
    drop(reader);
    let exit = kw.wait_exit(Duration::from_secs(5));
    println!(
        "after SIGTERM: {answered} PINGs answered over 3 s, {N} pipelined replies, exit {exit:?} {:?} after the signal",
        signalled.elapsed()
    );
    assert_eq!(exit, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(9),
        "no wait for the drain timeout"
    );
}

#[test]
fn max_clients_and_oversized_requests() {
    let (s, c, r) = servers();
    let kw = Keyway::start(&config_with(
        &s,
        &c,
        &r,
        "max_clients = 3\nmax_bulk_bytes = 1024",
        "",
    ));
    let mut held: Vec<_> = (0..3).map(|_| kw.raw()).collect();
    for h in held.iter_mut() {
        h.send(b"PING\r\n");
        assert_eq!(h.read_frame(), b"+PONG\r\n");
    }
    let mut extra = kw.raw();
    assert_eq!(
        extra.read_frame(),
        b"-ERR max number of clients reached\r\n"
    );
    assert_eq!(kw.metric("keyway_clients_rejected_total"), 1.0);
    // An oversized argument: refused before its payload is buffered.
    held[0].send(b"*3\r\n$3\r\nSET\r\n$6\r\nuser:b\r\n$2000\r\n");
    assert_eq!(
        held[0].read_frame(),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(held[0].is_closed());
    held[1].send(b"PING\r\n");
    assert_eq!(
        held[1].read_frame(),
        b"+PONG\r\n",
        "other clients are unaffected"
    );
}

#[test]
fn backend_timeout_fails_one_request_and_keeps_order() {
    let (s, c, r) = servers();
    let kw = Keyway::start(
        &config_with(&s, &c, &r, "", "")
            .replace("[backend]\n", "[backend]\nrequest_timeout_ms = 200\n"),
    );
    let mut conn = kw.client();
    let _: () = conn.set("user:v", "value").unwrap();
    const BUSY: &str = "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end local s = now() while now() - s < 500000 do end return 1";
    let err = redis::cmd("EVAL")
        .arg(BUSY)
        .arg(1)
        .arg("user:slow")
        .query::<i64>(&mut conn)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("backend 'cache' timed out after 200ms"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(500));
    // The late reply of the script is dropped, not given to the next request.
    let v: String = conn.get("user:v").unwrap();
    assert_eq!(v, "value");
    assert_eq!(kw.metric(r#"keyway_errors_total{kind="timeout"}"#), 1.0);
}

#[test]
fn idle_clients_are_closed_and_the_unix_socket_serves() {
    let (s, c, r) = servers();
    let dir = TempDir::new("unix");
    let sock = dir.0.join("keyway.sock");
    let kw = Keyway::start(&config_with(
        &s,
        &c,
        &r,
        &format!(
            "idle_timeout_secs = 1\nunix_socket = \"{}\"",
            sock.display()
        ),
        "",
    ));
    let mut idle = kw.raw();
    let started = Instant::now();
    assert!(idle.is_closed());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let client = redis::Client::open(format!("redis+unix://{}", sock.display())).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = conn.set("session:unix", 1).unwrap();
    assert!(s.direct().exists::<_, bool>("session:unix").unwrap());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn a_client_that_never_reads_is_bounded_then_disconnected() {
    let (s, c, r) = servers();
    let kw = Keyway::start(&config_with(
        &s,
        &c,
        &r,
        "client_output_limit_bytes = 1048576\nclient_output_stall_secs = 1",
        "",
    ));
    let mut conn = kw.client();
    let _: () = conn.set("user:big", vec![b'x'; 16 * 1024]).unwrap();
    let before = rss_kib(kw.pid());
    let mut hostile = TcpStream::connect(("127.0.0.1", kw.port)).unwrap();
    hostile
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Ask for 16 KiB replies as fast as possible and never read them.
    let request = b"*2\r\n$3\r\nGET\r\n$8\r\nuser:big\r\n".repeat(256);
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        match hostile.write(&request) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // Not reading for longer than the stall period gets it disconnected.
    std::thread::sleep(Duration::from_secs(3));
    let peak = rss_kib(kw.pid());
    let mut buf = [0u8; 65536];
    hostile
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match hostile.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the non-reading client was disconnected");
    let _: String = conn
        .set("user:ok", "1")
        .map(|_: ()| "ok".to_string())
        .unwrap();
    eprintln!("non-reading client: sent {sent} bytes of requests; keyway RSS {before} KiB before, {peak} KiB at peak");
    assert!(
        peak < before + 64 * 1024,
        "RSS grew by {} KiB",
        peak - before
    );
}

#[test]
fn a_reload_adding_a_pool_that_sorts_first_moves_nothing_in_flight() {
    let r = Reference::start();
    // A transaction (leased from the session pool, WATCHed) and a client
    // blocked on the realtime pool, both opened before the reload.
    let mut tx = r.keyway.raw();
    tx.send(b"WATCH session:tx\r\nMULTI\r\nSET session:tx queued\r\nGET session:tx\r\n");
    for _ in 0..4 {
        tx.read_frame();
    }
    let mut blocked = r.keyway.raw();
    blocked.send(b"BLPOP rate:q 10\r\n");
    // And a reply in flight on the session pool's shared connection: a
    // script that keeps the server busy for 600 ms.
    let busy = "local t = redis.call('TIME') local stop = t[1] * 1000000 + t[2] + 600000 \
                repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop \
                return redis.call('SET', KEYS[1], 'slow')";
    let mut slow = r.keyway.raw();
    slow.send(
        format!(
            "*4\r\n$4\r\nEVAL\r\n${}\r\n{busy}\r\n$1\r\n1\r\n$12\r\nsession:slow\r\n",
            busy.len()
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(200));

    // A pool whose name sorts before every other one, with its own prefix.
    let extra = RedisServer::start();
    let config = std::fs::read_to_string(&r.keyway.config_path)
        .unwrap()
        .replace(
            "[pools.session]",
            &format!("[pools.aaa]\nurl = \"{}\"\n[pools.session]", extra.url()),
        )
        .replace(
            "prefixes = [\n",
            "prefixes = [\n  { prefix = \"aaa:\", pool = \"aaa\" },\n",
        );
    std::fs::write(&r.keyway.config_path, config).unwrap();
    let (status, body) = r.keyway.http("POST", "/reload");
    assert_eq!(status, 200, "{body}");

    // The reply in flight is counted under the pool that served it.
    let reply = String::from_utf8(slow.read_frame()).unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let counted = |pool: &str| {
        r.keyway.metric(&format!(
            r#"keyway_commands_total{{command="eval",outcome="ok",pool="{pool}"}}"#
        ))
    };
    let (_, exposition) = r.keyway.http("GET", "/metrics");
    let evals: Vec<&str> = exposition
        .lines()
        .filter(|l| l.starts_with("keyway_commands_total") && l.contains("eval"))
        .collect();
    assert_eq!(
        (counted("session"), counted("aaa")),
        (1.0, 0.0),
        "{evals:?}"
    );

    // The transaction commits where it was opened.
    tx.send(b"EXEC\r\n");
    let exec = String::from_utf8(tx.read_frame()).unwrap();
    assert!(exec.contains("queued"), "{exec}");
    let on_session: Option<String> = r.session.direct().get("session:tx").unwrap();
    assert_eq!(on_session.as_deref(), Some("queued"));
    let on_extra: Option<String> = extra.direct().get("session:tx").unwrap();
    assert_eq!(
        on_extra, None,
        "the transaction ran on the pool added by the reload"
    );

    // The blocked client is woken by a push on its own pool.
    let _: () = r.realtime.direct().rpush("rate:q", "job").unwrap();
    let woken = String::from_utf8(blocked.read_frame()).unwrap();
    assert!(woken.contains("job"), "{woken}");

    // New requests route by the new table, old prefixes to the same servers.
    let mut app = r.client();
    let _: () = app.set("aaa:k", 1).unwrap();
    let _: () = app.set("session:after", 1).unwrap();
    assert!(extra.direct().exists::<_, bool>("aaa:k").unwrap());
    assert!(r
        .session
        .direct()
        .exists::<_, bool>("session:after")
        .unwrap());
    println!("transaction, blocked client and routes kept their pools across the reload");
}
