//! The command table: every command's arity, flags and key positions, so a
//! request can be checked and routed without asking a backend. Builtin
//! entries come from Redis 7; a backend's `COMMAND` reply adds module commands.

mod effect;
mod handling;
mod keys;
mod name;
mod spec;
mod table;

use std::collections::HashMap;

use redis_protocol::resp2::types::OwnedFrame;

pub use effect::{is_server_wide, server_wide_entries};
pub use handling::{
    classify, Blocking, CacheCount, ChannelKind, DatabaseArg, Forward, Handling, Local, Servers,
    SplitKind, SubscriptionVerb, TransactionVerb,
};

/// Whether `name` (lowercase, `config|set` for a subcommand) is in the
/// builtin table: names a client made up must not become metric labels.
pub fn is_builtin_name(name: &str) -> bool {
    table::BUILTIN.iter().any(|s| s.name == name)
}
/// Whether the builtin command `name` (lowercase) is a container of
/// subcommands (CLIENT, CONFIG …): requests are named by the subcommand.
pub fn has_builtin_subcommands(name: &str) -> bool {
    table::BUILTIN.iter().any(|s| {
        s.name
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('|'))
    })
}
pub use keys::{georadius_key_indexes, key_indexes, last_paired_option, sort_store_index};
pub use name::{packed, CommandName};
pub use spec::{Begin, Find, Flags, KeySpec, Spec};

/// Longest command or `command|subcommand` name keyway lowercases on the stack.
pub(crate) const MAX_NAME: usize = 64;

#[derive(Clone)]
pub struct CommandTable {
    /// Looked up for every request: a fast hash, not SipHash (the names
    /// are the command table's own, so flooding is not a concern).
    by_name: HashMap<Box<[u8]>, Entry, foldhash::fast::RandomState>,
    /// The entries of names up to 15 bytes (nearly every command) again,
    /// keyed by the name packed into one integer: hashed and compared
    /// without a byte loop or a `memcmp` call.
    short: HashMap<u128, Entry, foldhash::fast::RandomState>,
}

/// A command as keyway knows it: Redis's specification and how keyway
/// handles it, classified once when the entry is made.
#[derive(Clone, Debug)]
pub struct Entry {
    pub spec: Spec,
    pub handling: Handling,
    pub cache: CacheCount,
}

impl Entry {
    fn new(spec: Spec) -> Entry {
        let (handling, cache) = classify(&spec);
        Entry {
            spec,
            handling,
            cache,
        }
    }
}

impl std::ops::Deref for Entry {
    type Target = Spec;
    fn deref(&self) -> &Spec {
        &self.spec
    }
}

impl Default for CommandTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl CommandTable {
    pub fn builtin() -> Self {
        let mut table = CommandTable {
            by_name: HashMap::default(),
            short: HashMap::default(),
        };
        for spec in table::BUILTIN {
            table.insert(Entry::new(spec.clone()));
        }
        table
    }

    fn insert(&mut self, entry: Entry) {
        let name = entry.spec.name.as_bytes();
        if let Some(key) = packed(name) {
            self.short.insert(key, entry.clone());
        }
        self.by_name.insert(name.into(), entry);
    }

    /// The entry of a lowercase name (`config|get` for a subcommand).
    fn find(&self, name: &[u8]) -> Option<&Entry> {
        match packed(name) {
            Some(key) => self.short.get(&key),
            None => {
                let mut buf = [0u8; MAX_NAME];
                let len = lowercase_into(name, &mut buf)?;
                self.by_name.get(&buf[..len])
            }
        }
    }

    /// The table name whose text starts at `address` (what CLIENT LIST
    /// kept of a client's last command).
    pub fn name_at(&self, address: usize) -> Option<&'static str> {
        self.by_name
            .values()
            .map(|spec| spec.name)
            .find(|name| name.as_ptr() as usize == address)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The entry for a request, descending into `name|subcommand` where the
    /// command has subcommands (OBJECT ENCODING, XINFO STREAM, ...).
    pub fn lookup<A: AsRef<[u8]>>(&self, args: &[A]) -> Option<&Entry> {
        self.lookup_named(&CommandName::of(args.first()?.as_ref()), args)
    }

