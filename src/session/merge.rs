//! Putting fan-out replies back together with Redis's own semantics: MGET
//! in the order asked, counts summed, MSET OK only if all parts were, KEYS
//! concatenated, SCAN with a cursor that says which pool it is in, INFO.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::BackendError;
use crate::resp::{self, shapes, Protocol, ReplyBuf};
use crate::route::PoolId;
use crate::state::State;

pub enum Merge {
    /// `positions[i]`: where part i's values go among `keys` values.
    Mget {
        keys: usize,
        positions: Vec<Vec<usize>>,
    },
    AllOk,
    /// At least one part said OK (SCRIPT KILL: only the busy pool can).
    AnyOk,
    /// Every part agreed; the first reply stands for all (SCRIPT LOAD).
    First,
    SumIntegers,
    /// The sum less a count of duplicates keyway itself caused (PUBSUB
    /// NUMPAT: one pattern subscribed on several servers).
    SumLess(i64),
    /// `[name, n, name, n]` replies summed per position (PUBSUB NUMSUB).
    SumPairs,
    /// Element-wise AND of 0/1 arrays (SCRIPT EXISTS: loaded everywhere).
    AllExist,
    ConcatArrays,
    /// The first non-nil reply (the parts come in a random order).
    FirstNonNil,
    /// One pool of a cross-pool SCAN: `index` into `pools`' `count`.
    Scan {
        index: usize,
        count: usize,
    },
    Info(InfoRequest),
}

/// Which sections a client asked for; the keyspace parts come from pools.
pub struct InfoRequest {
    pub proto: Protocol,
    /// Sections keyway writes itself, already rendered, before Keyspace.
    pub local: String,
    pub wants_keyspace: bool,
    pub default_pool: PoolId,
}

type Frames = Vec<(PoolId, Result<Bytes, BackendError>)>;

impl Merge {
    pub fn merge(self, state: &State, frames: Frames) -> Bytes {
        match self {
            Merge::Info(req) => merge_info(state, req, frames),
            other => other.combine(frames),
        }
    }

    /// Every merge but INFO's: a function of the parts alone.
    fn combine(self, frames: Frames) -> Bytes {
        let mut ok = Vec::with_capacity(frames.len());
        for (_, f) in frames {
            match f {
                Ok(b) => ok.push(b),
                Err(e) => return e.to_resp(),
            }
        }
        if let Merge::AnyOk = self {
            return ok
                .iter()
                .find(|b| b.as_ref() == b"+OK\r\n")
                .or(ok.first())
                .cloned()
                .unwrap_or_else(|| unexpected("reply"));
        }
        // A backend error reply (WRONGTYPE, ...) is the answer as Redis would give it.
        if let Some(err) = ok.iter().find(|b| shapes::is_error(b)) {
            return err.clone();
        }
        match self {
            Merge::Mget { keys, positions } => merge_mget(keys, &positions, &ok),
            Merge::AllOk => ok
                .iter()
                .find(|b| b.as_ref() != b"+OK\r\n")
                .cloned()
                .unwrap_or_else(|| resp::simple("OK")),
            Merge::SumIntegers | Merge::SumLess(_) => {
                let less = match self {
                    Merge::SumLess(n) => n,
                    _ => 0,
                };
                let sum: Option<i64> = ok.iter().map(|b| shapes::integer(b)).sum();
                sum.map(|n| resp::int((n - less).max(0)))
                    .unwrap_or_else(|| unexpected("integer"))
            }
            Merge::ConcatArrays => {
                let mut all = Vec::new();
                for b in &ok {
                    match shapes::elements(b) {
                        Some(e) => all.extend(e),
                        None => return unexpected("array"),
                    }
                }
                let mut out = ReplyBuf::new(Protocol::Resp2);
                out.array(all.len());
                all.iter().for_each(|e| {
                    out.raw(e);
                });
                out.freeze()
            }
            Merge::First => ok.first().cloned().unwrap_or_else(|| unexpected("reply")),
            Merge::SumPairs => merge_pairs(&ok),
            Merge::AllExist => merge_all_exist(&ok),
            Merge::AnyOk => unexpected("reply"),
            Merge::FirstNonNil => ok
                .iter()
                .find(|b| !resp::is_nil(b))
                .or(ok.first())
                .cloned()
                .unwrap_or_else(|| unexpected("reply")),
            Merge::Scan { index, count } => merge_scan(index, count, ok.first()),
            Merge::Info(_) => unexpected("info"),
        }
    }
}

fn unexpected(what: &str) -> Bytes {
    resp::error(&format!(
        "ERR keyway could not merge the backends' replies: expected {what}"
    ))
}

