//! A pool: the address of one Redis (swappable, for failover), its
//! multiplexed connections keyed by database and protocol, and its health:
//! after a failed connect, requests fail fast until the backoff expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Mutex as AsyncMutex, Semaphore};

use super::dedicated::LeasePermit;
use super::tenants::{Tenant, TenantLeases};
use super::{BackendError, Conn, Dedicated};
use crate::config::{BackendConfig, Endpoint};
use crate::resp::Protocol;

type Slot = Arc<Vec<AsyncMutex<Option<Conn>>>>;

pub struct Pool {
    name: String,
    endpoint: ArcSwap<Endpoint>,
    /// The endpoint as configured (a Sentinel pool's has no address).
    configured: Endpoint,
    settings: BackendConfig,
    slots: Mutex<HashMap<(u32, Protocol), Slot>>,
    health: Mutex<Health>,
    /// Bounds the connections leased to single clients at once.
    leases: Arc<Semaphore>,
    /// Bounds the leases a client may keep as long as it likes
    /// (`LeaseKind::Held`): all but `reserved(max_dedicated)` of them.
    held: Arc<Semaphore>,
    /// Each user's held leases, bounded by `tenant_share`.
    tenants: TenantLeases,
    idle: Mutex<Vec<Dedicated>>,
    probe: Mutex<Probe>,
    /// Bumped when the pool moves to another address (failover); its
    /// connections to the old one retire when they see it.
    generation: watch::Sender<u64>,
    /// Set for pools whose master Sentinel decides.
    sentinel: bool,
    rediscover: tokio::sync::Notify,
    /// A pool of replica reads: not part of readiness, may be unresolved.
    replica: bool,
    /// Where connections record the backend round trip, once metrics exist.
    round_trip: std::sync::OnceLock<prometheus::Histogram>,
    /// Holds writes while Sentinel moves the master.
    fence: Arc<super::Fence>,
    /// A Redis Cluster pool: its requests go to the node pools serving
    /// their slots; this pool's own address is the first master's.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What the last health probe of the pool's backend found.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// `None` until the first probe ran.
    pub ok: Option<bool>,
    pub reason: String,
    /// The backend's `role` (master, slave) from INFO replication.
    pub role: String,
}

/// Clean leased connections kept for the next lease.
const IDLE_DEDICATED: usize = 16;

/// How long a client keeps a lease: what the pool's reserve and each
/// user's share are for.
#[derive(Debug, Clone, Copy)]
pub enum LeaseKind<'a> {
    /// MULTI … EXEC without WATCH: given back after one round trip.
    Brief,
    /// Subscriptions, blocking commands, WATCH: kept as long as the client
    /// wants, so one tenant's many could take every lease; counted against
    /// the tenant's share when several users are configured.
    Held(Option<&'a Tenant>),
}

/// Of `max_dedicated` leases, those only brief ones may take: an eighth,
/// so subscribers and blocked clients (of any tenant) cannot starve
/// every other client's transactions.
fn reserved(max_dedicated: usize) -> usize {
    max_dedicated / 8
}

/// The held leases one user may have of a pool, when several users are
/// configured: `max_dedicated_per_user`, by default half of those held
/// leases may take (56 of 128).
fn tenant_share(settings: &BackendConfig) -> usize {
    let held = settings.max_dedicated - reserved(settings.max_dedicated);
    settings
        .max_dedicated_per_user
        .unwrap_or(held / 2)
        .clamp(1, held.max(1))
}

