//! A real Redis Cluster for tests: six `redis-server` processes in cluster
//! mode (three masters, one replica each) on loopback, created with
//! `redis-cli --cluster create`. This module owns those processes (each is a
//! `RedisServer`, stopped by PID when dropped) and the operations tests run
//! against them: reading the topology, moving slots with their keys,
//! planned failover and killing a node. Nothing here is a mock.

use super::{connect, RedisServer, TempDir};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every cluster has this many hash slots.
const SLOTS: u16 = 16384;

/// Node ports are drawn from `[PORT_LOW, PORT_LOW + PORT_SPAN)`. The bus
/// listens on port + 10000, so buses land in [22000, 32000): the two ranges
/// never overlap (no node's port is another node's bus) and both stay below
/// Linux's ephemeral range (32768+), where `free_port()` and port-0 binds
/// of parallel tests live.
const PORT_LOW: u16 = 12000;
const PORT_SPAN: u16 = 10000;
const BUS_OFFSET: u16 = 10000;

/// Masters refuse to vote for a replica of a master they voted to replace
/// less than twice the node timeout (2 s) ago.
const REVOTE_AFTER: Duration = Duration::from_millis(4500);

/// Cluster-mode arguments on top of what `RedisServer` already passes
/// (`--bind 127.0.0.1 --save "" --appendonly no --dir <own temp dir>`).
/// The config file name is relative to `--dir`, which comes first on the
/// command line, so every node writes its own `<temp dir>/nodes.conf`.
/// Diskless full syncs would otherwise wait 5 s for more replicas to join,
/// which is most of the start-up time and delays a demoted master's resync.
const NODE_ARGS: [&str; 8] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
    "--repl-diskless-sync-delay",
    "0",
];

/// The CRC16 (XMODEM) hash slot of `key`, with Redis' hash-tag rule: when
/// the key has a `{`, a later `}`, and something between them, only that
/// part is hashed. Known values (checked against the server's
/// `CLUSTER KEYSLOT` in `ClusterSetup::start`): `"foo"` is 12182,
/// `"123456789"` is 12739, `"{user1000}.following"` and
/// `"{user1000}.followers"` share slot 3443.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// What `move_slots` did, for tests to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMove {
    pub slots: usize,
    /// Keys handed to MIGRATE (as listed by `CLUSTER GETKEYSINSLOT`; a key
    /// that expired in between is counted but not moved).
    pub keys: usize,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The master's id for a replica; `None` for a master.
    master_id: Option<String>,
    /// Owned slot ranges, inclusive. Migrating/importing markers
    /// (`[s->-id]`, `[s-<-id]`) are not ownership and are left out.
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        // `127.0.0.1:7000@17000` or, with a hostname, `...@17000,host`.
        let addr = fields[1].split('@').next()?;
        let port = addr.rsplit_once(':')?.1.parse().ok()?;
        let slots: Vec<(u16, u16)> = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)),
                None => s.parse::<u16>().ok().map(|n| (n, n)),
            })
            .collect();
        Some(NodeLine {
            id: fields[0].to_string(),
            port,
            flags: fields[2].split(',').map(str::to_string).collect(),
            master_id: (fields[3] != "-").then(|| fields[3].to_string()),
            slots,
        })
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }

    /// Suspected (`fail?`) or agreed (`fail`) down, or not yet a member.
    fn is_unhealthy(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has_flag(f))
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    fn slot_list(&self) -> impl Iterator<Item = u16> + '_ {
        self.slots.iter().flat_map(|&(a, b)| a..=b)
    }
}

/// A connection that may fail (a node may be down or restarting), with
/// timeouts so that every poll of it stays bounded.
fn try_connect(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(conn)
}

fn cluster_nodes(conn: &mut redis::Connection) -> Option<Vec<NodeLine>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(conn).ok()?;
    Some(text.lines().filter_map(NodeLine::parse).collect())
}

/// `field:value` from a `CLUSTER INFO` or `INFO` text.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// `cluster_state:ok` and every slot served, as `port` sees it.
fn node_state_ok(port: u16) -> bool {
    let Some(mut c) = try_connect(port) else {
        return false;
    };
    let Ok(info) = redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c) else {
        return false;
    };
    field(&info, "cluster_state").as_deref() == Some("ok")
        && field(&info, "cluster_slots_ok").as_deref() == Some("16384")
}

fn info_field(port: u16, section: &str, name: &str) -> Option<String> {
    let mut c = try_connect(port)?;
    let info: String = redis::cmd("INFO").arg(section).query(&mut c).ok()?;
    field(&info, name)
}