    /// `lookup` with the name already lowercased (once per request, as
    /// the blocklists and command rules read it too). `args` are the
    /// request's, the name first.
    pub fn lookup_named<A: AsRef<[u8]>>(&self, name: &CommandName, args: &[A]) -> Option<&Entry> {
        let spec = match name.key() {
            Some(key) => self.short.get(&key),
            None => self.by_name.get(name.whole()?),
        }?;
        if !spec.has_subcommands || args.len() < 2 {
            return Some(spec);
        }
        let name = name.whole()?;
        let sub = args[1].as_ref();
        let len = name.len();
        if len + 1 + sub.len() > MAX_NAME {
            return Some(spec);
        }
        let mut buf = [0u8; MAX_NAME];
        buf[..len].copy_from_slice(name);
        buf[len] = b'|';
        let sub_len = lowercase_into(sub, &mut buf[len + 1..])?;
        Some(self.find(&buf[..len + 1 + sub_len]).unwrap_or(spec))
    }

    /// Whether `command` (lowercase) has the subcommand `sub`.
    pub fn knows_subcommand(&self, command: &str, sub: &[u8]) -> bool {
        self.lookup(&[command.as_bytes(), sub])
            .is_some_and(|entry| entry.name != command)
    }

    /// Argument indexes of the keys (and routed channels) of a request.
    pub fn key_indexes<A: AsRef<[u8]>>(&self, spec: &Spec, args: &[A], out: &mut Vec<usize>) {
        match spec.name {
            "sort" | "sort_ro" => {
                if args.len() > 1 {
                    out.push(1);
                }
                out.extend(sort_store_index(args));
            }
            "georadius" => georadius_key_indexes(args, 6, out),
            "georadiusbymember" => georadius_key_indexes(args, 5, out),
            // PUBLISH has no key in Redis, but keyway routes channels by prefix.
            "publish" if args.len() > 1 => out.push(1),
            // MIGRATE ... "" ... KEYS k1 k2: the empty key says "see KEYS".
            "migrate" => {
                key_indexes(spec.keys, args, out);
                out.retain(|&i| !(i == 3 && args[3].as_ref().is_empty()));
            }
            _ => key_indexes(spec.keys, args, out),
        }
    }

    /// Adds commands a backend knows and keyway does not (modules such as
    /// FT.*, JSON.*, TS.*), from a RESP2 `COMMAND` reply. Returns how many
    /// were added. The learned names are leaked on purpose: the table lives
    /// for the whole process and is refreshed once per start.
    pub fn learn_from_command_reply(&mut self, reply: &OwnedFrame) -> usize {
        let OwnedFrame::Array(entries) = reply else {
            return 0;
        };
        let mut added = 0;
        for entry in entries {
            if let Some(spec) = spec_from_frame(entry) {
                if !self.by_name.contains_key(spec.name.as_bytes()) {
                    self.insert(Entry::new(spec));
                    added += 1;
                }
            }
        }
        added
    }
}

fn lowercase_into(name: &[u8], buf: &mut [u8]) -> Option<usize> {
    if name.len() > buf.len() {
        return None;
    }
    for (dst, src) in buf.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    Some(name.len())
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

fn int(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

fn array(frame: &OwnedFrame) -> &[OwnedFrame] {
    match frame {
        OwnedFrame::Array(a) => a,
        _ => &[],
    }
}

/// A flat `[name, value, name, value]` array as lookups by name.
fn field<'a>(pairs: &'a [OwnedFrame], name: &str) -> Option<&'a OwnedFrame> {
    pairs
        .chunks(2)
        .find(|kv| text(&kv[0]).as_deref() == Some(name))
        .and_then(|kv| kv.get(1))
}

fn spec_from_frame(entry: &OwnedFrame) -> Option<Spec> {
    let parts = array(entry);
    let name = text(parts.first()?)?.to_ascii_lowercase();
    let arity = int(parts.get(1)?)? as i32;
    let flags = array(parts.get(2)?)
        .iter()
        .filter_map(text)
        .fold(Flags::NONE, |acc, f| acc | Flags::from_name(&f));
    let acl: Vec<&'static str> = parts
        .get(6)
        .map(array)
        .unwrap_or(&[])
        .iter()
        .filter_map(text)
        .map(|c| leak(c.trim_start_matches('@').to_string()))
        .collect();
    let keys: Vec<KeySpec> = match parts.get(8) {
        Some(specs) => array(specs)
            .iter()
            .filter_map(key_spec_from_frame)
            .collect(),
        // Pre-7 servers only give first/last/step.
        None => legacy_key_spec(parts).into_iter().collect(),
    };
    Some(Spec {
        name: leak(name),
        arity,
        flags,
        acl: Box::leak(acl.into_boxed_slice()),
        keys: Box::leak(keys.into_boxed_slice()),
        has_subcommands: false,
    })
}

