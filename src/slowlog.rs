//! keyway's own slow log: commands slower than the threshold (from parsed
//! request to reply ready), kept in a bounded ring and served by
//! `SLOWLOG GET / LEN / RESET` through keyway, with the pool that ran them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::resp::{Protocol, ReplyBuf};

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub unix_time: u64,
    pub duration: Duration,
    pub args: Vec<Bytes>,
    pub client_addr: String,
    pub client_name: String,
    pub pool: String,
    /// The keyway user the client was authenticated as: who may read the
    /// entry (its arguments are that tenant's keys and values).
    pub user: String,
}

pub struct SlowLog {
    /// Microseconds, as Redis's `slowlog-log-slower-than`: negative logs
    /// nothing, 0 logs everything. CONFIG SET through keyway changes it.
    threshold_us: AtomicI64,
    max_len: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: VecDeque<Entry>,
}

/// Redis keeps at most this many arguments, each cut to this many bytes.
const MAX_ARGS: usize = 32;
const MAX_ARG_LEN: usize = 128;

/// What Redis shows in place of a secret argument.
const REDACTED: &[u8] = b"(redacted)";

/// Which arguments are secrets, as Redis redacts them in its slow log:
/// every argument of AUTH, the credentials after HELLO's AUTH and
/// MIGRATE's AUTH/AUTH2, the value of CONFIG SET requirepass/masterauth,
/// and the rules of ACL SETUSER.
fn secrets(args: &[&[u8]]) -> Vec<bool> {
    let mut secret = vec![false; args.len()];
    let is = |i: usize, word: &str| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    };
    let mut hide = |from: usize, count: usize| {
        for s in secret.iter_mut().skip(from).take(count) {
            *s = true;
        }
    };
    if is(0, "auth") {
        hide(1, args.len());
    } else if is(0, "hello") || is(0, "migrate") {
        for i in 1..args.len() {
            if is(i, "auth") {
                hide(i + 1, if is(0, "hello") { 2 } else { 1 });
            } else if is(i, "auth2") {
                hide(i + 1, 2);
            }
        }
    } else if is(0, "config") && is(1, "set") {
        for i in (2..args.len()).step_by(2) {
            if is(i, "requirepass") || is(i, "masterauth") {
                hide(i + 1, 1);
            }
        }
    } else if is(0, "acl") && is(1, "setuser") {
        hide(3, args.len());
    }
    secret
}

/// The arguments as Redis's slow log shows them, secrets redacted.
pub fn trim_args<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<Bytes> {
    let args: Vec<&[u8]> = args.collect();
    let secret = secrets(&args);
    let total = args.len();
    let mut out = Vec::new();
    for (i, arg) in args.into_iter().enumerate() {
        let arg = if secret[i] { REDACTED } else { arg };
        if i == MAX_ARGS - 1 && total > MAX_ARGS {
            out.push(Bytes::from(format!(
                "... ({} more arguments)",
                total - MAX_ARGS + 1
            )));
            break;
        }
        if arg.len() > MAX_ARG_LEN {
            let mut cut = arg[..MAX_ARG_LEN].to_vec();
            cut.extend_from_slice(
                format!("... ({} more bytes)", arg.len() - MAX_ARG_LEN).as_bytes(),
            );
            out.push(Bytes::from(cut));
        } else {
            out.push(Bytes::copy_from_slice(arg));
        }
    }
    out
}

impl SlowLog {
    pub fn new(threshold: Duration, max_len: usize) -> SlowLog {
        SlowLog {
            threshold_us: AtomicI64::new(threshold.as_micros().min(i64::MAX as u128) as i64),
            max_len: AtomicUsize::new(max_len),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether a command that took `elapsed` belongs in the log.
    #[inline]
    pub fn logs(&self, elapsed: Duration) -> bool {
        let threshold = self.threshold_us.load(Ordering::Relaxed);
        threshold >= 0 && elapsed.as_micros() >= threshold as u128
    }

    /// `CONFIG SET slowlog-log-slower-than` (µs; negative turns it off).
    pub fn set_threshold_us(&self, us: i64) {
        self.threshold_us.store(us, Ordering::Relaxed);
    }

    /// `CONFIG SET slowlog-max-len`.
    pub fn set_max_len(&self, len: usize) {
        self.max_len.store(len, Ordering::Relaxed);
        self.lock().entries.truncate(len);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, mut entry: Entry) {
        let mut inner = self.lock();
        entry.id = inner.next_id;
        entry.unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        inner.next_id += 1;
        inner.entries.push_front(entry);
        let max = self.max_len.load(Ordering::Relaxed);
        inner.entries.truncate(max);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// `SLOWLOG LEN` for a reader who may see only some entries.
    pub fn len_visible(&self, visible: impl Fn(&Entry) -> bool) -> usize {
        self.lock().entries.iter().filter(|e| visible(e)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&self) {
        self.lock().entries.clear();
    }

    /// `SLOWLOG GET [count]`: newest first, Redis's entry layout plus the
    /// pool; only the entries `visible` lets this reader see.
    pub fn render(
        &self,
        count: Option<usize>,
        proto: Protocol,
        visible: impl Fn(&Entry) -> bool,
    ) -> Bytes {
        let inner = self.lock();
        let shown: Vec<&Entry> = inner
            .entries
            .iter()
            .filter(|e| visible(e))
            .take(count.unwrap_or(10))
            .collect();
        let mut r = ReplyBuf::new(proto);
        r.array(shown.len());
        for e in shown {
            r.array(7)
                .int(e.id as i64)
                .int(e.unix_time as i64)
                .int(e.duration.as_micros() as i64);
            r.array(e.args.len());
            for a in &e.args {
                r.bulk(a);
            }
            r.bulk(e.client_addr.as_bytes())
                .bulk(e.client_name.as_bytes())
                .bulk(e.pool.as_bytes());
        }
        r.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(command: &str) -> Vec<String> {
        let args: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
        trim_args(args.into_iter())
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn secrets_are_redacted_as_redis_redacts_them() {
        assert_eq!(shown("AUTH app pw"), ["AUTH", "(redacted)", "(redacted)"]);
        assert_eq!(
            shown("HELLO 3 AUTH app pw SETNAME n"),
            [
                "HELLO",
                "3",
                "AUTH",
                "(redacted)",
                "(redacted)",
                "SETNAME",
                "n"
            ]
        );
        assert_eq!(
            shown("MIGRATE h 1 k 0 10 AUTH2 u pw KEYS a"),
            [
                "MIGRATE",
                "h",
                "1",
                "k",
                "0",
                "10",
                "AUTH2",
                "(redacted)",
                "(redacted)",
                "KEYS",
                "a"
            ]
        );
        assert_eq!(
            shown("MIGRATE h 1 k 0 10 auth pw"),
            ["MIGRATE", "h", "1", "k", "0", "10", "auth", "(redacted)"]
        );
        assert_eq!(
            shown("CONFIG SET maxmemory 1 requirepass pw"),
            [
                "CONFIG",
                "SET",
                "maxmemory",
                "1",
                "requirepass",
                "(redacted)"
            ]
        );
        assert_eq!(
            shown("ACL SETUSER u on >pw"),
            ["ACL", "SETUSER", "u", "(redacted)", "(redacted)"]
        );
        assert_eq!(shown("GET auth"), ["GET", "auth"]);
    }
}
