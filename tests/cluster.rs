//! Redis Cluster pools: a real six-node cluster (three masters, three
//! replicas) behind a `redis+cluster://` pool, reached by plain non-cluster
//! clients. Keys land on their slot's master; hash tags co-locate;
//! cross-slot commands split or answer CROSSSLOT; resharding and failovers
//! under load are followed inside keyway; a long pipeline keeps its order.
//! Each scenario prints its figures.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

/// keyway with `cache` on the cluster (the default pool) and `session` on
/// a plain Redis, as a deployment that moved one pool to a cluster.
fn keyway_for(cluster: &ClusterSetup, session: &RedisServer) -> Keyway {
    Keyway::start(&format!(
        r#"
[server]
health_interval_ms = 200
[backend]
cluster_refresh_ms = 1000
[pools.cache]
url = "{}"
[pools.session]
url = "{}"
[routes]
default = "cache"
prefixes = [{{ prefix = "session:", pool = "session" }}]
"#,
        cluster.seeds_url(),
        session.url()
    ))
}

fn string(conn: &mut redis::Connection, key: &str) -> Option<String> {
    conn.get(key).expect("GET")
}

#[test]
fn keys_land_on_their_slots_master_and_multi_key_commands_split_or_refuse() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut c = keyway.client();

    // 10,000 keys in pipelines of 500.
    let started = Instant::now();
    for batch in 0..20 {
        let mut pipe = redis::pipe();
        for i in batch * 500..(batch + 1) * 500 {
            pipe.set(format!("item:{i}"), i).ignore();
        }
        let () = pipe.query(&mut c).expect("pipelined SETs");
    }
    let written = started.elapsed();
    let masters = cluster.masters();
    let mut per_master: HashMap<u16, usize> = HashMap::new();
    let mut direct: HashMap<u16, redis::Connection> =
        masters.iter().map(|&p| (p, cluster.direct(p))).collect();
    let mut misplaced = 0;
    for i in 0..10_000 {
        let key = format!("item:{i}");
        let owner = cluster.owner(ClusterSetup::slot_of(&key));
        let found = string(direct.get_mut(&owner).expect("owner is a master"), &key);
        if found.as_deref() != Some(&i.to_string()) {
            misplaced += 1;
        }
        *per_master.entry(owner).or_default() += 1;
    }
    println!(
        "10000 keys written through keyway in {written:?}; per master {per_master:?}; misplaced {misplaced}"
    );
    assert_eq!(misplaced, 0);
    assert_eq!(per_master.len(), 3, "keys spread over the three masters");

    // Hash tags co-locate: a multi-key command on one slot runs unchanged.
    let _: () = c
        .mset(&[("{user:7}.name", "ada"), ("{user:7}.mail", "a@x")])
        .unwrap();
    let slot = ClusterSetup::slot_of("{user:7}.name");
    let mut owner = cluster.direct(cluster.owner(slot));
    assert_eq!(string(&mut owner, "{user:7}.mail").as_deref(), Some("a@x"));
    let n: i64 = redis::cmd("SUNIONSTORE")
        .arg("{user:7}.all")
        .arg("{user:7}.none")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 0);

    // Cross-slot: refused as Redis Cluster refuses it, nothing done.
    let (a, b) = ("item:1", "item:2");
    assert_ne!(ClusterSetup::slot_of(a), ClusterSetup::slot_of(b));
    let err = redis::cmd("RENAME")
        .arg(a)
        .arg(b)
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    assert!(
        err.to_string()
            .contains("Keys in request don't hash to the same slot"),
        "{err}"
    );
    assert_eq!(string(&mut c, a).as_deref(), Some("1"));

    // Splittable commands split per slot and merge in order.
    let keys: Vec<String> = (0..50).map(|i| format!("item:{i}")).collect();
    let mut with_missing = keys.clone();
    with_missing.insert(7, "item:missing".into());
    let values: Vec<Option<String>> = c.mget(&with_missing).unwrap();
    let mut expected: Vec<Option<String>> = (0..50).map(|i| Some(i.to_string())).collect();
    expected.insert(7, None);
    assert_eq!(values, expected);
    let exists: i64 = c.exists(&keys).unwrap();
    assert_eq!(exists, 50);
    let deleted: i64 = c.del(&keys).unwrap();
    assert_eq!(deleted, 50);
    let left: Vec<Option<String>> = c.mget(&keys[..3]).unwrap();
    assert_eq!(left, vec![None, None, None]);

    // A session: key still goes to its own plain pool.
    let _: () = c.set("session:abc", "tok").unwrap();
    assert_eq!(
        string(&mut session.direct(), "session:abc").as_deref(),
        Some("tok")
    );

    // WAIT after writes to the cluster pool: refused, not answered for one
    // master; a client that wrote only to the plain pool is answered.
    let err = redis::cmd("WAIT")
        .arg(0)
        .arg(100)
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("'WAIT' is not supported by keyway on cluster pool 'cache'"),
        "{err}"
    );
    let mut plain = keyway.client();
    let _: () = plain.set("session:plain", 1).unwrap();
    let replicas: i64 = redis::cmd("WAIT")
        .arg(0)
        .arg(100)
        .query(&mut plain)
        .unwrap();
    assert_eq!(replicas, 0, "the session pool has no replica");

    // Keyless fan-outs count every master; SCAN visits each key once.
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    // The items left, the two tagged keys, and the two session keys.
    let expected_keys = 10_000 - 50 + 2 + 2;
    assert_eq!(dbsize, expected_keys);
    let scanned: Vec<String> = c.scan::<String>().unwrap().collect();
    let unique: std::collections::HashSet<&String> = scanned.iter().collect();
    println!(
        "DBSIZE {dbsize}; SCAN returned {} keys, {} distinct",
        scanned.len(),
        unique.len()
    );
    assert_eq!(scanned.len() as i64, expected_keys);
    assert_eq!(unique.len(), scanned.len());

    // A cluster has only database 0: Redis Cluster's error.
    let mut other = keyway.client();
    let _: () = redis::cmd("SELECT").arg(1).query(&mut other).unwrap();
    let err = other.get::<_, Option<String>>("item:3").unwrap_err();
    assert!(
        err.to_string()
            .contains("SELECT is not allowed in cluster mode"),
        "{err}"
    );
}

