//! Sentinel: discovery with a sentinel down, planned and unplanned
//! failover under load (errors counted, writes checked on the new master),
//! a demoted master's -READONLY retried, subscriptions surviving the
//! failover, and a restarted sentinel resubscribed.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

/// The `session` pool behind Sentinel, and plain cache and realtime pools.
struct Deployment {
    setup: SentinelSetup,
    cache: RedisServer,
    realtime: RedisServer,
}

impl Deployment {
    fn start() -> Deployment {
        Deployment {
            setup: SentinelSetup::start("session"),
            cache: RedisServer::start(),
            realtime: RedisServer::start(),
        }
    }
}

/// The load's stop flag, last acknowledged value, and its thread, which
/// returns what the client saw.
type Load = (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    std::thread::JoinHandle<LoadResult>,
);

/// Continuous INCR load through keyway, with its stop flag and the last
/// acknowledged value.
fn start_load(port: u16) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let worker = load(port, stop.clone(), acked.clone());
    (stop, acked, worker)
}

fn keyway_for(setup: &SentinelSetup, cache: &RedisServer, realtime: &RedisServer) -> Keyway {
    let config = reference_config(&setup.url(), &cache.url(), &realtime.url()).replace(
        "[backend]\n",
        "[server]\nhealth_interval_ms = 200\n[backend]\nsentinel_poll_ms = 500\n",
    );
    Keyway::start(&config)
}

