//! The periodic health probe: every interval each pool's backend answers
//! `INFO` on a short-lived connection. The result decides `/readyz`, sets
//! `keyway_backend_up`, and exports the fields the alert rules read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{request_once, Probe};
use crate::state::State;

/// The last value of each backend total seen, per (pool, field): what the
/// counters advance by on the next probe.
type Totals = HashMap<(String, &'static str), u64>;

pub async fn run(state: Arc<State>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut totals = Totals::new();
    loop {
        ticker.tick().await;
        probe_all(&state, interval, &mut totals).await;
    }
}

/// Probes every pool side by side, so one slow pool does not delay the others.
pub async fn probe_all(state: &Arc<State>, timeout: Duration, totals: &mut Totals) {
    let timeout = timeout.max(Duration::from_millis(500));
    // One snapshot: a reload meanwhile is probed on the next tick.
    let pools: Vec<_> = state
        .live()
        .backends
        .pools()
        .iter()
        .filter(|p| !(p.is_replica_pool() && p.endpoint().addr.is_none()))
        .cloned()
        .collect();
    let handles: Vec<_> = pools
        .iter()
        .map(|pool| {
            // A cluster pool is probed on a master it routes to.
            let endpoint = pool
                .cluster()
                .and_then(|c| c.master(None))
                .map_or_else(|| pool.endpoint(), |node| node.endpoint());
            tokio::spawn(async move { request_once(&endpoint, &["INFO"], timeout).await })
        })
        .collect();
    for (pool, handle) in pools.iter().zip(handles) {
        let result = handle.await.unwrap_or_else(|e| Err(e.to_string()));
        let name = pool.name();
        let mut probe = match result {
            Ok(reply) => match crate::resp::info::text(&reply) {
                Some(text) => {
                    let mut role = String::new();
                    for field in crate::resp::info::fields(&text) {
                        let value = field.value.trim();
                        if field.name == "role" {
                            role = value.to_string();
                        }
                        export(state, totals, name, field.name, value);
                    }
                    Probe {
                        ok: Some(true),
                        reason: String::new(),
                        role,
                    }
                }
                None => Probe {
                    ok: Some(false),
                    reason: String::from_utf8_lossy(&reply).trim().to_string(),
                    role: String::new(),
                },
            },
            Err(reason) => Probe {
                ok: Some(false),
                reason,
                role: String::new(),
            },
        };
        if let Some(cluster) = pool.cluster() {
            // Ready only while every slot has a master.
            let covered = cluster.map().covered();
            if covered < crate::cluster::SLOTS && probe.ok == Some(true) {
                probe.ok = Some(false);
                probe.reason = format!(
                    "{} of {} hash slots have no master",
                    crate::cluster::SLOTS - covered,
                    crate::cluster::SLOTS
                );
            }
        }
        state
            .metrics
            .backend_up
            .with_label_values(&[name])
            .set(i64::from(probe.ok == Some(true)));
        state
            .metrics
            .backend_connections
            .with_label_values(&[name, "multiplexed"])
            .set(pool.multiplexed() as i64);
        state
            .metrics
            .backend_connections
            .with_label_values(&[name, "leased"])
            .set(pool.leased() as i64);
        // Changes are logged: a pool down from the start shows within one
        // interval, not when a client first touches it.
        match (pool.probe().ok, probe.ok) {
            (Some(true) | None, Some(false)) => {
                tracing::warn!(pool = %name, address = %pool.endpoint().address(), reason = %probe.reason, "pool unreachable")
            }
            (Some(false), Some(true)) => {
                tracing::info!(pool = %name, address = %pool.endpoint().address(), "pool reachable again")
            }
            _ => {}
        }
        pool.set_probe(probe);
    }
}

/// One INFO field into its typed family, if keyway exports it.
fn export(state: &State, totals: &mut Totals, pool: &str, field: &str, value: &str) {
    let metrics = &state.metrics;
    if let Some((_, gauge)) = metrics.backend_gauges.iter().find(|(f, _)| *f == field) {
        if let Ok(v) = value.parse::<i64>() {
            gauge.with_label_values(&[pool]).set(v);
        }
        return;
    }
    let Some((field, counter)) = metrics.backend_counters.iter().find(|(f, _)| *f == field) else {
        return;
    };
    let Ok(now) = value.parse::<u64>() else {
        return;
    };
    let last = totals.insert((pool.to_string(), field), now);
    // The first sight, or a restarted backend counting from 0 again:
    // everything it reports is new.
    let advance = match last {
        Some(last) if now >= last => now - last,
        _ => now,
    };
    counter.with_label_values(&[pool]).inc_by(advance);
}
