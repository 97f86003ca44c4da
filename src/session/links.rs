//! A client's own links to the backends: per pool its multiplexed
//! connection (for the client's db and protocol), and on Redis Cluster
//! pools its view of the slot map and a connection per node it has used.
//! Kept together so the warm path (`ready`) can find the connection a
//! request goes on while the rest of the session is borrowed elsewhere.

use std::sync::Arc;

use crate::backend::{Backends, Conn, Pool};
use crate::cluster::{Cluster, View};
use crate::route::PoolId;

/// Cluster node connections a client keeps at most: nodes come and go
/// over a cluster's life.
const MAX_NODE_CONNS: usize = 64;

pub(super) struct Links {
    /// Per pool, the multiplexed connection for the client's current db
    /// and protocol; cleared when either changes.
    pub pools: Vec<Option<Conn>>,
    /// Per pool, its cluster (as this client last saw its map) when it is
    /// a Redis Cluster pool: requests to it go to the node serving their
    /// slot instead of `pools`.
    clusters: Vec<Option<View>>,
    /// The multiplexed connections this client used on cluster nodes, for
    /// its current db and protocol (a few: one per master).
    nodes: Vec<(Arc<Pool>, Conn)>,
}

/// Where a request to a cluster pool goes, as far as the link is concerned.
#[derive(Clone, Copy)]
pub(super) struct NodeChoice {
    pub slot: Option<u16>,
    /// Read-only outside a transaction: a replica may serve it.
    pub read_only: bool,
    /// Spreads clients over a master's replicas.
    pub hint: usize,
}

impl Links {
    pub fn new(backends: &Backends) -> Links {
        Links {
            pools: vec![None; backends.by_index().len()],
            clusters: backends
                .by_index()
                .iter()
                .map(|p| p.as_ref().and_then(|p| p.cluster()).map(Cluster::view))
                .collect(),
            nodes: Vec::new(),
        }
    }

    /// The db or protocol changed: connections for the old ones no longer fit.
    pub fn clear(&mut self) {
        self.pools.iter_mut().for_each(|c| *c = None);
        self.nodes.clear();
    }

    pub fn cluster(&self, pool: PoolId) -> Option<&Arc<Cluster>> {
        self.clusters.get(pool.index())?.as_ref().map(View::cluster)
    }

    /// The open connection a request to `pool` can be queued on without
    /// waiting (to its slot's node, on a cluster pool); `None` when there
    /// is none, or it is fenced for a write.
    pub fn ready(&mut self, pool: PoolId, db: u32, choice: NodeChoice) -> Option<&Conn> {
        let slot = pool.index();
        if let Some(Some(view)) = self.clusters.get_mut(slot) {
            return known_node(view, &self.nodes, db, choice);
        }
        self.pools
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|conn| !conn.fenced() || choice.read_only)
    }

    /// The warm path to a cluster pool's node, when `pool` is one: see
    /// `known_node`. `None` (not a cluster pool) is told apart from
    /// `Some(None)` (a cluster pool, no warm connection).
    pub fn ready_node(
        &mut self,
        pool: PoolId,
        db: u32,
        choice: NodeChoice,
    ) -> Option<(Arc<Cluster>, Option<&Conn>)> {
        let view = self.clusters.get_mut(pool.index())?.as_mut()?;
        let cluster = Arc::clone(view.cluster());
        Some((cluster, known_node(view, &self.nodes, db, choice)))
    }

    /// The client's connection to `node`, if it has an open one.
    pub fn node_index(&self, node: &Arc<Pool>) -> Option<usize> {
        self.nodes
            .iter()
            .position(|(n, c)| Arc::ptr_eq(n, node) && !c.is_closed())
    }

    /// Keeps `conn` as the client's connection to `node`; its index.
    pub fn keep_node(&mut self, node: Arc<Pool>, conn: Conn) -> usize {
        self.nodes.retain(|(n, _)| !Arc::ptr_eq(n, &node));
        if self.nodes.len() >= MAX_NODE_CONNS {
            self.nodes.clear();
        }
        self.nodes.push((node, conn));
        self.nodes.len() - 1
    }

    pub fn node_conn(&self, index: usize) -> Option<&Conn> {
        self.nodes.get(index).map(|(_, conn)| conn)
    }
}

/// The warm path to a cluster: the slot's server is in the map and this
/// client has a connection to it. Nothing waits, and the map is the one
/// the view keeps (one plain load to see it is still current).
fn known_node<'a>(
    view: &mut View,
    nodes: &'a [(Arc<Pool>, Conn)],
    db: u32,
    choice: NodeChoice,
) -> Option<&'a Conn> {
    if db != 0 {
        return None;
    }
    let replica = choice.read_only && view.cluster().replica_reads();
    let node = view.map().server_of(choice.slot, replica, choice.hint)?;
    nodes
        .iter()
        .find(|(n, _)| Arc::ptr_eq(n, node))
        .map(|(_, conn)| conn)
}
