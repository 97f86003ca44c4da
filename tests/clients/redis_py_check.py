"""redis-py through keyway: the handshake redis-py 5 sends (CLIENT SETINFO),
HELLO 3, a pipeline over three pools, MGET across pools, and keys landing on
the right backend. Usage: redis_py_check.py KEYWAY SESSION CACHE REALTIME"""
import secrets
import sys

import redis

kw, session, cache, realtime = (int(p) for p in sys.argv[1:5])
token = secrets.token_hex(4)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"redis-py check failed: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


for protocol in (2, 3):
    r = redis.Redis(port=kw, protocol=protocol, decode_responses=True)
    check(r.ping() is True, f"PING (RESP{protocol})")
    keys = {f"session:{token}:{protocol}": session, f"user:{token}:{protocol}": cache, f"rate:{token}:{protocol}": realtime}
    for key in keys:
        check(r.set(key, key) is True, f"SET {key}")
    for key, port in keys.items():
        check(redis.Redis(port=port).exists(key) == 1, f"{key} on port {port}")
    pipe = r.pipeline(transaction=False)
    names = list(keys)
    for i in range(1000):
        pipe.incr(f"{names[i % 3]}:n")
    out = pipe.execute()
    check(out == [i // 3 + 1 for i in range(1000)], "pipeline replies in order")
    got = r.mget(names + [f"missing:{token}"])
    check(got == names + [None], f"MGET across pools: {got}")
    # A transaction on one pool (redis-py's default pipeline).
    with r.pipeline() as tx:
        tx.set(f"session:{token}:tx", 1).incr(f"session:{token}:tx")
        check(tx.execute() == [True, 2], "MULTI/EXEC")
    check(r.delete(*names, *(n + ":n" for n in names), f"session:{token}:tx") == 7, "DEL across pools")
    info = r.info("server")
    check(str(info.get("redis_version", "")).startswith("7"), f"INFO server: {info.get('redis_version')}")

print(f"redis-py {redis.__version__}: {checks} checks passed")
