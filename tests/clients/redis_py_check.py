"""Proves unmodified redis-py 5 works through keyway: its connect handshake
(CLIENT SETINFO; HELLO 3 with protocol=3), SET/GET, a 1000-command pipeline,
MGET and DEL across three pools, and (given backend ports) each key on its pool.
Usage: redis_py_check.py PORT [SESSION_PORT CACHE_PORT REALTIME_PORT]"""
import secrets
import sys

import redis

ports = [int(p) for p in sys.argv[1:]]
if len(ports) not in (1, 4):
    sys.exit(__doc__.splitlines()[-1])
KEYWAY, BACKENDS = ports[0], ports[1:]
PREFIXES = ["session:", "user:", "rate:"]  # session, cache, realtime pools
TOKEN = secrets.token_hex(6)
checks = 0
step = "connect"


def check(cond, what):
    global checks
    if not cond:
        sys.exit(f"redis-py check failed: {what}")
    checks += 1


def direct(i):
    return redis.Redis(port=BACKENDS[i], decode_responses=True)


def run(protocol):
    global step
    r = redis.Redis(port=KEYWAY, protocol=protocol, decode_responses=True)
    tag = f"RESP{protocol}"
    step = f"{tag} PING"
    check(r.ping() is True, step)
    keys = [f"{p}kwcheck:{TOKEN}:{protocol}" for p in PREFIXES]
    counters = [k + ":n" for k in keys]

    step = f"{tag} SET/GET"
    for k in keys:
        check(r.set(k, k) is True, f"SET {k}")
        check(r.get(k) == k, f"GET {k}")

    # The negotiated protocol shows in raw reply types: a double is a float in RESP3.
    step = f"{tag} raw reply type"
    conn = redis.Connection(port=KEYWAY, protocol=protocol, decode_responses=True)
    conn.send_command("ZADD", keys[1] + ":z", "1.5", "m")
    conn.read_response()
    conn.send_command("ZSCORE", keys[1] + ":z", "m")
    got = conn.read_response()
    conn.disconnect()
    check(got == (1.5 if protocol == 3 else "1.5"), f"{step}: ZSCORE gave {got!r}")

    step = f"{tag} pipeline"
    pipe = r.pipeline(transaction=False)
    expected, sums = [], [0, 0, 0]
    for i in range(1000):
        pool = i % 3
        if (i // 3) % 2:
            pipe.get(keys[pool])
            expected.append(keys[pool])
        else:
            pipe.incrby(counters[pool], i)
            sums[pool] += i
            expected.append(sums[pool])
    out = pipe.execute()
    for i, (got, want) in enumerate(zip(out, expected)):
        check(got == want, f"pipeline reply {i}: got {got!r}, expected {want!r}")
    check(len(out) == 1000, f"pipeline gave {len(out)} replies")

    step = f"{tag} MGET"
    missing = f"user:kwcheck:{TOKEN}:missing"
    got = r.mget(keys[0], keys[1], missing, keys[2])
    check(got == [keys[0], keys[1], None, keys[2]], f"MGET across pools: {got}")

    if BACKENDS:
        step = f"{tag} routing"
        for i, k in enumerate(keys + counters):
            for b in range(3):
                want = 1 if b == i % 3 else 0
                check(direct(b).exists(k) == want, f"{k} on port {BACKENDS[b]}: exists != {want}")
        for pool in range(3):
            check(direct(pool).get(counters[pool]) == str(sums[pool]), f"{counters[pool]} total")

    step = f"{tag} DEL"
    n = r.delete(*keys, *counters, keys[1] + ":z", missing)
    check(n == 7, f"DEL across pools returned {n}, expected 7")
    check(r.exists(*keys, *counters) == 0, "keys still exist after DEL")


try:
    run(2)  # default settings: redis-py 5 sends CLIENT SETINFO on connect
    run(3)  # HELLO 3
except redis.RedisError as e:
    sys.exit(f"redis-py check failed at {step}: {type(e).__name__}: {e}")
finally:
    if BACKENDS:  # clean up even after a failure, straight on the backends
        for b in range(3):
            leftover = list(direct(b).scan_iter(f"*kwcheck:{TOKEN}:*"))
            if leftover:
                direct(b).delete(*leftover)

print(f"redis-py {redis.__version__}: {checks} checks passed")
