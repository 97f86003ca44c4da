//! What a client sees of keyway's own state is what Redis would show:
//! pub/sub confirmations under CLIENT REPLY OFF, COPY/MOVE into another
//! database, PUBSUB NUMPAT, CLIENT LIST fields and filters, INFO's
//! per-command sections and LATENCY HISTOGRAM. Each test sends the same
//! commands to Redis directly and through keyway and compares the replies.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

/// Keyway in front of one Redis, beside a second Redis for direct answers.
fn one_pool() -> (RedisServer, RedisServer, Keyway) {
    let behind = RedisServer::start();
    let direct = RedisServer::start();
    let keyway = Keyway::start(&format!(
        "[pools.main]\nurl = \"{}\"\n[routes]\ndefault = \"main\"\n[policy]\nallow = [\"@admin\"]\n",
        behind.url()
    ));
    (behind, direct, keyway)
}

#[test]
fn subscribe_confirmations_arrive_under_client_reply_off() {
    let (_behind, direct, keyway) = one_pool();
    for hello in [&b""[..], b"HELLO 3\r\n"] {
        let mut seen = Vec::new();
        for port in [direct.port, keyway.port] {
            let mut c = RawClient::connect(port);
            if !hello.is_empty() {
                c.send(hello);
                c.read_frame();
            }
            c.send(b"CLIENT REPLY OFF\r\nSUBSCRIBE ch\r\nPSUBSCRIBE p*\r\n");
            let confirmations = [c.read_frame(), c.read_frame()];
            redis_cli(port, &["PUBLISH", "ch", "hi"]);
            let message = c.read_frame();
            c.send(b"UNSUBSCRIBE ch\r\n");
            let unsubscribed = c.read_frame();
            seen.push((confirmations, message, unsubscribed));
        }
        assert_eq!(seen[0], seen[1], "direct, then through keyway");
        println!("{}", String::from_utf8_lossy(&seen[1].0[0]).escape_debug());
    }
}