fn merge_pairs(parts: &[Bytes]) -> Bytes {
    let mut names: Vec<&[u8]> = Vec::new();
    let mut sums: Vec<i64> = Vec::new();
    for part in parts {
        let Some(e) = shapes::elements(part) else {
            return unexpected("array");
        };
        for (i, pair) in e.chunks(2).enumerate() {
            let n = pair.get(1).and_then(|f| shapes::integer(f)).unwrap_or(0);
            if i < sums.len() {
                sums[i] += n;
            } else {
                names.push(pair[0]);
                sums.push(n);
            }
        }
    }
    let mut out = ReplyBuf::new(Protocol::Resp2);
    out.array(names.len() * 2);
    for (name, n) in names.iter().zip(sums) {
        out.raw(name).int(n);
    }
    out.freeze()
}

fn merge_all_exist(parts: &[Bytes]) -> Bytes {
    let mut all: Option<Vec<i64>> = None;
    for part in parts {
        let Some(e) = shapes::elements(part) else {
            return unexpected("array");
        };
        let flags: Vec<i64> = e.iter().map(|f| shapes::integer(f).unwrap_or(0)).collect();
        all = Some(match all {
            None => flags,
            Some(prev) => prev
                .iter()
                .zip(&flags)
                .map(|(a, b)| a.min(b))
                .copied()
                .collect(),
        });
    }
    let all = all.unwrap_or_default();
    let mut out = ReplyBuf::new(Protocol::Resp2);
    out.array(all.len());
    all.iter().for_each(|&n| {
        out.int(n);
    });
    out.freeze()
}

fn merge_mget(keys: usize, positions: &[Vec<usize>], parts: &[Bytes]) -> Bytes {
    let mut slots: Vec<&[u8]> = vec![b"$-1\r\n"; keys];
    for (part, pos) in parts.iter().zip(positions) {
        let Some(values) = shapes::elements(part) else {
            return unexpected("array");
        };
        if values.len() != pos.len() {
            return unexpected("one value per key");
        }
        for (v, &p) in values.into_iter().zip(pos) {
            slots[p] = v;
        }
    }
    let mut out = BytesMut::with_capacity(slots.iter().map(|s| s.len()).sum::<usize>() + 16);
    out.put_slice(format!("*{keys}\r\n").as_bytes());
    slots.iter().for_each(|s| out.put_slice(s));
    out.freeze()
}

/// The client's cursor is `backend_cursor * count + index`, so each call
/// knows which pool it continues; a finished pool moves on to the next.
pub fn encode_scan_cursor(backend_cursor: u64, index: usize, count: usize) -> Option<u64> {
    backend_cursor
        .checked_mul(count as u64)?
        .checked_add(index as u64)
}

pub fn decode_scan_cursor(cursor: u64, count: usize) -> (u64, usize) {
    (cursor / count as u64, (cursor % count as u64) as usize)
}

fn merge_scan(index: usize, count: usize, reply: Option<&Bytes>) -> Bytes {
    let Some(parts) = reply.and_then(|r| shapes::elements(r)) else {
        return unexpected("scan reply");
    };
    let (Some(cursor), Some(keys)) = (parts.first().and_then(|c| shapes::bulk(c)), parts.get(1))
    else {
        return unexpected("scan reply");
    };
    let Some(backend_cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return unexpected("scan cursor");
    };
    let next = if backend_cursor == 0 {
        if index + 1 >= count {
            Some(0)
        } else {
            Some(index as u64 + 1)
        }
    } else {
        encode_scan_cursor(backend_cursor, index, count)
    };
    let Some(next) = next else {
        return resp::error("ERR keyway cannot encode the backend's scan cursor");
    };
    let mut out = ReplyBuf::new(Protocol::Resp2);
    out.array(2).bulk(next.to_string().as_bytes()).raw(keys);
    out.freeze()
}

/// One database's `INFO keyspace` line summed over the servers that have
/// it: counts add up, `avg_ttl` is averaged over the keys that expire (as
/// one server holding all of them would report it). Fields keep the order
/// the first server wrote them in, so newer servers' fields (`subexpiry`)
/// pass through.
#[derive(Default)]
struct KeyspaceLine {
    fields: Vec<(String, u64)>,
    /// Sum of `avg_ttl` × `expires` over the servers.
    ttl_weight: u128,
}

