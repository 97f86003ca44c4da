//! TLS for clients, with certificates generated in the test (rcgen): a TLS
//! listener beside the plain one that `redis-cli --tls` talks to, and a
//! listener that requires client certificates signed by a given CA.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::*;

struct Pki {
    dir: TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1/localhost and a client
    /// certificate, all written as PEM files.
    fn new() -> Pki {
        let dir = TempDir::new("pki");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf named like its issuer looks self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keyway test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let write = |name: &str, text: String| std::fs::write(dir.0.join(name), text).unwrap();
        write("ca.pem", ca_cert.pem());
        for (name, sans) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ),
            ("client", vec!["client".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("keyway test {name}"));
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }
}

fn tls_cli(port: u16, pki: &Pki, with_client_cert: bool, args: &[&str]) -> (bool, String) {
    // `timeout` bounds a handshake that would otherwise wait forever.
    let mut cmd = Command::new("timeout");
    cmd.args([
        "10",
        "redis-cli",
        "--tls",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--cacert",
    ])
    .arg(pki.path("ca.pem"));
    if with_client_cert {
        cmd.arg("--cert")
            .arg(pki.path("client.pem"))
            .arg("--key")
            .arg(pki.path("client.key"));
    }
    let out = cmd.args(args).output().expect("redis-cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && !text.contains("Error"),
        text.trim().to_string(),
    )
}

fn tls_section(pki: &Pki, port: u16, client_ca: bool, extra: &str) -> String {
    let p = |n: &str| pki.path(n).display().to_string();
    format!(
        "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}{extra}",
        p("server.pem"),
        p("server.key"),
        if client_ca {
            format!("client_ca_file = \"{}\"\n", p("ca.pem"))
        } else {
            String::new()
        }
    )
}

#[test]
fn redis_cli_tls_talks_to_keyway_beside_the_plain_listener() {
    let pki = Pki::new();
    let r = Reference::start();
    let tls_port = free_port();
    let config = format!(
        "{}\n{}",
        reference_config(&r.session.url(), &r.cache.url(), &r.realtime.url()),
        tls_section(&pki, tls_port, false, "")
    );
    let kw = Keyway::start(&config);
    wait_tls(tls_port);
    let (ok, out) = tls_cli(tls_port, &pki, false, &["SET", "session:tls", "secret"]);
    assert!(ok && out == "OK", "{out}");
    let v: String = redis::cmd("GET")
        .arg("session:tls")
        .query(&mut r.session.direct())
        .unwrap();
    assert_eq!(v, "secret");
    // The plain listener still serves.
    let v: String = redis::cmd("GET")
        .arg("session:tls")
        .query(&mut kw.client())
        .unwrap();
    assert_eq!(v, "secret");
}

#[test]
fn a_tls_client_over_max_clients_is_told_why_after_its_handshake() {
    let pki = Pki::new();
    let r = Reference::start();
    let tls_port = free_port();
    let config = format!(
        "{}\n{}",
        reference_config(&r.session.url(), &r.cache.url(), &r.realtime.url())
            .replace("[backend]\n", "[server]\nmax_clients = 1\n[backend]\n"),
        tls_section(&pki, tls_port, false, "")
    );
    let kw = Keyway::start(&config);
    wait_tls(tls_port);
    let mut held = kw.raw();
    held.send(b"PING\r\n");
    assert_eq!(held.read_frame(), b"+PONG\r\n");
    // The same refusal a plain client gets, over TLS: Redis's own words.
    let (_, out) = tls_cli(tls_port, &pki, false, &["PING"]);
    assert!(out.contains("max number of clients reached"), "{out}");
    assert!(kw.metric("keyway_clients_rejected_total") >= 1.0);
    println!("over max_clients, redis-cli --tls printed: {}", out.trim());
}

#[test]
fn client_certificates_are_required_when_configured() {
    let pki = Pki::new();
    let r = Reference::start();
    let tls_port = free_port();
    let config = format!(
        "{}\n{}",
        reference_config(&r.session.url(), &r.cache.url(), &r.realtime.url()),
        tls_section(&pki, tls_port, true, "disable_plain = true\n")
    );
    // With the plain listener off, the fixture cannot wait for it: start by hand.
    let dir = TempDir::new("tls-only");
    let path = dir.0.join("keyway.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyway"))
        .arg("--config")
        .arg(&path)
        .env("KEYWAY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("KEYWAY_ADMIN", format!("127.0.0.1:{}", free_port()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_tls(tls_port);
    let (ok, out) = tls_cli(tls_port, &pki, false, &["PING"]);
    assert!(!ok, "a client without a certificate was let in: {out}");
    let (ok, out) = tls_cli(tls_port, &pki, true, &["PING"]);
    assert!(ok && out == "PONG", "{out}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_certificate_files_are_refused_at_start() {
    let r = Reference::start();
    let dir = TempDir::new("badtls");
    let bogus = dir.0.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let config = format!(
        "{}\n[tls]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        reference_config(&r.session.url(), &r.cache.url(), &r.realtime.url()),
        free_port(),
        bogus.display(),
        bogus.display()
    );
    let path = dir.0.join("keyway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyway"))
        .arg("--config")
        .arg(&path)
        .env("KEYWAY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("KEYWAY_ADMIN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no certificate"), "{err}");
    let missing = Command::new(env!("CARGO_BIN_EXE_keyway"))
        .args(["--check", "--config"])
        .arg(Path::new(&path).with_file_name("none.toml"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

fn wait_tls(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("TLS listener did not open");
}

/// A redis-server speaking only TLS, stopped by PID when dropped.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki) -> TlsRedis {
        let dir = TempDir::new("tls-redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--tls-port",
                &port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args(["--tls-auth-clients", "no", "--dir"])
            .arg(&dir.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server with TLS");
        wait_tls(port);
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rediss_backends_are_verified_against_the_configured_ca() {
    let pki = Pki::new();
    let backend = TlsRedis::start(&pki);
    let cache = RedisServer::start();
    let realtime = RedisServer::start();
    let ca = pki.path("ca.pem").display().to_string();
    let config = reference_config(
        &format!("rediss://127.0.0.1:{}", backend.port),
        &cache.url(),
        &realtime.url(),
    )
    .replace(
        "[pools.cache]",
        &format!("tls_ca_file = \"{ca}\"\n[pools.cache]"),
    );
    let kw = Keyway::start(&config);
    let mut c = kw.client();
    let _: () = redis::cmd("SET")
        .arg("session:over-tls")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    let (ok, out) = tls_cli(backend.port, &pki, false, &["GET", "session:over-tls"]);
    assert!(ok && out == "yes", "the value is on the TLS backend: {out}");

    // Without the CA the server's certificate is not trusted: a clear error.
    let other = Pki::new();
    let config = reference_config(
        &format!("rediss://127.0.0.1:{}", backend.port),
        &cache.url(),
        &realtime.url(),
    )
    .replace(
        "[pools.cache]",
        &format!(
            "tls_ca_file = \"{}\"\n[pools.cache]",
            other.path("ca.pem").display()
        ),
    );
    let kw = Keyway::start(&config);
    let err = redis::cmd("GET")
        .arg("session:over-tls")
        .query::<String>(&mut kw.client())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("backend 'session' unavailable: TLS handshake"),
        "{err}"
    );
}
