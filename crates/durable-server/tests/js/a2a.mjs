// Drives durable-server's A2A endpoint with the official A2A JS SDK (@a2a-js/sdk, pinned):
// the client is built from the agent card (ClientFactory.createFromUrl), streams a task, drops
// the connection mid-answer, resubscribes from the last event it holds, and checks that the
// rebuilt artifact equals the full output with no duplicate; cancels a task; answers an
// input-required task (a tool approval) and resumes it.
//
// Usage: node a2a.mjs <base url>   (A2A_SDK_DIR: a directory with node_modules/@a2a-js/sdk)
// The Rust test (tests/a2a.rs) mounts one server per scenario under <base>/<scenario>.
import path from "node:path";
import { pathToFileURL } from "node:url";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

const base = process.argv[2];
const sdkDir = process.env.A2A_SDK_DIR;
const sdk = await import(
  pathToFileURL(path.join(sdkDir, "node_modules/@a2a-js/sdk/dist/client/index.js")).href
);
const { ClientFactory, TaskNotFoundError, TaskNotCancelableError, UnsupportedOperationError } = sdk;

const ANSWER = process.env.A2A_ANSWER;
const client = (scenario) =>
  new ClientFactory().createFromUrl(`${base}/${scenario}/.well-known/agent-card.json`, "");
const userMessage = (parts, extra = {}) => ({
  message: { kind: "message", messageId: randomUUID(), role: "user", parts, ...extra },
});
const text = (t) => userMessage([{ kind: "text", text: t }]);

// Read a stream of A2A events to its end, or until `stopWhen(events)` (then abort: a dropped
// connection).
async function collect(gen, { stopWhen, ctl } = {}) {
  const events = [];
  try {
    for await (const ev of gen) {
      events.push(ev);
      if (stopWhen && stopWhen(events)) {
        ctl.abort();
        break;
      }
    }
  } catch (e) {
    if (e?.name !== "AbortError") throw e;
  }
  return events;
}

// A client's reduction of one artifact over artifact-update events (append: false replaces).
function artifactText(events, id) {
  let t = null;
  for (const ev of events) {
    if (ev.kind !== "artifact-update" || ev.artifact.artifactId !== id) continue;
    const chunk = ev.artifact.parts.filter((p) => p.kind === "text").map((p) => p.text).join("");
    t = ev.append ? (t ?? "") + chunk : chunk;
  }
  return t;
}
const chunks = (events) => events.filter((e) => e.kind === "artifact-update" && e.artifact.artifactId === "response").length;
const pos = (ev) => [ev.metadata.cursor, ev.metadata.index];
const last = (events) => events[events.length - 1];

function checkComplete(events, what) {
  const fin = last(events);
  assert.equal(fin.kind, "status-update", `${what}: ends with a status update`);
  assert.equal(fin.final, true, `${what}: the last status is final`);
  assert.equal(fin.status.state, "completed", `${what}: completed`);
  const response = events.filter((e) => e.kind === "artifact-update" && e.artifact.artifactId === "response");
  assert.ok(response.length > 3, `${what}: the answer streamed in chunks`);
  assert.equal(response[0].append, false, `${what}: the first chunk starts the artifact`);
  assert.ok(response.slice(1).every((e) => e.append === true), `${what}: the next chunks append`);
  assert.ok(response.slice(0, -1).every((e) => e.lastChunk === false));
  assert.equal(last(response).lastChunk, true, `${what}: lastChunk on the last chunk`);
  const result = events.find((e) => e.kind === "artifact-update" && e.artifact.artifactId === "result");
  assert.ok(result && result.lastChunk === true && result.append === false, `${what}: a complete result artifact`);
  return result.artifact.parts.find((p) => p.kind === "text").text;
}

