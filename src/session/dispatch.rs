//! From one parsed request to its pending reply: look the command up, apply
//! the connection's mode (transaction, subscriber), answer it locally, run
//! it on a leased connection, or plan its route and queue it on the
//! multiplexed backend connections in request order.

use std::sync::Arc;

use bytes::Bytes;

use super::merge::Merge;
use super::mode::{Gate, ModeRefusal};
use super::reply::{Fanout, Forwarded, Meta, Part, Reply, Wait};
use super::Session;
use crate::command::{
    Blocking, CacheCount, CommandName, DatabaseArg, Flags, Forward, Handling, Local, Spec,
    SplitKind, SubscriptionVerb, TransactionVerb,
};
use crate::policy::{Denial, Subject};
use crate::resp::{self, ArgSlices, Request};
use crate::route::{Plan, PoolId, Target, CROSSSLOT};

fn error(msg: &str) -> Reply {
    Reply::now(resp::error(msg))
}

fn upper(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_uppercase()
}

/// The command as a refusal names it: with its subcommand (`SCRIPT DEBUG`)
/// when the table knows it, else the client's own word.
fn shown_name(spec: Option<&Spec>, name: &[u8]) -> String {
    spec.map_or_else(
        || upper(name),
        |s| s.name.replace('|', " ").to_ascii_uppercase(),
    )
}

/// Redis's reply to a command it does not know, with the client's own
/// bytes: the name up to 128 bytes, then arguments until 128 bytes of them
/// are quoted (C strings there: each stops at a NUL byte).
#[cold]
#[inline(never)]
fn unknown_command(request: &Request) -> Bytes {
    let c_str = |arg: &[u8], max: usize| {
        let end = arg.iter().position(|&b| b == 0).unwrap_or(arg.len());
        arg[..end.min(max)].to_vec()
    };
    let mut quoted = Vec::new();
    for arg in request.args().skip(1) {
        if quoted.len() >= 128 {
            break;
        }
        quoted.push(b'\'');
        quoted.extend(c_str(arg, 128 - quoted.len() + 1));
        quoted.extend_from_slice(b"' ");
    }
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend(c_str(request.arg(0), 128));
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend(quoted);
    resp::error_bytes(&msg)
}

/// What the checks of one request decided.
pub(super) enum Checked<'s> {
    /// Forwarded, its reply queued in place (the common case: a reply is
    /// large, and every return it passes through copies it).
    Queued,
    /// Answered: refused, done locally or forwarded, all without waiting.
    Done(Reply),
    /// The rest awaits something (a limit, a connection, a lease, a
    /// server-wide fan-out): `execute` does it.
    Execute(Execution<'s>),
}

/// A checked request whose execution awaits.
pub(super) struct Execution<'s> {
    name: CommandName,
    spec: Option<&'s Spec>,
    handling: Handling,
    gate: Gate,
    request: Request,
}

