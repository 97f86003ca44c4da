//! The shared fixture: real `redis-server` processes on free loopback ports
//! and the real `keyway` binary in front of them, each stopped by PID when
//! dropped. Nothing here is a mock.
#![allow(dead_code)]

mod cluster;
// Only tests/cluster.rs uses it; the other test binaries include this module too.
#[allow(unused_imports)]
pub use cluster::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("keyway-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
/// Polls `check` every 20 ms until it holds (how long it took) or
/// `timeout` passes (`None`).
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    if let Err(e) = listening(port, child) {
        panic!("{what} {e}");
    }
}

/// Waits until something listens on `port`; `Err` when `child` exited.
fn listening(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited early: {status}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("did not listen on {port} within 10s"))
}

/// The port of `field` (`listen`, `admin`) in keyway's start line, text
/// (`listen=127.0.0.1:6390`) or JSON (`"listen":"127.0.0.1:6390"`).
fn bound_port(line: &str, field: &str) -> Option<u16> {
    let text = format!(" {field}=");
    let json = format!("\"{field}\":\"");
    let at = line
        .find(&text)
        .map(|i| i + text.len())
        .or_else(|| line.find(&json).map(|i| i + json.len()))?;
    let addr: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    addr.rsplit_once(':')?.1.parse().ok()
}

