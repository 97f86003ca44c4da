//! How keyway handles each command, decided once per command-table entry
//! (builtin or learned) from its flags and the short override list below,
//! so the session's dispatch is one `match` and never compares names.

use super::spec::{Flags, Spec};

/// What keyway does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Routed by its keys (else its command or database rule) to one pool
    /// and forwarded; some are split across pools.
    Forward(Forward),
    /// Answered by keyway from the client's own state or its own figures.
    Local(Local),
    /// Sent to every distinct backend (or the default pool) and merged.
    Servers(Servers),
    Transaction(TransactionVerb),
    Subscription(SubscriptionVerb),
    /// Refused: it needs a connection state keyway cannot share.
    Refused(&'static str),
}

/// How a forwarded command is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forward {
    /// Keys in several pools: split per pool and merged (else CROSSPOOL).
    pub split: Option<SplitKind>,
    pub blocking: Blocking,
    /// It writes into another database (COPY … DB n, MOVE key n).
    pub database: Option<DatabaseArg>,
    /// MSET: key/value pairs, so an even argument count is an arity error.
    pub pairs: bool,
}

/// How a multi-key command spanning pools is split and merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// MGET: values reassembled in the order the client asked.
    Mget,
    /// MSET: OK only if every part said OK.
    Mset,
    /// DEL, UNLINK, EXISTS, TOUCH: integer replies summed.
    Count,
}

/// Whether a command holds its connection until something happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Blocking {
    #[default]
    Never,
    Always,
    /// XREAD/XREADGROUP: only with a BLOCK option.
    WithBlockOption,
}

/// Where the database argument of COPY/MOVE is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseArg {
    /// After a `DB` option (COPY src dst DB n), the key created at 2.
    AfterDbOption,
    /// MOVE key n: the key at 1, the database at 2.
    Move,
}

/// Commands keyway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Ping,
    Echo,
    Quit,
    Reset,
    Select,
    Hello,
    Auth,
    Client,
    Info,
    Slowlog,
    LatencyHistogram,
}

/// Commands that go to the servers as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    /// COMMAND, TIME, LASTSAVE, CONFIG GET: one consistent view.
    DefaultPool,
    Dbsize,
    Keys,
    RandomKey,
    Scan,
    /// PUBSUB CHANNELS, SHARDCHANNELS: the lists joined.
    PubsubChannels,
    /// PUBSUB NUMSUB, SHARDNUMSUB: counts summed per channel.
    PubsubNumsub,
    /// PUBSUB NUMPAT: summed, keyway's own duplicates taken off.
    PubsubNumpat,
    /// SCRIPT LOAD, FUNCTION LOAD: the first answer stands for all.
    LoadScript,
    /// SCRIPT EXISTS: loaded everywhere.
    ScriptExists,
    /// SCRIPT FLUSH, FUNCTION FLUSH/DELETE/RESTORE, SWAPDB, FLUSHALL,
    /// CLIENT PAUSE: every server says OK.
    EveryServer,
    /// FLUSHDB: every server, in the client's database.
    EveryDatabase,
    /// CONFIG SET/RESETSTAT/REWRITE: every server, and keyway's own slow
    /// log and statistics follow.
    ConfigChange,
    /// WAIT, WAITAOF: every server the client wrote to, each on a leased
    /// connection; the smallest count (`session::wait`).
    WrittenTo,
    /// SCRIPT KILL, FUNCTION KILL, CLIENT UNPAUSE: on connections of their
    /// own, not behind the busy or paused shared ones.
    Urgent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionVerb {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

/// Channels, patterns or shard channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Channel,
    Pattern,
    Shard,
}

impl ChannelKind {
    pub fn subscribe(self) -> &'static str {
        match self {
            ChannelKind::Channel => "subscribe",
            ChannelKind::Pattern => "psubscribe",
            ChannelKind::Shard => "ssubscribe",
        }
    }

    pub fn unsubscribe(self) -> &'static str {
        match self {
            ChannelKind::Channel => "unsubscribe",
            ChannelKind::Pattern => "punsubscribe",
            ChannelKind::Shard => "sunsubscribe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionVerb {
    Subscribe(ChannelKind),
    Unsubscribe(ChannelKind),
}

