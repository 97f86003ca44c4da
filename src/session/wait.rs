//! WAIT and WAITAOF: how many replicas (and local AOFs) hold the client's
//! writes. Redis answers for the writes of the connection that asks; a
//! client of keyway wrote through shared connections, possibly to several
//! pools, and a blocking WAIT must not hold a shared connection. So keyway
//! asks every server the client wrote to, each on a leased connection, and
//! answers the smallest count: "at least n replicas hold every write".
//!
//! A leased connection has made no writes of its own, and since Redis 7.2 a
//! connection's WAIT offset moves only with its own propagated writes: on
//! it WAIT would answer at once, for nothing. So the lease first sends an
//! `SPUBLISH` to a channel nobody subscribes (shard channels have no
//! patterns, so no subscriber sees it), which a standalone server
//! propagates: the lease's offset is then past every write the client made
//! (they were all answered before), and WAIT waits for those.
//!
//! A cluster pool is refused: a client's writes there span masters, and a
//! cluster node does not propagate SPUBLISH through replication.

use bytes::Bytes;
use smallvec::SmallVec;

use super::reply::Reply;
use super::Session;
use crate::config::PoolId;
use crate::resp::{self, Request};
use crate::route::{Plan, Target};

/// Sent on the lease before WAIT so its offset covers the client's writes.
pub(super) const OFFSET_MARKER: &[u8] =
    b"*3\r\n$8\r\nSPUBLISH\r\n$15\r\n__keyway__:wait\r\n$0\r\n\r\n";

/// The pools a client sent a command to that may write (anything not
/// flagged read-only: scripts, module commands and unknown ones included).
/// A bit per pool index; pools beyond 63 are remembered as "some pool
/// beyond", which WAIT then asks with every other pool.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PoolsWritten {
    bits: u64,
    beyond: bool,
}

impl PoolsWritten {
    pub(super) fn note(&mut self, pool: PoolId) {
        match pool.index() {
            i if i < 64 => self.bits |= 1 << i,
            _ => self.beyond = true,
        }
    }

    /// Every pool a planned request goes to.
    pub(super) fn note_plan(&mut self, plan: &Plan) {
        match plan {
            Plan::One(target) => self.note(target.pool),
            Plan::Split(split) => split.parts.iter().for_each(|p| self.note(p.pool)),
            Plan::CrossPool(_) | Plan::CrossSlot => {}
        }
    }

    /// Of `configured`, the pools written to.
    fn of(&self, configured: impl Iterator<Item = PoolId>) -> Vec<PoolId> {
        configured
            .filter(|p| match p.index() {
                i if i < 64 => self.bits & (1 << i) != 0,
                _ => self.beyond,
            })
            .collect()
    }
}

/// WAIT's replica count, or WAITAOF's local and replica counts.
type Counts = SmallVec<[i64; 2]>;

/// The counts of a WAIT or WAITAOF reply; `None` for anything else (an
/// error is passed on as it is).
fn counts(frame: &[u8]) -> Option<Counts> {
    if let Some(n) = resp::shapes::integer(frame) {
        return Some(SmallVec::from_slice(&[n]));
    }
    resp::shapes::elements(frame)?
        .into_iter()
        .map(resp::shapes::integer)
        .collect()
}

impl Session {
    /// WAIT numreplicas timeout / WAITAOF numlocal numreplicas timeout.
    pub(super) async fn wait_for_replicas(&mut self, name: &[u8], request: &Request) -> Reply {
        let name = name.to_ascii_lowercase();
        let name = name.as_slice();
        let timeout_at = request.argc() - 1;
        let Some(timeout_ms) = resp::decimal(request.arg(timeout_at)).filter(|&t| t >= 0) else {
            // Redis's own error for the argument, from the default pool.
            let pool = self.state.live().router.fallback_pool(name, self.client.db);
            return self.forward(pool, request.bytes().clone()).await;
        };
        let pools = {
            let live = self.state.live();
            let mut pools = self.written.of(live.config.pools.iter().map(|p| p.id));
            if pools.is_empty() {
                pools.push(live.router.fallback_pool(name, self.client.db));
            }
            if let Some(cluster) = pools.iter().find(|&&p| {
                live.backends
                    .checked(p)
                    .is_ok_and(|pool| pool.cluster().is_some())
            }) {
                let pool = live.router.pool_name(*cluster).to_string();
                let command = if name == b"waitaof" {
                    "waitaof"
                } else {
                    "wait"
                };
                self.state.metrics.deny("unsupported", command);
                return Reply::now(on_cluster_pool(command, &pool));
            }
            pools
        };
        let pools = self.distinct(pools, false);
        if !self.flush().await {
            return Reply::close(Bytes::new());
        }
        // One deadline for all: each server gets what is left of it.
        let deadline = (timeout_ms > 0).then(|| {
            std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64)
        });
        let mut least: Option<Counts> = None;
        for pool in pools {
            let mut args: Vec<&[u8]> = request.args().collect();
            let left;
            if let Some(deadline) = deadline {
                let ms = deadline.saturating_duration_since(std::time::Instant::now());
                // At least 1: 0 would mean "wait forever".
                left = (ms.as_millis() as u64).max(1).to_string();
                args[timeout_at] = left.as_bytes();
            }
            let reply = self
                .block_once(
                    Target::pool(pool),
                    &Request::from_args(&args),
                    Some(OFFSET_MARKER),
                )
                .await;
            let Reply::Now(frame) = &reply else {
                return reply;
            };
            let Some(got) = counts(frame) else {
                return reply;
            };
            least = Some(match least {
                Some(least) if least.len() == got.len() => {
                    least.iter().zip(&got).map(|(a, b)| *a.min(b)).collect()
                }
                _ => got,
            });
        }
        let Some(least) = least else {
            return Reply::now(resp::error("ERR no backend to ask"));
        };
        let mut out = resp::ReplyBuf::new(self.client.proto);
        if let [n] = least.as_slice() {
            out.int(*n);
        } else {
            out.array(least.len());
            for n in &least {
                out.int(*n);
            }
        }
        Reply::now(out.freeze())
    }
}

#[cold]
fn on_cluster_pool(command: &str, pool: &str) -> Bytes {
    resp::error(&format!(
        "ERR '{}' is not supported by keyway on cluster pool '{pool}': the client's writes there span several masters",
        command.to_ascii_uppercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_written_remembers_each_pool_once() {
        let mut written = PoolsWritten::default();
        let ids: Vec<PoolId> = (0..40).map(PoolId::configured).collect();
        assert!(written.of(ids.iter().copied()).is_empty());
        written.note(ids[1]);
        written.note(ids[1]);
        written.note(ids[3]);
        assert_eq!(written.of(ids.iter().copied()), vec![ids[1], ids[3]]);
        // Beyond the bits: every pool beyond is asked.
        written.note(ids[35]);
        assert_eq!(
            written.of(ids.iter().copied()),
            [vec![ids[1], ids[3]], ids[32..].to_vec()].concat()
        );
    }

    #[test]
    fn counts_of_wait_and_waitaof_replies() {
        assert_eq!(counts(b":2\r\n").unwrap().as_slice(), &[2]);
        assert_eq!(counts(b"*2\r\n:1\r\n:0\r\n").unwrap().as_slice(), &[1, 0]);
        assert!(counts(b"-ERR timeout is negative\r\n").is_none());
    }

    #[test]
    fn the_marker_is_an_spublish_with_an_empty_message() {
        let marker = Request::from_args(&["SPUBLISH", "__keyway__:wait", ""]);
        assert_eq!(marker.bytes().as_ref(), OFFSET_MARKER);
    }
}