#[test]
fn a_pipeline_of_10000_commands_across_all_slots_returns_in_order() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", keyway.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // SET then GET of 5,000 keys spread over every slot, one write.
    let mut out = Vec::new();
    for i in 0..5_000 {
        let key = format!("p{i}");
        let value = format!("v{i}");
        out.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
    }
    let started = Instant::now();
    raw.write_all(&out).unwrap();
    let mut expected = Vec::new();
    for i in 0..5_000 {
        expected.extend_from_slice(b"+OK\r\n");
        let value = format!("v{i}");
        expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    let mut got = vec![0u8; expected.len()];
    raw.read_exact(&mut got).unwrap();
    let slots: std::collections::HashSet<u16> = (0..5_000)
        .map(|i| ClusterSetup::slot_of(&format!("p{i}")))
        .collect();
    println!(
        "10000 pipelined commands over {} slots answered in {:?}",
        slots.len(),
        started.elapsed()
    );
    assert!(got == expected, "replies out of order or wrong");
}

/// Clients running SET/GET/INCR through keyway until stopped. Each client
/// INCRs its own counters; what it saw acknowledged is kept per key.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<Worker>>,
}

#[derive(Default)]
struct Worker {
    ops: u64,
    errors: Vec<String>,
    /// Counter key → INCRs acknowledged.
    acked: HashMap<String, u64>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..clients)
            .map(|w| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = connect(port);
                    let mut me = Worker::default();
                    let deadline = Instant::now() + Duration::from_secs(90);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        i += 1;
                        let counter = format!("counter:{w}:{}", i % 64);
                        let key = format!("load:{w}:{}", i % 500);
                        let result = redis::cmd("INCR")
                            .arg(&counter)
                            .query::<u64>(&mut c)
                            .map(|_| {
                                *me.acked.entry(counter.clone()).or_default() += 1;
                            })
                            .and_then(|()| c.set::<_, _, ()>(&key, i))
                            .and_then(|()| c.get::<_, Option<u64>>(&key).map(|_| ()));
                        match result {
                            Ok(()) => me.ops += 3,
                            Err(e) => {
                                me.errors.push(e.to_string());
                                if e.is_io_error() {
                                    c = connect(port);
                                }
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    me
                })
            })
            .collect();
        Load { stop, workers }
    }

    fn stop(self) -> Worker {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Worker::default();
        for w in self.workers {
            let w = w.join().expect("load thread");
            all.ops += w.ops;
            all.errors.extend(w.errors);
            all.acked.extend(w.acked);
        }
        all
    }
}

