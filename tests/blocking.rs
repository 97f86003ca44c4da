//! Blocking commands on leased connections: one blocked client never delays
//! another's GET, timeouts behave as in Redis, a client that leaves while
//! blocked does not take an element with it, and the lease limit is a clear
//! error.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

#[test]
fn a_blocked_client_does_not_delay_others() {
    let r = Reference::start();
    let port = r.keyway.port;
    let blocked = std::thread::spawn(move || {
        let mut c = connect(port);
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("user:queue")
            .arg(5)
            .query(&mut c)
            .unwrap();
        got
    });
    r.cache.wait_blocked(1);
    let mut c = r.client();
    let started = Instant::now();
    for i in 0..100 {
        let _: () = c.set(format!("user:x{i}"), i).unwrap();
        let _: i64 = c.get(format!("user:x{i}")).unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "GETs were delayed: {:?}",
        started.elapsed()
    );
    let _: () = c.rpush("user:queue", "job-1").unwrap();
    let got = blocked.join().unwrap();
    assert_eq!(got, Some(("user:queue".to_string(), "job-1".to_string())));
}

#[test]
fn timeouts_behave_as_in_redis() {
    let r = Reference::start();
    let mut c = r.client();
    let started = Instant::now();
    let got: Option<(String, String)> = redis::cmd("BRPOP")
        .arg("session:empty")
        .arg("0.3")
        .query(&mut c)
        .unwrap();
    assert_eq!(got, None);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let got: Option<redis::Value> = redis::cmd("BZPOPMIN")
        .arg("rate:z")
        .arg("0.1")
        .query(&mut c)
        .unwrap();
    assert_eq!(got, None);
    let got: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(100)
        .arg("STREAMS")
        .arg("rate:s")
        .arg("$")
        .query(&mut c)
        .unwrap();
    assert_eq!(got, redis::Value::Nil);
    // Timeout 0 waits until an element arrives.
    let port = r.keyway.port;
    let waiter = std::thread::spawn(move || {
        let mut c = connect(port);
        let got: (String, String) = redis::cmd("BLPOP")
            .arg("session:forever")
            .arg(0)
            .query(&mut c)
            .unwrap();
        got.1
    });
    r.session.wait_blocked(1);
    let _: () = c.lpush("session:forever", "late").unwrap();
    assert_eq!(waiter.join().unwrap(), "late");
}

#[test]
fn a_client_leaving_while_blocked_steals_nothing() {
    let r = Reference::start();
    {
        let mut raw = r.keyway.raw();
        raw.send(b"BLPOP user:jobs 0\r\n");
        r.cache.wait_blocked(1);
    } // the blocked client disconnects
    r.cache.wait_blocked(0);
    let mut c = r.client();
    let _: () = c.rpush("user:jobs", "precious").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let len: i64 = r.cache.direct().llen("user:jobs").unwrap();
    assert_eq!(
        len, 1,
        "the element pushed after the blocked client left is still in the list"
    );
    // And the next blocking client gets it.
    let got: (String, String) = redis::cmd("BLPOP")
        .arg("user:jobs")
        .arg(1)
        .query(&mut c)
        .unwrap();
    assert_eq!(got.1, "precious");
}

/// The reference pools (session, cache, realtime), `limit` leases each.
fn with_lease_limit(limit: usize) -> ([RedisServer; 3], Keyway) {
    let servers = reference_servers();
    let [session, cache, realtime] = &servers;
    let config = reference_config(&session.url(), &cache.url(), &realtime.url()).replace(
        "[backend]\n",
        &format!("[backend]\nmax_dedicated = {limit}\n"),
    );
    (servers, Keyway::start(&config))
}

/// `n` clients blocked on the session pool (unblocked when dropped), and
/// the refusal of one more, which names `limit`.
fn block_until_refused(
    kw: &Keyway,
    session: &RedisServer,
    n: usize,
    limit: usize,
) -> (Vec<RawClient>, redis::Connection) {
    let mut blocked = Vec::new();
    for _ in 0..n {
        let mut raw = kw.raw();
        raw.send(b"BLPOP session:never 10\r\n");
        blocked.push(raw);
    }
    session.wait_blocked(n);
    let mut c = kw.client();
    let err = redis::cmd("BLPOP")
        .arg("session:never")
        .arg(1)
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    let expected =
        format!("backend 'session' has no free dedicated connection (limit {limit} reached)");
    assert!(err.to_string().contains(&expected), "{err}");
    (blocked, c)
}

