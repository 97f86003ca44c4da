//! Policy at the edge, through a real client: authentication and users,
//! the blocklist and its bypass attempts, key prefixes and read-only users,
//! rate limits. Every refusal: the exact error, the metric, the backend
//! untouched, other clients unaffected.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

fn try_cmd(c: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query(c)
        .map_err(|e| e.to_string())
}

struct Setup {
    session: RedisServer,
    cache: RedisServer,
    _realtime: RedisServer,
    keyway: Keyway,
    _dir: TempDir,
}

fn start(extra: &str, env: &[(&str, &str)]) -> Setup {
    let session = RedisServer::start();
    let cache = RedisServer::start();
    let realtime = RedisServer::start();
    let dir = TempDir::new("policy");
    let config = format!(
        "{}\n{}",
        reference_config(&session.url(), &cache.url(), &realtime.url()),
        extra.replace("$DIR", &dir.0.display().to_string())
    );
    let keyway = Keyway::start_with_env(&config, env);
    Setup {
        session,
        cache,
        _realtime: realtime,
        keyway,
        _dir: dir,
    }
}

#[test]
fn requirepass_from_the_environment() {
    let s = start("", &[("KEYWAY_REQUIREPASS", "s3cret")]);
    let mut raw = s.keyway.raw();
    raw.send(b"GET session:a\r\nHELLO 3\r\nAUTH wrong\r\nAUTH s3cret\r\nGET session:a\r\n");
    assert_eq!(raw.read_frame(), b"-NOAUTH Authentication required.\r\n");
    assert!(raw
        .read_frame()
        .starts_with(b"-NOAUTH HELLO must be called with the client already authenticated"));
    assert_eq!(
        raw.read_frame(),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"$-1\r\n");
    // HELLO 3 AUTH in one step, as Lettuce and go-redis do.
    let mut raw = s.keyway.raw();
    raw.send(b"HELLO 3 AUTH default s3cret\r\nPING\r\n");
    assert!(raw.read_frame().starts_with(b"%7\r\n"));
    assert_eq!(raw.read_frame(), b"+PONG\r\n");
    // The redis crate with a password in its URL.
    let client =
        redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/", s.keyway.port)).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = c.set("session:x", 1).unwrap();
    assert!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="noauth",reason="auth"}"#)
            >= 2.0
    );
    assert_eq!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="wrongpass",reason="auth"}"#),
        1.0
    );
}

#[test]
fn failed_auth_is_rate_limited_per_address() {
    let s = start(
        "[auth]\nmax_failures_per_minute = 3\n",
        &[("KEYWAY_REQUIREPASS", "right")],
    );
    let mut raw = s.keyway.raw();
    for _ in 0..3 {
        raw.send(b"AUTH guess\r\n");
        assert!(raw.read_frame().starts_with(b"-WRONGPASS"));
    }
    raw.send(b"AUTH guess\r\nAUTH right\r\n");
    let locked = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        locked.starts_with(
            "-ERR too many failed authentication attempts from this address, retry after"
        ),
        "{locked}"
    );
    let still = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        still.starts_with("-ERR too many failed"),
        "even the right password waits out the lock-out: {still}"
    );
    assert!(s.keyway.metric("keyway_auth_lockouts_total") >= 2.0);
    assert!(
        !s.keyway.log().contains("guess") && !s.keyway.log().contains("right\""),
        "no password in the log"
    );
    assert!(s.keyway.log().contains("too many failed AUTH attempts"));
}

const USERS: &str = r#"
[auth]
[[auth.users]]
name = "app"
password_env = "APP_PASSWORD"
prefixes = ["session:", "user:"]
[[auth.users]]
name = "reader"
password_file = "$DIR/reader.pass"
read_only = true
[[auth.users]]
name = "admin"
password_env = "ADMIN_PASSWORD"
allow = ["CONFIG GET"]
block = ["EVAL", "SCRIPT"]
"#;

fn start_with_users() -> Setup {
    let dir = TempDir::new("pass");
    std::fs::write(dir.0.join("reader.pass"), "read-only-pass\n").unwrap();
    let s = {
        let session = RedisServer::start();
        let cache = RedisServer::start();
        let realtime = RedisServer::start();
        let config = format!(
            "{}\n{}",
            reference_config(&session.url(), &cache.url(), &realtime.url()),
            USERS.replace("$DIR", &dir.0.display().to_string())
        );
        let keyway = Keyway::start_with_env(
            &config,
            &[
                ("APP_PASSWORD", "app-pass"),
                ("ADMIN_PASSWORD", "admin-pass"),
            ],
        );
        Setup {
            session,
            cache,
            _realtime: realtime,
            keyway,
            _dir: dir,
        }
    };
    s
}

