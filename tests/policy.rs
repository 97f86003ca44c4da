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
    // A reload (anyone reaching the admin port may ask for one) does not
    // lift the lock-out.
    let (status, _) = s.keyway.http("POST", "/reload");
    assert_eq!(status, 200);
    raw.send(b"AUTH right\r\n");
    let after_reload = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        after_reload.starts_with("-ERR too many failed"),
        "a reload lifted the lock-out: {after_reload}"
    );
}

/// A reload keeps the state of every limit whose settings it did not
/// change: a reload is no fresh burst.
#[test]
fn a_reload_keeps_the_state_of_unchanged_limits() {
    let s = start(
        "[[limits]]\nname = \"incr\"\nscope = \"ip\"\nrate = 0.01\nburst = 3\ncommands = [\"INCR\"]\n",
        &[],
    );
    let mut c = s.keyway.client();
    let admitted = |c: &mut redis::Connection| {
        (0..5)
            .filter(|_| try_cmd(c, &["INCR", "session:n"]).is_ok())
            .count()
    };
    assert_eq!(admitted(&mut c), 3);
    let (status, _) = s.keyway.http("POST", "/reload");
    assert_eq!(status, 200);
    assert_eq!(admitted(&mut c), 0, "the reload handed out a fresh burst");
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
admin = true
[[auth.users]]
name = "scripter"
password_env = "APP_PASSWORD"
prefixes = ["session:"]
allow_scripts = true
"#;

fn start_with_users() -> Setup {
    start_with_users_and("", "")
}

/// The users above, with `auth` added to their [auth] table and `more`
/// (other tables) after them.
fn start_with_users_and(auth: &str, more: &str) -> Setup {
    let dir = TempDir::new("pass");
    std::fs::write(dir.0.join("reader.pass"), "read-only-pass\n").unwrap();
    let session = RedisServer::start();
    let cache = RedisServer::start();
    let realtime = RedisServer::start();
    let config = format!(
        "{}\n{}\n{more}",
        reference_config(&session.url(), &cache.url(), &realtime.url()),
        USERS
            .replace("$DIR", &dir.0.display().to_string())
            .replace("[auth]\n", &format!("[auth]\n{auth}"))
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
    // Scripts reach past their declared keys: refused to a prefix-limited user.
    let err = try_cmd(&mut app, &["EVAL", "return 1", "1", "session:a"]).unwrap_err();
    assert!(
        err.contains("NOPERM") && err.contains("'eval' command"),
        "{err}"
    );
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
    // The server-wide commands stay refused whatever the list holds.
    let err = try_cmd(&mut c, &["FLUSHALL"]).unwrap_err();
    assert!(err.contains("'FLUSHALL' is blocked"), "{err}");
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

fn blocked(c: &mut redis::Connection, args: &[&str]) {
    let err = try_cmd(c, args).unwrap_err();
    assert!(
        err.contains("is blocked by keyway policy"),
        "{args:?}: {err}"
    );
}

#[test]
fn server_wide_commands_are_refused_unless_allowed() {
    let s = start("", &[]);
    let empty = RedisServer::start();
    let port = empty.port.to_string();
    let mut c = s.keyway.client();
    let _: () = c.set("session:keep", 1).unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut c).unwrap();
    for attempt in [
        vec!["REPLICAOF", "127.0.0.1", &port],
        vec!["slaveof", "127.0.0.1", &port],
        vec!["SWAPDB", "0", "9"],
        vec!["MIGRATE", "127.0.0.1", &port, "session:keep", "0", "1000"],
        vec!["ACL", "SETUSER", "intruder", "on", ">x", "+@all"],
        vec!["MODULE", "LOAD", "/nonexistent.so"],
        vec!["SAVE"],
        vec!["BGSAVE"],
        vec!["BGREWRITEAOF"],
        vec!["FAILOVER"],
        vec!["SCRIPT", "FLUSH"],
        vec!["FUNCTION", "FLUSH"],
        vec!["FUNCTION", "DELETE", "lib"],
        vec!["FUNCTION", "RESTORE", "payload"],
        vec!["DEBUG", "SLEEP", "0"],
        vec!["CONFIG", "SET", "maxmemory", "1"],
        vec!["CONFIG", "GET", "requirepass"],
        vec!["SHUTDOWN"],
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
    ] {
        blocked(&mut c, &attempt);
    }
    let mut direct = s.session.direct();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut direct).unwrap();
    assert_eq!(role[0], redis::Value::BulkString(b"master".to_vec()));
    assert!(direct.exists::<_, bool>("session:keep").unwrap());
    assert!(
        s.keyway
            .metric(r#"keyway_denials_total{detail="REPLICAOF",reason="blocklist"}"#)
            >= 2.0
    );

    // Lifted explicitly, and only what is named.
    let s = start("[policy]\nallow = [\"CONFIG GET\", \"FLUSHDB\"]\n", &[]);
    let mut c = s.keyway.client();
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut c)
        .unwrap();
    assert_eq!(got[0], "maxmemory");
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    blocked(&mut c, &["CONFIG", "SET", "maxmemory", "1"]);
    blocked(&mut c, &["FLUSHALL"]);
}

#[test]
fn a_read_only_user_cannot_write_through_scripts_or_functions() {
    let s = start_with_users();
    let _: () = s.session.direct().set("session:a", "orig").unwrap();
    let lib = "#!lua name=ro\nredis.register_function('put', function(keys) return redis.call('SET', keys[1], 'x') end)";
    let _: () = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut s.session.direct())
        .unwrap();
    let mut reader = login(&s, "reader", "read-only-pass");
    for attempt in [
        vec![
            "EVAL",
            "return redis.call('SET',KEYS[1],'x')",
            "1",
            "session:a",
        ],
        vec![
            "EVALSHA",
            "0123456789012345678901234567890123456789",
            "1",
            "session:a",
        ],
        vec!["FCALL", "put", "1", "session:a"],
        vec!["DEL", "session:a"],
        vec![
            "FUNCTION",
            "LOAD",
            "#!lua name=x\nredis.register_function('y', function() return 1 end)",
        ],
    ] {
        let err = try_cmd(&mut reader, &attempt).unwrap_err();
        assert!(err.contains("NOPERM"), "{attempt:?}: {err}");
    }
    let got: String = redis::cmd("EVAL_RO")
        .arg("return redis.call('GET',KEYS[1])")
        .arg(1)
        .arg("session:a")
        .query(&mut reader)
        .unwrap();
    assert_eq!(got, "orig");
    // Redis itself refuses a write from a read-only script.
    let err = try_cmd(
        &mut reader,
        &[
            "EVAL_RO",
            "return redis.call('SET',KEYS[1],'x')",
            "1",
            "session:a",
        ],
    )
    .unwrap_err();
    assert!(err.to_lowercase().contains("write"), "{err}");
    let v: String = s.session.direct().get("session:a").unwrap();
    assert_eq!(v, "orig");
}