/// Every acknowledged INCR is there: each counter, read on its slot's
/// master directly, is at least what was acknowledged.
fn lost_increments(cluster: &ClusterSetup, acked: &HashMap<String, u64>) -> (u64, u64) {
    let mut lost = 0;
    let mut total = 0;
    for (key, &n) in acked {
        let mut owner = cluster.direct(cluster.owner(ClusterSetup::slot_of(key)));
        let have: u64 = owner.get::<_, Option<u64>>(key).unwrap().unwrap_or(0);
        total += n;
        lost += n.saturating_sub(have);
    }
    (total, lost)
}

#[test]
fn resharding_under_load_is_invisible_and_loses_no_acknowledged_write() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let load = Load::start(keyway.port, 20);
    std::thread::sleep(Duration::from_millis(500));
    let masters = cluster.masters();
    let started = Instant::now();
    // 1,200 slots, with their keys, in three moves around the masters.
    let moved = vec![
        cluster.move_slots(masters[0], masters[1], 400),
        cluster.move_slots(masters[1], masters[2], 400),
        cluster.move_slots(masters[2], masters[0], 400),
    ];
    let resharded = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let result = load.stop();
    let (acked, lost) = lost_increments(&cluster, &result.acked);
    let moved_redirects =
        keyway.metric("keyway_cluster_redirections_total{kind=\"moved\",pool=\"cache\"}");
    let ask_redirects =
        keyway.metric("keyway_cluster_redirections_total{kind=\"ask\",pool=\"cache\"}");
    println!(
        "reshard under load: {:?} moved in {resharded:?}; {} ops by 20 clients, {} client-visible errors; \
         {acked} INCRs acknowledged, {lost} missing; keyway followed {moved_redirects} MOVED and {ask_redirects} ASK",
        moved,
        result.ops,
        result.errors.len()
    );
    assert!(
        result.errors.is_empty(),
        "errors: {:?}",
        &result.errors[..result.errors.len().min(5)]
    );
    assert_eq!(lost, 0);
    assert!(
        moved_redirects + ask_redirects > 0.0,
        "the reshard was followed"
    );
}

#[test]
fn planned_and_unplanned_failover_under_load() {
    let mut cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);

    // Planned: CLUSTER FAILOVER on a replica, zero client errors.
    let load = Load::start(keyway.port, 20);
    std::thread::sleep(Duration::from_millis(500));
    let old = cluster.masters()[0];
    let replica = cluster.replica_of(old).expect("a replica");
    let started = Instant::now();
    cluster.failover(replica);
    let promoted = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let planned = load.stop();
    let (acked, lost) = lost_increments(&cluster, &planned.acked);
    println!(
        "planned failover ({old} -> {replica}) in {promoted:?}: {} ops, {} client errors, {acked} INCRs acknowledged, {lost} missing",
        planned.ops,
        planned.errors.len()
    );
    assert!(
        planned.errors.is_empty(),
        "errors: {:?}",
        &planned.errors[..planned.errors.len().min(5)]
    );
    assert_eq!(lost, 0);

    // Unplanned: a master SIGKILLed; errors only until its replica is
    // promoted (cluster-node-timeout) and keyway's next refresh.
    let load = Load::start(keyway.port, 20);
    std::thread::sleep(Duration::from_millis(500));
    let victim = cluster.masters()[1];
    let heir = cluster.replica_of(victim).expect("a replica");
    let killed = Instant::now();
    cluster.kill(victim);
    let recovered = wait_for(Duration::from_secs(30), || {
        cluster.wait_ok(Duration::from_millis(10)) && {
            let mut c = keyway.client();
            (0..200).all(|i| c.set::<_, _, ()>(format!("probe:{i}"), i).is_ok())
        }
    });
    std::thread::sleep(Duration::from_millis(1000));
    let unplanned = load.stop();
    println!(
        "unplanned failover (master {victim} killed, replica {heir}): clients served again after {:?}; {} ops, {} client errors in the window",
        recovered,
        unplanned.ops,
        unplanned.errors.len()
    );
    let recovered = recovered.expect("keyway serves every slot again within 30 s");
    assert!(
        recovered < Duration::from_secs(20),
        "took {recovered:?} after the kill at {killed:?}"
    );
    // After the window every write goes through.
    let mut c = keyway.client();
    for i in 0..1000 {
        let _: () = c
            .set(format!("after:{i}"), i)
            .expect("writes after recovery");
    }
}