impl Session {
    /// One request, in a fixed order: *check* (authentication, subscriber
    /// mode, arity, the user's permissions), *admit* (rate limits), then
    /// *execute* by the command's handling (`execute`).
    ///
    /// `state` and `live` are the session's, taken once per read of
    /// requests (each a reference count, an atomic operation, which per
    /// pipelined request was a measurable share of keyway's CPU).
    ///
    /// Everything about a request that needs no waiting: the checks, the
    /// connection's own verbs, and the common forward (one pool, no
    /// limit, an open connection). Kept out of the awaited part because
    /// every awaited call builds and moves a future the size of all it
    /// might await: measured, several copies per request.
    pub(super) fn check<'s>(
        &mut self,
        state: &'s crate::state::State,
        live: &crate::state::Live,
        mut request: Request,
    ) -> Checked<'s> {
        self.commands_processed += 1;
        let raw_name = request.arg(0);
        // Only for what configuration names commands by (command rules,
        // blocklists, limits): how keyway handles it comes from the table.
        let name = CommandName::of(raw_name);
        // Found once: the command lookup and the key positions both read them.
        let mut args = ArgSlices::new();
        request.args_into(&mut args);
        let entry = state.commands.lookup_named(&name, &args);
        let spec = entry.map(|e| &e.spec);
        let handling = entry.map_or(Handling::UNKNOWN, |e| e.handling);
        let cache = entry.map_or(CacheCount::No, |e| e.cache);
        self.meta = Meta {
            command: spec.map(|s| s.name).unwrap_or("other"),
            started: self.received,
            cache,
            // The route label only counts cache hits and misses.
            route: (cache != CacheCount::No && request.argc() > 1)
                .then(|| live.router.prefix_rule(request.arg(1)))
                .flatten(),
            // Filled in once the request is forwarded or awaited: a
            // reference count (an atomic operation) spared on refusals,
            // and moved rather than counted on the common forward.
            request: Bytes::new(),
            client: self.client.id,
            db: self.client.db,
            proto: self.client.proto,
            read_only: spec.is_some_and(|s| s.flags.contains(Flags::READONLY)),
            retried: None,
            slot: None,
            redirects: 0,
        };
        if let Some(spec) = spec {
            self.activity.command(spec.name, state.uptime_secs());
        }

        // Check. An unauthenticated client may only authenticate (or leave).
        let no_auth = spec.is_some_and(|s| s.flags.contains(Flags::NO_AUTH));
        if self.client.user.is_none() && !no_auth {
            return Checked::Done(self.deny(Denial::NoAuth));
        }
        if let Some(spec) = spec {
            if !spec.arity_ok(request.argc()) {
                return Checked::Done(self.wrong_arity(spec, handling));
            }
        }
        if let (Some(user), false) = (&self.client.user, no_auth) {
            let sub = (request.argc() > 1).then(|| request.arg(1));
            let permitted =
                live.policy
                    .check_command(user, &name, spec, sub)
                    .and_then(|()| match (spec, user.has_prefixes()) {
                        (Some(spec), true) => live.policy.check_reach(user, spec, &args),
                        _ => Ok(()),
                    });
            if let Err(denial) = permitted {
                return Checked::Done(self.deny(denial));
            }
        }
        // The connection's mode: what runs, what is queued, what it refuses
        // (in Redis's order: after arity and permissions).
        let gate = self.mode.gate(handling, spec.is_some(), self.client.proto);
        match gate {
            Gate::SubscriberPing => return Checked::Done(self.subscriber_ping(&request)),
            Gate::Refuse(refusal) => {
                return Checked::Done(self.refused_in_mode(
                    refusal,
                    name.as_bytes(),
                    spec,
                    &request,
                ))
            }
            Gate::Run | Gate::Queue => {}
        }

        // The connection's own verbs are never limited or queued.
        match handling {
            Handling::Transaction(TransactionVerb::Multi) => return Checked::Done(self.multi()),
            Handling::Transaction(TransactionVerb::Discard) => {
                return Checked::Done(self.discard())
            }
            Handling::Local(Local::Quit) => return Checked::Done(Reply::close(resp::simple("OK"))),
            Handling::Local(Local::Reset) => return Checked::Done(self.reset()),
            _ => {}
        }

        // The common forward, when nothing needs waiting for.
        let fast = match (handling, spec) {
            (Handling::Forward(forward), Some(spec))
                if gate == Gate::Run && !live.policy.has_limits(false) =>
            {
                // Only the target is kept: moving the whole plan (an enum
                // written field by field) stalled on every request. A
                // split is planned again by `execute`.
                match self.plan(live, name.as_bytes(), spec, forward.split, &request, &args) {
                    Ok((Plan::One(target), _)) => Some((forward, spec, target)),
                    Ok(_) => None,
                    Err(denial) => return Checked::Done(self.deny(denial)),
                }
            }
            _ => None,
        };
        drop(args);
        if let Some((forward, spec, target)) = fast {
            request = match self.forward_now(live, spec, forward, target, request) {
                Ok(()) => return Checked::Queued,
                Err(request) => request,
            };
        }
        // The reply's context keeps the request (slow log, retries).
        self.meta.request = request.bytes().clone();
        Checked::Execute(Execution {
            name,
            spec,
            handling,
            gate,
            request,
        })
    }

    /// The part of a request that awaits: *admit* (rate limits), then
    /// *execute* by the command's handling, one `match`.
    pub(super) async fn execute(
        &mut self,
        state: &Arc<crate::state::State>,
        live: &Arc<crate::state::Live>,
        execution: Execution<'_>,
    ) -> Reply {
        let Execution {
            name,
            spec,
            handling,
            gate,
            request,
        } = execution;
        let name = name.as_bytes();
        if handling == Handling::Transaction(TransactionVerb::Exec) {
            return Box::pin(self.exec()).await;
        }

        // Admit. Queued commands count against limits as they are queued:
        // a transaction is no way around them.
        if live.policy.has_limits(false) {
            if let Err(denial) = self.admit(name, spec, None).await {
                return self.deny(denial);
            }
        }
        if gate == Gate::Queue {
            return Box::pin(self.queue_command(name, spec, handling, request)).await;
        }

        // Execute. Rare, large paths are boxed so an idle client's task stays small.
        match handling {
            Handling::Forward(forward) => {
                let Some(spec) = spec else {
                    // Unknown to keyway: the backend gives Redis's own error, or
                    // runs a module command keyway has not learned.
                    let pool = live.router.fallback_pool(name, self.client.db);
                    if let Err(denial) = self.admit_pools(name, None, &[pool]).await {
                        return self.deny(denial);
                    }
                    self.written.note(pool);
                    return self.forward(pool, request.bytes().clone()).await;
                };
                let args = request.arg_vec();
                let plan = match self.plan(live, name, spec, forward.split, &request, &args) {
                    Ok((plan, _)) => plan,
                    Err(denial) => return self.deny(denial),
                };
                drop(args);
                self.execute_plan(live, spec, forward, plan, &request).await
            }
            Handling::Local(local) => {
                let reply = self.local(local, &request).await;
                // Answered here: the slow log still sees it, as Redis's
                // would. One passed on to a backend is observed with its
                // reply (which took the request's bytes along).
                let forwarded = matches!(reply, Reply::Backend(_));
                if !forwarded && spec.is_some_and(|s| !s.flags.contains(Flags::SKIP_SLOWLOG)) {
                    super::observe::answered_locally(state, &self.meta);
                }
                reply
            }
            Handling::Servers(servers) => {
                // Pool limits count what reaches a pool's servers, a
                // fan-out (KEYS, SCAN …) above all.
                let pools = match servers {
                    crate::command::Servers::DefaultPool => vec![live.router.default_pool()],
                    _ => self.all_pools(),
                };
                if let Err(denial) = self.admit_pools(name, spec, &pools).await {
                    return self.deny(denial);
                }
                let reply = Box::pin(self.servers(servers, name, &request)).await;
                if !matches!(reply, Reply::Backend(_)) {
                    super::observe::answered_locally(state, &self.meta);
                }
                reply
            }
            Handling::Transaction(TransactionVerb::Watch) => {
                let pool = self.single_pool(name, spec, &request);
                if let Ok(target) = &pool {
                    if let Err(denial) = self.admit_pools(name, spec, &[target.pool]).await {
                        return self.deny(denial);
                    }
                }
                Box::pin(self.watch(&request, pool)).await
            }
            Handling::Transaction(TransactionVerb::Unwatch) => Box::pin(self.unwatch()).await,
            // Answered above, or by `check`.
            Handling::Transaction(
                TransactionVerb::Multi | TransactionVerb::Exec | TransactionVerb::Discard,
            ) => error("ERR internal: transaction verb out of order"),
            Handling::Subscription(SubscriptionVerb::Subscribe(kind)) => {
                Box::pin(self.subscribe(kind, &request)).await.pushed()
            }
            Handling::Subscription(SubscriptionVerb::Unsubscribe(kind)) => {
                Box::pin(self.unsubscribe(kind, &request)).await.pushed()
            }
            Handling::Refused(what) => {
                let command = spec.map_or("other", |s| s.name);
                self.state.metrics.deny("unsupported", command);
                let reply = resp::error(&format!(
                    "ERR '{}' is not supported by keyway: {what}",
                    shown_name(spec, request.arg(0))
                ));
                self.state.stats.commands.rejected(command, &reply);
                Reply::now(reply)
            }
        }
    }

    /// A command the connection's mode does not run, answered as Redis
    /// does; between MULTI and EXEC most refusals abort the transaction.
    #[cold]
    #[inline(never)]
    fn refused_in_mode(
        &mut self,
        refusal: ModeRefusal,
        name: &[u8],
        spec: Option<&Spec>,
        request: &Request,
    ) -> Reply {
        let reply = match refusal {
            ModeRefusal::SubscriberOnly => resp::error(&format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                spec.map_or_else(|| String::from_utf8_lossy(name).into_owned(), |s| s.name.to_string())
            )),
            ModeRefusal::Unknown => unknown_command(request),
            ModeRefusal::WatchInMulti => resp::error(super::mode::WATCH_IN_MULTI),
            ModeRefusal::NotInMulti => resp::error(&format!(
                "ERR '{}' inside MULTI is not supported by keyway",
                upper(name)
            )),
            ModeRefusal::Unsupported(what) => resp::error(&format!(
                "ERR '{}' is not supported by keyway: {what}",
                shown_name(spec, name)
            )),
        };
        // Counted as Redis counts a rejected call (INFO's errorstats and
        // rejected_calls); keyway's own refusals also as denials.
        let command = spec.map_or("other", |s| s.name);
        if matches!(
            refusal,
            ModeRefusal::NotInMulti | ModeRefusal::Unsupported(_)
        ) {
            self.state.metrics.deny("unsupported", command);
        }
        self.state.stats.commands.rejected(command, &reply);
        match refusal.aborts() {
            true => self.refuse_in_multi(reply),
            false => Reply::now(reply),
        }
    }

    /// A wrong number of arguments, as Redis answers it; EXEC's own aborts
    /// the transaction.
    #[cold]
    #[inline(never)]
    fn wrong_arity(&mut self, spec: &Spec, handling: Handling) -> Reply {
        let msg = format!("ERR wrong number of arguments for '{}' command", spec.name);
        if handling == Handling::Transaction(TransactionVerb::Exec) {
            // Redis discards the transaction when EXEC itself is refused,
            // in MULTI or not: its WATCHes end too.
            if self.in_multi() {
                let _ = self.discard();
            } else if self.mode.end_watch().is_some() {
                self.register();
            }
            return error(&format!(
                "EXECABORT Transaction discarded because of: {}",
                &msg[4..]
            ));
        }
        let reply = resp::error(&msg);
        self.state.stats.commands.rejected(spec.name, &reply);
        self.refuse_in_multi(reply)
    }

    /// A forwarded command's route: pool limits, then one pool (blocking,
    /// into another database, or to a replica), a split, or CROSSPOOL.
    async fn execute_plan(
        &mut self,
        live: &crate::state::Live,
        spec: &Spec,
        forward: Forward,
        plan: Plan,
        request: &Request,
    ) -> Reply {
        if forward.pairs && request.argc().is_multiple_of(2) {
            return error(&format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            ));
        }
        if live.policy.has_limits(true) {
            let mut pools: Vec<PoolId> = match &plan {
                Plan::One(target) => vec![target.pool],
                Plan::Split(split) => split.parts.iter().map(|p| p.pool).collect(),
                Plan::CrossPool(_) | Plan::CrossSlot => Vec::new(),
            };
            // A cluster pool's parts (one per slot) count once.
            pools.sort_unstable();
            pools.dedup();
            for pool in pools {
                if let Err(denial) = self
                    .admit(spec.name.as_bytes(), Some(spec), Some(pool))
                    .await
                {
                    return self.deny(denial);
                }
            }
        }
        if let Plan::One(target) = &plan {
            self.meta.slot = target.slot;
        }
        match plan {
            Plan::One(target) if blocks(forward.blocking, request) => {
                Box::pin(self.blocking(target, request)).await
            }
            // Rare, and boxed so its request copy does not enlarge every request.
            Plan::One(Target { pool, .. }) if forward.database.is_some() => {
                Box::pin(self.forward_into_database(live, forward, spec.name, pool, request)).await
            }
            Plan::One(Target { pool, .. }) => {
                // Replica reads: read-only commands go to the pool's healthy
                // replica when one is chosen (never inside a transaction).
                let target = match spec.flags.contains(Flags::READONLY) {
                    true => live.backends.replica_of(pool).unwrap_or(pool),
                    false => pool,
                };
                self.forward(target, request.bytes().clone()).await
            }
            Plan::CrossPool(c) => {
                self.state.metrics.deny("crosspool", spec.name);
                error(&c.to_string())
            }
            Plan::CrossSlot => {
                self.state.metrics.deny("crossslot", spec.name);
                error(CROSSSLOT)
            }
            Plan::Split(plan) => {
                let merge = match plan.kind {
                    SplitKind::Mget => Merge::Mget {
                        keys: plan.keys,
                        positions: plan.parts.iter().map(|p| p.positions.clone()).collect(),
                    },
                    SplitKind::Mset => Merge::AllOk,
                    SplitKind::Count => Merge::SumIntegers,
                };
                let mut parts = Vec::with_capacity(plan.parts.len());
                for part in plan.parts {
                    let rx = self
                        .send_part(part.pool, part.slot, part.request.bytes().clone())
                        .await;
                    parts.push(Part::new(part.pool, rx));
                }
                Reply::Fanout(Box::new(Fanout {
                    parts,
                    merge,
                    meta: self.meta.clone(),
                }))
            }
        }
    }

    /// `execute_plan`'s common case done without awaiting anything: one
    /// pool, no pool-scoped limit, not blocking, no other database, and the
    /// client's connection to the pool (or to the slot's cluster node) open
    /// and with room. `Err`: not that case, nothing done, the request
    /// given back. Kept apart because each awaited call builds and moves
    /// a future the size of everything it might await (measured: several
    /// copies per request).
    fn forward_now(
        &mut self,
        live: &crate::state::Live,
        spec: &Spec,
        forward: Forward,
        target: Target,
        request: Request,
    ) -> Result<(), Request> {
        if (forward.pairs && request.argc().is_multiple_of(2))
            || forward.database.is_some()
            || blocks(forward.blocking, &request)
            || live.policy.has_limits(true)
        {
            return Err(request);
        }
        let pool = match spec.flags.contains(Flags::READONLY) {
            true => live.backends.replica_of(target.pool).unwrap_or(target.pool),
            false => target.pool,
        };
        self.meta.slot = target.slot;
        let choice = self.node_choice();
        let Some(conn) = self.links.ready(pool, self.client.db, choice) else {
            return Err(request);
        };
        let (inbox, seq) = self.output.inbox_next();
        if !conn.try_send_to_inbox(request.bytes(), inbox, seq) {
            // Nothing was sent: the awaited path sends it, under the same seq.
            return Err(request);
        }
        self.meta.request = request.into_bytes();
        let reply = |meta: &mut Meta| {
            Reply::Backend(Forwarded {
                pool,
                seq,
                wait: Wait::Inbox,
                meta: meta.take(),
                source: super::reply::Source::Backend,
            })
        };
        if matches!(self.reply_mode, super::ReplyMode::On) {
            // Built where it will lie in the queue (see `Output::push_with`).
            let meta = &mut self.meta;
            self.output.push_with(|| reply(meta));
        } else {
            let reply = reply(&mut self.meta);
            self.queue(reply);
        }
        Ok(())
    }

    /// The rate limits that apply before (`pool` None) or after routing.
    async fn admit(
        &self,
        name: &[u8],
        spec: Option<&Spec>,
        pool: Option<PoolId>,
    ) -> Result<(), Denial> {
        let Some(user) = &self.client.user else {
            return Ok(());
        };
        let command = spec
            .map(|s| s.name.to_string())
            .unwrap_or_else(|| String::from_utf8_lossy(name).into_owned());
        let subject = Subject {
            ip: self.client.addr.ip(),
            user: &user.name,
            command: &command,
            known: spec.is_some(),
            pool,
        };
        let live = self.state.live_arc();
        let backing = crate::policy::Backing {
            backends: &live.backends,
            metrics: &self.state.metrics,
        };
        live.policy.admit(&subject, pool.is_some(), &backing).await
    }

    /// The pool-scoped limits of every pool in `pools` admit the request.
    async fn admit_pools(
        &self,
        name: &[u8],
        spec: Option<&Spec>,
        pools: &[PoolId],
    ) -> Result<(), Denial> {
        if !self.state.live().policy.has_limits(true) {
            return Ok(());
        }
        for &pool in pools {
            self.admit(name, spec, Some(pool)).await?;
        }
        Ok(())
    }

    /// The route of a request and whether it has keys; a key outside the
    /// user's prefixes refuses the whole request.
    fn plan(
        &mut self,
        live: &crate::state::Live,
        name: &[u8],
        spec: &Spec,
        split: Option<SplitKind>,
        request: &Request,
        args: &[&[u8]],
    ) -> Result<(Plan, bool), Denial> {
        let mut keys = std::mem::take(&mut self.key_scratch);
        keys.clear();
        self.state.commands.key_indexes(spec, args, &mut keys);
        let allowed = match &self.client.user {
            Some(user) => keys
                .iter()
                .try_for_each(|&i| live.policy.check_key(user, request.arg(i))),
            None => Ok(()),
        };
        let db = self.client.db;
        let plan = allowed.map(|()| live.router.plan(name, split, request, &keys, db));
        if let (Ok(plan), false) = (&plan, spec.flags.contains(Flags::READONLY)) {
            self.written.note_plan(plan);
        }
        let has_keys = !keys.is_empty();
        self.key_scratch = keys;
        plan.map(|p| (p, has_keys))
    }

    /// The one pool (and slot, on a cluster pool) all of a request's keys
    /// map to, or the refusal.
    fn single_pool(
        &mut self,
        name: &[u8],
        spec: Option<&Spec>,
        request: &Request,
    ) -> Result<Target, Bytes> {
        let Some(spec) = spec else {
            return Err(unknown_command(request));
        };
        let live = self.state.live_arc();
        let args = request.arg_vec();
        match self.plan(&live, name, spec, None, request, &args) {
            Ok((Plan::One(target), _)) => Ok(target),
            Ok((Plan::CrossPool(c), _)) => Err(resp::error(&c.to_string())),
            Ok((Plan::CrossSlot, _)) => Err(resp::error(CROSSSLOT)),
            Ok((Plan::Split(plan), _)) => {
                let first = plan.parts[0].pool;
                let second = plan.parts.get(1).map(|p| p.pool).unwrap_or(first);
                if first == second {
                    return Err(resp::error(CROSSSLOT));
                }
                Err(resp::error(&self.cross_pool(first, second).to_string()))
            }
            Err(denial) => {
                let (reason, detail) = denial.labels();
                self.state.metrics.deny(reason, &detail);
                Err(denial.to_resp())
            }
        }
    }

    /// A command between MULTI and EXEC.
    async fn queue_command(
        &mut self,
        name: &[u8],
        spec: Option<&Spec>,
        handling: Handling,
        request: Request,
    ) -> Reply {
        // Keyless commands (PING, TIME ...) run wherever the transaction does.
        let pool = self
            .single_pool(name, spec, &request)
            .map(|pool| (!self.key_scratch.is_empty()).then_some(pool));
        let mut request = request;
        if let Ok(Some(Target { pool, .. })) = pool {
            let live = self.state.live_arc();
            if let Handling::Forward(Forward {
                database: Some(database),
                ..
            }) = handling
            {
                match self.other_database(&live, name, database, pool, &request) {
                    Ok(Some(rewritten)) => request = rewritten,
                    Ok(None) => {}
                    Err(cross) => {
                        let command = spec.map_or("other", |s| s.name);
                        self.state.metrics.deny("crosspool", command);
                        return self.refuse_in_multi(resp::error(&cross.to_string()));
                    }
                }
            }
            if live.policy.has_limits(true) {
                if let Err(denial) = self.admit(name, spec, Some(pool)).await {
                    return self.deny(denial);
                }
            }
        }
        self.queue_in_multi(request, pool)
    }

    /// An error that, inside MULTI, also makes EXEC answer EXECABORT.
    pub(super) fn refuse_in_multi(&mut self, error: Bytes) -> Reply {
        if self.in_multi() {
            return self.queue_in_multi(Request::from_args(&["PING"]), Err(error));
        }
        Reply::now(error)
    }

    /// Sends a request whose reply is passed through as it is; the reply
    /// arrives in the client's inbox under its position.
    pub(super) async fn forward(&mut self, pool: PoolId, bytes: Bytes) -> Reply {
        let (reply_to, seq) = self.output.reply_to_next();
        match self.send(pool, bytes, reply_to).await {
            Ok(()) => Reply::Backend(Forwarded {
                pool,
                seq,
                wait: Wait::Inbox,
                // Moved, not cloned: nothing after the send reads the
                // session's copy of the request.
                meta: self.meta.take(),
                source: super::reply::Source::Backend,
            }),
            Err(e) => self.failed(&e),
        }
    }

    /// Sends one part of a fanned-out request.
    pub(super) async fn send_once(
        &mut self,
        pool: PoolId,
        bytes: Bytes,
    ) -> Result<crate::backend::ReplyRx, crate::backend::BackendError> {
        let (reply_to, rx) = crate::backend::ReplyTo::once();
        self.send(pool, bytes, reply_to).await.map(|()| rx)
    }

    /// Sends one part of a split request: to its pool, or, on a cluster
    /// pool, to its slot's master with the redirections followed.
    async fn send_part(
        &mut self,
        pool: PoolId,
        slot: Option<u16>,
        bytes: Bytes,
    ) -> Result<crate::backend::ReplyRx, crate::backend::BackendError> {
        match self.links.cluster(pool).cloned() {
            Some(cluster) if self.client.db != 0 => {
                Err(crate::backend::BackendError::ClusterDatabase {
                    pool: cluster.name().to_string(),
                })
            }
            Some(cluster) => Ok(cluster.spawn_request(slot, bytes, 0, self.client.proto)),
            None => self.send_once(pool, bytes).await,
        }
    }

    /// Sends the same request to several pools and merges their replies.
    /// A cluster pool counts as each of its masters.
    pub(super) async fn fanout(&mut self, pools: &[PoolId], bytes: &Bytes, merge: Merge) -> Reply {
        let mut parts = Vec::with_capacity(pools.len());
        for server in self.servers_of(pools).await {
            let rx = match server {
                Server::Pool(pool) | Server::Slots(pool, _) => {
                    self.send_once(pool, bytes.clone()).await
                }
                Server::Node(_, ref node) => self.send_node(node, bytes.clone()).await,
            };
            parts.push(Part::new(server.pool(), rx));
        }
        Reply::Fanout(Box::new(Fanout {
            parts,
            merge,
            meta: self.meta.clone(),
        }))
    }
}

