//! Rate limits shared by every keyway that uses one configuration. Each
//! subject's GCRA state lives in a Redis pool under
//! `keyway:limit:{NAME}:SUBJECT`, expiring when the subject's bucket is full
//! again, and is decided there by one script call (`EVALSHA`, `EVAL` after
//! `NOSCRIPT`): one round trip, atomic across keyways. A keyway may take a
//! batch of permits per round trip and spend them locally.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use super::LimitKey;
use crate::backend::Pool;
use crate::config::{LimitConfig, SharedFailure};
use crate::resp::{shapes, Protocol, Request};

/// GCRA over the server's clock. KEYS[1]: the subject's key. ARGV: the
/// emission interval (µs), the burst, the permits wanted. Returns
/// `{granted, retry_after_us}`: as many permits as are free, up to those
/// wanted, or none and the wait until one is.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local free = math.floor((now + burst * interval - tat) / interval)
if free < 1 then
  return {0, tat - (burst - 1) * interval - now}
end
local granted = math.min(free, wanted)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {granted, 0}
"#;

/// How long the shared pool has to answer when no request timeout is set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Permits taken ahead are spent within this long, or dropped.
const MAX_HOLD: Duration = Duration::from_secs(1);
/// A shared pool that keeps failing is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the shared limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Limited: a permit frees up after this long.
    Wait(Duration),
}

/// Permits taken ahead for one subject.
struct Held {
    permits: u32,
    until: Instant,
}

pub struct Shared {
    pub pool: String,
    pub failure: SharedFailure,
    key_prefix: String,
    interval_us: u64,
    burst: u32,
    batch: u32,
    hold: Duration,
    held: DashMap<LimitKey, Held>,
    /// The script's SHA1, as `SCRIPT LOAD` answered it.
    sha: Mutex<Option<Bytes>>,
    last_warning: Mutex<Option<Instant>>,
}

impl Shared {
    pub fn new(config: &LimitConfig) -> Option<Shared> {
        if !config.shared {
            return None;
        }
        let interval_us = ((1e6 / config.rate).round() as u64).max(1);
        let batch = config.shared_batch.max(1);
        Some(Shared {
            pool: config.shared_pool.clone(),
            failure: config.shared_failure,
            key_prefix: format!("keyway:limit:{{{}}}:", config.name),
            interval_us,
            burst: config.burst.max(1),
            batch,
            // Held permits were spent from the shared budget when taken, so
            // holding them longer does not raise the bound (batch − 1 per
            // keyway and subject); the hold only keeps them from going stale.
            hold: MAX_HOLD,
            held: DashMap::new(),
            sha: Mutex::new(None),
            last_warning: Mutex::new(None),
        })
    }

    /// The Redis key of a subject (its text: an address, a user, a pool,
    /// a command, or `global`).
    pub fn key(&self, subject: &str) -> String {
        format!("{}{subject}", self.key_prefix)
    }

    /// Spends a permit taken ahead, if one is in hand and still fresh.
    pub fn take_held(&self, key: &LimitKey) -> bool {
        let Some(mut held) = self.held.get_mut(key) else {
            return false;
        };
        if held.permits == 0 || held.until < Instant::now() {
            drop(held);
            self.held.remove(key);
            return false;
        }
        held.permits -= 1;
        true
    }

    /// Asks the shared pool for a batch of permits for `key`; one is spent
    /// now, the rest kept for the next requests of the same subject.
    pub async fn ask(
        &self,
        pool: &Pool,
        key: &LimitKey,
        subject: &str,
    ) -> Result<Decision, String> {
        let timeout = match pool.settings().request_timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let reply = tokio::time::timeout(timeout, self.run_script(pool, subject))
            .await
            .map_err(|_| format!("no answer within {}ms", timeout.as_millis()))??;
        let (granted, wait_us) = match shapes::elements(&reply).as_deref() {
            Some([granted, wait]) => (shapes::integer(granted), shapes::integer(wait)),
            _ => (None, None),
        };
        match (granted, wait_us) {
            (Some(granted), _) if granted >= 1 => {
                if granted > 1 {
                    self.held.insert(
                        key.clone(),
                        Held {
                            permits: (granted - 1) as u32,
                            until: Instant::now() + self.hold,
                        },
                    );
                }
                Ok(Decision::Admit)
            }
            (Some(_), Some(wait)) => Ok(Decision::Wait(Duration::from_micros(wait.max(1) as u64))),
            _ => Err(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(120)])
            )),
        }
    }

    async fn run_script(&self, pool: &Pool, subject: &str) -> Result<Bytes, String> {
        let conn = pool
            .conn(0, Protocol::Resp2, 0)
            .await
            .map_err(|e| e.to_string())?;
        let key = self.key(subject);
        let (interval, burst, wanted) = (
            self.interval_us.to_string(),
            self.burst.to_string(),
            self.batch.to_string(),
        );
        let call = |verb: &str, body: &[u8]| {
            let args: [&[u8]; 7] = [
                verb.as_bytes(),
                body,
                b"1",
                key.as_bytes(),
                interval.as_bytes(),
                burst.as_bytes(),
                wanted.as_bytes(),
            ];
            Request::from_args(&args).bytes().clone()
        };
        let request = |bytes: Bytes| {
            let conn = conn.clone();
            async move {
                match conn.request(bytes).await {
                    Some(rx) => rx.await.map_err(|_| "connection lost".to_string()),
                    None => Err("connection closed".to_string()),
                }
            }
        };
        let sha = self.sha.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sha = match sha {
            Some(sha) => sha,
            None => {
                let loaded = request(
                    Request::from_args(&["SCRIPT", "LOAD", SCRIPT])
                        .bytes()
                        .clone(),
                )
                .await?;
                let sha = shapes::bulk(&loaded)
                    .map(Bytes::copy_from_slice)
                    .ok_or_else(|| {
                        format!(
                            "SCRIPT LOAD answered {:?}",
                            String::from_utf8_lossy(&loaded)
                        )
                    })?;
                *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = Some(sha.clone());
                sha
            }
        };
        let reply = request(call("EVALSHA", &sha)).await?;
        // A restarted or failed-over server has lost its script cache.
        if reply.starts_with(b"-NOSCRIPT") {
            return request(call("EVAL", SCRIPT.as_bytes())).await;
        }
        if shapes::is_error(&reply) {
            return Err(String::from_utf8_lossy(&reply).trim_end().to_string());
        }
        Ok(reply)
    }

    /// Whether a failure should be logged now (at most every WARN_EVERY).
    pub fn should_warn(&self) -> bool {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Drops permits whose time has passed.
    pub fn purge_idle(&self) {
        let now = Instant::now();
        self.held.retain(|_, h| h.permits > 0 && h.until >= now);
    }
}