// 1. Stream, drop mid-way, resubscribe from the last event held: no duplicate, no gap.
async function streamScenario() {
  const c = await client("stream");
  const reference = await collect(c.sendMessageStream(text("Tell me about the weather")));
  assert.equal(reference[0].kind, "task", "the stream opens with the task");
  assert.equal(artifactText(reference, "response"), ANSWER);
  assert.equal(checkComplete(reference, "reference"), ANSWER);

  const ctl = new AbortController();
  const cut = await collect(c.sendMessageStream(text("Tell me about the weather"), { signal: ctl.signal }), {
    ctl,
    stopWhen: (evs) => chunks(evs) >= 8,
  });
  assert.equal(chunks(cut), 8, "the answer was cut mid-way");
  const taskId = cut[0].id;
  const contextId = cut[0].contextId;
  const partial = artifactText(cut, "response");
  assert.ok(partial.length > 0 && partial.length < ANSWER.length && ANSWER.startsWith(partial));

  const rest = await collect(c.resubscribeTask({ id: taskId, metadata: last(cut).metadata }));
  assert.ok(rest.length > 0, "the resubscription delivers the rest");
  const all = [...cut, ...rest];
  for (let i = 1; i < all.length; i++) {
    const [a, b] = [pos(all[i - 1]), pos(all[i])];
    assert.ok(b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]), `no duplicate event at ${b} after ${a}`);
    assert.equal(all[i].taskId ?? all[i].id, taskId);
  }
  const rebuilt = artifactText(all, "response");
  assert.equal(rebuilt, ANSWER, "the concatenated artifact equals the full output");
  assert.equal(checkComplete(all, "resumed"), ANSWER);
  assert.ok(rest.every((e) => e.kind !== "task"), "the resubscription does not start over");

  // A resubscription without a position replays the whole task, equal to the live events.
  const replay = await collect(c.resubscribeTask({ id: taskId }));
  assert.deepEqual(replay, all, "a full replay equals what the live client saw");

  const task = await c.getTask({ id: taskId });
  assert.equal(task.status.state, "completed");
  assert.equal(task.contextId, contextId);
  assert.deepEqual(task.artifacts.map((a) => a.artifactId), ["response", "result"]);
  assert.equal(task.artifacts[0].parts[0].text, ANSWER);

  // A blocking message/send answers with the finished task.
  const sent = await c.sendMessage(text("Again, please"));
  assert.equal(sent.kind, "task");
  assert.equal(sent.status.state, "completed");
  assert.equal(sent.artifacts.find((a) => a.artifactId === "result").parts[0].text, ANSWER);
  return "stream";
}

// 2. Cancel a working task; a finished one is not cancelable; an unknown one is not found.
async function cancelScenario() {
  const c = await client("cancel");
  const gen = c.sendMessageStream(text("Tell me a long story"));
  const seen = [];
  let taskId;
  for await (const ev of gen) {
    seen.push(ev);
    if (ev.kind === "task") taskId = ev.id;
    if (chunks(seen) >= 2) break;
  }
  const canceled = await c.cancelTask({ id: taskId });
  assert.equal(canceled.status.state, "canceled");
  const live = await collect(c.resubscribeTask({ id: taskId, metadata: last(seen).metadata }));
  assert.equal(last(live).status.state, "canceled", "the live stream ends canceled");
  assert.equal(last(live).final, true);
  await assert.rejects(c.cancelTask({ id: taskId }), (e) => e instanceof TaskNotCancelableError);
  await assert.rejects(c.getTask({ id: "no-such-task" }), (e) => e instanceof TaskNotFoundError);
  assert.equal((await c.getTask({ id: taskId })).status.state, "canceled");
  return "cancel";
}

// 3. A tool that needs approval: input-required, then a follow-up message on the task resumes
// it (approve via message/stream; decline via message/send).
async function approvalScenario() {
  const c = await client("approval");
  const first = await collect(c.sendMessageStream(text("Weather in Oslo?")));
  const stop = last(first);
  assert.equal(stop.status.state, "input-required");
  assert.equal(stop.final, true);
  const ask = stop.status.message.parts.find((p) => p.kind === "data").data;
  assert.equal(ask.type, "tool-approval");
  assert.equal(ask.toolName, "weather");
  assert.deepEqual(ask.args, { city: "Oslo" });
  const taskId = stop.taskId;
  const contextId = stop.contextId;
  assert.equal((await c.getTask({ id: taskId })).status.state, "input-required");

  const answer = userMessage([{ kind: "data", data: { approved: true } }], { taskId, contextId });
  const second = await collect(c.sendMessageStream(answer));
  assert.equal(second[0].kind, "status-update");
  assert.equal(second[0].status.state, "working", "the answer resumes the task");
  const result = second.find((e) => e.kind === "status-update" && e.status.message?.parts?.[0]?.data?.type === "tool-result");
  assert.deepEqual(result.status.message.parts[0].data.result, { city: "Oslo", sky: "sunny" });
  assert.equal(last(second).status.state, "completed");
  assert.equal(artifactText([...first, ...second], "response"), "Let me check. " + ANSWER);
  const full = await collect(c.resubscribeTask({ id: taskId }));
  assert.deepEqual(full, [...first, ...second], "the replay spans the approval");

  // Decline through a blocking message/send with a text answer.
  const other = await collect(c.sendMessageStream(text("Weather in Oslo?")));
  const otherId = last(other).taskId;
  const declined = await c.sendMessage(userMessage([{ kind: "text", text: "no" }], { taskId: otherId }));
  assert.equal(declined.status.state, "completed");
  const replay = await collect(c.resubscribeTask({ id: otherId }));
  const tool = replay.find((e) => e.status?.message?.parts?.[0]?.data?.type === "tool-result");
  assert.equal(tool.status.message.parts[0].data.declined, true, "the tool call was declined");
  // A finished task takes no follow-up.
  await assert.rejects(
    c.sendMessage(answer),
    (e) => e instanceof UnsupportedOperationError && /input-required/.test(e.errorResponse.error.message),
  );
  return "approval";
}

const passed = [];
passed.push(await streamScenario());
passed.push(await cancelScenario());
passed.push(await approvalScenario());
console.log(JSON.stringify({ passed }));