/// One server of a fan-out: a pool, or one master of a cluster pool; for
/// SCAN, a cluster pool as a whole, scanned by slot.
pub(super) enum Server {
    Pool(PoolId),
    Node(PoolId, Arc<crate::backend::Pool>),
    Slots(PoolId, Arc<crate::cluster::Cluster>),
}

impl Server {
    pub(super) fn pool(&self) -> PoolId {
        match self {
            Server::Pool(p) | Server::Node(p, _) | Server::Slots(p, _) => *p,
        }
    }
}

impl Session {
    /// The servers behind `pools`: each cluster pool as its masters, in
    /// slot order (waiting briefly for a first map if there is none).
    pub(super) async fn servers_of(&self, pools: &[PoolId]) -> Vec<Server> {
        let mut servers = Vec::with_capacity(pools.len());
        for &pool in pools {
            let Some(cluster) = self.links.cluster(pool).cloned() else {
                servers.push(Server::Pool(pool));
                continue;
            };
            let mut masters = cluster.masters();
            if masters.is_empty() {
                let _ = cluster.master_or_wait(None).await;
                masters = cluster.masters();
            }
            if masters.is_empty() {
                // Asked anyway, so the client sees why it fails.
                servers.push(Server::Pool(pool));
            }
            servers.extend(masters.into_iter().map(|node| Server::Node(pool, node)));
        }
        servers
    }

