// ioredis through keyway: its INFO ready-check and SELECT on connect, a
// pipeline over three pools, MGET across pools, and keys landing on the
// right backend. Usage: node ioredis_check.js KEYWAY SESSION CACHE REALTIME
const Redis = require("ioredis");

const [kw, session, cache, realtime] = process.argv.slice(2, 6).map(Number);
const token = Math.random().toString(16).slice(2, 10);
let checks = 0;

function check(cond, what) {
  if (!cond) {
    console.error(`ioredis check failed: ${what}`);
    process.exit(1);
  }
  checks += 1;
}

async function main() {
  const r = new Redis({ port: kw, enableReadyCheck: true, lazyConnect: false });
  const inDb3 = new Redis({ port: kw, db: 3 });
  check((await r.ping()) === "PONG", "PING");
  const keys = { [`session:${token}`]: session, [`user:${token}`]: cache, [`rate:${token}`]: realtime };
  for (const key of Object.keys(keys)) check((await r.set(key, key)) === "OK", `SET ${key}`);
  for (const [key, port] of Object.entries(keys)) {
    const direct = new Redis({ port });
    check((await direct.exists(key)) === 1, `${key} on port ${port}`);
    direct.disconnect();
  }
  const names = Object.keys(keys);
  const pipe = r.pipeline();
  for (let i = 0; i < 1000; i++) pipe.incr(`${names[i % 3]}:n`);
  const out = await pipe.exec();
  check(out.every(([err, v], i) => err === null && v === Math.floor(i / 3) + 1), "pipeline replies in order");
  const got = await r.mget(...names, `missing:${token}`);
  check(JSON.stringify(got) === JSON.stringify([...names, null]), `MGET across pools: ${got}`);
  const tx = await r.multi().set(`session:${token}:tx`, "1").incr(`session:${token}:tx`).exec();
  check(tx[1][1] === 2, "MULTI/EXEC");
  // SELECT 3 from the db option; keys without a prefix follow the db rule.
  check((await inDb3.set(`plain:${token}`, "db3")) === "OK", "SET in db 3");
  const direct = new Redis({ port: session, db: 3 });
  check((await direct.get(`plain:${token}`)) === "db3", "db 3 routes to the session pool");
  direct.disconnect();
  const deleted = await r.del(...names, ...names.map((n) => `${n}:n`), `session:${token}:tx`);
  check(deleted === 7, `DEL across pools: ${deleted}`);
  await inDb3.del(`plain:${token}`);
  r.disconnect();
  inDb3.disconnect();
  console.log(`ioredis ${require("ioredis/package.json").version}: ${checks} checks passed`);
}

main().catch((e) => {
  console.error(`ioredis check failed: ${e}`);
  process.exit(1);
});
