//! One tenant against the others: frames Redis would refuse, memory taken
//! before authenticating, replies never read, a half-closed connection.
//! Each test shows that one client's bytes reach nothing other clients
//! share and that nothing acknowledged to a client is lost.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

/// Frames whose lengths Redis refuses (leading zeros, `-0`, `+1`), each
/// with the reply Redis gives before it closes the connection.
const POISON: &[(&[u8], &[u8])] = &[
    (
        b"*2\r\n$3\r\nGET\r\n$01\r\na\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    ),
    (
        b"*2\r\n$3\r\nGET\r\n$-0\r\n\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    ),
    (
        b"*2\r\n$3\r\nGET\r\n$+1\r\na\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    ),
    (
        b"*02\r\n$3\r\nGET\r\n$1\r\na\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    ),
    (
        b"*-0\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    ),
];

#[test]
fn frames_redis_refuses_never_reach_a_shared_connection() {
    let r = Reference::start();
    // Redis itself answers each of them this way and closes.
    for (frame, reply) in POISON {
        let mut direct = RawClient::connect(r.cache.port);
        direct.send(frame);
        assert_eq!(direct.read_frame(), *reply, "redis-server's own reply");
        assert!(direct.is_closed());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let ops = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (0..4)
        .map(|i| {
            let (stop, errors, ops) = (stop.clone(), errors.clone(), ops.clone());
            let mut client = r.client();
            std::thread::spawn(move || {
                let key = format!("user:other:{i}");
                while !stop.load(Ordering::Relaxed) {
                    let set: redis::RedisResult<()> = client.set(&key, "v");
                    let get: redis::RedisResult<String> = client.get(&key);
                    match (set, get) {
                        (Ok(()), Ok(v)) if v == "v" => ops.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    // One client sends poison every 10 ms for 2 s, each on a new connection
    // (keyway closes the connection after a protocol error, as Redis does).
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let (frame, reply) = POISON[sent % POISON.len()];
        let mut attacker = r.keyway.raw();
        attacker.send(frame);
        assert_eq!(attacker.read_frame(), reply);
        assert!(attacker.is_closed());
        sent += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in others {
        t.join().unwrap();
    }
    let (errors, ops) = (errors.load(Ordering::Relaxed), ops.load(Ordering::Relaxed));
    println!("{sent} poison frames; other clients: {ops} round trips, {errors} errors");
    assert_eq!(errors, 0, "other clients saw errors");
    assert!(ops > 100, "other clients made progress: {ops}");
    assert!(r.keyway.metric(r#"keyway_errors_total{kind="protocol"}"#) >= sent as f64);

    // SELECT reads its index as Redis does.
    let mut raw = r.keyway.raw();
    for index in ["01", "-0", "+1"] {
        raw.send(format!("SELECT {index}\r\n").as_bytes());
        assert_eq!(
            raw.read_frame(),
            b"-ERR value is not an integer or out of range\r\n"
        );
    }
}

#[test]
fn an_unauthenticated_client_cannot_make_keyway_buffer() {
    // Redis with a password, to compare with; keyway's pools need none.
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let (session, cache, realtime) = (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    );
    let keyway = Keyway::start_with_env(
        &reference_config(&session.url(), &cache.url(), &realtime.url()),
        &[("KEYWAY_REQUIREPASS", "s3cret")],
    );
    // Through keyway and directly, byte for byte the same refusal.
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*2\r\n$3\r\nGET\r\n$209715200\r\n",
            b"-ERR Protocol error: unauthenticated bulk length\r\n",
        ),
        (
            b"*11\r\n",
            b"-ERR Protocol error: unauthenticated multibulk length\r\n",
        ),
    ];
    for (frame, reply) in cases {
        for port in [redis.port, keyway.port] {
            let mut raw = RawClient::connect(port);
            raw.send(frame);
            assert_eq!(raw.read_frame(), *reply, "port {port}");
            assert!(raw.is_closed());
        }
    }

    // Three strangers each try to push 200 MiB: keyway's peak memory stays
    // far below one of them.
    let before = proc_status_kib(keyway.pid(), "VmHWM");
    let strangers: Vec<_> = (0..3)
        .map(|_| {
            let port = keyway.port;
            std::thread::spawn(move || {
                let mut raw = RawClient::connect(port);
                raw.send_lossy(b"*2\r\n$3\r\nGET\r\n$209715200\r\n");
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..200 {
                    raw.send_lossy(&chunk);
                }
            })
        })
        .collect();
    for t in strangers {
        t.join().unwrap();
    }
    let peak = proc_status_kib(keyway.pid(), "VmHWM");
    println!("keyway peak RSS {before} KiB before, {peak} KiB after 3 x 200 MiB unauthenticated");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");

    // Authenticated, large values are fine.
    let mut raw = keyway.raw();
    raw.send(b"AUTH s3cret\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    let value = vec![b'v'; 100_000];
    let mut set = b"*3\r\n$3\r\nSET\r\n$9\r\nuser:big1\r\n$100000\r\n".to_vec();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    raw.send(&set);
    assert_eq!(raw.read_frame(), b"+OK\r\n");
}

/// The reference pools, keyway with `settings` in its [server] table.
fn with_server_settings(settings: &str) -> ([RedisServer; 3], Keyway) {
    let servers = reference_servers();
    let [session, cache, realtime] = &servers;
    let config = format!(
        "{}\n[server]\n{settings}",
        reference_config(&session.url(), &cache.url(), &realtime.url())
    );
    (servers, Keyway::start(&config))
}

#[test]
fn a_client_that_never_reads_holds_no_more_than_its_output_limit() {
    let ([_session, cache, _realtime], keyway) =
        with_server_settings("client_output_limit_bytes = 8388608\nclient_output_stall_secs = 1\n");
    let mut direct = cache.direct();
    let big = vec![b'b'; 1 << 20];
    let _: () = direct.set("user:big", &big[..]).unwrap();

    // Three clients each ask for 800 MiB in one write and never read.
    let get = b"*2\r\n$3\r\nGET\r\n$8\r\nuser:big\r\n".repeat(800);
    let mut hogs: Vec<_> = (0..3)
        .map(|_| {
            let mut raw = keyway.raw();
            raw.send(&get);
            raw
        })
        .collect();
    // Meanwhile another client is served at once.
    let mut other = keyway.client();
    for _ in 0..50 {
        let v: Option<String> = other.get("user:small").unwrap();
        assert_eq!(v, None);
    }
    // Each hog is cut within its stall time and what it held is freed.
    let cut = keyway.wait_until(Duration::from_secs(10), || {
        keyway.metric(r#"keyway_errors_total{kind="client_output_stalled"}"#)
            + keyway.metric(r#"keyway_errors_total{kind="client_output_limit"}"#)
            >= 3.0
    });
    let peak = proc_status_kib(keyway.pid(), "VmHWM");
    std::thread::sleep(Duration::from_millis(500));
    let after = proc_status_kib(keyway.pid(), "VmRSS");
    println!(
        "3 non-reading clients, 8 MiB limit: peak RSS {peak} KiB, {after} KiB after they were cut"
    );
    assert!(cut, "the non-reading clients were disconnected");
    for hog in hogs.iter_mut() {
        assert!(hog_closed(hog), "a non-reading client is disconnected");
    }
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
    let v: Option<String> = other.get("user:small").unwrap();
    assert_eq!(v, None);
}

/// Reads what a cut client was sent until the connection ends.
fn hog_closed(raw: &mut RawClient) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if raw.is_closed() {
            return true;
        }
    }
    false
}

#[test]
fn a_half_closed_client_gets_the_element_it_popped() {
    let r = Reference::start();
    let mut direct = r.session.direct();
    for i in 0..20 {
        let _: () = direct.rpush("session:q", format!("v{i}")).unwrap();
        let mut raw = r.keyway.raw();
        raw.send(b"BLPOP session:q 0\r\n");
        raw.shutdown_write();
        let expected = format!("*2\r\n$9\r\nsession:q\r\n${}\r\nv{i}\r\n", 2 + i / 10);
        assert_eq!(
            String::from_utf8_lossy(&raw.read_frame()),
            expected,
            "try {i}"
        );
        let _: () = direct.zadd("session:z", format!("m{i}"), i).unwrap();
        let mut raw = r.keyway.raw();
        raw.send(b"BZPOPMIN session:z 0\r\n");
        raw.shutdown_write();
        let got = raw.read_frame();
        assert!(
            String::from_utf8_lossy(&got).contains(&format!("m{i}")),
            "try {i}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    let left: usize = direct.llen("session:q").unwrap();
    assert_eq!(left, 0);

    // Blocked on an empty list, then half-closed (with a command pipelined
    // behind it, or with the EOF right behind the command): Redis frees the
    // client, so it is closed without a reply (never the timeout reply a
    // zero timeout cannot give), the pipelined SET never runs, and nothing
    // pushed later is taken by it.
    for (request, pause) in [
        (
            &b"BLPOP session:empty 0\r\nSET session:after 1\r\n"[..],
            200,
        ),
        (&b"BLPOP session:empty 0\r\n"[..], 0),
    ] {
        let mut raw = r.keyway.raw();
        raw.send(request);
        std::thread::sleep(Duration::from_millis(pause));
        raw.shutdown_write();
        assert!(raw.is_closed(), "closed without a reply");
    }
    let _: () = direct.rpush("session:empty", "kept").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let left: usize = direct.llen("session:empty").unwrap();
    assert_eq!(left, 1, "a later push stays in the list");
    let after: Option<String> = direct.get("session:after").unwrap();
    assert_eq!(
        after, None,
        "nothing pipelined behind the blocked command ran"
    );
}

/// Sends 300 GETs of `user:v` (a value of `value_len` bytes) in one write
/// and reads the replies, pausing `pause` before every `every` of them;
/// returns how long the reading took.
fn get_300_read_at_a_pace(
    raw: &mut RawClient,
    value_len: usize,
    every: usize,
    pause: Duration,
) -> Duration {
    raw.send(&b"*2\r\n$3\r\nGET\r\n$6\r\nuser:v\r\n".repeat(300));
    let reply_len = format!("${value_len}\r\n").len() + value_len + 2;
    let started = Instant::now();
    for i in 0..300 {
        if i % every == 0 {
            std::thread::sleep(pause);
        }
        let frame = raw.read_frame();
        assert_eq!(frame.len(), reply_len, "reply {i}");
    }
    started.elapsed()
}

#[test]
fn a_slow_reader_that_keeps_reading_is_not_cut() {
    let ([_session, cache, _realtime], keyway) =
        with_server_settings("client_output_limit_bytes = 1048576\nclient_output_stall_secs = 1\n");
    let value = vec![b'v'; 64 * 1024];
    let _: () = cache.direct().set("user:v", &value[..]).unwrap();
    // 19 MiB of replies, read 512 KiB at a time every 100 ms: about 4 s,
    // four times the stall time, never stuck.
    let mut raw = keyway.raw();
    let took = get_300_read_at_a_pace(&mut raw, value.len(), 8, Duration::from_millis(100));
    println!("300 x 64 KiB read slowly in {took:?}");
    assert!(took > Duration::from_secs(2));
    assert_eq!(
        keyway.metric(r#"keyway_errors_total{kind="client_output_stalled"}"#),
        0.0
    );
}

/// Reply sizes are only guessed from the replies so far: after many small
/// replies a pipeline of large ones comes back at once, far past the
/// output limit. A client that keeps reading them is served, as Redis
/// serves it (Redis sets no output limit on normal clients); found with
/// ioredis's own suite (600 one-MiB GETs after 600 SETs: disconnected).
#[test]
fn a_reader_is_not_cut_when_large_replies_follow_small_ones() {
    let ([_session, cache, _realtime], keyway) = with_server_settings(
        "client_output_limit_bytes = 1048576\nclient_output_stall_secs = 10\n",
    );
    let value = vec![b'v'; 64 * 1024];
    let _: () = cache.direct().set("user:v", &value[..]).unwrap();
    let mut raw = keyway.raw();
    raw.send(&b"*2\r\n$6\r\nEXISTS\r\n$6\r\nuser:v\r\n".repeat(2000));
    for i in 0..2000 {
        assert_eq!(raw.read_frame(), b":1\r\n", "reply {i}");
    }
    // 300 x 64 KiB in one write: 19 times the limit, read steadily.
    let took = get_300_read_at_a_pace(&mut raw, value.len(), 16, Duration::from_millis(20));
    println!("300 x 64 KiB after 2,000 small replies, 1 MiB limit: read in {took:?}");
    assert_eq!(
        keyway.metric(r#"keyway_errors_total{kind="client_output_limit"}"#),
        0.0
    );
}

/// `SCRIPT DEBUG YES|SYNC` makes the connection's next EVAL a Lua debugger
/// session: forwarded on a shared connection, another tenant's next command
/// would be read by the debugger. keyway refuses it, in and out of MULTI.
#[test]
fn a_script_debugger_never_takes_a_shared_connection() {
    let r = Reference::start();
    let mut others: Vec<_> = (0..4).map(|_| r.client()).collect();
    for client in &mut others {
        let one: i64 = redis::cmd("EVAL")
            .arg("return 1")
            .arg(0)
            .query(client)
            .unwrap();
        assert_eq!(one, 1);
    }

    let mut attacker = r.keyway.raw();
    for mode in ["YES", "SYNC", "NO"] {
        attacker.send(format!("SCRIPT DEBUG {mode}\r\n").as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&attacker.read_frame()),
            "-ERR 'SCRIPT DEBUG' is not supported by keyway: it would turn a shared backend connection into a Lua debugger session\r\n"
        );
    }
    attacker.send(b"MULTI\r\nSCRIPT DEBUG YES\r\nEXEC\r\n");
    assert_eq!(attacker.read_frame(), b"+OK\r\n");
    assert!(String::from_utf8_lossy(&attacker.read_frame()).contains("'SCRIPT DEBUG'"));
    assert!(String::from_utf8_lossy(&attacker.read_frame()).starts_with("-EXECABORT"));

    // Every other client's scripts and commands still run as scripts.
    for (i, client) in others.iter_mut().enumerate() {
        let one: i64 = redis::cmd("EVAL")
            .arg("return 1")
            .arg(0)
            .query(client)
            .unwrap();
        assert_eq!(one, 1, "client {i}");
        let _: () = client.set(format!("user:{i}"), i).unwrap();
        let got: usize = client.get(format!("user:{i}")).unwrap();
        assert_eq!(got, i);
    }
    assert!(
        r.keyway
            .metric(r#"keyway_denials_total{detail="script|debug",reason="unsupported"}"#)
            >= 4.0
    );
}

/// keyway holds a transaction's commands until EXEC: past
/// `max_transaction_bytes` the command is refused, EXEC answers EXECABORT,
/// and a client that goes on queueing makes keyway hold nothing more.
#[test]
fn a_transaction_cannot_make_keyway_hold_unbounded_commands() {
    let ([_session, cache, _realtime], keyway) =
        with_server_settings("max_transaction_bytes = 1048576\n");
    let mut raw = keyway.raw();
    raw.send(b"MULTI\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    let before = proc_status_kib(keyway.pid(), "VmRSS");
    // 64 MiB of SETs of 1 KiB values, 1,000 per write.
    let value = "v".repeat(1024);
    let set = format!("*3\r\n$3\r\nSET\r\n$6\r\nuser:t\r\n$1024\r\n{value}\r\n");
    let batch = set.repeat(1000);
    let (mut queued, mut refused) = (0, Vec::new());
    for _ in 0..64 {
        raw.send(batch.as_bytes());
        for _ in 0..1000 {
            match raw.read_frame() {
                frame if frame == b"+QUEUED\r\n" => queued += 1,
                frame => refused.push(String::from_utf8_lossy(&frame).into_owned()),
            }
        }
    }
    let grown_mib = proc_status_kib(keyway.pid(), "VmRSS").saturating_sub(before) / 1024;
    raw.send(b"EXEC\r\n");
    let exec = String::from_utf8_lossy(&raw.read_frame()).into_owned();
    println!(
        "64,000 SETs in MULTI: {queued} queued, {} refused; RSS grew {grown_mib} MiB",
        refused.len()
    );
    assert_eq!(refused.len(), 1, "only the command past the limit");
    assert!(
        refused[0].starts_with(
            "-ERR keyway holds at most 1048576 bytes of commands queued in a transaction"
        ),
        "{}",
        refused[0]
    );
    assert!(exec.starts_with("-EXECABORT"), "{exec}");
    assert!(grown_mib < 24, "RSS grew {grown_mib} MiB");
    let stored: Option<String> = cache.direct().get("user:t").unwrap();
    assert_eq!(stored, None, "nothing of the aborted transaction ran");
    assert!(
        keyway.metric(r#"keyway_denials_total{detail="max_transaction_bytes",reason="limit"}"#)
            >= 1.0
    );
}

/// Each client's own bounds (argument size, output limit, transaction
/// size) leave their sum open: many clients could make keyway hold
/// gigabytes and be killed for memory, taking every tenant with it. Past
/// `max_client_memory` the client holding the most is closed with an
/// error, whether what it holds is a request it is still sending or
/// replies it does not read; the others go on.
#[test]
fn clients_together_cannot_make_keyway_hold_more_than_max_client_memory() {
    const MIB: usize = 1 << 20;
    let ([_session, cache, _realtime], keyway) =
        with_server_settings(&format!("max_client_memory = {}\n", 40 * MIB));
    let evictions =
        || keyway.metric(r#"keyway_denials_total{detail="max_client_memory",reason="limit"}"#);
    let _: () = cache.direct().set("user:big", vec![b'b'; MIB]).unwrap();
    let mut other = keyway.client();

    // Three clients send 6 MiB of an 8 MiB value and pause: 18 MiB held.
    let set_header = |len: usize| {
        let key = format!("user:up{}", len / MIB);
        format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${len}\r\n", key.len())
    };
    let mut uploads: Vec<RawClient> = (0..3)
        .map(|_| {
            let mut raw = keyway.raw();
            raw.send(set_header(8 * MIB).as_bytes());
            raw.send(&vec![b'u'; 6 * MIB]);
            raw
        })
        .collect();
    // A fourth sends 24 MiB of a 64 MiB one: past 40 MiB, and the most.
    let mut whale = keyway.raw();
    whale.send(set_header(64 * MIB).as_bytes());
    whale.send_lossy(&vec![b'w'; 24 * MIB]);
    let whale_error = String::from_utf8_lossy(&whale.read_frame()).into_owned();
    assert!(
        whale_error.starts_with(&format!(
            "-ERR keyway closed this connection: its clients together held more than server.max_client_memory ({} bytes)",
            40 * MIB
        )),
        "{whale_error}"
    );
    assert!(whale.is_closed());
    assert_eq!(evictions(), 1.0, "only the one holding the most");

    // One that asks for 200 MiB of replies and reads none is the next.
    let mut reader_of_none = keyway.raw();
    reader_of_none.send(&b"*2\r\n$3\r\nGET\r\n$8\r\nuser:big\r\n".repeat(200));
    assert!(
        hog_closed(&mut reader_of_none),
        "closed for its unread replies"
    );
    assert_eq!(evictions(), 2.0);

    // Meanwhile and after, the others are served; the uploads complete.
    let _: () = other.set("user:small", "s").unwrap();
    for (i, upload) in uploads.iter_mut().enumerate() {
        upload.send(&vec![b'u'; 2 * MIB]);
        upload.send(b"\r\n");
        assert_eq!(upload.read_frame(), b"+OK\r\n", "upload {i}");
    }
    let stored: Vec<u8> = cache.direct().get("user:up8").unwrap();
    assert_eq!(stored.len(), 8 * MIB);
    let small: String = other.get("user:small").unwrap();
    assert_eq!(small, "s");
    let peak_mib = proc_status_kib(keyway.pid(), "VmHWM") / 1024;
    println!("limit 40 MiB: 2 clients closed, 3 uploads and 1 other client served; peak RSS {peak_mib} MiB");
    assert_eq!(evictions(), 2.0);
    assert_eq!(
        keyway.metric("keyway_client_memory_limit_bytes"),
        (40 * MIB) as f64
    );
    // What is still counted: nothing, once the replies are read.
    assert!(keyway.wait_until(Duration::from_secs(5), || {
        keyway.metric("keyway_client_memory_bytes") == 0.0
    }));
    assert!(peak_mib < 120, "peak RSS {peak_mib} MiB");
}

/// Inside MULTI, Redis answers an unsubscribe verb with one frame per
/// channel: more than the one reply a queued command owes EXEC. On a
/// leased connection the frames left over would be read as the next
/// tenant's replies, so keyway refuses the verbs there (as it refuses the
/// subscribe verbs) and a transaction leaves nothing behind.
#[test]
fn a_transaction_cannot_leave_replies_for_the_next_tenant() {
    let r = Reference::start();
    let mut direct = RawClient::connect(r.cache.port);
    direct.send(b"MULTI\r\nUNSUBSCRIBE a b c\r\nEXEC\r\n");
    let frames: Vec<Vec<u8>> = (0..5).map(|_| direct.read_frame()).collect();
    assert_eq!(
        frames[2],
        b"*1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
    );
    assert!(
        frames[3].starts_with(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb"),
        "Redis's own extra frames"
    );

    let _: () = r.cache.direct().set("user:theirs", "private").unwrap();
    for verb in ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"] {
        let mut tenant = r.client();
        let mut other = r.client();
        let refused = redis::pipe()
            .atomic()
            .cmd(verb)
            .arg(&["user:a", "user:b", "user:c"])
            .query::<redis::Value>(&mut tenant)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("inside MULTI is not supported by keyway"),
            "{verb}: {refused}"
        );
        // The next transaction, on the one leased connection there is,
        // gets its own replies.
        let (value,): (Option<String>,) = redis::pipe()
            .atomic()
            .get("user:theirs")
            .query(&mut other)
            .unwrap();
        assert_eq!(value.as_deref(), Some("private"), "{verb}");
        let pong: String = redis::cmd("PING").query(&mut tenant).unwrap();
        assert_eq!(pong, "PONG");
    }
}

/// Messages for a subscriber that does not read are bounded in bytes: past
/// its output limit the subscriber is disconnected, as Redis disconnects a
/// pub/sub client past its hard output limit, while one that reads gets
/// every message.
#[test]
fn a_subscriber_that_never_reads_is_cut_at_its_output_limit() {
    const MESSAGES: usize = 1_600;
    const BATCH: usize = 8;
    let (_servers, keyway) = with_server_settings("client_output_limit_bytes = 1048576\n");
    let subscribe = b"*2\r\n$9\r\nSUBSCRIBE\r\n$7\r\nuser:ch\r\n";
    let mut hog = keyway.raw();
    hog.send(subscribe);
    assert!(hog.read_frame().starts_with(b"*3\r\n$9\r\nsubscribe"));
    let mut reader = keyway.raw();
    reader.send(subscribe);
    assert!(reader.read_frame().starts_with(b"*3\r\n$9\r\nsubscribe"));
    let received = Arc::new(AtomicUsize::new(0));
    let reading = {
        let received = received.clone();
        std::thread::spawn(move || {
            for _ in 0..MESSAGES {
                let frame = reader.read_frame();
                assert!(frame.starts_with(b"*3\r\n$7\r\nmessage\r\n"));
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // 100 MiB of 64 KiB messages, in batches the reader keeps up with.
    let payload = vec![b'm'; 64 * 1024];
    let mut publisher = keyway.client();
    let before = proc_status_kib(keyway.pid(), "VmRSS");
    for batch in 0..MESSAGES / BATCH {
        for _ in 0..BATCH {
            let _: i64 = redis::cmd("PUBLISH")
                .arg("user:ch")
                .arg(&payload[..])
                .query(&mut publisher)
                .unwrap();
        }
        let sent = (batch + 1) * BATCH;
        assert!(
            wait_for(Duration::from_secs(10), || received.load(Ordering::Relaxed)
                >= sent)
            .is_some(),
            "the reading subscriber got {} of {sent}",
            received.load(Ordering::Relaxed)
        );
    }
    reading.join().unwrap();
    let grown_mib = proc_status_kib(keyway.pid(), "VmHWM").saturating_sub(before) / 1024;
    let cut = keyway.metric(r#"keyway_errors_total{kind="client_output_limit"}"#);
    println!(
        "{MESSAGES} messages of 64 KiB, 1 MiB limit: the reader got all, peak RSS grew {grown_mib} MiB, {cut} subscriber(s) cut"
    );
    assert!(
        hog_closed(&mut hog),
        "the non-reading subscriber is disconnected"
    );
    assert_eq!(cut, 1.0);
    assert!(grown_mib < 48, "peak RSS grew {grown_mib} MiB");
}

/// EXEC's reply is one frame holding every queued command's reply: a
/// transaction of many large GETs made keyway hold all of it at once,
/// outside both output limits (40 GETs of 32 MiB: 2.7 GB). Past half the
/// client's output limit it is passed through as it arrives.
#[test]
fn a_transaction_of_large_values_passes_through_without_being_held() {
    const GETS: usize = 200;
    const VALUE: usize = 1 << 20;
    let ([_session, cache, _realtime], keyway) =
        with_server_settings("client_output_limit_bytes = 4194304\n");
    let value = vec![b'v'; VALUE];
    let _: () = cache.direct().set("user:big", &value[..]).unwrap();
    let mut raw = keyway.raw();
    let before = proc_status_kib(keyway.pid(), "VmHWM");
    let mut request = b"MULTI\r\n".to_vec();
    request.extend(b"GET user:big\r\n".repeat(GETS));
    request.extend(b"EXEC\r\n");
    raw.send(&request);
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    for _ in 0..GETS {
        assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    }
    let exec = raw.read_frame();
    let grown_mib = proc_status_kib(keyway.pid(), "VmHWM").saturating_sub(before) / 1024;
    println!(
        "EXEC of {GETS} GETs of 1 MiB ({} MiB), 4 MiB output limit: peak RSS grew {grown_mib} MiB",
        exec.len() >> 20
    );
    let mut expected = format!("*{GETS}\r\n").into_bytes();
    for _ in 0..GETS {
        expected.extend(format!("${VALUE}\r\n").as_bytes());
        expected.extend(&value);
        expected.extend(b"\r\n");
    }
    assert!(exec == expected, "EXEC's reply arrived whole and in order");
    assert!(grown_mib < 64, "peak RSS grew {grown_mib} MiB");
    // The connection and its lease go on.
    raw.send(b"MULTI\r\nSTRLEN user:big\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), format!("*1\r\n:{VALUE}\r\n").as_bytes());
}
