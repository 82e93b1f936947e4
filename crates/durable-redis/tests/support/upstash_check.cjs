// Cross-checks the Upstash REST emulation with the official @upstash/redis client: if this
// client works against it, the emulation speaks the protocol the client expects.
const { Redis } = require(require.resolve("@upstash/redis", { paths: [process.env.UPSTASH_CLIENT_DIR] }));
const assert = require("node:assert/strict");

(async () => {
  const url = process.env.UPSTASH_URL;
  const token = process.env.UPSTASH_TOKEN;
  const k = process.env.KEY_PREFIX;
  const redis = new Redis({ url, token, retry: { retries: 0 } });

  assert.equal(await redis.set(k + "a", { hello: "world" }), "OK");
  assert.deepEqual(await redis.get(k + "a"), { hello: "world" });
  assert.equal(await redis.get(k + "missing"), null);
  assert.equal(await redis.incr(k + "n"), 1);
  assert.equal(await redis.set(k + "t", "v", { px: 60000 }), "OK");
  assert.ok((await redis.pttl(k + "t")) > 0);

  const p = redis.pipeline();
  p.incr(k + "n");
  p.get(k + "a");
  p.del(k + "n");
  assert.deepEqual(await p.exec(), [2, { hello: "world" }, 1]);

  const m = redis.multi();
  m.set(k + "m", "v");
  m.get(k + "m");
  m.del(k + "m", k + "a", k + "t");
  assert.deepEqual(await m.exec(), ["OK", "v", 3]);

  assert.equal(await redis.eval("return ARGV[1]", [], ["x"]), "x");
  assert.deepEqual(await redis.eval("return {1, KEYS[1]}", [k + "key"], []), [1, k + "key"]);
  const sha = await redis.scriptLoad("return 7");
  assert.equal(await redis.evalsha(sha, [], []), 7);
  await assert.rejects(redis.evalsha("0000000000000000000000000000000000000000", [], []), /NOSCRIPT/);

  await redis.rpush(k + "l", "x", "y");
  assert.deepEqual(await redis.lrange(k + "l", 0, -1), ["x", "y"]);
  await assert.rejects(redis.incr(k + "l"), /WRONGTYPE/);
  assert.equal(await redis.del(k + "l"), 1);

  const bad = new Redis({ url, token: "wrong-token", retry: { retries: 0 } });
  await assert.rejects(bad.get(k + "a"), /Unauthorized/);
  console.log("ok");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
