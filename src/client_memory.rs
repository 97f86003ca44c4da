//! The memory all clients together make keyway hold — requests read but
//! not yet complete or handled, replies owed, transactions queued —
//! bounded by `server.max_client_memory`, as Redis bounds its clients with
//! `maxmemory-clients`: past the bound the client holding the most is
//! closed, so one tenant's uploads or unread replies cannot get the
//! process (and every other tenant with it) killed for memory.
//!
//! Each client's bounds (`max_bulk_bytes`, `client_output_limit_bytes`,
//! `max_transaction_bytes`) limit what one client holds; this limits their
//! sum. A client holding less than `UNCOUNTED` is not counted, so ordinary
//! requests never touch the shared total.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a client may hold without being counted: a full read buffer and
/// more. Clients below it together are bounded by `max_clients`.
pub const UNCOUNTED: usize = 64 * 1024;

/// What keyway keeps for itself out of a container's memory limit.
const OWN_USE: u64 = 64 * 1024 * 1024;

/// The shared total and its bound.
#[derive(Debug, Default)]
pub struct ClientMemory {
    used: AtomicUsize,
    /// 0: unbounded.
    limit: AtomicUsize,
}

impl ClientMemory {
    pub fn new(limit: usize) -> ClientMemory {
        ClientMemory {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    /// A reload's bound.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the clients together hold more than the bound.
    pub fn over(&self) -> bool {
        let limit = self.limit();
        limit != 0 && self.used() > limit
    }

    /// Sets a client's counted share (`share`) to `now`; true when that
    /// took the total past the bound.
    pub fn update(&self, share: &AtomicUsize, now: usize) -> bool {
        let old = share.swap(now, Ordering::Relaxed);
        if now > old {
            self.used.fetch_add(now - old, Ordering::Relaxed);
            self.over()
        } else {
            self.used.fetch_sub(old - now, Ordering::Relaxed);
            false
        }
    }

    /// Takes a client's whole share out of the total (it is being closed,
    /// or it left); what it held.
    pub fn release(&self, share: &AtomicUsize) -> usize {
        let held = share.swap(0, Ordering::Relaxed);
        self.used.fetch_sub(held, Ordering::Relaxed);
        held
    }
}

/// What a client's held bytes count for: nothing below `UNCOUNTED`.
#[inline]
pub fn counted(held: usize) -> usize {
    if held < UNCOUNTED {
        0
    } else {
        held
    }
}

/// The bound a configuration sets.
pub fn limit_of(server: &crate::config::ServerConfig) -> usize {
    server.max_client_memory.unwrap_or_else(automatic_limit)
}

/// The bound and where it came from, for `--check`.
pub fn describe(server: &crate::config::ServerConfig) -> String {
    let (limit, from) = match server.max_client_memory {
        Some(limit) => (limit, "server.max_client_memory"),
        None => match container_limit() {
            Some(_) => (
                automatic_limit(),
                "the container's memory limit less 64 MiB, at least half of it",
            ),
            None => (automatic_limit(), "half the machine's memory"),
        },
    };
    match limit {
        0 => format!("clients together: no memory bound ({from} = 0)"),
        _ => format!(
            "clients together may hold {} MiB ({from}); past it the one holding the most is closed",
            limit / (1024 * 1024)
        ),
    }
}

/// `server.max_client_memory` when not set: the container's memory limit
/// less what keyway keeps for itself (at least half of it), else half of
/// the machine's memory; 0 (unbounded) when neither can be read.
pub fn automatic_limit() -> usize {
    let bound = container_limit()
        .map(|limit| limit.saturating_sub(OWN_USE).max(limit / 2))
        .or_else(|| machine_memory().map(|total| total / 2))
        .unwrap_or(0);
    usize::try_from(bound).unwrap_or(usize::MAX)
}

/// The cgroup's memory limit (v2 `memory.max`, else v1), if one is set.
fn container_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| parse_limit(&std::fs::read_to_string(path).ok()?))
}

/// A cgroup limit file's value: "max" (v2) or a page-rounded `i64::MAX`
/// (v1) mean none.
fn parse_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_the_sum_of_the_shares() {
        let memory = ClientMemory::new(1000);
        let (a, b) = (AtomicUsize::new(0), AtomicUsize::new(0));
        assert!(!memory.update(&a, 600));
        assert!(memory.update(&b, 500), "1,100 of 1,000");
        assert!(!memory.update(&b, 300));
        assert_eq!(memory.used(), 900);
        assert_eq!(memory.release(&a), 600);
        assert_eq!(memory.used(), 300);
        // A share released by another thread is not released twice.
        assert_eq!(memory.release(&a), 0);
        assert!(!memory.update(&b, 0));
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn an_unbounded_total_is_never_over() {
        let memory = ClientMemory::new(0);
        assert!(!memory.update(&AtomicUsize::new(0), usize::MAX / 2));
    }

    #[test]
    fn small_holdings_are_not_counted() {
        assert_eq!(counted(UNCOUNTED - 1), 0);
        assert_eq!(counted(UNCOUNTED), UNCOUNTED);
    }

    #[test]
    fn cgroup_limits_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
        // A 256 MiB container: 192 MiB for clients.
        let limit = 268_435_456u64;
        assert_eq!(limit.saturating_sub(OWN_USE).max(limit / 2), 201_326_592);
    }
}