#[derive(Default)]
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl Pool {
    pub fn new(name: &str, endpoint: Endpoint, settings: BackendConfig) -> Pool {
        Pool {
            name: name.to_string(),
            configured: endpoint.clone(),
            endpoint: ArcSwap::from_pointee(endpoint),
            leases: Arc::new(Semaphore::new(settings.max_dedicated)),
            held: Arc::new(Semaphore::new(
                settings.max_dedicated - reserved(settings.max_dedicated),
            )),
            tenants: TenantLeases::default(),
            idle: Mutex::new(Vec::new()),
            probe: Mutex::new(Probe::default()),
            generation: watch::Sender::new(0),
            sentinel: false,
            rediscover: tokio::sync::Notify::new(),
            replica: false,
            round_trip: std::sync::OnceLock::new(),
            slots: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
            fence: Arc::default(),
            cluster: None,
            settings,
        }
    }

    pub fn with_cluster(mut self, cluster: crate::cluster::Cluster) -> Pool {
        self.cluster = Some(Arc::new(cluster));
        self
    }

    /// The cluster behind a Redis Cluster pool.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// The pool that serves `slot`: a cluster's node (keyless: any
    /// master), or this pool itself.
    pub fn serving(self: &Arc<Self>, slot: Option<u16>) -> Result<Arc<Pool>, BackendError> {
        match &self.cluster {
            None => Ok(self.clone()),
            Some(cluster) => cluster
                .master(slot)
                .ok_or_else(|| BackendError::ClusterDown {
                    pool: self.name.clone(),
                    slot,
                }),
        }
    }

    /// A cluster node's open multiplexed connection for (db, proto), if
    /// there is one, without waiting: how redirections are resent in order.
    pub fn open_conn(&self, client_db: u32, proto: Protocol) -> Option<Conn> {
        let db = self.backend_db(client_db);
        let slot = lock(&self.slots).get(&(db, proto)).cloned()?;
        slot.iter().find_map(|c| {
            c.try_lock()
                .ok()
                .and_then(|c| c.as_ref().filter(|c| !c.is_closed()).cloned())
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn configured(&self) -> &Endpoint {
        &self.configured
    }

    pub fn settings(&self) -> &BackendConfig {
        &self.settings
    }

    pub fn fence(&self) -> &Arc<super::Fence> {
        &self.fence
    }

    pub fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.load_full()
    }

    /// Moves the pool to a new master address (`None`: to none, as a
    /// replica pool left without a healthy replica). Multiplexed connections
    /// to the old one finish what is in flight and close; idle leased ones
    /// are dropped. Returns false when the address did not change.
    pub fn set_address(&self, addr: Option<crate::config::Addr>) -> bool {
        let current = self.endpoint.load_full();
        if current.addr == addr {
            return false;
        }
        let mut next = (*current).clone();
        next.addr = addr;
        self.endpoint.store(Arc::new(next));
        lock(&self.slots).clear();
        lock(&self.idle).clear();
        *lock(&self.health) = Health::default();
        self.generation.send_modify(|g| *g += 1);
        true
    }

    pub fn with_sentinel(mut self) -> Pool {
        self.sentinel = true;
        self
    }

    /// Connections opened from now on record their round trips here.
    pub fn record_round_trips(&self, histogram: prometheus::Histogram) {
        let _ = self.round_trip.set(histogram);
    }

    pub fn as_replica_pool(mut self) -> Pool {
        self.replica = true;
        self
    }

    pub fn is_replica_pool(&self) -> bool {
        self.replica
    }

    pub fn is_sentinel_managed(&self) -> bool {
        self.sentinel
    }

    /// Asks the pool's Sentinel follower to look for the master now (a
    /// `-READONLY` reply says the master was demoted).
    pub fn request_rediscovery(&self) {
        self.rediscover.notify_one();
    }

    pub async fn rediscovery_requested(&self) {
        self.rediscover.notified().await
    }

    /// Changes whenever the pool moves to another address.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A Sentinel pool whose master is not known yet has no address.
    fn unresolved(&self, endpoint: &Endpoint) -> Option<BackendError> {
        endpoint
            .addr
            .is_none()
            .then(|| self.unavailable("no master discovered yet".to_string()))
    }

    /// The database on the backend for a client's selected db: a pool URL's
    /// `/db` stands in for the client's db 0.
    pub fn backend_db(&self, client_db: u32) -> u32 {
        if client_db == 0 {
            self.endpoint.load().db
        } else {
            client_db
        }
    }

    pub fn probe(&self) -> Probe {
        lock(&self.probe).clone()
    }

    pub fn set_probe(&self, probe: Probe) {
        *lock(&self.probe) = probe;
    }

    /// Leased connections in use now.
    pub fn leased(&self) -> usize {
        self.settings.max_dedicated - self.leases.available_permits()
    }

    /// Multiplexed connections open now.
    pub fn multiplexed(&self) -> usize {
        let slots: Vec<Slot> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .flat_map(|s| s.iter())
            .filter(|c| {
                c.try_lock()
                    .is_ok_and(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
            })
            .count()
    }

    /// `None` while healthy, else the last connect error.
    pub fn last_error(&self) -> Option<String> {
        let h = lock(&self.health);
        (h.failures > 0).then(|| h.last_error.clone().unwrap_or_default())
    }

    /// A live multiplexed connection for (db, proto); `hint` spreads clients
    /// over the slot's connections.
    pub async fn conn(
        &self,
        client_db: u32,
        proto: Protocol,
        hint: usize,
    ) -> Result<Conn, BackendError> {
        if let Some(cluster) = &self.cluster {
            let node = cluster.master_or_wait(None).await?;
            return Box::pin(node.conn(client_db, proto, hint)).await;
        }
        let db = self.backend_db(client_db);
        let slot = {
            let mut slots = lock(&self.slots);
            slots
                .entry((db, proto))
                .or_insert_with(|| {
                    Arc::new(
                        (0..self.settings.connections)
                            .map(|_| AsyncMutex::new(None))
                            .collect(),
                    )
                })
                .clone()
        };
        let mut guard = slot[hint % slot.len()].lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        self.check_backoff()?;
        let endpoint = self.endpoint();
        if let Some(e) = self.unresolved(&endpoint) {
            return Err(e);
        }
        let retire = self.changes();
        // Boxed: connecting is rare, and inlined its future would make every
        // client's task as large as a TCP connect plus handshake.
        let open = Box::pin(Conn::open(
            &self.name,
            &endpoint,
            db,
            proto,
            retire,
            self.round_trip.get().cloned(),
            self.fence.clone(),
        ));
        let result = tokio::time::timeout(self.settings.connect_timeout(), open).await;
        match result {
            Ok(Ok(conn)) => {
                self.mark_up();
                *guard = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(reason)) => Err(self.mark_down(reason)),
            Err(_) => Err(self.mark_down(format!(
                "connect to {} timed out after {}ms",
                endpoint.address(),
                self.settings.connect_timeout_ms
            ))),
        }
    }

    /// A connection for this client alone, kept as long as it likes
    /// (`LeaseKind::Held`), from the idle list or new. Fails at once when
    /// the pool's limit for such leases, or the tenant's share, is reached.
    pub async fn lease(
        &self,
        tenant: Option<&Tenant>,
        client_db: u32,
        proto: Protocol,
    ) -> Result<Dedicated, BackendError> {
        self.lease_as(LeaseKind::Held(tenant), client_db, proto)
            .await
    }

    pub async fn lease_as(
        &self,
        kind: LeaseKind<'_>,
        client_db: u32,
        proto: Protocol,
    ) -> Result<Dedicated, BackendError> {
        if let Some(cluster) = &self.cluster {
            // Keyless work (a subscription, a transaction without keys)
            // runs on any master; keyed work leases from `serving`.
            let node = cluster.master_or_wait(None).await?;
            return Box::pin(node.lease_as(kind, client_db, proto)).await;
        }
        let db = self.backend_db(client_db);
        let max = self.settings.max_dedicated;
        let exhausted = |limit| BackendError::LeasesExhausted {
            pool: self.name.clone(),
            limit,
        };
        let tenant = match kind {
            LeaseKind::Held(Some(tenant)) if tenant.shared => Some(self.tenants.take(
                tenant,
                tenant_share(&self.settings),
                &self.name,
            )?),
            _ => None,
        };
        let held = match kind {
            LeaseKind::Held(_) => Some(
                self.held
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| exhausted(max - reserved(max)))?,
            ),
            LeaseKind::Brief => None,
        };
        let permit = self
            .leases
            .clone()
            .try_acquire_owned()
            .map_err(|_| exhausted(max))?;
        let permit = LeasePermit {
            _lease: permit,
            _held: held,
            _tenant: tenant,
        };
        {
            let mut idle = lock(&self.idle);
            if let Some(i) = idle.iter().position(|d| d.db == db && d.proto == proto) {
                let mut d = idle.swap_remove(i);
                d._permit = Some(permit);
                return Ok(d);
            }
        }
        self.check_backoff()?;
        let endpoint = self.endpoint();
        if let Some(e) = self.unresolved(&endpoint) {
            return Err(e);
        }
        let open = super::stream::open(&endpoint, db, proto);
        match tokio::time::timeout(self.settings.connect_timeout(), open).await {
            Ok(Ok(stream)) => {
                self.mark_up();
                Ok(Dedicated::new(
                    stream,
                    endpoint.addr.clone(),
                    db,
                    proto,
                    permit,
                ))
            }
            Ok(Err(reason)) => Err(self.mark_down(reason)),
            Err(_) => Err(self.mark_down(format!("connect to {} timed out", endpoint.address()))),
        }
    }

    /// Takes back a leased connection whose state ended cleanly (EXEC,
    /// DISCARD, a blocking command answered). Anything else is just dropped.
    pub fn release(&self, conn: Dedicated) {
        if let Some(cluster) = &self.cluster {
            if let Some(node) = conn.addr.as_ref().and_then(|a| cluster.node_at(a)) {
                node.release(conn);
            }
            return;
        }
        // A connection to an address the pool no longer uses (failover) is dropped.
        if !conn.is_clean() || conn.addr != self.endpoint.load().addr {
            return;
        }
        // An idle connection holds no permit: the limit counts leases in
        // use. (Kept, its permit made every idle connection count as
        // leased, so after a burst the pool had up to 16 fewer leases, and
        // with `max_dedicated` ≤ 16 none at all.)
        let mut conn = conn;
        conn._permit = None;
        let mut idle = lock(&self.idle);
        if idle.len() < IDLE_DEDICATED {
            idle.push(conn);
        }
    }

    fn check_backoff(&self) -> Result<(), BackendError> {
        let h = lock(&self.health);
        match h.retry_at {
            Some(at) if Instant::now() < at => {
                Err(self.unavailable(h.last_error.clone().unwrap_or_default()))
            }
            _ => Ok(()),
        }
    }

    fn mark_up(&self) {
        let mut h = lock(&self.health);
        if h.failures > 0 {
            tracing::info!(pool = %self.name, "backend reachable again");
        }
        *h = Health::default();
    }

    fn mark_down(&self, reason: String) -> BackendError {
        let mut h = lock(&self.health);
        if h.failures == 0 {
            tracing::warn!(pool = %self.name, %reason, "backend unavailable");
        }
        h.failures = h.failures.saturating_add(1);
        let exp = h.failures.min(16) - 1;
        let backoff = super::jitter(
            Duration::from_millis(self.settings.backoff_min_ms.saturating_mul(1 << exp))
                .min(Duration::from_millis(self.settings.backoff_max_ms)),
        );
        h.retry_at = Some(Instant::now() + backoff);
        h.last_error = Some(reason.clone());
        self.unavailable(reason)
    }

    fn unavailable(&self, reason: String) -> BackendError {
        BackendError::Unavailable {
            pool: self.name.clone(),
            reason,
        }
    }
}

/// Locks a short, never-awaited critical section; a panic elsewhere while
/// holding it leaves plain data that is still consistent, so poison is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