pub struct RedisServer {
    pub port: u16,
    child: Child,
    args: Vec<String>,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        // A port found free may be taken by a parallel test first: retry.
        for _ in 0..4 {
            if let Some(server) = Self::try_start_on(free_port(), extra) {
                return server;
            }
        }
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        match Self::try_start_on(port, extra) {
            Some(server) => server,
            None => panic!("redis-server did not start on {port}"),
        }
    }

    /// `None` (nothing left running) when the server did not come up.
    fn try_start_on(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let dir = TempDir::new("redis");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.0.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        if listening(port, &mut child).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(RedisServer {
            port,
            child,
            args,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT` ...) to this server's process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct connection, bypassing keyway, to check where data landed.
    pub fn direct(&self) -> redis::Connection {
        connect(self.port)
    }

    /// Waits (at most 5 s) until exactly `n` clients are blocked on this
    /// server (INFO's `blocked_clients`); panics otherwise.
    pub fn wait_blocked(&self, n: usize) {
        let want = n.to_string();
        let reached = wait_for(Duration::from_secs(5), || {
            info_field(self.port, "clients", "blocked_clients").as_deref() == Some(want.as_str())
        });
        assert!(
            reached.is_some(),
            "{n} blocked clients never seen on :{}",
            self.port
        );
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again on the same port (data is gone).
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server restart");
        wait_for_port(self.port, &mut child, "redis-server");
        self.child = child;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kill -SIGNAL pid` for a process a test started; panics if it fails.
fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

pub fn connect(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    conn
}

pub struct Keyway {
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl Keyway {
    /// Starts the keyway binary with `config` (TOML). `server.listen` is
    /// filled in by the fixture through `KEYWAY_LISTEN`.
    pub fn start(config: &str) -> Keyway {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Keyway {
        let dir = TempDir::new("keyway");
        let config_path = dir.0.join("keyway.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.0.join("keyway.log");
        // Port 0: keyway binds ports of the system's choosing and logs them,
        // so parallel tests never race for a port found free.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyway"));
        cmd.arg("--config")
            .arg(&config_path)
            .env("KEYWAY_LISTEN", "127.0.0.1:0")
            .env("KEYWAY_ADMIN", "127.0.0.1:0")
            .env("KEYWAY_LOG", "keyway=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log_path).expect("log file"),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn keyway");
        let deadline = Instant::now() + Duration::from_secs(15);
        let (port, admin_port) = loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("keyway accepting clients")) {
                let port_of = |field: &str| -> u16 {
                    bound_port(line, field).unwrap_or_else(|| panic!("no {field} in {line}"))
                };
                break (port_of("listen"), port_of("admin"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("keyway exited early: {status}:\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("keyway did not start within 15s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Keyway {
            port,
            admin_port,
            config_path,
            child,
            _dir: dir,
        }
    }

    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }

    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("keyway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET (or POST) on the admin endpoint: status code and body.
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        http(self.admin_port, method, path)
    }

    /// One sample of `/metrics`, e.g. `keyway_denials_total{reason="blocklist",detail="FLUSHALL"}`;
    /// 0 when the series does not exist yet.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http("GET", "/metrics");
        metric_value(&body, series)
    }

    /// Waits up to `timeout` for `check` to hold, polling.
    pub fn wait_until(&self, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        check()
    }

    /// Sends a signal to the keyway process (by its PID).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A figure from `/proc/PID/status` in KiB, e.g. `VmHWM` (peak RSS).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 request to a loopback port.
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("admin connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one series in a Prometheus text exposition.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Keyway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference deployment in miniature: session, cache and realtime
/// Redis servers and keyway routing the seeds' prefixes to them.
pub struct Reference {
    pub session: RedisServer,
    pub cache: RedisServer,
    pub realtime: RedisServer,
    pub keyway: Keyway,
}

/// Three Redis servers for the reference pools (session, cache, realtime).
pub fn reference_servers() -> [RedisServer; 3] {
    [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ]
}

pub fn reference_config(session: &str, cache: &str, realtime: &str) -> String {
    format!(
        r#"
[backend]
connect_timeout_ms = 500
backoff_min_ms = 20
backoff_max_ms = 200

[pools.session]
url = "{session}"
[pools.cache]
url = "{cache}"
[pools.realtime]
url = "{realtime}"

[routes]
default = "cache"
prefixes = [
  {{ prefix = "session:", pool = "session" }},
  {{ prefix = "user:", pool = "cache" }},
  {{ prefix = "chat:", pool = "cache" }},
  {{ prefix = "rate:", pool = "realtime" }},
  {{ prefix = "analytics:", pool = "realtime" }},
]
commands = [{{ command = "TS.*", pool = "realtime" }}]
databases = [{{ db = 3, pool = "session" }}]
"#
    )
}

impl Reference {
    pub fn start() -> Reference {
        Self::start_with("")
    }

    /// The reference deployment with `extra` configuration appended.
    pub fn start_with(extra: &str) -> Reference {
        let session = RedisServer::start();
        let cache = RedisServer::start();
        let realtime = RedisServer::start();
        let keyway = Keyway::start(&format!(
            "{}\n{extra}",
            reference_config(&session.url(), &cache.url(), &realtime.url())
        ));
        Reference {
            session,
            cache,
            realtime,
            keyway,
        }
    }

    pub fn client(&self) -> redis::Connection {
        self.keyway.client()
    }
}

/// A plain TCP client for byte-level checks (inline commands, RESP3 frames).
pub struct RawClient {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        Self::over(TcpStream::connect(("127.0.0.1", port)).expect("connect"))
    }

    fn over(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        RawClient {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            stream,
        }
    }

    /// Connects from a chosen loopback source address (127.x.y.z).
    pub fn connect_from(source: [u8; 4], port: u16) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let from = std::net::SocketAddr::from((source, 0));
        socket.bind(&from.into()).expect("bind source address");
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        socket.connect(&to.into()).expect("connect");
        Self::over(socket.into())
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one complete RESP frame and returns its bytes.
    pub fn read_frame(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.read_into(&mut out);
        out
    }

    fn read_into(&mut self, out: &mut Vec<u8>) {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read line");
        assert!(!line.is_empty(), "connection closed");
        out.extend_from_slice(&line);
        let kind = line[0];
        let n: i64 = std::str::from_utf8(&line[1..line.len() - 2])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match kind {
            b'$' | b'=' | b'!' if n >= 0 => {
                let mut data = vec![0; n as usize + 2];
                self.reader.read_exact(&mut data).expect("read bulk");
                out.extend_from_slice(&data);
            }
            b'*' | b'~' | b'>' => (0..n.max(0)).for_each(|_| self.read_into(out)),
            b'%' => (0..n * 2).for_each(|_| self.read_into(out)),
            b'|' => (0..n * 2 + 1).for_each(|_| self.read_into(out)),
            _ => {}
        }
    }

    /// Half-closes the connection (`shutdown(SHUT_WR)`, as `nc` does at the
    /// end of its input); replies can still be read.
    pub fn shutdown_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }

    /// Sends what it can of `bytes`; the server may close the connection
    /// part way (a refused request), which is not an error here.
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The socket, to read what is left as it is.
    pub fn stream_mut(&mut self) -> &mut impl Read {
        &mut self.reader
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// A command-line run of redis-cli against a port, returning stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real `redis-sentinel` watching one master, on a free loopback port.
pub struct Sentinel {
    pub port: u16,
    child: Child,
    conf: PathBuf,
    _dir: TempDir,
}

impl Sentinel {
    pub fn start(master: &str, master_port: u16) -> Sentinel {
        let dir = TempDir::new("sentinel");
        let port = free_port();
        let conf = dir.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {master} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {master} 1000\nsentinel failover-timeout {master} 3000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir.0.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Self::spawn(&conf, port);
        Sentinel {
            port,
            child,
            conf,
            _dir: dir,
        }
    }

    fn spawn(conf: &std::path::Path, port: u16) -> Child {
        let mut child = Command::new("redis-sentinel")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (scripts/test.sh installs it)");
        wait_for_port(port, &mut child, "redis-sentinel");
        child
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the configuration it rewrote while running.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(&self.conf, self.port);
    }

    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }

    /// Sends a signal (STOP, CONT) to this sentinel's process, by PID.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) process still dies from SIGKILL.
        self.stop();
    }
}

/// A master, one replica and three sentinels (quorum two), as the seeds run them.
pub struct SentinelSetup {
    pub name: String,
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

/// `None` also when the server cannot be reached now: callers poll, and a
/// node Sentinel is reconfiguring may reset a connection.
pub fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(5))
        .ok()?;
    let info: String = redis::cmd("INFO").arg(section).query(&mut c).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

impl SentinelSetup {
    pub fn start(name: &str) -> SentinelSetup {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while info_field(replica.port, "replication", "master_link_status").as_deref() != Some("up")
        {
            assert!(Instant::now() < deadline, "replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(name, master.port)).collect();
        let setup = SentinelSetup {
            name: name.to_string(),
            nodes: vec![master, replica],
            sentinels,
        };
        // Failover needs every sentinel to know the replica and its peers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = setup.sentinels.iter().all(|s| {
                let mut c = s.client();
                let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(name)
                    .query(&mut c)
                    .unwrap_or_default();
                let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("SENTINELS")
                    .arg(name)
                    .query(&mut c)
                    .unwrap_or_default();
                !replicas.is_empty() && peers.len() == 2
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sentinels did not discover the replica and each other"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        setup
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.name)
    }

    /// The master port a live sentinel reports now.
    pub fn master_port(&self) -> u16 {
        for s in &self.sentinels {
            let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{}/", s.port))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            else {
                continue;
            };
            if let Ok((_, port)) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.name)
                .query::<(String, u16)>(&mut c)
            {
                return port;
            }
        }
        panic!("no sentinel answered");
    }

    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }

    pub fn role(port: u16) -> Option<String> {
        info_field(port, "replication", "role")
    }
}