#[test]
fn transactions_and_blocking_commands_run_on_the_slots_master() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut c = keyway.client();

    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("{acct:1}.balance", 10)
        .incr("{acct:1}.ops", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (10, 1));
    let mut owner = cluster.direct(cluster.owner(ClusterSetup::slot_of("{acct:1}")));
    assert_eq!(
        string(&mut owner, "{acct:1}.balance").as_deref(),
        Some("10")
    );

    // Keys of two slots in one transaction: CROSSSLOT, and EXEC aborts.
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg("{acct:1}.x")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let err = redis::cmd("SET")
        .arg("{acct:2}.x")
        .arg(1)
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    let err = redis::cmd("EXEC").query::<()>(&mut c).unwrap_err();
    assert_eq!(err.code(), Some("EXECABORT"), "{err}");

    // WATCH on the slot's master: a change elsewhere fails the EXEC.
    let _: () = redis::cmd("WATCH")
        .arg("{acct:1}.balance")
        .query(&mut c)
        .unwrap();
    let _: () = keyway.client().set("{acct:1}.balance", 99).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let _: () = redis::cmd("INCR")
        .arg("{acct:1}.balance")
        .query(&mut c)
        .unwrap();
    let exec: Option<Vec<i64>> = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(exec, None, "the watched key changed");

    // A blocked BLPOP is served by a push from another client.
    let port = keyway.port;
    let waiter = std::thread::spawn(move || {
        let mut c = connect(port);
        redis::cmd("BLPOP")
            .arg("jobs:queue")
            .arg(5)
            .query::<Option<(String, String)>>(&mut c)
    });
    std::thread::sleep(Duration::from_millis(300));
    let _: () = c.lpush("jobs:queue", "job-1").unwrap();
    let popped = waiter.join().unwrap().unwrap();
    assert_eq!(popped, Some(("jobs:queue".into(), "job-1".into())));
}

#[test]
fn subscriptions_receive_messages_published_on_any_node() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut sub = keyway.client();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("events").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Published on each master directly: the cluster broadcasts it.
    let mut received = 0;
    for port in cluster.masters() {
        let _: i64 = cluster.direct(port).publish("events", port).unwrap();
        let msg = pubsub.get_message().expect("a message");
        let payload: u16 = msg.get_payload().unwrap();
        assert_eq!(payload, port);
        received += 1;
    }
    println!("{received} messages published on 3 different masters delivered through keyway");
}

#[test]
fn readiness_follows_slot_coverage() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    assert!(
        keyway.wait_until(Duration::from_secs(5), || keyway.http("GET", "/readyz").0
            == 200),
        "ready with every slot covered"
    );
    assert_eq!(
        keyway.metric("keyway_cluster_slots_covered{pool=\"cache\"}"),
        16384.0
    );
    // Slot 0 given up by its master: uncovered, and /readyz says so.
    let owner = cluster.owner(0);
    let _: () = redis::cmd("CLUSTER")
        .arg("DELSLOTS")
        .arg(0)
        .query(&mut cluster.direct(owner))
        .unwrap();
    let unready = keyway.wait_until(Duration::from_secs(10), || {
        let (code, body) = keyway.http("GET", "/readyz");
        code == 503 && body.contains("hash slots have no master")
    });
    assert!(unready, "{}", keyway.http("GET", "/readyz").1);
    assert!(keyway.metric("keyway_cluster_slots_covered{pool=\"cache\"}") < 16384.0);
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTS")
        .arg(0)
        .query(&mut cluster.direct(owner))
        .unwrap();
    assert!(
        keyway.wait_until(Duration::from_secs(10), || keyway.http("GET", "/readyz").0
            == 200)
    );
    let (_, stats) = keyway.http("GET", "/stats");
    assert!(stats.contains("\"slots_covered\":16384"), "{stats}");
    // INFO keyway lists the shards; INFO cluster stays what a plain Redis
    // says, so clients never switch to cluster mode.
    let info: String = redis::cmd("INFO")
        .arg("keyway")
        .query(&mut keyway.client())
        .unwrap();
    assert!(
        info.contains("pool_cache_cluster:masters=3,slots_covered=16384"),
        "{info}"
    );
    assert_eq!(info.matches("pool_cache_shard").count(), 3, "{info}");
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query(&mut keyway.client())
        .unwrap();
    assert!(info.contains("cluster_enabled:0"), "{info}");
}