/// How a reply counts towards cache hits and misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCount {
    No,
    /// A read of one value: nil is a miss.
    Single,
    /// MGET, HMGET: each element counts.
    PerElement,
}

impl Handling {
    /// A command keyway does not know: forwarded by its rules.
    pub const UNKNOWN: Handling = Handling::Forward(Forward {
        split: None,
        blocking: Blocking::Never,
        database: None,
        pairs: false,
    });

    /// Allowed to a RESP2 client in subscriber mode (PING answers there in
    /// the subscriber's shape).
    pub fn allowed_when_subscribed(self) -> bool {
        matches!(
            self,
            Handling::Subscription(_) | Handling::Local(Local::Quit | Local::Reset | Local::Ping)
        )
    }

    /// Refused between MULTI and EXEC unless the transaction's one server
    /// can answer it as part of the transaction: forwarded commands,
    /// PING/ECHO, UNWATCH, COMMAND/TIME/LASTSAVE/CONFIG GET and WAIT. The
    /// rest either reads or changes keyway's own state (SELECT, CLIENT,
    /// INFO; SLOWLOG and LATENCY HISTOGRAM, which queued would show the
    /// server's own figures, every tenant's keys and values among them), or
    /// needs every server, which a transaction on one pool has not got
    /// (FLUSHALL, SCAN, CONFIG SET…). The unsubscribe verbs too: inside a
    /// transaction Redis answers them with one frame per channel, more than
    /// the one reply a queued command owes EXEC, and the frames left over
    /// would reach whoever leases the connection next.
    pub fn refused_in_multi(self) -> bool {
        !matches!(
            self,
            Handling::Forward(_)
                | Handling::Local(Local::Ping | Local::Echo | Local::Quit | Local::Reset)
                | Handling::Servers(Servers::DefaultPool | Servers::WrittenTo)
                | Handling::Transaction(_)
        )
    }
}

