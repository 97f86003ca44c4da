//! SCAN over a cluster pool by hash slot, so a key is returned once even
//! while slots move between masters. The cursor is the next slot to visit.
//! Each batch of slots is read with `CLUSTER GETKEYSINSLOT` from every
//! master, twice, one round after the other: a key migrating from X to Y
//! is on X when the first round asks X, or on Y when the second round asks
//! Y (the second round starts after the first ended), so it is found; the
//! rounds' answers are merged without duplicates.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use super::{Cluster, SLOTS};
use crate::resp::{shapes, Protocol, ReplyBuf, Request};

/// Slots read per round trip to each master.
const BATCH: usize = 64;
/// Slots one SCAN call visits at most, however few keys they hold.
const MAX_SLOTS_PER_CALL: usize = 1024;
/// Keys read from one slot at most (`GETKEYSINSLOT`'s count).
pub const MAX_KEYS_PER_SLOT: usize = 100_000;

/// What one SCAN call asked for.
pub struct ScanArgs {
    /// The slot to start at (the client's cursor for this pool).
    pub from: usize,
    pub count: usize,
    pub pattern: Option<Bytes>,
}

impl Cluster {
    /// One SCAN step: keys of slots from `args.from` on until `count` keys
    /// or MAX_SLOTS_PER_CALL slots, as a SCAN reply whose cursor is the
    /// next slot (0 when every slot was visited).
    pub async fn scan_slots(self: &Arc<Self>, args: ScanArgs, proto: Protocol) -> Bytes {
        let mut keys: Vec<Bytes> = Vec::new();
        let mut slot = args.from.min(SLOTS);
        let stop = (slot + MAX_SLOTS_PER_CALL).min(SLOTS);
        while slot < stop && keys.len() < args.count.max(1) {
            let end = (slot + BATCH).min(stop);
            match self.keys_in_slots(slot, end, proto).await {
                Ok(found) => keys.extend(found.into_iter().filter(|k| match &args.pattern {
                    Some(p) => glob_match(p, k),
                    None => true,
                })),
                Err(error) => return error,
            }
            slot = end;
        }
        let next = if slot >= SLOTS { 0 } else { slot };
        let mut out = ReplyBuf::new(proto);
        out.array(2)
            .bulk(next.to_string().as_bytes())
            .array(keys.len());
        for key in &keys {
            out.bulk(key);
        }
        out.freeze()
    }

    /// The keys of slots `start..end` on every master, read twice.
    async fn keys_in_slots(
        self: &Arc<Self>,
        start: usize,
        end: usize,
        proto: Protocol,
    ) -> Result<Vec<Bytes>, Bytes> {
        let mut seen: HashSet<Bytes> = HashSet::new();
        for _round in 0..2 {
            let masters = self.masters();
            let mut replies = Vec::with_capacity(masters.len() * (end - start));
            for node in &masters {
                let conn = node.conn(0, proto, 0).await.map_err(|e| e.to_resp())?;
                for slot in start..end {
                    let request = Request::from_args(&[
                        "CLUSTER",
                        "GETKEYSINSLOT",
                        &slot.to_string(),
                        &MAX_KEYS_PER_SLOT.to_string(),
                    ]);
                    let rx = conn.request(request.bytes().clone()).await.ok_or_else(|| {
                        crate::backend::BackendError::ConnectionLost {
                            pool: self.name.clone(),
                        }
                        .to_resp()
                    })?;
                    replies.push(rx);
                }
            }
            // Every reply of this round before the next round is sent.
            for rx in replies {
                let reply = rx.await.map_err(|_| {
                    crate::backend::BackendError::ConnectionLost {
                        pool: self.name.clone(),
                    }
                    .to_resp()
                })?;
                if shapes::is_error(&reply) {
                    return Err(reply);
                }
                for key in shapes::elements(&reply).unwrap_or_default() {
                    if let Some(k) = shapes::bulk(key) {
                        seen.insert(Bytes::copy_from_slice(k));
                    }
                }
            }
        }
        Ok(seen.into_iter().collect())
    }
}

/// Redis's glob (`stringmatchlen`): `*`, `?`, `[...]` with ranges and `^`
/// negation, `\` escapes; case-sensitive.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text position).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last `*` take one more character.
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at `pattern[at]` against `c`: whether it matches and
/// where the pattern goes on. `None` for an unterminated class, which Redis
/// treats as running to the end of the pattern.
fn class(pattern: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (a, b) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (a..=b).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    // Past the `]` (or the end, unterminated).
    let next = (i + 1).min(pattern.len());
    Some((matched != negate, next))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_as_redis_matches_them() {
        let yes = [
            ("*", "anything"),
            ("user:*", "user:42"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("a*b*c", "axxbyyc"),
            ("\\*x", "*x"),
            ("", ""),
        ];
        for (p, t) in yes {
            assert!(glob_match(p.as_bytes(), t.as_bytes()), "{p} ~ {t}");
        }
        let no = [
            ("user:*", "session:1"),
            ("h?llo", "hllo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("a*b*c", "axxbyy"),
            ("\\*x", "ax"),
            ("abc", "abcd"),
        ];
        for (p, t) in no {
            assert!(!glob_match(p.as_bytes(), t.as_bytes()), "{p} !~ {t}");
        }
    }
}
