//! Keyspace-wide commands over all pools: SCAN with a cursor that knows its
//! pool (every key exactly once), KEYS, DBSIZE, RANDOMKEY, INFO keyspace.

mod support;

use std::collections::HashSet;

use redis::Commands;
use support::*;

fn fill(c: &mut redis::Connection, per_prefix: usize) -> HashSet<String> {
    let mut all = HashSet::new();
    for prefix in ["session:", "user:", "rate:", "other:"] {
        let mut pipe = redis::pipe();
        for i in 0..per_prefix {
            let k = format!("{prefix}{i}");
            pipe.cmd("SET").arg(&k).arg(i).ignore();
            all.insert(k);
        }
        let _: () = pipe.query(c).unwrap();
    }
    all
}

#[test]
fn scan_visits_every_key_once_across_pools() {
    let r = Reference::start();
    let mut c = r.client();
    let all = fill(&mut c, 500);
    let mut seen = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(50)
            .query(&mut c)
            .unwrap();
        seen.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "SCAN returned a key twice");
    assert_eq!(unique, all);

    // The redis crate's iterator, with a pattern.
    let session: HashSet<String> = c.scan_match::<_, String>("session:*").unwrap().collect();
    assert_eq!(session.len(), 500);
}

#[test]
fn redis_cli_scan_pattern_returns_each_match_once() {
    let r = Reference::start();
    let mut c = r.client();
    fill(&mut c, 300);
    let out = redis_cli(r.keyway.port, &["--scan", "--pattern", "session:*"]);
    let lines: Vec<&str> = out.lines().collect();
    let unique: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), 300, "{out}");
    assert_eq!(unique.len(), 300);
    assert!(lines.iter().all(|l| l.starts_with("session:")));
    let out = redis_cli(r.keyway.port, &["--scan"]);
    assert_eq!(out.lines().count(), 1200);
}

#[test]
fn keys_dbsize_randomkey_and_info_keyspace_cover_all_pools() {
    let r = Reference::start();
    let mut c = r.client();
    fill(&mut c, 10);
    let mut keys: Vec<String> = c.keys("*").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 40);
    let keys: Vec<String> = c.keys("rate:*").unwrap();
    assert_eq!(keys.len(), 10);
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 40);
    let k: Option<String> = redis::cmd("RANDOMKEY").query(&mut c).unwrap();
    assert!(k.is_some());
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(info.contains("db0:keys=40,expires=0"), "{info}");
    // Redis's average TTL, over the keys that expire, as one server says it.
    let _: () = redis::cmd("EXPIRE")
        .arg(&keys[0])
        .arg(1000)
        .query(&mut c)
        .unwrap();
    let avg_ttl = |c: &mut redis::Connection| {
        let info: String = redis::cmd("INFO").arg("keyspace").query(c).unwrap();
        let avg_ttl: u64 = info
            .split("avg_ttl=")
            .nth(1)
            .and_then(|rest| rest.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no avg_ttl in {info}"));
        assert!(info.contains("db0:keys=40,expires=1,"), "{info}");
        avg_ttl
    };
    // Redis estimates it in its expiry cycle, a moment after the EXPIRE.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = avg_ttl(&mut c);
    while seen == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        seen = avg_ttl(&mut c);
    }
    assert!((900_000..=1_000_000).contains(&seen), "avg_ttl={seen}");
}

#[test]
fn bad_scan_cursor_is_an_error() {
    let r = Reference::start();
    let mut c = r.client();
    let err = redis::cmd("SCAN")
        .arg("notanumber")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("invalid cursor"), "{err}");
}

/// All three pools on one Redis (a laptop, a small deployment): whatever
/// spans pools asks that server once, so nothing is counted, listed or
/// loaded three times.
#[test]
fn pools_sharing_one_backend_are_asked_once() {
    let one = RedisServer::start();
    let kw = Keyway::start(&reference_config(&one.url(), &one.url(), &one.url()));
    let mut c = kw.client();
    for key in ["session:a", "user:b", "rate:c"] {
        let _: () = c.set(key, 1).unwrap();
    }
    let direct: i64 = redis::cmd("DBSIZE").query(&mut one.direct()).unwrap();
    let through: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!((through, direct), (3, 3));
    let mut keys: Vec<String> = c.keys("*").unwrap();
    keys.sort();
    assert_eq!(keys, ["rate:c", "session:a", "user:b"]);
    let mut scanned: Vec<String> = c.scan().unwrap().collect();
    scanned.sort();
    assert_eq!(scanned, ["rate:c", "session:a", "user:b"]);
    let lib = "#!lua name=once\nredis.register_function('one', function() return 1 end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut c)
        .unwrap();
    assert_eq!(name, "once");
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(info.contains("db0:keys=3,"), "{info}");
}

/// INFO has the sections and fields monitoring tools and client test
/// suites read (redis-py's own suite reads cluster_enabled, tests wait on
/// blocked_clients), with keyway's clients and the backends' figures.
#[test]
fn info_has_the_fields_tools_read() {
    let r = Reference::start_with("[server]\nhealth_interval_ms = 200\n");
    let mut blocked = r.keyway.raw();
    blocked.send(b"BLPOP session:none 5\r\n");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let mut c = r.client();
    let info: String = redis::cmd("INFO").arg("everything").query(&mut c).unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} missing from INFO:\n{info}"))
            .to_string()
    };
    for section in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Persistence",
        "# Stats",
        "# Replication",
        "# CPU",
        "# Modules",
        "# Cluster",
        "# Keyspace",
    ] {
        assert!(info.contains(section), "{section} missing");
    }
    assert_eq!(field("cluster_enabled"), "0");
    assert_eq!(field("blocked_clients"), "1");
    assert!(field("used_memory").parse::<u64>().unwrap() > 0);
    assert!(field("used_cpu_user").parse::<f64>().is_ok());
    assert_eq!(field("rdb_bgsave_in_progress"), "0");
    assert_eq!(field("lazyfree_pending_objects"), "0");
    assert!(field("keyspace_hits").parse::<u64>().is_ok());
    assert!(field("maxclients").parse::<u64>().unwrap() > 0);
    // Section names are case-insensitive, as in Redis.
    let clients: String = redis::cmd("INFO").arg("CLIENTS").query(&mut c).unwrap();
    assert!(clients.contains("blocked_clients:1"), "{clients}");
}
