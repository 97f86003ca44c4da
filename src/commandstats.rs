//! INFO's Commandstats, Errorstats and Latencystats for keyway's own
//! clients, in Redis's shapes: calls and times from the command metrics,
//! error replies by their first word (bounded, as Redis bounds them), and
//! calls refused before they ran.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use prometheus::core::Collector;

use crate::metrics::Metrics;

/// Redis stops adding error kinds after 128, so a script inventing error
/// prefixes cannot grow the table.
const MAX_ERROR_KINDS: usize = 128;
/// Longest error prefix kept; longer first words are not error codes.
const MAX_ERROR_PREFIX: usize = 64;

#[derive(Default)]
pub struct CommandStats {
    /// `errorstat_<PREFIX>:count=` figures.
    by_prefix: Mutex<BTreeMap<String, u64>>,
    /// Calls of each command refused before they ran (`rejected_calls`).
    rejected: Mutex<HashMap<&'static str, u64>>,
    /// The metrics' figures at the last CONFIG RESETSTAT, subtracted from
    /// them: Prometheus counters only grow.
    baseline: Mutex<BTreeMap<String, CommandFigures>>,
}

impl CommandStats {
    /// Counts an error reply (`-PREFIX message`) under its prefix.
    pub fn error_reply(&self, reply: &[u8]) {
        let body = match reply.first() {
            Some(b'-' | b'!') => &reply[1..],
            _ => return,
        };
        // RESP3 blob errors (`!len\r\nPREFIX …`): the text follows the length.
        let body = match reply[0] {
            b'!' => body
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body, |i| &body[i + 1..]),
            _ => body,
        };
        let end = body
            .iter()
            .position(|&b| b == b' ' || b == b'\r')
            .unwrap_or(body.len());
        let prefix = &body[..end];
        if prefix.is_empty()
            || prefix.len() > MAX_ERROR_PREFIX
            || !prefix.iter().all(|b| b.is_ascii_graphic())
        {
            return;
        }
        let prefix = String::from_utf8_lossy(prefix);
        let mut map = self.by_prefix.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(prefix.as_ref()) {
            *n += 1;
        } else if map.len() < MAX_ERROR_KINDS {
            map.insert(prefix.into_owned(), 1);
        }
    }

    /// A call of `command` refused before it ran; its reply is counted too.
    pub fn rejected(&self, command: &'static str, reply: &[u8]) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(command)
            .or_default() += 1;
        self.error_reply(reply);
    }

    pub fn render_errorstats(&self) -> String {
        let map = self.by_prefix.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from("# Errorstats\r\n");
        for (prefix, count) in map.iter() {
            out.push_str(&format!("errorstat_{prefix}:count={count}\r\n"));
        }
        out
    }

    /// CONFIG RESETSTAT: every figure starts again from zero.
    pub fn reset(&self, metrics: &Metrics) {
        let now = figures(metrics);
        *self.baseline.lock().unwrap_or_else(|p| p.into_inner()) = now;
        self.by_prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Each command's figures since the last reset.
    fn since_reset(&self, metrics: &Metrics) -> BTreeMap<String, CommandFigures> {
        let mut all = figures(metrics);
        let baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        for (name, f) in all.iter_mut() {
            let Some(base) = baseline.get(name) else {
                continue;
            };
            f.calls = f.calls.saturating_sub(base.calls);
            f.failed = f.failed.saturating_sub(base.failed);
            f.seconds = (f.seconds - base.seconds).max(0.0);
            for (slot, old) in f.buckets.iter_mut().zip(&base.buckets) {
                slot.1 = slot.1.saturating_sub(old.1);
            }
        }
        all.retain(|_, f| f.calls > 0);
        all
    }

    fn rejected_of(&self, command: &str) -> u64 {
        let map = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        map.get(command).copied().unwrap_or(0)
    }

    fn rejected_commands(&self) -> Vec<&'static str> {
        let map = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().copied().collect()
    }
}

/// One command's figures, over every pool.
#[derive(Default, Clone)]
struct CommandFigures {
    calls: u64,
    failed: u64,
    seconds: f64,
    /// Cumulative counts per bucket upper bound (seconds), as Prometheus keeps them.
    buckets: Vec<(f64, u64)>,
}

fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

fn figures(metrics: &Metrics) -> BTreeMap<String, CommandFigures> {
    // INFO runs on a session's thread: what it recorded counts too.
    crate::metrics::flush_thread_local();
    let mut all: BTreeMap<String, CommandFigures> = BTreeMap::new();
    for family in metrics.commands.collect() {
        for m in family.get_metric() {
            let entry = all.entry(label(m, "command").to_string()).or_default();
            let n = m.get_counter().get_value() as u64;
            entry.calls += n;
            if label(m, "outcome") == "error" {
                entry.failed += n;
            }
        }
    }
    for family in metrics.command_duration.collect() {
        for m in family.get_metric() {
            let entry = all.entry(label(m, "command").to_string()).or_default();
            let h = m.get_histogram();
            entry.seconds += h.get_sample_sum();
            for (i, b) in h.get_bucket().iter().enumerate() {
                match entry.buckets.get_mut(i) {
                    Some(slot) => slot.1 += b.cumulative_count(),
                    None => entry.buckets.push((b.upper_bound(), b.cumulative_count())),
                }
            }
        }
    }
    all.remove("other");
    all
}

