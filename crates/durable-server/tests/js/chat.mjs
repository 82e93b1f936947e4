// Drives durable-server's /api/chat with the AI SDK's own chat transport (DefaultChatTransport)
// and message reducer (readUIMessageStream): kills the connection mid-answer, resumes through
// GET /api/chat/{id}/stream, and checks that the rebuilt UI message equals the uninterrupted one.
//
// Usage: node chat.mjs <base url>   (AI_SDK_DIR: a directory with node_modules/ai)
// The Rust test (tests/ai_sdk.rs) mounts one chat server per scenario under <base>/<scenario>.
import path from "node:path";
import { pathToFileURL } from "node:url";
import assert from "node:assert/strict";

const base = process.argv[2];
const sdkDir = process.env.AI_SDK_DIR;
const { DefaultChatTransport, readUIMessageStream } = await import(
  pathToFileURL(path.join(sdkDir, "node_modules/ai/dist/index.js")).href
);

let chats = 0;
const newChatId = (scenario) => `${scenario}-chat-${process.pid}-${++chats}`;
const userMessage = (text) => ({ id: `u-${++chats}`, role: "user", parts: [{ type: "text", text }] });

function transport(scenario) {
  return new DefaultChatTransport({ api: `${base}/${scenario}/api/chat` });
}

// Read a chunk stream to its end (or until `stopWhen(chunk, chunks)` says so, then abort).
async function collect(stream, { stopWhen, abort } = {}) {
  const chunks = [];
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      if (stopWhen && stopWhen(value, chunks)) {
        abort();
        break;
      }
    }
  } catch (e) {
    if (e?.name !== "AbortError") throw e;
  } finally {
    reader.releaseLock();
  }
  return chunks;
}

// The SDK's reducer over recorded chunks, starting from `message` (a continuation) or fresh.
async function reduce(chunks, message) {
  const stream = new ReadableStream({
    start(c) {
      for (const x of chunks) c.enqueue(x);
      c.close();
    },
  });
  let last = message;
  for await (const m of readUIMessageStream({ message, stream, onError: (e) => { throw e; } })) {
    last = structuredClone(m);
  }
  return last;
}

const norm = (m) => ({ ...m, id: "<id>" });
const deltas = (chunks) => chunks.filter((c) => c.type === "text-delta").length;

// Rules of a replay (vercel/ai #14688, #18457, #13160; vercel/workflow #2537).
function checkReplay(chunks, what) {
  assert.equal(chunks[0]?.type, "start", `${what}: a replay begins with start, not mid-part`);
  assert.equal(chunks.filter((c) => c.type === "start").length, 1, `${what}: exactly one start`);
  for (const kind of ["text-start", "reasoning-start"]) {
    const ids = chunks.filter((c) => c.type === kind).map((c) => c.id);
    assert.equal(new Set(ids).size, ids.length, `${what}: ${kind} ids unique in the message`);
  }
}

async function send(scenario, chatId, messages, opts = {}) {
  const ctl = new AbortController();
  const stream = await transport(scenario).sendMessages({
    chatId,
    messages,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: ctl.signal,
  });
  return collect(stream, { ...opts, abort: () => ctl.abort() });
}

async function resume(scenario, chatId) {
  const stream = await transport(scenario).reconnectToStream({ chatId });
  assert.ok(stream, `${scenario}: the chat has an active stream to resume`);
  return collect(stream);
}

// 1. Reasoning, a tool call and its result, then a long answer: kill after 5 answer deltas.
async function toolsScenario() {
  const ask = userMessage("Weather in Paris?");
  const reference = await reduce(await send("tools", newChatId("tools"), [ask]));
  const chatId = newChatId("tools");
  const cut = await send("tools", chatId, [ask], { stopWhen: (_c, all) => deltas(all) >= 8 });
  assert.ok(deltas(cut) >= 8, "the answer was cut mid-way");
  const replay = await resume("tools", chatId);
  checkReplay(replay, "tools");
  const rebuilt = await reduce(replay);
  assert.deepEqual(norm(rebuilt), norm(reference), "tools: rebuilt message equals the uninterrupted one");
  assert.ok(rebuilt.parts.some((p) => p.type === "tool-weather" && p.state === "output-available"));
  assert.ok(rebuilt.parts.some((p) => p.type === "reasoning"));
  // A chat without a running turn: 204, which the transport answers with null.
  assert.equal(await transport("tools").reconnectToStream({ chatId }), null);
  return "tools";
}

