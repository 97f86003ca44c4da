//! Differential testing: random valid command sequences sent to one Redis
//! directly and to keyway in front of three (keys spread over the session,
//! cache and realtime pools, so splits and merges are exercised), replies
//! compared byte for byte, in RESP2 and RESP3. Seeded: a failure names its
//! seed, and `KEYWAY_DIFF_SEED=<n>` replays it.

mod support;

use support::*;

/// xorshift64*: a seeded source of choices, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "session:a",
    "session:b",
    "user:a",
    "user:b",
    "rate:a",
    "rate:b",
    "other:a",
];
const FIELDS: &[&str] = &["f1", "f2", "f3"];
const VALUES: &[&str] = &["1", "2", "10", "-3", "x", "hello", "", "3.5", "é"];

/// One random command: data commands of every type on a few keys, so
/// wrong types, missing keys and cross-pool multi-key commands all occur.
fn command(rng: &mut Rng) -> Vec<String> {
    let k = rng.pick(KEYS);
    let k2 = rng.pick(KEYS);
    let k3 = rng.pick(KEYS);
    let v = rng.pick(VALUES);
    let f = rng.pick(FIELDS);
    let n = (rng.below(7) as i64 - 3).to_string();
    let words: Vec<&str> = match rng.below(34) {
        0 => vec!["SET", k, v],
        1 => vec!["GET", k],
        2 => vec!["APPEND", k, v],
        3 => vec!["INCR", k],
        4 => vec!["INCRBY", k, &n],
        5 => vec!["STRLEN", k],
        6 => vec!["GETRANGE", k, "0", &n],
        7 => vec!["DEL", k, k2, k3],
        8 => vec!["EXISTS", k, k2, k3],
        9 => vec!["MGET", k, k2, k3],
        10 => vec!["MSET", k, v, k2, v],
        11 => vec!["LPUSH", k, v],
        12 => vec!["RPUSH", k, v, v],
        13 => vec!["LPOP", k],
        14 => vec!["LRANGE", k, "0", "-1"],
        15 => vec!["LLEN", k],
        16 => vec!["HSET", k, f, v],
        17 => vec!["HGET", k, f],
        18 => vec!["HGETALL", k],
        19 => vec!["HINCRBY", k, f, &n],
        20 => vec!["SADD", k, v],
        21 => vec!["SISMEMBER", k, v],
        22 => vec!["SCARD", k],
        23 => vec!["ZADD", k, &n, v],
        24 => vec!["ZRANGE", k, "0", "-1", "WITHSCORES"],
        25 => vec!["ZSCORE", k, v],
        26 => vec!["ZINCRBY", k, "1.5", v],
        27 => vec!["TYPE", k],
        28 => vec!["UNLINK", k, k2],
        29 => vec!["TOUCH", k, k2],
        30 => vec!["GETDEL", k],
        31 => vec!["SETNX", k, v],
        // Wrong arity and unknown commands, as clients sometimes send.
        32 => vec!["GET"],
        _ => vec!["NOSUCHCOMMAND", k],
    };
    words.into_iter().map(String::from).collect()
}

fn encode(args: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn run(seed: u64, resp3: bool, direct_port: u16, keyway_port: u16) {
    let mut direct = RawClient::connect(direct_port);
    let mut proxied = RawClient::connect(keyway_port);
    if resp3 {
        for c in [&mut direct, &mut proxied] {
            c.send(b"HELLO 3\r\n");
            c.read_frame();
        }
    }
    let mut rng = Rng(seed | 1);
    let mut history = Vec::new();
    for _batch in 0..40 {
        let batch: Vec<Vec<String>> = (0..50).map(|_| command(&mut rng)).collect();
        let bytes: Vec<u8> = batch.iter().flat_map(|c| encode(c)).collect();
        direct.send(&bytes);
        proxied.send(&bytes);
        for cmd in batch {
            let want = direct.read_frame();
            let got = proxied.read_frame();
            history.push(cmd.join(" "));
            assert!(
                got == want,
                "seed {seed} resp3={resp3}: after {} commands, `{}`:\n  redis:  {:?}\n  keyway: {:?}\nlast commands: {:?}",
                history.len(),
                cmd.join(" "),
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&got),
                &history[history.len().saturating_sub(8)..]
            );
        }
    }
}

#[test]
fn random_command_sequences_answer_as_redis_does() {
    let direct = RedisServer::start();
    let r = Reference::start();
    let seeds: Vec<u64> = match std::env::var("KEYWAY_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("KEYWAY_DIFF_SEED is a number")],
        Err(_) => vec![1, 2, 3, 0x5eed],
    };
    for seed in seeds {
        for resp3 in [false, true] {
            // The same starting point on both sides.
            let _: () = redis::cmd("FLUSHALL").query(&mut direct.direct()).unwrap();
            for pool in [&r.session, &r.cache, &r.realtime] {
                let _: () = redis::cmd("FLUSHALL").query(&mut pool.direct()).unwrap();
            }
            run(seed, resp3, direct.port, r.keyway.port);
        }
    }
}