/// `# Commandstats`: `cmdstat_get:calls=…,usec=…,usec_per_call=…,rejected_calls=…,failed_calls=…`.
pub fn render_commandstats(metrics: &Metrics, errors: &CommandStats) -> String {
    let mut all = errors.since_reset(metrics);
    for command in errors.rejected_commands() {
        all.entry(command.to_string()).or_default();
    }
    let mut out = String::from("# Commandstats\r\n");
    for (name, f) in &all {
        let usec = (f.seconds * 1e6).round() as u64;
        let per_call = if f.calls > 0 {
            usec as f64 / f.calls as f64
        } else {
            0.0
        };
        out.push_str(&format!(
            "cmdstat_{name}:calls={},usec={usec},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
            f.calls,
            errors.rejected_of(name),
            f.failed,
        ));
    }
    out
}

/// `# Latencystats`: p50, p99 and p99.9 per command, in microseconds, as
/// the upper bound of the histogram bucket each falls in.
pub fn render_latencystats(metrics: &Metrics, stats: &CommandStats) -> String {
    let mut out = String::from("# Latencystats\r\n");
    for (name, f) in stats.since_reset(metrics) {
        let Some(&(_, total)) = f.buckets.last() else {
            continue;
        };
        if total == 0 {
            continue;
        }
        let at = |q: f64| {
            let rank = (q * total as f64).ceil() as u64;
            let bound = f
                .buckets
                .iter()
                .find(|(_, count)| *count >= rank)
                .map_or(f64::INFINITY, |(bound, _)| *bound);
            // Past the last finite bucket: the mean is the best known figure.
            let seconds = if bound.is_finite() {
                bound
            } else {
                f.seconds / total as f64
            };
            seconds * 1e6
        };
        out.push_str(&format!(
            "latency_percentiles_usec_{name}:p50={:.3},p99={:.3},p99.9={:.3}\r\n",
            at(0.5),
            at(0.99),
            at(0.999)
        ));
    }
    out
}

/// LATENCY HISTOGRAM [command ...] in Redis's shape: per command its calls
/// and `histogram_usec`, bucket upper bounds (µs) with cumulative counts,
/// a bucket listed where the count grows. The buckets are keyway's metric
/// buckets, not Redis's powers of two.
pub fn latency_histogram(
    metrics: &Metrics,
    stats: &CommandStats,
    proto: crate::resp::Protocol,
    only: &[String],
) -> bytes::Bytes {
    let all = stats.since_reset(metrics);
    let chosen: Vec<(&String, &CommandFigures)> = all
        .iter()
        .filter(|(name, f)| f.calls > 0 && (only.is_empty() || only.contains(name)))
        .collect();
    let mut r = crate::resp::ReplyBuf::new(proto);
    r.map(chosen.len());
    for (name, f) in chosen {
        let mut steps = Vec::new();
        let mut previous = 0;
        for &(bound, count) in &f.buckets {
            if count > previous && bound.is_finite() {
                steps.push(((bound * 1e6).round() as i64, count as i64));
                previous = count;
            }
        }
        r.bulk(name.as_bytes()).map(2);
        r.bulk(b"calls").int(f.calls as i64);
        r.bulk(b"histogram_usec").map(steps.len());
        for (bound, count) in steps {
            r.int(bound).int(count);
        }
    }
    r.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_prefixes_are_counted_and_bounded() {
        let e = CommandStats::default();
        e.error_reply(b"-ERR unknown command\r\n");
        e.error_reply(b"-WRONGTYPE Operation\r\n");
        e.error_reply(b"-ERR x\r\n");
        e.error_reply(b"!9\r\nNOSCRIPT x\r\n");
        e.error_reply(b"+OK\r\n");
        for i in 0..500 {
            e.error_reply(format!("-E{i} x\r\n").as_bytes());
        }
        let text = e.render_errorstats();
        assert!(text.contains("errorstat_ERR:count=2\r\n"), "{text}");
        assert!(text.contains("errorstat_WRONGTYPE:count=1\r\n"), "{text}");
        assert!(text.contains("errorstat_NOSCRIPT:count=1\r\n"), "{text}");
        assert_eq!(text.lines().count(), 1 + MAX_ERROR_KINDS, "bounded");
    }

    #[test]
    fn commandstats_have_redis_shape() {
        let m = Metrics::new();
        m.record_command("get", "cache", false, 0.000_010);
        m.record_command("get", "session", true, 0.000_030);
        crate::metrics::flush_thread_local();
        let e = CommandStats::default();
        e.rejected("get", b"-NOPERM x\r\n");
        let text = render_commandstats(&m, &e);
        assert!(
            text.contains("cmdstat_get:calls=2,usec=40,usec_per_call=20.00,rejected_calls=1,failed_calls=1\r\n"),
            "{text}"
        );
        let lat = render_latencystats(&m, &e);
        e.reset(&m);
        assert_eq!(render_commandstats(&m, &e), "# Commandstats\r\n");
        m.record_command("get", "cache", false, 0.000_010);
        crate::metrics::flush_thread_local();
        assert!(render_commandstats(&m, &e).contains("cmdstat_get:calls=1,usec=10,"));
        assert!(
            lat.starts_with("# Latencystats\r\nlatency_percentiles_usec_get:p50="),
            "{lat}"
        );
    }
}