fn node_id(conn: &mut redis::Connection) -> String {
    redis::cmd("CLUSTER").arg("MYID").query(conn).unwrap()
}

#[test]
fn a_migrating_slots_ask_and_tryagain_are_followed_inside_keyway() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut c = keyway.client();
    let _: () = c.set("{mig}.moved", "here").unwrap();
    let _: () = c.set("{mig}.stays", "there").unwrap();
    let slot = ClusterSetup::slot_of("{mig}");
    let from = cluster.owner(slot);
    let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
    let (mut src, mut dst) = (cluster.direct(from), cluster.direct(to));
    let (from_id, to_id) = (node_id(&mut src), node_id(&mut dst));
    let setslot = |conn: &mut redis::Connection, state: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query(conn)
            .unwrap();
    };
    setslot(&mut dst, "IMPORTING", &from_id);
    setslot(&mut src, "MIGRATING", &to_id);
    // One of the slot's two keys has left: asking for it gets ASK.
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(to)
        .arg("{mig}.moved")
        .arg(0)
        .arg(5000)
        .query(&mut src)
        .unwrap();
    let direct_err = src.get::<_, Option<String>>("{mig}.moved").unwrap_err();
    assert_eq!(direct_err.code(), Some("ASK"), "{direct_err}");
    assert_eq!(string(&mut c, "{mig}.moved").as_deref(), Some("here"));
    assert_eq!(string(&mut c, "{mig}.stays").as_deref(), Some("there"));
    // A new key of the migrating slot is created on the importing node.
    let _: () = c.set("{mig}.new", "fresh").unwrap();
    let mut asking = connect(to);
    let _: () = redis::cmd("ASKING").query(&mut asking).unwrap();
    assert_eq!(string(&mut asking, "{mig}.new").as_deref(), Some("fresh"));
    let asks = keyway.metric("keyway_cluster_redirections_total{kind=\"ask\",pool=\"cache\"}");
    assert!(asks >= 2.0, "ASK followed: {asks}");
    // A transaction on a new key of the migrating slot: the source answers
    // ASK at queue time (EXECABORT), and keyway runs it again on the
    // importing node after ASKING, which holds until EXEC.
    let (n,): (i64,) = redis::pipe()
        .atomic()
        .incr("{mig}.tx", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let _: () = redis::cmd("ASKING").query(&mut asking).unwrap();
    assert_eq!(string(&mut asking, "{mig}.tx").as_deref(), Some("1"));

    // A two-key command with its keys split by the migration: TRYAGAIN
    // until the migration ends, then the answer, never the error.
    let finisher = std::thread::spawn({
        let ports = (from, to, cluster.masters());
        let (from_id, to_id) = (from_id.clone(), to_id.clone());
        move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut src = connect(ports.0);
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(ports.1)
                .arg("{mig}.stays")
                .arg(0)
                .arg(5000)
                .query(&mut src)
                .unwrap();
            for port in ports.2 {
                let _: () = redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id)
                    .query(&mut connect(port))
                    .unwrap();
            }
            let _ = from_id;
        }
    });
    let started = Instant::now();
    let both: Vec<Option<String>> = c.mget(&["{mig}.moved", "{mig}.stays"]).unwrap();
    println!(
        "MGET across a migrating slot answered after {:?} (TRYAGAIN retried inside keyway)",
        started.elapsed()
    );
    finisher.join().unwrap();
    assert_eq!(both, vec![Some("here".into()), Some("there".into())]);
    let _: () = c.set("{mig}.after", 1).unwrap();
    assert_eq!(
        string(&mut connect(to), "{mig}.after").as_deref(),
        Some("1")
    );
}