/// The override list: what the flags cannot say. Everything else is
/// forwarded (its blocking from the `blocking` flag).
fn overridden(name: &str) -> Option<Handling> {
    use Handling::*;
    let forward = |f: self::Forward| Some(Forward(f));
    let split = |kind| {
        forward(self::Forward {
            split: Some(kind),
            pairs: kind == SplitKind::Mset,
            ..Default::default()
        })
    };
    match name {
        "ping" => Some(Local(self::Local::Ping)),
        "echo" => Some(Local(self::Local::Echo)),
        "quit" => Some(Local(self::Local::Quit)),
        "reset" => Some(Local(self::Local::Reset)),
        "select" => Some(Local(self::Local::Select)),
        "hello" => Some(Local(self::Local::Hello)),
        "auth" => Some(Local(self::Local::Auth)),
        "info" => Some(Local(self::Local::Info)),
        "slowlog" | "slowlog|get" | "slowlog|len" | "slowlog|reset" | "slowlog|help" => {
            Some(Local(self::Local::Slowlog))
        }
        "latency|histogram" => Some(Local(self::Local::LatencyHistogram)),
        "client|pause" => Some(Servers(self::Servers::EveryServer)),
        "client|unpause" => Some(Servers(self::Servers::Urgent)),
        n if n == "client" || n.starts_with("client|") => Some(Local(self::Local::Client)),
        "command"
        | "command|count"
        | "command|docs"
        | "command|getkeys"
        | "command|getkeysandflags"
        | "command|info"
        | "command|list"
        | "command|help"
        | "time"
        | "lastsave"
        | "config|get" => Some(Servers(self::Servers::DefaultPool)),
        "dbsize" => Some(Servers(self::Servers::Dbsize)),
        "keys" => Some(Servers(self::Servers::Keys)),
        "randomkey" => Some(Servers(self::Servers::RandomKey)),
        "scan" => Some(Servers(self::Servers::Scan)),
        "pubsub|channels" | "pubsub|shardchannels" => Some(Servers(self::Servers::PubsubChannels)),
        "pubsub|numsub" | "pubsub|shardnumsub" => Some(Servers(self::Servers::PubsubNumsub)),
        "pubsub|numpat" => Some(Servers(self::Servers::PubsubNumpat)),
        "script|load" | "function|load" => Some(Servers(self::Servers::LoadScript)),
        "script|exists" => Some(Servers(self::Servers::ScriptExists)),
        "script|flush" | "function|flush" | "function|delete" | "function|restore" | "swapdb"
        | "flushall" => Some(Servers(self::Servers::EveryServer)),
        "config|set" | "config|resetstat" | "config|rewrite" => {
            Some(Servers(self::Servers::ConfigChange))
        }
        "flushdb" => Some(Servers(self::Servers::EveryDatabase)),
        "script|kill" | "function|kill" => Some(Servers(self::Servers::Urgent)),
        "multi" => Some(Transaction(TransactionVerb::Multi)),
        "exec" => Some(Transaction(TransactionVerb::Exec)),
        "discard" => Some(Transaction(TransactionVerb::Discard)),
        "watch" => Some(Transaction(TransactionVerb::Watch)),
        "unwatch" => Some(Transaction(TransactionVerb::Unwatch)),
        "subscribe" => Some(Subscription(SubscriptionVerb::Subscribe(
            ChannelKind::Channel,
        ))),
        "psubscribe" => Some(Subscription(SubscriptionVerb::Subscribe(
            ChannelKind::Pattern,
        ))),
        "ssubscribe" => Some(Subscription(SubscriptionVerb::Subscribe(
            ChannelKind::Shard,
        ))),
        "unsubscribe" => Some(Subscription(SubscriptionVerb::Unsubscribe(
            ChannelKind::Channel,
        ))),
        "punsubscribe" => Some(Subscription(SubscriptionVerb::Unsubscribe(
            ChannelKind::Pattern,
        ))),
        "sunsubscribe" => Some(Subscription(SubscriptionVerb::Unsubscribe(
            ChannelKind::Shard,
        ))),
        "monitor" => Some(Refused(
            "MONITOR would show one backend connection, not this client's traffic",
        )),
        "sync" | "psync" | "replconf" => Some(Refused("replication goes to the backends directly")),
        "readonly" | "readwrite" | "asking" => Some(Refused("keyway is not a cluster node")),
        // SCRIPT DEBUG makes the connection's next EVAL a debugger session
        // (YES forks the server and hands it the connection): on a shared
        // connection, every tenant's next command would go to the debugger.
        "script|debug" => Some(Refused(
            "it would turn a shared backend connection into a Lua debugger session",
        )),
        "mget" => split(SplitKind::Mget),
        "mset" => split(SplitKind::Mset),
        "del" | "unlink" | "exists" | "touch" => split(SplitKind::Count),
        "wait" | "waitaof" => Some(Servers(self::Servers::WrittenTo)),
        "xread" | "xreadgroup" => forward(self::Forward {
            blocking: Blocking::WithBlockOption,
            ..Default::default()
        }),
        "copy" => forward(self::Forward {
            database: Some(DatabaseArg::AfterDbOption),
            ..Default::default()
        }),
        "move" => forward(self::Forward {
            database: Some(DatabaseArg::Move),
            ..Default::default()
        }),
        _ => None,
    }
}