/// Writes INCR session:counter through keyway until stopped; returns what
/// the load saw (`acked` follows the last value acknowledged).
fn load(
    port: u16,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<LoadResult> {
    std::thread::spawn(move || {
        let mut c = connect(port);
        let mut errors = Vec::new();
        let mut count = 0;
        let deadline = Instant::now() + Duration::from_secs(40);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match redis::cmd("INCR")
                .arg("session:counter")
                .query::<u64>(&mut c)
            {
                Ok(v) => {
                    acked.store(v, Ordering::Relaxed);
                    count += 1;
                }
                Err(e) => {
                    errors.push(e.to_string());
                    if e.is_io_error() {
                        c = connect(port);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        LoadResult {
            last: acked.load(Ordering::Relaxed),
            acknowledged: count,
            errors,
        }
    })
}

struct LoadResult {
    /// The last value an INCR returned.
    last: u64,
    /// INCRs acknowledged: with none lost, the counter is at least this.
    acknowledged: u64,
    errors: Vec<String>,
}

/// `SENTINEL FAILOVER` through sentinel `via`; the new master's port once
/// the sentinels report it.
fn planned_failover(setup: &SentinelSetup, via: usize) -> u16 {
    let old = setup.master_port();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("session")
        .query(&mut setup.sentinels[via].client())
        .unwrap();
    wait_for(Duration::from_secs(20), || setup.master_port() != old)
        .map(|_| setup.master_port())
        .expect("sentinel promoted the replica")
}

#[test]
fn discovery_with_one_sentinel_down() {
    let Deployment {
        mut setup,
        cache,
        realtime,
    } = Deployment::start();
    setup.sentinels[0].stop();
    let master = setup.master_port();
    let kw = keyway_for(&setup, &cache, &realtime);
    let mut c = kw.client();
    let _: () = c.set("session:found", "yes").unwrap();
    let v: String = connect(master).get("session:found").unwrap();
    assert_eq!(v, "yes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyway"))
        .args(["--check", "--config"])
        .arg(&kw.config_path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("sentinel master 'session' via"), "{out}");
    assert!(
        out.contains(&format!(
            "currently reported master: 127.0.0.1:{master} (confirmed by ROLE)"
        )),
        "{out}"
    );
    assert!(
        kw.wait_until(Duration::from_secs(3), || kw.http("GET", "/readyz").0
            == 200)
    );
}

#[test]
fn planned_failover_under_load() {
    let Deployment {
        setup,
        cache,
        realtime,
    } = Deployment::start();
    let kw = keyway_for(&setup, &cache, &realtime);
    let old = setup.master_port();
    let (stop, acked, worker) = start_load(kw.port);
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("session")
        .query(&mut setup.sentinels[1].client())
        .unwrap();
    let new_master = wait_for(Duration::from_secs(20), || setup.master_port() != old)
        .map(|_| setup.master_port());
    let new_master = new_master.expect("sentinel promoted the replica");
    // Writes resume on the new master.
    let before = acked.load(Ordering::Relaxed);
    let resumed = wait_for(Duration::from_secs(10), || {
        let now = acked.load(Ordering::Relaxed);
        now > before + 10
            && connect(new_master)
                .get::<_, u64>("session:counter")
                .unwrap_or(0)
                >= now
    });
    let resumed = resumed.expect("writes resumed on the new master");
    stop.store(true, Ordering::Relaxed);
    let LoadResult {
        last,
        acknowledged,
        errors,
    } = worker.join().unwrap();
    let on_new: u64 = connect(new_master).get("session:counter").unwrap();
    let lost = acknowledged.saturating_sub(on_new);
    eprintln!(
        "planned failover: {acknowledged} INCRs acknowledged, counter {on_new} on the new master: {lost} lost; writes held {}",
        kw.metric(r#"keyway_failover_writes_held_total{pool="session"}"#)
    );
    assert_eq!(lost, 0, "a planned failover lost acknowledged writes");
    assert!(
        on_new >= last,
        "every acknowledged write is on the new master ({on_new} < {last})"
    );
    eprintln!(
        "planned failover: switch after {:?}, writes on the new master {:?} later, client errors {} {:?}",
        started.elapsed() - resumed,
        resumed,
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    eprintln!(
        "planned failover: READONLY replies retried on the new master: {}",
        kw.metric(r#"keyway_errors_total{kind="readonly_retried"}"#)
    );
    assert!(
        errors.is_empty(),
        "a planned failover cost the client {} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(kw.metric(r#"keyway_failovers_total{pool="session"}"#) >= 1.0);
    assert!(kw.log().contains("master changed: following the failover"));
    // Sentinel then turns the old master into a replica.
    assert!(
        wait_for(Duration::from_secs(15), || SentinelSetup::role(old)
            .as_deref()
            == Some("slave"))
        .is_some()
    );
}

#[test]
fn master_killed_under_load() {
    let Deployment {
        mut setup,
        cache,
        realtime,
    } = Deployment::start();
    let kw = keyway_for(&setup, &cache, &realtime);
    let old = setup.master_port();
    let (stop, acked, worker) = start_load(kw.port);
    std::thread::sleep(Duration::from_millis(500));

    let killed_at = Instant::now();
    setup.node(old).stop();
    let new_master = wait_for(Duration::from_secs(30), || setup.master_port() != old)
        .map(|_| setup.master_port())
        .expect("sentinel promoted the replica");
    let switched = killed_at.elapsed();
    let before = acked.load(Ordering::Relaxed);
    let resumed = wait_for(Duration::from_secs(10), || {
        acked.load(Ordering::Relaxed) > before + 10
    })
    .expect("writes resumed through keyway");
    stop.store(true, Ordering::Relaxed);
    let LoadResult {
        last,
        acknowledged,
        errors,
    } = worker.join().unwrap();
    let on_new: u64 = connect(new_master).get("session:counter").unwrap();
    // Asynchronous replication: what the killed master had not shipped is
    // gone; reported, not asserted.
    eprintln!(
        "unplanned failover: {acknowledged} INCRs acknowledged, counter {on_new} on the new master: {} lost",
        acknowledged.saturating_sub(on_new)
    );
    assert!(
        on_new >= last,
        "acknowledged writes after the switch are on the new master ({on_new} < {last})"
    );
    eprintln!(
        "unplanned failover: sentinel switched {switched:?} after the kill, keyway resumed {resumed:?} after that, client errors {} (first: {:?})",
        errors.len(),
        errors.first()
    );
    assert!(
        resumed < Duration::from_secs(3),
        "keyway took {resumed:?} to follow +switch-master"
    );
    assert!(
        errors.iter().all(|e| e.contains("backend 'session'")),
        "errors name the pool: {errors:?}"
    );
}

#[test]
fn subscriptions_survive_a_failover() {
    let Deployment {
        setup,
        cache,
        realtime,
    } = Deployment::start();
    let kw = keyway_for(&setup, &cache, &realtime);
    let mut raw = kw.raw();
    raw.send(b"SUBSCRIBE session:events\r\n");
    assert!(raw.read_frame().starts_with(b"*3\r\n$9\r\nsubscribe"));
    let new_master = planned_failover(&setup, 0);
    // Publish on the new master directly until the subscriber (through keyway) hears it.
    let mut publisher = connect(new_master);
    let heard = wait_for(Duration::from_secs(10), || {
        publisher
            .publish::<_, _, i64>("session:events", "after-failover")
            .unwrap_or(0)
            > 0
    });
    assert!(heard.is_some(), "keyway resubscribed on the new master");
    let frame = String::from_utf8(raw.read_frame()).unwrap();
    assert!(frame.contains("after-failover"), "{frame}");
}

#[test]
fn a_restarted_sentinel_is_resubscribed() {
    let Deployment {
        mut setup,
        cache,
        realtime,
    } = Deployment::start();
    let kw = keyway_for(&setup, &cache, &realtime);
    std::thread::sleep(Duration::from_millis(300));
    setup.sentinels[2].restart();
    assert!(
        kw.wait_until(Duration::from_secs(5), || kw
            .log()
            .contains("resubscribed to sentinel")),
        "{}",
        kw.log()
    );
    // The restarted sentinel lists keyway's subscription (8 channels) among its clients.
    let mut s = setup.sentinels[2].client();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut s).unwrap();
    assert!(clients.lines().any(|l| l.contains(" sub=8 ")), "{clients}");
}

/// The reference configuration with the Sentinel pool reading from replicas.
fn with_replica_reads(
    setup: &SentinelSetup,
    cache: &RedisServer,
    realtime: &RedisServer,
) -> String {
    let url = setup.url();
    reference_config(&url, &cache.url(), &realtime.url()).replace(
        &format!("url = \"{url}\"\n"),
        &format!("url = \"{url}\"\nreplica_reads = true\n"),
    )
}

#[test]
fn replica_reads_go_to_a_healthy_replica() {
    let Deployment {
        setup,
        cache,
        realtime,
    } = Deployment::start();
    let config = with_replica_reads(&setup, &cache, &realtime)
        .replace("[backend]\n", "[backend]\nsentinel_poll_ms = 300\n");
    let kw = Keyway::start(&config);
    assert!(
        kw.wait_until(Duration::from_secs(10), || kw
            .log()
            .contains("reading from replica")),
        "{}",
        kw.log()
    );
    let master = setup.master_port();
    let replica = setup
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|&p| p != master)
        .unwrap();
    let mut c = kw.client();
    let _: () = c.set("session:r", "v").unwrap();
    assert!(wait_for(Duration::from_secs(5), || connect(replica)
        .get::<_, Option<String>>("session:r")
        .ok()
        .flatten()
        .is_some())
    .is_some());
    let v: String = c.get("session:r").unwrap();
    assert_eq!(v, "v");
    // The GET ran on the replica, the SET on the master.
    let on_replica: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut connect(replica))
        .unwrap();
    assert!(
        on_replica
            .lines()
            .any(|l| l.contains("name=keyway") && l.contains("cmd=get")),
        "{on_replica}"
    );
    let on_master: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut connect(master))
        .unwrap();
    assert!(
        !on_master
            .lines()
            .any(|l| l.contains("name=keyway") && l.contains("cmd=get")),
        "{on_master}"
    );
    assert!(
        on_master
            .lines()
            .any(|l| l.contains("name=keyway") && l.contains("cmd=set")),
        "{on_master}"
    );
    assert!(
        kw.metric(r#"keyway_commands_total{command="get",outcome="ok",pool="session-replica"}"#)
            >= 1.0
    );
}

#[test]
fn a_write_to_a_demoted_master_is_retried_on_the_new_one() {
    let Deployment {
        setup,
        cache,
        realtime,
    } = Deployment::start();
    // keyway knows one sentinel only, so it can be kept from hearing the switch.
    let only = format!(
        "redis+sentinel://127.0.0.1:{}/session",
        setup.sentinels[0].port
    );
    let config = reference_config(&only, &cache.url(), &realtime.url())
        .replace("[backend]\n", "[backend]\nsentinel_poll_ms = 300\n");
    let kw = Keyway::start(&config);
    let mut c = kw.client();
    let _: () = c.set("session:a", 1).unwrap();
    let old = setup.master_port();

    setup.sentinels[0].signal("STOP");
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("session")
        .query(&mut setup.sentinels[1].client())
        .unwrap();
    let demoted = wait_for(Duration::from_secs(20), || {
        SentinelSetup::role(old).as_deref() == Some("slave")
    });
    assert!(demoted.is_some(), "the old master was demoted");
    let new_master = setup
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|&p| p != old)
        .unwrap();
    // keyway still points at the old master; let its sentinel wake up shortly.
    let waker = {
        let port = setup.sentinels[0].port;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            port
        })
    };
    let started = Instant::now();
    let write = std::thread::spawn({
        let port = kw.port;
        move || {
            redis::cmd("SET")
                .arg("session:a")
                .arg(2)
                .query::<()>(&mut connect(port))
        }
    });
    waker.join().unwrap();
    setup.sentinels[0].signal("CONT");
    let result = write.join().unwrap();
    assert!(
        result.is_ok(),
        "the write was retried on the new master, not failed: {result:?}"
    );
    let v: i64 = connect(new_master).get("session:a").unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        kw.metric(r#"keyway_errors_total{kind="readonly_retried"}"#),
        1.0
    );
    eprintln!(
        "READONLY write retried transparently after {:?}",
        started.elapsed()
    );
}

#[test]
fn reload_keeps_following() {
    let Deployment {
        setup,
        cache,
        realtime,
    } = Deployment::start();
    let kw = keyway_for(&setup, &cache, &realtime);
    let mut c = kw.client();
    let _: () = c.set("session:before", 1).unwrap();
    // A changed [backend] setting replaces every pool on reload.
    let config = std::fs::read_to_string(&kw.config_path).unwrap();
    let changed = config.replace("connect_timeout_ms = 500", "connect_timeout_ms = 750");
    assert_ne!(config, changed);
    std::fs::write(&kw.config_path, changed).unwrap();
    let (status, body) = kw.http("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    // Right after the reload the pool still knows its master.
    let _: () = c.set("session:after-reload", 1).unwrap();

    let new_master = planned_failover(&setup, 0);
    // The replacement pool follows the failover.
    let followed = wait_for(Duration::from_secs(10), || {
        redis::cmd("SET")
            .arg("session:after-failover")
            .arg(1)
            .query::<()>(&mut kw.client())
            .is_ok()
            && connect(new_master)
                .exists::<_, bool>("session:after-failover")
                .unwrap_or(false)
    });
    assert!(followed.is_some(), "{}", kw.log());
    assert_eq!(
        kw.log()
            .matches("master changed: following the failover")
            .count(),
        1,
        "one follower per pool after the reload"
    );
}

#[test]
fn polls_reuse_the_followers_connections() {
    let Deployment {
        setup,
        cache,
        realtime,
    } = Deployment::start();
    // A poll every 100 ms, with replica reads (SENTINEL REPLICAS and INFO
    // on each poll too); no health probes in the window measured.
    let config = with_replica_reads(&setup, &cache, &realtime).replace(
        "[backend]\n",
        "[server]\nhealth_interval_ms = 60000\n[backend]\nsentinel_poll_ms = 100\n",
    );
    let kw = Keyway::start(&config);
    assert!(
        kw.wait_until(Duration::from_secs(10), || kw
            .log()
            .contains("reading from replica")),
        "{}",
        kw.log()
    );
    let ports: Vec<u16> = setup
        .sentinels
        .iter()
        .map(|s| s.port)
        .chain(setup.nodes.iter().map(|n| n.port))
        .collect();
    let accepted = || -> Vec<i64> {
        ports
            .iter()
            .map(|&p| {
                info_field(p, "stats", "total_connections_received")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(-1)
            })
            .collect()
    };
    let before = accepted();
    std::thread::sleep(Duration::from_secs(2));
    let after = accepted();
    let new: Vec<i64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    println!(
        "connections accepted over 2 s of 100 ms polls (3 sentinels, master, replica): {new:?}"
    );
    // About 20 polls went by; the only new connection each server sees is
    // the test's own INFO.
    assert!(
        before.iter().all(|&n| n >= 0) && new.iter().all(|&n| n <= 2),
        "{new:?}"
    );
}
