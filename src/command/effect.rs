//! What a command does beyond its own keys, judged from the command table's
//! flags rather than by name: the commands that change the server for
//! every tenant (its configuration, replication, persistence, ACLs, other
//! clients, whole databases). keyway refuses these by default; an operator
//! lifts them with `allow`.

use super::table::BUILTIN;
use super::Flags;

/// Flagged `admin` or `@dangerous` in Redis's table, yet run by keyway on
/// the client's own behalf or only reading: INFO, CLIENT, SLOWLOG GET and
/// LATENCY reads are answered per client; KEYS and SORT touch keys and
/// patterns, which key prefixes check; keyway refuses MONITOR and
/// replication on its own, with its own error. (RESTORE stays server-wide:
/// a crafted payload can bring the shared server down.)
const SERVED_PER_CLIENT: &[&str] = &[
    "info",
    "keys",
    "sort",
    "sort_ro",
    "role",
    "lastsave",
    "slowlog|get",
    "slowlog|len",
    "latency|histogram",
    "latency|history",
    "latency|latest",
    "latency|doctor",
    "latency|graph",
    "monitor",
    "sync",
    "psync",
    "replconf",
];

/// Not flagged `admin`, yet they erase what every tenant's scripts and
/// functions rely on.
const ALSO_SERVER_WIDE: &[&str] = &[
    "script|flush",
    "function|flush",
    "function|delete",
    "function|restore",
];

/// Whether a table entry (`config|set`, `flushall`) changes the server
/// for every tenant.
pub fn is_server_wide(name: &str, flags: Flags, acl: &[&str]) -> bool {
    if ALSO_SERVER_WIDE.contains(&name) {
        return true;
    }
    // CLIENT subcommands act on keyway's own clients, except PAUSE and
    // UNPAUSE, which stop (or restart) every tenant's commands.
    let own_clients = name.starts_with("client|") && !name.ends_with("pause");
    if SERVED_PER_CLIENT.contains(&name) || own_clients {
        return false;
    }
    flags.contains(Flags::ADMIN) || acl.contains(&"dangerous")
}

/// The server-wide commands as blocklist entries (`"CONFIG SET"`,
/// `"FLUSHALL"`), derived from the builtin table: what `@admin` names in
/// the policy's lists.
pub fn server_wide_entries() -> Vec<String> {
    BUILTIN
        .iter()
        .filter(|s| !s.has_subcommands && is_server_wide(s.name, s.flags, s.acl))
        .map(|s| s.name.replace('|', " ").to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_wide_commands_come_from_the_table() {
        let entries = server_wide_entries();
        for expected in [
            "REPLICAOF",
            "SLAVEOF",
            "SWAPDB",
            "MIGRATE",
            "ACL SETUSER",
            "MODULE LOAD",
            "SAVE",
            "BGSAVE",
            "BGREWRITEAOF",
            "FAILOVER",
            "SCRIPT FLUSH",
            "FUNCTION FLUSH",
            "FUNCTION DELETE",
            "FUNCTION RESTORE",
            "DEBUG",
            "CONFIG SET",
            "CONFIG GET",
            "SHUTDOWN",
            "FLUSHALL",
            "FLUSHDB",
            "SLOWLOG RESET",
            "LATENCY RESET",
            "RESTORE",
        ] {
            assert!(entries.iter().any(|e| e == expected), "{expected} missing");
        }
        for served in [
            "INFO",
            "KEYS",
            "SORT",
            "CLIENT KILL",
            "SLOWLOG GET",
            "GET",
            "EVAL",
        ] {
            assert!(!entries.iter().any(|e| e == served), "{served} listed");
        }
    }
}
