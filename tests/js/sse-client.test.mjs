// Tests of app/static/sse-client.js with Node's own runner: `node --test tests/js/`.
// No npm dependencies: the parser against WHATWG "Parsing an event stream" cases,
// each fed whole, one byte at a time and in many seeded random chunkings; the
// stream class against an injected fake fetch (resume, dedupe, backoff, cancel, errors);
// its WebSocket mode against an injected fake WebSocket class (frames in, callbacks
// out; several streams on one socket; cancel, reconnect and resume frames).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  GatewayError,
  GatewaySocket,
  GatewayStream,
  SSEParser,
  assistantMessage,
  computeBackoff,
  followStream,
  socketUrl,
  streamChat,
} from "../../app/static/sse-client.js";

const encoder = new TextEncoder();

// ----------------------------------------------------------------------------- helpers

/** A small seeded PRNG (mulberry32), so every random chunking is reproducible. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function toBytes(input) {
  return input instanceof Uint8Array ? input : encoder.encode(input);
}

/** Split `bytes` at random points (1..maxPiece bytes a piece). */
function randomChunks(bytes, random, maxPiece) {
  const chunks = [];
  let i = 0;
  while (i < bytes.length) {
    const n = 1 + Math.floor(random() * maxPiece);
    chunks.push(bytes.subarray(i, i + n));
    i += n;
  }
  return chunks;
}

function parseChunks(chunks, options) {
  const parser = new SSEParser(options);
  const events = [];
  for (const chunk of chunks) events.push(...parser.feed(chunk));
  parser.end();
  return { events, parser };
}

const ev = (data, { type = "message", id = null, lastEventId = id ?? "" } = {}) => ({
  type, data, id, lastEventId,
});

// ----------------------------------------------------------------------------- parser table

// Each case: input (string or bytes), the events, and what the parser keeps.
const CASES = [
  { name: "one event", input: "data: hello\n\n", events: [ev("hello")] },
  { name: "no space after the colon", input: "data:hello\n\n", events: [ev("hello")] },
  { name: "only one space is stripped", input: "data:  two\n\n", events: [ev(" two")] },
  { name: "a tab is not stripped", input: "data:\tx\n\n", events: [ev("\tx")] },
  { name: "colons in the value", input: "data: a:b: c\n\n", events: [ev("a:b: c")] },
  { name: "multi-line data joined with LF", input: "data: a\ndata: b\ndata\n\n",
    events: [ev("a\nb\n")] },
  { name: "data field without colon is empty data", input: "data\n\n", events: [ev("")] },
  { name: "data with empty value", input: "data:\n\ndata: \n\n", events: [ev(""), ev("")] },
  { name: "CRLF line ends", input: "data: a\r\ndata: b\r\n\r\n", events: [ev("a\nb")] },
  { name: "CR line ends", input: "data: a\rdata: b\r\rdata: c\r\r", events: [ev("a\nb"), ev("c")] },
  { name: "mixed CR, LF and CRLF", input: "data: a\r\n\rdata: b\n\r\ndata: c\r\r\n\n",
    events: [ev("a"), ev("b"), ev("c")] },
  { name: "LF CR is two line ends", input: "data: a\n\rdata: b\n\n", events: [ev("a"), ev("b")] },
  { name: "event type", input: "event: add\ndata: 1\n\ndata: 2\n\n",
    events: [ev("1", { type: "add" }), ev("2")] },
  { name: "empty event type is message", input: "event\ndata: x\n\nevent:\ndata: y\n\n",
    events: [ev("x"), ev("y")] },
  { name: "event type is reset by a blank line without data",
    input: "event: foo\n\ndata: x\n\n", events: [ev("x")] },
  { name: "no data: nothing is dispatched", input: "event: foo\n\n\n\nid: 5\n\n",
    events: [], lastEventId: "5" },
  { name: "id persists across events (lastEventId)",
    input: "id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n",
    events: [ev("a", { id: "1" }), ev("b", { lastEventId: "1" }), ev("c", { id: "2" })],
    lastEventId: "2" },
  { name: "id containing NUL is ignored",
    input: "id: 1\ndata: a\n\nid: 2\u00003\ndata: b\n\n",
    events: [ev("a", { id: "1" }), ev("b", { lastEventId: "1" })], lastEventId: "1" },
  { name: "empty id resets the last event id",
    input: "id: 1\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\n",
    events: [ev("a", { id: "1" }), ev("b", { id: "" }), ev("c", { id: "" })], lastEventId: "" },
  { name: "id after data in the same block", input: "data: a\nid: 9\n\n",
    events: [ev("a", { id: "9" })], lastEventId: "9" },
  { name: "id keeps one stripped space only", input: "id:  7\ndata: a\n\n",
    events: [ev("a", { id: " 7" })], lastEventId: " 7" },
  { name: "an id-only block moves lastEventId", input: "id: 3\n\ndata: a\n\n",
    events: [ev("a", { lastEventId: "3" })], lastEventId: "3" },
  { name: "retry in digits", input: "retry: 1500\n\n", events: [], retry: 1500 },
  { name: "retry: later valid value wins", input: "retry: 10\nretry: 2000\n\n", events: [],
    retry: 2000 },
  { name: "retry ignored unless digits only",
    input: "retry: 15x\n\nretry: -1\n\nretry: 1.5\n\nretry:  10\n\nretry:\n\nretry\n\nretry: 1e3\n\n",
    events: [], retry: null },
  { name: "retry keeps the last valid value", input: "retry: 300\n\nretry: abc\n\n", events: [],
    retry: 300 },
  { name: "comments are counted and not dispatched",
    input: ": ping\n\n:\n: x\ndata: a\n\n:data: no\n\n", events: [ev("a")], comments: 4 },
  { name: "a comment between data lines", input: "data: a\n: c\ndata: b\n\n",
    events: [ev("a\nb")], comments: 1 },
  { name: "leading BOM stripped", input: "\uFEFFdata: a\n\n", events: [ev("a")] },
  { name: "only one BOM stripped", input: "\uFEFF\uFEFFdata: a\n\ndata: b\n\n", events: [ev("b")] },
  { name: "BOM not at the start is kept",
    input: "data: a\n\n\uFEFFdata: b\n\ndata: \uFEFFc\n\n", events: [ev("a"), ev("\uFEFFc")] },
  { name: "unknown fields ignored", input: "foo: bar\nDATA: x\ndata : y\ndata: z\n\n",
    events: [ev("z")] },
  { name: "field names are case-sensitive", input: "Data: x\nEvent: e\n\n", events: [] },
  { name: "field without colon (event)", input: "event\ndata: x\n\n", events: [ev("x")] },
  { name: "incomplete event at the end is discarded", input: "data: a\n\ndata: b\n",
    events: [ev("a")] },
  { name: "last line without end is discarded", input: "data: a\n\ndata: b", events: [ev("a")] },
  { name: "id of an unfinished block is not committed", input: "data: a\n\nid: 7\ndata: x\n",
    events: [ev("a")], lastEventId: "" },
  { name: "blank lines before the first event", input: "\n\n\r\n\rdata: a\n\n", events: [ev("a")] },
  { name: "NUL in data is kept", input: "data: a\u0000b\n\n", events: [ev("a\u0000b")] },
  { name: "multi-byte UTF-8, emoji and CJK",
    input: "data: h\u00e9llo \u4e16\u754c \ud83c\udf89 \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\n\n",
    events: [ev("h\u00e9llo \u4e16\u754c \ud83c\udf89 \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67")] },
  { name: "invalid UTF-8 becomes U+FFFD",
    input: new Uint8Array([...encoder.encode("data: a"), 0xff, 0xc3, ...encoder.encode("b\n\n")]),
    events: [ev("a\ufffd\ufffdb")] },
  { name: "the gateway's own framing",
    input: "retry: 2000\n\nid: 0\nevent: start\ndata: {\"stream_id\": \"s\"}\n\n: ping\n\n"
      + "id: 1\nevent: token\ndata: {\"content\": \"\u00e9\\n\ud83d\ude00\"}\n\n"
      + "id: 2\nevent: done\ndata: {}\n\n",
    events: [ev("{\"stream_id\": \"s\"}", { type: "start", id: "0" }),
      ev("{\"content\": \"\u00e9\\n\ud83d\ude00\"}", { type: "token", id: "1" }),
      ev("{}", { type: "done", id: "2" })],
    retry: 2000, comments: 1, lastEventId: "2" },
  { name: "an event without id after ids (the gateway's one case)",
    input: "id: 4\nevent: token\ndata: 1\n\nevent: error\ndata: 2\n\n",
    events: [ev("1", { type: "token", id: "4" }), ev("2", { type: "error", lastEventId: "4" })],
    lastEventId: "4" },
];

function checkCase(c, { events, parser }, how) {
  assert.deepEqual(events, c.events, `${c.name} (${how}): events`);
  assert.equal(parser.retry, c.retry ?? null, `${c.name} (${how}): retry`);
  assert.equal(parser.comments, c.comments ?? 0, `${c.name} (${how}): comments`);
  assert.equal(parser.lastEventId, c.lastEventId ?? (c.events.at(-1)?.lastEventId ?? ""),
    `${c.name} (${how}): lastEventId`);
}