impl KeyspaceLine {
    fn add(&mut self, value: &str) {
        let pairs: Vec<(&str, u64)> = value
            .split(',')
            .filter_map(|f| f.split_once('='))
            .filter_map(|(name, v)| Some((name, v.parse::<u64>().ok()?)))
            .collect();
        let expires = pairs
            .iter()
            .find(|(name, _)| *name == "expires")
            .map_or(0, |&(_, n)| n);
        for (name, n) in pairs {
            if name == "avg_ttl" {
                self.ttl_weight += u128::from(n) * u128::from(expires);
            }
            match self.fields.iter_mut().find(|(f, _)| f == name) {
                Some((_, total)) => *total = total.saturating_add(n),
                None => self.fields.push((name.to_string(), n)),
            }
        }
    }
}

impl std::fmt::Display for KeyspaceLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expires = self
            .fields
            .iter()
            .find(|(name, _)| name == "expires")
            .map_or(0, |&(_, n)| n);
        for (i, (name, n)) in self.fields.iter().enumerate() {
            let n = match name.as_str() {
                "avg_ttl" if expires > 0 => {
                    u64::try_from(self.ttl_weight / u128::from(expires)).unwrap_or(u64::MAX)
                }
                "avg_ttl" => 0,
                _ => *n,
            };
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}={n}")?;
        }
        Ok(())
    }
}

fn merge_info(state: &State, req: InfoRequest, frames: Frames) -> Bytes {
    let mut version = None;
    let mut dbs: std::collections::BTreeMap<u32, KeyspaceLine> = Default::default();
    let mut backends = BackendInfo::default();
    for (pool, frame) in &frames {
        let Ok(frame) = frame else { continue };
        let Some(text) = crate::resp::info::text(frame) else {
            continue;
        };
        for field in crate::resp::info::fields(&text) {
            if field.name == "redis_version" && (*pool == req.default_pool || version.is_none()) {
                version = Some(field.value.to_string());
            }
            if field.value.starts_with("keys=") {
                let Some(db) = field.name.strip_prefix("db").and_then(|d| d.parse().ok()) else {
                    continue;
                };
                dbs.entry(db).or_default().add(field.value);
            } else {
                let section = field.section.to_ascii_lowercase();
                backends.add(&section, field.name, *pool, field.value);
            }
        }
    }
    if let Some(v) = &version {
        state.redis_version.store(std::sync::Arc::new(v.clone()));
    }
    let local = req.local.replace("{redis_version}", &state.redis_version());
    let mut text = backends.complete(&local, req.default_pool);
    if req.wants_keyspace {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str("# Keyspace\r\n");
        for (db, line) in dbs {
            text.push_str(&format!("db{db}:{line}\r\n"));
        }
    }
    let mut out = ReplyBuf::new(req.proto);
    out.verbatim(text.as_bytes());
    out.freeze()
}

/// One INFO field's value on each server that has it.
type FieldValues = (String, Vec<(PoolId, String)>);
/// A section's fields, in the order Redis writes them.
type SectionFields = (String, Vec<FieldValues>);
/// `field:value` lines, in order.
type Lines = Vec<(String, String)>;

/// The backends' INFO fields, per section, in the order Redis writes them.
#[derive(Default)]
struct BackendInfo {
    sections: Vec<SectionFields>,
}

/// Fields whose values are not added up over servers: ratios, times,
/// states and settings; the default pool's value stands for all.
fn summable(field: &str) -> bool {
    const KEPT: [&str; 9] = [
        "ratio",
        "perc",
        "time",
        "status",
        "policy",
        "allocator",
        "_human",
        "age",
        "size",
    ];
    !KEPT.iter().any(|k| field.contains(k)) && !matches!(field, "hz" | "configured_hz")
}

impl BackendInfo {
    fn add(&mut self, section: &str, field: &str, pool: PoolId, value: &str) {
        let index = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let fields = &mut self.sections[index].1;
        match fields.iter_mut().find(|(f, _)| f == field) {
            Some((_, values)) => values.push((pool, value.to_string())),
            None => fields.push((field.to_string(), vec![(pool, value.to_string())])),
        }
    }

