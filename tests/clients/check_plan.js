// What both Node.js client checks (ioredis_check.js, node_redis_check.js)
// send and expect: a key and a counter on each reference pool (session,
// cache and realtime, by prefix) and a 1000-command pipeline of GETs and
// INCRBYs spread over the three pools, with the replies it must give.
const PREFIXES = ["session:", "user:", "rate:"]; // session, cache, realtime pools

function keysFor(token, db) {
  const keys = PREFIXES.map((p) => `${p}kwcheck:${token}:${db}`);
  return { keys, counters: keys.map((k) => `${k}:n`) };
}

// Queues the pipeline through `get(key)` and `incrBy(key, n)`; returns the
// replies expected in order and each pool's counter total.
function pipelinePlan({ keys, counters }, get, incrBy) {
  const expected = [];
  const sums = [0, 0, 0];
  for (let i = 0; i < 1000; i++) {
    const pool = i % 3;
    if (Math.floor(i / 3) % 2) {
      get(keys[pool]);
      expected.push(keys[pool]);
    } else {
      incrBy(counters[pool], i);
      sums[pool] += i;
      expected.push(sums[pool]);
    }
  }
  return { expected, sums };
}

module.exports = { PREFIXES, keysFor, pipelinePlan };