#[test]
fn a_prefix_limited_user_reaches_nothing_outside_its_prefixes() {
    let s = start_with_users();
    let _: () = s.cache.direct().set("refresh:secret", "s").unwrap();
    let mut app = login(&s, "app", "app-pass");
    let _: () = app.rpush("session:list", "1").unwrap();
    let denied = |c: &mut redis::Connection, args: &[&str], what: &str| {
        let err = try_cmd(c, args).unwrap_err();
        assert!(
            err.contains("NOPERM") && err.contains(what),
            "{args:?}: {err}"
        );
    };
    // SORT's patterns read other keys.
    denied(
        &mut app,
        &["SORT", "session:list", "BY", "nosort", "GET", "refresh:*"],
        "refresh:*",
    );
    denied(
        &mut app,
        &["SORT_RO", "session:list", "BY", "refresh:*"],
        "refresh:*",
    );
    let own: Vec<Option<String>> = redis::cmd("SORT")
        .arg(&[
            "session:list",
            "BY",
            "nosort",
            "GET",
            "#",
            "GET",
            "session:w_*",
        ])
        .query(&mut app)
        .unwrap();
    assert_eq!(own, [Some("1".to_string()), None]);
    // Scripts reach any key, whatever they declare.
    for script in [
        vec![
            "EVAL",
            "return redis.call('GET',ARGV[1])",
            "1",
            "session:a",
            "refresh:secret",
        ],
        vec![
            "EVAL_RO",
            "return redis.call('GET',ARGV[1])",
            "1",
            "session:a",
            "refresh:secret",
        ],
        vec!["FCALL_RO", "f", "1", "session:a"],
    ] {
        denied(&mut app, &script, "command");
    }
    // Channels and patterns.
    denied(
        &mut app,
        &["PUBLISH", "refresh:events", "x"],
        "'refresh:events' channel",
    );
    denied(
        &mut app,
        &["SUBSCRIBE", "session:ok", "refresh:events"],
        "channel",
    );
    denied(&mut app, &["PSUBSCRIBE", "*"], "'*' channel");
    denied(&mut app, &["PUBSUB", "CHANNELS"], "channel");
    // Whole-keyspace reads.
    denied(&mut app, &["KEYS", "*"], "'*' key");
    denied(&mut app, &["SCAN", "0"], "key");
    denied(&mut app, &["SCAN", "0", "MATCH", "refresh:*"], "refresh:*");
    denied(&mut app, &["RANDOMKEY"], "command");
    // A repeated option: Redis uses the last one, and so is it checked.
    denied(
        &mut app,
        &["SCAN", "0", "MATCH", "session:*", "MATCH", "*"],
        "'*' key",
    );
    denied(
        &mut app,
        &[
            "SORT",
            "session:list",
            "STORE",
            "session:d",
            "STORE",
            "refresh:d",
        ],
        "refresh:d",
    );
    let _: () = redis::cmd("GEOADD")
        .arg(&["session:geo", "13.36", "38.11", "p"])
        .query(&mut app)
        .unwrap();
    denied(
        &mut app,
        &[
            "GEORADIUS",
            "session:geo",
            "15",
            "37",
            "200",
            "km",
            "STORE",
            "session:g",
            "STORE",
            "refresh:g",
        ],
        "refresh:g",
    );
    denied(
        &mut app,
        &[
            "GEORADIUSBYMEMBER",
            "session:geo",
            "p",
            "1",
            "km",
            "STOREDIST",
            "session:g",
            "STOREDIST",
            "refresh:g",
        ],
        "refresh:g",
    );
    // A function loaded by one tenant runs when another calls it; kill
    // ends another's script; dump and list show the others' code.
    let library = "#!lua name=shared\nredis.register_function('f', function(keys) return 1 end)";
    for args in [
        &["FUNCTION", "LOAD", "REPLACE", library][..],
        &["FUNCTION", "DUMP"],
        &["FUNCTION", "LIST", "WITHCODE"],
        &["FUNCTION", "KILL"],
        &["SCRIPT", "KILL"],
        &["SCRIPT", "LOAD", "return 1"],
    ] {
        denied(&mut app, args, "command");
    }
    // Any tenant's keys, by slot, on a cluster node.
    denied(
        &mut app,
        &["CLUSTER", "GETKEYSINSLOT", "0", "10"],
        "command",
    );
    denied(&mut app, &["CLUSTER", "COUNTKEYSINSLOT", "0"], "command");
    // A command keyway does not know has keys it cannot check.
    denied(&mut app, &["NOSUCHMODULE.GET", "refresh:secret"], "command");
    for key in ["refresh:d", "refresh:g"] {
        let exists: bool = s.cache.direct().exists(key).unwrap();
        assert!(!exists, "{key} was written");
    }
    let _: i64 = app.del("session:geo").unwrap();
    let keys: Vec<String> = app.keys("session:*").unwrap();
    assert_eq!(keys, ["session:list"]);
    let (_, found): (String, Vec<String>) = redis::cmd("SCAN")
        .arg(&["0", "MATCH", "session:*", "COUNT", "100"])
        .query(&mut app)
        .unwrap();
    assert_eq!(found, ["session:list"]);
    let mut sub = login(&s, "app", "app-pass");
    let _: redis::Value = redis::cmd("SUBSCRIBE")
        .arg("session:ok")
        .query(&mut sub)
        .unwrap();

    // allow_scripts lifts the script refusal for a user who asks for it.
    let mut scripter = login(&s, "scripter", "app-pass");
    let one: i64 = redis::cmd("EVAL")
        .arg(&["return 1", "1", "session:x"])
        .query(&mut scripter)
        .unwrap();
    assert_eq!(one, 1);
}

