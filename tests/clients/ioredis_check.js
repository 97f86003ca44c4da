// Proves unmodified ioredis 5 works through keyway: its INFO ready-check and
// SELECT (db: 3) on connect, SET/GET, a 1000-command pipeline, MGET and DEL
// across three pools, (given backend ports) each key on its pool and db, and
// its resend of what a half-closed, blocked connection left unanswered.
// Usage: node ioredis_check.js PORT [SESSION_PORT CACHE_PORT REALTIME_PORT]
const crypto = require("crypto");
const Redis = require("ioredis");

const ports = process.argv.slice(2).map(Number);
if (ports.length !== 1 && ports.length !== 4) {
  console.error("Usage: node ioredis_check.js PORT [SESSION_PORT CACHE_PORT REALTIME_PORT]");
  process.exit(2);
}
const [KEYWAY, ...BACKENDS] = ports;
const { keysFor, pipelinePlan } = require("./check_plan");
const TOKEN = crypto.randomBytes(6).toString("hex");
const opts = { host: "127.0.0.1", retryStrategy: () => null, maxRetriesPerRequest: 0 };
const clients = [];
let checks = 0;
let step = "connect";

function connect(port, db) {
  const c = new Redis({ ...opts, port, db });
  c.on("error", (e) => { c.lastError = e; }); // failures surface as rejected commands
  clients.push(c);
  return c;
}

function check(cond, what) {
  if (!cond) throw new Error(what);
  checks += 1;
}

async function run(db) {
  const tag = `db ${db}`;
  const r = connect(KEYWAY, db);
  step = `${tag} INFO ready-check`;
  await new Promise((ok, fail) => { r.once("ready", ok); r.once("end", () => fail(new Error(`connection closed (${r.lastError})`))); });
  check(r.status === "ready", `${step}: status ${r.status}`);
  check(/^redis_version:/m.test(await r.info()), `${step}: no redis_version in INFO`);
  step = `${tag} PING`;
  check((await r.ping()) === "PONG", step);
  const { keys, counters } = keysFor(TOKEN, db);

  step = `${tag} SET/GET`;
  for (const k of keys) {
    check((await r.set(k, k)) === "OK", `SET ${k}`);
    check((await r.get(k)) === k, `GET ${k}`);
  }

  step = `${tag} pipeline`;
  const pipe = r.pipeline();
  const { expected, sums } = pipelinePlan(
    { keys, counters },
    (k) => pipe.get(k),
    (k, n) => pipe.incrby(k, n),
  );
  const out = await pipe.exec();
  check(out.length === 1000, `pipeline gave ${out.length} replies`);
  out.forEach(([err, got], i) =>
    check(err === null && got === expected[i], `pipeline reply ${i}: got ${err || got}, expected ${expected[i]}`));

  step = `${tag} MGET`;
  const missing = `user:kwcheck:${TOKEN}:missing`;
  const got = await r.mget(keys[0], keys[1], missing, keys[2]);
  check(JSON.stringify(got) === JSON.stringify([keys[0], keys[1], null, keys[2]]), `MGET across pools: ${JSON.stringify(got)}`);

  if (BACKENDS.length) {
    step = `${tag} routing`;
    const direct = BACKENDS.map((p) => connect(p, db));
    for (const [i, k] of [...keys, ...counters].entries()) {
      for (let b = 0; b < 3; b++) {
        const want = b === i % 3 ? 1 : 0;
        check((await direct[b].exists(k)) === want, `${k} in db ${db} on port ${BACKENDS[b]}: exists != ${want}`);
      }
    }
    for (let pool = 0; pool < 3; pool++) {
      check((await direct[pool].get(counters[pool])) === String(sums[pool]), `${counters[pool]} total`);
    }
  }

  step = `${tag} DEL`;
  const n = await r.del(...keys, ...counters, missing);
  check(n === 6, `DEL across pools returned ${n}, expected 6`);
  check((await r.exists(...keys, ...counters)) === 0, "keys still exist after DEL");
}

// ioredis resends the commands a dropped connection left unanswered, on a
// new connection in the same db. Its own suite half-closes a client that is
// blocked in BLPOP with SET and INCR queued behind it: Redis frees that
// client without running them, so after the resend INCR gives 2 (keyway
// once answered the BLPOP with a nil and ran SET and INCR before the
// resend: INCR gave 3). Default options here: ioredis reconnects.
async function resend() {
  step = "resend after a half-close while blocked";
  const list = `session:kwcheck:${TOKEN}:resend:l`;
  const key = `session:kwcheck:${TOKEN}:resend:n`;
  const r = new Redis({ host: "127.0.0.1", port: KEYWAY, db: 3 });
  clients.push(r);
  r.on("error", () => {}); // the half-close is on purpose
  const pusher = connect(KEYWAY, 3);
  await new Promise((ok) => r.once("ready", ok));
  r.once("close", () => { pusher.lpush(list, "1"); });
  const popped = r.blpop(list, 0);
  const set = r.set(key, "1");
  const incr = r.pipeline().incr(key).exec();
  setTimeout(() => r.stream.end(), 0);
  const [got, , counted] = await Promise.all([popped, set, incr]);
  check(JSON.stringify(got) === JSON.stringify([list, "1"]), `${step}: BLPOP gave ${JSON.stringify(got)}`);
  check(counted[0][1] === 2, `${step}: INCR gave ${counted[0][1]} (SET and INCR ran twice?)`);
  await pusher.del(key, list);
}

async function cleanup() {
  for (const port of BACKENDS) {
    for (const db of [0, 3]) {
      const c = connect(port, db);
      const left = await c.keys(`*kwcheck:${TOKEN}:*`);
      if (left.length) await c.del(...left);
    }
  }
}

async function main() {
  let failure = null;
  try {
    await run(0); // default options: INFO ready-check on connect
    await run(3); // db: 3 adds SELECT 3 on connect
    await resend();
  } catch (e) {
    failure = `ioredis check failed at ${step}: ${e.message}`;
  }
  await cleanup().catch(() => {});
  clients.forEach((c) => c.disconnect());
  if (failure) {
    console.error(failure);
    process.exit(1);
  }
  console.log(`ioredis ${require("ioredis/package.json").version}: ${checks} checks passed`);
}

setTimeout(() => { console.error(`ioredis check failed at ${step}: timed out`); process.exit(1); }, 30000).unref();
main();
