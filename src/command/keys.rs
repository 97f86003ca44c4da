//! Finding the key arguments of a request from its key specifications, the
//! way Redis's `getKeysUsingKeySpecs` does, plus the few commands Redis
//! itself resolves by hand (SORT ... STORE) and the options that name keys
//! or key patterns, read as the commands read them: a repeated option's
//! last value is the one that counts.

use super::spec::{Begin, Find, KeySpec};

/// Appends the argument indexes of `args` that are keys under `specs`.
/// `args[0]` is the command name. Malformed counts yield no keys for that
/// spec; the backend then answers with its own syntax error.
pub fn key_indexes<A: AsRef<[u8]>>(specs: &[KeySpec], args: &[A], out: &mut Vec<usize>) {
    let argc = args.len() as i64;
    for spec in specs {
        let first = match &spec.begin {
            Begin::Index(i) => *i as i64,
            Begin::Keyword {
                keyword,
                start_from,
            } => match find_keyword(args, keyword, *start_from as i64) {
                Some(i) => i + 1,
                None => continue,
            },
            Begin::Unknown => continue,
        };
        if first < 1 || first >= argc {
            continue;
        }
        let (first, last, step) = match &spec.find {
            Find::Range {
                last_key,
                step,
                limit,
            } => {
                let (last_key, limit) = (*last_key as i64, *limit as i64);
                let last = if last_key >= 0 {
                    first + last_key
                } else if limit <= 1 {
                    argc + last_key
                } else {
                    first + ((argc - first) / limit + last_key)
                };
                (first, last, *step as i64)
            }
            Find::KeyNum {
                key_num_index,
                first_key,
                step,
            } => {
                let count_at = first + *key_num_index as i64;
                if count_at >= argc {
                    continue;
                }
                let Some(count) = parse_count(args[count_at as usize].as_ref()) else {
                    continue;
                };
                let first = first + *first_key as i64;
                (first, first + count - 1, *step as i64)
            }
            Find::Unknown => continue,
        };
        if step < 1 {
            continue;
        }
        let mut i = first;
        while i <= last && i < argc {
            out.push(i as usize);
            i += step;
        }
    }
}

/// SORT and SORT_RO: Redis describes STORE only as "unknown"; find it here
/// as `sortCommand` reads its options: left to right, the last STORE wins
/// (`SORT k STORE a STORE b` stores into `b` alone).
pub fn sort_store_index<A: AsRef<[u8]>>(args: &[A]) -> Option<usize> {
    let mut store = None;
    let mut i = 2;
    while i < args.len() {
        let a = args[i].as_ref();
        // LIMIT takes two arguments, STORE/BY/GET one: skip them so a key
        // named "store" is not misread.
        i += if a.eq_ignore_ascii_case(b"LIMIT") {
            3
        } else if a.eq_ignore_ascii_case(b"STORE") && i + 1 < args.len() {
            store = Some(i + 1);
            2
        } else if a.eq_ignore_ascii_case(b"BY") || a.eq_ignore_ascii_case(b"GET") {
            2
        } else {
            1
        };
    }
    store
}

/// GEORADIUS and GEORADIUSBYMEMBER: the key, and the destination of STORE
/// or STOREDIST. Their key specifications search for the first STORE and
/// the first STOREDIST, but the command stores into the last of either
/// (`… STORE a STORE b` writes `b`), so the options are read here as
/// `georadiusGeneric` reads them. `options_at`: where the options start
/// (6 for GEORADIUS key lon lat radius unit, 5 for BYMEMBER).
pub fn georadius_key_indexes<A: AsRef<[u8]>>(args: &[A], options_at: usize, out: &mut Vec<usize>) {
    if args.len() < 2 {
        return;
    }
    out.push(1);
    let mut store = None;
    let mut i = options_at;
    while i < args.len() {
        let a = args[i].as_ref();
        let takes_value = a.eq_ignore_ascii_case(b"STORE")
            || a.eq_ignore_ascii_case(b"STOREDIST")
            || a.eq_ignore_ascii_case(b"COUNT");
        if takes_value && i + 1 < args.len() {
            if !a.eq_ignore_ascii_case(b"COUNT") {
                store = Some(i + 1);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    out.extend(store);
}

/// SCAN's options (MATCH, COUNT, TYPE) as `scanGenericCommand` reads them:
/// `NAME value` pairs from `from` on, the last of a repeated one winning
/// (`SCAN 0 MATCH user:* MATCH *` matches `*`). Every option SCAN accepts
/// takes one value, so reading in pairs is Redis's own reading of any
/// request it does not refuse.
pub fn last_paired_option<'a, A: AsRef<[u8]>>(
    args: &'a [A],
    from: usize,
    name: &[u8],
) -> Option<&'a [u8]> {
    let mut found = None;
    let mut i = from;
    while i + 1 < args.len() {
        if args[i].as_ref().eq_ignore_ascii_case(name) {
            found = Some(args[i + 1].as_ref());
        }
        i += 2;
    }
    found
}

fn find_keyword<A: AsRef<[u8]>>(args: &[A], keyword: &str, start_from: i64) -> Option<i64> {
    let argc = args.len() as i64;
    let matches = |i: i64| {
        args[i as usize]
            .as_ref()
            .eq_ignore_ascii_case(keyword.as_bytes())
    };
    if start_from >= 0 {
        (start_from.max(1)..argc).find(|&i| matches(i))
    } else {
        (1..=(argc + start_from).min(argc - 1))
            .rev()
            .find(|&i| matches(i))
    }
}

fn parse_count(arg: &[u8]) -> Option<i64> {
    let n: i64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    (0..=i32::MAX as i64).contains(&n).then_some(n)
}