describe("SSEParser: WHATWG cases", () => {
  for (const c of CASES) {
    test(c.name, () => {
      const bytes = toBytes(c.input);
      checkCase(c, parseChunks([bytes]), "whole");
      checkCase(c, parseChunks([...bytes].map((b) => new Uint8Array([b]))), "byte at a time");
      if (typeof c.input === "string") {
        checkCase(c, parseChunks([c.input]), "string");
        checkCase(c, parseChunks([...c.input]), "string, one code point at a time");
        checkCase(c, parseChunks(c.input.split("")), "string, one code unit at a time");
      }
      const random = prng(c.name.length * 7919 + bytes.length);
      for (let round = 0; round < 200; round++) {
        const chunks = randomChunks(bytes, random, 1 + (round % 9));
        checkCase(c, parseChunks(chunks), `random chunking #${round}`);
      }
    });
  }

  test("a CR at the end of one chunk and the LF at the start of the next is one line end", () => {
    const parser = new SSEParser();
    assert.deepEqual(parser.feed("data: a\r"), []);
    assert.deepEqual(parser.feed("\ndata: b\r"), []);
    assert.deepEqual(parser.feed("\n"), []);
    assert.deepEqual(parser.feed("\r"), [ev("a\nb")]);
    assert.deepEqual(parser.feed("\n"), []); // the LF of that CRLF: not a second blank line
    assert.deepEqual(parser.feed("data: c\r\r"), [ev("c")]);
  });

  test("an empty chunk between CR and LF keeps the pairing", () => {
    const parser = new SSEParser();
    parser.feed("data: a\r");
    parser.feed("");
    parser.feed(new Uint8Array(0));
    assert.deepEqual(parser.feed("\n\n"), [ev("a")]);
  });

  test("a multi-byte character split across chunks is decoded whole", () => {
    const bytes = encoder.encode("data: \ud83c\udf89\u00e9\n\n");
    const parser = new SSEParser();
    const events = [];
    for (let i = 0; i < bytes.length; i++) events.push(...parser.feed(bytes.subarray(i, i + 1)));
    assert.deepEqual(events, [ev("\ud83c\udf89\u00e9")]);
  });

  test("a BOM split across byte chunks is stripped", () => {
    const bytes = encoder.encode("\uFEFFdata: a\n\n");
    assert.deepEqual(parseChunks([bytes.subarray(0, 1), bytes.subarray(1, 2), bytes.subarray(2)])
      .events, [ev("a")]);
  });

  test("ArrayBuffer chunks are accepted; other types are refused", () => {
    const parser = new SSEParser();
    assert.deepEqual(parser.feed(encoder.encode("data: x\n\n").buffer), [ev("x")]);
    assert.throws(() => parser.feed(42), TypeError);
  });

  test("hooks: onEvent, onComment, onRetry", () => {
    const seen = [];
    const parser = new SSEParser({
      onEvent: (e) => seen.push(["event", e.data]),
      onComment: (text) => seen.push(["comment", text]),
      onRetry: (ms) => seen.push(["retry", ms]),
    });
    parser.feed(": ping\nretry: 5\ndata: a\n\n");
    assert.deepEqual(seen, [["comment", " ping"], ["retry", 5], ["event", "a"]]);
  });

  test("an initial lastEventId (a resumed stream) persists until an id arrives", () => {
    const parser = new SSEParser({ lastEventId: "41" });
    assert.deepEqual(parser.feed("data: a\n\nid: 42\ndata: b\n\n"),
      [ev("a", { lastEventId: "41" }), ev("b", { id: "42" })]);
  });

  test("end() discards a pending event but keeps lastEventId and retry", () => {
    const parser = new SSEParser();
    parser.feed("retry: 9\nid: 1\ndata: a\n\nid: 2\ndata: half");
    parser.end();
    assert.equal(parser.lastEventId, "1");
    assert.equal(parser.retry, 9);
    assert.deepEqual(parser.feed("data: b\n\n"), [ev("b", { lastEventId: "1" })]);
  });

  test("random streams: any chunking gives the same events as one chunk", () => {
    const random = prng(2024);
    const pieces = ["data: x\n", "data:y\r\n", "\n", "\r\n", "\r", ": c\n", "id: 3\n",
      "event: t\n", "retry: 77\n", "data: \u00e9\ud83d\ude00\u4e16\n", "id\n", "bogus: 1\n", "data\n"];
    for (let round = 0; round < 300; round++) {
      let text = "";
      const n = 1 + Math.floor(random() * 30);
      for (let i = 0; i < n; i++) text += pieces[Math.floor(random() * pieces.length)];
      text += "\n\n";
      const bytes = encoder.encode(text);
      const whole = parseChunks([bytes]);
      const split = parseChunks(randomChunks(bytes, random, 1 + (round % 11)));
      assert.deepEqual(split.events, whole.events, `round ${round}: ${JSON.stringify(text)}`);
      assert.equal(split.parser.lastEventId, whole.parser.lastEventId);
      assert.equal(split.parser.retry, whole.parser.retry);
      assert.equal(split.parser.comments, whole.parser.comments);
      // And with CRLF written as CR at the end of one chunk and LF at the next.
      const crlf = encoder.encode(text.replace(/\n/g, "\r\n"));
      const halves = [];
      for (let i = 0; i < crlf.length; i++) {
        if (crlf[i] === 13) {
          halves.push(crlf.subarray(0, i + 1));
          halves.push(crlf.subarray(i + 1));
          break;
        }
      }
      if (halves.length) {
        assert.deepEqual(parseChunks(halves).events.map((e) => e.data),
          parseChunks([crlf]).events.map((e) => e.data));
      }
    }
  });
});

// ----------------------------------------------------------------------------- fake gateway