/// True unless `port` (whose `CLUSTER NODES` is `nodes`) is a replica
/// whose replication link to its master is not up yet.
fn synced(port: u16, nodes: &[NodeLine]) -> bool {
    let replica = nodes.iter().any(|n| n.is_myself() && n.is_replica());
    !replica || info_field(port, "replication", "master_link_status").as_deref() == Some("up")
}

fn my_id(conn: &mut redis::Connection, port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(conn)
        .unwrap_or_else(|e| panic!("CLUSTER MYID on {port}: {e}"))
}

/// The node's own line of its `CLUSTER NODES`: its own word on its role
/// and slots, which is authoritative (others learn it by gossip).
fn own_line(conn: &mut redis::Connection, port: u16) -> NodeLine {
    cluster_nodes(conn)
        .and_then(|nodes| nodes.into_iter().find(NodeLine::is_myself))
        .unwrap_or_else(|| panic!("no CLUSTER NODES `myself` line from {port}"))
}

/// Runs an admin command that must succeed, panicking with what failed.
fn must(conn: &mut redis::Connection, port: u16, cmd: &redis::Cmd, what: &str) {
    if let Err(e) = cmd.query::<redis::Value>(conn) {
        panic!("{what} on {port}: {e}");
    }
}

fn setslot_node(slot: u16, id: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT").arg(slot).arg("NODE").arg(id);
    cmd
}

/// A port in the node range whose bus port is free too, and which clashes
/// with no port (or bus port) already `taken` by this cluster. Free now
/// does not mean free later (other test binaries run in parallel): callers
/// check that the server they start is really theirs.
fn pick_port(taken: &[u16]) -> u16 {
    for _ in 0..500 {
        // RandomState is seeded randomly per process and per call, which is
        // all the randomness needed to spread parallel clusters apart.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = PORT_LOW + (h.finish() % u64::from(PORT_SPAN)) as u16;
        if taken.contains(&port) {
            continue;
        }
        let main = TcpListener::bind(("127.0.0.1", port));
        let bus = TcpListener::bind(("127.0.0.1", port + BUS_OFFSET));
        if main.is_ok() && bus.is_ok() {
            return port;
        }
    }
    panic!(
        "no free port pair (p, p+{BUS_OFFSET}) in {PORT_LOW}..{}",
        PORT_LOW + PORT_SPAN
    );
}

/// True when the server answering on `port` is the process `pid`: a
/// parallel test may have won the port, and our own child then exits (it
/// could not bind the port or its bus) while the winner answers.
fn is_process(port: u16, pid: u32) -> bool {
    info_field(port, "server", "process_id").as_deref() == Some(pid.to_string().as_str())
}

fn start_node(taken: &[u16]) -> RedisServer {
    for _ in 0..10 {
        let port = pick_port(taken);
        if let Some(server) = RedisServer::try_start_on(port, &NODE_ARGS) {
            if is_process(port, server.pid()) {
                return server;
            }
            // Dropping it kills our (exited or failing) child by its PID.
        }
    }
    panic!("could not start a cluster-mode redis-server after 10 tries");
}

/// Six real cluster nodes; see the module comment. `Sync` (it holds
/// processes, ports and a mutex, never connections), so `move_slots` can
/// run on another thread while load runs.
pub struct ClusterSetup {
    nodes: Vec<RedisServer>,
    /// Ports stopped by `kill`: skipped when asking for the topology.
    killed: Vec<u16>,
    /// When each master port was last replaced by `failover`; see there.
    replaced: Mutex<HashMap<u16, Instant>>,
}