fn login(s: &Setup, user: &str, pass: &str) -> redis::Connection {
    let client = redis::Client::open(format!(
        "redis://{user}:{pass}@127.0.0.1:{}/",
        s.keyway.port
    ))
    .unwrap();
    client.get_connection().unwrap()
}

#[test]
fn prefixes_and_read_only_users_get_noperm_and_nothing_runs() {
    let s = start_with_users();
    let mut app = login(&s, "app", "app-pass");
    let _: () = app.set("session:ok", 1).unwrap();
    let err = try_cmd(&mut app, &["SET", "rate:x", "1"]).unwrap_err();
    assert!(
        err.contains("this user has no permissions to access the 'rate:x' key"),
        "{err}"
    );
    // The third key of an MSET, and EVAL's declared keys.
    let err = try_cmd(
        &mut app,
        &[
            "MSET",
            "session:m1",
            "1",
            "user:m2",
            "2",
            "analytics:m3",
            "3",
        ],
    )
    .unwrap_err();
    assert!(err.contains("'analytics:m3' key"), "{err}");
    assert!(
        !s.session.direct().exists::<_, bool>("session:m1").unwrap(),
        "nothing of the MSET ran"
    );
    assert!(!s.cache.direct().exists::<_, bool>("user:m2").unwrap());
    let err = try_cmd(&mut app, &["EVAL", "return 1", "2", "session:a", "rate:b"]).unwrap_err();
    assert!(err.contains("'rate:b' key"), "{err}");
    // Inside MULTI: refused at queue time, EXEC aborts.
    let mut raw = s.keyway.raw();
    raw.send(b"AUTH app app-pass\r\nMULTI\r\nSET session:t 1\r\nGET rate:t\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+QUEUED\r\n");
    assert!(raw.read_frame().starts_with(b"-NOPERM"));
    assert!(raw.read_frame().starts_with(b"-EXECABORT"));
    assert!(!s.session.direct().exists::<_, bool>("session:t").unwrap());

    let mut reader = login(&s, "reader", "read-only-pass");
    let v: i64 = reader.get("session:ok").unwrap();
    assert_eq!(v, 1);
    let err = try_cmd(&mut reader, &["DEL", "session:ok"]).unwrap_err();
    assert!(
        err.contains("this user has no permissions to run the 'del' command"),
        "{err}"
    );
    assert!(s.session.direct().exists::<_, bool>("session:ok").unwrap());
    assert!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="del",reason="noperm"}"#)
            >= 1.0
    );
    assert!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="key",reason="noperm"}"#)
            >= 3.0
    );

    let mut raw = s.keyway.raw();
    raw.send(b"AUTH nobody x\r\nAUTH app wrong\r\n");
    assert!(raw.read_frame().starts_with(b"-WRONGPASS"));
    assert!(raw.read_frame().starts_with(b"-WRONGPASS"));
}