#[test]
fn exhausted_leases_are_a_clear_error() {
    let ([session, _cache, _realtime], kw) = with_lease_limit(2);
    let (_blocked, mut c) = block_until_refused(&kw, &session, 2, 2);
    // Ordinary commands are unaffected.
    let _: () = c.set("session:ok", 1).unwrap();
}

/// With several users, one user's blocked clients and subscribers keep at
/// most its share of a pool's held leases (half of them by default):
/// another tenant's BLPOP, SUBSCRIBE and WATCH still get theirs.
#[test]
fn one_tenant_cannot_take_every_lease() {
    let servers = reference_servers();
    let [session, cache, realtime] = &servers;
    // 16 leases: 14 may be held, 7 by one user.
    let config = format!(
        "{}\n[[auth.users]]\nname = \"noisy\"\npassword_env = \"NOISY_PASSWORD\"\n\
         [[auth.users]]\nname = \"calm\"\npassword_env = \"CALM_PASSWORD\"\n",
        reference_config(&session.url(), &cache.url(), &realtime.url())
            .replace("[backend]\n", "[backend]\nmax_dedicated = 16\n")
    );
    let kw = Keyway::start_with_env(
        &config,
        &[
            ("NOISY_PASSWORD", "noisy-pass"),
            ("CALM_PASSWORD", "calm-pass"),
        ],
    );
    let as_user = |user: &str, password: &str| {
        let mut raw = kw.raw();
        raw.send(format!("AUTH {user} {password}\r\n").as_bytes());
        assert_eq!(raw.read_frame(), b"+OK\r\n");
        raw
    };
    let mut noisy: Vec<RawClient> = (0..7)
        .map(|_| {
            let mut raw = as_user("noisy", "noisy-pass");
            raw.send(b"BLPOP session:never 10\r\n");
            raw
        })
        .collect();
    session.wait_blocked(7);
    // The eighth of the noisy tenant's, blocking or subscribing: refused.
    let share =
        "backend 'session' has no free dedicated connection for user 'noisy' (its limit 7 reached)";
    let mut eighth = as_user("noisy", "noisy-pass");
    eighth.send(b"BLPOP session:never 1\r\n");
    let refused = String::from_utf8_lossy(&eighth.read_frame()).into_owned();
    assert!(refused.contains(share), "{refused}");
    eighth.send(b"SUBSCRIBE session:news\r\n");
    let refused = String::from_utf8_lossy(&eighth.read_frame()).into_owned();
    assert!(refused.contains(share), "{refused}");

    // The calm tenant blocks, subscribes and watches as before.
    let mut calm = as_user("calm", "calm-pass");
    calm.send(b"BLPOP session:never 0.05\r\n");
    assert_eq!(calm.read_frame(), b"*-1\r\n");
    calm.send(b"WATCH session:w\r\nMULTI\r\nINCR session:w\r\nEXEC\r\n");
    assert_eq!(calm.read_frame(), b"+OK\r\n");
    assert_eq!(calm.read_frame(), b"+OK\r\n");
    assert_eq!(calm.read_frame(), b"+QUEUED\r\n");
    assert_eq!(calm.read_frame(), b"*1\r\n:1\r\n");
    let mut listener = as_user("calm", "calm-pass");
    listener.send(b"SUBSCRIBE session:news\r\n");
    assert!(String::from_utf8_lossy(&listener.read_frame()).contains("subscribe"));

    // One of the noisy tenant's leases given back is its to take again.
    drop(noisy.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let frame = loop {
        eighth.send(b"BLPOP session:never 0.05\r\n");
        let frame = eighth.read_frame();
        if frame == b"*-1\r\n" || Instant::now() > deadline {
            break frame;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(frame, b"*-1\r\n", "{}", String::from_utf8_lossy(&frame));
    println!(
        "noisy tenant: 7 leases held, the 8th refused; calm tenant: BLPOP, WATCH, SUBSCRIBE served"
    );
}

/// Blocking commands, subscriptions and WATCH may hold all leases but an
/// eighth: with them all taken, other clients' transactions still run.
#[test]
fn transactions_keep_a_reserve_of_leases() {
    let ([session, _cache, _realtime], kw) = with_lease_limit(8);
    let (_blocked, mut c) = block_until_refused(&kw, &session, 7, 7);
    let mut subscriber = kw.raw();
    subscriber.send(b"SUBSCRIBE session:news\r\n");
    assert!(String::from_utf8_lossy(&subscriber.read_frame()).contains("limit 7 reached"));
    let (n,): (i64,) = redis::pipe()
        .atomic()
        .incr("session:n", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1, "MULTI/EXEC found a reserved lease");
}

/// Leases given back are reused, and count against the limit only while
/// in use: rounds of as many blocking commands as the limit all run.
#[test]
fn returned_leases_free_their_place_in_the_limit() {
    let (_servers, kw) = with_lease_limit(2);
    for round in 0..3 {
        let mut clients: Vec<RawClient> = (0..2).map(|_| kw.raw()).collect();
        for c in &mut clients {
            c.send(b"BLPOP session:never 0.2\r\n");
        }
        for c in &mut clients {
            assert_eq!(
                String::from_utf8_lossy(&c.read_frame()),
                "*-1\r\n",
                "round {round}"
            );
        }
    }
    let leased = r#"keyway_backend_connections{pool="session",state="leased"}"#;
    assert!(kw.wait_until(Duration::from_secs(2), || kw.metric(leased) == 0.0));
}

#[test]
fn replies_before_a_blocking_command_arrive_while_it_blocks() {
    let r = Reference::start();
    let mut raw = RawClient::connect(r.keyway.port);
    let started = Instant::now();
    raw.send(b"SET user:before 1\r\nGET user:before\r\nBLPOP user:never 2\r\n");
    assert_eq!(raw.read_frame(), b"+OK\r\n");
    assert_eq!(raw.read_frame(), b"$1\r\n1\r\n");
    // Both replies came while BLPOP was still blocked, not with its reply.
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(raw.read_frame(), b"*-1\r\n");
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

/// CLIENT UNBLOCK of a keyway client blocked in BLPOP ends its command as
/// Redis would: the timeout reply, or UNBLOCKED with ERROR; CLIENT LIST
/// shows it blocked meanwhile.
#[test]
fn client_unblock_ends_a_blocked_command() {
    let r = Reference::start();
    for (how, expected) in [
        ("TIMEOUT", &b"*-1\r\n"[..]),
        (
            "ERROR",
            b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
        ),
    ] {
        let mut blocked = r.keyway.raw();
        blocked.send(b"CLIENT ID\r\n");
        let id_frame = blocked.read_frame();
        let id = String::from_utf8_lossy(&id_frame[1..id_frame.len() - 2]).to_string();
        blocked.send(b"BLPOP session:nothing 0\r\n");
        let mut admin = r.client();
        let shows_blocked = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
            list.lines()
                .any(|l| l.starts_with(&format!("id={id} ")) && l.contains(" flags=b "))
        });
        assert!(shows_blocked, "CLIENT LIST shows the client blocked");
        let done: i64 = redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(&id)
            .arg(how)
            .query(&mut admin)
            .unwrap();
        assert_eq!(done, 1);
        assert_eq!(blocked.read_frame(), expected, "{how}");
        // Not blocked any more: 0, and the connection serves again.
        let again: i64 = redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(&id)
            .query(&mut admin)
            .unwrap();
        assert_eq!(again, 0);
        blocked.send(b"PING\r\n");
        assert_eq!(blocked.read_frame(), b"+PONG\r\n");
    }
    // Nothing popped by the unblocked commands: a push stays.
    let _: () = redis::cmd("RPUSH")
        .arg("session:nothing")
        .arg("kept")
        .query(&mut r.client())
        .unwrap();
    let left: i64 = redis::cmd("LLEN")
        .arg("session:nothing")
        .query(&mut r.session.direct())
        .unwrap();
    assert_eq!(left, 1);
}

/// CLIENT KILL of a blocked client closes it without a reply, as Redis
/// does (a client library reports a closed connection, not a timeout),
/// and nothing is popped for it.
#[test]
fn a_killed_blocked_client_is_closed_without_a_reply() {
    let r = Reference::start();
    let mut blocked = r.keyway.raw();
    blocked.send(b"CLIENT ID\r\n");
    let id_frame = blocked.read_frame();
    let id = String::from_utf8_lossy(&id_frame[1..id_frame.len() - 2]).to_string();
    blocked.send(b"BLPOP session:killed 0\r\n");
    r.session.wait_blocked(1);
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query(&mut r.client())
        .unwrap();
    assert_eq!(killed, 1);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut blocked.stream_mut(), &mut rest);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "",
        "no reply before the close"
    );
    let _: () = redis::cmd("RPUSH")
        .arg("session:killed")
        .arg("kept")
        .query(&mut r.client())
        .unwrap();
    let left: i64 = redis::cmd("LLEN")
        .arg("session:killed")
        .query(&mut r.session.direct())
        .unwrap();
    assert_eq!(left, 1);
}