impl ClusterSetup {
    /// Starts six nodes, creates the cluster (three masters with one
    /// replica each) and waits until every node sees it whole.
    pub fn start() -> ClusterSetup {
        let mut nodes: Vec<RedisServer> = Vec::with_capacity(6);
        for _ in 0..6 {
            let taken: Vec<u16> = nodes.iter().map(|n| n.port).collect();
            nodes.push(start_node(&taken));
        }
        let setup = ClusterSetup {
            nodes,
            killed: Vec::new(),
            replaced: Mutex::new(HashMap::new()),
        };
        setup.create();
        setup.check_slot_of();

        let deadline = Instant::now() + Duration::from_secs(20);
        while !setup.formed() {
            assert!(
                Instant::now() < deadline,
                "cluster on {:?} did not form within 20s (cluster_state:ok, 16384 slots ok, \
                 6 healthy nodes and synced replicas on every node)",
                setup.ports()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        setup
    }

    /// `redis-cli --cluster create`, bounded: it normally takes about a
    /// second, and is killed (by its PID) after 30.
    fn create(&self) {
        let dir = TempDir::new("cluster-create");
        let log_path = dir.0.join("create.log");
        let log = std::fs::File::create(&log_path).expect("create.log");
        let err = log.try_clone().expect("create.log clone");
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for port in self.ports() {
            cmd.arg(format!("127.0.0.1:{port}"));
        }
        let mut child = cmd
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("redis-cli must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let out = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("redis-cli --cluster create did not finish within 30s:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("redis-cli --cluster create failed ({status}):\n{out}");
        }
    }

    /// `slot_of` must agree with the server's own `CLUSTER KEYSLOT`,
    /// including the hash-tag corner cases (empty `{}`, nested braces).
    fn check_slot_of(&self) {
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(
            slot_of("{user1000}.following"),
            slot_of("{user1000}.followers")
        );
        let mut c = self.direct(self.nodes[0].port);
        for key in [
            "foo",
            "{user1000}.following",
            "a{}b",
            "{}b",
            "a{{b}}",
            "x{y}{z}",
            "",
        ] {
            let server: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut c)
                .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key:?}: {e}"));
            assert_eq!(
                slot_of(key),
                server,
                "slot_of({key:?}) disagrees with CLUSTER KEYSLOT"
            );
        }
    }

    /// Fully formed: every node is ok with all slots served, sees all six
    /// nodes healthy as three masters with slots and three replicas (roles
    /// reach the other nodes by gossip, after the slots do), and each
    /// replica's link to its master is up (so a failover right after start
    /// has a synced replica to promote).
    fn formed(&self) -> bool {
        self.ports().into_iter().all(|port| {
            if !node_state_ok(port) {
                return false;
            }
            let Some(nodes) = try_connect(port).and_then(|mut c| cluster_nodes(&mut c)) else {
                return false;
            };
            let masters = nodes
                .iter()
                .filter(|n| n.is_master() && !n.slots.is_empty())
                .count();
            let replicas = nodes.iter().filter(|n| n.is_replica()).count();
            nodes.len() == 6
                && masters == 3
                && replicas == 3
                && nodes.iter().all(|n| !n.is_unhealthy())
                && synced(port, &nodes)
        })
    }