/// A subscriber's and a transaction's refusals come in Redis's order
/// (arity before the mode's own rules) and with Redis's texts.
#[test]
fn subscriber_and_transaction_refusals_match_redis() {
    let (_behind, direct, keyway) = one_pool();
    let sessions: &[&[u8]] = &[
        // RESP2 subscriber: wrong arity, unknown, not allowed, PING.
        b"SUBSCRIBE ch\r\nGET\r\nNOSUCHCMD x\r\nGET k\r\nPING hi\r\nPING a b\r\nMULTI\r\nRESET\r\n",
        // Between MULTI and EXEC: wrong arity aborts, WATCH does not.
        b"MULTI\r\nWATCH k\r\nSET k v\r\nGET\r\nEXEC\r\nGET k\r\n",
        b"MULTI\r\nNOSUCHCMD\r\nSET k v\r\nEXEC\r\nMULTI\r\nMULTI\r\nDISCARD\r\nDISCARD\r\nEXEC\r\n",
    ];
    for session in sessions {
        // One reply per line: each SUBSCRIBE has one channel.
        let replies = session
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let mut seen = Vec::new();
        for port in [direct.port, keyway.port] {
            redis_cli(port, &["DEL", "k"]);
            let mut c = RawClient::connect(port);
            c.send(session);
            let frames: Vec<String> = (0..replies)
                .map(|_| String::from_utf8_lossy(&c.read_frame()).into_owned())
                .collect();
            seen.push(frames);
        }
        for (d, k) in seen[0].iter().zip(&seen[1]) {
            println!("{} | {}", d.escape_debug(), k.escape_debug());
        }
        assert_eq!(seen[0], seen[1], "direct, then through keyway");
    }
    // keyway's own refusals count; Redis's refusals of a mode do not.
    let mut c = RawClient::connect(keyway.port);
    c.send(b"MULTI\r\nKEYS *\r\nDISCARD\r\nMONITOR\r\n");
    let replies: Vec<Vec<u8>> = (0..4).map(|_| c.read_frame()).collect();
    assert!(replies[1].starts_with(b"-ERR 'KEYS' inside MULTI is not supported by keyway"));
    assert!(replies[3].starts_with(b"-ERR 'MONITOR' is not supported by keyway"));
    for command in ["keys", "monitor"] {
        let series = format!(r#"keyway_denials_total{{detail="{command}",reason="unsupported"}}"#);
        println!("{series} {}", keyway.metric(&series));
        assert_eq!(keyway.metric(&series), 1.0);
    }
}

#[test]
fn copy_and_move_into_another_pools_database_are_refused() {
    let r = Reference::start();
    let mut c = r.client();
    let _: () = redis::cmd("SET").arg("a").arg("foo").query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg("user:1")
        .arg("u")
        .query(&mut c)
        .unwrap();
    // db 3 routes unprefixed keys to the session pool: `a` (cache) cannot go there.
    for cmd in [
        vec!["COPY", "a", "c", "DB", "3"],
        vec!["COPY", "a", "c", "db", "3", "REPLACE"],
        vec!["MOVE", "a", "3"],
    ] {
        let e = redis::cmd(cmd[0])
            .arg(&cmd[1..])
            .query::<i64>(&mut c)
            .unwrap_err();
        assert_eq!(e.code(), Some("CROSSPOOL"), "{cmd:?}: {e}");
        assert!(
            e.to_string().contains("'cache' and 'session'"),
            "{cmd:?}: {e}"
        );
    }
    // db 2 has no rule: the key stays on cache, where SELECT 2 finds it.
    let copied: i64 = redis::cmd("COPY")
        .arg(&["a", "c", "DB", "2"])
        .query(&mut c)
        .unwrap();
    assert_eq!(copied, 1);
    // A prefixed key goes to its prefix's pool in every database.
    let copied: i64 = redis::cmd("COPY")
        .arg(&["user:1", "user:2", "DB", "3"])
        .query(&mut c)
        .unwrap();
    assert_eq!(copied, 1);
    let moved: i64 = redis::cmd("MOVE").arg(&["a", "2"]).query(&mut c).unwrap();
    assert_eq!(moved, 1);
    let _: () = redis::cmd("SELECT").arg(2).query(&mut c).unwrap();
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&["a", "c"]).query(&mut c).unwrap();
    assert_eq!(got, [Some("foo".into()), Some("foo".into())]);
    let _: () = redis::cmd("SELECT").arg(3).query(&mut c).unwrap();
    let got: Option<String> = redis::cmd("GET").arg("user:2").query(&mut c).unwrap();
    assert_eq!(got.as_deref(), Some("u"));
    // Inside MULTI the refusal aborts the transaction, as a queue-time error does.
    let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();
    let mut raw = r.keyway.raw();
    raw.send(b"MULTI\r\nMOVE user:1 3\r\nMOVE a 3\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert!(raw.read_frame().starts_with(b"-CROSSPOOL"));
    assert!(raw.read_frame().starts_with(b"-EXECABORT"));
    let denied = r
        .keyway
        .metric("keyway_denials_total{detail=\"move\",reason=\"crosspool\"}");
    assert_eq!(denied, 2.0);
}

#[test]
fn numpat_counts_each_pattern_once() {
    let r = Reference::start();
    let direct = RedisServer::start();
    let mut counts = Vec::new();
    for port in [direct.port, r.keyway.port] {
        // `*` and `x*` may match keys of every pool, `rate:*` of one; two
        // clients share `*`.
        let mut a = RawClient::connect(port);
        a.send(b"PSUBSCRIBE * x* rate:*\r\n");
        (0..3).for_each(|_| drop(a.read_frame()));
        let mut b = RawClient::connect(port);
        b.send(b"PSUBSCRIBE *\r\nSUBSCRIBE session:a\r\n");
        (0..2).for_each(|_| drop(b.read_frame()));
        let mut c = connect(port);
        let numpat: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut c).unwrap();
        let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg(&["NUMSUB", "session:a"])
            .query(&mut c)
            .unwrap();
        counts.push((numpat, numsub));
    }
    assert_eq!(counts[0], counts[1], "direct, then through keyway");
    assert_eq!(counts[1].0, 3);
}