// 2. A tool call that needs approval: the first response ends at the request; the client
// answers it with a second POST; that answer's stream is cut and resumed.
async function approvalScenario() {
  const ask = userMessage("Weather in Oslo?");
  async function untilApproval(chatId) {
    const first = await send("approval", chatId, [ask]);
    const msg = await reduce(first);
    const tool = msg.parts.find((p) => p.type === "tool-weather");
    assert.equal(tool?.state, "approval-requested", "the tool waits for approval");
    // What useChat's addToolApprovalResponse does to the message.
    tool.state = "approval-responded";
    tool.approval = { id: tool.approval.id, approved: true };
    return msg;
  }
  const refChat = newChatId("approval");
  const refMsg = await untilApproval(refChat);
  const reference = await reduce(await send("approval", refChat, [ask, refMsg]), structuredClone(refMsg));

  const chatId = newChatId("approval");
  const msg = await untilApproval(chatId);
  const cut = await send("approval", chatId, [ask, msg], { stopWhen: (_c, all) => deltas(all) >= 5 });
  assert.ok(deltas(cut) >= 5);
  const replay = await resume("approval", chatId);
  checkReplay(replay, "approval");
  const rebuilt = await reduce(replay);
  assert.deepEqual(norm(rebuilt), norm(reference), "approval: rebuilt message equals the uninterrupted one");
  const tool = rebuilt.parts.find((p) => p.type === "tool-weather");
  assert.equal(tool.state, "output-available");
  assert.equal(tool.approval.approved, true);
  return "approval";
}

// 3. A step re-run after a crash (step-restart): the step's partial text is not duplicated,
// for a client connected across the restart and for one that resumes after it.
async function restartScenario() {
  const ask = userMessage("Tell me a story");
  const reference = await reduce(await send("restart-ref", newChatId("ref"), [ask]));
  const chatId = newChatId("restart");
  const ctl = new AbortController();
  const first = await transport("restart").sendMessages({
    chatId, messages: [ask], trigger: "submit-message", messageId: undefined, abortSignal: ctl.signal,
  });
  const live = await transport("restart").reconnectToStream({ chatId });
  // The model hangs after its first words: crash the executor and recover the run elsewhere.
  const partial = [];
  const reader = first.getReader();
  while (deltas(partial) < 3) partial.push((await reader.read()).value);
  const crash = await fetch(`${base}/restart/test/crash`, { method: "POST" });
  assert.equal(crash.status, 200);
  // Kill the first connection once the re-run has streamed a little, then resume.
  const cut = [...partial];
  let sawReset = false;
  while (!(sawReset && deltas(cut) >= 3 + 5)) {
    const { value } = await reader.read();
    cut.push(value);
    if (value.type === "reset-step") sawReset = true;
  }
  ctl.abort();
  reader.releaseLock();
  const replay = await resume("restart", chatId);
  checkReplay(replay, "restart");
  assert.ok(replay.some((c) => c.type === "reset-step"), "the replay carries the restart");
  const rebuilt = await reduce(replay);
  assert.deepEqual(norm(rebuilt), norm(reference), "restart: resumed message has no duplicated text");
  const across = await reduce(await collect(live));
  assert.deepEqual(norm(across), norm(reference), "restart: live client across the restart");
  return "restart";
}

const passed = [];
passed.push(await toolsScenario());
passed.push(await approvalScenario());
passed.push(await restartScenario());
console.log(JSON.stringify({ passed }));