#[test]
fn client_list_and_kill_stay_within_the_users_own_clients() {
    let s = start_with_users();
    let mut app = login(&s, "app", "app-pass");
    let mut reader = login(&s, "reader", "read-only-pass");
    let mut admin = login(&s, "admin", "admin-pass");
    let app_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut app).unwrap();

    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut reader).unwrap();
    assert!(list.lines().all(|l| l.contains(" user=reader ")), "{list}");
    let app_id_text = app_id.to_string();
    for kill in [
        vec!["CLIENT", "KILL", "TYPE", "normal"],
        vec!["CLIENT", "KILL", "ID", &app_id_text],
        vec!["CLIENT", "KILL", "USER", "app"],
        vec!["CLIENT", "KILL", "USER", "default"],
    ] {
        let killed: i64 = redis::cmd(kill[0])
            .arg(&kill[1..])
            .query(&mut reader)
            .unwrap();
        assert_eq!(killed, 0, "{kill:?}");
    }
    let pong: String = redis::cmd("PING").query(&mut app).unwrap();
    assert_eq!(pong, "PONG");

    // An admin user sees every tenant and acts on the user named.
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    for user in ["app", "reader", "admin"] {
        assert!(list.contains(&format!(" user={user} ")), "{list}");
    }
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "app"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
    assert!(
        try_cmd(&mut app, &["PING"]).is_err(),
        "the app client was cut"
    );
    let pong: String = redis::cmd("PING").query(&mut reader).unwrap();
    assert_eq!(pong, "PONG");
}

