//! Pipelines: a client may send many commands without waiting; replies come
//! back complete and in request order even when they go to different pools.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

const PREFIXES: [&str; 3] = ["session:p:", "user:p:", "rate:p:"];

#[test]
fn hundred_thousand_commands_across_three_pools_come_back_in_order() {
    let r = Reference::start();
    const N: usize = 100_000;
    let mut stream = TcpStream::connect(("127.0.0.1", r.keyway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let reader_stream = stream.try_clone().unwrap();

    // Request i: INCRBY <prefix><i%1000> i; written all at once, read after.
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(N * 48);
        for i in 0..N {
            let key = format!("{}{}", PREFIXES[i % 3], i % 1000);
            let by = i.to_string();
            buf.extend_from_slice(
                format!(
                    "*3\r\n$6\r\nINCRBY\r\n${}\r\n{}\r\n${}\r\n{}\r\n",
                    key.len(),
                    key,
                    by.len(),
                    by
                )
                .as_bytes(),
            );
        }
        stream.write_all(&buf).unwrap();
        stream
    });

    let mut expected = std::collections::HashMap::<String, i64>::new();
    let mut reader = BufReader::new(reader_stream);
    let mut line = String::new();
    for i in 0..N {
        let key = format!("{}{}", PREFIXES[i % 3], i % 1000);
        let total = expected.entry(key).or_insert(0);
        *total += i as i64;
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(
            line,
            format!(":{}\r\n", total),
            "reply {i} out of order or wrong"
        );
    }
    let _stream = writer.join().unwrap();

    // Every key lives on the pool of its prefix, with the final total.
    let mut s = r.session.direct();
    let v: i64 = redis::cmd("GET").arg("session:p:0").query(&mut s).unwrap();
    assert_eq!(v, expected["session:p:0"]);
    let mut rt = r.realtime.direct();
    let v: i64 = redis::cmd("GET").arg("rate:p:2").query(&mut rt).unwrap();
    assert_eq!(v, expected["rate:p:2"]);
}

#[test]
fn redis_crate_pipeline_mixing_pools_and_local_commands() {
    let r = Reference::start();
    let mut c = r.client();
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET")
            .arg(format!("{}{i}", PREFIXES[i % 3]))
            .arg(i);
        pipe.cmd("PING");
        pipe.cmd("MGET")
            .arg(format!("{}{i}", PREFIXES[i % 3]))
            .arg(format!("{}{i}", PREFIXES[(i + 1) % 3]));
    }
    let replies: Vec<redis::Value> = pipe.query(&mut c).unwrap();
    assert_eq!(replies.len(), 6000);
    for i in 0..2000 {
        assert_eq!(replies[i * 3], redis::Value::Okay);
        assert_eq!(
            replies[i * 3 + 1],
            redis::Value::SimpleString("PONG".into())
        );
        let got: Vec<Option<i64>> = redis::from_redis_value(&replies[i * 3 + 2]).unwrap();
        // The second key (another prefix, same number) is never written.
        assert_eq!(got, vec![Some(i as i64), None], "MGET {i}");
    }
}

#[test]
fn pipelining_clients_on_the_multi_threaded_scheduler_get_their_own_replies() {
    // With worker_threads > 1 a backend reader and the session it answers
    // may run on different threads: replies still reach the right client
    // in order.
    let (session, cache, realtime) = (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    );
    let kw = Keyway::start(&format!(
        "[server]\nworker_threads = 2\n{}",
        reference_config(&session.url(), &cache.url(), &realtime.url())
    ));
    const CLIENTS: usize = 4;
    const N: usize = 20_000;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let port = kw.port;
            std::thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut buf = Vec::new();
                for i in 0..N {
                    let k = i % 100;
                    let key = format!("{}mt:{c}:{k}", PREFIXES[k % 3]);
                    buf.extend_from_slice(
                        format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
                    );
                }
                let mut writer = stream.try_clone().unwrap();
                let sender = std::thread::spawn(move || writer.write_all(&buf).unwrap());
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                for i in 0..N {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    // Key i % 100 has been incremented (i / 100 + 1) times.
                    assert_eq!(
                        line,
                        format!(":{}\r\n", i / 100 + 1),
                        "client {c} reply {i}"
                    );
                }
                sender.join().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn a_backlog_of_mixed_sizes_behind_a_busy_backend_is_written_in_order() {
    // A script holds the session backend for a second while megabytes of
    // SETs of four sizes queue behind it: more than the kernel's buffers
    // and the connection's copy lane (1 MiB) hold, so requests also queue
    // by reference, small and large, and must still leave in order.
    let r = Reference::start();
    const N: usize = 2_000;
    const SIZES: [usize; 4] = [10, 3_000, 12_000, 20_000];
    let value = |i: usize| vec![b'a' + (i % 26) as u8; SIZES[i % SIZES.len()]];
    let command = |args: &[&[u8]]| {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    };
    let stream = TcpStream::connect(("127.0.0.1", r.keyway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut next = |line: &mut String| {
        line.clear();
        reader.read_line(line).unwrap();
    };
    // First a warm-up, so the client's window of replies owed (slow start
    // from 32) is wide enough for the whole backlog.
    let mut warm = Vec::new();
    for i in 0..8_192 {
        warm.extend(command(&[
            b"SET",
            format!("session:warm:{}", i % 10).as_bytes(),
            b"x",
        ]));
    }
    writer.write_all(&warm).unwrap();
    for _ in 0..8_192 {
        next(&mut line);
        assert_eq!(line, "+OK\r\n");
    }
    let busy = "local function now() local t = redis.call('TIME') \
                return t[1] * 1000000 + t[2] end \
                local start = now() while now() - start < 1000000 do end return 'done'";
    let mut buf = command(&[b"EVAL", busy.as_bytes(), b"1", b"session:busy"]);
    for i in 0..N {
        buf.extend(command(&[
            b"SET",
            format!("session:backlog:{i}").as_bytes(),
            &value(i),
        ]));
    }
    for i in 0..N {
        buf.extend(command(&[
            b"STRLEN",
            format!("session:backlog:{i}").as_bytes(),
        ]));
    }
    let sender = std::thread::spawn(move || writer.write_all(&buf).unwrap());
    next(&mut line);
    assert_eq!(line, "$4\r\n");
    next(&mut line);
    assert_eq!(line, "done\r\n");
    for i in 0..N {
        next(&mut line);
        assert_eq!(line, "+OK\r\n", "SET {i}");
    }
    for i in 0..N {
        next(&mut line);
        assert_eq!(
            line,
            format!(":{}\r\n", SIZES[i % SIZES.len()]),
            "STRLEN {i}"
        );
    }
    sender.join().unwrap();
    // What the backend holds is what was sent, byte for byte.
    let mut s = r.session.direct();
    let mut gets = redis::pipe();
    for i in 0..N {
        gets.cmd("GET").arg(format!("session:backlog:{i}"));
    }
    let got: Vec<Vec<u8>> = gets.query(&mut s).unwrap();
    for (i, got) in got.iter().enumerate() {
        assert!(*got == value(i), "value {i}");
    }
    println!(
        "{N} SETs of {SIZES:?} bytes ({} MB) queued behind a busy backend, in order",
        (0..N).map(|i| SIZES[i % SIZES.len()]).sum::<usize>() / 1_000_000
    );
}
