//! Policy at the edge: who a client is (AUTH against keyway's own users,
//! compared in constant time, with a lock-out for addresses that keep
//! failing), what it may run (blocklist, read-only, ACL categories), which
//! keys it may touch (prefixes), and how fast (rate limits).

mod blocklist;
mod limits;
mod lockout;
mod shared;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use subtle::ConstantTimeEq;

pub use blocklist::Blocklist;
pub use limits::{command_key, Backing, Limit, LimitKey, Subject, Verdict};
use lockout::Lockout;
pub use shared::SCRIPT as SHARED_LIMIT_SCRIPT;

use crate::command::{CommandName, Flags, Spec};
use crate::config::{Config, LimitAction};
use crate::resp;

/// A keyway user: `default` (the requirepass password, or everyone when
/// no authentication is configured) or one of `[[auth.users]]`.
#[derive(Debug)]
pub struct User {
    pub name: Arc<str>,
    password: Option<Vec<u8>>,
    /// `None` is every key.
    prefixes: Option<Vec<Vec<u8>>>,
    read_only: bool,
    categories: Vec<String>,
    blocklist: Blocklist,
    enabled: bool,
    /// Scripts and functions, which reach past declared keys, are allowed
    /// to a prefix-restricted user.
    allow_scripts: bool,
    /// Sees and acts on other users' clients.
    pub admin: bool,
}

impl User {
    /// Limited to key prefixes: what its commands reach is checked.
    #[inline]
    pub fn has_prefixes(&self) -> bool {
        self.prefixes.is_some()
    }
}

/// Why keyway refused a request; each is one RESP error line and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    NoAuth,
    HelloNoAuth,
    WrongPass,
    LockedOut(Duration),
    Blocked(String),
    NoPermCommand(String),
    NoPermKey(Vec<u8>),
    NoPermChannel(Vec<u8>),
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    /// A shared limit that fails closed, its pool unreachable.
    LimitUnavailable(String),
}

impl Denial {
    pub fn to_resp(&self) -> Bytes {
        // A key or channel is the client's own bytes, echoed as they came.
        let named = |what: &str, name: &[u8]| {
            let mut msg = b"NOPERM this user has no permissions to access the '".to_vec();
            msg.extend_from_slice(&name[..name.len().min(256)]);
            msg.extend_from_slice(format!("' {what}").as_bytes());
            resp::error_bytes(&msg)
        };
        let text = match self {
            Denial::NoPermKey(k) => return named("key", k),
            Denial::NoPermChannel(c) => return named("channel", c),
            Denial::NoAuth => "NOAUTH Authentication required.".to_string(),
            Denial::HelloNoAuth => "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".to_string(),
            Denial::WrongPass => "WRONGPASS invalid username-password pair or user is disabled.".to_string(),
            Denial::LockedOut(d) => format!(
                "ERR too many failed authentication attempts from this address, retry after {}s",
                d.as_secs().max(1)
            ),
            Denial::Blocked(c) => format!("ERR command '{c}' is blocked by keyway policy"),
            Denial::NoPermCommand(c) => format!("NOPERM this user has no permissions to run the '{c}' command"),
            Denial::RateLimited { limit, retry_after } => format!(
                "ERR rate limit exceeded (limit '{limit}'), retry after {}ms",
                retry_after.as_millis().max(1)
            ),
            Denial::LimitUnavailable(_) => "ERR rate limit unavailable".to_string(),
        };
        resp::error(&text)
    }

    /// The `reason` and `detail` labels of `keyway_denials_total`.
    pub fn labels(&self) -> (&'static str, String) {
        match self {
            Denial::NoAuth | Denial::HelloNoAuth => ("auth", "noauth".into()),
            Denial::WrongPass => ("auth", "wrongpass".into()),
            Denial::LockedOut(_) => ("auth", "lockout".into()),
            Denial::Blocked(c) => ("blocklist", c.clone()),
            Denial::NoPermCommand(c) if crate::command::is_builtin_name(c) => ("noperm", c.clone()),
            Denial::NoPermCommand(_) => ("noperm", "other".into()),
            Denial::NoPermKey(_) => ("noperm", "key".into()),
            Denial::NoPermChannel(_) => ("noperm", "channel".into()),
            Denial::RateLimited { limit, .. } => ("ratelimit", limit.clone()),
            Denial::LimitUnavailable(limit) => ("ratelimit_unavailable", limit.clone()),
        }
    }
}