/// The slow log holds each tenant's keys and values: a user reads only
/// its own clients' entries, as it sees only its own clients; an admin
/// user reads them all.
#[test]
fn the_slow_log_shows_a_user_only_its_own_commands() {
    let s = start_with_users_and("", "[server]\nslowlog_threshold_ms = 0\n");
    let mut app = login(&s, "app", "app-pass");
    let mut reader = login(&s, "reader", "read-only-pass");
    let mut admin = login(&s, "admin", "admin-pass");
    let _: () = app.set("session:token", "app-secret").unwrap();
    let _: Option<String> = reader.get("user:1").unwrap();

    let entries = |c: &mut redis::Connection| -> Vec<String> {
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG").arg(&["GET", "-1"]).query(c).unwrap();
        log.iter().map(|e| format!("{e:?}")).collect()
    };
    let seen_by_reader = entries(&mut reader);
    assert!(
        seen_by_reader.iter().all(|e| !e.contains("app-secret")),
        "{seen_by_reader:?}"
    );
    assert!(seen_by_reader.iter().any(|e| e.contains("user:1")));
    let reader_len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut reader).unwrap();
    let admin_len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut admin).unwrap();
    assert!(reader_len < admin_len, "{reader_len} < {admin_len}");
    let seen_by_app = entries(&mut app);
    assert!(seen_by_app.iter().any(|e| e.contains("app-secret")));
    assert!(seen_by_app.iter().all(|e| !e.contains("user:1")));
    let seen_by_admin = entries(&mut admin);
    assert!(seen_by_admin.iter().any(|e| e.contains("app-secret")));
    assert!(seen_by_admin.iter().any(|e| e.contains("user:1")));
    // Passwords are redacted, as Redis redacts them.
    let _: () = redis::cmd("AUTH")
        .arg(&["app", "app-pass"])
        .query(&mut app)
        .unwrap();
    let _ = try_cmd(&mut app, &["HELLO", "2", "AUTH", "app", "wrong-pass"]);
    let seen_by_admin = entries(&mut admin);
    assert!(
        seen_by_admin
            .iter()
            .all(|e| !e.contains("app-pass") && !e.contains("wrong-pass")),
        "{seen_by_admin:?}"
    );
    assert!(seen_by_admin.iter().any(|e| e.contains("(redacted)")));
}

#[test]
fn queued_commands_count_against_rate_limits() {
    let s = start(
        "[[limits]]\nname = \"per-ip\"\nscope = \"ip\"\nrate = 100\nburst = 20\n",
        &[],
    );
    let mut raw = s.keyway.raw();
    let mut pipeline = b"MULTI\r\n".to_vec();
    for _ in 0..300 {
        pipeline.extend_from_slice(b"INCR session:n\r\n");
    }
    pipeline.extend_from_slice(b"EXEC\r\n");
    raw.send(&pipeline);
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    let (mut queued, mut limited) = (0, 0);
    for _ in 0..300 {
        let frame = raw.read_frame();
        if frame == b"+QUEUED\r\n" {
            queued += 1;
        } else if frame.starts_with(b"-ERR rate limit exceeded (limit 'per-ip')") {
            limited += 1;
        } else {
            panic!("{}", String::from_utf8_lossy(&frame));
        }
    }
    let exec = raw.read_frame();
    println!("MULTI with 300 INCR at 100/s burst 20: {queued} queued, {limited} limited");
    assert!(limited > 200, "{limited} limited");
    assert!(
        exec.starts_with(b"-EXECABORT"),
        "{}",
        String::from_utf8_lossy(&exec)
    );
    let n: Option<i64> = s.session.direct().get("session:n").unwrap();
    assert_eq!(n, None, "nothing of the aborted transaction ran");
}

