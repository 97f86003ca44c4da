//! Commands keyway never forwards: whole commands (`FLUSHALL`) or single
//! subcommands (`CONFIG SET`), matched case-insensitively and through
//! every alias, so `SLAVEOF` is refused when `REPLICAOF` is blocked.

use std::collections::HashSet;

#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    /// Lowercase `command` or `command|subcommand`, canonical names.
    entries: HashSet<String>,
}

/// Commands that are one command under two names.
fn canonical(name: &str) -> &str {
    match name {
        "slaveof" => "replicaof",
        other => other,
    }
}

fn key(entry: &str) -> String {
    let mut words = entry.split_whitespace().map(|w| w.to_ascii_lowercase());
    let command = words.next().unwrap_or_default();
    let command = canonical(&command).to_string();
    match words.next() {
        Some(sub) => format!("{command}|{sub}"),
        None => command,
    }
}

impl Blocklist {
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Blocklist {
        Blocklist {
            entries: entries.iter().map(|e| key(e.as_ref())).collect(),
        }
    }

    /// This list with `allow` lifted and `block` added (per-user overrides).
    pub fn with_overrides<S: AsRef<str>>(&self, allow: &[S], block: &[S]) -> Blocklist {
        let mut entries = self.entries.clone();
        for a in allow {
            let a = key(a.as_ref());
            entries.remove(&a);
            // Allowing `CONFIG GET` under a blocked `CONFIG` keeps the rest blocked.
            if let Some((command, _)) = a.split_once('|') {
                if entries.remove(command) {
                    entries.insert(format!("{command}|*except|{a}"));
                }
            }
        }
        entries.extend(block.iter().map(|b| key(b.as_ref())));
        Blocklist { entries }
    }

    /// The blocked entry that matches, as the client should see it named.
    pub fn blocked(&self, command: &[u8], sub: Option<&[u8]>) -> Option<String> {
        if self.entries.is_empty() {
            return None;
        }
        let command = String::from_utf8_lossy(command).to_ascii_lowercase();
        let command = canonical(&command);
        let sub = sub.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        if self.entries.contains(command) {
            return Some(command.to_ascii_uppercase());
        }
        let sub = sub?;
        let pair = format!("{command}|{sub}");
        if self.entries.contains(&pair) {
            return Some(format!(
                "{} {}",
                command.to_ascii_uppercase(),
                sub.to_ascii_uppercase()
            ));
        }
        let prefix = format!("{command}|*except|");
        let excepted: Vec<&String> = self
            .entries
            .iter()
            .filter(|e| e.starts_with(&prefix))
            .collect();
        if !excepted.is_empty() && !excepted.iter().any(|e| e[prefix.len()..] == pair) {
            return Some(format!(
                "{} {}",
                command.to_ascii_uppercase(),
                sub.to_ascii_uppercase()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_subcommands_and_aliases() {
        let b = Blocklist::new(&["FLUSHALL", "config set", "REPLICAOF"]);
        assert_eq!(b.blocked(b"flushall", None).as_deref(), Some("FLUSHALL"));
        assert_eq!(
            b.blocked(b"CONFIG", Some(b"SET")).as_deref(),
            Some("CONFIG SET")
        );
        assert_eq!(b.blocked(b"CONFIG", Some(b"get")), None);
        assert_eq!(
            b.blocked(b"SLAVEOF", Some(b"no")).as_deref(),
            Some("REPLICAOF")
        );
        assert_eq!(b.blocked(b"GET", Some(b"k")), None);
    }

    #[test]
    fn per_user_overrides() {
        let b = Blocklist::new(&["CONFIG", "FLUSHALL"]);
        let admin = b.with_overrides(&["CONFIG GET"], &["KEYS"]);
        assert_eq!(admin.blocked(b"config", Some(b"get")), None);
        assert_eq!(
            admin.blocked(b"config", Some(b"set")).as_deref(),
            Some("CONFIG SET")
        );
        assert_eq!(admin.blocked(b"keys", Some(b"*")).as_deref(), Some("KEYS"));
        let lifted = b.with_overrides(&["FLUSHALL"], &[] as &[&str]);
        assert_eq!(lifted.blocked(b"flushall", None), None);
    }
}