#[test]
fn a_sharded_subscription_follows_its_slot_to_another_master() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut raw = keyway.raw();
    raw.send(b"*2\r\n$10\r\nSSUBSCRIBE\r\n$15\r\n{orders}.events\r\n");
    assert_eq!(
        raw.read_frame(),
        b"*3\r\n$10\r\nssubscribe\r\n$15\r\n{orders}.events\r\n:1\r\n"
    );
    let mut c = keyway.client();
    let receivers: i64 = redis::cmd("SPUBLISH")
        .arg("{orders}.events")
        .arg("first")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        receivers, 1,
        "published on the slot's master, where the link is"
    );
    assert_eq!(
        raw.read_frame(),
        b"*3\r\n$8\r\nsmessage\r\n$15\r\n{orders}.events\r\n$5\r\nfirst\r\n"
    );

    // The channel's slot moves to another master; its old master drops
    // the subscription (a `sunsubscribe` push), keyway restores it on the
    // new one, and the client sees nothing of it.
    let slot = ClusterSetup::slot_of("{orders}.events");
    let from = cluster.owner(slot);
    let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
    let (from_id, to_id) = (
        node_id(&mut cluster.direct(from)),
        node_id(&mut cluster.direct(to)),
    );
    let setslot = |port: u16, state: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query(&mut cluster.direct(port))
            .unwrap();
    };
    setslot(to, "IMPORTING", &from_id);
    setslot(from, "MIGRATING", &to_id);
    for port in [to, from] {
        setslot(port, "NODE", &to_id);
    }
    for port in cluster.masters() {
        setslot(port, "NODE", &to_id);
    }
    let started = Instant::now();
    let restored = wait_for(Duration::from_secs(10), || {
        let n: i64 = redis::cmd("SPUBLISH")
            .arg("{orders}.events")
            .arg("probe")
            .query(&mut cluster.direct(to))
            .unwrap_or(0);
        n == 1
    })
    .expect("the subscription is restored on the slot's new master");
    println!(
        "sharded subscription restored on the new master {to} (was {from}) after {restored:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Probes that reached it arrive first; then the message through keyway.
    let _: i64 = redis::cmd("SPUBLISH")
        .arg("{orders}.events")
        .arg("second")
        .query(&mut c)
        .unwrap();
    let mut messages = Vec::new();
    loop {
        let frame = raw.read_frame();
        let done = frame.ends_with(b"$6\r\nsecond\r\n");
        messages.push(String::from_utf8_lossy(&frame).into_owned());
        if done {
            break;
        }
    }
    assert!(
        messages
            .iter()
            .all(|m| m.starts_with("*3\r\n$8\r\nsmessage")),
        "only messages reach the client, no sunsubscribe: {messages:?}"
    );
}