/// WAIT through keyway counts the replicas of every server the client
/// wrote to (each asked on a lease, the smallest count answered), not of
/// whichever pool a keyless command goes to.
#[test]
fn wait_counts_the_replicas_of_the_servers_the_client_wrote_to() {
    let session = RedisServer::start();
    let cache = RedisServer::start();
    let realtime = RedisServer::start();
    let session_replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &session.port.to_string()]);
    let cache_replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &cache.port.to_string()]);
    for replica in [&session_replica, &cache_replica] {
        let up = wait_for(Duration::from_secs(10), || {
            info_field(replica.port, "replication", "master_link_status").as_deref() == Some("up")
        });
        assert!(up.is_some(), "replica :{} never synced", replica.port);
    }
    let keyway = Keyway::start(&reference_config(
        &session.url(),
        &cache.url(),
        &realtime.url(),
    ));
    let wait = |c: &mut redis::Connection, timeout_ms: u64| -> i64 {
        redis::cmd("WAIT").arg(1).arg(timeout_ms).query(c).unwrap()
    };

    let mut client = keyway.client();
    let _: () = client.set("session:a", 1).unwrap();
    assert_eq!(wait(&mut client, 5000), 1, "the session replica has it");

    // The session replica stops acknowledging: a write to the session pool
    // is on no replica, as Redis itself answers on that server.
    session_replica.signal("STOP");
    let mut direct = session.direct();
    let _: () = direct.set("session:direct", 1).unwrap();
    assert_eq!(wait(&mut direct, 200), 0, "redis-server's own answer");
    let _: () = client.set("session:b", 1).unwrap();
    let started = Instant::now();
    assert_eq!(wait(&mut client, 300), 0, "keyway's answer");
    let first = started.elapsed();

    // A client that wrote only to the cache pool: its replica has it.
    let mut cache_only = keyway.client();
    let _: () = cache_only.set("user:1", 1).unwrap();
    assert_eq!(wait(&mut cache_only, 5000), 1);
    // ... and once it writes to the session pool too, the smallest count.
    let _: () = cache_only.set("session:c", 1).unwrap();
    let started = Instant::now();
    assert_eq!(wait(&mut cache_only, 300), 0);
    let both = started.elapsed();
    println!("WAIT 1 300 with the replica stopped: one pool {first:?}, two pools {both:?}");
    // One deadline for all the servers asked, not one each.
    assert!(both < Duration::from_millis(1500), "{both:?}");

    session_replica.signal("CONT");
    assert_eq!(wait(&mut client, 5000), 1, "the replica caught up");
    assert_eq!(wait(&mut cache_only, 5000), 1);

    // Redis's own errors pass through.
    let err = redis::cmd("WAIT")
        .arg(1)
        .arg(-1)
        .query::<i64>(&mut client)
        .unwrap_err();
    assert!(err.to_string().contains("timeout is negative"), "{err}");
}