pub struct Policy {
    /// Clients must AUTH before anything else.
    pub auth_required: bool,
    users: HashMap<String, Arc<User>>,
    anonymous: Arc<User>,
    limits: Vec<Arc<Limit>>,
    lockout: Arc<Lockout>,
}

impl Policy {
    /// Who `user`'s held leases count for: with several users configured,
    /// each is held to its share of a pool's (`backend::tenants`).
    pub fn tenant(&self, user: &User) -> crate::backend::Tenant {
        crate::backend::Tenant {
            user: user.name.clone(),
            shared: self.users.len() > 1,
        }
    }

    pub fn new(config: &Config) -> Policy {
        // Server-wide commands are refused unless explicitly allowed.
        let mut entries = vec!["@admin".to_string()];
        entries.extend(config.policy.blocklist.iter().cloned());
        let global = Blocklist::new(&entries).with_overrides(&config.policy.allow, &[]);
        let mut users = HashMap::new();
        if let Some(pass) = config.passwords.get("default") {
            users.insert(
                "default".to_string(),
                Arc::new(User {
                    name: Arc::from("default"),
                    password: Some(pass.0.clone()),
                    prefixes: None,
                    read_only: false,
                    categories: Vec::new(),
                    blocklist: global.clone(),
                    enabled: true,
                    allow_scripts: true,
                    admin: true,
                }),
            );
        }
        for u in &config.auth.users {
            let prefixes = (!u.prefixes.iter().any(|p| p == "*"))
                .then(|| u.prefixes.iter().map(|p| p.as_bytes().to_vec()).collect());
            users.insert(
                u.name.clone(),
                Arc::new(User {
                    name: Arc::from(u.name.as_str()),
                    password: config.passwords.get(&u.name).map(|s| s.0.clone()),
                    prefixes,
                    read_only: u.read_only,
                    categories: u
                        .categories
                        .iter()
                        .map(|c| c.trim_start_matches('@').to_ascii_lowercase())
                        .collect(),
                    blocklist: global.with_overrides(&u.allow, &u.block),
                    enabled: u.enabled,
                    allow_scripts: u.allow_scripts,
                    admin: u.admin,
                }),
            );
        }
        let per_minute =
            NonZeroU32::new(config.auth.max_failures_per_minute).unwrap_or(NonZeroU32::MIN);
        Policy {
            auth_required: !users.is_empty(),
            anonymous: Arc::new(User {
                name: Arc::from("default"),
                password: None,
                prefixes: None,
                read_only: false,
                categories: Vec::new(),
                blocklist: global,
                enabled: true,
                allow_scripts: true,
                admin: true,
            }),
            users,
            limits: config
                .limits
                .iter()
                .map(|l| Arc::new(Limit::new(l, |name| config.pool_id(name))))
                .collect(),
            lockout: Arc::new(Lockout::new(per_minute)),
        }
    }

    /// The policy of a reloaded configuration, keeping the state that must
    /// outlive a reload: the failed-AUTH lock-outs (else anyone who can
    /// trigger a reload, `POST /reload` on the admin port, could go on
    /// guessing passwords) and each limit whose settings did not change
    /// (else a reload would hand every client a fresh burst).
    pub fn reloaded(config: &Config, old: &Policy) -> Policy {
        let mut policy = Policy::new(config);
        if policy.lockout.per_minute == old.lockout.per_minute {
            policy.lockout = old.lockout.clone();
        }
        for limit in policy.limits.iter_mut() {
            if let Some(kept) = old.limits.iter().find(|o| o.same_settings(limit)) {
                *limit = kept.clone();
            }
        }
        policy
    }

    /// The user of a client that has not authenticated: everyone is
    /// `default` when authentication is off, nobody when it is on.
    pub fn initial_user(&self) -> Option<Arc<User>> {
        (!self.auth_required).then(|| self.anonymous.clone())
    }

    /// Whether `name` is a user (CLIENT KILL USER): `default` always is,
    /// as in Redis.
    pub fn knows_user(&self, name: &str) -> bool {
        name == "default" || self.users.contains_key(name)
    }

    /// The same user under a reloaded configuration: `None` when it was
    /// removed or disabled (the client must authenticate again).
    pub fn same_user(&self, user: &User) -> Option<Arc<User>> {
        if !self.auth_required {
            return Some(self.anonymous.clone());
        }
        // The anonymous user of an auth-less configuration has no password.
        user.password.as_ref()?;
        self.users
            .get(user.name.as_ref())
            .filter(|u| u.enabled)
            .cloned()
    }