#[test]
fn a_transaction_and_a_blocked_client_follow_their_slot_to_another_master() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut c = keyway.client();
    let slot = ClusterSetup::slot_of("{q}");
    let from = cluster.owner(slot);
    let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
    let (from_id, to_id) = (
        node_id(&mut cluster.direct(from)),
        node_id(&mut cluster.direct(to)),
    );
    let assign_everywhere = |id: &str| {
        for port in cluster.masters() {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(id)
                .query(&mut cluster.direct(port))
                .unwrap();
        }
    };

    // A client blocked on an empty list of the slot; the (empty) slot
    // moves; the server unblocks it with MOVED, keyway blocks it again on
    // the new master, and a push there serves it.
    let port = keyway.port;
    let waiter = std::thread::spawn(move || {
        redis::cmd("BLPOP")
            .arg("{q}.jobs")
            .arg(10)
            .query::<Option<(String, String)>>(&mut connect(port))
    });
    std::thread::sleep(Duration::from_millis(300));
    let moved =
        || keyway.metric("keyway_cluster_redirections_total{kind=\"moved\",pool=\"cache\"}");
    let before = moved();
    assign_everywhere(&to_id);
    assert!(
        keyway.wait_until(Duration::from_secs(5), || moved() > before),
        "the blocked client was redirected"
    );
    let _: () = c.rpush("{q}.jobs", "after-the-move").unwrap();
    let popped = waiter
        .join()
        .unwrap()
        .expect("no error reaches the blocked client");
    assert_eq!(popped, Some(("{q}.jobs".into(), "after-the-move".into())));
    assert_eq!(cluster.owner(slot), to);

    // The slot moves back while keyway's map still says `to`: the queued
    // transaction meets MOVED there, is aborted, and runs on `from`.
    assign_everywhere(&from_id);
    let before = moved();
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("{q}.a", 1)
        .incr("{q}.b", 2)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (1, 2));
    assert!(moved() > before, "the transaction met MOVED and ran again");
    let mut owner = cluster.direct(from);
    assert_eq!(string(&mut owner, "{q}.b").as_deref(), Some("2"));

    // Another (empty) slot moves while keyway's map has its old owner:
    // WATCH meets MOVED, which the client never sees; the watch is taken
    // on the new owner and the transaction runs there.
    let slot = ClusterSetup::slot_of("{w}");
    let new_owner = cluster
        .masters()
        .into_iter()
        .find(|&m| m != cluster.owner(slot))
        .unwrap();
    let new_id = node_id(&mut cluster.direct(new_owner));
    for port in cluster.masters() {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&new_id)
            .query(&mut cluster.direct(port))
            .unwrap();
    }
    let before = moved();
    let mut raw = keyway.raw();
    raw.send(b"WATCH {w}.n\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    raw.send(b"MULTI\r\nINCR {w}.n\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert_eq!(raw.read_frame(), b"*1\r\n:1\r\n");
    let mut owner = cluster.direct(new_owner);
    assert_eq!(string(&mut owner, "{w}.n").as_deref(), Some("1"));
    println!(
        "WATCH on a slot that moved: {} MOVED followed inside keyway",
        moved() - before
    );
}

/// `cmdstat_<command>` calls a node counted.
fn calls(port: u16, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connect(port))
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn replica_reads_go_to_the_slots_replicas_never_inside_a_transaction() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = Keyway::start(&format!(
        "[pools.cache]\nurl = \"{}\"\nreplica_reads = true\n[pools.session]\nurl = \"{}\"\n[routes]\ndefault = \"cache\"\n",
        cluster.seeds_url(),
        session.url()
    ));
    let mut c = keyway.client();
    for i in 0..100 {
        let _: () = c.set(format!("r:{i}"), i).unwrap();
    }
    // Replication is asynchronous: wait until the replicas have them.
    let replicas = cluster.replicas();
    assert!(
        wait_for(Duration::from_secs(5), || {
            let dbsize: i64 = replicas
                .iter()
                .map(|&p| redis::cmd("DBSIZE").query::<i64>(&mut connect(p)).unwrap())
                .sum();
            dbsize == 100
        })
        .is_some(),
        "replicas caught up"
    );
    let replica_gets = || replicas.iter().map(|&p| calls(p, "get")).sum::<u64>();
    let master_gets = || {
        cluster
            .masters()
            .iter()
            .map(|&p| calls(p, "get"))
            .sum::<u64>()
    };
    let (r0, m0) = (replica_gets(), master_gets());
    for i in 0..100 {
        let v: Option<i64> = c.get(format!("r:{i}")).unwrap();
        assert_eq!(v, Some(i));
    }
    let (r1, m1) = (replica_gets(), master_gets());
    println!(
        "100 GETs with replica reads: {} on replicas, {} on masters",
        r1 - r0,
        m1 - m0
    );
    assert_eq!(r1 - r0, 100);
    // Writes, and reads inside MULTI, stay on the masters.
    let (_, v): ((), Option<i64>) = redis::pipe()
        .atomic()
        .set("r:1", 11)
        .get("r:1")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, Some(11));
    assert_eq!(
        replica_gets(),
        r1,
        "no read of the transaction went to a replica"
    );
}

