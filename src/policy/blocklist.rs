//! Commands keyway never forwards: whole commands (`FLUSHALL`) or single
//! subcommands (`CONFIG SET`), matched case-insensitively and through
//! every alias, so `SLAVEOF` is refused when `REPLICAOF` is blocked.

use std::collections::{HashMap, HashSet};

use crate::command::{packed, server_wide_entries, CommandName};

#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    /// Lowercase canonical command name → what of it is blocked. Bytes,
    /// so the per-request lookup needs no UTF-8 check.
    rules: HashMap<Vec<u8>, Rule, foldhash::fast::RandomState>,
    /// Every short name a rule was made for, and its aliases, packed
    /// (`command::packed`): most requests are found not blocked by one
    /// integer lookup. Never shrinks; a name found here is checked above.
    named: HashSet<u128, foldhash::fast::RandomState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Whole,
    /// Only these lowercase subcommands.
    Only(HashSet<String>),
    /// The whole command but these subcommands (a user's `allow`).
    Except(HashSet<String>),
}

/// Commands that are one command under two names (lowercase).
fn canonical(name: &[u8]) -> &[u8] {
    match name {
        b"slaveof" => b"replicaof",
        other => other,
    }
}

/// The other names of a canonical name.
fn aliases(name: &str) -> Option<&'static str> {
    (name == "replicaof").then_some("slaveof")
}

/// `@admin`: every command that changes the server for all tenants, as
/// the command table flags them.
fn is_admin_class(entry: &str) -> bool {
    entry.trim().eq_ignore_ascii_case("@admin")
}

/// `"CONFIG set"` → `("config", Some("set"))`.
fn parse(entry: &str) -> (String, Option<String>) {
    let mut words = entry.split_whitespace().map(|w| w.to_ascii_lowercase());
    let command = words.next().unwrap_or_default();
    let command = String::from_utf8_lossy(canonical(command.as_bytes())).into_owned();
    (command, words.next())
}

impl Blocklist {
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Blocklist {
        let mut list = Blocklist::default();
        for e in entries {
            list.block(e.as_ref());
        }
        list
    }

    fn block(&mut self, entry: &str) {
        if is_admin_class(entry) {
            server_wide_entries().iter().for_each(|e| self.block(e));
            return;
        }
        let (command, sub) = parse(entry);
        for name in std::iter::once(command.as_str()).chain(aliases(&command)) {
            if let Some(key) = packed(name.as_bytes()) {
                self.named.insert(key);
            }
        }
        let Some(sub) = sub else {
            self.rules.insert(command.into_bytes(), Rule::Whole);
            return;
        };
        match self
            .rules
            .entry(command.into_bytes())
            .or_insert_with(|| Rule::Only(HashSet::new()))
        {
            Rule::Whole => {}
            Rule::Only(subs) => {
                subs.insert(sub);
            }
            Rule::Except(allowed) => {
                allowed.remove(&sub);
            }
        }
    }

    fn allow(&mut self, entry: &str) {
        if is_admin_class(entry) {
            server_wide_entries().iter().for_each(|e| self.allow(e));
            return;
        }
        let (command, sub) = parse(entry);
        let Some(sub) = sub else {
            self.rules.remove(command.as_bytes());
            return;
        };
        let Some(rule) = self.rules.get_mut(command.as_bytes()) else {
            return;
        };
        match rule {
            // Allowing `CONFIG GET` under a blocked `CONFIG` keeps the rest blocked.
            Rule::Whole => *rule = Rule::Except(HashSet::from([sub])),
            Rule::Except(allowed) => {
                allowed.insert(sub);
            }
            Rule::Only(subs) => {
                subs.remove(&sub);
                if subs.is_empty() {
                    self.rules.remove(command.as_bytes());
                }
            }
        }
    }

    /// This list with `allow` lifted and `block` added (per-user overrides).
    pub fn with_overrides<S: AsRef<str>>(&self, allow: &[S], block: &[S]) -> Blocklist {
        let mut list = self.clone();
        for a in allow {
            list.allow(a.as_ref());
        }
        for b in block {
            list.block(b.as_ref());
        }
        list
    }

