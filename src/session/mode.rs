//! The connection's mode, as Redis distinguishes it, and the rules each
//! mode sets: which commands run, which are queued, which are refused and
//! whether that aborts a transaction, and which changes of mode are
//! allowed. The session does the I/O around these rules (leases, links,
//! replies); nothing here waits or writes.
//!
//! A blocked client is not a mode here: a blocking command is one awaited
//! call inside dispatch, during which the session reads nothing more from
//! its client (as Redis does), so no other command can meet that state;
//! CLIENT UNBLOCK reaches it through its `Unblocker`.

use std::sync::Arc;

use bytes::Bytes;

use super::pubsub::Subscriptions;
use super::transaction::Transaction;
use crate::command::{Handling, Local, TransactionVerb};
use crate::resp::Protocol;
use crate::route::PoolId;

/// What the connection is doing.
pub(crate) enum Mode {
    Normal,
    /// After WATCH or MULTI, until EXEC, DISCARD, UNWATCH or RESET.
    Transaction(Transaction),
    /// With at least one subscription.
    Subscribed(Subscriptions),
}

/// What a mode does with a command that passed authentication, arity and
/// the user's permissions.
#[derive(Debug, PartialEq)]
pub(super) enum Gate {
    /// Runs now.
    Run,
    /// Between MULTI and EXEC: admitted, then checked against the
    /// transaction and queued.
    Queue,
    /// PING of a RESP2 subscriber, answered `["pong", message]`.
    SubscriberPing,
    /// Not in this mode.
    Refuse(ModeRefusal),
}

/// Why a mode refuses a command. The session writes the error, with the
/// command's name where Redis names it.
#[derive(Debug, PartialEq)]
pub(super) enum ModeRefusal {
    /// A RESP2 subscriber may only (un)subscribe, PING, QUIT and RESET.
    SubscriberOnly,
    /// A command unknown to keyway's table, where it cannot be forwarded:
    /// between MULTI and EXEC, or from a RESP2 subscriber.
    Unknown,
    /// WATCH between MULTI and EXEC (the transaction goes on, as in Redis).
    WatchInMulti,
    /// keyway's own state, or every server, between MULTI and EXEC.
    NotInMulti,
    /// A command keyway never runs, named with the reason.
    Unsupported(&'static str),
}

impl ModeRefusal {
    /// Whether the refusal makes EXEC answer EXECABORT, as a queue-time
    /// error does in Redis.
    pub fn aborts(&self) -> bool {
        !matches!(
            self,
            ModeRefusal::WatchInMulti | ModeRefusal::SubscriberOnly
        )
    }
}

/// A change of mode a command asked for and the mode does not allow.
pub(super) const MULTI_WHEN_SUBSCRIBED: &str =
    "ERR keyway does not support MULTI on a connection with subscriptions";
pub(super) const WATCH_WHEN_SUBSCRIBED: &str =
    "ERR keyway does not support WATCH on a connection with subscriptions";
pub(super) const WATCH_IN_MULTI: &str = "ERR WATCH inside MULTI is not allowed";
pub(super) const SUBSCRIBE_IN_TRANSACTION: &str =
    "ERR keyway does not support subscribing during a transaction";

impl Mode {
    /// The gate a command meets in this mode; `known` when it is in the
    /// command table.
    pub fn gate(&self, handling: Handling, known: bool, proto: Protocol) -> Gate {
        match self {
            Mode::Normal => Gate::Run,
            Mode::Subscribed(_) if proto == Protocol::Resp3 => Gate::Run,
            Mode::Subscribed(_) => match handling {
                Handling::Local(Local::Ping) => Gate::SubscriberPing,
                _ if !known => Gate::Refuse(ModeRefusal::Unknown),
                h if h.allowed_when_subscribed() => Gate::Run,
                _ => Gate::Refuse(ModeRefusal::SubscriberOnly),
            },
            Mode::Transaction(t) if !t.in_multi() => Gate::Run,
            Mode::Transaction(_) => match handling {
                // The transaction's own verbs, and the connection's end.
                Handling::Transaction(
                    TransactionVerb::Multi | TransactionVerb::Exec | TransactionVerb::Discard,
                )
                | Handling::Local(Local::Quit | Local::Reset) => Gate::Run,
                Handling::Transaction(TransactionVerb::Watch) => {
                    Gate::Refuse(ModeRefusal::WatchInMulti)
                }
                Handling::Refused(what) => Gate::Refuse(ModeRefusal::Unsupported(what)),
                h if h.refused_in_multi() => Gate::Refuse(ModeRefusal::NotInMulti),
                _ if !known => Gate::Refuse(ModeRefusal::Unknown),
                _ => Gate::Queue,
            },
        }
    }

    /// Whether `server.idle_timeout_secs` applies: subscribers and
    /// transactions wait for the server, not for their client.
    pub fn idles(&self) -> bool {
        matches!(self, Mode::Normal)
    }

