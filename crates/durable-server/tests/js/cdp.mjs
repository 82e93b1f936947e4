// Waits, through the DevTools protocol, until the demo page in a headless Chromium reaches
// the end of its run, then prints what the page shows as JSON.
//
// Usage: node --experimental-websocket cdp.mjs <browser ws url> <deadline ms>
const [wsUrl, deadlineMs] = process.argv.slice(2);
const ws = new WebSocket(wsUrl);
let nextId = 0;
const pending = new Map();
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && pending.has(msg.id)) {
    pending.get(msg.id)(msg);
    pending.delete(msg.id);
  }
};
await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
function send(method, params = {}, sessionId) {
  const id = ++nextId;
  ws.send(JSON.stringify({ id, method, params, sessionId }));
  return new Promise((ok) => pending.set(id, ok));
}
const deadline = Date.now() + Number(deadlineMs);
let page;
while (!page) {
  const { result } = await send("Target.getTargets");
  page = result.targetInfos.find((t) => t.type === "page" && t.url.startsWith("http"));
  if (!page && Date.now() > deadline) throw new Error("no page target");
  if (!page) await new Promise((r) => setTimeout(r, 50));
}
const { result: attached } = await send("Target.attachToTarget", { targetId: page.targetId, flatten: true });
const session = attached.sessionId;
const probe = `JSON.stringify({
  status: document.getElementById("status")?.textContent,
  out: document.getElementById("out")?.textContent,
  reconnects: Number(document.getElementById("reconnects")?.textContent),
  log: document.getElementById("log")?.textContent,
})`;
for (;;) {
  const r = await send("Runtime.evaluate", { expression: probe, returnByValue: true }, session);
  const state = JSON.parse(r.result?.result?.value ?? "{}");
  if (["done", "error", "abort", "closed"].includes(state.status) || Date.now() > deadline) {
    console.log(JSON.stringify(state));
    break;
  }
  await new Promise((r) => setTimeout(r, 50));
}
ws.close();
process.exit(0);
