// Drives the npm `eventsource` package (a WHATWG EventSource for Node) against the gateway,
// for tests/live/test_sse_clients.py. One argument, JSON:
//   {"url": ..., "windowMs": n, "deadlineMs": n}
// It prints one JSON object a line: every request the library makes ("request"), "open",
// every event ("event": its type, lastEventId and data), every connection error ("error",
// with the library's code and message and the readyState after it), and at the end
// "final" with the readyState and the number of requests. The observation window
// (windowMs) starts at the terminal event (done, error, cancelled) or, when the first
// answer carries no event at all, at that answer's open or error.
import { EventSource } from "eventsource";

const config = JSON.parse(process.argv[2]);
const TERMINAL = new Set(["done", "error", "cancelled"]);
const TYPES = ["message", "start", "token", "reasoning", "refusal", "tool_call", "tool_call_delta",
  "tool_call_done", "done", "cancelled"];

const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

let requests = 0;
let events = 0;
let windowTimer;
let source;

function finish() {
  emit({ kind: "final", readyState: source.readyState, requests });
  source.close();
  process.exit(0);
}

function startWindow() {
  if (windowTimer === undefined) windowTimer = setTimeout(finish, config.windowMs);
}

// Counts what the library asks for; the library sees Node's own fetch unchanged.
async function countingFetch(url, init) {
  requests += 1;
  emit({ kind: "request", n: requests, url: String(url), lastEventId: init.headers["Last-Event-ID"] ?? null });
  return fetch(url, init);
}

source = new EventSource(config.url, { fetch: countingFetch });
source.onopen = () => {
  emit({ kind: "open", readyState: source.readyState });
  if (events === 0 && requests === 1 && config.windowFromFirstAnswer) startWindow();
};
source.onerror = (err) => {
  emit({ kind: "error", code: err.code ?? null, message: err.message ?? null, readyState: source.readyState });
  if (events === 0 && config.windowFromFirstAnswer) startWindow();
};
const onEvent = (e) => {
  events += 1;
  emit({ kind: "event", event: e.type, id: e.lastEventId, data: e.data });
  if (TERMINAL.has(e.type)) startWindow();
};
for (const type of TYPES) source.addEventListener(type, onEvent);
// `event: error` is a MessageEvent; a connection error is the library's ErrorEvent (onerror).
source.addEventListener("error", (e) => { if (e instanceof MessageEvent) onEvent(e); });

setTimeout(() => { emit({ kind: "deadline" }); finish(); }, config.deadlineMs ?? 20000);
