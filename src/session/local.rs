//! Commands keyway answers itself because they are about the connection
//! (PING, HELLO, SELECT, CLIENT ...) or about the whole keyspace, which no
//! single pool holds (INFO, DBSIZE, SCAN, KEYS, RANDOMKEY).

use bytes::Bytes;

use super::dispatch::Server;
use super::merge::{decode_scan_cursor, InfoRequest, Merge};
use super::reply::{Fanout, Part, Reply};
use super::Session;
use crate::command::{Local, Servers};
use crate::resp::{self, Protocol, ReplyBuf, Request};
use crate::route::PoolId;

fn err(msg: &str) -> Option<Reply> {
    Some(Reply::now(resp::error(msg)))
}

fn wrong_args(name: &str) -> Option<Reply> {
    err(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn ok() -> Option<Reply> {
    Some(Reply::now(resp::simple("OK")))
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

impl Session {
    /// A command keyway answers itself. What a handler leaves to Redis
    /// (a HELP, a subcommand keyway does not answer) goes to the default pool.
    pub(super) async fn local(&mut self, local: Local, req: &Request) -> Reply {
        let answer = match local {
            Local::Ping => match req.argc() {
                1 => Some(Reply::now(resp::simple("PONG"))),
                2 => Some(Reply::now(resp::bulk(req.arg(1)))),
                _ => wrong_args("ping"),
            },
            Local::Echo => Some(Reply::now(resp::bulk(req.arg(1)))),
            Local::Quit => Some(Reply::close(resp::simple("OK"))),
            Local::Reset => Some(self.reset()),
            Local::Select => self.select(req.arg(1)),
            Local::Hello => self.hello(req),
            Local::Auth => self.auth(req),
            Local::Client => self.client_command(req),
            Local::Info => Some(Box::pin(self.info(req)).await),
            Local::Slowlog => self.slowlog(req),
            // Keyway's own latencies, as it is the server its clients see.
            Local::LatencyHistogram => {
                let only: Vec<String> = req
                    .args()
                    .skip(2)
                    .map(|a| text(a).to_ascii_lowercase())
                    .collect();
                Some(Reply::now(crate::commandstats::latency_histogram(
                    &self.state.metrics,
                    &self.state.stats.commands,
                    self.client.proto,
                    &only,
                )))
            }
        };
        match answer {
            Some(reply) => reply,
            None => {
                let pool = self.state.live().router.default_pool();
                self.forward(pool, req.bytes().clone()).await
            }
        }
    }

    /// A command for the servers as a whole: each distinct backend once
    /// (pools sharing a Redis are asked once), replies merged. Server-wide
    /// commands reach here only where policy allows them (`allow`): then
    /// they apply to every backend, as they would to the one Redis the
    /// client thinks it talks to.
    pub(super) async fn servers(&mut self, servers: Servers, name: &[u8], req: &Request) -> Reply {
        // Per server (scripts, channels, configuration), or per server and
        // database (keys).
        let per_server = |s: &Self| s.distinct(s.all_pools(), false);
        let per_database = |s: &Self| s.distinct(s.all_pools(), true);
        let (pools, merge) = match servers {
            // One consistent view, whatever the client's database.
            Servers::DefaultPool => {
                let pool = self.state.live().router.default_pool();
                return self.forward(pool, req.bytes().clone()).await;
            }
            Servers::Dbsize => (per_database(self), Merge::SumIntegers),
            Servers::Keys => {
                let pools =
                    self.state
                        .live()
                        .router
                        .pools_for_pattern(req.arg(1), name, self.client.db);
                (self.distinct(pools, true), Merge::ConcatArrays)
            }
            Servers::RandomKey => {
                let mut pools = per_database(self);
                let n = pools.len();
                pools.rotate_left(self.client.id as usize % n.max(1));
                (pools, Merge::FirstNonNil)
            }
            Servers::Scan => return Box::pin(self.scan(req)).await,
            Servers::PubsubChannels => (per_server(self), Merge::ConcatArrays),
            Servers::PubsubNumsub => (per_server(self), Merge::SumPairs),
            Servers::PubsubNumpat => (
                per_server(self),
                Merge::SumLess(self.own_pattern_duplicates()),
            ),
            Servers::LoadScript => (per_server(self), Merge::First),
            Servers::ScriptExists => (per_server(self), Merge::AllExist),
            Servers::EveryServer => (per_server(self), Merge::AllOk),
            Servers::EveryDatabase => (per_database(self), Merge::AllOk),
            Servers::ConfigChange => {
                // What keyway keeps itself (its slow log, its statistics)
                // follows, as the one Redis would.
                self.configure_self(req);
                (per_server(self), Merge::AllOk)
            }
            Servers::Urgent => {
                let pools = per_server(self);
                return Box::pin(self.urgent(&pools, req)).await;
            }
            Servers::WrittenTo => return Box::pin(self.wait_for_replicas(name, req)).await,
        };
        if matches!(servers, Servers::EveryServer | Servers::EveryDatabase) {
            // FLUSHALL, FLUSHDB, SWAPDB ... write: WAIT asks these servers.
            pools.iter().for_each(|&p| self.written.note(p));
        }
        self.fanout(&pools, req.bytes(), merge).await
    }

    /// CONFIG SET of the slow log's settings and CONFIG RESETSTAT apply to
    /// keyway's own slow log and statistics as well as to the backends.
    fn configure_self(&self, req: &Request) {
        let state = &self.state;
        if req.arg(1).eq_ignore_ascii_case(b"resetstat") {
            state.stats.reset(&state.metrics);
            return;
        }
        if !req.arg(1).eq_ignore_ascii_case(b"set") {
            return;
        }
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        for pair in args.chunks_exact(2) {
            let Some(value) = resp::decimal(pair[1]) else {
                continue;
            };
            if pair[0].eq_ignore_ascii_case(b"slowlog-log-slower-than") {
                state.slowlog.set_threshold_us(value);
            } else if pair[0].eq_ignore_ascii_case(b"slowlog-max-len") && value >= 0 {
                state.slowlog.set_max_len(value as usize);
            }
        }
    }

    /// SLOWLOG answers from keyway's own slow log, which sees every pool.
    fn slowlog(&mut self, req: &Request) -> Option<Reply> {
        let log = &self.state.slowlog;
        match text(req.arg(1)).to_ascii_lowercase().as_str() {
            "get" => {
                let count = match req.argc() {
                    2 => None,
                    // Redis gives one error for both a count out of range
                    // and one that is not a number.
                    _ => match resp::decimal(req.arg(2)) {
                        Some(-1) => Some(usize::MAX),
                        Some(n) if n >= 0 => Some(n as usize),
                        _ => return err("ERR count should be greater than or equal to -1"),
                    },
                };
                let visible = |e: &crate::slowlog::Entry| self.sees_user(&e.user);
                Some(Reply::now(log.render(count, self.client.proto, visible)))
            }
            "len" => {
                let visible = |e: &crate::slowlog::Entry| self.sees_user(&e.user);
                Some(Reply::now(resp::int(log.len_visible(visible) as i64)))
            }
            "reset" => {
                log.reset();
                ok()
            }
            _ => None,
        }
    }

    /// RESET: back to a fresh connection's state; leases and subscriptions
    /// are dropped, which closes their backend connections.
    pub(super) fn reset(&mut self) -> Reply {
        self.mode = super::Mode::Normal;
        self.reply_mode = super::ReplyMode::On;
        self.client.db = 0;
        self.client.proto = Protocol::Resp2;
        self.client.name.clear();
        // lib-name and lib-ver stay, as in Redis: they still describe the
        // library behind the connection.
        self.client.user = self.state.live().policy.initial_user();
        self.client_changed();
        Reply::now(resp::simple("RESET"))
    }

    /// How many times the servers' NUMPAT sum counts a pattern of keyway's
    /// own clients more than once: a pattern that may match keys of several
    /// pools is subscribed on each of their servers, and each counts it.
    fn own_pattern_duplicates(&self) -> i64 {
        let live = self.state.live();
        let mut servers: std::collections::HashMap<Bytes, std::collections::HashSet<_>> =
            std::collections::HashMap::new();
        for client in self.state.clients.iter() {
            for (pattern, pools) in client.patterns.iter() {
                let entry = servers.entry(pattern.clone()).or_default();
                for &pool in pools {
                    if let Ok(backend) = live.backends.checked(pool) {
                        entry.insert(backend.endpoint().addr.clone());
                    }
                }
            }
        }
        servers
            .values()
            .map(|s| s.len().saturating_sub(1) as i64)
            .sum()
    }

    /// SCRIPT KILL and FUNCTION KILL: the busy script holds the shared
    /// connection it came on, and everything queued behind it, so these go
    /// out on connections of their own (as does CLIENT UNPAUSE). `OK` if any
    /// server said OK, else the first server's answer (`NOTBUSY` ...).
    async fn urgent(&self, pools: &[PoolId], req: &Request) -> Reply {
        let args: Vec<String> = req.args().map(text).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let endpoints: Vec<_> = {
            let live = self.state.live();
            pools
                .iter()
                .filter_map(|&id| live.backends.checked(id).ok())
                .map(|pool| pool.endpoint())
                .collect()
        };
        let timeout = std::time::Duration::from_secs(2);
        let (mut ok, mut first) = (None, None);
        for endpoint in endpoints {
            let answer = match crate::backend::request_once(&endpoint, &args, timeout).await {
                Ok(answer) => answer,
                Err(e) => resp::error(&format!(
                    "ERR backend {} unavailable: {e}",
                    endpoint.address()
                )),
            };
            // Every server is asked (CLIENT UNPAUSE must reach them all).
            if answer.as_ref() == b"+OK\r\n" {
                ok = Some(answer);
            } else {
                first.get_or_insert(answer);
            }
        }
        Reply::now(
            ok.or(first)
                .unwrap_or_else(|| resp::error("ERR no backend to ask")),
        )
    }

    pub(super) fn all_pools(&self) -> Vec<PoolId> {
        self.state
            .live()
            .config
            .pools
            .iter()
            .map(|p| p.id)
            .collect()
    }

    /// An INFO figure of the backends, as the health probe last read it,
    /// summed over distinct servers.
    fn backend_sum(&self, field: &str) -> u64 {
        let metrics = &self.state.metrics;
        let gauge = metrics.backend_gauges.iter().find(|(f, _)| *f == field);
        let counter = metrics.backend_counters.iter().find(|(f, _)| *f == field);
        let live = self.state.live();
        let pools = self.distinct(self.all_pools(), false);
        pools
            .iter()
            .filter_map(|&id| live.backends.checked(id).ok())
            .map(|pool| match (gauge, counter) {
                (Some((_, g)), _) => g.with_label_values(&[pool.name()]).get().max(0) as u64,
                (_, Some((_, c))) => c.with_label_values(&[pool.name()]).get(),
                _ => 0,
            })
            .sum()
    }

    /// Each distinct backend once, in pool order: pools that share a Redis
    /// (a laptop running every pool on one server) are asked once, so
    /// counts are not multiplied and a FUNCTION LOAD is not sent twice.
    /// `per_db`: pools on one server but different databases are distinct
    /// (keys), or not (what is per server: scripts, channels, INFO).
    pub(super) fn distinct(&self, pools: Vec<PoolId>, per_db: bool) -> Vec<PoolId> {
        let live = self.state.live();
        let mut seen: Vec<(crate::config::Addr, u32)> = Vec::with_capacity(pools.len());
        pools
            .into_iter()
            .filter(|&id| {
                let Ok(pool) = live.backends.checked(id) else {
                    return true;
                };
                let Some(addr) = pool.endpoint().addr.clone() else {
                    // Not resolved yet: asked, so the client sees why it fails.
                    return true;
                };
                let db = if per_db {
                    pool.backend_db(self.client.db)
                } else {
                    0
                };
                let key = (addr, db);
                if seen.contains(&key) {
                    return false;
                }
                seen.push(key);
                true
            })
            .collect()
    }

    fn select(&mut self, arg: &[u8]) -> Option<Reply> {
        // Read as Redis reads an integer: `01`, `-0` and `+1` are refused.
        let Some(db) = resp::decimal(arg) else {
            return err("ERR value is not an integer or out of range");
        };
        if db < 0 || db >= self.state.live().config.server.databases as i64 {
            return err("ERR DB index is out of range");
        }
        if self.client.db != db as u32 {
            self.client.db = db as u32;
            self.client_changed();
        }
        ok()
    }

    /// keyway has no users yet: it behaves like a Redis whose default user
    /// has no password.
    fn auth(&mut self, req: &Request) -> Option<Reply> {
        let (user, password) = match req.argc() {
            2 => (None, req.arg(1)),
            3 => (Some(req.arg(1)), req.arg(2)),
            _ => return err("ERR syntax error"),
        };
        Some(match self.authenticate(user, password) {
            Ok(()) => Reply::now(resp::simple("OK")),
            Err(reply) => *reply,
        })
    }

    /// AUTH and HELLO ... AUTH. Without configured passwords keyway acts
    /// like a Redis whose default user has none.
    fn authenticate(&mut self, user: Option<&[u8]>, password: &[u8]) -> Result<(), Box<Reply>> {
        let policy = &self.state.live().policy;
        if !policy.auth_required {
            return match user {
                None => Err(Box::new(Reply::now(resp::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")))),
                Some(b"default") => Ok(()),
                Some(_) => Err(Box::new(self.deny(crate::policy::Denial::WrongPass))),
            };
        }
        match policy.authenticate(self.client.addr.ip(), user, password) {
            Ok(u) => {
                self.client.user = Some(u);
                self.register();
                Ok(())
            }
            Err(denial) => {
                if matches!(denial, crate::policy::Denial::LockedOut(_)) {
                    self.state.metrics.auth_lockouts.inc();
                }
                Err(Box::new(self.deny(denial)))
            }
        }
    }

    fn hello(&mut self, req: &Request) -> Option<Reply> {
        let mut proto = self.client.proto;
        let mut authenticated = false;
        let mut name = None;
        if req.argc() >= 2 {
            proto = match req.arg(1) {
                b"2" => Protocol::Resp2,
                b"3" => Protocol::Resp3,
                v if resp::decimal(v).is_none() => {
                    return err("ERR Protocol version is not an integer or out of range")
                }
                _ => return err("NOPROTO unsupported protocol version"),
            };
            let mut i = 2;
            while i < req.argc() {
                let opt = req.arg(i);
                if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < req.argc() {
                    if let Err(reply) = self.authenticate(Some(req.arg(i + 1)), req.arg(i + 2)) {
                        return Some(*reply);
                    }
                    authenticated = true;
                    i += 3;
                } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < req.argc() {
                    let n = req.arg(i + 1);
                    if !valid_client_name(n) {
                        return err("ERR Client names cannot contain spaces, newlines or special characters.");
                    }
                    name = Some(text(n));
                    i += 2;
                } else {
                    return err(&format!("ERR Syntax error in HELLO option '{}'", text(opt)));
                }
            }
        }
        if self.client.user.is_none() && !authenticated {
            return Some(self.deny(crate::policy::Denial::HelloNoAuth));
        }
        if let Some(n) = name {
            self.client.name = n;
        }
        if proto != self.client.proto {
            self.client.proto = proto;
            // Messages on links subscribed in RESP3 now go out as RESP2.
            if let Some(pushes) = &self.pushes {
                pushes.set_protocol(proto);
            }
        }
        self.client_changed();
        let version = self.state.redis_version();
        let mut r = ReplyBuf::new(proto);
        r.map(7);
        r.bulk(b"server").bulk(b"redis");
        r.bulk(b"version").bulk(version.as_bytes());
        r.bulk(b"proto").int(proto.version());
        r.bulk(b"id").int(self.client.id as i64);
        r.bulk(b"mode").bulk(b"standalone");
        r.bulk(b"role").bulk(b"master");
        r.bulk(b"modules").array(0);
        Some(Reply::now(r.freeze()))
    }

    fn client_command(&mut self, req: &Request) -> Option<Reply> {
        let sub = text(req.arg(1)).to_ascii_lowercase();
        let argc = req.argc();
        match (sub.as_str(), argc) {
            ("id", 2) => Some(Reply::now(resp::int(self.client.id as i64))),
            ("getname", 2) => Some(Reply::now(if self.client.name.is_empty() {
                let mut r = ReplyBuf::new(self.client.proto);
                r.null();
                r.freeze()
            } else {
                resp::bulk(self.client.name.as_bytes())
            })),
            ("setname", 3) => {
                if !valid_client_name(req.arg(2)) {
                    return err(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.client.name = text(req.arg(2));
                self.client_changed();
                ok()
            }
            ("setinfo", 4) => {
                let value = text(req.arg(3));
                if value.contains(|c: char| c == ' ' || c == '\n' || c.is_control()) {
                    return err(&format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        text(req.arg(2))
                    ));
                }
                match text(req.arg(2)).to_ascii_lowercase().as_str() {
                    "lib-name" => self.client.lib_name = value,
                    "lib-ver" => self.client.lib_ver = value,
                    _ => {
                        return err(&format!(
                            "ERR Unrecognized option '{}'",
                            text(req.arg(2))
                        ))
                    }
                }
                self.client_changed();
                ok()
            }
            ("info", 2) => {
                let mut r = ReplyBuf::new(self.client.proto);
                r.verbatim(
                    self.client
                        .info(&self.kill, &self.mode, &self.unblocker, &self.activity)
                        .line(&self.state)
                        .as_bytes(),
                );
                Some(Reply::now(r.freeze()))
            }
            ("list", _) => {
                let filter = match ListFilter::parse(req) {
                    Ok(filter) => filter,
                    Err(e) => return err(&e),
                };
                let mut lines: Vec<(u64, String)> = self
                    .state
                    .clients
                    .iter()
                    .filter(|c| self.sees(c) && filter.keeps(c))
                    .map(|c| (c.id, c.line(&self.state)))
                    .collect();
                lines.sort();
                let all: String = lines.into_iter().map(|(_, l)| l).collect();
                let mut r = ReplyBuf::new(self.client.proto);
                r.verbatim(all.as_bytes());
                Some(Reply::now(r.freeze()))
            }
            ("no-evict", 3) => match text(req.arg(2)).to_ascii_lowercase().as_str() {
                "on" | "off" => ok(),
                _ => err("ERR syntax error"),
            },
            ("reply", 3) => match text(req.arg(2)).to_ascii_lowercase().as_str() {
                "on" => {
                    self.reply_mode = super::ReplyMode::On;
                    ok()
                }
                "off" => {
                    self.reply_mode = super::ReplyMode::Off;
                    ok()
                }
                "skip" => {
                    // Neither SKIP itself nor the next command is answered.
                    self.reply_mode = super::ReplyMode::Skip(2);
                    ok()
                }
                _ => err("ERR syntax error"),
            },
            ("kill", _) => Some(self.client_kill(req)),
            ("unblock", 3 | 4) => Some(self.client_unblock(req)),
            // Tracking is never on through keyway: what Redis answers a
            // connection without it. Only turning it on is refused.
            ("tracking", 3) if req.arg(2).eq_ignore_ascii_case(b"off") => ok(),
            ("tracking", _)
                if !req.arg(2).eq_ignore_ascii_case(b"on")
                    && !req.arg(2).eq_ignore_ascii_case(b"off") =>
            {
                err("ERR syntax error")
            }
            ("caching", 3) => err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"),
            ("getredir", 2) => Some(Reply::now(resp::int(-1))),
            ("trackinginfo", 2) => {
                let mut r = ReplyBuf::new(self.client.proto);
                r.map(3).bulk(b"flags");
                match self.client.proto {
                    Protocol::Resp2 => r.array(1),
                    Protocol::Resp3 => r.raw(b"~1\r\n"),
                };
                r.bulk(b"off").bulk(b"redirect").int(-1);
                r.bulk(b"prefixes").array(0);
                Some(Reply::now(r.freeze()))
            }
            ("tracking" | "caching" | "getredir" | "trackinginfo", _) => {
                self.state.metrics.deny("unsupported", "client");
                err(&format!(
                    "ERR CLIENT {} is not supported by keyway (client-side caching needs one backend connection per client)",
                    sub.to_ascii_uppercase()
                ))
            }
            ("no-touch", _) => {
                self.state.metrics.deny("unsupported", "client");
                err("ERR CLIENT NO-TOUCH is not supported by keyway (it would apply to a shared backend connection)")
            }
            ("id" | "getname" | "info" | "setname" | "setinfo" | "no-evict" | "reply", _) => err(
                &format!("ERR wrong number of arguments for 'client|{sub}' command"),
            ),
            ("help", _) => None,
            _ if !self.state.commands.knows_subcommand("client", req.arg(1)) => {
                // As Redis answers a subcommand it does not have.
                let sub = text(&req.arg(1)[..req.arg(1).len().min(128)]);
                err(&format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP."))
            }
            _ => err(&format!(
                "ERR CLIENT {} is not supported by keyway",
                sub.to_ascii_uppercase()
            )),
        }
    }

    /// Whether CLIENT LIST and CLIENT KILL reach `other`: an admin user's
    /// reach every client; anyone else's only those of its own user.
    fn sees(&self, other: &crate::state::ClientInfo) -> bool {
        self.sees_user(&other.user)
    }

    /// Whether what a client of `user` did is this client's to see
    /// (CLIENT LIST, CLIENT KILL, the slow log): an admin sees everyone's.
    fn sees_user(&self, user: &str) -> bool {
        match &self.client.user {
            Some(me) => me.admin || *me.name == *user,
            None => false,
        }
    }

    /// CLIENT UNBLOCK id [TIMEOUT|ERROR]: ends a keyway client's blocking
    /// command as Redis would (1), or 0 when that client is not blocked
    /// (or not one this user may act on).
    fn client_unblock(&mut self, req: &Request) -> Reply {
        let how = match req.argc() {
            3 => super::UnblockHow::Timeout,
            _ => match text(req.arg(3)).to_ascii_uppercase().as_str() {
                "TIMEOUT" => super::UnblockHow::Timeout,
                "ERROR" => super::UnblockHow::Error,
                _ => {
                    return Reply::now(resp::error(
                        "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                    ))
                }
            },
        };
        let Some(id) = resp::decimal(req.arg(2)) else {
            return Reply::now(resp::error("ERR value is not an integer or out of range"));
        };
        let target = self
            .state
            .clients
            .get(&(id as u64))
            .filter(|c| self.sees(c))
            .map(|c| c.unblocker.clone());
        let done = target.is_some_and(|u| u.request(how));
        Reply::now(resp::int(i64::from(done)))
    }

    /// CLIENT KILL addr, or the filter form: ID, ADDR, LADDR, USER, SKIPME.
    fn client_kill(&mut self, req: &Request) -> Reply {
        let filter = match KillFilter::parse(req, &self.state.live().policy) {
            Ok(filter) => filter,
            Err(error) => return Reply::now(resp::error(&error)),
        };
        let mut killed = 0;
        for entry in self.state.clients.iter() {
            let c = entry.value();
            if (filter.skip_me && c.id == self.client.id) || !self.sees(c) {
                continue;
            }
            if filter.matches(c) {
                c.kill.cancel();
                killed += 1;
            }
        }
        if filter.old_form {
            if killed == 0 {
                return Reply::now(resp::error("ERR No such client"));
            }
            return Reply::now(resp::simple("OK"));
        }
        Reply::now(resp::int(killed))
    }

    async fn scan(&mut self, req: &Request) -> Reply {
        let Some(cursor) = std::str::from_utf8(req.arg(1))
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return Reply::now(resp::error("ERR invalid cursor"));
        };
        let all_args: Vec<&[u8]> = req.args().collect();
        let option = |name: &[u8]| crate::command::last_paired_option(&all_args, 2, name);
        let pattern = option(b"MATCH");
        let pools = match pattern {
            Some(p) => self
                .state
                .live()
                .router
                .pools_for_pattern(p, b"scan", self.client.db),
            None => self.all_pools(),
        };
        let pools = self.distinct(pools, true);
        // A cluster pool is scanned slot by slot (each key once, even
        // while slots move), or with TYPE, which needs the servers' own
        // SCAN, master by master in slot order.
        let by_type = option(b"TYPE").is_some();
        let servers: Vec<Server> = if by_type {
            self.servers_of(&pools).await
        } else {
            pools
                .iter()
                .map(|&pool| match self.links.cluster(pool).cloned() {
                    Some(cluster) => Server::Slots(pool, cluster),
                    None => Server::Pool(pool),
                })
                .collect()
        };
        let count = servers.len();
        if count == 0 {
            return Reply::now(resp::error(
                "ERR no pool can hold keys matching this pattern",
            ));
        }
        let (backend_cursor, index) = decode_scan_cursor(cursor, count);
        let backend_cursor_value = backend_cursor;
        let mut args = all_args.clone();
        let backend_cursor = backend_cursor.to_string();
        args[1] = backend_cursor.as_bytes();
        let bytes = Request::from_args(&args).bytes().clone();
        let server = &servers[index];
        let rx = match server {
            Server::Pool(pool) => self.send_once(*pool, bytes).await,
            Server::Node(_, node) => self.send_node(node, bytes).await,
            Server::Slots(_, cluster) if self.client.db != 0 => {
                Err(crate::backend::BackendError::ClusterDatabase {
                    pool: cluster.name().to_string(),
                })
            }
            Server::Slots(_, cluster) => {
                let args = crate::cluster::ScanArgs {
                    from: usize::try_from(backend_cursor_value).unwrap_or(usize::MAX),
                    count: option(b"COUNT")
                        .and_then(resp::decimal)
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(10),
                    pattern: pattern.map(Bytes::copy_from_slice),
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (cluster, proto) = (cluster.clone(), self.client.proto);
                tokio::spawn(async move {
                    let _ = tx.send(cluster.scan_slots(args, proto).await);
                });
                Ok(rx)
            }
        };
        Reply::Fanout(Box::new(Fanout {
            parts: vec![Part::new(server.pool(), rx)],
            merge: Merge::Scan { index, count },
            meta: self.meta.clone(),
        }))
    }

    async fn info(&mut self, req: &Request) -> Reply {
        // This INFO and the requests read with it count already.
        self.count_commands();
        let asked: Vec<String> = req
            .args()
            .skip(1)
            .map(|a| text(a).to_ascii_lowercase())
            .collect();
        // As Redis: no argument or `default` leaves out the per-command
        // sections; `all` and `everything` have them.
        let all = asked
            .iter()
            .any(|s| matches!(s.as_str(), "all" | "everything"));
        let default = asked.is_empty() || asked.iter().any(|s| s == "default");
        let wants = |s: &str| {
            all || (default && !matches!(s, "commandstats" | "latencystats"))
                || asked.iter().any(|a| a == s)
        };
        let local = self.render_info_sections(&wants);
        let wants_keyspace = wants("keyspace");
        let default_pool = self.state.live().router.default_pool();
        let request = InfoRequest {
            proto: self.client.proto,
            local,
            wants_keyspace,
            default_pool,
        };
        // The servers' own sections complete keyway's: each server once
        // (INFO keyspace lists every database of a server).
        let from_servers = ["server", "memory", "persistence", "stats", "keyspace"];
        let pools = if from_servers.iter().any(|s| wants(s)) {
            self.distinct(self.all_pools(), false)
        } else {
            Vec::new()
        };
        let bytes = Request::from_args(&[
            "INFO",
            "server",
            "memory",
            "persistence",
            "stats",
            "keyspace",
        ])
        .bytes()
        .clone();
        self.fanout(&pools, &bytes, Merge::Info(request)).await
    }

    fn render_info_sections(&self, wants: &dyn Fn(&str) -> bool) -> String {
        let state = &self.state;
        let uptime = state.started.elapsed().as_secs();
        let mut sections: Vec<String> = Vec::new();
        if wants("server") {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let live = state.live();
            sections.push(format!(
                "# Server\r\nredis_version:{{redis_version}}\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\nredis_build_id:0\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nmonotonic_clock:POSIX clock_gettime\r\nmultiplexing_api:epoll\r\natomicvar_api:c11-builtin\r\ngcc_version:0.0.0\r\nprocess_id:{}\r\nprocess_supervised:no\r\nrun_id:{}\r\ntcp_port:{}\r\nserver_time_usec:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nhz:10\r\nconfigured_hz:10\r\nlru_clock:{}\r\nexecutable:{}\r\nconfig_file:{}\r\nio_threads_active:0\r\n",
                server_os(),
                std::process::id(),
                run_id(),
                live.config.listen.port(),
                now.as_micros(),
                uptime / 86400,
                // Redis's LRU clock: seconds, 24 bits.
                now.as_secs() & ((1 << 24) - 1),
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                std::fs::canonicalize(&live.config.source)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| live.config.source.clone()),
            ));
        }
        if wants("clients") {
            let (mut blocked, mut pubsub, mut multi) = (0, 0, 0);
            for c in state.clients.iter() {
                blocked += usize::from(c.unblocker.is_blocked());
                pubsub += usize::from(c.subscriptions != (0, 0, 0));
                multi += usize::from(c.activity.multi() >= 0);
            }
            sections.push(format!(
                "# Clients\r\nconnected_clients:{}\r\ncluster_connections:0\r\nmaxclients:{}\r\nclient_recent_max_input_buffer:0\r\nclient_recent_max_output_buffer:0\r\nblocked_clients:{blocked}\r\ntracking_clients:0\r\npubsub_clients:{pubsub}\r\nwatching_clients:{multi}\r\nclients_in_timeout_table:{blocked}\r\ntotal_watched_keys:0\r\ntotal_blocking_keys:{blocked}\r\n",
                state.clients.len(),
                state.live().config.server.max_clients,
            ));
        }
        if wants("memory") {
            // The backends' figures as the health probe last read them,
            // summed over distinct servers.
            let used = self.backend_sum("used_memory");
            let max = self.backend_sum("maxmemory");
            sections.push(format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:{}\r\nused_memory_peak:{used}\r\nused_memory_peak_human:{}\r\nmaxmemory:{max}\r\nmaxmemory_human:{}\r\nmem_fragmentation_ratio:1.00\r\nlazyfree_pending_objects:0\r\nlazyfreed_objects:0\r\n",
                human_bytes(used),
                human_bytes(used),
                human_bytes(max)
            ));
        }
        if wants("persistence") {
            // Persistence commands are server-wide and refused by default:
            // keyway reports none in progress.
            sections.push(format!(
                "# Persistence\r\nloading:0\r\nasync_loading:0\r\ncurrent_cow_peak:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\nrdb_last_save_time:{}\r\nrdb_last_bgsave_status:ok\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\naof_rewrite_scheduled:0\r\naof_last_bgrewrite_status:ok\r\n",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .saturating_sub(uptime)
            ));
        }
        if wants("stats") {
            use std::sync::atomic::Ordering::Relaxed;
            sections.push(format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\npubsub_channels:0\r\npubsub_patterns:0\r\n",
                state.stats.connections_received.load(Relaxed),
                state.stats.commands_processed.load(Relaxed),
                self.backend_sum("instantaneous_ops_per_sec"),
                state.metrics.clients_rejected.get(),
                self.backend_sum("expired_keys"),
                self.backend_sum("evicted_keys"),
                self.backend_sum("keyspace_hits"),
                self.backend_sum("keyspace_misses"),
            ));
        }
        if wants("replication") {
            // keyway is a master without replicas: its backends replicate.
            sections.push(format!(
                "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_replid:{zeros}\r\nmaster_replid2:{zeros}\r\nmaster_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\nrepl_backlog_size:0\r\nrepl_backlog_first_byte_offset:0\r\nrepl_backlog_histlen:0\r\n",
                zeros = "0".repeat(40)
            ));
        }
        if wants("cpu") {
            let (user, system) = own_cpu_seconds();
            sections.push(format!(
                "# CPU\r\nused_cpu_sys:{system:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\nused_cpu_sys_main_thread:{system:.6}\r\nused_cpu_user_main_thread:{user:.6}\r\n"
            ));
        }
        if wants("modules") {
            sections.push("# Modules\r\n".into());
        }
        if wants("commandstats") {
            sections.push(crate::commandstats::render_commandstats(
                &state.metrics,
                &state.stats.commands,
            ));
        }
        if wants("errorstats") {
            sections.push(state.stats.commands.render_errorstats());
        }
        if wants("latencystats") {
            sections.push(crate::commandstats::render_latencystats(
                &state.metrics,
                &state.stats.commands,
            ));
        }
        if wants("cluster") {
            sections.push("# Cluster\r\ncluster_enabled:0\r\n".into());
        }
        if wants("keyway") {
            let mut s = format!(
                "# Keyway\r\nkeyway_version:{}\r\nuptime_in_seconds:{uptime}\r\nconnected_clients:{}\r\npools:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                state.clients.len(),
                state.live().backends.pools().len()
            );
            let (hits, misses) = state.metrics.cache_totals();
            let ratio = if hits + misses > 0 {
                hits as f64 / (hits + misses) as f64
            } else {
                0.0
            };
            s.push_str(&format!(
                "total_commands_processed:{}\r\ncache_hits:{hits}\r\ncache_misses:{misses}\r\ncache_hit_ratio:{ratio:.4}\r\n",
                state.stats.commands_processed.load(std::sync::atomic::Ordering::Relaxed)
            ));
            for pool in state.live().backends.pools() {
                let status = match pool.last_error() {
                    None => "up".to_string(),
                    Some(e) => format!("down ({})", e.replace(['\r', '\n', ','], " ")),
                };
                let probe = pool.probe();
                let status = match probe.ok {
                    Some(false) => {
                        format!("down ({})", probe.reason.replace(['\r', '\n', ','], " "))
                    }
                    _ => status,
                };
                s.push_str(&format!(
                    "pool_{}:address={},status={},role={}\r\n",
                    pool.name(),
                    pool.endpoint().address(),
                    status,
                    if probe.role.is_empty() {
                        "unknown"
                    } else {
                        &probe.role
                    }
                ));
                if let Some(cluster) = pool.cluster() {
                    // One line per shard: its master, replicas and slots.
                    let map = cluster.map();
                    s.push_str(&format!(
                        "pool_{}_cluster:masters={},slots_covered={}\r\n",
                        pool.name(),
                        map.masters.len(),
                        map.covered()
                    ));
                    for (i, (master, replicas)) in map.masters.iter().zip(&map.replicas).enumerate()
                    {
                        let replicas: Vec<String> =
                            replicas.iter().map(|r| r.endpoint().address()).collect();
                        s.push_str(&format!(
                            "pool_{}_shard{i}:master={},replicas={}\r\n",
                            pool.name(),
                            master.endpoint().address(),
                            replicas.join("|")
                        ));
                    }
                }
            }
            sections.push(s);
        }
        sections.join("\r\n")
    }
}

/// keyway's own CPU time, user and system seconds, from /proc/self/stat
/// (clock ticks of 1/100 s, as on every Linux keyway runs on).
/// CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...].
#[derive(Default)]
struct ListFilter {
    pubsub: Option<bool>,
    /// `TYPE master|replica`: keyway's clients are neither.
    none: bool,
    ids: Option<Vec<i64>>,
}

impl ListFilter {
    fn parse(req: &Request) -> Result<ListFilter, String> {
        let mut filter = ListFilter::default();
        let mut i = 2;
        while i < req.argc() {
            let option = text(req.arg(i)).to_ascii_lowercase();
            match option.as_str() {
                "type" if i + 1 < req.argc() => {
                    let kind = text(req.arg(i + 1)).to_ascii_lowercase();
                    match kind.as_str() {
                        "normal" => filter.pubsub = Some(false),
                        "pubsub" => filter.pubsub = Some(true),
                        "master" | "replica" | "slave" => filter.none = true,
                        _ => {
                            return Err(format!(
                                "ERR Unknown client type '{}'",
                                text(req.arg(i + 1))
                            ))
                        }
                    }
                    i += 2;
                }
                "id" if i + 1 < req.argc() => {
                    let mut ids = Vec::new();
                    i += 1;
                    while i < req.argc() {
                        match resp::decimal(req.arg(i)) {
                            Some(id) => ids.push(id),
                            None => return Err("ERR Invalid client ID".into()),
                        }
                        i += 1;
                    }
                    filter.ids = Some(ids);
                }
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(filter)
    }

    fn keeps(&self, client: &crate::state::ClientInfo) -> bool {
        !self.none
            && self.pubsub.is_none_or(|p| p == client.is_pubsub())
            && self
                .ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&(client.id as i64)))
    }
}

fn own_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// Redis's `used_memory_human` form.
fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 4] = [
        ("G", 1073741824.0),
        ("M", 1048576.0),
        ("K", 1024.0),
        ("B", 1.0),
    ];
    for (unit, size) in UNITS {
        if n as f64 >= size && size > 1.0 {
            return format!("{:.2}{unit}", n as f64 / size);
        }
    }
    format!("{n}B")
}

/// Redis allows printable ASCII without spaces in client names.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// What CLIENT KILL kills, checked as Redis checks it: every option must
/// parse before any client is killed (a filter Redis refuses must not
/// become a filter that matches everyone).
#[derive(Debug, Default)]
struct KillFilter {
    old_form: bool,
    skip_me: bool,
    id: Option<u64>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    /// `Some(false)`: normal clients; `Some(true)`: pub/sub ones; master
    /// and replica match none of keyway's clients.
    pubsub: Option<bool>,
    matches_none: bool,
    max_age: Option<u64>,
}

impl KillFilter {
    fn parse(req: &Request, policy: &crate::policy::Policy) -> Result<KillFilter, String> {
        let args: Vec<String> = req.args().skip(2).map(text).collect();
        if args.len() == 1 {
            // CLIENT KILL addr: the old form may kill the caller.
            return Ok(KillFilter {
                old_form: true,
                addr: Some(args[0].clone()),
                ..KillFilter::default()
            });
        }
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err("ERR syntax error".into());
        }
        let mut filter = KillFilter {
            skip_me: true,
            ..KillFilter::default()
        };
        for pair in args.chunks(2) {
            let value = &pair[1];
            match pair[0].to_ascii_lowercase().as_str() {
                "id" => match resp::decimal(value.as_bytes()) {
                    Some(id) if id > 0 => filter.id = Some(id as u64),
                    _ => return Err("ERR client-id should be greater than 0".into()),
                },
                "maxage" => match resp::decimal(value.as_bytes()) {
                    Some(age) if age > 0 => filter.max_age = Some(age as u64),
                    Some(_) => return Err("ERR maxage should be greater than 0".into()),
                    None => return Err("ERR maxage is not an integer or out of range".into()),
                },
                "type" => match value.to_ascii_lowercase().as_str() {
                    "normal" => filter.pubsub = Some(false),
                    "pubsub" => filter.pubsub = Some(true),
                    "master" | "slave" | "replica" => filter.matches_none = true,
                    _ => return Err(format!("ERR Unknown client type '{value}'")),
                },
                "addr" => filter.addr = Some(value.clone()),
                "laddr" => filter.laddr = Some(value.clone()),
                "user" if policy.knows_user(value) => filter.user = Some(value.clone()),
                "user" => return Err(format!("ERR No such user '{value}'")),
                "skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => filter.skip_me = true,
                    "no" => filter.skip_me = false,
                    _ => return Err("ERR syntax error".into()),
                },
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(filter)
    }

    fn matches(&self, c: &crate::state::ClientInfo) -> bool {
        !self.matches_none
            && self.id.is_none_or(|id| id == c.id)
            && self.addr.as_ref().is_none_or(|a| *a == c.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == c.local_addr.to_string())
            && self
                .user
                .as_ref()
                .is_none_or(|u| *u == c.user || (c.user.is_empty() && u == "default"))
            && self.pubsub.is_none_or(|p| p == c.is_pubsub())
            && self
                .max_age
                .is_none_or(|age| c.connected.elapsed().as_secs() >= age)
    }
}

/// INFO's `os`, as Redis writes it from uname: "Linux 6.1.0 x86_64".
fn server_os() -> String {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
    match (
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
    ) {
        (Ok(kind), Ok(release)) => format!("{kind} {release} {}", std::env::consts::ARCH),
        _ => format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    }
}

/// INFO's `run_id`: 40 hex digits, new with each start of keyway, as
/// Redis's changes with each start of Redis.
fn run_id() -> &'static str {
    static RUN_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN_ID.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new();
        (0..3u64)
            .map(|i| {
                let mut h = random.build_hasher();
                h.write_u64(i ^ u64::from(std::process::id()));
                format!("{:016x}", h.finish())
            })
            .collect::<String>()[..40]
            .to_string()
    })
}