    /// The blocked entry that matches, as the client should see it named.
    pub fn blocked(&self, command: &CommandName, sub: Option<&[u8]>) -> Option<String> {
        if self.rules.is_empty() {
            return None;
        }
        if command.key().is_some_and(|key| !self.named.contains(&key)) {
            return None;
        }
        let lower = canonical(command.whole()?);
        let rule = self.rules.get(lower)?;
        // Blocked, or a subcommand rule to look at: rare, so text from here.
        let command = std::str::from_utf8(lower).ok()?;
        let sub_named = || {
            let sub = String::from_utf8_lossy(sub.unwrap_or_default()).to_ascii_lowercase();
            let blocked = match rule {
                Rule::Whole => true,
                Rule::Only(subs) => subs.contains(&sub),
                Rule::Except(allowed) => !allowed.contains(&sub),
            };
            blocked.then(|| {
                format!(
                    "{} {}",
                    command.to_ascii_uppercase(),
                    sub.to_ascii_uppercase()
                )
            })
        };
        match (rule, sub) {
            (Rule::Whole, _) => Some(command.to_ascii_uppercase()),
            (_, None) => None,
            (_, Some(_)) => sub_named(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_subcommands_and_aliases() {
        let b = Blocklist::new(&["FLUSHALL", "config set", "REPLICAOF"]);
        assert_eq!(
            b.blocked(&CommandName::of(b"flushall"), None).as_deref(),
            Some("FLUSHALL")
        );
        assert_eq!(
            b.blocked(&CommandName::of(b"CONFIG"), Some(b"SET"))
                .as_deref(),
            Some("CONFIG SET")
        );
        assert_eq!(b.blocked(&CommandName::of(b"CONFIG"), Some(b"get")), None);
        assert_eq!(
            b.blocked(&CommandName::of(b"SLAVEOF"), Some(b"no"))
                .as_deref(),
            Some("REPLICAOF")
        );
        assert_eq!(b.blocked(&CommandName::of(b"GET"), Some(b"k")), None);
    }

    #[test]
    fn the_admin_class_and_lifting_it() {
        let b = Blocklist::new(&["@admin"]);
        for (command, sub) in [
            (&b"replicaof"[..], Some(&b"127.0.0.1"[..])),
            (b"swapdb", Some(b"0")),
            (b"config", Some(b"set")),
            (b"script", Some(b"flush")),
            (b"acl", Some(b"setuser")),
        ] {
            assert!(b.blocked(&CommandName::of(command), sub).is_some());
        }
        assert_eq!(b.blocked(&CommandName::of(b"script"), Some(b"load")), None);
        assert_eq!(b.blocked(&CommandName::of(b"get"), Some(b"k")), None);
        let lifted = b.with_overrides(&["CONFIG GET", "SWAPDB"], &[] as &[&str]);
        assert_eq!(
            lifted.blocked(&CommandName::of(b"config"), Some(b"get")),
            None
        );
        assert_eq!(
            lifted.blocked(&CommandName::of(b"swapdb"), Some(b"0")),
            None
        );
        assert!(lifted
            .blocked(&CommandName::of(b"config"), Some(b"set"))
            .is_some());
        let all = b.with_overrides(&["@admin"], &[] as &[&str]);
        assert_eq!(all.blocked(&CommandName::of(b"flushall"), None), None);
    }

    #[test]
    fn per_user_overrides() {
        let b = Blocklist::new(&["CONFIG", "FLUSHALL"]);
        let admin = b.with_overrides(&["CONFIG GET"], &["KEYS"]);
        assert_eq!(
            admin.blocked(&CommandName::of(b"config"), Some(b"get")),
            None
        );
        assert_eq!(
            admin
                .blocked(&CommandName::of(b"config"), Some(b"set"))
                .as_deref(),
            Some("CONFIG SET")
        );
        assert_eq!(
            admin
                .blocked(&CommandName::of(b"keys"), Some(b"*"))
                .as_deref(),
            Some("KEYS")
        );
        let lifted = b.with_overrides(&["FLUSHALL"], &[] as &[&str]);
        assert_eq!(lifted.blocked(&CommandName::of(b"flushall"), None), None);
    }

    #[test]
    fn subcommand_rules_and_odd_names() {
        let b = Blocklist::new(&["config set", "CONFIG RESETSTAT"]);
        let lifted = b.with_overrides(&["config set", "config resetstat"], &[] as &[&str]);
        assert_eq!(
            lifted.blocked(&CommandName::of(b"config"), Some(b"set")),
            None
        );
        assert_eq!(
            b.blocked(&CommandName::of(b"Config"), Some(b"ResetStat"))
                .as_deref(),
            Some("CONFIG RESETSTAT")
        );
        // Longer than any command name, or not text: never blocked, no panic.
        assert_eq!(
            b.blocked(&CommandName::of(&[b'c'; 200]), Some(b"set")),
            None
        );
        assert_eq!(b.blocked(&CommandName::of(&[0xff, 0xfe]), None), None);
        let admin = Blocklist::new(&["CONFIG"]).with_overrides(&["config get"], &["config get"]);
        assert_eq!(
            admin
                .blocked(&CommandName::of(b"config"), Some(b"get"))
                .as_deref(),
            Some("CONFIG GET")
        );
    }
}
