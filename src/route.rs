//! Which pool serves a request: the longest matching key prefix, then a
//! command-name rule, then the client's database, then the default pool.
//! Multi-key commands whose keys span pools get a split plan or a refusal.

use std::fmt;

use crate::config::Config;
use crate::resp::Request;

pub use crate::config::PoolId;

#[derive(Debug, Clone)]
pub struct Router {
    /// Longest prefix first, so the first match is the longest.
    prefixes: Vec<(Box<[u8]>, PoolId)>,
    /// Exact names before families, longer families first.
    commands: Vec<(CommandPattern, PoolId)>,
    databases: Vec<Option<PoolId>>,
    default: PoolId,
    /// Per pool id (`PoolId::index`): its name, for the configured pools.
    pool_names: Vec<Option<String>>,
    /// Per pool id: a Redis Cluster, whose keys are also placed by hash slot.
    clustered: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CommandPattern {
    Exact(Vec<u8>),
    Family(Vec<u8>),
}

impl std::fmt::Display for CommandPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandPattern::Exact(n) => write!(f, "{}", String::from_utf8_lossy(n).to_uppercase()),
            CommandPattern::Family(p) => {
                write!(f, "{}*", String::from_utf8_lossy(p).to_uppercase())
            }
        }
    }
}

impl CommandPattern {
    fn matches(&self, lower_name: &[u8]) -> bool {
        match self {
            CommandPattern::Exact(n) => n.as_slice() == lower_name,
            CommandPattern::Family(p) => lower_name.starts_with(p),
        }
    }
}

/// Where a request goes: a pool, and for a cluster pool the hash slot of
/// its keys (`None`: keyless, any master).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub pool: PoolId,
    pub slot: Option<u16>,
}

impl Target {
    pub fn pool(pool: PoolId) -> Target {
        Target { pool, slot: None }
    }
}

/// How a request reaches the backends.
#[derive(Debug)]
pub enum Plan {
    One(Target),
    Split(SplitPlan),
    CrossPool(CrossPool),
    /// Keys of a non-splittable command in two slots of a cluster pool.
    CrossSlot,
}

/// Redis Cluster's own refusal, word for word.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Keys of a non-splittable command in two pools: nothing is executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossPool {
    pub first: String,
    pub second: String,
}

impl fmt::Display for CrossPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CROSSPOOL keys of this command map to pools '{}' and '{}'",
            self.first, self.second
        )
    }
}

pub use crate::command::SplitKind;

#[derive(Debug)]
pub struct SplitPlan {
    pub kind: SplitKind,
    pub parts: Vec<SplitPart>,
    /// Number of keys in the original request.
    pub keys: usize,
}

