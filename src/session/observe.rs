//! The one place a completed reply is counted: the command's outcome and
//! latency, INFO's error stats, error kinds, cache hits and misses, and the
//! slow log. Replies resolve without side effects; `Output` hands each one
//! here once, as it takes it for the client, and an `Observer` lives for
//! one batch of replies: its series are the thread's own, added to the
//! shared ones before they are read (see `metrics::CommandSeries`).

use std::time::{Duration, Instant};

use super::reply::{CacheCount, Meta, Observed, Source};
use crate::metrics::PoolKey;
use crate::resp::{self, shapes};
use crate::state::{Live, State};

pub struct Observer<'a> {
    state: &'a State,
    /// The configuration the session runs under.
    live: &'a Live,
    /// One clock read for the whole batch, taken with its first reply.
    now: Option<Instant>,
    /// The last reply's start and time taken: the requests of one read
    /// share their start, so most of a batch reuses it.
    last: Option<(Instant, Duration)>,
    /// Adds the thread's series to the shared ones when the batch ends
    /// (several worker threads: nobody else can; see `metrics`).
    flush: bool,
}

impl<'a> Observer<'a> {
    pub fn new(state: &'a State, live: &'a Live, flush: bool) -> Observer<'a> {
        Observer {
            state,
            live,
            now: None,
            last: None,
            flush,
        }
    }

    /// A reply that went to the backends, as the client will get it.
    pub fn reply(&mut self, seen: Observed<'_>, reply: &[u8]) {
        if !self.live.config.server.metrics {
            return;
        }
        let pool = match seen.pool {
            // Replica pools are found by id too; a pool a reload removed
            // keeps the name the router last gave it.
            Some(id) => match self.live.backends.get(id) {
                Some(p) => p.name(),
                None => self.live.router.pool_name(id),
            },
            None => "multi",
        };
        let key = seen.pool.map(|id| PoolKey {
            generation: self.live.generation,
            id,
        });
        let meta = seen.meta;
        let m = &self.state.metrics;
        let error = shapes::is_error(reply);
        let elapsed = match self.last {
            Some((started, elapsed)) if started == meta.started => elapsed,
            _ => {
                let now = *self.now.get_or_insert_with(Instant::now);
                let elapsed = now.saturating_duration_since(meta.started);
                self.last = Some((meta.started, elapsed));
                elapsed
            }
        };
        match key {
            Some(key) => m.record_reply(meta.command, key, pool, error, elapsed.as_secs_f64()),
            None => m.record_command(meta.command, pool, error, elapsed.as_secs_f64()),
        }
        if meta.retried.is_some() || error {
            self.failure(&seen, error, reply);
        }
        if self.state.slowlog.logs(elapsed) {
            slow(self.state, meta, pool, elapsed);
        }
        let (hits, misses) = match meta.cache {
            CacheCount::No => return,
            CacheCount::Single if !error => match resp::is_nil(reply) {
                true => (0, 1),
                false => (1, 0),
            },
            CacheCount::Single => return,
            CacheCount::PerElement => match shapes::elements(reply) {
                Some(e) => {
                    let nil = e.iter().filter(|f| resp::is_nil(f)).count() as u64;
                    (e.len() as u64 - nil, nil)
                }
                None => return,
            },
        };
        let live = self.live;
        m.record_cache(
            pool,
            key,
            (live.generation, meta.route),
            || live.router.route_label(meta.route).into_owned(),
            hits,
            misses,
        );
    }
}

impl Observer<'_> {
    /// A retried request, or an error reply: counted by kind.
    #[cold]
    #[inline(never)]
    fn failure(&self, seen: &Observed<'_>, error: bool, reply: &[u8]) {
        let m = &self.state.metrics;
        if let Some(retry) = seen.meta.retried {
            m.errors.with_label_values(&[retry.label()]).inc();
        }
        if error {
            self.state.stats.commands.error_reply(reply);
            let kind = match seen.source {
                Source::Backend => crate::metrics::error_reply_kind(reply),
                Source::TimedOut => "timeout",
                Source::ConnectionLost => "connection_lost",
            };
            m.errors.with_label_values(&[kind]).inc();
        }
    }
}

impl Drop for Observer<'_> {
    fn drop(&mut self) {
        // Before any of the batch is written: a client that reads a reply
        // and then scrapes /metrics finds it counted.
        if self.flush {
            crate::metrics::flush_thread_local();
        }
    }
}

/// A command keyway answered itself goes to the slow log like any other.
pub fn answered_locally(state: &State, meta: &Meta) {
    let elapsed = meta.started.elapsed();
    if state.slowlog.logs(elapsed) {
        slow(state, meta, "keyway", elapsed);
    }
}

#[cold]
#[inline(never)]
fn slow(state: &State, meta: &Meta, pool: &str, elapsed: Duration) {
    state.metrics.slow_commands.with_label_values(&[pool]).inc();
    let mut parser = crate::resp::RequestParser::default();
    let mut buf = bytes::BytesMut::from(&meta.request[..]);
    let args = match parser.next(&mut buf) {
        Ok(Some(r)) => crate::slowlog::trim_args(r.args()),
        _ => Vec::new(),
    };
    let (addr, name, user) = state
        .clients
        .get(&meta.client)
        .map(|c| (c.addr.to_string(), c.name.clone(), c.user.clone()))
        .unwrap_or_default();
    state.slowlog.record(crate::slowlog::Entry {
        id: 0,
        unix_time: 0,
        duration: elapsed,
        args,
        client_addr: addr,
        client_name: name,
        pool: pool.to_string(),
        user,
    });
}
