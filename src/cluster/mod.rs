//! Redis Cluster pools: the slot map of one cluster and the node pools
//! behind it. A cluster pool looks like any other pool to the rest of
//! keyway; behind it, each request goes to the master serving its key's
//! slot, on that node's multiplexed connections. Redirections (`MOVED`,
//! `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) are followed here, so clients never
//! see them. The map is read from `CLUSTER SHARDS` (or `CLUSTER SLOTS`) at
//! start, periodically, on `MOVED` and on connection failures, with at most
//! one refresh in flight, by the pool's follower task (`follow`).

mod redirect;
mod scan;
mod slot;
mod topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{watch, Notify};

pub use redirect::Redirect;
pub use scan::{glob_match, ScanArgs};
pub use slot::{key_slot, SLOTS};
pub use topology::{Shard, Topology};

use crate::backend::{BackendError, Pool, ReplyRx, ReplyTo};
use crate::config::{Addr, BackendConfig, Endpoint};
use crate::resp::Protocol;

/// No master serves the slot.
const UNCOVERED: u16 = u16::MAX;
/// Redirections followed for one request before its last reply is given.
pub const MAX_REDIRECTS: u8 = 5;
/// Refreshes asked for closer together than this are served by one.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// Which master serves each slot, and the node pools.
pub struct SlotMap {
    /// Per slot, the index of its master in `masters` (or UNCOVERED).
    /// Atomic so a `MOVED` to a known master updates it in place.
    owner: Box<[AtomicU16]>,
    pub masters: Vec<Arc<Pool>>,
    /// Per master (same index), its replicas.
    pub replicas: Vec<Vec<Arc<Pool>>>,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap {
            owner: (0..SLOTS).map(|_| AtomicU16::new(UNCOVERED)).collect(),
            masters: Vec::new(),
            replicas: Vec::new(),
        }
    }

    pub fn covered(&self) -> usize {
        self.owner
            .iter()
            .filter(|o| o.load(Ordering::Relaxed) != UNCOVERED)
            .count()
    }

    fn master(&self, slot: u16) -> Option<&Arc<Pool>> {
        let index = self.owner.get(usize::from(slot))?.load(Ordering::Relaxed);
        self.masters.get(usize::from(index))
    }

    /// The master serving `slot`; keyless (`None`): slot 0's, or any.
    pub fn master_of(&self, slot: Option<u16>) -> Option<&Arc<Pool>> {
        match slot {
            Some(slot) => self.master(slot),
            None => self.master(0).or_else(|| self.masters.first()),
        }
    }

    /// Where a request goes: with `replica` a reachable replica of the
    /// slot's master (spread by `hint`), else the master.
    pub fn server_of(&self, slot: Option<u16>, replica: bool, hint: usize) -> Option<&Arc<Pool>> {
        if replica {
            let index = match slot {
                Some(slot) => self.owner.get(usize::from(slot))?.load(Ordering::Relaxed),
                None => 0,
            };
            if let Some(replicas) = self.replicas.get(usize::from(index)) {
                let up = replicas.iter().filter(|r| r.last_error().is_none()).count();
                if up > 0 {
                    return replicas
                        .iter()
                        .filter(|r| r.last_error().is_none())
                        .nth(hint % up);
                }
            }
        }
        self.master_of(slot)
    }
}

/// One client's view of a cluster pool: the cluster, and the slot map it
/// last read, kept until the cluster swaps in another (a `MOVED` to a
/// known master updates the map in place, so the view sees that too).
pub struct View {
    cluster: Arc<Cluster>,
    map: arc_swap::Cache<Arc<ArcSwap<SlotMap>>, Arc<SlotMap>>,
}

impl View {
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The current map: the kept one unless the cluster has swapped it.
    pub fn map(&mut self) -> &SlotMap {
        self.map.load()
    }
}

/// What the cluster's metrics are bound to, once metrics exist.
pub struct ClusterMetrics {
    pub moved: prometheus::IntCounter,
    pub ask: prometheus::IntCounter,
    pub refreshed: prometheus::IntCounter,
    pub refresh_failed: prometheus::IntCounter,
    pub covered: prometheus::IntGauge,
    pub masters: prometheus::IntGauge,
}