/// A command's handling and how it counts for hit/miss.
pub fn classify(spec: &Spec) -> (Handling, CacheCount) {
    let handling = overridden(spec.name).unwrap_or(Handling::Forward(Forward {
        blocking: match spec.flags.contains(Flags::BLOCKING) {
            true => Blocking::Always,
            false => Blocking::Never,
        },
        ..Default::default()
    }));
    let cache = match spec.name {
        "mget" | "hmget" => CacheCount::PerElement,
        _ if spec.flags.contains(Flags::READONLY)
            && !spec.keys.is_empty()
            && !spec.in_acl_category("keyspace") =>
        {
            CacheCount::Single
        }
        _ => CacheCount::No,
    };
    (handling, cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandTable;

    fn handling(args: &[&str]) -> Handling {
        CommandTable::builtin()
            .lookup(args)
            .expect("known")
            .handling
    }

    #[test]
    fn commands_are_classified_from_flags_and_the_override_list() {
        let forward = Handling::Forward(Forward::default());
        assert_eq!(handling(&["GET", "k"]), forward);
        assert_eq!(
            handling(&["BLPOP", "k", "0"]),
            Handling::Forward(Forward {
                blocking: Blocking::Always,
                ..Default::default()
            })
        );
        assert!(matches!(
            handling(&["MSET", "a", "1"]),
            Handling::Forward(Forward {
                split: Some(SplitKind::Mset),
                pairs: true,
                ..
            })
        ));
        assert_eq!(
            handling(&["client", "list"]),
            Handling::Local(Local::Client)
        );
        assert_eq!(
            handling(&["CLIENT", "PAUSE", "10"]),
            Handling::Servers(Servers::EveryServer)
        );
        assert_eq!(
            handling(&["config", "get", "x"]),
            Handling::Servers(Servers::DefaultPool)
        );
        assert_eq!(
            handling(&["config", "set", "x", "y"]),
            Handling::Servers(Servers::ConfigChange)
        );
        assert_eq!(
            handling(&["script", "kill"]),
            Handling::Servers(Servers::Urgent)
        );
        // Subcommands the list does not name are forwarded like any other.
        assert_eq!(handling(&["function", "list"]), forward);
        assert_eq!(handling(&["latency", "latest"]), forward);
        assert!(matches!(handling(&["MONITOR"]), Handling::Refused(_)));
        assert!(matches!(
            handling(&["script", "DEBUG", "yes"]),
            Handling::Refused(_)
        ));
        assert!(handling(&["PSUBSCRIBE", "x"]).allowed_when_subscribed());
        assert!(!handling(&["GET", "x"]).allowed_when_subscribed());
        assert!(handling(&["KEYS", "*"]).refused_in_multi());
        assert!(!handling(&["PING"]).refused_in_multi());
        for verb in ["SUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"] {
            assert!(handling(&[verb, "a", "b"]).refused_in_multi(), "{verb}");
        }
        // Answered by keyway, or by every server: never by the one server
        // a transaction runs on.
        for args in [
            &["SLOWLOG", "GET"][..],
            &["LATENCY", "HISTOGRAM"],
            &["FLUSHALL"],
            &["FLUSHDB"],
            &["SWAPDB", "0", "1"],
            &["CONFIG", "SET", "x", "y"],
            &["SCRIPT", "FLUSH"],
            &["FUNCTION", "DELETE", "lib"],
            &["CLIENT", "PAUSE", "10"],
        ] {
            assert!(handling(args).refused_in_multi(), "{args:?}");
        }
        for args in [
            &["GET", "k"][..],
            &["ECHO", "x"],
            &["TIME"],
            &["WAIT", "1", "0"],
            &["UNWATCH"],
            &["FUNCTION", "LIST"],
        ] {
            assert!(!handling(args).refused_in_multi(), "{args:?}");
        }
    }

    #[test]
    fn every_builtin_entry_has_a_cache_count_that_fits() {
        let table = CommandTable::builtin();
        assert_eq!(
            table.lookup(&["GET", "k"]).unwrap().cache,
            CacheCount::Single
        );
        assert_eq!(
            table.lookup(&["MGET", "k"]).unwrap().cache,
            CacheCount::PerElement
        );
        assert_eq!(
            table.lookup(&["SET", "k", "v"]).unwrap().cache,
            CacheCount::No
        );
        assert_eq!(
            table.lookup(&["EXISTS", "k"]).unwrap().cache,
            CacheCount::No
        );
    }
}
