//! The shape of one command-table entry: arity, flags and Redis 7 key
//! specifications. Kept apart from the generated table so both the builtin
//! entries and those learned from a backend's `COMMAND` reply share it.

use std::ops::BitOr;

/// Command flags as Redis reports them in `COMMAND` (the subset keyway acts on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

impl Flags {
    pub const NONE: Flags = Flags(0);
    pub const WRITE: Flags = Flags(1);
    pub const READONLY: Flags = Flags(1 << 1);
    pub const DENYOOM: Flags = Flags(1 << 2);
    pub const ADMIN: Flags = Flags(1 << 3);
    pub const PUBSUB: Flags = Flags(1 << 4);
    pub const NOSCRIPT: Flags = Flags(1 << 5);
    pub const BLOCKING: Flags = Flags(1 << 6);
    pub const LOADING: Flags = Flags(1 << 7);
    pub const STALE: Flags = Flags(1 << 8);
    pub const SKIP_MONITOR: Flags = Flags(1 << 9);
    pub const SKIP_SLOWLOG: Flags = Flags(1 << 10);
    pub const FAST: Flags = Flags(1 << 11);
    pub const NO_AUTH: Flags = Flags(1 << 12);
    pub const MAY_REPLICATE: Flags = Flags(1 << 13);
    pub const MOVABLE_KEYS: Flags = Flags(1 << 14);
    pub const NO_MANDATORY_KEYS: Flags = Flags(1 << 15);
    pub const NO_MULTI: Flags = Flags(1 << 16);

    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Maps a flag name from a `COMMAND` reply; unknown names are ignored.
    pub fn from_name(name: &str) -> Flags {
        match name {
            "write" => Flags::WRITE,
            "readonly" => Flags::READONLY,
            "denyoom" => Flags::DENYOOM,
            "admin" => Flags::ADMIN,
            "pubsub" => Flags::PUBSUB,
            "noscript" => Flags::NOSCRIPT,
            "blocking" => Flags::BLOCKING,
            "loading" => Flags::LOADING,
            "stale" => Flags::STALE,
            "skip_monitor" => Flags::SKIP_MONITOR,
            "skip_slowlog" => Flags::SKIP_SLOWLOG,
            "fast" => Flags::FAST,
            "no_auth" => Flags::NO_AUTH,
            "may_replicate" => Flags::MAY_REPLICATE,
            "movablekeys" => Flags::MOVABLE_KEYS,
            "no_mandatory_keys" => Flags::NO_MANDATORY_KEYS,
            "no_multi" => Flags::NO_MULTI,
            _ => Flags::NONE,
        }
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Where the search for a key specification's first key starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// The key is at this argument index (0 is the command name).
    Index(i32),
    /// The keys follow this keyword; negative `start_from` searches backwards.
    Keyword {
        keyword: &'static str,
        start_from: i32,
    },
    /// Redis could not describe it (SORT's BY/GET): handled by hand or ignored.
    Unknown,
}

/// How many keys follow the first one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Find {
    /// Up to `last_key` (relative to the first key; negative counts from the
    /// end, divided by `limit` when that is above 1), every `step` arguments.
    Range {
        last_key: i32,
        step: i32,
        limit: i32,
    },
    /// A count at `key_num_index` (relative to the begin index) gives the
    /// number of keys, which start `first_key` after the count.
    KeyNum {
        key_num_index: i32,
        first_key: i32,
        step: i32,
    },
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub begin: Begin,
    pub find: Find,
    /// Sharded pub/sub channels: routed like keys, but are not keys.
    pub not_key: bool,
}

/// One command or subcommand (`object|encoding`), lowercase name.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub arity: i32,
    pub flags: Flags,
    pub acl: &'static [&'static str],
    pub keys: &'static [KeySpec],
    pub has_subcommands: bool,
}

impl Spec {
    /// Redis's arity rule: positive means exactly, negative means at least.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = self.arity as i64;
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    pub fn in_acl_category(&self, category: &str) -> bool {
        self.acl.iter().any(|c| c.eq_ignore_ascii_case(category))
    }
}