    /// All six node ports, in start order (killed ones included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| !self.killed.contains(p))
            .collect()
    }

    /// The first three nodes as seeds: `redis+cluster://127.0.0.1:p1,...`.
    pub fn seeds_url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `CLUSTER NODES` as the first live node that answers sees it.
    fn view(&self) -> Vec<NodeLine> {
        self.live_ports()
            .into_iter()
            .find_map(|p| try_connect(p).and_then(|mut c| cluster_nodes(&mut c)))
            .unwrap_or_else(|| panic!("no live cluster node answered CLUSTER NODES"))
    }

    /// Ports of the masters serving slots now, sorted. Failing or killed
    /// masters are left out, and so is a master without slots: right
    /// after a failover some views still list the demoted one as a master
    /// for a moment.
    pub fn masters(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .view()
            .iter()
            .filter(|n| n.is_master() && !n.slots.is_empty())
            .filter(|n| !n.is_unhealthy() && !self.killed.contains(&n.port))
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Ports of the healthy, live replicas now, sorted.
    pub fn replicas(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .view()
            .iter()
            .filter(|n| n.is_replica() && !n.is_unhealthy() && !self.killed.contains(&n.port))
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// A live replica of `master` (the lowest port when there are several).
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        let view = self.view();
        let id = &view.iter().find(|n| n.port == master)?.id;
        view.iter()
            .filter(|n| n.is_replica() && n.master_id.as_ref() == Some(id))
            .filter(|n| !n.is_unhealthy() && !self.killed.contains(&n.port))
            .map(|n| n.port)
            .min()
    }

    /// The port of the master owning `slot` now. A live master's word about
    /// itself wins (it is ahead of gossip); otherwise any live node's view.
    /// In the middle of `move_slots` both ends may claim a slot for a moment.
    pub fn owner(&self, slot: u16) -> u16 {
        assert!(slot < SLOTS, "slot {slot} out of range");
        for port in self.live_ports() {
            let Some(mut c) = try_connect(port) else {
                continue;
            };
            let Some(nodes) = cluster_nodes(&mut c) else {
                continue;
            };
            if nodes
                .iter()
                .any(|n| n.is_myself() && n.is_master() && n.owns(slot))
            {
                return port;
            }
        }
        self.view()
            .iter()
            .find(|n| n.is_master() && !n.is_unhealthy() && n.owns(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no live master owns slot {slot}"))
    }

    /// The hash slot of `key` (same as the free function `slot_of`).
    pub fn slot_of(key: &str) -> u16 {
        slot_of(key)
    }

    /// A plain connection to one node, bypassing keyway.
    pub fn direct(&self, port: u16) -> redis::Connection {
        assert!(
            self.ports().contains(&port),
            "{port} is not a node of this cluster ({:?})",
            self.ports()
        );
        assert!(!self.killed.contains(&port), "node {port} was killed");
        connect(port)
    }

    /// Moves the first `count` slots master `from` owns to master `to`,
    /// keys included, by hand (IMPORTING, MIGRATING, MIGRATE in batches,
    /// then NODE on `to`, `from` and every other master) so the sequence
    /// is deterministic. Clients may write meanwhile: during a slot's move
    /// they get ASK for keys already gone and TRYAGAIN for multi-key
    /// commands spanning both sides. Returns once every live node agrees
    /// on the new owner.
    pub fn move_slots(&self, from: u16, to: u16, count: usize) -> SlotMove {
        assert_ne!(from, to, "move_slots: source and target are the same node");
        let mut src = self.direct(from);
        let mut dst = self.direct(to);
        let from_id = my_id(&mut src, from);
        let to_id = my_id(&mut dst, to);
        let src_line = own_line(&mut src, from);
        assert!(src_line.is_master(), "move_slots: {from} is not a master");
        assert!(
            own_line(&mut dst, to).is_master(),
            "move_slots: {to} is not a master"
        );
        let slots: Vec<u16> = src_line.slot_list().take(count).collect();
        assert!(
            slots.len() == count,
            "move_slots: {from} owns {} slots, cannot move {count}",
            slots.len()
        );
        let mut others: Vec<(u16, redis::Connection)> = self
            .masters()
            .into_iter()
            .filter(|&p| p != from && p != to)
            .map(|p| (p, self.direct(p)))
            .collect();

        let mut keys_moved = 0;
        for &slot in &slots {
            let mut importing = redis::cmd("CLUSTER");
            importing
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&from_id);
            must(
                &mut dst,
                to,
                &importing,
                &format!("SETSLOT {slot} IMPORTING"),
            );
            let mut migrating = redis::cmd("CLUSTER");
            migrating
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&to_id);
            must(
                &mut src,
                from,
                &migrating,
                &format!("SETSLOT {slot} MIGRATING"),
            );

            // While MIGRATING, `from` creates no new key in the slot (it
            // answers ASK instead), so the key count only falls: the loop
            // ends. The deadline guards against a wedged node.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100)
                    .query(&mut src)
                    .unwrap_or_else(|e| panic!("GETKEYSINSLOT {slot} on {from}: {e}"));
                if keys.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "slot {slot} still has keys on {from} after 60s of MIGRATE"
                );
                let mut migrate = redis::cmd("MIGRATE");
                migrate
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS");
                for key in &keys {
                    migrate.arg(key.as_slice());
                }
                // OK, or NOKEY when every listed key expired meanwhile.
                must(
                    &mut src,
                    from,
                    &migrate,
                    &format!("MIGRATE slot {slot} to {to}"),
                );
                keys_moved += keys.len();
            }

            let assign = setslot_node(slot, &to_id);
            let what = format!("SETSLOT {slot} NODE {to}");
            must(&mut dst, to, &assign, &what);
            must(&mut src, from, &assign, &what);
            for (port, conn) in &mut others {
                must(conn, *port, &assign, &what);
            }
        }

        self.wait_agree(&slots, to);
        SlotMove {
            slots: slots.len(),
            keys: keys_moved,
        }
    }

    /// Waits (bounded) until every live node's view has `slots` on `owner`,
    /// so a topology read from any node after a move is current.
    fn wait_agree(&self, slots: &[u16], owner: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let agreed = self.live_ports().into_iter().all(|port| {
                let Some(nodes) = try_connect(port).and_then(|mut c| cluster_nodes(&mut c)) else {
                    return false;
                };
                nodes
                    .iter()
                    .find(|n| n.port == owner)
                    .is_some_and(|n| slots.iter().all(|&s| n.owns(s)))
            });
            if agreed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not agree within 15s that {owner} owns the moved slots"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Planned failover: `CLUSTER FAILOVER` on `replica`, then waits
    /// (bounded, 15 s) until it is a master, every live node is ok, all
    /// live nodes agree on the topology and every replica (the demoted
    /// master included) is synced, so a failover back can follow.
    pub fn failover(&self, replica: u16) {
        let mut c = self.direct(replica);
        let me = own_line(&mut c, replica);
        assert!(me.is_replica(), "failover: {replica} is not a replica");
        let master = me
            .master_id
            .as_ref()
            .and_then(|id| self.view().into_iter().find(|n| &n.id == id))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("failover: the master of {replica} is unknown"));
        // Failing straight back over (A->B, B->A, A->B) would be refused
        // by the voters (see REVOTE_AFTER): wait out the window instead of
        // letting the manual failover time out.
        let last = self.lock_replaced().get(&master).copied();
        if let Some(wait) = last.and_then(|at| REVOTE_AFTER.checked_sub(at.elapsed())) {
            std::thread::sleep(wait);
        }
        let mut failover = redis::cmd("CLUSTER");
        failover.arg("FAILOVER");
        must(&mut c, replica, &failover, "CLUSTER FAILOVER");

        let start = Instant::now();
        let mut reissued = false;
        loop {
            let promoted = info_field(replica, "replication", "role").as_deref() == Some("master");
            if promoted && self.topology_agreed(replica) {
                self.lock_replaced().insert(master, Instant::now());
                return;
            }
            // A manual failover gives up after 5 s (e.g. when the master
            // was busy); ask once more before declaring failure.
            if !promoted && !reissued && start.elapsed() > Duration::from_secs(6) {
                reissued = true;
                if let Some(mut c) = try_connect(replica) {
                    let _ = failover.query::<redis::Value>(&mut c);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "failover of {replica}: not master with the cluster ok and agreed within 15s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lock_replaced(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Instant>> {
        // A panic elsewhere cannot leave the map half-written: use it anyway.
        self.replaced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every live node is ok, synced if a replica, and sees the same
    /// topology (who serves slots, which master each replica follows),
    /// with `master` serving slots. Roles reach other nodes by gossip, so
    /// without this a view read right after a failover (`replica_of`, a
    /// voter in the next failover) can still be the old one.
    fn topology_agreed(&self, master: u16) -> bool {
        let mut seen: Option<Vec<(u16, bool, Option<u16>)>> = None;
        for port in self.live_ports() {
            if !node_state_ok(port) {
                return false;
            }
            let Some(nodes) = try_connect(port).and_then(|mut c| cluster_nodes(&mut c)) else {
                return false;
            };
            if !synced(port, &nodes) {
                return false;
            }
            let port_of = |id: &String| nodes.iter().find(|n| &n.id == id).map(|n| n.port);
            let mut topology: Vec<(u16, bool, Option<u16>)> = nodes
                .iter()
                .filter(|n| !n.is_unhealthy() && !self.killed.contains(&n.port))
                .map(|n| {
                    let serving = n.is_master() && !n.slots.is_empty();
                    (n.port, serving, n.master_id.as_ref().and_then(port_of))
                })
                .collect();
            topology.sort_unstable();
            if !topology.contains(&(master, true, None))
                || seen.as_ref().is_some_and(|s| *s != topology)
            {
                return false;
            }
            seen = Some(topology);
        }
        true
    }

    /// SIGKILLs one node (our own child, by its PID), for an unplanned
    /// failover. Its replica takes over after the node timeout (2 s) and an
    /// election: use `wait_ok` to wait for that.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("kill: {port} is not a node of this cluster"));
        node.stop();
        if !self.killed.contains(&port) {
            self.killed.push(port);
        }
    }

    /// Waits up to `timeout` until every live node reports
    /// `cluster_state:ok` with 16384 slots ok and, in its view, no slot is
    /// owned by a killed or failing node. The last part matters right
    /// after `kill`: the cluster still says ok for the node timeout, before
    /// anyone notices the dead master.
    pub fn wait_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        self.live_ports().into_iter().all(|port| {
            if !node_state_ok(port) {
                return false;
            }
            let Some(nodes) = try_connect(port).and_then(|mut c| cluster_nodes(&mut c)) else {
                return false;
            };
            nodes
                .iter()
                .filter(|n| !n.slots.is_empty())
                .all(|n| !n.is_unhealthy() && !self.killed.contains(&n.port))
        })
    }
}
