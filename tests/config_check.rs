//! `keyway --check` and start-up validation: a good file prints the route
//! table, a bad one is refused with the field named and a non-zero exit.

mod support;

use std::process::Command;

use support::*;

fn keyway(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyway"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reference_config_checks_and_prints_the_route_table() {
    let (code, out, err) = keyway(&["--check"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("session      redis://127.0.0.1:6379/0"),
        "{out}"
    );
    assert!(out.contains("prefix  \"session:\""), "{out}");
    assert!(out.contains("command FT.*"), "{out}");
    assert!(out.contains("db      3"), "{out}");
    assert!(
        out.contains("default                          -> cache"),
        "{out}"
    );
}

#[test]
fn env_overrides_show_in_check() {
    let (code, out, _) = keyway(
        &["--check"],
        &[
            ("REDIS_SESSION_URL", "redis://app:secret@127.0.0.1:7001/2"),
            ("KEYWAY_LISTEN", "127.0.0.1:7390"),
        ],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("redis://app:***@127.0.0.1:7001/2  (from REDIS_SESSION_URL)"),
        "{out}"
    );
    assert!(!out.contains("secret"), "passwords are never printed");
    assert!(out.contains("listen 127.0.0.1:7390"));
}

#[test]
fn mistakes_are_refused_naming_the_field() {
    let dir = TempDir::new("config");
    let base =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/keyway.toml")).unwrap();
    let cases = [
        (
            base.replace(
                "{ prefix = \"rate:\", pool = \"realtime\" }",
                "{ prefix = \"rate:\", pool = \"realtim\" }",
            ),
            "routes.prefixes[12].pool: unknown pool 'realtim'",
        ),
        (
            base.replace(
                "{ prefix = \"kb:\", pool = \"cache\" }",
                "{ prefix = \"user:\", pool = \"cache\" }",
            ),
            "duplicate prefix 'user:'",
        ),
        (
            base.replace("redis://127.0.0.1:6380", "redis://127.0.0.1:99999"),
            "pools.cache.url: bad port '99999'",
        ),
        (
            base.replace("databases = 16", "databses = 16"),
            "unknown field `databses`",
        ),
        (
            base.replace("default = \"cache\"", "default = \"nope\""),
            "routes.default: unknown pool 'nope'",
        ),
        (
            format!("{base}\n[[limits]]\nname = \"api\"\nscope = \"user\"\nrate = 100\nburst = 20\nshared = true\nshared_pool = \"nope\"\n"),
            "limits[0].shared_pool: unknown pool 'nope'",
        ),
        (
            format!("{base}\n[[limits]]\nname = \"api\"\nscope = \"user\"\nrate = 100\nburst = 20\ncommands = [\"CONFIG SET\", \"incrr\"]\n"),
            "limits[0].commands[1]: unknown command 'incrr'",
        ),
        (
            format!("{base}\n[[limits]]\nname = \"api\"\nscope = \"user\"\nrate = 100\nburst = 20\ncommands = [\"CLIENT SETNAME\", \"OBJECT\"]\n"),
            "limits[0].commands[1]: 'OBJECT' has subcommands",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        for args in [vec!["--check", "--config", &path], vec!["--config", &path]] {
            let (code, _, err) = keyway(&args, &[]);
            assert_ne!(code, 0, "{args:?} accepted a bad config");
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }
    let (code, _, err) = keyway(&["--check"], &[("REDIS_CACHE_URL", "redis://cache:port")]);
    assert_ne!(code, 0);
    assert!(err.contains("REDIS_CACHE_URL: bad port 'port'"), "{err}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = keyway(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("keyway "));
    let (code, out, _) = keyway(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("--config") && out.contains("--check"));
}

#[test]
fn route_explains_where_a_key_goes() {
    for (args, pool, rule) in [
        (
            vec!["route", "session:abc"],
            "session",
            "prefix \"session:\"",
        ),
        (
            vec!["route", "idx:movies", "FT.SEARCH"],
            "cache",
            "command FT.*",
        ),
        (
            vec!["route", "anything", "--db", "3"],
            "session",
            "database 3",
        ),
        (vec!["route", "anything"], "cache", "default"),
    ] {
        let (code, out, err) = keyway(&args, &[]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("pool     {pool}\n")),
            "{args:?}: {out}"
        );
        assert!(
            out.contains(&format!("rule     {rule}\n")),
            "{args:?}: {out}"
        );
        assert!(
            out.contains("backend  redis://127.0.0.1:"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn the_config_comes_from_keyway_config_and_help_lists_the_environment() {
    // From another directory, with the file named only in the environment.
    let dir = TempDir::new("cli");
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keyway.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_keyway"))
        .arg("--check")
        .current_dir(&dir.0)
        .env("KEYWAY_CONFIG", &conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("configuration {} is valid", conf.display())),
        "{stdout}"
    );
    let (code, help, _) = keyway(&["--help"], &[]);
    assert_eq!(code, 0);
    for var in [
        "KEYWAY_CONFIG",
        "KEYWAY_LISTEN",
        "KEYWAY_ADMIN",
        "KEYWAY_TLS_LISTEN",
        "KEYWAY_LOG",
        "KEYWAY_REQUIREPASS",
        "REDIS_<POOL>_URL",
    ] {
        assert!(help.contains(var), "--help lists {var}:\n{help}");
    }
}

#[test]
fn startup_logs_say_what_runs_without_colours_and_warn_of_a_pool_down() {
    let session = RedisServer::start();
    let cache = RedisServer::start();
    let down = free_port();
    let config = reference_config(
        &session.url(),
        &cache.url(),
        &format!("redis://127.0.0.1:{down}"),
    )
    .replace(
        "[backend]\n",
        "[server]\nhealth_interval_ms = 200\n[backend]\n",
    );
    let kw = Keyway::start_with_env(&config, &[("KEYWAY_LOG", "info")]);
    assert!(
        kw.wait_until(std::time::Duration::from_secs(5), || kw
            .log()
            .contains("pool unreachable")),
        "{}",
        kw.log()
    );
    let log = kw.log();
    let start = log
        .lines()
        .find(|l| l.contains("keyway starting"))
        .expect("a startup line");
    for part in [
        "version=",
        "config=",
        "pools=cache,realtime,session",
        "prefix_rules=",
    ] {
        assert!(start.contains(part), "{part} in {start}");
    }
    let warn = log
        .lines()
        .find(|l| l.contains("pool unreachable"))
        .unwrap();
    assert!(
        warn.contains("WARN") && warn.contains("pool=realtime"),
        "{warn}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI colour codes in a log file"
    );
}

#[test]
fn check_lists_the_limits_and_where_shared_ones_are_kept() {
    let dir = TempDir::new("config");
    let base =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/keyway.toml")).unwrap();
    // The commented example at the end of the shipped file, uncommented.
    let at = base.find("# [[limits]]").expect("the example");
    let example: Vec<&str> = base[at..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    let text = format!("{}{}\n", &base[..at], example.join("\n"));
    assert!(text.contains("\n[[limits]]\nname = \"api\""), "{text}");
    let path = dir.0.join("limits.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = keyway(&["--check", "--config", &path.display().to_string()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("api              per user 100/s burst 20  shared in realtime (batch 1, pool down: fail open)"),
        "{out}"
    );
}
