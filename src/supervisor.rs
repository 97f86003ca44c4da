//! Who owns keyway's background tasks. Everything that runs beside the
//! sessions is started, kept in step with reloads, and stopped here: the
//! health monitor, the admin server, the uptime clock, the policy
//! clean-up, and one follower per Sentinel or cluster pool, keyed by pool
//! id. Tasks a session or a request starts (its pub/sub links, a retry, a
//! connection's reader and writer) end with what started them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::Pool;
use crate::config::PoolId;
use crate::state::{Live, State};

/// The running background tasks; dropping it stops them all.
pub struct Supervisor {
    tasks: Vec<JoinHandle<()>>,
    followers: Arc<Followers>,
}

impl Supervisor {
    /// Starts every background task for the configuration in force, and
    /// the one that applies each reload's pool changes to the followers.
    pub fn start(state: &Arc<State>, admin: TcpListener) -> Supervisor {
        // Subscribed before the first sync: a reload in between is not missed.
        let reloads = state.reloads();
        let live = state.live_arc();
        let followers = Arc::new(Followers::default());
        followers.sync(state, &live);
        let every = Duration::from_millis(live.config.server.health_interval_ms.max(100));
        let tasks = vec![
            tokio::spawn(crate::monitor::run(state.clone(), every)),
            tokio::spawn(crate::admin::serve(state.clone(), admin)),
            tokio::spawn(state.clone().tick_clock()),
            tokio::spawn(purge_policy(state.clone(), every)),
            tokio::spawn(follow_reloads(state.clone(), reloads, followers.clone())),
        ];
        Supervisor { tasks, followers }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        self.followers.stop_all();
    }
}

/// Forgets rate-limit and lockout state that is back to its start, so
/// clients that came and went leave nothing behind.
async fn purge_policy(state: Arc<State>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.live().policy.purge_idle();
    }
}

/// Applies each reload to the followers: a replaced pool's follower is
/// replaced, a removed pool's stops, an added pool gets one.
async fn follow_reloads(
    state: Arc<State>,
    mut reloads: watch::Receiver<u64>,
    followers: Arc<Followers>,
) {
    while reloads.changed().await.is_ok() {
        followers.sync(&state, &state.live_arc());
    }
}

/// One follower per Sentinel-managed pool (its master,
/// `sentinel::follow`) and per cluster pool (its slot map,
/// `cluster::Cluster::follow`), keyed by pool id. A kept pool keeps its
/// follower.
#[derive(Default)]
struct Followers {
    running: Mutex<HashMap<PoolId, Follower>>,
}

struct Follower {
    /// The pool object it follows: a reload that replaces the pool
    /// (same id, new object) replaces the follower.
    pool: Arc<Pool>,
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Followers {
    /// Makes the running followers match `live`'s Sentinel and cluster pools.
    fn sync(&self, state: &Arc<State>, live: &Live) {
        let poll = Duration::from_millis(live.config.backend.sentinel_poll_ms.max(100));
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted = HashMap::new();
        for pool in &live.config.pools {
            let Some(target) = live.backends.get(pool.id).cloned() else {
                continue;
            };
            let start = || match (target.cluster(), &pool.sentinel) {
                (Some(cluster), _) => Some(tokio::spawn(cluster.clone().follow())),
                (None, Some(sentinel)) => Some(tokio::spawn(crate::sentinel::follow(
                    state.clone(),
                    target.clone(),
                    pool.endpoint.clone(),
                    sentinel.clone(),
                    poll,
                    live.backends.replica_pool(pool.id).zip(pool.replica_reads),
                ))),
                (None, None) => None,
            };
            let follower = match running.remove(&pool.id) {
                Some(f) if Arc::ptr_eq(&f.pool, &target) => f,
                _ => match start() {
                    Some(task) => Follower {
                        pool: target.clone(),
                        task,
                    },
                    None => continue,
                },
            };
            wanted.insert(pool.id, follower);
        }
        // What is left belongs to pools replaced or removed: dropped, stopped.
        *running = wanted;
    }

    fn stop_all(&self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