fn legacy_key_spec(parts: &[OwnedFrame]) -> Option<KeySpec> {
    let first = int(parts.get(3)?)?;
    let last = int(parts.get(4)?)?;
    let step = int(parts.get(5)?)?;
    (first > 0).then(|| KeySpec {
        begin: Begin::Index(first as i32),
        find: Find::Range {
            last_key: if last < 0 {
                last as i32
            } else {
                (last - first) as i32
            },
            step: step.max(1) as i32,
            limit: 0,
        },
        not_key: false,
    })
}

fn key_spec_from_frame(frame: &OwnedFrame) -> Option<KeySpec> {
    let spec = array(frame);
    let bs = array(field(spec, "begin_search")?);
    let fk = array(field(spec, "find_keys")?);
    let bs_spec = field(bs, "spec").map(array).unwrap_or(&[]);
    let fk_spec = field(fk, "spec").map(array).unwrap_or(&[]);
    let get = |pairs: &[OwnedFrame], n: &str| field(pairs, n).and_then(int).map(|v| v as i32);
    let begin = match text(field(bs, "type")?)?.as_str() {
        "index" => Begin::Index(get(bs_spec, "index")?),
        "keyword" => Begin::Keyword {
            keyword: leak(text(field(bs_spec, "keyword")?)?),
            start_from: get(bs_spec, "startfrom")?,
        },
        _ => Begin::Unknown,
    };
    let find = match text(field(fk, "type")?)?.as_str() {
        "range" => Find::Range {
            last_key: get(fk_spec, "lastkey")?,
            step: get(fk_spec, "keystep")?,
            limit: get(fk_spec, "limit")?,
        },
        "keynum" => Find::KeyNum {
            key_num_index: get(fk_spec, "keynumidx")?,
            first_key: get(fk_spec, "firstkey")?,
            step: get(fk_spec, "keystep")?,
        },
        _ => Find::Unknown,
    };
    let not_key = field(spec, "flags")
        .map(array)
        .unwrap_or(&[])
        .iter()
        .filter_map(text)
        .any(|f| f == "not_key");
    Some(KeySpec {
        begin,
        find,
        not_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cmd: &str) -> Vec<String> {
        let table = CommandTable::builtin();
        let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
        let spec = table.lookup(&args).expect("known command");
        let mut out = Vec::new();
        table.key_indexes(spec, &args, &mut out);
        out.iter()
            .map(|&i| cmd.split(' ').nth(i).unwrap().to_string())
            .collect()
    }

    #[test]
    fn simple_and_range_keys() {
        assert_eq!(keys("GET a"), ["a"]);
        assert_eq!(keys("mget a b c"), ["a", "b", "c"]);
        assert_eq!(keys("MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(keys("DEL a b"), ["a", "b"]);
        assert_eq!(keys("RENAME a b"), ["a", "b"]);
        assert_eq!(keys("PING"), Vec::<String>::new());
    }

    #[test]
    fn numkeys_forms() {
        assert_eq!(keys("EVAL s 2 k1 k2 a1"), ["k1", "k2"]);
        assert_eq!(keys("EVALSHA_RO s 0 a1"), Vec::<String>::new());
        assert_eq!(keys("FCALL f 1 k1 a"), ["k1"]);
        assert_eq!(keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"), ["d", "a", "b"]);
        assert_eq!(keys("ZINTERCARD 2 a b LIMIT 1"), ["a", "b"]);
        assert_eq!(keys("SINTERCARD 2 a b"), ["a", "b"]);
        assert_eq!(keys("LMPOP 2 a b LEFT"), ["a", "b"]);
        assert_eq!(keys("BZMPOP 0 2 a b MIN"), ["a", "b"]);
        assert_eq!(keys("ZDIFF 2 a b"), ["a", "b"]);
    }

    #[test]
    fn keyword_forms() {
        assert_eq!(keys("XREAD COUNT 2 STREAMS s1 s2 0 0"), ["s1", "s2"]);
        assert_eq!(keys("XREADGROUP GROUP g c STREAMS s1 >"), ["s1"]);
        assert_eq!(keys("GEORADIUS g 0 0 1 km STORE dst"), ["g", "dst"]);
        assert_eq!(keys("MIGRATE h 1  0 5 KEYS a b"), ["a", "b"]);
        assert_eq!(keys("SORT src BY w_* LIMIT 0 1 STORE dst"), ["src", "dst"]);
        assert_eq!(keys("SORT src GET store"), ["src"]);
    }

    #[test]
    fn scan_options_are_read_in_pairs_and_the_last_wins() {
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let matched = |s: &str| last_paired_option(&args(s), 2, b"MATCH").map(|m| m.to_vec());
        assert_eq!(matched("SCAN 0 MATCH u:* MATCH *"), Some(b"*".to_vec()));
        assert_eq!(matched("SCAN 0 match u:* COUNT 10"), Some(b"u:*".to_vec()));
        // A value that reads "MATCH" is a value, not an option.
        assert_eq!(matched("SCAN 0 COUNT MATCH"), None);
        assert_eq!(matched("SCAN 0 TYPE string MATCH"), None);
        assert_eq!(matched("SCAN 0"), None);
    }

    /// Redis reads repeated options left to right and the last one wins:
    /// the key found must be the one the command writes, or a prefix check
    /// and the route would be of a key the command never touches.
    #[test]
    fn a_repeated_store_option_is_the_last_one() {
        assert_eq!(keys("SORT src STORE a STORE b"), ["src", "b"]);
        assert_eq!(
            keys("SORT src STORE a LIMIT 0 1 STORE b ALPHA"),
            ["src", "b"]
        );
        assert_eq!(keys("SORT_RO src BY nosort"), ["src"]);
        assert_eq!(keys("GEORADIUS g 0 0 1 km STORE a STORE b"), ["g", "b"]);
        assert_eq!(keys("GEORADIUS g 0 0 1 km STORE a STOREDIST b"), ["g", "b"]);
        assert_eq!(
            keys("GEORADIUS g 0 0 1 km STOREDIST a COUNT 3 ANY STORE b"),
            ["g", "b"]
        );
        assert_eq!(
            keys("GEORADIUSBYMEMBER g m 1 km STOREDIST a STOREDIST b"),
            ["g", "b"]
        );
        // COUNT's value is not an option: a member named STORE stays one.
        assert_eq!(keys("GEORADIUSBYMEMBER g m 1 km COUNT STORE"), ["g"]);
        assert_eq!(keys("GEORADIUS g 0 0 1 km WITHDIST"), ["g"]);
    }

    #[test]
    fn names_are_found_in_any_case_short_or_long_and_only_exactly() {
        let table = CommandTable::builtin();
        let name = |args: &[&[u8]]| table.lookup(args).map(|e| e.spec.name);
        assert_eq!(name(&[b"GeT"]), Some("get"));
        assert_eq!(
            name(&[b"georadiusbymember_RO"]),
            Some("georadiusbymember_ro")
        );
        assert_eq!(name(&[b"Config", b"SET"]), Some("config|set"));
        assert_eq!(name(&[b"config", b"no-such"]), Some("config"));
        // Padding, a NUL or a near miss is another name.
        assert_eq!(name(&[b"get\0"]), None);
        assert_eq!(name(&[b"\0get"]), None);
        assert_eq!(name(&[b"ge"]), None);
        assert_eq!(name(&[b"getx"]), None);
        assert_eq!(name(&[&[b'g'; 65]]), None);
        // Every builtin name is found through whichever map holds it.
        for spec in table::BUILTIN {
            let found = match spec.name.split_once('|') {
                Some((cmd, sub)) => name(&[cmd.as_bytes(), sub.as_bytes()]),
                None => name(&[spec.name.as_bytes()]),
            };
            assert_eq!(found, Some(spec.name));
        }
    }

    #[test]
    fn subcommands_and_channels() {
        assert_eq!(keys("OBJECT ENCODING k"), ["k"]);
        assert_eq!(keys("MEMORY USAGE k"), ["k"]);
        assert_eq!(keys("XINFO STREAM s"), ["s"]);
        assert_eq!(keys("PUBLISH chat:1 hi"), ["chat:1"]);
        assert_eq!(keys("SPUBLISH chat:1 hi"), ["chat:1"]);
    }

    #[test]
    fn arity() {
        let table = CommandTable::builtin();
        let get = table.lookup(&["get"]).unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(3));
        let mget = table.lookup(&["MGET"]).unwrap();
        assert!(mget.arity_ok(2) && mget.arity_ok(9) && !mget.arity_ok(1));
        assert!(table.len() > 200);
    }
}