function frame(id, type, data) {
  return `${id === null ? "" : `id: ${id}\n`}event: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
}

const start = (id = "s-0123456789abcdef") => frame(0, "start", { stream_id: id, model: "demo/echo", created: 1 });
const token = (i, content) => frame(i, "token", { content });
const done = (i) => frame(i, "done", { finish_reason: "stop", model: "demo/echo" });

/**
 * A response whose body yields `chunks` (strings or bytes) then ends as `end`
 * says: "close" (a clean end), "error" (a network error) or "hang" (stays open
 * until the request's signal aborts it). `onPull` sees the controller.
 */
function sseResponse(chunks, { end = "close", status = 200, headers = {}, signal = null } = {}) {
  let controller;
  const queue = chunks.map((c) => (typeof c === "string" ? encoder.encode(c) : c));
  // Pull-based, as a network body: each chunk is read before the end (or the error) comes.
  const body = new ReadableStream({
    start(c) { controller = c; },
    pull(c) {
      if (queue.length) return c.enqueue(queue.shift());
      if (end === "close") c.close();
      else if (end === "error") c.error(new TypeError("network error"));
      return undefined; // "hang": stays open
    },
  }, { highWaterMark: 0 });
  signal?.addEventListener("abort", () => {
    try {
      controller.error(new DOMException("The operation was aborted.", "AbortError"));
    } catch { /* already closed */ }
  });
  const response = new Response(body, {
    status, headers: { "Content-Type": "text/event-stream", ...headers },
  });
  response.controller = controller;
  return response;
}

function jsonResponse(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status, headers: { "Content-Type": "application/json", ...headers },
  });
}

/**
 * A fake fetch: `routes` maps "METHOD /path" to a list of handlers used in turn
 * (the last one repeats); each handler gets the call and returns a Response
 * (or throws). Every call is recorded.
 */
function fakeFetch(routes) {
  const calls = [];
  const used = {};
  async function fetch(url, init = {}) {
    const { pathname, search } = new URL(url, "http://gateway.test");
    const call = { url, path: pathname + search, method: init.method || "GET",
      headers: new Headers(init.headers), body: init.body ? JSON.parse(init.body) : undefined,
      signal: init.signal, thisArg: this };
    calls.push(call);
    const key = `${call.method} ${pathname}`;
    const handlers = routes[key];
    if (!handlers) return jsonResponse(404, { error: { code: "not_found", message: key } });
    const i = used[key] = (used[key] ?? -1) + 1;
    const handler = handlers[Math.min(i, handlers.length - 1)];
    return handler(call);
  }
  fetch.calls = calls;
  return fetch;
}

const SID = "s-0123456789abcdef";
const EVENTS_PATH = `/v1/streams/${SID}/events`;

/** Records the delays asked for; returns at once (tests do not wait for real). */
function recordingSleep() {
  const delays = [];
  const sleep = async (ms, signal) => {
    delays.push(ms);
    if (signal?.aborted) throw new Error("aborted");
  };
  sleep.delays = delays;
  return sleep;
}

function recorder() {
  const log = [];
  const callbacks = {
    onStart: (p) => log.push(["start", p.stream_id]),
    onToken: (text, e) => log.push(["token", text, e.id]),
    onDone: (p) => log.push(["done", p.finish_reason]),
    onError: (error) => log.push(["error", error.code]),
    onCancelled: (p) => log.push(["cancelled", p.reason]),
    onReconnecting: (attempt, delay) => log.push(["reconnecting", attempt, delay]),
  };
  return { log, callbacks, tokens: () => log.filter((l) => l[0] === "token").map((l) => l[1]) };
}

// ----------------------------------------------------------------------------- stream tests

describe("GatewayStream", () => {
  test("POSTs the request and delivers start, tokens and done", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(
        ["retry: 2000\n\n", start(), ": ping\n\n", token(1, "Hel"), token(2, "lo \ud83c\udf0d\n"), done(3)],
        { headers: { "X-Stream-ID": SID } })],
    });
    const r = recorder();
    const stream = streamChat({ fetch, baseUrl: "http://gateway.test/", apiKey: "sk-1",
      streamId: SID, model: "openai/gpt", messages: [{ role: "user", content: "hi" }],
      maxTokens: 12, temperature: 0.5, fallbacks: ["demo/echo"], resumeGraceS: 30, ...r.callbacks });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.equal(result.text, "Hello \ud83c\udf0d\n");
    assert.deepEqual(r.log, [["start", SID], ["token", "Hel", "1"], ["token", "lo \ud83c\udf0d\n", "2"],
      ["done", "stop"]]);
    const [call] = fetch.calls;
    assert.equal(call.thisArg, undefined); // so `fetch: window.fetch` works unbound
    assert.equal(call.url, "http://gateway.test/v1/streams");
    assert.equal(call.method, "POST");
    assert.equal(call.headers.get("authorization"), "Bearer sk-1");
    assert.equal(call.headers.get("x-stream-id"), SID);
    assert.equal(call.headers.get("content-type"), "application/json");
    assert.deepEqual(call.body, { model: "openai/gpt", messages: [{ role: "user", content: "hi" }],
      max_tokens: 12, temperature: 0.5, fallbacks: ["demo/echo"], resume_grace_s: 30 });
    assert.equal(stream.streamId, SID);
    assert.equal(stream.lastEventId, "3");
    assert.equal(stream.retryMs, 2000);
    assert.equal(stream.state, "done");
    assert.equal(stream.stats.tokens, 2);
    assert.equal(stream.stats.comments, 1);
    assert.equal(typeof stream.stats.ttftMs, "number");
    assert.equal(fetch.calls.length, 1);
  });

  test("prompt instead of messages; the stream id comes from X-Stream-ID", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start("srv-id-0123456789"), done(1)],
        { headers: { "X-Stream-ID": "srv-id-0123456789" } })],
    });
    const stream = streamChat({ fetch, model: "demo/echo", prompt: "Hi" });
    await stream.finished;
    assert.deepEqual(fetch.calls[0].body, { model: "demo/echo", prompt: "Hi" });
    assert.equal(fetch.calls[0].url, "/v1/streams");
    assert.equal(fetch.calls[0].headers.get("authorization"), null);
    assert.equal(stream.streamId, "srv-id-0123456789");
  });

  test("for await yields every event, then ends", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), token(1, "a"), token(2, "b"), done(3)],
        { headers: { "X-Stream-ID": SID } })],
    });
    const types = [];
    let text = "";
    for await (const event of new GatewayStream({ fetch, model: "m/x", prompt: "p" })) {
      types.push(event.type);
      if (event.type === "token") text += event.payload.content;
    }
    assert.deepEqual(types, ["start", "token", "token", "done"]);
    assert.equal(text, "ab");
  });

  test("a body that ends without a terminal event resumes after retry: with Last-Event-ID, "
    + "and no token is delivered twice", async () => {
    const sleep = recordingSleep();
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(["retry: 250\n\n", start(), token(1, "A"), token(2, "B")],
        { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [() => sseResponse(
        // A replay that (wrongly) starts too early: ids 1 and 2 must be skipped.
        ["retry: 250\n\n", token(1, "A"), token(2, "B"), token(3, "C"), done(4)])],
    });
    const r = recorder();
    const stream = streamChat({ fetch, sleep, random: () => 0.5, model: "m/x", prompt: "p",
      streamId: SID, ...r.callbacks });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.equal(result.text, "ABC");
    assert.deepEqual(r.tokens(), ["A", "B", "C"]);
    assert.deepEqual(sleep.delays, [275]); // retry: 250, +10 % jitter (0.2 * 0.5)
    assert.deepEqual(r.log.find((l) => l[0] === "reconnecting"), ["reconnecting", 1, 275]);
    const resume = fetch.calls[1];
    assert.equal(resume.method, "GET");
    assert.equal(resume.path, EVENTS_PATH);
    assert.equal(resume.headers.get("last-event-id"), "2");
    assert.equal(stream.stats.duplicatesSkipped, 2);
    assert.equal(stream.stats.reconnects, 1);
  });

  test("a network error mid-body resumes; the split event is not half-delivered", async () => {
    const sleep = recordingSleep();
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(
        ["retry: 100\n\n", start(), token(1, "\u00e9"), "id: 2\nevent: token\ndata: {\"con"],
        { end: "error", headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [() => sseResponse(["retry: 100\n\n", token(2, "\ud83d\ude00"), done(3)])],
    });
    const stream = streamChat({ fetch, sleep, jitter: 0, model: "m/x", prompt: "p" });
    const result = await stream.finished;
    assert.equal(result.text, "\u00e9\ud83d\ude00");
    assert.equal(fetch.calls[1].headers.get("last-event-id"), "1");
    assert.deepEqual(sleep.delays, [100]);
  });

  test("a drop before any event resumes from the beginning (no Last-Event-ID)", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(["retry: 10\n\n"], { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [() => sseResponse([start(), token(1, "x"), done(2)])],
    });
    const stream = streamChat({ fetch, sleep: recordingSleep(), model: "m/x", prompt: "p" });
    assert.equal((await stream.finished).text, "x");
    assert.equal(fetch.calls[1].headers.get("last-event-id"), null);
  });

  test("backoff doubles from the server's retry: up to the cap, then gives up after maxRetries",
    async () => {
      const sleep = recordingSleep();
      const fetch = fakeFetch({
        "POST /v1/streams": [() => sseResponse(["retry: 100\n\n", start(), token(1, "a")],
          { headers: { "X-Stream-ID": SID } })],
        [`GET ${EVENTS_PATH}`]: [() => { throw new TypeError("Failed to fetch"); }],
      });
      const r = recorder();
      const stream = streamChat({ fetch, sleep, jitter: 0, maxRetries: 6, maxRetryDelay: 1000,
        model: "m/x", prompt: "p", ...r.callbacks });
      const result = await stream.finished;
      assert.equal(result.status, "error");
      assert.equal(result.error.code, "reconnect_failed");
      assert.match(result.error.message, /after 6 attempt/);
      assert.deepEqual(sleep.delays, [100, 200, 400, 800, 1000, 1000]);
      assert.equal(fetch.calls.filter((c) => c.method === "GET").length, 6);
      assert.deepEqual(r.log.at(-1), ["error", "reconnect_failed"]);
      assert.equal(result.text, "a");
      assert.equal(stream.state, "error");
      await assert.rejects(async () => { for await (const _ of stream) { /* drain */ } },
        (error) => error instanceof GatewayError && error.code === "reconnect_failed");
    });

  test("maxRetries counts attempts in a row: progress resets it", async () => {
    const sleep = recordingSleep();
    let n = 0;
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(["retry: 10\n\n", start()], { headers: { "X-Stream-ID": SID } })],
      // Every resume brings one new token and drops: 5 drops with maxRetries 1 still finish.
      [`GET ${EVENTS_PATH}`]: [() => {
        n += 1;
        return n <= 5 ? sseResponse([token(n, String(n))], { end: "error" })
          : sseResponse([done(6)]);
      }],
    });
    const stream = streamChat({ fetch, sleep, jitter: 0, maxRetries: 1, model: "m/x", prompt: "p" });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.equal(result.text, "12345");
    assert.deepEqual(sleep.delays, [10, 10, 10, 10, 10, 10]);
  });

  test("without retry: the retryDelay option is the base", () => {
    assert.equal(computeBackoff(1, { retryDelay: 500, jitter: 0 }), 500);
    assert.equal(computeBackoff(3, { retryDelay: 500, jitter: 0 }), 2000);
    assert.equal(computeBackoff(10, { retryDelay: 500, jitter: 0, maxRetryDelay: 3000 }), 3000);
    // The cap never goes below the server's retry.
    assert.equal(computeBackoff(4, { retryMs: 5000, jitter: 0, maxRetryDelay: 1000 }), 5000);
    // Jitter only adds.
    assert.equal(computeBackoff(1, { retryMs: 1000, jitter: 0.2, random: () => 0.999 }), 1200);
    assert.equal(computeBackoff(1, { retryMs: 1000, retryAfterMs: 4000, jitter: 0 }), 4000);
  });

  test("a resume answered 503 with Retry-After waits at least that long, then goes on", async () => {
    const sleep = recordingSleep();
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(["retry: 100\n\n", start(), token(1, "a")],
        { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [
        () => jsonResponse(503, { error: { code: "overloaded", message: "busy" } }, { "Retry-After": "3" }),
        () => sseResponse([token(2, "b"), done(3)]),
      ],
    });
    const stream = streamChat({ fetch, sleep, jitter: 0, model: "m/x", prompt: "p" });
    const result = await stream.finished;
    assert.equal(result.text, "ab");
    assert.deepEqual(sleep.delays, [100, 3000]);
    assert.equal(fetch.calls[2].headers.get("last-event-id"), "1");
  });

  test("a resume answered 410 position_gone is final", async () => {
    const sleep = recordingSleep();
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), token(1, "a")], { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [() => jsonResponse(410,
        { error: { code: "position_gone", message: "gone", param: "last_event_id" } })],
    });
    const stream = streamChat({ fetch, sleep, model: "m/x", prompt: "p" });
    const result = await stream.finished;
    assert.equal(result.status, "error");
    assert.equal(result.error.code, "position_gone");
    assert.equal(result.error.status, 410);
    assert.equal(result.error.param, "last_event_id");
    assert.equal(fetch.calls.length, 2);
  });

  test("an error event is terminal: reported with its code, no resume", async () => {
    const sleep = recordingSleep();
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), token(1, "a"), frame(2, "error",
        { code: "upstream_timeout", message: "slow", retryable: true, provider: "openai" })],
      { headers: { "X-Stream-ID": SID } })],
    });
    const r = recorder();
    const stream = streamChat({ fetch, sleep, model: "m/x", prompt: "p", ...r.callbacks });
    const result = await stream.finished;
    assert.equal(result.status, "error");
    assert.equal(result.error.code, "upstream_timeout");
    assert.equal(result.error.message, "slow");
    assert.equal(result.error.retryable, true);
    assert.equal(result.error.provider, "openai");
    assert.equal(result.error.event.id, "2");
    assert.deepEqual(r.log.at(-1), ["error", "upstream_timeout"]);
    assert.equal(fetch.calls.length, 1);
    assert.deepEqual(sleep.delays, []);
    const types = [];
    await assert.rejects(async () => {
      for await (const event of stream) types.push(event.type);
    }, (error) => error.code === "upstream_timeout");
    assert.deepEqual(types, ["start", "token"]);
  });

  test("the id-less error event (store outage) is not final: it resumes from the last id "
    + "with backoff, and no token is delivered twice", async () => {
    const sleep = recordingSleep();
    const outage = { code: "internal_error", message: "the stream store is unreachable; resume later",
      retryable: true, provider: "openai" };
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(["retry: 250\n", start(), token(1, "a"),
        frame(null, "error", outage)], { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [
        () => sseResponse([frame(null, "error", outage)]), // still unreachable
        () => sseResponse([token(1, "a"), token(2, "b"), done(3)]),
      ],
    });
    const r = recorder();
    const causes = [];
    const stream = streamChat({ fetch, sleep, random: () => 0.5, model: "m/x", prompt: "p",
      ...r.callbacks,
      onReconnecting: (attempt, delay, cause) => causes.push([attempt, delay, cause.code,
        cause.message, cause.retryable]) });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.equal(result.text, "ab");
    assert.deepEqual(r.tokens(), ["a", "b"]);
    assert.deepEqual(r.log.filter((l) => l[0] === "error"), []); // onError never called
    assert.deepEqual(causes, [
      [1, 275, "internal_error", outage.message, true],
      [2, 550, "internal_error", outage.message, true], // no progress: the backoff doubles
    ]);
    assert.deepEqual(sleep.delays, [275, 550]);
    assert.deepEqual(fetch.calls.slice(1).map((c) => [c.path, c.headers.get("last-event-id")]),
      [[EVENTS_PATH, "1"], [EVENTS_PATH, "1"]]);
    assert.deepEqual(stream.events.map((e) => e.id), ["0", "1", "2", "3"]); // the outages are no events
  });

  test("a numbered error event stays final even right after an outage", async () => {
    const outage = { code: "internal_error", message: "the stream store is unreachable; resume later",
      retryable: true };
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), token(1, "a"), frame(null, "error", outage)],
        { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [() => sseResponse([frame(2, "error",
        { code: "internal_error", message: "the stream store was unreachable for 6.0 s",
          retryable: true, provider: "openai" })])],
    });
    const stream = streamChat({ fetch, sleep: recordingSleep(), model: "m/x", prompt: "p" });
    const result = await stream.finished;
    assert.equal(result.status, "error");
    assert.equal(result.error.message, "the stream store was unreachable for 6.0 s");
    assert.equal(result.error.event.id, "2");
    assert.equal(stream.lastEventId, "2");
    assert.equal(fetch.calls.length, 2);
  });

  test("a cancelled event ends the stream as cancelled", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), token(1, "a"), frame(2, "cancelled",
        { reason: "shutdown" })], { headers: { "X-Stream-ID": SID } })],
    });
    const r = recorder();
    const result = await streamChat({ fetch, model: "m/x", prompt: "p", ...r.callbacks }).finished;
    assert.equal(result.status, "cancelled");
    assert.deepEqual(result.payload, { reason: "shutdown" });
    assert.deepEqual(r.log.at(-1), ["cancelled", "shutdown"]);
  });

  test("cancel() sends DELETE /v1/streams/<id> and ends with the server's cancelled event",
    async () => {
      let live;
      const fetch = fakeFetch({
        "POST /v1/streams": [(call) => {
          live = sseResponse([start(), token(1, "a")],
            { end: "hang", headers: { "X-Stream-ID": SID }, signal: call.signal });
          return live;
        }],
        [`DELETE /v1/streams/${SID}`]: [() => {
          live.controller.enqueue(encoder.encode(frame(2, "cancelled", { reason: "deleted" })));
          return jsonResponse(202, { stream_id: SID, status: "running" });
        }],
      });
      const r = recorder();
      const stream = streamChat({ fetch, apiKey: "k", model: "m/x", prompt: "p", cancelWait: 5000,
        ...r.callbacks });
      await new Promise((resolve) => { stream.options.onToken = resolve; });
      const result = await stream.cancel();
      assert.equal(result.status, "cancelled");
      assert.deepEqual(result.payload, { reason: "deleted" });
      const del = fetch.calls.find((c) => c.method === "DELETE");
      assert.equal(del.path, `/v1/streams/${SID}`);
      assert.equal(del.headers.get("authorization"), "Bearer k");
      assert.equal(fetch.calls.length, 2);
      assert.equal(stream.state, "cancelled");
    });

  test("cancel() aborts the read when no cancelled event comes", async () => {
    let postSignal;
    const fetch = fakeFetch({
      "POST /v1/streams": [(call) => {
        postSignal = call.signal;
        return sseResponse([start(), token(1, "a")],
          { end: "hang", headers: { "X-Stream-ID": SID }, signal: call.signal });
      }],
      [`DELETE /v1/streams/${SID}`]: [() => jsonResponse(202, { status: "running" })],
    });
    const r = recorder();
    const stream = streamChat({ fetch, model: "m/x", prompt: "p", cancelWait: 20, ...r.callbacks });
    await new Promise((resolve) => { stream.options.onToken = resolve; });
    const result = await stream.cancel();
    assert.equal(result.status, "cancelled");
    assert.deepEqual(result.payload, { reason: "deleted", local: true });
    assert.equal(postSignal.aborted, true);
    assert.deepEqual(r.log.at(-1), ["cancelled", "deleted"]);
    assert.equal(await stream.cancel(), result); // idempotent
  });

  test("aborting options.signal cancels (DELETE) too", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [(call) => sseResponse([start(), token(1, "a")],
        { end: "hang", headers: { "X-Stream-ID": SID }, signal: call.signal })],
      [`DELETE /v1/streams/${SID}`]: [() => jsonResponse(202, { status: "running" })],
    });
    const controller = new AbortController();
    const stream = streamChat({ fetch, signal: controller.signal, cancelWait: 10, model: "m/x",
      prompt: "p" });
    await new Promise((resolve) => { stream.options.onToken = resolve; });
    controller.abort();
    const result = await stream.finished;
    assert.equal(result.status, "cancelled");
    assert.ok(fetch.calls.some((c) => c.method === "DELETE"));
  });

  test("a non-2xx answer is an error with the JSON code, message, param and Retry-After",
    async () => {
      const fetch = fakeFetch({
        "POST /v1/streams": [
          () => jsonResponse(400, { error: { code: "unknown_model", message: "no such model",
            param: "model" } }),
          () => jsonResponse(429, { error: { code: "rate_limited", message: "slow down" } },
            { "Retry-After": "7" }),
          () => new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" }),
        ],
      });
      const r = recorder();
      const first = await streamChat({ fetch, model: "x/y", prompt: "p", ...r.callbacks }).finished;
      assert.equal(first.status, "error");
      assert.ok(first.error instanceof GatewayError);
      assert.equal(first.error.code, "unknown_model");
      assert.equal(first.error.message, "no such model");
      assert.equal(first.error.status, 400);
      assert.equal(first.error.param, "model");
      assert.deepEqual(r.log, [["error", "unknown_model"]]);
      const second = await streamChat({ fetch, model: "x/y", prompt: "p" }).finished;
      assert.equal(second.error.code, "rate_limited");
      assert.equal(second.error.retryAfter, 7);
      const third = await streamChat({ fetch, model: "x/y", prompt: "p" }).finished;
      assert.equal(third.error.code, "http_502");
      assert.equal(third.error.status, 502);
      assert.equal(fetch.calls.length, 3); // a refused POST is not retried
      await assert.rejects(async () => {
        for await (const _ of streamChat({ fetch, model: "x/y", prompt: "p" })) { /* none */ }
      }, (error) => error.status === 502);
    });

  test("the POST failing at the network level is a network_error", async () => {
    const fetch = fakeFetch({ "POST /v1/streams": [() => { throw new TypeError("Failed to fetch"); }] });
    const result = await streamChat({ fetch, model: "m/x", prompt: "p" }).finished;
    assert.equal(result.error.code, "network_error");
  });

  test("a silent connection (no bytes, not even pings) is resumed after idleTimeout", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [(call) => sseResponse([start(), token(1, "a")],
        { end: "hang", headers: { "X-Stream-ID": SID }, signal: call.signal })],
      [`GET ${EVENTS_PATH}`]: [() => sseResponse([token(2, "b"), done(3)])],
    });
    const stream = streamChat({ fetch, sleep: recordingSleep(), idleTimeout: 30, model: "m/x",
      prompt: "p" });
    const result = await stream.finished;
    assert.equal(result.text, "ab");
    assert.equal(fetch.calls[1].headers.get("last-event-id"), "1");
  });

  test("states: connecting, streaming, reconnecting, connecting, streaming, done", async () => {
    const states = [];
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), token(1, "a")], { headers: { "X-Stream-ID": SID } })],
      [`GET ${EVENTS_PATH}`]: [() => sseResponse([done(2)])],
    });
    await streamChat({ fetch, sleep: recordingSleep(), model: "m/x", prompt: "p",
      onStateChange: (s) => states.push(s) }).finished;
    assert.deepEqual(states, ["connecting", "streaming", "reconnecting", "connecting", "streaming", "done"]);
  });

  test("a whole stream fed one byte at a time through fetch is exact", async () => {
    const tokens = ["a\u00e9", "\ud83d\udc4b\ud83c\udffd", "\n\u4e16\r\n", " z"];
    const text = "retry: 5\r\n\r\n" + start() + tokens.map((t, i) => token(i + 1, t)).join("")
      + done(tokens.length + 1);
    const bytes = encoder.encode(text);
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([...bytes].map((b) => new Uint8Array([b])),
        { headers: { "X-Stream-ID": SID } })],
    });
    const seen = [];
    const result = await streamChat({ fetch, model: "m/x", prompt: "p",
      onToken: (t) => seen.push(t) }).finished;
    assert.deepEqual(seen, tokens);
    assert.equal(result.text, tokens.join(""));
  });

  test("a throwing callback does not break the stream", async () => {
    const original = globalThis.reportError;
    const reported = [];
    globalThis.reportError = (e) => reported.push(e);
    try {
      const fetch = fakeFetch({
        "POST /v1/streams": [() => sseResponse([start(), token(1, "a"), done(2)],
          { headers: { "X-Stream-ID": SID } })],
      });
      const result = await streamChat({ fetch, model: "m/x", prompt: "p",
        onToken: () => { throw new Error("boom"); } }).finished;
      assert.equal(result.status, "done");
      assert.equal(reported.length, 1);
    } finally {
      globalThis.reportError = original;
    }
  });

  test("followStream() reads an existing stream from lastEventId", async () => {
    const fetch = fakeFetch({
      [`GET ${EVENTS_PATH}`]: [() => sseResponse([token(5, "f"), done(6)])],
    });
    const stream = followStream({ fetch, streamId: SID, lastEventId: 4 });
    const result = await stream.finished;
    assert.equal(result.text, "f");
    assert.equal(fetch.calls[0].headers.get("last-event-id"), "4");
    assert.equal(fetch.calls.length, 1);
  });
});

// ----------------------------------------------------------------------------- rich events

const reasoning = (i, content) => frame(i, "reasoning", { content });
const refusal = (i, content) => frame(i, "refusal", { content });
const toolCall = (i, index, id, name) => frame(i, "tool_call", { index, id, name });
const toolDelta = (i, index, args) => frame(i, "tool_call_delta", { index, arguments: args });
const toolDone = (i, index, id, name, args) => frame(i, "tool_call_done",
  { index, id, name, arguments: args });

const THINKING = { anthropic: { thinking_blocks: [
  { type: "thinking", thinking: "Two cities: two calls.", signature: "sig==" },
  { type: "redacted_thinking", data: "opaque" }] } };
const RICH_DONE = { finish_reason: "tool_calls", provider_finish_reason: "tool_use",
  model: "anthropic/claude-sonnet-4-5",
  usage: { input_tokens: 10423, output_tokens: 120, cache_read_input_tokens: 8000,
    cache_creation_input_tokens: 12, reasoning_tokens: 40 },
  metrics: { ttft_ms: 20, duration_ms: 90, tokens_per_second: 50 }, provider_data: THINKING };

const PARIS = '{"city": "Paris \u00e9\ud83d\ude00"}';
const TOKYO = '{"city": "T\u00f4ky\u014d", "unit": "c"}';

/** Every kind of event: reasoning, text, two parallel calls with interleaved fragments. */
const RICH = [
  "retry: 100\n\n", start(),
  reasoning(1, "Two "), reasoning(2, "cities:\n"), reasoning(3, "two calls. \ud83e\udd14"),
  token(4, "Checking "), token(5, "both."),
  toolCall(6, 0, "call_paris", "get_weather"),
  toolDelta(7, 0, PARIS.slice(0, 3)),
  toolCall(8, 1, "toolu_tokyo", "get_weather"),
  toolDelta(9, 1, TOKYO.slice(0, 10)),
  toolDelta(10, 0, PARIS.slice(3, 17)),
  toolDelta(11, 1, TOKYO.slice(10)),
  toolDelta(12, 0, PARIS.slice(17)),
  toolDone(13, 0, "call_paris", "get_weather", PARIS),
  toolDone(14, 1, "toolu_tokyo", "get_weather", TOKYO),
  frame(15, "done", RICH_DONE),
];

const RICH_MESSAGE = {
  role: "assistant",
  content: "Checking both.",
  tool_calls: [
    { id: "call_paris", type: "function", function: { name: "get_weather", arguments: PARIS } },
    { id: "toolu_tokyo", type: "function", function: { name: "get_weather", arguments: TOKYO } },
  ],
  reasoning: "Two cities:\ntwo calls. \ud83e\udd14",
  refusal: null,
  provider_data: THINKING,
};

function richRecorder() {
  const log = [];
  const callbacks = {
    onToken: (text, e) => log.push(["token", text, e.id]),
    onReasoning: (text, e) => log.push(["reasoning", text, e.id]),
    onRefusal: (text, e) => log.push(["refusal", text, e.id]),
    onToolCall: (call, e) => log.push(["tool_call", call, e.id]),
    onToolCallDelta: (delta, e) => log.push(["tool_call_delta", delta, e.id]),
    onToolCallDone: (call, e) => log.push(["tool_call_done", call, e.id]),
    onDone: (p) => log.push(["done", p.finish_reason, p.provider_finish_reason]),
  };
  return { log, callbacks };
}

describe("GatewayStream: reasoning, refusals and tool calls", () => {
  test("each event reaches its callback in order; each kind concatenates exactly; "
    + "the message is assembled", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(RICH, { headers: { "X-Stream-ID": SID } })],
    });
    const r = richRecorder();
    const stream = streamChat({ fetch, model: "anthropic/claude-sonnet-4-5", prompt: "p",
      ...r.callbacks });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.deepEqual(r.log, [
      ["reasoning", "Two ", "1"], ["reasoning", "cities:\n", "2"],
      ["reasoning", "two calls. \ud83e\udd14", "3"],
      ["token", "Checking ", "4"], ["token", "both.", "5"],
      ["tool_call", { index: 0, id: "call_paris", name: "get_weather" }, "6"],
      ["tool_call_delta", { index: 0, arguments: PARIS.slice(0, 3) }, "7"],
      ["tool_call", { index: 1, id: "toolu_tokyo", name: "get_weather" }, "8"],
      ["tool_call_delta", { index: 1, arguments: TOKYO.slice(0, 10) }, "9"],
      ["tool_call_delta", { index: 0, arguments: PARIS.slice(3, 17) }, "10"],
      ["tool_call_delta", { index: 1, arguments: TOKYO.slice(10) }, "11"],
      ["tool_call_delta", { index: 0, arguments: PARIS.slice(17) }, "12"],
      ["tool_call_done", { index: 0, id: "call_paris", name: "get_weather", arguments: PARIS }, "13"],
      ["tool_call_done", { index: 1, id: "toolu_tokyo", name: "get_weather", arguments: TOKYO },
        "14"],
      ["done", "tool_calls", "tool_use"],
    ]);
    assert.equal(stream.text, "Checking both.");
    assert.equal(stream.reasoning, "Two cities:\ntwo calls. \ud83e\udd14");
    assert.equal(stream.refusal, "");
    assert.deepEqual(stream.message, RICH_MESSAGE);
    assert.deepEqual(result.message, RICH_MESSAGE);
    assert.deepEqual(result.payload, RICH_DONE); // provider_finish_reason, usage, provider_data
    assert.deepEqual(stream.providerData, THINKING);
    assert.deepEqual(stream.assistantMessage(), {
      role: "assistant", content: "Checking both.", tool_calls: RICH_MESSAGE.tool_calls,
      provider_data: THINKING,
    });
    assert.equal(stream.stats.tokens, 2);
    assert.equal(stream.stats.outputs, 14);
  });

  test("the message is a copy: changing it changes nothing in the stream", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(RICH, { headers: { "X-Stream-ID": SID } })],
    });
    const stream = streamChat({ fetch, model: "m/x", prompt: "p" });
    const result = await stream.finished;
    result.message.tool_calls[0].function.arguments = "changed";
    result.message.provider_data.anthropic.thinking_blocks.length = 0;
    const next = stream.assistantMessage();
    next.provider_data.anthropic = null;
    assert.deepEqual(stream.message, RICH_MESSAGE);
  });

  test("for await yields every new event with its payload", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(RICH, { headers: { "X-Stream-ID": SID } })],
    });
    const seen = [];
    const stream = new GatewayStream({ fetch, model: "m/x", prompt: "p" });
    for await (const event of stream) seen.push([event.id, event.type, event.payload]);
    assert.deepEqual(seen.map(([, type]) => type), ["start", "reasoning", "reasoning", "reasoning",
      "token", "token", "tool_call", "tool_call_delta", "tool_call", "tool_call_delta",
      "tool_call_delta", "tool_call_delta", "tool_call_delta", "tool_call_done",
      "tool_call_done", "done"]);
    assert.deepEqual(seen[1], ["1", "reasoning", { content: "Two " }]);
    assert.deepEqual(seen[8], ["8", "tool_call", { index: 1, id: "toolu_tokyo", name: "get_weather" }]);
    assert.deepEqual(seen[11], ["11", "tool_call_delta", { index: 1, arguments: TOKYO.slice(10) }]);
    assert.deepEqual(seen[14], ["14", "tool_call_done",
      { index: 1, id: "toolu_tokyo", name: "get_weather", arguments: TOKYO }]);
    assert.deepEqual(seen[15], ["15", "done", RICH_DONE]);
    // Per index, the fragments iterated concatenate to the call's arguments exactly.
    for (const [index, whole] of [[0, PARIS], [1, TOKYO]]) {
      assert.equal(seen.filter(([, t, p]) => t === "tool_call_delta" && p.index === index)
        .map(([, , p]) => p.arguments).join(""), whole);
    }
    assert.equal(seen.filter(([, t]) => t === "reasoning").map(([, , p]) => p.content).join(""),
      RICH_MESSAGE.reasoning);
  });

  test("a refusal: its own text and callback, marked in the message, content stays empty",
    async () => {
      const fetch = fakeFetch({
        "POST /v1/streams": [() => sseResponse([start(), refusal(1, "I can\u2019t "),
          refusal(2, "help with that."), frame(3, "done", { finish_reason: "refusal",
            provider_finish_reason: "stop", model: "openai/gpt-4o",
            usage: { input_tokens: 5, output_tokens: 6 }, metrics: {} })],
        { headers: { "X-Stream-ID": SID } })],
      });
      const r = richRecorder();
      const stream = streamChat({ fetch, model: "openai/gpt-4o", prompt: "p", ...r.callbacks });
      const result = await stream.finished;
      assert.deepEqual(r.log, [["refusal", "I can\u2019t ", "1"], ["refusal", "help with that.", "2"],
        ["done", "refusal", "stop"]]);
      assert.equal(stream.refusal, "I can\u2019t help with that.");
      assert.deepEqual(result.message, { role: "assistant", content: "", tool_calls: null,
        reasoning: null, refusal: "I can\u2019t help with that.", provider_data: null });
      assert.deepEqual(stream.assistantMessage(), { role: "assistant", content: null });
      assert.equal(typeof stream.stats.ttftMs, "number"); // the refusal was the first output
      assert.equal(stream.stats.tokens, 0);
    });

  test("the first reasoning event is the first token (ttft)", async () => {
    let clock = 0;
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), reasoning(1, "hm"), token(2, "a"),
        done(3)], { headers: { "X-Stream-ID": SID } })],
    });
    const stream = streamChat({ fetch, model: "m/x", prompt: "p", now: () => clock,
      onStart: () => { clock = 100; }, onReasoning: () => { clock = 250; },
      onToken: () => { clock = 300; } });
    await stream.finished;
    // startedAt 0; the reasoning event came at 100 (the clock moves in its callback).
    assert.equal(stream.stats.ttftMs, 100);
    assert.equal(stream.stats.outputs, 2);
  });

  test("a resume in the middle of a tool call: no fragment twice, no fragment lost", async () => {
    const sleep = recordingSleep();
    const args = '{"timezone": "Europe/Paris"}';
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse(["retry: 50\n\n", start(), reasoning(1, "Time."),
        toolCall(2, 0, "call_1", "get_time"), toolDelta(3, 0, args.slice(0, 5)),
        toolDelta(4, 0, args.slice(5, 12)), "id: 5\nevent: tool_call_delta\ndata: {\"ind"],
      { end: "error", headers: { "X-Stream-ID": SID } })],
      // The replay starts too early: ids 2 to 4 come again and must be skipped.
      [`GET ${EVENTS_PATH}`]: [() => sseResponse([toolCall(2, 0, "call_1", "get_time"),
        toolDelta(3, 0, args.slice(0, 5)), toolDelta(4, 0, args.slice(5, 12)),
        toolDelta(5, 0, args.slice(12, 20)), toolDelta(6, 0, args.slice(20)),
        toolDone(7, 0, "call_1", "get_time", args),
        frame(8, "done", { finish_reason: "tool_calls", provider_finish_reason: "tool_calls",
          model: "demo/tools", usage: { input_tokens: 4, output_tokens: 5, reasoning_tokens: 1 },
          metrics: {} })])],
    });
    const r = richRecorder();
    const stream = streamChat({ fetch, sleep, jitter: 0, model: "demo/tools", prompt: "p",
      ...r.callbacks });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.equal(fetch.calls[1].headers.get("last-event-id"), "4");
    assert.equal(stream.stats.duplicatesSkipped, 3);
    assert.deepEqual(r.log.filter((l) => l[0] === "tool_call_delta").map((l) => l[1].arguments),
      [args.slice(0, 5), args.slice(5, 12), args.slice(12, 20), args.slice(20)]);
    assert.equal(r.log.filter((l) => l[0] === "tool_call").length, 1);
    assert.deepEqual(result.message.tool_calls, [
      { id: "call_1", type: "function", function: { name: "get_time", arguments: args } }]);
    assert.deepEqual(stream.assistantMessage(), { role: "assistant", content: null,
      tool_calls: [{ id: "call_1", type: "function", function: { name: "get_time", arguments: args } }] });
    assert.deepEqual(result.payload.usage, { input_tokens: 4, output_tokens: 5, reasoning_tokens: 1 });
  });

  test("the message as far as it got: mid-call, and when the stream is cancelled", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), toolCall(1, 0, "c0", "f"),
        toolDelta(2, 0, '{"a"'), frame(3, "cancelled", { reason: "deleted" })],
      { headers: { "X-Stream-ID": SID } })],
    });
    const snapshots = [];
    const stream = streamChat({ fetch, model: "m/x", prompt: "p",
      onToolCallDelta() { snapshots.push(this.message.tool_calls); } });
    const result = await stream.finished;
    assert.equal(result.status, "cancelled");
    const partial = [{ id: "c0", type: "function", function: { name: "f", arguments: '{"a"' } }];
    assert.deepEqual(snapshots, [partial]);
    assert.deepEqual(result.message.tool_calls, partial);
  });

  test("followed from a later position, a call first seen by tool_call_done is whole",
    async () => {
      const fetch = fakeFetch({
        [`GET ${EVENTS_PATH}`]: [() => sseResponse([toolDelta(4, 0, "lo\"}"),
          toolDone(5, 0, "call_x", "get_time", '{"tz": "lo"}'), toolDelta(6, 1, "{}"),
          frame(7, "done", { finish_reason: "tool_calls", model: "m/x" })])],
      });
      const stream = followStream({ fetch, streamId: SID, lastEventId: 3 });
      const result = await stream.finished;
      assert.deepEqual(result.message.tool_calls, [
        { id: "call_x", type: "function", function: { name: "get_time", arguments: '{"tz": "lo"}' } },
        { id: null, type: "function", function: { name: null, arguments: "{}" } }]);
    });

  test("malformed payloads of the new kinds are skipped, never thrown", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), frame(1, "reasoning", { content: 7 }),
        frame(2, "tool_call", { index: "0", id: "x", name: "y" }), "id: 3\nevent: refusal\ndata: {\n\n",
        frame(4, "tool_call_delta", { index: 0, arguments: null }), done(5)],
      { headers: { "X-Stream-ID": SID } })],
    });
    const r = richRecorder();
    const stream = streamChat({ fetch, model: "m/x", prompt: "p", ...r.callbacks });
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.deepEqual(result.message, { role: "assistant", content: "", reasoning: null,
      refusal: null, provider_data: null, tool_calls: [
        { id: null, type: "function", function: { name: null, arguments: "" } }] });
    assert.deepEqual(r.log.map((l) => l[0]), ["reasoning", "refusal", "tool_call_delta", "done"]);
  });

  test("the new request fields go into the body, camelCase or snake_case", async () => {
    const fetch = fakeFetch({
      "POST /v1/streams": [() => sseResponse([start(), done(1)], { headers: { "X-Stream-ID": SID } })],
    });
    const tools = [{ type: "function", function: { name: "get_time", description: "now",
      parameters: { type: "object", properties: { timezone: { type: "string" } } } } }];
    await streamChat({ fetch, model: "m/x", messages: [{ role: "user", content: "t?" }], tools,
      toolChoice: "auto", reasoning: { effort: "low" }, responseFormat: { type: "json_object" },
      stop: ["\n"], topP: 0.5, seed: 7, metadata: { user: "u1" } }).finished;
    await streamChat({ fetch, model: "m/x", prompt: "p", tool_choice: "none", top_p: 1,
      response_format: { type: "text" } }).finished;
    assert.deepEqual(fetch.calls[0].body, { model: "m/x", messages: [{ role: "user", content: "t?" }],
      tools, tool_choice: "auto", reasoning: { effort: "low" },
      response_format: { type: "json_object" }, stop: ["\n"], top_p: 0.5, seed: 7,
      metadata: { user: "u1" } });
    assert.deepEqual(fetch.calls[1].body, { model: "m/x", prompt: "p", tool_choice: "none",
      top_p: 1, response_format: { type: "text" } });
  });
});

describe("assistantMessage()", () => {
  test("from the status route's message: null fields and empty data are left out", () => {
    assert.deepEqual(assistantMessage({ role: "assistant", content: "Hi", tool_calls: null,
      reasoning: "r", refusal: null, provider_data: null }), { role: "assistant", content: "Hi" });
    assert.deepEqual(assistantMessage({ content: "", tool_calls: [], provider_data: {} }),
      { role: "assistant", content: null });
    assert.deepEqual(assistantMessage(null), { role: "assistant", content: null });
    const call = { id: "c", type: "function", function: { name: "f", arguments: "{}" }, extra: 1 };
    assert.deepEqual(assistantMessage({ content: "", tool_calls: [call],
      provider_data: { anthropic: { thinking_blocks: [] } } }), {
      role: "assistant", content: null,
      tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "{}" } }],
      provider_data: { anthropic: { thinking_blocks: [] } } });
  });
});

// ----------------------------------------------------------------------------- WebSocket mode

/**
 * A fake WebSocket class (a fresh one per test, so no socket is shared between tests):
 * `made` lists its instances; a test drives each with accept() (open), push(frame)
 * (a server frame), drop(code) (the connection is lost) and refuse() (it never opens),
 * and reads `sent` (the client's frames, parsed).
 */
function fakeWebSockets() {
  const made = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      made.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(JSON.parse(text));
    }

    close(code = 1000, reason = "") {
      this.closedWith = { code, reason };
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code, reason, wasClean: true }));
    }

    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }

    push(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: false });
    }

    refuse() {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: "", wasClean: false });
    }
  }
  FakeWebSocket.made = made;
  FakeWebSocket.last = () => made.at(-1);
  return FakeWebSocket;
}

/** Let pending promise jobs and timers of 0 ms run (the client's own awaits). */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

const wsEvent = (streamId, id, event, data) => ({ stream_id: streamId, id, event, data });
const wsStart = (sid, id = 0) => wsEvent(sid, id, "start", { stream_id: sid, model: "demo/echo",
  created: 1 });
const wsToken = (sid, id, content) => wsEvent(sid, id, "token", { content });
const wsDone = (sid, id) => wsEvent(sid, id, "done", { finish_reason: "stop", model: "demo/echo",
  usage: { input_tokens: 2, output_tokens: 3 } });

/** A socket on a fresh fake class, with instant (recorded) backoff sleeps. */
function wsSetup(options = {}) {
  const WebSocket = fakeWebSockets();
  const sleep = recordingSleep();
  const socket = new GatewaySocket({ baseUrl: "http://gateway.test", WebSocket, sleep,
    random: () => 0, ...options });
  return { WebSocket, sleep, socket };
}

describe("GatewayStream over a WebSocket", () => {
  test("the URL: ws(s) from the base URL or the page, and the token as ?token=", () => {
    assert.equal(socketUrl({ baseUrl: "http://h:8000/" }), "ws://h:8000/v1/ws");
    assert.equal(socketUrl({ baseUrl: "https://h/gw" }), "wss://h/gw/v1/ws");
    assert.equal(socketUrl({ baseUrl: "https://h", token: "sst_a+b" }),
      "wss://h/v1/ws?token=sst_a%2Bb");
    assert.equal(socketUrl({ url: "ws://other/socket" }), "ws://other/socket");
    assert.throws(() => socketUrl({}), /outside a page, give baseUrl/);
    globalThis.location = { href: "https://page.example/chat/" };
    try {
      assert.equal(socketUrl({}), "wss://page.example/v1/ws");
    } finally {
      delete globalThis.location;
    }
  });

  test("the start frame carries the POST body and a fresh stream id; frames in, callbacks out, "
    + "exact text", async () => {
    const { WebSocket, socket } = wsSetup();
    const { log, callbacks } = recorder();
    const states = [];
    const stream = socket.streamChat({ model: "demo/echo", messages: [{ role: "user", content: "Hi" }],
      maxTokens: 50, temperature: 0.5, metadata: { user: "u1" }, body: { chunking: "word" },
      onStateChange: (state) => states.push(state), ...callbacks });
    assert.equal(WebSocket.made.length, 1);
    const ws = WebSocket.last();
    assert.equal(ws.url, "ws://gateway.test/v1/ws");
    assert.deepEqual(ws.sent, []); // nothing before the socket opens
    ws.accept();
    assert.equal(ws.sent.length, 1);
    const sid = stream.streamId;
    assert.match(sid, /^[A-Za-z0-9_-]{22}$/); // 128 random bits, URL-safe
    assert.deepEqual(ws.sent[0], { type: "start", model: "demo/echo",
      messages: [{ role: "user", content: "Hi" }], max_tokens: 50, temperature: 0.5,
      metadata: { user: "u1" }, chunking: "word", stream_id: sid });
    const pieces = ["Hél", "lo 👋🏽", "\n", "<b>x</b>", '{"a": 1}'];
    ws.push(wsStart(sid));
    pieces.forEach((piece, i) => ws.push(wsToken(sid, i + 1, piece)));
    ws.push(wsDone(sid, pieces.length + 1));
    const result = await stream.finished;
    assert.equal(result.status, "done");
    assert.equal(result.text, pieces.join(""));
    assert.equal(result.message.content, pieces.join(""));
    assert.equal(result.lastEventId, String(pieces.length + 1));
    assert.deepEqual(result.payload.usage, { input_tokens: 2, output_tokens: 3 });
    assert.deepEqual(log, [["start", sid], ...pieces.map((p, i) => ["token", p, String(i + 1)]),
      ["done", "stop"]]);
    assert.deepEqual(states, ["connecting", "streaming", "done"]);
    assert.equal(stream.events[1].data, JSON.stringify({ content: pieces[0] }));
    assert.deepEqual(stream.events[1].payload, { content: pieces[0] });
    assert.equal(socket.state, "open"); // kept for the page's next stream
    assert.equal(stream.stats.tokens, pieces.length);
  });

  test("for await yields the frames' events; reasoning and tool calls assemble as in SSE mode",
    async () => {
      const { WebSocket, socket } = wsSetup();
      const stream = socket.streamChat({ model: "m/x", prompt: "t" });
      const ws = WebSocket.last();
      ws.accept();
      const sid = stream.streamId;
      const frames = [wsStart(sid), wsEvent(sid, 1, "reasoning", { content: "Think" }),
        wsEvent(sid, 2, "tool_call", { index: 0, id: "call_1", name: "get_time" }),
        wsEvent(sid, 3, "tool_call_delta", { index: 0, arguments: '{"timezone"' }),
        wsEvent(sid, 4, "tool_call_delta", { index: 0, arguments: ': "UTC"}' }),
        wsEvent(sid, 5, "tool_call_done", { index: 0, id: "call_1", name: "get_time",
          arguments: '{"timezone": "UTC"}' }),
        wsEvent(sid, 6, "done", { finish_reason: "tool_calls", provider_data: { p: 1 } })];
      queueMicrotask(() => frames.forEach((f) => ws.push(f)));
      const seen = [];
      for await (const event of stream) seen.push([event.type, event.id]);
      assert.deepEqual(seen, frames.map((f) => [f.event, String(f.id)]));
      assert.equal(stream.reasoning, "Think");
      assert.deepEqual(stream.assistantMessage(), { role: "assistant", content: null,
        tool_calls: [{ id: "call_1", type: "function",
          function: { name: "get_time", arguments: '{"timezone": "UTC"}' } }],
        provider_data: { p: 1 } });
    });

  test("two streams on one socket: interleaved frames reach each its own stream", async () => {
    const { WebSocket, socket } = wsSetup();
    const a = recorder();
    const b = recorder();
    const one = socket.streamChat({ model: "demo/echo", prompt: "one", ...a.callbacks });
    const two = socket.streamChat({ model: "demo/echo", prompt: "two", ...b.callbacks });
    assert.equal(WebSocket.made.length, 1);
    const ws = WebSocket.last();
    ws.accept();
    assert.deepEqual(ws.sent.map((f) => [f.type, f.prompt, f.stream_id]),
      [["start", "one", one.streamId], ["start", "two", two.streamId]]);
    assert.notEqual(one.streamId, two.streamId);
    ws.push(wsStart(one.streamId));
    ws.push(wsStart(two.streamId));
    for (let i = 1; i <= 4; i++) {
      ws.push(wsToken(one.streamId, i, `a${i} `));
      ws.push(wsToken(two.streamId, i, `b${i} `));
    }
    ws.push(wsDone(two.streamId, 5));
    assert.equal((await two.finished).text, "b1 b2 b3 b4 ");
    assert.equal(one.state, "streaming"); // the other goes on
    // A third stream started later uses the same open socket at once.
    const three = socket.streamChat({ model: "demo/echo", prompt: "three" });
    assert.equal(WebSocket.made.length, 1);
    assert.deepEqual(ws.sent.at(-1), { type: "start", model: "demo/echo", prompt: "three",
      stream_id: three.streamId });
    ws.push(wsDone(one.streamId, 5));
    assert.equal((await one.finished).text, "a1 a2 a3 a4 ");
    assert.deepEqual(a.tokens(), ["a1 ", "a2 ", "a3 ", "a4 "]);
    assert.deepEqual(b.tokens(), ["b1 ", "b2 ", "b3 ", "b4 "]);
    // Frames of a finished or unknown stream, and frames this client does not know, are ignored.
    ws.push(wsToken(one.streamId, 6, "late"));
    ws.push(wsToken("someone-else-entirely", 1, "x"));
    ws.push({ type: "pong" });
    ws.push("not json");
    assert.equal(one.text, "a1 a2 a3 a4 ");
    ws.push(wsDone(three.streamId, 1));
    assert.equal((await three.finished).status, "done");
  });

  test("streamChat({transport: 'websocket'}) shares one socket per URL and key", async () => {
    const WebSocket = fakeWebSockets();
    const options = { transport: "websocket", baseUrl: "http://shared.test", WebSocket,
      model: "demo/echo" };
    const one = streamChat({ ...options, prompt: "1" });
    const two = streamChat({ ...options, prompt: "2" });
    const other = streamChat({ ...options, baseUrl: "http://other.test", prompt: "3" });
    assert.deepEqual(WebSocket.made.map((w) => w.url),
      ["ws://shared.test/v1/ws", "ws://other.test/v1/ws"]);
    assert.equal(one._socket, two._socket);
    WebSocket.made[0].accept();
    assert.deepEqual(WebSocket.made[0].sent.map((f) => f.prompt), ["1", "2"]);
    assert.throws(() => streamChat({ ...options, transport: "carrier-pigeon" }), /transport/);
    one._socket.close();
    other._socket.close();
    assert.equal((await two.finished).status, "cancelled");
    assert.equal((await two.finished).payload.reason, "closed");
    // Closed sockets are not shared any more: the next stream opens a new one.
    streamChat({ ...options, prompt: "4" });
    assert.equal(WebSocket.made.length, 3);
    WebSocket.last().accept();
    assert.deepEqual(WebSocket.last().sent.map((f) => f.prompt), ["4"]);
  });

  test("cancel() sends the cancel frame and ends with the gateway's cancelled event", async () => {
    const { WebSocket, socket } = wsSetup();
    const { log, callbacks } = recorder();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "long", ...callbacks });
    const ws = WebSocket.last();
    ws.accept();
    const sid = stream.streamId;
    ws.push(wsStart(sid));
    ws.push(wsToken(sid, 1, "partial"));
    const cancelled = stream.cancel();
    assert.equal(stream.cancel(), cancelled); // once
    assert.deepEqual(ws.sent.at(-1), { type: "cancel", stream_id: sid });
    ws.push(wsEvent(sid, 2, "cancelled", { reason: "deleted" }));
    const result = await cancelled;
    assert.equal(result.status, "cancelled");
    assert.deepEqual(result.payload, { reason: "deleted" });
    assert.equal(result.text, "partial");
    assert.deepEqual(log.at(-1), ["cancelled", "deleted"]);
    assert.equal(ws.sent.filter((f) => f.type === "cancel").length, 1);
  });

  test("cancel() ends locally after cancelWait when no cancelled event comes; aborting the "
    + "signal cancels too", async () => {
    const { WebSocket, socket, sleep } = wsSetup();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x", cancelWait: 250 });
    const controller = new AbortController();
    const other = socket.streamChat({ model: "demo/echo", prompt: "y", signal: controller.signal });
    const ws = WebSocket.last();
    ws.accept();
    const result = await stream.cancel();
    assert.equal(result.status, "cancelled");
    assert.deepEqual(result.payload, { reason: "deleted", local: true });
    assert.ok(sleep.delays.includes(250));
    controller.abort();
    await settle();
    assert.deepEqual(ws.sent.filter((f) => f.type === "cancel").map((f) => f.stream_id),
      [stream.streamId, other.streamId]);
    ws.push(wsEvent(other.streamId, 0, "cancelled", { reason: "deleted" }));
    assert.equal((await other.finished).payload.reason, "deleted");
  });

  test("a stream cancelled before its socket opens is never sent", async () => {
    const { WebSocket, socket } = wsSetup();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    const result = await stream.cancel();
    assert.deepEqual(result.payload, { reason: "aborted", local: true });
    await settle();
    WebSocket.last().accept();
    assert.deepEqual(WebSocket.last().sent, []);
  });

  test("a dropped socket reconnects with backoff and resumes each unfinished stream from its "
    + "last id; replayed events are not delivered twice", async () => {
    const { WebSocket, socket, sleep } = wsSetup({ retryDelay: 400 });
    const a = recorder();
    const b = recorder();
    const statesA = [];
    const one = socket.streamChat({ model: "demo/echo", prompt: "one", ...a.callbacks,
      onStateChange: (s) => statesA.push(s) });
    const two = socket.streamChat({ model: "demo/echo", prompt: "two", ...b.callbacks });
    const done = socket.streamChat({ model: "demo/echo", prompt: "three" });
    const socketStates = [];
    socket.options.onStateChange = (s) => socketStates.push(s);
    let ws = WebSocket.last();
    ws.accept();
    ws.push(wsStart(one.streamId));
    ws.push(wsToken(one.streamId, 1, "Hel"));
    ws.push(wsToken(one.streamId, 2, "lo"));
    ws.push(wsStart(two.streamId)); // two has only its start event
    ws.push(wsDone(done.streamId, 0));
    await done.finished;
    ws.drop();
    assert.equal(one.state, "reconnecting");
    await settle();
    assert.equal(WebSocket.made.length, 2);
    assert.deepEqual(sleep.delays, [400]);
    ws = WebSocket.last();
    ws.accept();
    assert.deepEqual(ws.sent, [
      { type: "resume", stream_id: one.streamId, last_event_id: 2 },
      { type: "resume", stream_id: two.streamId, last_event_id: 0 }]);
    // The gateway replays from an earlier position than asked: nothing repeats.
    ws.push(wsToken(one.streamId, 1, "Hel"));
    ws.push(wsToken(one.streamId, 2, "lo"));
    ws.push(wsToken(one.streamId, 3, " world"));
    ws.push(wsDone(one.streamId, 4));
    ws.push(wsStart(two.streamId));
    ws.push(wsToken(two.streamId, 1, "Two"));
    ws.push(wsDone(two.streamId, 2));
    assert.equal((await one.finished).text, "Hello world");
    assert.equal((await two.finished).text, "Two");
    assert.deepEqual(a.tokens(), ["Hel", "lo", " world"]);
    assert.deepEqual(a.log.filter((l) => l[0] === "reconnecting"), [["reconnecting", 1, 400]]);
    assert.deepEqual(b.log.filter((l) => l[0] === "start").length, 1);
    assert.equal(one.stats.duplicatesSkipped, 2);
    assert.equal(one.stats.reconnects, 1);
    assert.deepEqual(statesA, ["connecting", "streaming", "reconnecting", "connecting", "streaming",
      "done"]);
    assert.deepEqual(socketStates, ["open", "reconnecting", "connecting", "open"]);
  });

  test("backoff doubles per failed reconnect, then the streams fail with reconnect_failed",
    async () => {
      const { WebSocket, socket, sleep } = wsSetup({ retryDelay: 100, maxRetries: 3 });
      const { log, callbacks } = recorder();
      const stream = socket.streamChat({ model: "demo/echo", prompt: "x", ...callbacks });
      WebSocket.last().accept();
      WebSocket.last().push(wsStart(stream.streamId));
      WebSocket.last().drop();
      for (let i = 0; i < 3; i++) {
        await settle();
        WebSocket.last().refuse();
      }
      const result = await stream.finished;
      assert.equal(result.status, "error");
      assert.equal(result.error.code, "reconnect_failed");
      assert.match(result.error.message, /after 3 attempt\(s\)/);
      assert.deepEqual(sleep.delays, [100, 200, 400]);
      assert.deepEqual(log.filter((l) => l[0] === "reconnecting").map((l) => l[1]), [1, 2, 3]);
      assert.deepEqual(log.at(-1), ["error", "reconnect_failed"]);
      assert.equal(WebSocket.made.length, 4);
      assert.equal(socket.state, "idle");
      // The next stream opens a new socket.
      socket.streamChat({ model: "demo/echo", prompt: "y" });
      assert.equal(WebSocket.made.length, 5);
    });

  test("a frame after a reconnect resets the attempts", async () => {
    const { WebSocket, socket, sleep } = wsSetup({ retryDelay: 100, maxRetries: 2 });
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    let id = 0;
    WebSocket.last().accept();
    WebSocket.last().push(wsStart(stream.streamId, id));
    for (let round = 0; round < 4; round++) {
      WebSocket.last().drop();
      await settle();
      WebSocket.last().accept();
      WebSocket.last().push(wsToken(stream.streamId, ++id, "t"));
    }
    WebSocket.last().push(wsDone(stream.streamId, ++id));
    const result = await stream.finished;
    assert.equal(result.text, "tttt");
    assert.deepEqual(sleep.delays, [100, 100, 100, 100]);
  });

  test("a socket that drops before the start is answered sends the start again; if the "
    + "gateway has it already (stream_exists), it follows it from the start", async () => {
    const { WebSocket, socket } = wsSetup();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    const sid = stream.streamId;
    WebSocket.last().accept();
    WebSocket.last().drop();
    await settle();
    let ws = WebSocket.last();
    ws.accept();
    assert.deepEqual(ws.sent, [{ type: "start", model: "demo/echo", prompt: "x", stream_id: sid }]);
    ws.push({ type: "error", stream_id: sid,
      error: { code: "stream_exists", message: "stream id in use", param: "stream_id" } });
    assert.deepEqual(ws.sent.at(-1), { type: "resume", stream_id: sid });
    ws.push(wsStart(sid));
    ws.drop(); // and once more, now from id 0
    await settle();
    ws = WebSocket.last();
    ws.accept();
    assert.deepEqual(ws.sent, [{ type: "resume", stream_id: sid, last_event_id: 0 }]);
    ws.push(wsToken(sid, 1, "ok"));
    ws.push(wsDone(sid, 2));
    assert.equal((await stream.finished).text, "ok");
  });

  test("stream_exists on a first start is the caller's error (its own streamId in use)",
    async () => {
      const { WebSocket, socket } = wsSetup();
      const stream = socket.streamChat({ model: "demo/echo", prompt: "x",
        streamId: "my-own-id-0123456789" });
      WebSocket.last().accept();
      assert.equal(WebSocket.last().sent[0].stream_id, "my-own-id-0123456789");
      WebSocket.last().push({ type: "error", stream_id: "my-own-id-0123456789",
        error: { code: "stream_exists", message: "in use", param: null } });
      const result = await stream.finished;
      assert.equal(result.error.code, "stream_exists");
      assert.deepEqual(WebSocket.last().sent.map((f) => f.type), ["start"]);
    });

  test("error frames: onError with the code, message and param; iteration throws the "
    + "GatewayError; a frame naming no stream answers the unanswered starts", async () => {
    const { WebSocket, socket } = wsSetup();
    const onSocketError = [];
    socket.options.onError = (error) => onSocketError.push(error.code);
    const { log, callbacks } = recorder();
    const named = socket.streamChat({ model: "nowhere/x", prompt: "x", ...callbacks });
    const other = socket.streamChat({ model: "demo/echo", prompt: "y" });
    const unnamed = socket.streamChat({ model: "demo/echo", prompt: "z" });
    const ws = WebSocket.last();
    ws.accept();
    ws.push(wsStart(other.streamId));
    ws.push({ type: "error", stream_id: named.streamId, error: { code: "unknown_model",
      message: "unknown model nowhere/x", param: "model" } });
    const result = await named.finished;
    assert.equal(result.status, "error");
    assert.ok(result.error instanceof GatewayError);
    assert.equal(result.error.code, "unknown_model");
    assert.equal(result.error.message, "unknown model nowhere/x");
    assert.equal(result.error.param, "model");
    assert.deepEqual(log, [["error", "unknown_model"]]);
    await assert.rejects(async () => {
      for await (const event of named) assert.fail(`no event expected: ${event.type}`);
    }, (error) => error.code === "unknown_model");
    // Without stream_id: only the start not answered yet fails (other has its start event).
    ws.push({ type: "error", error: { code: "rate_limited", message: "slow down", param: null } });
    assert.equal((await unnamed.finished).error.code, "rate_limited");
    assert.equal(other.state, "streaming");
    // With nothing left to answer it goes to the socket's onError.
    ws.push({ type: "error", error: { code: "invalid_request", message: "bad frame" } });
    assert.deepEqual(onSocketError, ["invalid_request"]);
    ws.push(wsDone(other.streamId, 1));
    assert.equal((await other.finished).status, "done");
  });

  test("a numbered error event is final; an id-less one (store outage) resumes later",
    async () => {
      const { WebSocket, socket, sleep } = wsSetup({ retryDelay: 300 });
      const { log, callbacks } = recorder();
      const stream = socket.streamChat({ model: "demo/echo", prompt: "x", ...callbacks });
      const ws = WebSocket.last();
      ws.accept();
      const sid = stream.streamId;
      ws.push(wsStart(sid));
      ws.push(wsToken(sid, 1, "a"));
      ws.push(wsEvent(sid, null, "error", { code: "internal_error", message: "store away",
        retryable: true }));
      await settle();
      assert.deepEqual(sleep.delays, [300]);
      assert.deepEqual(ws.sent.at(-1), { type: "resume", stream_id: sid, last_event_id: 1 });
      assert.deepEqual(log.filter((l) => l[0] === "reconnecting"), [["reconnecting", 1, 300]]);
      ws.push(wsToken(sid, 2, "b"));
      ws.push(wsEvent(sid, 3, "error", { code: "upstream_timeout", message: "slow provider",
        retryable: true, provider: "openai" }));
      const result = await stream.finished;
      assert.equal(result.error.code, "upstream_timeout");
      assert.equal(result.error.provider, "openai");
      assert.equal(result.text, "ab");
      assert.equal(WebSocket.made.length, 1);
    });

  test("a resume refused as busy is retried with backoff; not_found is final", async () => {
    const { WebSocket, socket, sleep } = wsSetup({ retryDelay: 100 });
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    let ws = WebSocket.last();
    ws.accept();
    const sid = stream.streamId;
    ws.push(wsStart(sid));
    ws.drop();
    await settle();
    ws = WebSocket.last();
    ws.accept();
    ws.push({ type: "error", stream_id: sid, error: { code: "overloaded", message: "busy" },
      retry_after: 2 });
    await settle();
    assert.deepEqual(sleep.delays, [100, 2000]); // the socket's backoff, then Retry-After
    assert.deepEqual(ws.sent.map((f) => f.type), ["resume", "resume"]);
    ws.push({ type: "error", stream_id: sid, error: { code: "too_many_readers", message: "busy" } });
    await settle();
    assert.deepEqual(sleep.delays, [100, 2000, 200]); // its own attempts go on doubling
    assert.deepEqual(ws.sent.map((f) => f.type), ["resume", "resume", "resume"]);
    ws.push({ type: "error", stream_id: sid, error: { code: "not_found", message: "gone" } });
    const result = await stream.finished;
    assert.equal(result.error.code, "not_found");
  });

  test("the first connection failing is a network_error at once, as a POST that cannot "
    + "reach the gateway", async () => {
    const { WebSocket, socket, sleep } = wsSetup();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    WebSocket.last().refuse();
    const result = await stream.finished;
    assert.equal(result.error.code, "network_error");
    assert.match(result.error.message, /could not reach the gateway/);
    assert.deepEqual(sleep.delays, []);
    assert.equal(socket.state, "idle");
  });

  test("an error with no close event after it (undici 5 on a refused handshake) counts as "
    + "the connection failing", async () => {
    const { WebSocket, socket } = wsSetup();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    WebSocket.last().onerror({}); // readyState stays CONNECTING, no close event
    const result = await stream.finished;
    assert.equal(result.error.code, "network_error");
    assert.equal(WebSocket.last().closedWith.code, 1000);
    assert.equal(socket.state, "idle");
  });

  test("a refusing close code (1008, 4000-4999) ends the streams without reconnecting",
    async () => {
      const { WebSocket, socket } = wsSetup();
      const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
      WebSocket.last().accept();
      WebSocket.last().drop(1008, "a stream token opens only its own stream");
      const result = await stream.finished;
      assert.equal(result.error.code, "unauthorized");
      assert.equal(result.error.message, "a stream token opens only its own stream");
      await settle();
      assert.equal(WebSocket.made.length, 1);
    });

  test("a socket closed as too big (1009) fails the unanswered start; the others resume",
    async () => {
      const { WebSocket, socket } = wsSetup();
      const running = socket.streamChat({ model: "demo/echo", prompt: "small" });
      WebSocket.last().accept();
      WebSocket.last().push(wsStart(running.streamId));
      const huge = socket.streamChat({ model: "demo/echo", prompt: "x".repeat(1000) });
      WebSocket.last().drop(1009, "message too big");
      const result = await huge.finished;
      assert.equal(result.error.code, "payload_too_large");
      await settle();
      WebSocket.last().accept();
      assert.deepEqual(WebSocket.last().sent, [{ type: "resume", stream_id: running.streamId,
        last_event_id: 0 }]);
      WebSocket.last().push(wsDone(running.streamId, 1));
      assert.equal((await running.finished).status, "done");
    });

  test("a cancel while the socket is down is sent when it is back", async () => {
    const { WebSocket, socket } = wsSetup();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x" });
    WebSocket.last().accept();
    WebSocket.last().push(wsStart(stream.streamId));
    WebSocket.last().drop();
    const result = await stream.cancel();
    assert.deepEqual(result.payload, { reason: "aborted", local: true });
    await settle();
    WebSocket.last().accept();
    assert.deepEqual(WebSocket.last().sent, [{ type: "cancel", stream_id: stream.streamId }]);
  });

  test("followStream() on a socket resumes from lastEventId; the token goes in the URL",
    async () => {
      const WebSocket = fakeWebSockets();
      const socket = new GatewaySocket({ baseUrl: "https://gw.test", token: "sst_tok", WebSocket });
      const { callbacks, tokens } = recorder();
      const stream = socket.followStream({ streamId: SID, lastEventId: "3", ...callbacks });
      const ws = WebSocket.last();
      assert.equal(ws.url, "wss://gw.test/v1/ws?token=sst_tok");
      ws.accept();
      assert.deepEqual(ws.sent, [{ type: "resume", stream_id: SID, last_event_id: 3 }]);
      ws.push(wsToken(SID, 3, "old"));
      ws.push(wsToken(SID, 4, "new"));
      ws.push(wsDone(SID, 5));
      assert.equal((await stream.finished).text, "new");
      assert.deepEqual(tokens(), ["new"]);
      assert.throws(() => socket.followStream({}), /streamId is required/);
    });

  test("following an ended stream from its end: the ended frame ends it as stream_ended",
    async () => {
      const { WebSocket, socket } = wsSetup();
      const stream = socket.followStream({ streamId: SID, lastEventId: 9 });
      WebSocket.last().accept();
      WebSocket.last().push({ type: "ended", stream_id: SID });
      const result = await stream.finished;
      assert.equal(result.status, "error");
      assert.equal(result.error.code, "stream_ended");
    });

  test("a start sent again after a drop that the gateway answers from its beginning "
    + "(same id and body: a resume) delivers nothing twice", async () => {
    const { WebSocket, socket } = wsSetup();
    const { callbacks, tokens, log } = recorder();
    const stream = socket.streamChat({ model: "demo/echo", prompt: "x", ...callbacks });
    const sid = stream.streamId;
    WebSocket.last().accept();
    WebSocket.last().drop(); // before the start event came: the start is not known to be in
    await settle();
    const ws = WebSocket.last();
    ws.accept();
    assert.deepEqual(ws.sent, [{ type: "start", model: "demo/echo", prompt: "x", stream_id: sid }]);
    ws.push(wsStart(sid));
    ws.push(wsToken(sid, 1, "a"));
    ws.drop();
    await settle();
    WebSocket.last().accept();
    assert.deepEqual(WebSocket.last().sent, [{ type: "resume", stream_id: sid, last_event_id: 1 }]);
    WebSocket.last().push(wsToken(sid, 1, "a"));
    WebSocket.last().push(wsToken(sid, 2, "b"));
    WebSocket.last().push(wsDone(sid, 3));
    assert.equal((await stream.finished).text, "ab");
    assert.deepEqual(tokens(), ["a", "b"]);
    assert.equal(log.filter((l) => l[0] === "start").length, 1);
  });

  test("an API key goes as a bearer subprotocol beside sse-gateway, in a browser too",
    async () => {
      const WebSocket = fakeWebSockets();
      const socket = new GatewaySocket({ baseUrl: "http://gw.test", apiKey: "sk-1", WebSocket });
      socket.streamChat({ model: "demo/echo", prompt: "x" });
      assert.deepEqual(WebSocket.last().protocols, ["sse-gateway", "bearer.sk-1"]);
      const own = new GatewaySocket({ baseUrl: "http://gw.test", apiKey: "sk-2", WebSocket,
        protocols: ["mine"] });
      own.streamChat({ model: "demo/echo", prompt: "x" });
      assert.deepEqual(WebSocket.last().protocols, ["mine", "sse-gateway", "bearer.sk-2"]);
      assert.throws(() => new GatewaySocket({ baseUrl: "http://gw.test", WebSocket: undefined }),
        /has no WebSocket/);
    });

  test("a throwing callback does not break the socket or the other streams", async () => {
    const { WebSocket, socket } = wsSetup();
    const reported = [];
    const original = globalThis.reportError;
    globalThis.reportError = (error) => reported.push(error.message);
    try {
      const bad = socket.streamChat({ model: "demo/echo", prompt: "x",
        onToken: () => { throw new Error("boom"); } });
      const good = socket.streamChat({ model: "demo/echo", prompt: "y" });
      const ws = WebSocket.last();
      ws.accept();
      ws.push(wsToken(bad.streamId, 1, "a"));
      ws.push(wsToken(good.streamId, 1, "b"));
      ws.push(wsDone(bad.streamId, 2));
      ws.push(wsDone(good.streamId, 2));
      assert.equal((await bad.finished).text, "a");
      assert.equal((await good.finished).text, "b");
      assert.deepEqual(reported, ["boom"]);
    } finally {
      globalThis.reportError = original;
    }
  });
});
