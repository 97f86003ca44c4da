//! From one parsed request to its pending reply: look the command up, check
//! its arity, answer it locally or plan its route, and queue it on the
//! backend connections in request order.

use std::sync::Arc;

use bytes::Bytes;

use super::merge::Merge;
use super::reply::{Part, Reply};
use super::Session;
use crate::command::Flags;
use crate::resp::{self, Request};
use crate::route::{Plan, PoolId, SplitKind};

/// Command names longer than this are not in any table.
const MAX_NAME: usize = 64;

impl Session {
    pub(super) async fn dispatch(&mut self, request: Request) -> Reply {
        let state = Arc::clone(&self.state);
        state
            .stats
            .commands_processed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name_buf = [0u8; MAX_NAME];
        let raw_name = request.arg(0);
        let name_len = raw_name.len().min(MAX_NAME);
        for (d, s) in name_buf.iter_mut().zip(raw_name) {
            *d = s.to_ascii_lowercase();
        }
        let name = &name_buf[..name_len];

        let args = request.arg_vec();
        let spec = state.commands.lookup(&args);
        if let Some(spec) = spec {
            if !spec.arity_ok(args.len()) {
                return Reply::Now(resp::error(&format!(
                    "ERR wrong number of arguments for '{}' command",
                    spec.name
                )));
            }
        }
        if let Some(reply) = self.local(name, &request).await {
            return reply;
        }
        let Some(spec) = spec else {
            // Unknown to keyway: the backend gives Redis's own error, or runs
            // a module command keyway has not learned.
            let pool = state.router.fallback_pool(name, self.client.db);
            return self.forward(pool, request.bytes().clone()).await;
        };
        if let Some(refusal) = needs_dedicated_connection(name, spec.flags, &args) {
            return Reply::Now(resp::error(&format!(
                "ERR '{}' needs a dedicated backend connection ({refusal}), which keyway does not support yet",
                String::from_utf8_lossy(raw_name).to_ascii_uppercase()
            )));
        }
        if name == b"mset" && args.len().is_multiple_of(2) {
            return Reply::Now(resp::error(
                "ERR wrong number of arguments for 'mset' command",
            ));
        }
        let mut keys = std::mem::take(&mut self.key_scratch);
        keys.clear();
        state.commands.key_indexes(spec, &args, &mut keys);
        let plan = state.router.plan(name, &request, &keys, self.client.db);
        self.key_scratch = keys;
        drop(args);
        match plan {
            Plan::One(pool) => self.forward(pool, request.bytes().clone()).await,
            Plan::CrossPool(c) => Reply::Now(resp::error(&c.to_string())),
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
                    let rx = self.send(part.pool, part.request.bytes().clone()).await;
                    parts.push(Part::new(part.pool, rx));
                }
                Reply::Fanout { parts, merge }
            }
        }
    }

    pub(super) async fn forward(&mut self, pool: PoolId, bytes: Bytes) -> Reply {
        match self.send(pool, bytes).await {
            Ok(rx) => Reply::Backend { pool, rx },
            Err(e) => Reply::backend_error(&e),
        }
    }

    /// Sends the same request to several pools and merges their replies.
    pub(super) async fn fanout(&mut self, pools: &[PoolId], bytes: &Bytes, merge: Merge) -> Reply {
        let mut parts = Vec::with_capacity(pools.len());
        for &pool in pools {
            let rx = self.send(pool, bytes.clone()).await;
            parts.push(Part::new(pool, rx));
        }
        Reply::Fanout { parts, merge }
    }
}

/// Commands whose state lives on one backend connection cannot share a
/// multiplexed one: a transaction, a subscription, a blocked pop.
fn needs_dedicated_connection(name: &[u8], flags: Flags, args: &[&[u8]]) -> Option<&'static str> {
    match name {
        b"multi" | b"exec" | b"discard" | b"watch" | b"unwatch" => Some("transaction"),
        b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
        | b"sunsubscribe" => Some("pub/sub"),
        b"monitor" | b"sync" | b"psync" | b"replconf" => Some("replication stream"),
        b"wait" | b"waitaof" => Some("blocking"),
        b"xread" | b"xreadgroup" => args
            .iter()
            .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
            .then_some("blocking"),
        _ if flags.contains(Flags::BLOCKING) => Some("blocking"),
        _ => None,
    }
}