    /// A one-off request on a cluster node's multiplexed connection.
    pub(super) async fn send_node(
        &self,
        node: &crate::backend::Pool,
        bytes: Bytes,
    ) -> Result<crate::backend::ReplyRx, crate::backend::BackendError> {
        if self.client.db != 0 {
            return Err(crate::backend::BackendError::ClusterDatabase {
                pool: node.name().to_string(),
            });
        }
        let conn = node
            .conn(0, self.client.proto, self.client.id as usize)
            .await?;
        conn.request(bytes)
            .await
            .ok_or_else(|| crate::backend::BackendError::ConnectionLost {
                pool: node.name().to_string(),
            })
    }
}

/// Where COPY's `DB n` and MOVE's database argument are, with the key the
/// command creates there: (key index, database index).
fn database_target(database: DatabaseArg, request: &Request) -> Option<(usize, usize)> {
    match database {
        DatabaseArg::Move => (request.argc() == 3).then_some((1, 2)),
        DatabaseArg::AfterDbOption => (3..request.argc().saturating_sub(1))
            .find(|&i| request.arg(i).eq_ignore_ascii_case(b"DB"))
            .map(|i| (2, i + 1)),
    }
}

impl Session {
    /// COPY … DB n or MOVE key n, outside MULTI: refused as CROSSPOOL, or
    /// forwarded with the database as the pool's backend numbers it.
    async fn forward_into_database(
        &mut self,
        live: &crate::state::Live,
        forward: Forward,
        command: &'static str,
        pool: PoolId,
        request: &Request,
    ) -> Reply {
        let Some(database) = forward.database else {
            return self.forward(pool, request.bytes().clone()).await;
        };
        match self.other_database(live, command.as_bytes(), database, pool, request) {
            Ok(rewritten) => {
                let bytes = rewritten.as_ref().unwrap_or(request).bytes().clone();
                self.forward(pool, bytes).await
            }
            Err(cross) => {
                self.state.metrics.deny("crosspool", command);
                self.refuse_in_multi(resp::error(&cross.to_string()))
            }
        }
    }