#[test]
fn scan_returns_each_key_once_while_slots_move() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut c = keyway.client();
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.set(format!("k:{i}"), i).ignore();
    }
    let () = pipe.query(&mut c).unwrap();

    // A full SCAN, slowly (COUNT 20), while 900 slots with their keys move.
    let masters = cluster.masters();
    let cluster = Arc::new(cluster);
    let mover = std::thread::spawn({
        let cluster = cluster.clone();
        move || {
            vec![
                cluster.move_slots(masters[0], masters[1], 300),
                cluster.move_slots(masters[1], masters[2], 300),
                cluster.move_slots(masters[2], masters[0], 300),
            ]
        }
    });
    let started = Instant::now();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor = 0u64;
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(20)
            .query(&mut c)
            .unwrap();
        calls += 1;
        for k in keys {
            *seen.entry(k).or_default() += 1;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let moved = mover.join().unwrap();
    let twice = seen.values().filter(|&&n| n > 1).count();
    let missing = (0..3000)
        .filter(|i| !seen.contains_key(&format!("k:{i}")))
        .count();
    println!(
        "SCAN during a reshard ({moved:?}): {calls} calls in {:?}, {} keys seen, {twice} twice, {missing} missing",
        started.elapsed(),
        seen.len()
    );
    assert_eq!((twice, missing, seen.len()), (0, 0, 3000));

    // MATCH is applied as Redis applies it.
    let matched: Vec<String> = c.scan_match::<_, String>("k:1?").unwrap().collect();
    let mut matched = matched;
    matched.sort();
    let mut expected: Vec<String> = (10..20).map(|i| format!("k:{i}")).collect();
    expected.sort();
    assert_eq!(matched, expected);
}

#[test]
fn a_pipeline_of_wide_splits_is_answered_in_full_and_in_order() {
    let cluster = ClusterSetup::start();
    let session = RedisServer::start();
    let keyway = keyway_for(&cluster, &session);
    let mut c = keyway.client();
    // Each MGET spans ~2,000 slots; each part counts against the client's
    // window, so 40 of them pipelined stay bounded and all come back.
    let keys: Vec<String> = (0..2000).map(|i| format!("w:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, k).ignore();
    }
    let () = pipe.query(&mut c).unwrap();
    let mut pipe = redis::pipe();
    for _ in 0..40 {
        pipe.mget(&keys);
    }
    let started = Instant::now();
    let all: Vec<Vec<String>> = pipe.query(&mut c).unwrap();
    println!(
        "40 pipelined MGETs of 2,000 keys over {} slots answered in {:?}",
        keys.iter()
            .map(|k| ClusterSetup::slot_of(k))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        started.elapsed()
    );
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|values| values == &keys));
}

/// keyway's connections on each master that carried GET or SET.
fn traffic_connections(cluster: &ClusterSetup) -> Vec<usize> {
    cluster
        .masters()
        .into_iter()
        .map(|port| {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut cluster.direct(port))
                .unwrap();
            list.lines()
                .filter(|l| l.contains(" name=keyway "))
                .filter(|l| l.contains(" cmd=get ") || l.contains(" cmd=set "))
                .count()
        })
        .collect()
}

/// `connections` is the pool's, shared out over its masters (at least one
/// each): a three-master pool with the default two holds one per master,
/// not six where a standalone pool holds two.
#[test]
fn a_cluster_pool_shares_its_connections_out_over_its_masters() {
    let cluster = ClusterSetup::start();
    for (connections, per_master) in [(2, 1), (6, 2)] {
        let keyway = Keyway::start(&format!(
            "[backend]\nconnections = {connections}\n[pools.cache]\nurl = \"{}\"\n[routes]\ndefault = \"cache\"\n",
            cluster.seeds_url()
        ));
        // Eight clients over every slot: each client keeps to one of a
        // node's connections, so all of them are used.
        let mut clients: Vec<redis::Connection> = (0..8).map(|_| keyway.client()).collect();
        for (c, client) in clients.iter_mut().enumerate() {
            for i in 0..64 {
                let key = format!("conn{c}:{i}");
                let _: () = client.set(&key, i).unwrap();
                assert_eq!(client.get::<_, i64>(&key).unwrap(), i);
            }
        }
        let counts = traffic_connections(&cluster);
        println!("connections = {connections}: keyway's connections per master {counts:?}");
        assert_eq!(counts, vec![per_master; 3]);
        drop(clients);
        drop(keyway);
        let deadline = Instant::now() + Duration::from_secs(10);
        while traffic_connections(&cluster).iter().sum::<usize>() > 0 {
            assert!(
                Instant::now() < deadline,
                "keyway's connections stayed open"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