#[derive(Debug)]
pub struct SplitPart {
    pub pool: PoolId,
    /// For a cluster pool's part: the slot all its keys hash to.
    pub slot: Option<u16>,
    pub request: Request,
    /// For each key of this part, its position among the original keys.
    pub positions: Vec<usize>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        // Validation made every rule name a pool; the first is a safe fallback.
        let first = config.pools.first().map(|p| p.id);
        let id = |name: &str| {
            config
                .pool_id(name)
                .or(first)
                .unwrap_or(PoolId::configured(0))
        };
        let slots = config
            .pools
            .iter()
            .map(|p| p.id.replica().index() + 1)
            .max()
            .unwrap_or(0);
        let mut pool_names = vec![None; slots];
        let mut clustered = vec![false; slots];
        for p in &config.pools {
            pool_names[p.id.index()] = Some(p.name.clone());
            clustered[p.id.index()] = p.cluster.is_some();
        }
        let mut prefixes: Vec<(Box<[u8]>, PoolId)> = config
            .routes
            .prefixes
            .iter()
            .map(|r| (r.prefix.as_bytes().into(), id(&r.pool)))
            .collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let mut commands: Vec<(CommandPattern, PoolId)> = config
            .routes
            .commands
            .iter()
            .map(|r| {
                let lower = r.command.to_ascii_lowercase().into_bytes();
                let pattern = match lower.strip_suffix(b"*") {
                    Some(p) => CommandPattern::Family(p.to_vec()),
                    None => CommandPattern::Exact(lower),
                };
                (pattern, id(&r.pool))
            })
            .collect();
        commands.sort_by_key(|(p, _)| match p {
            CommandPattern::Exact(_) => (0, 0),
            CommandPattern::Family(f) => (1, usize::MAX - f.len()),
        });
        let mut databases = vec![None; config.server.databases as usize];
        for r in &config.routes.databases {
            databases[r.db as usize] = Some(id(&r.pool));
        }
        Router {
            prefixes,
            commands,
            databases,
            default: id(&config.routes.default),
            pool_names,
            clustered,
        }
    }

    /// A configured pool's name; `unknown` for a pool a reload removed.
    pub fn pool_name(&self, pool: PoolId) -> &str {
        self.pool_names
            .get(pool.index())
            .and_then(Option::as_deref)
            .unwrap_or("unknown")
    }

    pub fn default_pool(&self) -> PoolId {
        self.default
    }

    /// The index of the longest prefix rule `key` matches: the `route`
    /// label of the cache hit/miss metrics.
    pub fn prefix_rule(&self, key: &[u8]) -> Option<usize> {
        self.prefixes.iter().position(|(p, _)| key.starts_with(p))
    }

    /// A route label: the prefix of a rule, or `default` for keys that no
    /// prefix decided.
    pub fn route_label(&self, rule: Option<usize>) -> std::borrow::Cow<'_, str> {
        rule.and_then(|i| self.prefixes.get(i))
            .map(|(p, _)| String::from_utf8_lossy(p))
            .unwrap_or(std::borrow::Cow::Borrowed("default"))
    }

    /// The pool of the longest prefix `key` starts with, if any.
    pub fn prefix_pool(&self, key: &[u8]) -> Option<PoolId> {
        self.prefixes
            .iter()
            .find(|(p, _)| key.starts_with(p))
            .map(|&(_, pool)| pool)
    }

    /// The pool for what the key does not decide: command rule, db rule, default.
    pub fn fallback_pool(&self, lower_name: &[u8], db: u32) -> PoolId {
        if let Some(&(_, pool)) = self.commands.iter().find(|(p, _)| p.matches(lower_name)) {
            return pool;
        }
        self.databases
            .get(db as usize)
            .copied()
            .flatten()
            .unwrap_or(self.default)
    }

    /// Which pool `key` (under `lower_name`, in `db`) goes to and the rule
    /// that decided, in words: what `keyway route` prints.
    pub fn explain(&self, key: &[u8], lower_name: &[u8], db: u32) -> (PoolId, String) {
        if let Some(i) = self.prefix_rule(key) {
            let (prefix, pool) = &self.prefixes[i];
            return (
                *pool,
                format!("prefix \"{}\"", String::from_utf8_lossy(prefix)),
            );
        }
        if let Some((pattern, pool)) = self.commands.iter().find(|(p, _)| p.matches(lower_name)) {
            return (*pool, format!("command {pattern}"));
        }
        if let Some(pool) = self.databases.get(db as usize).copied().flatten() {
            return (pool, format!("database {db}"));
        }
        (self.default, "default".to_string())
    }

    pub fn pool_for_key(&self, key: &[u8], lower_name: &[u8], db: u32) -> PoolId {
        self.prefix_pool(key)
            .unwrap_or_else(|| self.fallback_pool(lower_name, db))
    }

    /// The pool of `key`, and its hash slot when that pool is a cluster.
    pub fn target_for_key(&self, key: &[u8], lower_name: &[u8], db: u32) -> Target {
        let pool = self.pool_for_key(key, lower_name, db);
        Target {
            pool,
            slot: self.is_cluster(pool).then(|| crate::cluster::key_slot(key)),
        }
    }

    pub fn is_cluster(&self, pool: PoolId) -> bool {
        self.clustered.get(pool.index()).copied().unwrap_or(false)
    }

    /// Every pool a glob pattern's keys could live in: the pools of prefixes
    /// compatible with the pattern's literal start, plus the fallback pool
    /// unless the literal start is inside one prefix.
    pub fn pools_for_pattern(&self, pattern: &[u8], lower_name: &[u8], db: u32) -> Vec<PoolId> {
        let literal_len = pattern
            .iter()
            .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
            .unwrap_or(pattern.len());
        let literal = &pattern[..literal_len];
        let mut pools = Vec::new();
        let mut covered = false;
        for (prefix, pool) in &self.prefixes {
            if literal.starts_with(prefix) {
                // The longest such prefix decides every key; shorter ones cannot.
                if !covered {
                    pools.push(*pool);
                }
                covered = true;
            } else if prefix.starts_with(literal) && !pools.contains(pool) {
                pools.push(*pool);
            }
        }
        if !covered {
            let fallback = self.fallback_pool(lower_name, db);
            if !pools.contains(&fallback) {
                pools.push(fallback);
            }
        }
        pools.sort_unstable();
        pools.dedup();
        pools
    }

    /// Plans a request given the argument indexes of its keys; `split`
    /// says how keys in several pools are split, if they may be.
    pub fn plan(
        &self,
        lower_name: &[u8],
        split: Option<SplitKind>,
        request: &Request,
        key_indexes: &[usize],
        db: u32,
    ) -> Plan {
        let Some((&first, rest)) = key_indexes.split_first() else {
            return Plan::One(Target::pool(self.fallback_pool(lower_name, db)));
        };
        let first_target = self.target_for_key(request.arg(first), lower_name, db);
        let other = rest
            .iter()
            .map(|&i| self.target_for_key(request.arg(i), lower_name, db))
            .find(|&t| t != first_target);
        let Some(second) = other else {
            return Plan::One(first_target);
        };
        let Some(kind) = split else {
            if second.pool == first_target.pool {
                return Plan::CrossSlot;
            }
            return Plan::CrossPool(CrossPool {
                first: self.pool_name(first_target.pool).to_string(),
                second: self.pool_name(second.pool).to_string(),
            });
        };
        Plan::Split(self.split(kind, lower_name, request, key_indexes, db))
    }

    fn split(
        &self,
        kind: SplitKind,
        lower_name: &[u8],
        request: &Request,
        key_indexes: &[usize],
        db: u32,
    ) -> SplitPlan {
        let with_value = kind == SplitKind::Mset;
        // Per pool (and slot, for a cluster pool): the part's arguments and
        // the positions of its keys.
        type Group<'a> = (Target, Vec<&'a [u8]>, Vec<usize>);
        let mut groups: Vec<Group> = Vec::new();
        for (position, &i) in key_indexes.iter().enumerate() {
            let key = request.arg(i);
            let target = self.target_for_key(key, lower_name, db);
            let index = match groups.iter().position(|g| g.0 == target) {
                Some(g) => g,
                None => {
                    groups.push((target, vec![request.arg(0)], Vec::new()));
                    groups.len() - 1
                }
            };
            let group = &mut groups[index];
            group.1.push(key);
            if with_value && i + 1 < request.argc() {
                group.1.push(request.arg(i + 1));
            }
            group.2.push(position);
        }
        SplitPlan {
            kind,
            keys: key_indexes.len(),
            parts: groups
                .into_iter()
                .map(|(target, args, positions)| SplitPart {
                    pool: target.pool,
                    slot: target.slot,
                    request: Request::from_args(&args),
                    positions,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let text = r#"
            [pools.session]
            url = "redis://127.0.0.1:6379"
            [pools.cache]
            url = "redis://127.0.0.1:6380"
            [pools.realtime]
            url = "redis://127.0.0.1:6381"
            [routes]
            default = "cache"
            prefixes = [
              { prefix = "session:", pool = "session" },
              { prefix = "session:cache:", pool = "cache" },
              { prefix = "rate:", pool = "realtime" },
            ]
            commands = [{ command = "TS.*", pool = "realtime" }, { command = "FT.SEARCH", pool = "session" }]
            databases = [{ db = 1, pool = "session" }]
        "#;
        Router::new(&Config::from_toml(text, "t", |_| None).unwrap())
    }

    fn name(r: &Router, p: PoolId) -> &str {
        r.pool_name(p)
    }

    #[test]
    fn precedence() {
        let r = router();
        assert_eq!(
            name(&r, r.pool_for_key(b"session:abc", b"get", 0)),
            "session"
        );
        assert_eq!(
            name(&r, r.pool_for_key(b"session:cache:x", b"get", 0)),
            "cache"
        );
        assert_eq!(
            name(&r, r.pool_for_key(b"rate:api:42", b"incr", 1)),
            "realtime"
        );
        assert_eq!(name(&r, r.pool_for_key(b"user:42", b"get", 0)), "cache");
        assert_eq!(name(&r, r.pool_for_key(b"user:42", b"get", 1)), "session");
        assert_eq!(name(&r, r.pool_for_key(b"idx", b"ts.add", 1)), "realtime");
        assert_eq!(name(&r, r.pool_for_key(b"idx", b"ft.search", 0)), "session");
    }

    #[test]
    fn split_and_refuse() {
        let r = router();
        let req = Request::from_args(&["MGET", "session:a", "user:b", "session:c"]);
        let Plan::Split(plan) = r.plan(b"mget", Some(SplitKind::Mget), &req, &[1, 2, 3], 0) else {
            panic!()
        };
        assert_eq!(plan.kind, SplitKind::Mget);
        assert_eq!(plan.parts.len(), 2);
        assert_eq!(plan.parts[0].positions, [0, 2]);
        assert_eq!(
            plan.parts[0].request.arg_vec().to_vec(),
            [&b"MGET"[..], b"session:a", b"session:c"]
        );
        let req = Request::from_args(&["MSET", "session:a", "1", "user:b", "2"]);
        let Plan::Split(plan) = r.plan(b"mset", Some(SplitKind::Mset), &req, &[1, 3], 0) else {
            panic!()
        };
        assert_eq!(
            plan.parts[1].request.arg_vec().to_vec(),
            [&b"MSET"[..], b"user:b", b"2"]
        );
        let req = Request::from_args(&["RENAME", "session:a", "user:b"]);
        let Plan::CrossPool(c) = r.plan(b"rename", None, &req, &[1, 2], 0) else {
            panic!()
        };
        assert_eq!(
            c.to_string(),
            "CROSSPOOL keys of this command map to pools 'session' and 'cache'"
        );
        let req = Request::from_args(&["MGET", "session:a", "session:b"]);
        assert!(matches!(
            r.plan(b"mget", Some(SplitKind::Mget), &req, &[1, 2], 0),
            Plan::One(_)
        ));
    }

    #[test]
    fn patterns() {
        let r = router();
        let names = |pat: &str| -> Vec<String> {
            r.pools_for_pattern(pat.as_bytes(), b"scan", 0)
                .iter()
                .map(|&p| name(&r, p).to_string())
                .collect()
        };
        assert_eq!(names("session:*"), ["cache", "session"]); // session:cache: lives in cache
        assert_eq!(names("rate:*"), ["realtime"]);
        assert_eq!(names("*"), ["cache", "realtime", "session"]);
        assert_eq!(names("user:*"), ["cache"]);
    }
}