    /// AUTH [user] password. Every password is compared in full, in
    /// constant time; failures count towards the lock-out of that user
    /// name from that address (see `lockout`).
    pub fn authenticate(
        &self,
        ip: IpAddr,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> Result<Arc<User>, Denial> {
        let name = user
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_else(|| "default".into());
        let found = self.users.get(&name).filter(|u| u.enabled);
        // Unknown names share one key, so made-up names cannot grow the table.
        let key_name = found.map_or(lockout::UNKNOWN_USER, |u| &*u.name);
        self.lockout.check(ip, key_name)?;
        let expected = found.and_then(|u| u.password.as_deref()).unwrap_or(b"");
        let matches: bool = expected.ct_eq(password).into();
        match found {
            Some(u) if matches && u.password.is_some() => {
                self.lockout.succeeded(ip, key_name);
                Ok(u.clone())
            }
            _ => {
                if let Err(wait) = self.lockout.failed(ip, key_name) {
                    // The lock's own name, not what the client sent: a made-up
                    // name could forge log lines or be a misplaced password.
                    tracing::warn!(%ip, user = %key_name, "too many failed AUTH attempts; user locked out from this address");
                    return Err(Denial::LockedOut(wait));
                }
                Err(Denial::WrongPass)
            }
        }
    }

    /// Blocklist, read-only and category checks for a command.
    pub fn check_command(
        &self,
        user: &User,
        name: &CommandName,
        spec: Option<&Spec>,
        sub: Option<&[u8]>,
    ) -> Result<(), Denial> {
        if let Some(entry) = user.blocklist.blocked(name, sub) {
            return Err(Denial::Blocked(entry));
        }
        let command = || {
            spec.map(|s| s.name.to_string())
                .unwrap_or_else(|| String::from_utf8_lossy(name.as_bytes()).into_owned())
        };
        let Some(spec) = spec else {
            // A command keyway cannot classify is not run for a restricted
            // user: its keys, and so what it reaches, are unknown.
            if user.read_only || !user.categories.is_empty() || user.prefixes.is_some() {
                return Err(Denial::NoPermCommand(command()));
            }
            return Ok(());
        };
        // Read-only: no write, no admin command, and of scripts only the
        // _RO forms, whose read-only-ness Redis enforces.
        if user.read_only
            && (spec.flags.contains(Flags::WRITE)
                || crate::command::is_server_wide(spec.name, spec.flags, spec.acl)
                || (runs_code(spec) && !spec.flags.contains(Flags::READONLY)))
        {
            return Err(Denial::NoPermCommand(command()));
        }
        // Without `allow_scripts`, a prefix-limited user gets no scripting
        // command at all: a script reaches keys it does not declare, a
        // function it loads (FUNCTION LOAD REPLACE) runs when another
        // tenant calls it, FUNCTION DUMP/LIST WITHCODE show the others'
        // code and SCRIPT/FUNCTION KILL end their scripts.
        if user.prefixes.is_some() && !user.allow_scripts && spec.in_acl_category("scripting") {
            return Err(Denial::NoPermCommand(command()));
        }
        if !user.categories.is_empty()
            && !user
                .categories
                .iter()
                .any(|c| c == "all" || spec.in_acl_category(c))
        {
            return Err(Denial::NoPermCommand(command()));
        }
        Ok(())
    }

    /// What a prefix-restricted user's command reaches besides its key
    /// positions: SORT's BY/GET patterns, KEYS and SCAN patterns, random
    /// keys, and pub/sub channels, each held to the user's prefixes.
    pub fn check_reach(&self, user: &User, spec: &Spec, args: &[&[u8]]) -> Result<(), Denial> {
        let Some(prefixes) = &user.prefixes else {
            return Ok(());
        };
        let within = |pattern: &[u8]| within_prefixes(prefixes, pattern);
        let pattern_denied = |pattern: &[u8]| Err(Denial::NoPermKey(pattern.to_vec()));
        match spec.name {
            "sort" | "sort_ro" => {
                for pair in args.windows(2).skip(2) {
                    let pattern = pair[1];
                    let reaches = (pair[0].eq_ignore_ascii_case(b"BY") && pattern.contains(&b'*'))
                        || (pair[0].eq_ignore_ascii_case(b"GET") && pattern != b"#");
                    if reaches && !within(pattern) {
                        return pattern_denied(pattern);
                    }
                }
                Ok(())
            }
            "keys" => match args.get(1) {
                Some(p) if !within(p) => pattern_denied(p),
                _ => Ok(()),
            },
            // The MATCH SCAN uses: the last one (SCAN 0 MATCH user:* MATCH *
            // lists every key).
            "scan" => match crate::command::last_paired_option(args, 2, b"MATCH") {
                Some(p) if within(p) => Ok(()),
                Some(p) => pattern_denied(p),
                None => pattern_denied(b"*"),
            },
            // Keys of any tenant, by slot, on a cluster pool's node.
            "randomkey" | "cluster|getkeysinslot" | "cluster|countkeysinslot" => {
                Err(Denial::NoPermCommand(spec.name.to_string()))
            }
            "subscribe" | "ssubscribe" | "psubscribe" | "pubsub|numsub" | "pubsub|shardnumsub" => {
                match args
                    .iter()
                    .skip(if spec.name.contains('|') { 2 } else { 1 })
                    .find(|c| !within(c))
                {
                    Some(c) => Err(Denial::NoPermChannel(c.to_vec())),
                    None => Ok(()),
                }
            }
            "publish" | "spublish" => match args.get(1) {
                Some(c) if !within(c) => Err(Denial::NoPermChannel(c.to_vec())),
                _ => Ok(()),
            },
            "pubsub|channels" | "pubsub|shardchannels" => match args.get(2) {
                Some(p) if within(p) => Ok(()),
                other => Err(Denial::NoPermChannel(
                    other.map_or(b"*".to_vec(), |p| p.to_vec()),
                )),
            },
            _ => Ok(()),
        }
    }

    /// A channel or pattern the user subscribes to (or stays subscribed
    /// to, after a reload).
    pub fn check_channel(&self, user: &User, name: &[u8]) -> Result<(), Denial> {
        match &user.prefixes {
            Some(prefixes) if !within_prefixes(prefixes, name) => {
                Err(Denial::NoPermChannel(name.to_vec()))
            }
            _ => Ok(()),
        }
    }

    pub fn check_key(&self, user: &User, key: &[u8]) -> Result<(), Denial> {
        match &user.prefixes {
            Some(prefixes) if !prefixes.iter().any(|p| key.starts_with(p)) => {
                Err(Denial::NoPermKey(key.to_vec()))
            }
            _ => Ok(()),
        }
    }

    pub fn has_limits(&self, pool_scoped: bool) -> bool {
        self.limits.iter().any(|l| l.needs_pool() == pool_scoped)
    }

    /// Every applicable limit must admit the request; a `delay` limit may
    /// wait (bounded) for a slot before refusing.
    pub async fn admit(
        &self,
        subject: &Subject<'_>,
        pool_scoped: bool,
        backing: &Backing<'_>,
    ) -> Result<(), Denial> {
        for limit in self.limits.iter().filter(|l| l.needs_pool() == pool_scoped) {
            let mut verdict = limit.verdict(subject, backing).await;
            if let Verdict::Wait(wait) = verdict {
                if limit.action == LimitAction::Delay && wait <= limit.max_delay {
                    tokio::time::sleep(wait).await;
                    verdict = limit.verdict(subject, backing).await;
                }
            }
            match verdict {
                Verdict::Admit => {}
                Verdict::Wait(retry_after) => {
                    return Err(Denial::RateLimited {
                        limit: limit.name.clone(),
                        retry_after,
                    })
                }
                Verdict::Unavailable => return Err(Denial::LimitUnavailable(limit.name.clone())),
            }
        }
        Ok(())
    }

    /// Drops limiter state for idle keys and expired lock-outs.
    pub fn purge_idle(&self) {
        for l in &self.limits {
            l.purge_idle();
        }
        self.lockout.purge_idle();
    }

    pub fn limits(&self) -> &[Arc<Limit>] {
        &self.limits
    }
}

/// EVAL, EVALSHA, FCALL and their _RO forms: code that may touch keys it
/// does not declare.
fn runs_code(spec: &Spec) -> bool {
    spec.in_acl_category("scripting") && spec.flags.contains(Flags::MOVABLE_KEYS)
}

/// Whether a key, channel or glob pattern stays inside one of `prefixes`:
/// it starts with the prefix, and the prefix itself is literal text.
fn within_prefixes(prefixes: &[Vec<u8>], text: &[u8]) -> bool {
    prefixes
        .iter()
        .any(|p| text.starts_with(p) && !p.iter().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')))
}