/// A client connection from a chosen loopback source address.
fn raw_from(source: [u8; 4], port: u16) -> RawClient {
    RawClient::connect_from(source, port)
}

#[test]
fn failed_auth_locks_out_one_user_from_one_address_only() {
    let s = start_with_users_and("max_failures_per_minute = 3\n", "");
    let port = s.keyway.port;
    let auth = |raw: &mut RawClient, user: &str, pass: &str| {
        raw.send(format!("AUTH {user} {pass}\r\n").as_bytes());
        String::from_utf8_lossy(&raw.read_frame()).into_owned()
    };
    // Wrong passwords for `reader` from 127.0.0.1 lock out only `reader` there.
    let mut attacker = raw_from([127, 0, 0, 1], port);
    for _ in 0..5 {
        auth(&mut attacker, "reader", "guess");
    }
    assert!(auth(&mut attacker, "reader", "read-only-pass").starts_with("-ERR too many failed"));
    let mut app = raw_from([127, 0, 0, 1], port);
    assert_eq!(auth(&mut app, "app", "app-pass"), "+OK\r\n");
    let mut elsewhere = raw_from([127, 0, 0, 2], port);
    assert_eq!(auth(&mut elsewhere, "reader", "read-only-pass"), "+OK\r\n");

    // Guesses for `app` from rotating addresses, each under the per-address
    // allowance: the user's own limit holds new addresses, not 127.0.0.1,
    // where `app` already authenticated.
    for last in 10..60 {
        let mut guesser = raw_from([127, 0, 0, last], port);
        for _ in 0..2 {
            auth(&mut guesser, "app", "guess");
        }
    }
    let mut fresh = raw_from([127, 0, 0, 100], port);
    assert!(
        auth(&mut fresh, "app", "app-pass").starts_with("-ERR too many failed"),
        "a new address is held while `app` is guessed at"
    );
    let mut app = raw_from([127, 0, 0, 1], port);
    assert_eq!(auth(&mut app, "app", "app-pass"), "+OK\r\n");
    assert!(s.keyway.metric("keyway_auth_lockouts_total") >= 2.0);
}

/// Lifted with `allow`, server-wide commands apply to every backend, as
/// they would to the one Redis the client believes it talks to.
#[test]
fn allowed_server_wide_commands_reach_every_backend() {
    let s = start(
        "[policy]\nallow = [\"FLUSHALL\", \"FLUSHDB\", \"CONFIG\"]\n",
        &[],
    );
    let mut c = s.keyway.client();
    for key in ["session:a", "user:b", "rate:c"] {
        let _: () = c.set(key, 1).unwrap();
    }
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-lfu"])
        .query(&mut c)
        .unwrap();
    for server in [&s.session, &s.cache, &s._realtime] {
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg(&["GET", "maxmemory-policy"])
            .query(&mut server.direct())
            .unwrap();
        assert_eq!(got[1], "allkeys-lfu");
    }
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg(&["GET", "maxmemory-policy"])
        .query(&mut c)
        .unwrap();
    assert_eq!(got, ["maxmemory-policy", "allkeys-lfu"]);
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    for server in [&s.session, &s.cache, &s._realtime] {
        let n: i64 = redis::cmd("DBSIZE").query(&mut server.direct()).unwrap();
        assert_eq!(n, 0);
    }
    let _: () = c.set("user:again", 1).unwrap();
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 0);
}

/// A reload that narrows a user's prefixes applies to a transaction queued
/// before it: EXEC checks the queued commands again, as Redis checks its
/// ACLs again at EXEC, and nothing runs.
#[test]
fn a_reload_narrowing_a_user_applies_to_its_queued_transaction() {
    let s = start_with_users();
    let mut raw = s.keyway.raw();
    raw.send(b"AUTH app app-pass\r\nMULTI\r\nSET session:q 1\r\nINCR session:n\r\n");
    for reply in [&b"+OK\r\n"[..], b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"] {
        assert_eq!(raw.read_frame(), reply);
    }
    let config = std::fs::read_to_string(&s.keyway.config_path).unwrap();
    let narrowed = config.replace(
        "prefixes = [\"session:\", \"user:\"]",
        "prefixes = [\"user:\"]",
    );
    assert_ne!(config, narrowed);
    std::fs::write(&s.keyway.config_path, narrowed).unwrap();
    let (status, _) = s.keyway.http("POST", "/reload");
    assert_eq!(status, 200);
    raw.send(b"EXEC\r\n");
    let exec = String::from_utf8(raw.read_frame()).unwrap();
    assert!(
        exec.starts_with("-NOPERM") && exec.contains("session:q"),
        "{exec}"
    );
    let written: (bool, bool) = (
        s.session.direct().exists("session:q").unwrap(),
        s.session.direct().exists("session:n").unwrap(),
    );
    assert_eq!(written, (false, false), "nothing of the transaction ran");
    // A transaction queued after the reload runs as usual.
    raw.send(b"MULTI\r\nSET user:q 2\r\nEXEC\r\n");
    for reply in [&b"+OK\r\n"[..], b"+QUEUED\r\n", b"*1\r\n+OK\r\n"] {
        assert_eq!(raw.read_frame(), reply);
    }
}