    /// For a command writing into another database (COPY … DB n, MOVE key
    /// n): refused when that database routes the key to another pool, else
    /// the request with `n` as the pool's backend numbers it (a pool URL's
    /// `/db` stands for the client's db 0). `None`: forwarded unchanged.
    fn other_database(
        &self,
        live: &crate::state::Live,
        name: &[u8],
        database: DatabaseArg,
        pool: PoolId,
        request: &Request,
    ) -> Result<Option<Request>, crate::route::CrossPool> {
        let Some((key, db_arg)) = database_target(database, request) else {
            return Ok(None);
        };
        // Not a database number: Redis answers with its own error.
        let Some(db) = resp::decimal(request.arg(db_arg))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n < live.config.server.databases)
        else {
            return Ok(None);
        };
        let target = live.router.pool_for_key(request.arg(key), name, db);
        if target != pool {
            return Err(crate::route::CrossPool {
                first: live.router.pool_name(pool).to_string(),
                second: live.router.pool_name(target).to_string(),
            });
        }
        let Ok(backend) = live.backends.checked(pool) else {
            return Ok(None);
        };
        let backend_db = backend.backend_db(db);
        if backend_db == db {
            return Ok(None);
        }
        let mut args: Vec<Bytes> = request.args().map(Bytes::copy_from_slice).collect();
        args[db_arg] = Bytes::from(backend_db.to_string());
        Ok(Some(Request::from_args(&args)))
    }
}

/// Whether this request blocks its connection until something happens.
fn blocks(blocking: Blocking, request: &Request) -> bool {
    match blocking {
        Blocking::Never => false,
        Blocking::Always => true,
        Blocking::WithBlockOption => request.args().any(|a| a.eq_ignore_ascii_case(b"BLOCK")),
    }
}
