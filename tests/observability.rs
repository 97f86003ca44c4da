//! Observability: exact counters in a scrape after known traffic (hits,
//! misses, a blocked command, a rate-limited burst, a slow command), the
//! slow log through keyway, readiness following a backend, and secrets
//! redacted from /config.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

fn setup(extra: &str, env: &[(&str, &str)]) -> (Reference, Keyway) {
    let r = Reference::start();
    let config = format!(
        "{}\n{}",
        reference_config(&r.session.url(), &r.cache.url(), &r.realtime.url()).replace(
            "[backend]\n",
            "[server]\nslowlog_threshold_ms = 150\nhealth_interval_ms = 200\n[backend]\n"
        ),
        extra
    );
    let kw = Keyway::start_with_env(&config, env);
    (r, kw)
}

#[test]
fn known_traffic_gives_exact_counters() {
    let (_r, kw) = setup(
        "[policy]\nblocklist = [\"FLUSHALL\"]\n[[limits]]\nname = \"burst\"\nscope = \"command\"\nrate = 0.01\nburst = 2\ncommands = [\"ECHO\"]\n",
        &[],
    );
    let mut c = kw.client();
    let _: () = c.set("user:1", "a").unwrap();
    let _: () = c.set("session:1", "b").unwrap();
    for _ in 0..3 {
        let _: Option<String> = c.get("user:1").unwrap(); // 3 hits on cache, route user:
    }
    for _ in 0..2 {
        let _: Option<String> = c.get("user:none").unwrap(); // 2 misses
    }
    let _: Option<String> = c.get("session:1").unwrap(); // 1 hit on session
    let _: Vec<Option<String>> = c.mget(&["user:1", "user:x", "user:y"]).unwrap(); // 1 hit, 2 misses
    let _ = redis::cmd("FLUSHALL").query::<()>(&mut c).unwrap_err();
    for _ in 0..5 {
        let _ = redis::cmd("ECHO").arg("x").query::<String>(&mut c);
    }
    let (status, body) = kw.http("GET", "/metrics");
    assert_eq!(status, 200);
    let v = |s: &str| metric_value(&body, s);
    assert_eq!(
        v(r#"keyway_cache_hits_total{pool="cache",route="user:"}"#),
        4.0,
        "{body}"
    );
    assert_eq!(
        v(r#"keyway_cache_misses_total{pool="cache",route="user:"}"#),
        4.0
    );
    assert_eq!(
        v(r#"keyway_cache_hits_total{pool="session",route="session:"}"#),
        1.0
    );
    assert_eq!(
        v(r#"keyway_commands_total{command="get",outcome="ok",pool="cache"}"#),
        5.0
    );
    assert_eq!(
        v(r#"keyway_commands_total{command="set",outcome="ok",pool="session"}"#),
        1.0
    );
    assert_eq!(
        v(r#"keyway_command_duration_seconds_count{command="get",pool="cache"}"#),
        5.0
    );
    assert_eq!(
        v(r#"keyway_denials_total{detail="FLUSHALL",reason="blocklist"}"#),
        1.0
    );
    assert_eq!(
        v(r#"keyway_denials_total{detail="burst",reason="ratelimit"}"#),
        3.0
    );
    assert_eq!(v("keyway_clients_connected"), 1.0);
    assert!(body.contains(
        "keyway_command_duration_seconds_bucket{command=\"get\",pool=\"cache\",le=\"0.00005\"}"
    ));
    // Backend gauges from the INFO probe.
    assert!(kw.wait_until(Duration::from_secs(3), || kw
        .metric(r#"keyway_backend_up{pool="cache"}"#)
        == 1.0));
    assert!(kw.metric(r#"keyway_backend_memory_used_bytes{pool="session"}"#) > 0.0);
    let info: String = redis::cmd("INFO").arg("keyway").query(&mut c).unwrap();
    assert!(
        info.contains("cache_hits:5") && info.contains("cache_misses:4"),
        "{info}"
    );
}

/// id, timestamp, microseconds, arguments, client address, client name, pool.
type SlowEntry = (i64, i64, i64, Vec<String>, String, String, String);

#[test]
fn slow_commands_reach_the_slow_log_and_a_counter() {
    // SLOWLOG RESET clears the log for every tenant: lifted explicitly.
    let (_r, kw) = setup("[policy]\nallow = [\"SLOWLOG RESET\"]\n", &[]);
    let mut c = kw.client();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    // A Lua busy loop of 300ms on the cache pool (Redis 7 disables DEBUG).
    const BUSY: &str =
        "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end \
                        local s = now() while now() - s < 300000 do end return 1";
    let _: i64 = redis::cmd("EVAL")
        .arg(BUSY)
        .arg(1)
        .arg("user:slow")
        .query(&mut c)
        .unwrap();
    let _: () = c.set("user:fast", 1).unwrap();
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert_eq!(len, 1);
    let entries: Vec<SlowEntry> = redis::cmd("SLOWLOG").arg("GET").query(&mut c).unwrap();
    let (_, _, micros, args, addr, _, pool) = &entries[0];
    assert!(*micros >= 300_000, "{micros}");
    assert_eq!(args.len(), 4);
    assert_eq!(
        (args[0].as_str(), args[2].as_str(), args[3].as_str()),
        ("EVAL", "1", "user:slow")
    );
    assert!(
        args[1].ends_with("more bytes)"),
        "long arguments are trimmed like Redis does: {}",
        args[1]
    );
    assert!(addr.starts_with("127.0.0.1:"));
    assert_eq!(pool, "cache");
    assert_eq!(
        kw.metric(r#"keyway_slow_commands_total{pool="cache"}"#),
        1.0
    );
}

#[test]
fn readyz_follows_the_backends() {
    let (mut r, kw) = setup("", &[]);
    assert!(
        kw.wait_until(Duration::from_secs(3), || kw.http("GET", "/readyz").0
            == 200)
    );
    assert_eq!(kw.http("GET", "/healthz"), (200, "ok\n".to_string()));
    r.realtime.stop();
    assert!(
        kw.wait_until(Duration::from_secs(3), || kw.http("GET", "/readyz").0
            == 503),
        "readyz did not turn 503 within 3s"
    );
    let (_, body) = kw.http("GET", "/readyz");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["pools"]["realtime"]["up"], false, "{body}");
    assert_eq!(ready["pools"]["cache"]["up"], true, "{body}");
    assert!(ready["pools"]["realtime"]["reason"].is_string(), "{body}");
    assert_eq!(kw.metric(r#"keyway_backend_up{pool="realtime"}"#), 0.0);
    r.realtime.restart();
    assert!(
        kw.wait_until(Duration::from_secs(3), || kw.http("GET", "/readyz").0
            == 200),
        "readyz did not recover within 3s"
    );
    let (status, stats) = kw.http("GET", "/stats");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["pools"]["realtime"]["up"], true);
}

#[test]
fn config_endpoint_redacts_secrets() {
    let session = RedisServer::start_with(&["--requirepass", "backend-secret"]);
    let cache = RedisServer::start();
    let realtime = RedisServer::start();
    let config = format!(
        "{}\n[auth]\n[[auth.users]]\nname = \"app\"\npassword_env = \"APP_PW\"\n",
        reference_config(
            &format!("redis://:backend-secret@127.0.0.1:{}", session.port),
            &cache.url(),
            &realtime.url()
        )
    );
    let kw = Keyway::start_with_env(
        &config,
        &[
            ("KEYWAY_REQUIREPASS", "client-secret"),
            ("APP_PW", "app-secret"),
        ],
    );
    let (status, body) = kw.http("GET", "/config");
    assert_eq!(status, 200);
    for secret in ["backend-secret", "client-secret", "app-secret"] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    assert!(
        body.contains("\"name\":\"app\"") && body.contains(":***@127.0.0.1"),
        "{body}"
    );
    // And the upstream AUTH from the URL works.
    let client =
        redis::Client::open(format!("redis://:client-secret@127.0.0.1:{}/", kw.port)).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = c.set("session:auth", 1).unwrap();
}

/// Counters whose labels are known at start are in the first scrape at 0,
/// so `increase()` sees their first event (a series born at 1 shows none).
#[test]
fn known_series_are_exported_at_zero_from_the_first_scrape() {
    let (_r, kw) = setup("", &[]);
    let (_, body) = kw.http("GET", "/metrics");
    for series in [
        r#"keyway_errors_total{kind="protocol"} 0"#,
        r#"keyway_errors_total{kind="timeout"} 0"#,
        r#"keyway_config_reloads_total{result="error"} 0"#,
        r#"keyway_config_reloads_total{result="ok"} 0"#,
        r#"keyway_failovers_total{pool="session"} 0"#,
        r#"keyway_slow_commands_total{pool="cache"} 0"#,
        r#"keyway_failover_writes_held_total{pool="realtime"} 0"#,
        r#"keyway_errors_total{kind="client_error_reply"} 0"#,
        r#"keyway_denials_total{detail="lockout",reason="auth"} 0"#,
        &format!(
            r#"keyway_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "{series} missing:\n{body}"
        );
    }
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{family} "))),
            "{family} missing"
        );
    }
}

/// A pool marked `required = false` down: the pod stays ready (its
/// application can do without it) and the body says which pool is down.
#[test]
fn readyz_fails_only_for_required_pools() {
    let r = Reference::start();
    let config = reference_config(&r.session.url(), &r.cache.url(), &r.realtime.url())
        .replace(
            "[backend]\n",
            "[server]\nhealth_interval_ms = 200\n[backend]\n",
        )
        .replace(
            &format!("url = \"{}\"\n", r.realtime.url()),
            &format!("url = \"{}\"\nrequired = false\n", r.realtime.url()),
        );
    assert!(config.contains("required = false"));
    let kw = Keyway::start(&config);
    let mut realtime = r.realtime;
    assert!(
        kw.wait_until(Duration::from_secs(3), || kw.http("GET", "/readyz").0
            == 200)
    );
    realtime.stop();
    assert!(kw.wait_until(Duration::from_secs(3), || kw
        .http("GET", "/readyz")
        .1
        .contains("\"up\":false")));
    let (status, body) = kw.http("GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["pools"]["realtime"]["required"], false);
    assert_eq!(ready["pools"]["realtime"]["up"], false);
    // A required pool down: not ready.
    let mut session = r.session;
    session.stop();
    assert!(
        kw.wait_until(Duration::from_secs(3), || kw.http("GET", "/readyz").0
            == 503)
    );
}

/// Each error counted once, under what it is: a client's mistake apart
/// from a backend that cannot serve, a timeout once, an unavailable pool
/// both as an error and as a failed command.
#[test]
fn errors_are_counted_once_by_kind() {
    let (session, cache) = (RedisServer::start(), RedisServer::start());
    let mut realtime = RedisServer::start();
    let kw = Keyway::start(
        &reference_config(&session.url(), &cache.url(), &realtime.url())
            .replace("[backend]\n", "[backend]\nrequest_timeout_ms = 300\n"),
    );
    let mut c = kw.client();
    let kind = |k: &str| kw.metric(&format!(r#"keyway_errors_total{{kind="{k}"}}"#));
    // A client's mistake: WRONGTYPE from the backend.
    let _: () = c.lpush("user:list", "x").unwrap();
    assert!(redis::cmd("GET")
        .arg("user:list")
        .query::<String>(&mut c)
        .is_err());
    assert_eq!(kind("client_error_reply"), 1.0);
    assert_eq!(kind("backend_error_reply"), 0.0);
    // A timeout: counted as a timeout only.
    const BUSY: &str = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] while true do local n = redis.call('TIME') if n[1] * 1000000 + n[2] - s > 600000 then break end end return 1";
    let err = redis::cmd("EVAL")
        .arg(BUSY)
        .arg(1)
        .arg("user:busy")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(kind("timeout"), 1.0);
    assert_eq!(kind("backend_error_reply"), 0.0);
    assert_eq!(kind("client_error_reply"), 1.0);
    std::thread::sleep(Duration::from_millis(500));
    // A pool that cannot be reached: an error and a failed command.
    realtime.stop();
    let failed_before =
        kw.metric(r#"keyway_commands_total{command="incr",outcome="error",pool="realtime"}"#);
    let err = redis::cmd("INCR")
        .arg("rate:x")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("backend 'realtime'"), "{err}");
    assert!(kind("backend_unavailable") + kind("connection_lost") >= 1.0);
    assert_eq!(
        kw.metric(r#"keyway_commands_total{command="incr",outcome="error",pool="realtime"}"#),
        failed_before + 1.0
    );
}