/// A reload that takes a channel out of a user's prefixes closes that
/// user's subscribers to it before another message reaches them, as Redis
/// disconnects a subscriber whose channel permissions are revoked; a
/// subscriber whose channels stay permitted hears on.
#[test]
fn a_reload_narrowing_a_user_closes_its_revoked_subscribers() {
    let s = start_with_users();
    let subscriber = |channel: &str| {
        let mut raw = s.keyway.raw();
        raw.send(format!("AUTH app app-pass\r\nSUBSCRIBE {channel}\r\n").as_bytes());
        assert_eq!(raw.read_frame(), b"+OK\r\n");
        assert!(raw.read_frame().starts_with(b"*3\r\n$9\r\nsubscribe"));
        raw
    };
    let mut revoked = subscriber("session:ch");
    let mut kept = subscriber("user:ch");
    let config = std::fs::read_to_string(&s.keyway.config_path).unwrap();
    std::fs::write(
        &s.keyway.config_path,
        config.replace(
            "prefixes = [\"session:\", \"user:\"]",
            "prefixes = [\"user:\"]",
        ),
    )
    .unwrap();
    let (status, _) = s.keyway.http("POST", "/reload");
    assert_eq!(status, 200);
    let _: i64 = s.session.direct().publish("session:ch", "after").unwrap();
    let _: i64 = s.cache.direct().publish("user:ch", "after").unwrap();
    assert!(revoked.is_closed(), "the revoked subscriber was closed");
    assert_eq!(
        kept.read_frame(),
        b"*3\r\n$7\r\nmessage\r\n$7\r\nuser:ch\r\n$5\r\nafter\r\n"
    );
}

/// A pool limit counts everything that reaches the pool's servers: the
/// fan-outs (KEYS, SCAN, DBSIZE) a pool limit is there to stop above all,
/// commands answered by the default pool, and commands keyway does not know.
#[test]
fn a_pool_limit_counts_fan_outs_and_unknown_commands() {
    let s = start(
        "[[limits]]\nname = \"cache\"\nscope = \"pool\"\npool = \"cache\"\nrate = 0.01\nburst = 2\n",
        &[],
    );
    let mut c = s.keyway.client();
    assert!(try_cmd(&mut c, &["KEYS", "user:*"]).is_ok());
    assert!(try_cmd(&mut c, &["DBSIZE"]).is_ok());
    for args in [
        &["KEYS", "user:*"][..],
        &["SCAN", "0"],
        &["TIME"],
        &["NOSUCH.CMD", "x"],
        &["WATCH", "user:w"],
    ] {
        let err = try_cmd(&mut c, args).unwrap_err();
        assert!(
            err.contains("rate limit exceeded (limit 'cache')"),
            "{args:?}: {err}"
        );
    }
}

/// A `command` limit keeps one key per command: names a client made up
/// share one, so they cannot grow the limit's table (`/stats` shows its
/// tracked keys).
#[test]
fn made_up_command_names_share_one_limit_key() {
    let s = start(
        "[[limits]]\nname = \"per-command\"\nscope = \"command\"\nrate = 1000\nburst = 1000\n",
        &[],
    );
    let mut raw = s.keyway.raw();
    let mut pipeline = Vec::new();
    for i in 0..500 {
        pipeline.extend(format!("MADEUP{i} x\r\n").as_bytes());
    }
    pipeline.extend(b"GET user:x\r\n");
    raw.send(&pipeline);
    for _ in 0..500 {
        assert!(raw.read_frame().starts_with(b"-ERR unknown command"));
    }
    assert_eq!(raw.read_frame(), b"$-1\r\n");
    let (_, stats) = s.keyway.http("GET", "/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let tracked = &stats["limits"]["per-command"]["tracked_keys"];
    assert_eq!(tracked, 2, "{stats}");
}