#[test]
fn blocklist_and_its_bypass_attempts() {
    let s = start_with_users();
    let mut app = login(&s, "app", "app-pass");
    let _: () = app.set("session:keep", 1).unwrap();
    for attempt in [
        vec!["FLUSHALL"],
        vec!["flushall"],
        vec!["FlushDB"],
        vec!["CONFIG", "SET", "maxmemory", "1"],
        vec!["DEBUG", "SLEEP", "0"],
        vec!["SHUTDOWN"],
    ] {
        let err = try_cmd(&mut app, &attempt).unwrap_err();
        assert!(
            err.contains("is blocked by keyway policy"),
            "{attempt:?}: {err}"
        );
    }
    // Queued inside MULTI: refused at queue time, EXEC aborts.
    let mut raw = s.keyway.raw();
    raw.send(b"AUTH app app-pass\r\nMULTI\r\nFLUSHALL\r\nEXEC\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-ERR command 'FLUSHALL' is blocked by keyway policy\r\n"
    );
    assert!(raw.read_frame().starts_with(b"-EXECABORT"));
    // In a pipeline after an allowed command.
    raw.send(b"GET session:keep\r\nflushdb\r\nGET session:keep\r\n");
    assert_eq!(raw.read_frame(), b"$1\r\n1\r\n");
    assert_eq!(
        raw.read_frame(),
        b"-ERR command 'FLUSHDB' is blocked by keyway policy\r\n"
    );
    assert_eq!(raw.read_frame(), b"$1\r\n1\r\n");
    assert!(
        s.session
            .direct()
            .exists::<_, bool>("session:keep")
            .unwrap(),
        "nothing was flushed"
    );
    assert!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="FLUSHALL",reason="blocklist"}"#)
            >= 3.0
    );

    // The admin user may CONFIG GET but not CONFIG SET, and may not EVAL.
    let mut admin = login(&s, "admin", "admin-pass");
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut admin)
        .unwrap();
    assert_eq!(got[0], "maxmemory");
    let err = try_cmd(&mut admin, &["CONFIG", "SET", "maxmemory", "1"]).unwrap_err();
    assert!(err.contains("command 'CONFIG SET' is blocked"), "{err}");
    let err = try_cmd(&mut admin, &["EVAL", "return redis.call('FLUSHALL')", "0"]).unwrap_err();
    assert!(err.contains("command 'EVAL' is blocked"), "{err}");
    let err = try_cmd(&mut admin, &["SCRIPT", "LOAD", "return 1"]).unwrap_err();
    assert!(err.contains("command 'SCRIPT' is blocked"), "{err}");
}

#[test]
fn aliases_are_blocked_together() {
    let s = start("[policy]\nblocklist = [\"REPLICAOF\", \"KEYS\"]\n", &[]);
    let mut c = s.keyway.client();
    let err = try_cmd(&mut c, &["SLAVEOF", "NO", "ONE"]).unwrap_err();
    assert!(
        err.contains("command 'REPLICAOF' is blocked by keyway policy"),
        "{err}"
    );
    let err = try_cmd(&mut c, &["keys", "*"]).unwrap_err();
    assert!(err.contains("'KEYS' is blocked"), "{err}");
    // FLUSHALL is allowed by this list (the default is replaced).
    assert!(try_cmd(&mut c, &["PING"]).is_ok());
}

#[test]
fn a_rate_limit_admits_rate_plus_burst() {
    let s = start(
        "[[limits]]\nname = \"per-ip\"\nscope = \"ip\"\nrate = 200\nburst = 50\n",
        &[],
    );
    let mut c = s.keyway.client();
    let started = Instant::now();
    let mut admitted = 0;
    let mut refused = 0;
    let mut last_err = String::new();
    while started.elapsed() < Duration::from_secs(2) {
        match c.get::<_, Option<String>>("user:limited") {
            Ok(_) => admitted += 1,
            Err(e) => {
                refused += 1;
                last_err = e.to_string();
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 200.0 * elapsed + 50.0;
    assert!(refused > 0, "the limit never refused");
    assert!(
        (admitted as f64 - expected).abs() / expected < 0.05,
        "admitted {admitted} in {elapsed:.2}s, expected about {expected:.0}"
    );
    assert!(
        last_err.contains("rate limit exceeded (limit 'per-ip'), retry after"),
        "{last_err}"
    );
    assert_eq!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="per-ip",reason="ratelimit"}"#),
        refused as f64
    );
}

#[test]
fn a_command_limit_only_counts_its_command_and_delay_waits() {
    let s = start(
        "[[limits]]\nname = \"keys\"\nscope = \"command\"\nrate = 1\nburst = 1\ncommands = [\"KEYS\"]\n\
         [[limits]]\nname = \"smooth\"\nscope = \"user\"\nrate = 100\nburst = 1\naction = \"delay\"\nmax_delay_ms = 50\ncommands = [\"INCR\"]\n",
        &[],
    );
    let mut c = s.keyway.client();
    let _: Vec<String> = c.keys("*").unwrap();
    let err = c.keys::<_, Vec<String>>("*").unwrap_err();
    assert!(err.to_string().contains("limit 'keys'"), "{err}");
    for _ in 0..100 {
        let _: () = c.set("user:free", 1).unwrap();
    }
    // Delayed, not refused: 20 INCRs at 100/s take about 0.2s and all succeed.
    let started = Instant::now();
    for _ in 0..20 {
        let _: i64 = redis::cmd("INCR").arg("rate:smooth").query(&mut c).unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}