    /// One field over the servers: integers added up where that means
    /// something, `_human` forms written from the sum, else the default
    /// pool's value.
    fn combined(
        &self,
        fields: &[FieldValues],
        field: &str,
        values: &[(PoolId, String)],
        default_pool: PoolId,
    ) -> String {
        if let Some(base) = field.strip_suffix("_human") {
            if let Some((_, base_values)) = fields.iter().find(|(f, _)| f == base) {
                if let Some(sum) = sum(base_values).filter(|_| summable(base)) {
                    return human(sum);
                }
            }
        }
        if summable(field) {
            if let Some(total) = sum(values) {
                return total.to_string();
            }
        }
        values
            .iter()
            .find(|(p, _)| *p == default_pool)
            .or(values.first())
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// keyway's own sections completed with the backends' fields: Memory
    /// and Persistence are the servers' figures (keyway's stand in where no
    /// server answered); Server and Stats keep keyway's own fields and gain
    /// the servers' others.
    fn complete(&self, local: &str, default_pool: PoolId) -> String {
        if self.sections.is_empty() {
            return local.to_string();
        }
        let mut out = String::with_capacity(local.len() * 2);
        for block in local.split("\r\n\r\n") {
            if !out.is_empty() {
                out.push_str("\r\n\r\n");
            }
            let mut lines = block.lines();
            let Some(header) = lines.next() else {
                continue;
            };
            let name = header.trim_start_matches("# ").trim().to_ascii_lowercase();
            let own: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
            let Some((_, fields)) = self.sections.iter().find(|(s, _)| *s == name) else {
                out.push_str(block.trim_end());
                continue;
            };
            let theirs: Lines = fields
                .iter()
                .map(|(f, values)| (f.clone(), self.combined(fields, f, values, default_pool)))
                .collect();
            let servers_first = matches!(name.as_str(), "memory" | "persistence");
            let mut merged: Lines = Vec::new();
            let (first, second): (Lines, Lines) = match servers_first {
                true => (
                    theirs,
                    own.iter()
                        .map(|(f, v)| (f.to_string(), v.to_string()))
                        .collect(),
                ),
                false => (
                    own.iter()
                        .map(|(f, v)| (f.to_string(), v.to_string()))
                        .collect(),
                    theirs,
                ),
            };
            for (f, v) in first.into_iter().chain(second) {
                if !merged.iter().any(|(seen, _)| *seen == f) {
                    merged.push((f, v));
                }
            }
            out.push_str(header);
            for (f, v) in merged {
                out.push_str("\r\n");
                out.push_str(&f);
                out.push(':');
                out.push_str(&v);
            }
        }
        if local.ends_with("\r\n") {
            out.push_str("\r\n");
        }
        out
    }
}

fn sum(values: &[(PoolId, String)]) -> Option<i64> {
    values.iter().map(|(_, v)| v.parse::<i64>().ok()).sum()
}

/// Redis's `_human` form of a byte count.
fn human(n: i64) -> String {
    let n = n.max(0) as f64;
    for (unit, size) in [("G", 1073741824.0), ("M", 1048576.0), ("K", 1024.0)] {
        if n >= size {
            return format!("{:.2}{unit}", n / size);
        }
    }
    format!("{}B", n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_lines_add_counts_and_average_ttls_over_expiring_keys() {
        let mut line = KeyspaceLine::default();
        line.add("keys=10,expires=1,avg_ttl=9000,subexpiry=0");
        line.add("keys=5,expires=3,avg_ttl=1000,subexpiry=2");
        line.add("keys=2,expires=0,avg_ttl=0");
        assert_eq!(
            line.to_string(),
            "keys=17,expires=4,avg_ttl=3000,subexpiry=2"
        );
        let mut none = KeyspaceLine::default();
        none.add("keys=3,expires=0,avg_ttl=0");
        assert_eq!(none.to_string(), "keys=3,expires=0,avg_ttl=0");
    }

    fn parts(replies: &[&str]) -> Frames {
        replies
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    PoolId::configured(i as u32),
                    Ok(Bytes::copy_from_slice(r.as_bytes())),
                )
            })
            .collect()
    }

    fn merged(merge: Merge, replies: &[&str]) -> String {
        String::from_utf8(merge.combine(parts(replies)).to_vec()).expect("utf-8")
    }

    #[test]
    fn mget_values_go_back_where_their_keys_were_asked() {
        // MGET a b c d: a and c on one pool, b and d on the other.
        let merge = Merge::Mget {
            keys: 4,
            positions: vec![vec![0, 2], vec![1, 3]],
        };
        assert_eq!(
            merged(
                merge,
                &["*2\r\n$1\r\nA\r\n$-1\r\n", "*2\r\n$1\r\nB\r\n$1\r\nD\r\n"]
            ),
            "*4\r\n$1\r\nA\r\n$1\r\nB\r\n$-1\r\n$1\r\nD\r\n"
        );
        let short = Merge::Mget {
            keys: 2,
            positions: vec![vec![0, 1]],
        };
        assert!(merged(short, &["*1\r\n$1\r\nA\r\n"]).starts_with("-ERR keyway could not merge"));
    }

    #[test]
    fn counts_are_summed_and_never_below_zero() {
        assert_eq!(merged(Merge::SumIntegers, &[":2\r\n", ":3\r\n"]), ":5\r\n");
        assert_eq!(merged(Merge::SumLess(1), &[":2\r\n", ":3\r\n"]), ":4\r\n");
        assert_eq!(merged(Merge::SumLess(9), &[":2\r\n"]), ":0\r\n");
        assert_eq!(
            merged(
                Merge::SumPairs,
                &[
                    "*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:0\r\n",
                    "*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:5\r\n"
                ]
            ),
            "*4\r\n$1\r\na\r\n:3\r\n$1\r\nb\r\n:5\r\n"
        );
    }

    #[test]
    fn ok_everywhere_any_ok_and_all_exist() {
        assert_eq!(merged(Merge::AllOk, &["+OK\r\n", "+OK\r\n"]), "+OK\r\n");
        assert_eq!(
            merged(Merge::AllOk, &["+OK\r\n", "+QUEUED\r\n"]),
            "+QUEUED\r\n"
        );
        assert_eq!(
            merged(
                Merge::AnyOk,
                &["-NOTBUSY No scripts in execution right now.\r\n", "+OK\r\n"]
            ),
            "+OK\r\n"
        );
        assert_eq!(
            merged(
                Merge::AllExist,
                &["*2\r\n:1\r\n:1\r\n", "*2\r\n:1\r\n:0\r\n"]
            ),
            "*2\r\n:1\r\n:0\r\n"
        );
    }

    #[test]
    fn a_server_error_or_a_lost_part_is_the_answer() {
        let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        assert_eq!(
            merged(Merge::SumIntegers, &[":1\r\n", wrongtype]),
            wrongtype
        );
        let mut frames = parts(&[":1\r\n"]);
        frames.push((
            PoolId::configured(1),
            Err(BackendError::ConnectionLost {
                pool: "cache".to_string(),
            }),
        ));
        assert_eq!(
            Merge::SumIntegers.combine(frames).as_ref(),
            b"-ERR backend 'cache' connection lost\r\n"
        );
    }

    #[test]
    fn arrays_are_joined_and_the_first_value_found_stands() {
        assert_eq!(
            merged(
                Merge::ConcatArrays,
                &["*1\r\n$1\r\na\r\n", "*0\r\n", "*1\r\n$1\r\nb\r\n"]
            ),
            "*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        assert_eq!(
            merged(Merge::FirstNonNil, &["$-1\r\n", "$1\r\nv\r\n"]),
            "$1\r\nv\r\n"
        );
        assert_eq!(
            merged(Merge::FirstNonNil, &["$-1\r\n", "$-1\r\n"]),
            "$-1\r\n"
        );
    }

    #[test]
    fn a_scan_cursor_says_which_pool_comes_next() {
        let page =
            |cursor: &str| format!("*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n", cursor.len());
        // Pool 0 of 3 has more: its cursor 7 is encoded with the pool.
        let next = merged(Merge::Scan { index: 0, count: 3 }, &[&page("7")]);
        assert!(next.starts_with("*2\r\n$2\r\n21\r\n"), "{next}");
        assert_eq!(decode_scan_cursor(21, 3), (7, 0));
        // Pool 1 is done: the next call starts pool 2.
        let next = merged(Merge::Scan { index: 1, count: 3 }, &[&page("0")]);
        assert!(next.starts_with("*2\r\n$1\r\n2\r\n"), "{next}");
        // The last pool done: the whole scan is.
        let next = merged(Merge::Scan { index: 2, count: 3 }, &[&page("0")]);
        assert!(next.starts_with("*2\r\n$1\r\n0\r\n"), "{next}");
        assert_eq!(encode_scan_cursor(u64::MAX, 1, 3), None);
    }

    #[test]
    fn info_fields_are_summed_where_a_sum_means_something() {
        let mut info = BackendInfo::default();
        let (a, b) = (PoolId::configured(0), PoolId::configured(1));
        info.add("memory", "used_memory", a, "1024");
        info.add("memory", "used_memory", b, "2048");
        info.add("memory", "used_memory_human", a, "1.00K");
        info.add("memory", "mem_fragmentation_ratio", a, "1.5");
        info.add("memory", "mem_fragmentation_ratio", b, "9.0");
        let text = info.complete("# Memory\r\nused_memory:1\r\n", b);
        assert_eq!(
            text,
            "# Memory\r\nused_memory:3072\r\nused_memory_human:3.00K\r\nmem_fragmentation_ratio:9.0\r\n"
        );
    }
}
