//! MULTI / EXEC / DISCARD / WATCH / UNWATCH. Commands are checked and queued
//! in keyway (all keys of a transaction must map to one pool) and sent with
//! MULTI and EXEC in one write on a leased connection, so a client that goes
//! away mid-transaction leaves nothing half-done. WATCH leases at once.

use bytes::Bytes;

use super::reply::Reply;
use super::{Mode, Session};
use crate::backend::{BackendError, Dedicated};
use crate::resp::{self, Request};
use crate::route::{CrossPool, PoolId, Target, CROSSSLOT};

pub(crate) struct Transaction {
    /// The pool (and slot, on a cluster pool) every keyed command so far
    /// maps to.
    pool: Option<Target>,
    /// The connection holding the WATCHes, with its pool.
    lease: Option<(Target, Dedicated)>,
    multi: bool,
    queued: Vec<Request>,
    /// A queue-time error: EXEC answers EXECABORT.
    aborted: bool,
}

impl Transaction {
    fn new() -> Transaction {
        Transaction {
            pool: None,
            lease: None,
            multi: false,
            queued: Vec::new(),
            aborted: false,
        }
    }

    pub fn in_multi(&self) -> bool {
        self.multi
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }
}

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

impl Session {
    pub(super) fn in_multi(&self) -> bool {
        matches!(&self.mode, Mode::Transaction(t) if t.multi)
    }

    fn transaction(&mut self) -> Option<&mut Transaction> {
        match &mut self.mode {
            Mode::Transaction(t) => Some(t),
            _ => None,
        }
    }

    pub(super) fn multi(&mut self) -> Reply {
        match &mut self.mode {
            Mode::Transaction(t) if t.multi => {
                Reply::now(resp::error("ERR MULTI calls can not be nested"))
            }
            Mode::Transaction(t) => {
                t.multi = true;
                Reply::now(resp::simple("OK"))
            }
            Mode::Normal => {
                let mut t = Transaction::new();
                t.multi = true;
                self.mode = Mode::Transaction(t);
                self.register();
                Reply::now(resp::simple("OK"))
            }
            Mode::Subscribed(_) => Reply::now(resp::error(
                "ERR keyway does not support MULTI on a connection with subscriptions",
            )),
        }
    }

    /// A command arriving between MULTI and EXEC: refused (which aborts the
    /// transaction, as Redis does for queue-time errors) or queued.
    /// `pool` is `Some` when the command has keys.
    pub(super) fn queue_in_multi(
        &mut self,
        request: Request,
        pool: Result<Option<Target>, Bytes>,
    ) -> Reply {
        let Some(t) = self.transaction() else {
            return Reply::now(resp::error("ERR EXEC without MULTI"));
        };
        let pool = match pool {
            Ok(p) => p,
            Err(error) => {
                t.aborted = true;
                return Reply::now(error);
            }
        };
        if let Some(pool) = pool {
            match t.pool {
                Some(existing) if existing != pool => {
                    t.aborted = true;
                    return Reply::now(self.cross(existing, pool));
                }
                _ => t.pool = Some(pool),
            }
        }
        t.queued.push(request);
        self.register();
        Reply::now(resp::simple("QUEUED"))
    }

    /// A leased connection to `target` (on a cluster pool, to its slot's
    /// master), taken without holding the configuration snapshot across
    /// the wait.
    async fn lease(&self, target: Target) -> Result<Dedicated, BackendError> {
        let backend = self.state.live().backends.checked(target.pool)?;
        if let Some(cluster) = backend.cluster() {
            if self.client.db != 0 {
                return Err(BackendError::ClusterDatabase {
                    pool: cluster.name().to_string(),
                });
            }
            let node = cluster.master_or_wait(target.slot).await?;
            return node.lease(0, self.client.proto).await;
        }
        backend.lease(self.client.db, self.client.proto).await
    }

    /// The refusal for keys of one transaction in two places: two pools
    /// (CROSSPOOL), or two slots of a cluster pool (CROSSSLOT).
    fn cross(&self, first: Target, second: Target) -> Bytes {
        if first.pool == second.pool {
            return resp::error(CROSSSLOT);
        }
        resp::error(&self.cross_pool(first.pool, second.pool).to_string())
    }

    pub(super) fn cross_pool(&self, first: PoolId, second: PoolId) -> CrossPool {
        CrossPool {
            first: self.state.live().router.pool_name(first).to_string(),
            second: self.state.live().router.pool_name(second).to_string(),
        }
    }