/// The fields of a CLIENT LIST / CLIENT INFO line.
fn fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn client_list(c: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<String> {
    redis::cmd("CLIENT").arg("LIST").arg(args).query(c)
}

#[test]
fn client_list_shows_what_each_client_does() {
    let (_behind, direct, keyway) = one_pool();
    for port in [direct.port, keyway.port] {
        let mut subscriber = RawClient::connect(port);
        subscriber.send(b"CLIENT SETNAME sub\r\nSUBSCRIBE ch\r\n");
        subscriber.read_frame();
        subscriber.read_frame();
        let mut tx = RawClient::connect(port);
        tx.send(b"CLIENT SETNAME tx\r\nMULTI\r\nSET k v\r\nINCR n\r\n");
        (0..4).for_each(|_| drop(tx.read_frame()));
        let mut blocked = RawClient::connect(port);
        blocked.send(b"CLIENT SETNAME blocked\r\nBLPOP nothing 0\r\n");
        blocked.read_frame();
        let mut idle = RawClient::connect(port);
        idle.send(b"CLIENT SETNAME idle\r\nGET k\r\n");
        idle.read_frame();
        idle.read_frame();
        std::thread::sleep(Duration::from_millis(2100));

        let mut c = connect(port);
        let list = client_list(&mut c, &[]).unwrap();
        let by_name = |name: &str| {
            list.lines()
                .map(fields)
                .find(|f| f["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {list}"))
        };
        let sub = by_name("sub");
        assert_eq!(
            (&*sub["cmd"], &*sub["flags"], &*sub["sub"]),
            ("subscribe", "P", "1"),
            "{port}"
        );
        let t = by_name("tx");
        assert_eq!(
            (&*t["cmd"], &*t["flags"], &*t["multi"]),
            ("incr", "x", "2"),
            "{port}"
        );
        let b = by_name("blocked");
        assert_eq!((&*b["cmd"], &*b["flags"]), ("blpop", "b"), "{port}");
        let i = by_name("idle");
        assert_eq!(
            (&*i["cmd"], &*i["flags"], &*i["multi"]),
            ("get", "N", "-1"),
            "{port}"
        );
        assert!(i["idle"].parse::<u64>().unwrap() >= 2, "{port}: {list}");
        assert!(i["age"].parse::<u64>().unwrap() >= 2, "{port}: {list}");
        let me: String = redis::cmd("CLIENT").arg("INFO").query(&mut c).unwrap();
        assert_eq!(fields(&me)["cmd"], "client|info", "{port}");

        // Filters: ID (several, unknown, 0), TYPE; and their errors.
        let sub_id = &sub["id"];
        let listed = client_list(&mut c, &["ID", sub_id, &t["id"], "999999"]).unwrap();
        assert_eq!(listed.lines().count(), 2, "{port}: {listed}");
        assert_eq!(client_list(&mut c, &["ID", "999999"]).unwrap(), "");
        assert_eq!(client_list(&mut c, &["ID", "0"]).unwrap(), "");
        let pubsub = client_list(&mut c, &["TYPE", "pubsub"]).unwrap();
        assert_eq!(
            pubsub
                .lines()
                .map(|l| fields(l)["name"].clone())
                .collect::<Vec<_>>(),
            ["sub"]
        );
        let normal = client_list(&mut c, &["TYPE", "normal"]).unwrap();
        assert_eq!(normal.lines().count(), 4, "{port}: {normal}");
        assert_eq!(client_list(&mut c, &["TYPE", "master"]).unwrap(), "");
        for (args, error) in [
            (vec!["ID", "x"], "Invalid client ID"),
            (vec!["TYPE", "foo"], "Unknown client type 'foo'"),
            (vec!["FOO"], "syntax error"),
        ] {
            let e = client_list(&mut c, &args).unwrap_err();
            assert_eq!(e.detail(), Some(error), "{port} {args:?}: {e}");
        }
    }
}

/// Section names of an INFO reply, in order.
fn sections(info: &str) -> Vec<String> {
    info.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn info_per_command_sections_have_redis_shape() {
    let (_behind, direct, keyway) = one_pool();
    for port in [direct.port, keyway.port] {
        let mut c = connect(port);
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
        let _: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
        assert!(redis::cmd("INCR").arg("k").query::<i64>(&mut c).is_err());
        assert!(redis::cmd("GET").query::<String>(&mut c).is_err());
    }
    let info = |port: u16, args: &[&str]| -> String {
        redis::cmd("INFO")
            .arg(args)
            .query(&mut connect(port))
            .unwrap()
    };
    // Which sections each form gives, as Redis gives them (plus keyway's own).
    for args in [
        vec![],
        vec!["default"],
        vec!["all"],
        vec!["everything"],
        vec!["COMMANDSTATS", "errorstats"],
    ] {
        let want = sections(&info(direct.port, &args));
        let mut got = sections(&info(keyway.port, &args));
        got.retain(|s| s != "Keyway");
        assert_eq!(got, want, "INFO {args:?}");
    }
    let stats = info(keyway.port, &["commandstats"]);
    let line = |prefix: &str| {
        stats
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {stats}"))
            .to_string()
    };
    let get = line("cmdstat_get:");
    assert!(get.starts_with("cmdstat_get:calls=1,usec="), "{get}");
    assert!(get.ends_with(",rejected_calls=1,failed_calls=0"), "{get}");
    assert!(line("cmdstat_incr:").ends_with(",rejected_calls=0,failed_calls=1"));
    let direct_stats = info(direct.port, &["commandstats"]);
    let keys = |l: &str| -> Vec<String> {
        l.split_once(':')
            .unwrap()
            .1
            .split(',')
            .map(|kv| kv.split('=').next().unwrap().to_string())
            .collect()
    };
    let direct_get = direct_stats
        .lines()
        .find(|l| l.starts_with("cmdstat_get:"))
        .unwrap();
    assert_eq!(keys(&get), keys(direct_get));

    let errors = info(keyway.port, &["errorstats"]);
    // INCR of a non-integer and GET's arity: both ERR.
    assert!(errors.contains("errorstat_ERR:count=2"), "{errors}");
    // (Redis's own count differs: the client library's CLIENT SETINFO is an
    // unknown subcommand to Redis 7.0, which keyway answers.)
    assert!(info(direct.port, &["errorstats"]).starts_with("# Errorstats\r\nerrorstat_ERR:count="));

    let latency = info(keyway.port, &["latencystats"]);
    let set = latency
        .lines()
        .find(|l| l.starts_with("latency_percentiles_usec_set:"))
        .unwrap_or_else(|| panic!("{latency}"));
    let names: Vec<&str> = set
        .split_once(':')
        .unwrap()
        .1
        .split(',')
        .map(|kv| kv.split('=').next().unwrap())
        .collect();
    assert_eq!(names, ["p50", "p99", "p99.9"]);
}

#[test]
fn latency_histogram_has_redis_shape() {
    let (_behind, direct, keyway) = one_pool();
    let mut shapes = Vec::new();
    for port in [direct.port, keyway.port] {
        let mut c = connect(port);
        for _ in 0..5 {
            let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
        }
        let reply: redis::Value = redis::cmd("LATENCY")
            .arg(&["HISTOGRAM", "set", "nosuch"])
            .query(&mut c)
            .unwrap();
        let redis::Value::Array(items) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(items.len(), 2, "one command: {items:?}");
        let redis::Value::Array(body) = &items[1] else {
            panic!("{items:?}")
        };
        let calls = redis::from_redis_value::<i64>(&body[1]).unwrap();
        let redis::Value::Array(buckets) = &body[3] else {
            panic!("{body:?}")
        };
        let counts: Vec<i64> = buckets
            .iter()
            .skip(1)
            .step_by(2)
            .map(|v| redis::from_redis_value(v).unwrap())
            .collect();
        assert_eq!(
            counts.last(),
            Some(&5),
            "cumulative up to every call: {buckets:?}"
        );
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        let head: Vec<String> = [&items[0], &body[0], &body[2]]
            .iter()
            .map(|v| redis::from_redis_value(v).unwrap())
            .collect();
        shapes.push((head, calls));
    }
    assert_eq!(shapes[0], shapes[1]);
}

#[test]
fn reset_keeps_the_library_name_as_redis_does() {
    let (_behind, _direct, keyway) = one_pool();
    let mut raw = keyway.raw();
    raw.send(b"CLIENT SETINFO lib-name mylib\r\nCLIENT SETNAME n\r\nRESET\r\nCLIENT INFO\r\n");
    (0..3).for_each(|_| drop(raw.read_frame()));
    let info = String::from_utf8(raw.read_frame()).unwrap();
    let f = fields(&info);
    assert_eq!((&*f["lib-name"], &*f["name"]), ("mylib", ""), "{info}");
}

/// Each section's field names, as an INFO reply lists them.
fn fields_by_section(info: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut section = String::new();
    for line in info.lines() {
        if let Some(name) = line.strip_prefix("# ") {
            section = name.trim().to_string();
            out.entry(section.clone()).or_insert_with(BTreeSet::new);
        } else if let Some((field, _)) = line.split_once(':') {
            out.entry(section.clone())
                .or_insert_with(BTreeSet::new)
                .insert(field.to_string());
        }
    }
    out
}

#[test]
fn every_section_has_redis_field_names() {
    let (_behind, direct, keyway) = one_pool();
    let want = fields_by_section(&redis_cli(direct.port, &["INFO", "everything"]));
    let got = fields_by_section(&redis_cli(keyway.port, &["INFO", "everything"]));
    for (section, fields) in &want {
        // These list what happened (commands, errors, databases), not a schema.
        if matches!(
            section.as_str(),
            "Commandstats" | "Errorstats" | "Latencystats" | "Keyspace"
        ) {
            assert!(got.contains_key(section), "{section} missing");
            continue;
        }
        let have = got
            .get(section)
            .unwrap_or_else(|| panic!("{section} missing"));
        let missing: Vec<_> = fields.difference(have).collect();
        assert!(missing.is_empty(), "{section} lacks {missing:?}");
    }
}

#[test]
fn server_figures_are_summed_over_distinct_backends() {
    let r = Reference::start();
    let mut c = r.client();
    for key in ["session:a", "user:b", "rate:c", "rate:d"] {
        let _: () = redis::cmd("SET").arg(key).arg("v").query(&mut c).unwrap();
    }
    let field = |info: &str, name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in {info}"))
            .trim()
            .parse()
            .unwrap()
    };
    let through: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
    let direct: u64 = [&r.session, &r.cache, &r.realtime]
        .iter()
        .map(|s| {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query(&mut s.direct())
                .unwrap();
            field(&info, "rdb_changes_since_last_save")
        })
        .sum();
    assert_eq!(field(&through, "rdb_changes_since_last_save"), direct);
    assert!(direct >= 4);
}

/// Whether a direct write to `server` answers within half a second.
fn writes_flow(server: &RedisServer) -> bool {
    let out = std::process::Command::new("timeout")
        .args([
            "0.5",
            "redis-cli",
            "-p",
            &server.port.to_string(),
            "SET",
            "probe",
            "1",
        ])
        .output()
        .expect("timeout and redis-cli");
    String::from_utf8_lossy(&out.stdout).trim() == "OK"
}

#[test]
fn client_pause_is_server_wide_and_reaches_every_backend() {
    // Refused by default: it stops every tenant's commands.
    let r = Reference::start();
    let e = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1000"])
        .query::<()>(&mut r.client())
        .unwrap_err();
    assert!(e.to_string().contains("blocked by keyway policy"), "{e}");
    drop(r);

    let r = Reference::start_with("[policy]\nallow = [\"CLIENT PAUSE\", \"CLIENT UNPAUSE\"]\n");
    let mut c = r.client();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "20000", "WRITE"])
        .query(&mut c)
        .unwrap();
    for server in [&r.session, &r.cache, &r.realtime] {
        assert!(
            !writes_flow(server),
            "port {} should be paused",
            server.port
        );
    }
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut c).unwrap();
    for server in [&r.session, &r.cache, &r.realtime] {
        assert!(
            writes_flow(server),
            "port {} should be unpaused",
            server.port
        );
    }
}

#[test]
fn config_set_and_resetstat_reach_keyways_own_slow_log_and_stats() {
    let (_behind, direct, keyway) = one_pool();
    for port in [direct.port, keyway.port] {
        let mut c = connect(port);
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "slowlog-log-slower-than", "0"])
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
        let _: Option<String> = redis::cmd("GET").arg("foo").query(&mut c).unwrap();
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").query(&mut c).unwrap();
        let text = format!("{log:?}");
        assert!(text.contains("foo"), "{port}: the GET is logged: {text}");
        // So is what the server answers itself (SLOWLOG RESET, after it ran).
        assert!(text.contains("RESET"), "{port}: {text}");
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "slowlog-log-slower-than", "-1"])
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
        let _: Option<String> = redis::cmd("GET").arg("bar").query(&mut c).unwrap();
        let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
        assert_eq!(len, 0, "{port}: negative turns the log off");

        let processed = |c: &mut redis::Connection| -> u64 {
            let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let before = processed(&mut c);
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
        let after = processed(&mut c);
        assert!(
            after < before && after <= 2,
            "{port}: {before} then {after}"
        );
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut c)
            .unwrap();
        assert!(!stats.contains("cmdstat_get:"), "{port}: {stats}");
    }
}
