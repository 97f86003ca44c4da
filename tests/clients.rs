//! Real client libraries through keyway: redis-py (its CLIENT SETINFO
//! handshake, HELLO 3), ioredis (its INFO ready-check and SELECT) and
//! node-redis (HELLO 3 with SETNAME, transactions, WATCH, pub/sub, a
//! blocking pop), each with a pipeline, MGET across pools and routing
//! checked on the backends.
//! `tests/clients/install.sh` (run by scripts/test.sh) installs them.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn ports(r: &Reference) -> Vec<String> {
    [r.keyway.port, r.session.port, r.cache.port, r.realtime.port]
        .iter()
        .map(u16::to_string)
        .collect()
}

fn run(program: &str, script: &str, args: &[String]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = Command::new(program)
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); run tests/clients/install.sh"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn redis_py_works_through_keyway() {
    let r = Reference::start();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/.venv/bin/python");
    let out = run(python.to_str().unwrap(), "redis_py_check.py", &ports(&r));
    assert!(out.contains("checks passed"), "{out}");
    eprintln!("{}", out.trim());
}

#[test]
fn ioredis_works_through_keyway() {
    let r = Reference::start();
    let out = run("node", "ioredis_check.js", &ports(&r));
    assert!(out.contains("checks passed"), "{out}");
    eprintln!("{}", out.trim());
}

#[test]
fn node_redis_works_through_keyway() {
    let r = Reference::start();
    let out = run("node", "node_redis_check.js", &ports(&r));
    assert!(out.contains("checks passed"), "{out}");
    eprintln!("{}", out.trim());
}