    pub fn in_multi(&self) -> bool {
        matches!(self, Mode::Transaction(t) if t.in_multi())
    }

    /// Commands queued since MULTI, as CLIENT LIST's `multi` shows them
    /// (-1 outside MULTI).
    pub fn multi_len(&self) -> i64 {
        match self {
            Mode::Transaction(t) if t.in_multi() => t.queued_len() as i64,
            _ => -1,
        }
    }

    /// Bytes of commands queued for EXEC.
    pub fn queued_bytes(&self) -> usize {
        match self {
            Mode::Transaction(t) => t.queued_bytes(),
            _ => 0,
        }
    }

    /// MULTI: a normal connection starts a transaction; one with WATCHes
    /// starts queueing. True when the mode changed.
    pub fn begin_multi(&mut self) -> Result<bool, &'static str> {
        match self {
            Mode::Normal => {
                let mut t = Transaction::new();
                t.begin()?;
                *self = Mode::Transaction(t);
                Ok(true)
            }
            Mode::Transaction(t) => t.begin().map(|()| false),
            Mode::Subscribed(_) => Err(MULTI_WHEN_SUBSCRIBED),
        }
    }

    /// Whether WATCH may run: not between MULTI and EXEC, not with
    /// subscriptions.
    pub fn may_watch(&self) -> Result<(), &'static str> {
        match self {
            Mode::Transaction(t) if t.in_multi() => Err(WATCH_IN_MULTI),
            Mode::Subscribed(_) => Err(WATCH_WHEN_SUBSCRIBED),
            _ => Ok(()),
        }
    }

    /// WATCH: the transaction to add the watch to (a new one on a normal
    /// connection); the mode is normal until it is handed back.
    pub fn take_for_watch(&mut self) -> Result<Transaction, &'static str> {
        self.may_watch()?;
        match std::mem::replace(self, Mode::Normal) {
            Mode::Transaction(t) => Ok(t),
            _ => Ok(Transaction::new()),
        }
    }

    /// EXEC or DISCARD: the transaction, which ends here; `None` outside
    /// MULTI (nothing changes).
    pub fn end_multi(&mut self) -> Option<Transaction> {
        if !self.in_multi() {
            return None;
        }
        match std::mem::replace(self, Mode::Normal) {
            Mode::Transaction(t) => Some(t),
            other => {
                *self = other;
                None
            }
        }
    }

    /// UNWATCH outside MULTI: the watching transaction, which ends here.
    pub fn end_watch(&mut self) -> Option<Transaction> {
        if self.in_multi() {
            return None;
        }
        match std::mem::replace(self, Mode::Normal) {
            Mode::Transaction(t) => Some(t),
            other => {
                *self = other;
                None
            }
        }
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        match self {
            Mode::Transaction(t) => Some(t),
            _ => None,
        }
    }

    pub fn transaction_mut(&mut self) -> Option<&mut Transaction> {
        match self {
            Mode::Transaction(t) => Some(t),
            _ => None,
        }
    }

    /// SUBSCRIBE and its kin: the subscriptions to add to, entering
    /// subscriber mode from a normal connection.
    pub fn subscribe(&mut self) -> Result<&mut Subscriptions, &'static str> {
        if let Mode::Normal = self {
            *self = Mode::Subscribed(Subscriptions::new());
        }
        match self {
            Mode::Subscribed(subs) => Ok(subs),
            _ => Err(SUBSCRIBE_IN_TRANSACTION),
        }
    }

    pub fn subscriptions(&self) -> Option<&Subscriptions> {
        match self {
            Mode::Subscribed(s) => Some(s),
            _ => None,
        }
    }

    pub fn subscriptions_mut(&mut self) -> Option<&mut Subscriptions> {
        match self {
            Mode::Subscribed(s) => Some(s),
            _ => None,
        }
    }

    /// With no subscription left the connection is a normal one again;
    /// dropping the links closes their leased connections.
    pub fn leave_if_unsubscribed(&mut self) {
        if matches!(self, Mode::Subscribed(s) if s.is_empty()) {
            *self = Mode::Normal;
        }
    }

    /// Channels, patterns and shard channels subscribed, for CLIENT LIST.
    pub fn subscription_counts(&self) -> (usize, usize, usize) {
        self.subscriptions()
            .map_or((0, 0, 0), Subscriptions::counts)
    }

    /// The patterns subscribed and their pools, for PUBSUB NUMPAT.
    pub fn patterns(&self) -> Arc<[(Bytes, Vec<PoolId>)]> {
        self.subscriptions()
            .map_or_else(|| Arc::new([]) as Arc<[_]>, Subscriptions::patterns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandTable;

    fn gate(mode: &Mode, args: &[&str], proto: Protocol) -> Gate {
        let table = CommandTable::builtin();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let entry = table.lookup(&args);
        let handling = entry.map_or(Handling::UNKNOWN, |e| e.handling);
        mode.gate(handling, entry.is_some(), proto)
    }

    fn queueing() -> Mode {
        let mut mode = Mode::Normal;
        assert_eq!(mode.begin_multi(), Ok(true));
        mode
    }

    fn subscribed() -> Mode {
        let mut mode = Mode::Normal;
        assert!(mode.subscribe().is_ok());
        mode
    }

    #[test]
    fn a_normal_connection_runs_everything() {
        for args in [&["GET", "k"][..], &["MULTI"], &["NOSUCH"], &["KEYS", "*"]] {
            assert_eq!(gate(&Mode::Normal, args, Protocol::Resp2), Gate::Run);
        }
    }

    #[test]
    fn between_multi_and_exec_commands_queue_and_refusals_abort() {
        let mode = queueing();
        let resp2 = Protocol::Resp2;
        assert_eq!(gate(&mode, &["SET", "k", "v"], resp2), Gate::Queue);
        assert_eq!(gate(&mode, &["PING"], resp2), Gate::Queue);
        for verb in ["EXEC", "DISCARD", "MULTI", "QUIT", "RESET"] {
            assert_eq!(gate(&mode, &[verb], resp2), Gate::Run, "{verb}");
        }
        let watch = gate(&mode, &["WATCH", "k"], resp2);
        assert_eq!(watch, Gate::Refuse(ModeRefusal::WatchInMulti));
        for (args, refusal) in [
            (&["KEYS", "*"][..], ModeRefusal::NotInMulti),
            (&["SELECT", "1"], ModeRefusal::NotInMulti),
            (&["NOSUCH"], ModeRefusal::Unknown),
        ] {
            assert_eq!(gate(&mode, args, resp2), Gate::Refuse(refusal));
        }
        assert!(matches!(
            gate(&mode, &["MONITOR"], resp2),
            Gate::Refuse(ModeRefusal::Unsupported(_))
        ));
        assert!(!ModeRefusal::WatchInMulti.aborts());
        assert!(ModeRefusal::NotInMulti.aborts() && ModeRefusal::Unknown.aborts());
    }

    #[test]
    fn watching_before_multi_runs_commands_at_once() {
        let mut mode = Mode::Normal;
        let t = mode
            .take_for_watch()
            .expect("a normal connection may watch");
        mode = Mode::Transaction(t);
        assert_eq!(gate(&mode, &["GET", "k"], Protocol::Resp2), Gate::Run);
        assert_eq!(mode.multi_len(), -1);
        assert_eq!(mode.begin_multi(), Ok(false));
        assert_eq!(mode.multi_len(), 0);
        assert!(mode.take_for_watch().is_err());
        assert!(mode.in_multi(), "a refused WATCH leaves the transaction");
        assert_eq!(mode.begin_multi(), Err("ERR MULTI calls can not be nested"));
        assert!(mode.end_multi().is_some());
        assert!(matches!(mode, Mode::Normal));
        assert!(mode.end_multi().is_none());
    }

    #[test]
    fn a_resp2_subscriber_may_only_subscribe_ping_quit_and_reset() {
        let mode = subscribed();
        let resp2 = Protocol::Resp2;
        assert_eq!(gate(&mode, &["PING"], resp2), Gate::SubscriberPing);
        for args in [
            &["SUBSCRIBE", "c"][..],
            &["PUNSUBSCRIBE"],
            &["QUIT"],
            &["RESET"],
        ] {
            assert_eq!(gate(&mode, args, resp2), Gate::Run);
        }
        let get = gate(&mode, &["GET", "k"], resp2);
        assert_eq!(get, Gate::Refuse(ModeRefusal::SubscriberOnly));
        let unknown = gate(&mode, &["NOSUCH"], resp2);
        assert_eq!(unknown, Gate::Refuse(ModeRefusal::Unknown));
        // RESP3 carries pushes beside replies: everything runs.
        assert_eq!(gate(&mode, &["GET", "k"], Protocol::Resp3), Gate::Run);
    }

    #[test]
    fn a_subscriber_cannot_start_a_transaction_nor_a_transaction_subscribe() {
        let mut mode = subscribed();
        assert_eq!(mode.begin_multi(), Err(MULTI_WHEN_SUBSCRIBED));
        assert!(matches!(mode.take_for_watch(), Err(WATCH_WHEN_SUBSCRIBED)));
        assert!(mode.subscriptions().is_some(), "refusals change nothing");
        assert!(!mode.idles());
        mode.leave_if_unsubscribed();
        assert!(matches!(mode, Mode::Normal) && mode.idles());

        let mut mode = queueing();
        assert!(matches!(mode.subscribe(), Err(SUBSCRIBE_IN_TRANSACTION)));
        assert!(mode.in_multi());
    }
}