    pub(super) async fn exec(&mut self) -> Reply {
        if !self.in_multi() {
            return Reply::now(resp::error("ERR EXEC without MULTI"));
        }
        let Mode::Transaction(t) = std::mem::replace(&mut self.mode, Mode::Normal) else {
            return Reply::now(resp::error("ERR EXEC without MULTI"));
        };
        self.register();
        if t.aborted {
            // Dropping the lease closes it, which also forgets its WATCHes.
            return Reply::now(resp::error(EXECABORT));
        }
        self.flush().await;
        let watched = t.lease.is_some();
        let (target, mut conn) = match t.lease {
            Some(lease) => lease,
            None => {
                let target = t
                    .pool
                    .unwrap_or_else(|| Target::pool(self.state.live().router.default_pool()));
                match self.lease(target).await {
                    Ok(conn) => (target, conn),
                    Err(e) => return self.failed(&e),
                }
            }
        };
        let mut tries = 0;
        loop {
            let (reply, redirect) = self.run_transaction(target, conn, &t.queued).await;
            // The slot moved before EXEC reached its master: nothing ran
            // (EXECABORT), so it runs where the slot is now. Not with
            // WATCH: the watch was on the old master.
            let Some(redirect) =
                redirect.filter(|_| !watched && tries < crate::cluster::MAX_REDIRECTS)
            else {
                return reply;
            };
            tries += 1;
            let backend = self.state.live().backends.get(target.pool).cloned();
            if let Some(cluster) = backend.as_ref().and_then(|b| b.cluster()) {
                match redirect {
                    crate::cluster::Redirect::Moved { slot, addr } => cluster.moved(slot, &addr),
                    // Migrating, or TRYAGAIN: let the migration finish.
                    _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
            conn = match self.lease(target).await {
                Ok(conn) => conn,
                Err(e) => return self.failed(&e),
            };
        }
    }

    /// MULTI, the queued commands and EXEC in one write on `conn`: EXEC's
    /// reply, and the first cluster redirection among the queued replies.
    async fn run_transaction(
        &mut self,
        Target { pool, slot }: Target,
        mut conn: Dedicated,
        queued: &[Request],
    ) -> (Reply, Option<crate::cluster::Redirect>) {
        let t_queued = queued;
        let mut bytes =
            Vec::with_capacity(64 + t_queued.iter().map(|r| r.bytes().len()).sum::<usize>());
        bytes.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        for r in t_queued {
            bytes.extend_from_slice(r.bytes());
        }
        bytes.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        let lost = || {
            self.failed(&BackendError::ConnectionLost {
                pool: self.state.live().router.pool_name(pool).to_string(),
            })
        };
        if conn.send(&bytes).await.is_err() {
            return (lost(), None);
        }
        let mut last = None;
        let mut redirect = None;
        for _ in 0..t_queued.len() + 2 {
            match conn.read_frame().await {
                Ok(frame) => {
                    if redirect.is_none() && slot.is_some() {
                        redirect = crate::cluster::Redirect::parse(&frame);
                    }
                    last = Some(frame);
                }
                Err(_) => return (lost(), None),
            }
        }
        if let Ok(backend) = self.state.live().backends.checked(pool) {
            backend.release(conn);
        }
        match last {
            // Only an aborted EXEC is safe to run again: nothing ran.
            Some(frame) if frame.starts_with(b"-EXECABORT") => (Reply::now(frame), redirect),
            Some(frame) => (Reply::now(frame), None),
            None => (lost(), None),
        }
    }

    pub(super) fn discard(&mut self) -> Reply {
        if !self.in_multi() {
            return Reply::now(resp::error("ERR DISCARD without MULTI"));
        }
        // The lease, if any, closes: DISCARD also forgets WATCHes.
        self.mode = Mode::Normal;
        self.register();
        Reply::now(resp::simple("OK"))
    }

    /// WATCH outside MULTI: leases a connection to the keys' pool at once.
    pub(super) async fn watch(&mut self, request: &Request, pool: Result<Target, Bytes>) -> Reply {
        if self.in_multi() {
            return Reply::now(resp::error("ERR WATCH inside MULTI is not allowed"));
        }
        if matches!(self.mode, Mode::Subscribed(_)) {
            return Reply::now(resp::error(
                "ERR keyway does not support WATCH on a connection with subscriptions",
            ));
        }
        let pool = match pool {
            Ok(p) => p,
            Err(error) => return Reply::now(error),
        };
        if let Mode::Transaction(t) = &self.mode {
            if let Some((leased, _)) = &t.lease {
                if *leased != pool {
                    return Reply::now(self.cross(*leased, pool));
                }
            }
        }
        self.flush().await;
        let mut t = match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Transaction(t) => t,
            _ => Transaction::new(),
        };
        let mut conn = match t.lease.take() {
            Some((_, conn)) => conn,
            None => match self.lease(pool).await {
                Ok(conn) => conn,
                Err(e) => return self.failed(&e),
            },
        };
        let reply = match conn.send(request.bytes()).await {
            Ok(()) => conn.read_frame().await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(frame) => {
                t.pool = Some(pool);
                t.lease = Some((pool, conn));
                self.mode = Mode::Transaction(t);
                self.register();
                Reply::now(frame)
            }
            Err(_) => self.failed(&BackendError::ConnectionLost {
                pool: self.state.live().router.pool_name(pool.pool).to_string(),
            }),
        }
    }

    /// UNWATCH outside MULTI: ends the watch and returns the connection.
    pub(super) async fn unwatch(&mut self) -> Reply {
        if let Mode::Transaction(t) = &mut self.mode {
            if let Some((Target { pool, .. }, mut conn)) = t.lease.take() {
                let clean = conn.send(b"*1\r\n$7\r\nUNWATCH\r\n").await.is_ok()
                    && conn.read_frame().await.is_ok();
                if clean {
                    if let Ok(backend) = self.state.live().backends.checked(pool) {
                        backend.release(conn);
                    }
                }
            }
            self.mode = Mode::Normal;
            self.register();
        }
        Reply::now(resp::simple("OK"))
    }
}
