//! Rate limits shared by several keyway processes through one Redis: the
//! admitted total holds to one limit, whatever the number of keyways; the
//! shared pool failing (open and closed); a Sentinel failover of the shared
//! pool; and idle subjects leaving nothing behind in Redis.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const RATE: u64 = 100;
const BURST: u64 = 20;
const SECONDS: u64 = 5;

fn config(data: &str, limits: &str, limit: &str) -> String {
    format!(
        r#"
[backend]
connect_timeout_ms = 300
request_timeout_ms = 1000
backoff_min_ms = 20
backoff_max_ms = 100

[pools.cache]
url = "{data}"
[pools.realtime]
url = "{limits}"
[routes]
default = "cache"

[[limits]]
name = "api"
scope = "global"
rate = {RATE}
burst = {BURST}
{limit}
"#
    )
}

/// Hammers every port with `per_port` clients sending SET for `seconds`;
/// returns (admitted, rate-limited, other errors).
fn hammer(ports: &[u16], per_port: usize, seconds: u64) -> (u64, u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for &port in ports {
        for _ in 0..per_port {
            let (admitted, limited, other, stop) = (
                admitted.clone(),
                limited.clone(),
                other.clone(),
                stop.clone(),
            );
            let mut c = connect(port);
            workers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match redis::cmd("SET").arg("k").arg("v").query::<()>(&mut c) {
                        Ok(()) => admitted.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.to_string().contains("rate limit exceeded (limit 'api')") => {
                            // A refused client backs off a little, as a real one
                            // would, leaving CPU to the servers under test.
                            std::thread::sleep(Duration::from_millis(1));
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("unexpected: {e}");
                            other.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

/// Three keyways on one realtime Redis, a limit of 100/s with burst 20.
fn three_keyways(limit: &str) -> (RedisServer, RedisServer, Vec<Keyway>) {
    let data = RedisServer::start();
    let limits = RedisServer::start();
    let keyways = (0..3)
        .map(|_| Keyway::start(&config(&data.url(), &limits.url(), limit)))
        .collect();
    (data, limits, keyways)
}

#[test]
fn three_keyways_hold_one_limit_together() {
    let expected = (RATE * SECONDS + BURST) as f64;
    let mut report = Vec::new();
    for (label, limit, low, high) in [
        ("shared", "shared = true", 0.9, 1.1),
        (
            "shared, batch 5",
            "shared = true\nshared_batch = 5",
            0.85,
            1.1,
        ),
        ("local", "", 2.7, 3.3),
    ] {
        let (_data, _limits, keyways) = three_keyways(limit);
        let ports: Vec<u16> = keyways.iter().map(|k| k.port).collect();
        let (admitted, limited, other) = hammer(&ports, 4, SECONDS);
        let ratio = admitted as f64 / expected;
        println!(
            "{label}: admitted {admitted} (expected {expected} for one limit: ratio {ratio:.3}), limited {limited}, other errors {other}"
        );
        report.push((label, ratio));
        assert_eq!(other, 0, "{label}");
        assert!(limited > 0, "{label}: the limit was reached");
        assert!(
            (low..=high).contains(&ratio),
            "{label}: admitted {admitted}, {ratio:.3} of one limit's {expected}"
        );
        if limit.is_empty() {
            continue;
        }
        let calls = keyways[0]
            .metric("keyway_shared_limit_calls_total{limit=\"api\",outcome=\"admitted\"}");
        assert!(calls > 0.0, "{label}: round trips counted");
    }
}

#[test]
fn shared_pool_down_fails_open_or_closed() {
    for failure in ["open", "closed"] {
        let data = RedisServer::start();
        let mut limits = RedisServer::start();
        let kw = Keyway::start(&config(
            &data.url(),
            &limits.url(),
            &format!("shared = true\nshared_failure = \"{failure}\""),
        ));
        let mut c = kw.client();
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
        limits.stop();
        let answer = redis::cmd("SET").arg("k").arg("v").query::<()>(&mut c);
        match failure {
            "open" => {
                answer.unwrap();
                assert!(kw.metric("keyway_shared_limit_fallbacks_total{limit=\"api\"}") >= 1.0);
                assert!(
                    kw.log().contains("shared rate limit unavailable"),
                    "{}",
                    kw.log()
                );
                // Still limited, by this keyway's own limiter.
                let (admitted, limited, _) = hammer(&[kw.port], 2, 1);
                assert!(
                    limited > 0 && admitted <= RATE + BURST + 20,
                    "{admitted} admitted"
                );
            }
            _ => {
                let e = answer.unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "An error was signalled by the server - ResponseError: rate limit unavailable"
                );
                assert_eq!(
                    kw.metric(
                        "keyway_denials_total{detail=\"api\",reason=\"ratelimit_unavailable\"}"
                    ),
                    1.0
                );
            }
        }
        // Back: decided by the shared pool again.
        limits.restart();
        let before =
            kw.metric("keyway_shared_limit_calls_total{limit=\"api\",outcome=\"admitted\"}");
        let back = kw.wait_until(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(50));
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query::<()>(&mut c)
                .is_ok()
                && kw.metric("keyway_shared_limit_calls_total{limit=\"api\",outcome=\"admitted\"}")
                    > before
        });
        assert!(back, "{failure}: the shared pool answers again");
    }
}

#[test]
fn idle_subjects_expire_from_redis() {
    let data = RedisServer::start();
    let limits = RedisServer::start();
    let kw = Keyway::start(&config(
        &data.url(),
        &limits.url(),
        "shared = true\n[[limits]]\nname = \"per-ip\"\nscope = \"ip\"\nrate = 10\nburst = 5\nshared = true",
    ));
    let mut c = kw.client();
    for _ in 0..3 {
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    }
    let mut direct = limits.direct();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("keyway:limit:*")
        .query(&mut direct)
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "keyway:limit:{api}:global",
            "keyway:limit:{per-ip}:127.0.0.1"
        ]
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[1]).query(&mut direct).unwrap();
    // Five permits (the client library's two CLIENT SETINFO, three SETs)
    // of a 10/s limit: the bucket is full again within 500 ms.
    assert!((1..=501).contains(&ttl), "pttl {ttl}");
    std::thread::sleep(Duration::from_millis(700));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("keyway:limit:*")
        .query(&mut direct)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn shared_limit_holds_across_a_sentinel_failover() {
    let setup = SentinelSetup::start("realtime");
    let data = RedisServer::start();
    let keyways: Vec<Keyway> = (0..2)
        .map(|_| Keyway::start(&config(&data.url(), &setup.url(), "shared = true")))
        .collect();
    let ports: Vec<u16> = keyways.iter().map(|k| k.port).collect();
    let (before, _, _) = hammer(&ports, 3, 2);
    println!("before failover: admitted {before} in 2 s");
    let old = setup.master_port();
    let started = Instant::now();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("realtime")
        .query(&mut setup.sentinels[0].client())
        .unwrap();
    // Load throughout the failover and after it.
    let during = std::thread::spawn({
        let ports = ports.clone();
        move || hammer(&ports, 3, 6)
    });
    let deadline = Instant::now() + Duration::from_secs(45);
    while setup.master_port() == old {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(50));
    }
    let promoted = started.elapsed();
    let (during, limited, other) = during.join().unwrap();
    println!(
        "failover took {promoted:?}; during and after it (6 s): admitted {during}, limited {limited}, other errors {other}"
    );
    // After recovery: one limit again, within the bound.
    let (after, _, other_after) = hammer(&ports, 3, 3);
    let expected = (RATE * 3 + BURST) as f64;
    println!("after recovery: admitted {after} in 3 s (one limit: {expected})");
    assert_eq!(other_after, 0);
    assert!(
        (0.85..=1.1).contains(&(after as f64 / expected)),
        "after recovery {after} of {expected}"
    );
    // During: at most the local fallbacks of two keyways on top of the limit.
    assert!(during <= (RATE * 6 + BURST) * 2 + 100, "during {during}");
}

#[test]
fn the_state_survives_a_keyway_restart() {
    let data = RedisServer::start();
    let limits = RedisServer::start();
    // One permit every 10 s, burst 3: the redis crate's two CLIENT SETINFO
    // and one SET spend it.
    let slow = "shared = true\n[[limits]]\nname = \"slow\"\nscope = \"user\"\nrate = 0.1\nburst = 3\nshared = true";
    let mut first = Keyway::start(&config(&data.url(), &limits.url(), slow));
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut first.client())
        .unwrap();
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(10));
    let second = Keyway::start(&config(&data.url(), &limits.url(), slow));
    let mut raw = second.raw();
    raw.send(b"SET k v\r\n");
    let reply = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        reply.starts_with("-ERR rate limit exceeded (limit 'slow'), retry after "),
        "{reply}"
    );
}
