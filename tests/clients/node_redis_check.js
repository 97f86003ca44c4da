// Proves unmodified node-redis 5 (the `redis` package) works through keyway,
// in RESP2 and in RESP3: its handshake on connect (HELLO 3 with SETNAME,
// CLIENT SETINFO, SELECT), SET/GET, a 1000-command pipeline, MGET and DEL
// across three pools, a MULTI/EXEC, a WATCH that sees a conflict, pub/sub
// and a blocking pop on duplicated clients, and (given backend ports) each
// key on its pool and db.
// Usage: node node_redis_check.js PORT [SESSION_PORT CACHE_PORT REALTIME_PORT]
const crypto = require("crypto");
const { createClient, WatchError } = require("redis");

const ports = process.argv.slice(2).map(Number);
if (ports.length !== 1 && ports.length !== 4) {
  console.error("Usage: node node_redis_check.js PORT [SESSION_PORT CACHE_PORT REALTIME_PORT]");
  process.exit(2);
}
const [KEYWAY, ...BACKENDS] = ports;
const { keysFor, pipelinePlan } = require("./check_plan");
const TOKEN = crypto.randomBytes(6).toString("hex");
const clients = [];
let checks = 0;
let step = "connect";

async function connect(port, db, RESP) {
  const c = createClient({
    socket: { host: "127.0.0.1", port, reconnectStrategy: false },
    database: db,
    RESP,
    name: `kwcheck-${TOKEN}`,
  });
  c.on("error", (e) => { c.lastError = e; }); // failures surface as rejected commands
  clients.push(c);
  await c.connect();
  return c;
}

async function duplicate(c) {
  const d = c.duplicate();
  d.on("error", (e) => { d.lastError = e; });
  clients.push(d);
  await d.connect();
  return d;
}

function check(cond, what) {
  if (!cond) throw new Error(what);
  checks += 1;
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function run(db, RESP) {
  const tag = `RESP${RESP} db ${db}`;
  step = `${tag} handshake`;
  const r = await connect(KEYWAY, db, RESP);
  check(r.isReady, `${step}: not ready`);
  check((await r.ping()) === "PONG", `${tag} PING`);
  step = `${tag} CLIENT INFO`;
  const info = await r.clientInfo();
  check(info.name === `kwcheck-${TOKEN}` && Number(info.db) === db && Number(info.resp) === RESP,
    `${step}: name ${info.name}, db ${info.db}, resp ${info.resp}`);
  check(info.libName === "node-redis", `${step}: lib-name ${info.libName}`);

  const { keys, counters } = keysFor(TOKEN, db);
  step = `${tag} SET/GET`;
  for (const k of keys) {
    check((await r.set(k, k)) === "OK", `SET ${k}`);
    check((await r.get(k)) === k, `GET ${k}`);
  }

  step = `${tag} pipeline`;
  const pipe = r.multi();
  const { expected, sums } = pipelinePlan(
    { keys, counters },
    (k) => pipe.get(k),
    (k, n) => pipe.incrBy(k, n),
  );
  const out = await pipe.execAsPipeline();
  check(out.length === 1000, `pipeline gave ${out.length} replies`);
  out.forEach((got, i) => check(got === expected[i], `pipeline reply ${i}: got ${got}, expected ${expected[i]}`));

  step = `${tag} MGET`;
  const missing = `user:kwcheck:${TOKEN}:missing`;
  const got = await r.mGet([keys[0], keys[1], missing, keys[2]]);
  check(same(got, [keys[0], keys[1], null, keys[2]]), `MGET across pools: ${JSON.stringify(got)}`);

  step = `${tag} MULTI/EXEC`;
  const tx = await r.multi().incr(counters[1]).get(counters[1]).exec();
  check(same(tx, [sums[1] + 1, String(sums[1] + 1)]), `${step}: ${JSON.stringify(tx)}`);
  sums[1] += 1;

  step = `${tag} WATCH`;
  const watcher = await duplicate(r);
  await watcher.watch(keys[1]);
  await r.set(keys[1], "changed");
  let aborted = false;
  try {
    await watcher.multi().set(keys[1], "mine").exec();
  } catch (e) {
    aborted = e instanceof WatchError;
    if (!aborted) throw e;
  }
  check(aborted, `${step}: EXEC ran despite the conflicting write`);
  check((await r.get(keys[1])) === "changed", `${step}: the watched key was overwritten`);
  await r.set(keys[1], keys[1]);

  step = `${tag} pub/sub`;
  const channel = `user:kwcheck:${TOKEN}:ch`;
  const sub = await duplicate(r);
  const message = new Promise((ok) => sub.subscribe(channel, (m, ch) => ok([ch, m])).then(() => r.publish(channel, "hi")));
  check(same(await message, [channel, "hi"]), `${step}: message`);
  await sub.unsubscribe(channel);

  step = `${tag} BLPOP`;
  const list = `${keys[0]}:l`;
  const blocker = await duplicate(r);
  const popped = blocker.blPop(list, 5);
  setTimeout(() => r.lPush(list, "x"), 100);
  check(same(await popped, { key: list, element: "x" }), `${step}: ${JSON.stringify(await popped)}`);

  if (BACKENDS.length) {
    step = `${tag} routing`;
    const direct = await Promise.all(BACKENDS.map((p) => connect(p, db, 2)));
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
  const n = await r.del([...keys, ...counters, missing]);
  check(n === 6, `DEL across pools returned ${n}, expected 6`);
  check((await r.exists([...keys, ...counters])) === 0, "keys still exist after DEL");
}

async function cleanup() {
  for (const port of BACKENDS) {
    for (const db of [0, 3]) {
      const c = await connect(port, db, 2);
      const left = await c.keys(`*kwcheck:${TOKEN}:*`);
      if (left.length) await c.del(left);
    }
  }
}

async function main() {
  let failure = null;
  try {
    await run(0, 2);
    await run(3, 3); // RESP3: HELLO 3 … SETNAME on connect, then SELECT 3
  } catch (e) {
    failure = `node-redis check failed at ${step}: ${e.message}`;
  }
  await cleanup().catch(() => {});
  clients.forEach((c) => { if (c.isOpen) c.destroy(); });
  if (failure) {
    console.error(failure);
    process.exit(1);
  }
  console.log(`node-redis ${require("redis/package.json").version}: ${checks} checks passed`);
}

setTimeout(() => { console.error(`node-redis check failed at ${step}: timed out`); process.exit(1); }, 30000).unref();
main();