pub struct Cluster {
    name: String,
    /// Credentials and TLS for every node; its address is a seed's.
    template: Endpoint,
    seeds: Vec<Addr>,
    settings: BackendConfig,
    /// Read-only commands go to a replica of the slot's master.
    replica_reads: bool,
    /// Shared with each client's `View`, which checks it with one plain
    /// load instead of taking a guard (two atomic read-modify-writes) per
    /// request.
    map: Arc<ArcSwap<SlotMap>>,
    /// Every node pool by address, reused across refreshes (connections
    /// and all); bounded by the cluster's size, pruned on each refresh.
    /// Keyed by address and by whether the pool reads from a replica.
    nodes: Mutex<HashMap<(Addr, bool), Arc<Pool>>>,
    wanted: Notify,
    /// Bumped after each refresh, so a request waiting for a map wakes.
    refreshed: watch::Sender<u64>,
    metrics: OnceLock<ClusterMetrics>,
    round_trip: OnceLock<prometheus::Histogram>,
}

impl Cluster {
    pub fn new(
        name: &str,
        template: Endpoint,
        seeds: Vec<Addr>,
        settings: BackendConfig,
    ) -> Cluster {
        Cluster {
            name: name.to_string(),
            template,
            seeds,
            settings,
            replica_reads: false,
            map: Arc::new(ArcSwap::from_pointee(SlotMap::empty())),
            nodes: Mutex::new(HashMap::new()),
            wanted: Notify::new(),
            refreshed: watch::Sender::new(0),
            metrics: OnceLock::new(),
            round_trip: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends read-only commands outside transactions to replicas.
    pub fn with_replica_reads(mut self) -> Cluster {
        self.replica_reads = true;
        self
    }

    pub fn replica_reads(&self) -> bool {
        self.replica_reads
    }

    pub fn seeds(&self) -> &[Addr] {
        &self.seeds
    }

    pub fn attach_metrics(&self, metrics: ClusterMetrics, round_trip: prometheus::Histogram) {
        let _ = self.metrics.set(metrics);
        let _ = self.round_trip.set(round_trip);
        for node in lock(&self.nodes).values() {
            if let Some(h) = self.round_trip.get() {
                node.record_round_trips(h.clone());
            }
        }
    }

    pub fn map(&self) -> arc_swap::Guard<Arc<SlotMap>> {
        self.map.load()
    }

    /// A client's view of this cluster, for its warm path.
    pub fn view(self: &Arc<Self>) -> View {
        View {
            cluster: Arc::clone(self),
            map: arc_swap::Cache::new(Arc::clone(&self.map)),
        }
    }

    /// The master serving `slot` now; a keyless request (`None`) goes to
    /// the master of slot 0's shard, or any master.
    pub fn master(&self, slot: Option<u16>) -> Option<Arc<Pool>> {
        self.map.load().master_of(slot).cloned()
    }

    /// The master for `slot`, waiting (up to the connect timeout) for a
    /// map when there is none yet for it (start-up, or after a refresh
    /// found the slot uncovered).
    pub async fn master_or_wait(&self, slot: Option<u16>) -> Result<Arc<Pool>, BackendError> {
        if let Some(node) = self.master(slot) {
            return Ok(node);
        }
        let mut refreshed = self.refreshed.subscribe();
        refreshed.mark_unchanged();
        self.request_refresh();
        let _ = tokio::time::timeout(self.settings.connect_timeout(), refreshed.changed()).await;
        self.master(slot).ok_or_else(|| self.down(slot))
    }

    fn down(&self, slot: Option<u16>) -> BackendError {
        BackendError::ClusterDown {
            pool: self.name.clone(),
            slot,
        }
    }

    /// Every master once, in slot order.
    pub fn masters(&self) -> Vec<Arc<Pool>> {
        self.map.load().masters.clone()
    }

    /// The node pool for an address, made on first sight (a redirection
    /// may name a node the map does not know yet).
    pub fn node(&self, addr: &Addr) -> Arc<Pool> {
        let masters = self.map.load().masters.len();
        self.node_as(addr, false, masters)
    }

    /// A node pool whose connections read from a replica (`READONLY`);
    /// kept apart from the same node's pool as a master, since a failover
    /// may turn one into the other.
    fn node_as(&self, addr: &Addr, readonly: bool, masters: usize) -> Arc<Pool> {
        let key = (addr.clone(), readonly);
        let mut nodes = lock(&self.nodes);
        if let Some(node) = nodes.get(&key) {
            return node.clone();
        }
        let mut endpoint = self.template.clone();
        endpoint.addr = Some(addr.clone());
        endpoint.db = 0;
        endpoint.readonly = readonly;
        let node = Arc::new(Pool::new(&self.name, endpoint, self.node_settings(masters)));
        if let Some(h) = self.round_trip.get() {
            node.record_round_trips(h.clone());
        }
        nodes.insert(key, node.clone());
        node
    }

    /// A node's settings: the pool's `connections` are shared out over its
    /// masters, at least one each. Spread over three masters, two
    /// connections per node would be six writes where a standalone pool
    /// makes two, for the same requests; and a huge reply still holds up
    /// only the clients of one node's connection, a third of the pool.
    fn node_settings(&self, masters: usize) -> BackendConfig {
        let mut settings = self.settings.clone();
        settings.connections = self.settings.connections.div_ceil(masters.max(1)).max(1);
        settings
    }

    /// A node's pool (as a master) by address, for the leases that name one.
    pub fn node_at(&self, addr: &Addr) -> Option<Arc<Pool>> {
        lock(&self.nodes).get(&(addr.clone(), false)).cloned()
    }

    /// A `MOVED`: the slot is served by `addr` from now on (in place when
    /// the map knows that master), and the whole map is read again soon.
    pub fn moved(&self, slot: u16, addr: &Addr) {
        if let Some(m) = self.metrics.get() {
            m.moved.inc();
        }
        let map = self.map.load();
        if let Some(index) = map
            .masters
            .iter()
            .position(|m| m.endpoint().addr.as_ref() == Some(addr))
        {
            if let Some(owner) = map.owner.get(usize::from(slot)) {
                owner.store(index as u16, Ordering::Relaxed);
            }
        }
        self.request_refresh();
    }

    pub fn asked(&self) {
        if let Some(m) = self.metrics.get() {
            m.ask.inc();
        }
    }

    /// Asks the follower for a refresh; many asks meanwhile are one refresh.
    pub fn request_refresh(&self) {
        self.wanted.notify_one();
    }

    /// Reads the topology from the first node that answers (known masters
    /// first, then the seeds) and swaps the map in.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut candidates: Vec<Addr> = self
            .masters()
            .iter()
            .filter_map(|m| m.endpoint().addr.clone())
            .collect();
        candidates.extend(self.seeds.iter().cloned());
        let timeout = self
            .settings
            .connect_timeout()
            .max(Duration::from_millis(500));
        let mut last = String::from("no node to ask");
        for addr in candidates {
            let mut endpoint = self.template.clone();
            endpoint.addr = Some(addr.clone());
            endpoint.db = 0;
            match read_topology(&endpoint, timeout).await {
                Ok(topology) if !topology.shards.is_empty() => {
                    let covered = self.apply(&topology);
                    if let Some(m) = self.metrics.get() {
                        m.refreshed.inc();
                    }
                    return Ok(covered);
                }
                Ok(_) => last = format!("{addr}: no slots assigned"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        if let Some(m) = self.metrics.get() {
            m.refresh_failed.inc();
        }
        self.refreshed.send_modify(|g| *g += 1);
        Err(last)
    }

    /// Swaps in the map of `topology`, keeping the node pools it still
    /// names; returns the slots covered.
    fn apply(&self, topology: &Topology) -> usize {
        // Masters in slot order: the order SCAN visits them in, which a
        // failover (same slots, new master) does not change.
        let mut topology = topology.clone();
        topology
            .shards
            .sort_by_key(|s| s.ranges.iter().map(|r| r.0).min().unwrap_or(u16::MAX));
        let topology = &topology;
        let count = topology.shards.len();
        let masters: Vec<Arc<Pool>> = topology
            .shards
            .iter()
            .map(|s| self.node_as(&s.master, false, count))
            .collect();
        let replicas = topology
            .shards
            .iter()
            .map(|s| {
                s.replicas
                    .iter()
                    .map(|r| self.node_as(r, self.replica_reads, count))
                    .collect()
            })
            .collect();
        let map = SlotMap {
            owner: (0..SLOTS).map(|_| AtomicU16::new(UNCOVERED)).collect(),
            masters,
            replicas,
        };
        for (index, shard) in topology.shards.iter().enumerate() {
            for &(start, end) in &shard.ranges {
                for slot in start..=end {
                    map.owner[usize::from(slot)].store(index as u16, Ordering::Relaxed);
                }
            }
        }
        let covered = map.covered();
        let named: std::collections::HashSet<&Addr> = topology
            .shards
            .iter()
            .flat_map(|s| std::iter::once(&s.master).chain(&s.replicas))
            .collect();
        lock(&self.nodes).retain(|(addr, _), _| named.contains(addr));
        if let Some(m) = self.metrics.get() {
            m.covered.set(covered as i64);
            m.masters.set(map.masters.len() as i64);
        }
        self.map.store(Arc::new(map));
        self.refreshed.send_modify(|g| *g += 1);
        covered
    }

    /// Follows the cluster: a refresh at once, then whenever one is asked
    /// for and every `cluster_refresh_ms`, at most one at a time. Runs
    /// until its owner (`sentinel::Followers`) drops it.
    pub async fn follow(self: Arc<Self>) {
        let every = Duration::from_millis(self.settings.cluster_refresh_ms.max(100));
        let mut failing = false;
        loop {
            match self.refresh().await {
                Ok(covered) => {
                    if failing || covered < SLOTS {
                        tracing::info!(pool = %self.name, covered, masters = self.map().masters.len(), "cluster topology read");
                    }
                    failing = false;
                }
                Err(reason) => {
                    if !failing {
                        tracing::warn!(pool = %self.name, %reason, "cluster topology could not be read");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(MIN_REFRESH_GAP).await;
            let _ = tokio::time::timeout(every, self.wanted.notified()).await;
        }
    }

    /// Sends `request` again as a redirection says. Sent at once on an
    /// open connection when there is one, so a pipeline's redirected
    /// requests reach the new node in their order; else (first contact
    /// with the node, `TRYAGAIN`, `CLUSTERDOWN`) from a task of its own.
    pub fn follow_redirect(
        self: &Arc<Self>,
        redirect: Redirect,
        request: Bytes,
        slot: Option<u16>,
        db: u32,
        proto: Protocol,
    ) -> ReplyRx {
        let (node, asking) = match &redirect {
            Redirect::Moved { slot, addr } => {
                self.moved(*slot, addr);
                (Some(self.node(addr)), false)
            }
            Redirect::Ask { addr, .. } => {
                self.asked();
                (Some(self.node(addr)), true)
            }
            Redirect::TryAgain | Redirect::Down => (None, false),
        };
        if let Some(node) = &node {
            if let Some(conn) = node.open_conn(db, proto) {
                let (reply, rx) = ReplyTo::once();
                if conn.try_send(request.clone(), reply, asking).is_ok() {
                    return rx;
                }
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cluster = self.clone();
        tokio::spawn(async move {
            let reply = match node {
                Some(node) => cluster.send_to(&node, request, db, proto, asking).await,
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    cluster.request(slot, request, db, proto).await
                }
            };
            let _ = tx.send(reply);
        });
        rx
    }

    /// One request to `node`, with the redirections that follow it.
    async fn send_to(
        self: &Arc<Self>,
        node: &Arc<Pool>,
        request: Bytes,
        db: u32,
        proto: Protocol,
        asking: bool,
    ) -> Bytes {
        match once(node, request.clone(), db, proto, asking).await {
            Ok(reply) => match Redirect::parse(&reply) {
                Some(_) => {
                    self.request(redirect_slot(&reply), request, db, proto)
                        .await
                }
                None => reply,
            },
            Err(e) => e.to_resp(),
        }
    }

    /// A request for `slot` (`None`: any master), answered after following
    /// up to MAX_REDIRECTS redirections; `TRYAGAIN` and `CLUSTERDOWN` are
    /// retried with a growing pause until the request timeout, then given
    /// to the client as they are.
    pub async fn request(
        self: &Arc<Self>,
        slot: Option<u16>,
        request: Bytes,
        db: u32,
        proto: Protocol,
    ) -> Bytes {
        let budget = match self.settings.request_timeout_ms {
            0 => Duration::from_secs(10),
            ms => Duration::from_millis(ms),
        };
        let deadline = tokio::time::Instant::now() + budget;
        let mut target: Option<(Arc<Pool>, bool)> = None;
        let mut pause = Duration::from_millis(10);
        let mut redirects = 0u8;
        loop {
            let (node, asking) = match target.take() {
                Some(t) => t,
                None => match self.master_or_wait(slot).await {
                    Ok(node) => (node, false),
                    Err(e) => {
                        if tokio::time::Instant::now() + pause < deadline {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(200));
                            continue;
                        }
                        return e.to_resp();
                    }
                },
            };
            let reply = match once(&node, request.clone(), db, proto, asking).await {
                Ok(reply) => reply,
                Err(e) => {
                    self.request_refresh();
                    return e.to_resp();
                }
            };
            let Some(redirect) = Redirect::parse(&reply) else {
                return reply;
            };
            redirects += 1;
            match redirect {
                Redirect::Moved { slot, addr } if redirects <= MAX_REDIRECTS => {
                    self.moved(slot, &addr);
                    target = Some((self.node(&addr), false));
                }
                Redirect::Ask { addr, .. } if redirects <= MAX_REDIRECTS => {
                    self.asked();
                    target = Some((self.node(&addr), true));
                }
                Redirect::TryAgain | Redirect::Down
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    if redirect == Redirect::Down {
                        self.request_refresh();
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                _ => return reply,
            }
        }
    }

    /// `request` in a task of its own; the reply arrives on the receiver.
    pub fn spawn_request(
        self: &Arc<Self>,
        slot: Option<u16>,
        request: Bytes,
        db: u32,
        proto: Protocol,
    ) -> ReplyRx {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cluster = self.clone();
        tokio::spawn(async move {
            let _ = tx.send(cluster.request(slot, request, db, proto).await);
        });
        rx
    }
}

/// The slot a MOVED or ASK reply names.
fn redirect_slot(reply: &[u8]) -> Option<u16> {
    match Redirect::parse(reply)? {
        Redirect::Moved { slot, .. } | Redirect::Ask { slot, .. } => Some(slot),
        _ => None,
    }
}

/// One request on `node`'s multiplexed connection, its reply awaited.
async fn once(
    node: &Pool,
    request: Bytes,
    db: u32,
    proto: Protocol,
    asking: bool,
) -> Result<Bytes, BackendError> {
    let conn = node.conn(db, proto, 0).await?;
    let (reply, rx) = ReplyTo::once();
    let lost = || BackendError::ConnectionLost {
        pool: node.name().to_string(),
    };
    if asking {
        conn.try_send(request, reply, true).map_err(|_| lost())?;
    } else {
        conn.send(request, reply).await.map_err(|_| lost())?;
    }
    rx.await.map_err(|_| lost())
}

/// The topology as one node sees it: `CLUSTER SHARDS`, or `CLUSTER SLOTS`
/// from a server that does not know it.
async fn read_topology(endpoint: &Endpoint, timeout: Duration) -> Result<Topology, String> {
    let reply = crate::backend::request_once(endpoint, &["CLUSTER", "SHARDS"], timeout).await?;
    if let Some(t) = Topology::from_shards(&reply) {
        return Ok(t);
    }
    let reply = crate::backend::request_once(endpoint, &["CLUSTER", "SLOTS"], timeout).await?;
    Topology::from_slots(&reply).ok_or_else(|| {
        let text = String::from_utf8_lossy(&reply);
        format!("not a cluster node ({})", text.trim_end())
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(port: u16, ranges: Vec<(u16, u16)>) -> Shard {
        Shard {
            master: Addr::new("127.0.0.1", port),
            replicas: Vec::new(),
            ranges,
        }
    }

    fn master_port(map: &SlotMap, slot: u16) -> Option<u16> {
        let pool = map.master_of(Some(slot))?;
        pool.endpoint().addr.as_ref().map(|a| a.port)
    }

    #[tokio::test]
    async fn a_clients_view_follows_swapped_maps_and_moved_slots() {
        let template = Endpoint {
            addr: None,
            username: None,
            password: None,
            db: 0,
            tls: None,
            readonly: false,
        };
        let cluster = Arc::new(Cluster::new(
            "c",
            template,
            Vec::new(),
            BackendConfig::default(),
        ));
        let mut view = cluster.view();
        assert_eq!(master_port(view.map(), 0), None);

        cluster.apply(&Topology {
            shards: vec![shard(7001, vec![(0, 16383)])],
        });
        assert_eq!(master_port(view.map(), 9000), Some(7001));

        // A refresh swaps in a new map: the view reads it on its next use.
        cluster.apply(&Topology {
            shards: vec![
                shard(7001, vec![(0, 8191)]),
                shard(7002, vec![(8192, 16383)]),
            ],
        });
        assert_eq!(master_port(view.map(), 9000), Some(7002));
        assert_eq!(master_port(view.map(), 100), Some(7001));

        // A MOVED to a known master changes the kept map in place.
        cluster.moved(100, &Addr::new("127.0.0.1", 7002));
        assert_eq!(master_port(view.map(), 100), Some(7002));
    }
}
