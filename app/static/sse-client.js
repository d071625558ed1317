// sse-client.js: a dependency-free browser (and Node >= 18) client for sse-gateway,
// over SSE (fetch) or over one WebSocket (GET /v1/ws) shared by many streams.
//
// Copy this one file into any frontend and import it as an ES module:
//
//   import { streamChat } from "./sse-client.js";
//
//   const stream = streamChat({
//     model: "demo/echo",
//     messages: [{ role: "user", content: "Hello" }],
//     onToken: (text) => output.append(text),
//     onDone: (done) => console.log(done.finish_reason, done.usage),
//     onError: (error) => console.error(error.code, error.message),
//   });
//   stop.onclick = () => stream.cancel();          // DELETE /v1/streams/<id>
//   const result = await stream.finished;          // {status, text, message, ...}; never rejects
//
//   // or, without callbacks:
//   for await (const event of streamChat({ model, prompt: "Hi" })) {
//     if (event.type === "token") output.append(event.payload.content);
//   }                                              // throws a GatewayError on failure
//
// Everything else a model streams has its event and callback: `reasoning`
// (onReasoning(text)), `refusal` (onRefusal(text)), `tool_call` (onToolCall({index, id,
// name})), `tool_call_delta` (onToolCallDelta({index, arguments})), `tool_call_done`
// (onToolCallDone({index, id, name, arguments})). The stream assembles them as they come:
// `stream.message` (also `result.message`) is {role: "assistant", content, tool_calls,
// reasoning, refusal, provider_data}, as GET /v1/streams/<id>?include=message gives it, and
// `stream.assistantMessage()` the message to send back in the next turn's `messages`:
//
//   const stream = streamChat({ model, messages, tools });
//   const result = await stream.finished;
//   if (result.payload?.finish_reason === "tool_calls") {
//     messages.push(stream.assistantMessage());     // {role, content, tool_calls, provider_data}
//     for (const call of result.message.tool_calls) {
//       messages.push({ role: "tool", tool_call_id: call.id, content: run(call.function) });
//     }
//     // ... and stream the next turn with these messages
//   }
//
// The same streams over one WebSocket: the same options, callbacks and results; a dropped
// socket reconnects and resumes every unfinished stream from its last id:
//
//   const a = streamChat({ transport: "websocket", model, prompt: "One", onToken });
//   const b = streamChat({ transport: "websocket", model, prompt: "Two", onToken });
//   // both on one socket to /v1/ws; b.cancel() sends {"type": "cancel", "stream_id"}
//
//   // or a socket of your own (Node 20 has no global WebSocket: pass the ws package's)
//   const socket = new GatewaySocket({ baseUrl: "https://gateway.example", WebSocket });
//   const stream = socket.streamChat({ model, messages, onToken });
//   socket.followStream({ streamId, lastEventId });  // resume frame
//   socket.close();
//
// A browser's WebSocket cannot send an Authorization header: over WebSocket a page uses
// an open gateway (or one behind its own auth proxy), or a stream token for one stream:
// new GatewaySocket({ token }).followStream({ streamId }) (resume and cancel only).
//
// Exports:
//   SSEParser     incremental WHATWG event-stream parser (bytes or strings in, events out)
//   GatewayStream one stream: POST, read, resume from Last-Event-ID, dedupe, cancel
//   GatewaySocket one WebSocket carrying many streams (start, resume, cancel frames)
//   socketUrl(options) the gateway's ws(s):// URL for baseUrl (and ?token=)
//   GatewayError  the error every failure is reported as (code, status, retryAfter, ...)
//   streamChat(options)   new GatewayStream(options).start()
//   followStream(options) follow an existing stream id (GET .../events) from options.lastEventId
//   assistantMessage(message) the next turn's assistant message from an assembled message
//   computeBackoff(attempt, options) the reconnect delay, exposed for tests and UIs

const BOM = "\uFEFF";
const LINE_END = /[\r\n]/g;
const DIGITS = /^[0-9]+$/;
const TERMINAL = new Set(["done", "error", "cancelled"]);
// Events that are part of the answer: the first one is the first token (stats.ttftMs).
const OUTPUT = new Set(["token", "reasoning", "refusal", "tool_call", "tool_call_delta",
  "tool_call_done"]);

// ------------------------------------------------------------------------------------ parser

/**
 * Incremental parser for `text/event-stream`, following the WHATWG HTML
 * "Parsing an event stream" and "Interpreting an event stream" rules.
 *
 * feed() takes Uint8Array/ArrayBuffer chunks (decoded as UTF-8 by one streaming
 * TextDecoder, so a character split across chunks is kept whole) or strings, in
 * any chunking, and returns the events the chunk completed, as plain objects:
 *
 *   { type, data, lastEventId, id }
 *
 * `type` defaults to "message"; `lastEventId` is the event source's last event
 * ID string when the event was dispatched (it persists across events, as in
 * EventSource); `id` is the value of the `id` field given in this event's own
 * block, or null when the block had none (what resume logic compares).
 *
 * `parser.lastEventId` and `parser.retry` (null until a valid `retry:` field)
 * persist across events; comments are counted in `parser.comments` and passed
 * to `onComment(text)`.
 */
export class SSEParser {
  constructor({ lastEventId = "", onEvent = null, onComment = null, onRetry = null } = {}) {
    this.lastEventId = String(lastEventId); // committed at each dispatch
    this.retry = null;
    this.comments = 0;
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.onRetry = onRetry;
    this._decoder = new TextDecoder("utf-8", { ignoreBOM: true }); // BOM handled below
    this._buffer = "";
    this._started = false; // the first character (a possible BOM) was looked at
    this._pendingCR = false; // the last line ended with a CR: skip one LF right after it
    this._idBuffer = this.lastEventId;
    this._blockId = null;
    this._type = "";
    this._data = "";
  }

  /** Consume one chunk; return the events it completed (also passed to onEvent). */
  feed(chunk) {
    let text;
    if (typeof chunk === "string") {
      text = chunk;
    } else if (chunk instanceof ArrayBuffer) {
      text = this._decoder.decode(new Uint8Array(chunk), { stream: true });
    } else if (ArrayBuffer.isView(chunk)) {
      text = this._decoder.decode(chunk, { stream: true });
    } else {
      throw new TypeError("SSEParser.feed: expected a Uint8Array, an ArrayBuffer or a string");
    }
    return this._push(text);
  }

  /**
   * The stream ended: an incomplete event (or line) is discarded, as the
   * standard says. lastEventId and retry are kept. Returns [] (for symmetry).
   */
  end() {
    this._decoder.decode(); // flush and reset the decoder
    this._buffer = "";
    this._pendingCR = false;
    this._started = false;
    this._type = "";
    this._data = "";
    this._blockId = null;
    this._idBuffer = this.lastEventId;
    return [];
  }

  _push(text) {
    const events = [];
    if (!text) return events;
    let buffer = this._buffer + text;
    if (!this._started && buffer.length > 0) {
      this._started = true;
      if (buffer[0] === BOM) buffer = buffer.slice(1);
    }
    let start = 0;
    if (this._pendingCR && buffer.length > 0) {
      this._pendingCR = false;
      if (buffer[0] === "\n") start = 1;
    }
    LINE_END.lastIndex = start;
    let match;
    while ((match = LINE_END.exec(buffer)) !== null) {
      const end = match.index;
      let next = end + 1;
      if (buffer[end] === "\r") {
        if (next < buffer.length) {
          if (buffer[next] === "\n") next += 1;
        } else {
          this._pendingCR = true; // the LF of a CRLF may be the next chunk's first byte
        }
      }
      const event = this._line(buffer.slice(start, end));
      if (event) events.push(event);
      start = next;
      LINE_END.lastIndex = next;
    }
    this._buffer = buffer.slice(start);
    return events;
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line[0] === ":") {
      this.comments += 1;
      if (this.onComment) this.onComment(line.slice(1));
      return null;
    }
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    switch (field) {
      case "event":
        this._type = value;
        break;
      case "data":
        this._data += value + "\n";
        break;
      case "id":
        if (!value.includes("\u0000")) {
          this._idBuffer = value;
          this._blockId = value;
        }
        break;
      case "retry":
        if (DIGITS.test(value)) {
          this.retry = parseInt(value, 10);
          if (this.onRetry) this.onRetry(this.retry);
        }
        break;
      default: // unknown fields are ignored
    }
    return null;
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    const blockId = this._blockId;
    this._blockId = null;
    if (this._data === "") {
      this._type = "";
      return null;
    }
    const event = {
      type: this._type || "message",
      data: this._data.slice(0, -1),
      lastEventId: this.lastEventId,
      id: blockId,
    };
    this._type = "";
    this._data = "";
    if (this.onEvent) this.onEvent(event);
    return event;
  }
}

// ------------------------------------------------------------------------------------ errors

/**
 * Every failure of a GatewayStream. `code` is the gateway's error code
 * (`upstream_timeout`, `unknown_model`, `rate_limited`, ...) or one of the
 * client's own: `network_error`, `reconnect_failed`, `stream_interrupted`,
 * `bad_response`. `status` is the HTTP status for non-2xx answers,
 * `retryAfter` the `Retry-After` in seconds when given, `event` the `error`
 * event when the gateway sent one.
 */
export class GatewayError extends Error {
  constructor(message, { code = "error", status = null, retryAfter = null, param = null,
    retryable = null, provider = null, event = null, cause = undefined } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "GatewayError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.param = param;
    this.retryable = retryable;
    this.provider = provider;
    this.event = event;
  }
}

// ------------------------------------------------------------------------------------ stream

const DEFAULTS = {
  baseUrl: "",
  maxRetries: 5, // reconnect attempts in a row without receiving a new event
  retryDelay: 1000, // ms before the first reconnect when the server sent no `retry:`
  maxRetryDelay: 30000, // cap of the exponential growth (never below the server's retry)
  jitter: 0.2, // up to +20 % random, never below the computed delay
  idleTimeout: 60000, // ms without a byte (pings included) before the connection is deemed dead
  cancelWait: 1000, // ms cancel() waits for the server's `cancelled` event after the DELETE
  deleteOnAbort: true, // options.signal aborting also DELETEs the stream
};

/**
 * The delay before reconnect attempt `attempt` (1, 2, ...): the server's
 * `retry:` (else `retryDelay`) doubled per attempt, capped at
 * max(maxRetryDelay, retry), plus up to `jitter` of it at random, and at least
 * `retryAfterMs` when the server answered 429/503 with Retry-After.
 */
export function computeBackoff(attempt, { retryMs = null, retryDelay = DEFAULTS.retryDelay,
  maxRetryDelay = DEFAULTS.maxRetryDelay, jitter = DEFAULTS.jitter, random = Math.random,
  retryAfterMs = 0 } = {}) {
  const base = retryMs ?? retryDelay;
  const capped = Math.min(base * 2 ** Math.max(0, attempt - 1), Math.max(maxRetryDelay, base));
  const delay = capped * (1 + jitter * random());
  return Math.round(Math.max(delay, retryAfterMs || 0));
}

function abortError(reason) {
  if (reason instanceof Error) return reason;
  const error = new Error(reason === undefined ? "aborted" : String(reason));
  error.name = "AbortError";
  return error;
}

function defaultSleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal.reason));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(abortError(signal.reason));
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === "") return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, (date - now) / 1000);
}

// Call the callback option `name` of `owner` (a stream or a socket), if given; what
// it throws is reported, never thrown into the client's own state machine.
function callOption(owner, name, args) {
  const callback = owner.options[name];
  if (typeof callback !== "function") return;
  try {
    callback.apply(owner, args);
  } catch (error) {
    report(error);
  }
}

function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

function numericId(id) {
  return id != null && DIGITS.test(id) ? Number(id) : null;
}

function now() {
  return globalThis.performance?.now ? globalThis.performance.now() : Date.now();
}

function isEmpty(object) {
  return object == null || typeof object !== "object" || Object.keys(object).length === 0;
}

/**
 * The assistant message of the next turn, from an assembled `message` (a
 * stream's `message`, or the `message` of GET /v1/streams/<id>?include=message):
 * `{role: "assistant", content: text or null, tool_calls (only if any),
 * provider_data (only if any)}`, what POST /v1/streams accepts back unchanged.
 * Reasoning is not sent back (the provider keeps what it needs in provider_data).
 */
export function assistantMessage(message) {
  const next = { role: "assistant", content: message?.content ? message.content : null };
  if (Array.isArray(message?.tool_calls) && message.tool_calls.length) {
    next.tool_calls = message.tool_calls.map((call) => ({
      id: call.id, type: "function",
      function: { name: call.function.name, arguments: call.function.arguments },
    }));
  }
  if (!isEmpty(message?.provider_data)) next.provider_data = structuredClone(message.provider_data);
  return next;
}

/**
 * One gateway stream. Options (all optional except `model` and
 * `messages`/`prompt` when creating):
 *
 *   baseUrl        "" (same origin) or "https://gateway.example"
 *   model, messages | prompt, maxTokens, temperature, fallbacks, resumeGraceS, tools,
 *   toolChoice, reasoning, responseFormat, stop, topP, seed, metadata
 *                  the request body (snake_case names are accepted too; `body` adds fields)
 *   apiKey         sent as `Authorization: Bearer <apiKey>`
 *   streamId       sent as `X-Stream-ID` (16-128 of A-Z a-z 0-9 _ -); over a WebSocket
 *                  made here when not given, so that every frame names its stream
 *   transport      "sse" (default) or "websocket": the stream goes over the socket the
 *                  page's WebSocket streams share (per URL and key; see GatewaySocket,
 *                  whose baseUrl, token, WebSocket and retry options it takes)
 *   socket         a GatewaySocket to carry this stream (implies "websocket")
 *   follow         true: do not POST; follow `streamId` with GET .../events from `lastEventId`
 *   signal         an AbortSignal: aborting it cancels the stream (see deleteOnAbort)
 *   maxRetries, retryDelay, maxRetryDelay, jitter, idleTimeout, cancelWait, deleteOnAbort
 *                  see DEFAULTS above (over a WebSocket the socket's retry settings
 *                  apply, and no idleTimeout: the gateway's pings are WebSocket pings)
 *   headers        extra request headers
 *   fetch, sleep, random, now  injectable (tests)
 *   onStart(payload, event), onToken(text, event), onReasoning(text, event),
 *   onRefusal(text, event), onToolCall({index, id, name}, event),
 *   onToolCallDelta({index, arguments}, event),
 *   onToolCallDone({index, id, name, arguments}, event), onDone(payload, event),
 *   onError(error: GatewayError, event|null), onCancelled(payload, event),
 *   onReconnecting(attempt, delayMs, cause), onEvent(event), onStateChange(state),
 *   onComment(text)
 *
 * Events (callbacks and iteration) are the parser's events plus `payload`,
 * the JSON data parsed. Properties: streamId, lastEventId, state, text (the
 * token events' text), reasoning, refusal, message (the assembled answer, see
 * the top of this file), model, retryMs, stats, finished (a Promise of
 * {status, text, message, payload, error, ...}). assistantMessage() gives the
 * next turn's assistant message. A resumed stream skips the events it already
 * had, so every concatenation stays exact.
 *
 * States: idle, connecting, streaming, reconnecting, then one of done, error,
 * cancelled.
 *
 * A numbered `error` event ends the stream. An `error` event without an id
 * (the gateway could not reach its stream store: `internal_error`, "resume
 * later") does not: the stream goes on from the last id after the usual
 * backoff, and onReconnecting gets that error as its cause.
 */
export class GatewayStream {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.streamId = options.streamId ?? null;
    this.lastEventId = options.follow && options.lastEventId != null
      ? String(options.lastEventId) : null;
    this.state = "idle";
    this.text = "";
    this.reasoning = "";
    this.refusal = "";
    this.providerData = null; // done.provider_data
    this._calls = new Map(); // tool calls by index: {id, name, arguments}
    this.model = options.model ?? null;
    this.retryMs = null;
    this.events = []; // every event delivered, in order (what iterators read)
    this.outcome = null; // {status, ...} once finished
    this.error = null;
    this._lastDelivered = numericId(this.lastEventId);
    // WebSocket mode: the GatewaySocket that carries this stream (with other streams).
    this._socket = options.socket
      ?? (options.transport === "websocket" ? sharedSocket(options) : null);
    if (options.transport != null && !["sse", "websocket"].includes(options.transport)) {
      throw new TypeError(`transport: "sse" or "websocket", not ${JSON.stringify(options.transport)}`);
    }
    if (this._socket && !this.streamId) this.streamId = newStreamId();
    this._wsAttempt = 0; // WebSocket mode: resumes in a row that brought no event
    this._wsSent = false; // WebSocket mode: a start or resume frame went out for this stream
    this._wsAcked = false; // WebSocket mode: the gateway sent an event of this stream
    this._wsStarts = 0; // WebSocket mode: start frames sent (a second one follows a drop)
    this._wsResume = false; // WebSocket mode: attach with resume frames from now on
    this._wsWaiting = false; // WebSocket mode: waiting out a backoff of its own
    const fetchImpl = options.fetch;
    // Called as a plain function: `fetch: window.fetch` must not get the stream as `this`.
    this._fetch = fetchImpl
      ? (...args) => fetchImpl(...args)
      : (...args) => globalThis.fetch(...args);
    this._sleep = options.sleep ?? defaultSleep;
    this._random = options.random ?? Math.random;
    this._now = options.now ?? now;
    this._stopper = new AbortController(); // aborted when the stream is over (cancel, end)
    this._connection = null; // the AbortController of the current request
    this._started = false;
    this._cancelling = null;
    this._waiters = new Set();
    this._stats = { startedAt: null, firstTokenAt: null, lastTokenAt: null, endedAt: null,
      tokens: 0, outputs: 0, chars: 0, reconnects: 0, duplicates: 0, comments: 0 };
    this.finished = new Promise((resolve) => { this._resolve = resolve; });
    if (options.signal) {
      const onAbort = () => {
        if (this.options.deleteOnAbort) this.cancel();
        else this._finishCancelled({ reason: "aborted" }, null);
      };
      if (options.signal.aborted) queueMicrotask(onAbort);
      else options.signal.addEventListener("abort", onAbort, { once: true });
    }
  }

  /** Start the request (once); returns this. Iterating starts it too. */
  start() {
    if (!this._started) {
      this._started = true;
      this._stats.startedAt = this._now();
      this._run().catch((error) => this._fail(error));
    }
    return this;
  }

  /** Live figures of this answer. */
  get stats() {
    const s = this._stats;
    const until = s.endedAt ?? this._now();
    const ttftMs = s.firstTokenAt == null ? null : s.firstTokenAt - s.startedAt;
    const span = s.lastTokenAt == null ? 0 : (s.lastTokenAt - s.firstTokenAt) / 1000;
    return {
      ttftMs, // until the first output event (token, reasoning, refusal or tool call)
      tokensPerSecond: s.outputs >= 2 && span > 0 ? (s.outputs - 1) / span : null,
      tokens: s.tokens, // token events (the gateway may merge provider deltas)
      outputs: s.outputs, // output events of every kind
      chars: s.chars,
      elapsedMs: s.startedAt == null ? 0 : until - s.startedAt,
      lastEventId: this.lastEventId,
      reconnects: s.reconnects,
      duplicatesSkipped: s.duplicates,
      comments: s.comments,
    };
  }

  get done() {
    return this.outcome !== null;
  }

  /**
   * The answer assembled from the events so far, as the status route's
   * `?include=message` gives it: {role: "assistant", content, tool_calls
   * ([{id, type: "function", function: {name, arguments}}] in index order, or
   * null), reasoning (or null), refusal (or null), provider_data (or null)}.
   * A fresh object each time.
   */
  get message() {
    const calls = [...this._calls.entries()].sort((a, b) => a[0] - b[0]).map(([, call]) => ({
      id: call.id, type: "function", function: { name: call.name, arguments: call.arguments },
    }));
    return {
      role: "assistant",
      content: this.text,
      tool_calls: calls.length ? calls : null,
      reasoning: this.reasoning || null,
      refusal: this.refusal || null,
      provider_data: this.providerData == null ? null : structuredClone(this.providerData),
    };
  }

  /** The next turn's assistant message (see the exported assistantMessage). */
  assistantMessage() {
    return assistantMessage(this.message);
  }

  /**
   * Stop the stream: DELETE /v1/streams/<id> (so the provider request is
   * closed), wait up to `cancelWait` ms for the gateway's `cancelled` event,
   * then stop reading. Resolves with the outcome.
   */
  cancel() {
    if (this.outcome) return this.finished;
    if (this._cancelling) return this._cancelling;
    if (this._socket) {
      this._cancelling = this._socket._cancel(this);
      return this._cancelling;
    }
    this._cancelling = (async () => {
      let deleted = null;
      if (this.streamId) {
        try {
          const url = this._url(`/v1/streams/${encodeURIComponent(this.streamId)}`);
          const response = await this._fetch(url, {
            method: "DELETE", headers: this._headers(), cache: "no-store",
          });
          deleted = response.ok;
          response.body?.cancel?.().catch(() => {});
        } catch {
          deleted = false;
        }
        if (deleted && !this.outcome && this.state === "streaming") {
          await Promise.race([
            this.finished,
            this._sleep(this.options.cancelWait, this._stopper.signal).catch(() => {}),
          ]);
        }
      }
      if (!this.outcome) {
        this._finishCancelled({ reason: deleted ? "deleted" : "aborted", local: true }, null);
      }
      return this.finished;
    })();
    return this._cancelling;
  }

  /** Yields every event; ends after done/cancelled; throws the GatewayError on failure. */
  [Symbol.asyncIterator]() {
    this.start();
    let index = 0;
    let over = false;
    return {
      next: async () => {
        for (;;) {
          if (over) return { value: undefined, done: true };
          if (index < this.events.length) {
            const event = this.events[index++];
            if (event.type === "error" && this.outcome?.event === event) {
              over = true;
              throw this.error;
            }
            return { value: event, done: false };
          }
          if (this.outcome) {
            over = true;
            if (this.outcome.status === "error") throw this.error;
            return { value: undefined, done: true };
          }
          await new Promise((resolve) => this._waiters.add(resolve));
        }
      },
      return: async () => {
        over = true;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() { return this; },
    };
  }

  // -------------------------------------------------------------------------- internals

  _url(path) {
    return String(this.options.baseUrl || "").replace(/\/+$/, "") + path;
  }

  _headers(extra = {}) {
    const headers = { ...(this.options.headers || {}), ...extra };
    if (this.options.apiKey) headers.Authorization = `Bearer ${this.options.apiKey}`;
    return headers;
  }

  _body() {
    const o = this.options;
    const body = { model: o.model };
    if (o.messages != null) body.messages = o.messages;
    else if (o.prompt != null) body.prompt = o.prompt;
    const pick = (camel, snake) => o[camel] ?? o[snake];
    const fields = [["maxTokens", "max_tokens"], ["temperature", "temperature"],
      ["fallbacks", "fallbacks"], ["resumeGraceS", "resume_grace_s"], ["tools", "tools"],
      ["toolChoice", "tool_choice"], ["reasoning", "reasoning"],
      ["responseFormat", "response_format"], ["stop", "stop"], ["topP", "top_p"],
      ["seed", "seed"], ["metadata", "metadata"]];
    for (const [camel, snake] of fields) {
      const value = pick(camel, snake);
      if (value != null) body[snake] = value;
    }
    return { ...body, ...(o.body || {}) };
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._call("onStateChange", state);
  }

  _call(name, ...args) {
    callOption(this, name, args);
  }

  _wake() {
    const waiters = [...this._waiters];
    this._waiters.clear();
    for (const resolve of waiters) resolve();
  }

  async _run() {
    if (this._socket) {
      this._socket._add(this);
      return;
    }
    this._setState("connecting");
    let response = this.options.follow ? await this._resumeOnce(true) : await this._create();
    let attempt = 0;
    let cause = null;
    for (;;) {
      if (this.outcome) return;
      if (response) {
        const before = this.events.length;
        this._setState("streaming");
        cause = await this._consume(response);
        response = null;
        if (this.outcome) return;
        if (this.events.length > before) attempt = 0; // progress: a fresh budget of retries
      }
      if (!this.streamId) {
        throw new GatewayError("the connection was lost before the gateway named the stream",
          { code: "stream_interrupted", cause });
      }
      attempt += 1;
      if (attempt > this.options.maxRetries) {
        throw new GatewayError("lost the connection to the gateway and could not resume "
          + `stream ${this.streamId} after ${this.options.maxRetries} attempt(s)`
          + (cause?.message ? ` (last: ${cause.message})` : ""),
        { code: "reconnect_failed", cause, status: cause?.status ?? null });
      }
      const delay = computeBackoff(attempt, {
        retryMs: this.retryMs, retryDelay: this.options.retryDelay,
        maxRetryDelay: this.options.maxRetryDelay, jitter: this.options.jitter,
        random: this._random, retryAfterMs: cause?.retryAfter ? cause.retryAfter * 1000 : 0,
      });
      this._stats.reconnects += 1;
      this._setState("reconnecting");
      this._call("onReconnecting", attempt, delay, cause);
      try {
        await this._sleep(delay, this._stopper.signal);
      } catch {
        return; // stopped while waiting
      }
      if (this.outcome) return;
      this._setState("connecting");
      try {
        response = await this._resumeOnce(false);
      } catch (error) {
        if (this.outcome) return;
        if (!(error instanceof GatewayError) || !error.resumable) throw error;
        cause = error;
      }
    }
  }

  _newConnection() {
    const controller = new AbortController();
    this._connection = controller;
    return controller;
  }

  async _create() {
    const controller = this._newConnection();
    const headers = this._headers({ "Content-Type": "application/json",
      Accept: "text/event-stream" });
    if (this.streamId) headers["X-Stream-ID"] = this.streamId;
    let response;
    try {
      response = await this._fetch(this._url("/v1/streams"), {
        method: "POST", headers, body: JSON.stringify(this._body()), cache: "no-store",
        signal: controller.signal,
      });
    } catch (error) {
      if (this.outcome) return null;
      throw new GatewayError(`could not reach the gateway: ${error?.message || error}`,
        { code: "network_error", cause: error });
    }
    if (!response.ok) throw await this._httpError(response);
    this.streamId = response.headers.get("X-Stream-ID") || this.streamId;
    return response;
  }

  // One GET .../events. Throws a GatewayError with `resumable` true for answers
  // worth retrying (network failure, 429, 5xx) and false for final ones (404, 410...).
  async _resumeOnce(initial) {
    const controller = this._newConnection();
    const headers = this._headers({ Accept: "text/event-stream" });
    if (this.lastEventId != null && this.lastEventId !== "") {
      headers["Last-Event-ID"] = this.lastEventId;
    }
    let response;
    try {
      response = await this._fetch(
        this._url(`/v1/streams/${encodeURIComponent(this.streamId)}/events`),
        { method: "GET", headers, cache: "no-store", signal: controller.signal });
    } catch (error) {
      const wrapped = new GatewayError(`could not reach the gateway: ${error?.message || error}`,
        { code: "network_error", cause: error });
      wrapped.resumable = !initial;
      throw wrapped;
    }
    if (!response.ok) {
      const error = await this._httpError(response);
      error.resumable = !initial && (response.status === 429 || response.status >= 500);
      throw error;
    }
    return response;
  }

  async _httpError(response) {
    let code = `http_${response.status}`;
    let message = `the gateway answered ${response.status} ${response.statusText || ""}`.trim();
    let param = null;
    try {
      const body = await response.json();
      if (body?.error) {
        code = body.error.code || code;
        message = body.error.message || message;
        param = body.error.param ?? null;
      }
    } catch {
      // not JSON: keep the status line
    }
    return new GatewayError(message, { code, status: response.status, param,
      retryAfter: parseRetryAfter(response.headers.get("Retry-After")) });
  }

  // Read one response body to its end. Returns null when a terminal event
  // arrived (or the stream was stopped), else the reason to resume.
  async _consume(response) {
    const controller = this._connection;
    if (!response.body) return new GatewayError("the answer had no body", { code: "bad_response" });
    const reader = response.body.getReader();
    const parser = new SSEParser({
      lastEventId: this.lastEventId ?? "",
      onComment: (text) => {
        this._stats.comments += 1;
        this._call("onComment", text);
      },
      onRetry: (ms) => { this.retryMs = ms; },
    });
    let idleTimer = null;
    let idle = false;
    const armIdle = () => {
      if (!this.options.idleTimeout) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        idle = true;
        controller.abort();
      }, this.options.idleTimeout);
    };
    const stopped = () => this.outcome !== null;
    const onStop = () => reader.cancel().catch(() => {});
    this._stopper.signal.addEventListener("abort", onStop, { once: true });
    try {
      armIdle();
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          if (stopped()) return null;
          if (idle) {
            return new GatewayError(`no data for ${this.options.idleTimeout} ms`,
              { code: "network_error", cause: error });
          }
          return new GatewayError(`the connection broke: ${error?.message || error}`,
            { code: "network_error", cause: error });
        }
        if (stopped()) return null;
        if (chunk.done) {
          parser.end();
          return new GatewayError("the stream ended without a terminal event",
            { code: "stream_interrupted" });
        }
        armIdle();
        for (const event of parser.feed(chunk.value)) {
          if (event.type === "error" && event.id === null) {
            // Unnumbered: the gateway lost its stream store, not the stream.
            // Resume from the last id (with the usual backoff), as the README says.
            reader.cancel().catch(() => {});
            return this._outage(event);
          }
          this._deliver(event);
          if (this.outcome) {
            reader.cancel().catch(() => {});
            return null;
          }
        }
      }
    } finally {
      clearTimeout(idleTimer);
      this._stopper.signal.removeEventListener("abort", onStop);
    }
  }

  // The reason to resume after an id-less error event (reported to onReconnecting).
  _outage(raw) {
    let payload = null;
    try {
      payload = JSON.parse(raw.data);
    } catch {
      payload = null;
    }
    return new GatewayError(payload?.message || "the gateway could not serve the stream; resuming",
      { code: payload?.code || "internal_error", retryable: payload?.retryable ?? true,
        provider: payload?.provider ?? null, event: { ...raw, payload } });
  }

  // `payload`: the data already parsed (WebSocket frames carry it as JSON, not text).
  _deliver(raw, payload = undefined) {
    const n = numericId(raw.id);
    if (n !== null && this._lastDelivered !== null && n <= this._lastDelivered) {
      this._stats.duplicates += 1;
      return;
    }
    if (payload === undefined) {
      try {
        payload = JSON.parse(raw.data);
      } catch {
        payload = null;
      }
    }
    const event = { ...raw, payload };
    if (raw.id !== null) {
      this.lastEventId = raw.id;
      if (n !== null) this._lastDelivered = n;
    }
    this.events.push(event);
    if (OUTPUT.has(event.type)) {
      const t = this._now();
      if (this._stats.firstTokenAt == null) this._stats.firstTokenAt = t;
      this._stats.lastTokenAt = t;
      this._stats.outputs += 1;
    }
    this._call("onEvent", event);
    switch (event.type) {
      case "start":
        if (payload?.stream_id && !this.streamId) this.streamId = payload.stream_id;
        if (payload?.model) this.model = payload.model;
        this._call("onStart", payload, event);
        break;
      case "token": {
        const text = typeof payload?.content === "string" ? payload.content : "";
        this._stats.tokens += 1;
        this._stats.chars += text.length;
        this.text += text;
        this._call("onToken", text, event);
        break;
      }
      case "reasoning": {
        const text = typeof payload?.content === "string" ? payload.content : "";
        this.reasoning += text;
        this._call("onReasoning", text, event);
        break;
      }
      case "refusal": {
        const text = typeof payload?.content === "string" ? payload.content : "";
        this.refusal += text;
        this._call("onRefusal", text, event);
        break;
      }
      case "tool_call":
      case "tool_call_delta":
      case "tool_call_done":
        this._toolCall(event);
        break;
      case "done":
        if (payload?.model) this.model = payload.model;
        if (!isEmpty(payload?.provider_data)) this.providerData = payload.provider_data;
        this._finish({ status: "done", payload, event });
        this._call("onDone", payload, event);
        break;
      case "cancelled":
        this._finishCancelled(payload, event);
        break;
      case "error": {
        const error = new GatewayError(payload?.message || "the stream failed", {
          code: payload?.code || "error", retryable: payload?.retryable ?? null,
          provider: payload?.provider ?? null, event });
        this._finish({ status: "error", payload, event, error });
        this._call("onError", error, event);
        break;
      }
      default:
    }
    if (!TERMINAL.has(event.type)) this._wake();
  }

  // tool_call, tool_call_delta and tool_call_done: assembled by index. A call
  // first seen by a later event (a stream followed from a later position) is
  // kept with what that event says; tool_call_done's whole arguments win.
  _toolCall(event) {
    const payload = event.payload;
    const index = Number.isInteger(payload?.index) ? payload.index : null;
    if (index === null) return;
    let call = this._calls.get(index);
    if (!call) {
      call = { id: null, name: null, arguments: "" };
      this._calls.set(index, call);
    }
    if (typeof payload.id === "string") call.id = payload.id;
    if (typeof payload.name === "string") call.name = payload.name;
    if (event.type === "tool_call") {
      this._call("onToolCall", payload, event);
    } else if (event.type === "tool_call_delta") {
      if (typeof payload.arguments === "string") call.arguments += payload.arguments;
      this._call("onToolCallDelta", payload, event);
    } else {
      if (typeof payload.arguments === "string") call.arguments = payload.arguments;
      this._call("onToolCallDone", payload, event);
    }
  }

  // ------------------------------------------------------------------ WebSocket mode

  // One server frame {stream_id, id, event, data} of this stream (from its GatewaySocket).
  _wsEvent(frame) {
    if (this.outcome) return;
    const id = frame.id == null ? null : String(frame.id);
    const data = frame.data === undefined ? null : frame.data;
    const raw = { type: frame.event, data: JSON.stringify(data), lastEventId: id ?? this.lastEventId ?? "",
      id };
    if (raw.type === "error" && id === null) {
      // Unnumbered: the gateway lost its stream store, not the stream (as in SSE mode).
      this._socket._retry(this, this._outage(raw));
      return;
    }
    this._wsAcked = true;
    if (this.state !== "streaming") this._setState("streaming");
    const before = this.events.length;
    this._deliver(raw, data);
    if (this.events.length > before) this._wsAttempt = 0; // progress: a fresh budget
  }

  // An error frame for this stream: the start or resume it answered was refused.
  _wsError(error) {
    if (this.outcome) return;
    if (error.code === "stream_exists" && this._wsStarts > 1 && !this._wsAcked) {
      // Our start reached the gateway before the socket dropped: follow it instead.
      this._wsResume = true;
      this._socket._hello(this);
      return;
    }
    if ((this._wsAcked || this._wsResume) && RETRY_CODES.has(error.code)) {
      this._socket._retry(this, error);
      return;
    }
    this._fail(error);
  }

  _wsReconnecting(attempt, delay, cause) {
    this._stats.reconnects += 1;
    this._setState("reconnecting");
    this._call("onReconnecting", attempt, delay, cause);
  }

  _finishCancelled(payload, event) {
    if (this.outcome) return;
    this._finish({ status: "cancelled", payload, event });
    this._call("onCancelled", payload, event);
  }

  _fail(error) {
    if (this.outcome) return;
    const wrapped = error instanceof GatewayError ? error
      : new GatewayError(error?.message || String(error), { code: "internal_error", cause: error });
    this._finish({ status: "error", payload: null, event: null, error: wrapped });
    this._call("onError", wrapped, null);
  }

  _finish({ status, payload, event, error = null }) {
    if (this.outcome) return;
    this._stats.endedAt = this._now();
    this.error = error;
    this.outcome = { status, text: this.text, message: this.message, payload, event, error,
      streamId: this.streamId, lastEventId: this.lastEventId, stats: null };
    this.outcome.stats = this.stats;
    this._setState(status);
    this._stopper.abort();
    this._connection?.abort();
    this._socket?._forget(this);
    this._resolve(this.outcome);
    this._wake();
  }
}

// --------------------------------------------------------------------------------- websocket

// Close codes after which reconnecting cannot help: a policy refusal (1008) and the
// application range (4000-4999, e.g. an unknown or expired credential).
const finalClose = (code) => code === 1008 || (code >= 4000 && code <= 4999);
// Error frames that answer a resume and are worth another try (SSE mode retries their
// 429 and 5xx answers): the gateway was busy or briefly without its store.
const RETRY_CODES = new Set(["rate_limited", "too_many_streams", "too_many_readers",
  "overloaded", "internal_error"]);
const TOO_BIG = 1009; // the gateway closes a socket whose frame is over its body limit
const OPEN = 1; // WebSocket.OPEN

/** A fresh stream id: 128 random bits, URL-safe (what X-Stream-ID accepts). */
function newStreamId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
    .replace(/=+$/, "");
}

/**
 * The gateway's WebSocket URL: `url` as given, else `baseUrl` + "/v1/ws" (the page's
 * origin when both are empty), http(s) turned into ws(s), plus `?token=` when given.
 */
export function socketUrl({ url = null, baseUrl = "", token = null } = {}) {
  const path = url || `${String(baseUrl || "").replace(/\/+$/, "")}/v1/ws`;
  const base = globalThis.location?.href;
  if (!base && !/^[a-z][a-z0-9+.-]*:/i.test(path)) {
    throw new TypeError("GatewaySocket: outside a page, give baseUrl (http://host:port) or url");
  }
  const target = new URL(path, base);
  if (target.protocol === "http:") target.protocol = "ws:";
  else if (target.protocol === "https:") target.protocol = "wss:";
  if (token) target.searchParams.set("token", token);
  return target.href;
}

const SHARED = []; // the sockets streamChat({transport: "websocket"}) shares, one per URL and key

function sharedSocket(options) {
  const url = socketUrl(options);
  const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  const apiKey = options.apiKey ?? null;
  let socket = SHARED.find((s) => s.url === url && s._WebSocket === WebSocketImpl
    && (s.options.apiKey ?? null) === apiKey);
  if (!socket) {
    const pick = ["maxRetries", "retryDelay", "maxRetryDelay", "jitter", "sleep", "random"];
    const settings = Object.fromEntries(pick.filter((k) => options[k] !== undefined)
      .map((k) => [k, options[k]]));
    socket = new GatewaySocket({ ...settings, url, apiKey, WebSocket: WebSocketImpl });
    SHARED.push(socket);
  }
  return socket;
}

/**
 * One WebSocket to the gateway (GET /v1/ws) that carries any number of streams at
 * once, each a GatewayStream with the callbacks, results and iteration of SSE mode.
 *
 *   const socket = new GatewaySocket({ baseUrl: "" });          // same origin
 *   const a = socket.streamChat({ model, prompt: "One", onToken });
 *   const b = socket.streamChat({ model, prompt: "Two", onToken });
 *   b.cancel();                                                 // {"type": "cancel"}
 *   await a.finished;
 *
 * `streamChat({transport: "websocket", ...})` does the same on a socket shared by
 * every such stream of the page with the same URL and key.
 *
 * Frames: each stream goes out as {"type": "start", "stream_id", ...the POST body}
 * with an id made here (so that every answer, error frames included, names its
 * stream); events come back as {"stream_id", "id", "event", "data"}. A dropped
 * socket reconnects with computeBackoff() delays and sends {"type": "resume",
 * "stream_id", "last_event_id"} for each unfinished stream; events it already had
 * are skipped by id. A start whose socket dropped before any answer is sent again,
 * (the gateway resumes a start it has of the same id and body). After `maxRetries` attempts
 * without a frame, the unfinished streams fail with `reconnect_failed`. An idle
 * socket that drops reconnects when the next stream starts.
 *
 * Options: baseUrl | url, token (a stream token, sent as ?token=: that one stream's
 * resume and cancel only), apiKey (sent as the subprotocol `bearer.<apiKey>` beside
 * `sse-gateway`, since a browser's WebSocket cannot send headers: keep keys to
 * `A-Z a-z 0-9 . _ -`),
 * protocols, WebSocket (the constructor: Node 20 has none, pass the `ws` package's),
 * maxRetries, retryDelay, maxRetryDelay, jitter, sleep, random, onStateChange(state)
 * (idle, connecting, open, reconnecting, closed), onError(GatewayError) (error frames
 * that name no stream of this socket).
 */
export class GatewaySocket {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = socketUrl(options);
    this.state = "idle";
    this.closed = false;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("GatewaySocket: this runtime has no WebSocket (Node < 22): pass the "
        + "WebSocket option, e.g. the ws package's");
    }
    this._sleep = options.sleep ?? defaultSleep;
    this._random = options.random ?? Math.random;
    this._ws = null;
    this._streams = new Map(); // the unfinished streams by id
    this._cancels = new Set(); // ids whose cancel frame waits for the socket to reopen
    this._attempt = 0; // reconnects in a row without a frame
    this._stopper = new AbortController(); // aborted by close()
    this.stats = { connects: 0, reconnects: 0, framesIn: 0, framesOut: 0 };
  }

  /** Start a stream on this socket: the options and result of the module's streamChat. */
  streamChat(options) {
    return new GatewayStream({ ...options, socket: this }).start();
  }

  /** Follow an existing stream on this socket from `options.lastEventId` (resume frame). */
  followStream(options) {
    if (!options?.streamId) throw new TypeError("followStream: streamId is required");
    return new GatewayStream({ ...options, socket: this, follow: true }).start();
  }

  /**
   * Close the socket for good. Its unfinished streams end `cancelled` here (reason
   * "closed", local: true); the gateway treats that as their clients leaving
   * (generation goes on for resume_grace_s, then stops).
   */
  close(code = 1000, reason = "") {
    if (this.closed) return;
    this.closed = true;
    this._stopper.abort();
    const shared = SHARED.indexOf(this);
    if (shared !== -1) SHARED.splice(shared, 1);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    for (const stream of [...this._streams.values()]) {
      stream._finishCancelled({ reason: "closed", local: true }, null);
    }
    this._streams.clear();
    this._cancels.clear();
    this._setState("closed");
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._callback("onStateChange", state);
  }

  _callback(name, ...args) {
    callOption(this, name, args);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
    } catch {
      return false;
    }
    this.stats.framesOut += 1;
    return true;
  }

  // A stream's run(): send it now, or once the socket is open.
  _add(stream) {
    if (this.closed) {
      stream._fail(new GatewayError("this GatewaySocket is closed", { code: "network_error" }));
      return;
    }
    if (this._streams.has(stream.streamId)) {
      stream._fail(new GatewayError(`stream ${stream.streamId} is already on this socket`,
        { code: "stream_exists" }));
      return;
    }
    this._streams.set(stream.streamId, stream);
    if (this.state === "open") {
      this._hello(stream);
    } else {
      stream._setState("connecting");
      if (!this._ws && this.state !== "reconnecting") this._connect();
    }
  }

  // A stream ended: the socket stops routing frames to it.
  _forget(stream) {
    if (this._streams.get(stream.streamId) === stream) this._streams.delete(stream.streamId);
  }

  // (Re)attach a stream: its start frame, or a resume from its last id.
  _hello(stream) {
    let frame;
    if (stream.options.follow || stream._wsAcked || stream._wsResume) {
      frame = { type: "resume", stream_id: stream.streamId };
      const last = numericId(stream.lastEventId);
      if (last !== null) frame.last_event_id = last;
    } else {
      frame = { type: "start", ...stream._body(), stream_id: stream.streamId };
    }
    if (!this._send(frame)) return;
    if (frame.type === "start") stream._wsStarts += 1;
    stream._wsSent = true;
    stream._setState("streaming");
  }

  _open() {
    const { apiKey, protocols } = this.options;
    if (apiKey) {
      // A browser's WebSocket sends no headers: the key travels as a subprotocol
      // (the gateway reads it as "Authorization: Bearer <key>" and picks sse-gateway).
      return new this._WebSocket(this.url, [...(protocols || []), "sse-gateway",
        `bearer.${apiKey}`]);
    }
    return protocols ? new this._WebSocket(this.url, protocols) : new this._WebSocket(this.url);
  }

  _connect() {
    if (this.closed || this._ws) return;
    for (const stream of this._streams.values()) {
      if (!stream._wsWaiting) stream._setState("connecting");
    }
    this._setState("connecting");
    let ws;
    try {
      ws = this._open();
    } catch (error) {
      const failure = new GatewayError(`could not open the WebSocket: ${error?.message || error}`,
        { code: "network_error", cause: error });
      for (const stream of [...this._streams.values()]) stream._fail(failure);
      this._cancels.clear();
      this._attempt = 0;
      this._setState("idle");
      return;
    }
    this._ws = ws;
    this.stats.connects += 1;
    try {
      ws.binaryType = "arraybuffer";
    } catch {
      // not settable: text frames only
    }
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._setState("open");
      for (const id of this._cancels) this._send({ type: "cancel", stream_id: id });
      this._cancels.clear();
      for (const stream of [...this._streams.values()]) {
        if (!stream._wsWaiting) this._hello(stream);
      }
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._frame(event.data);
    };
    ws.onerror = () => {
      // The close event that follows decides; but a WebSocket that fails before opening
      // and never closes (undici 5, on a refused handshake such as a 401) counts as closed.
      setTimeout(() => {
        if (this._ws !== ws || ws.readyState !== 0) return;
        try {
          ws.close();
        } catch {
          // never opened
        }
        this._dropped({ code: 1006 });
      }, 0);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._dropped(event ?? {});
    };
  }

  _frame(data) {
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      return; // not JSON: nothing this client understands
    }
    if (frame === null || typeof frame !== "object") return;
    this.stats.framesIn += 1;
    this._attempt = 0; // the gateway answers: a fresh budget of reconnects
    if (frame.type === "error") {
      this._errorFrame(frame);
      return;
    }
    if (frame.type === "ended") {
      // A resume at or past the end of an ended stream (SSE's 204): nothing follows.
      this._streams.get(frame.stream_id)?._fail(new GatewayError(`stream ${frame.stream_id} `
        + "has ended: no event follows the position asked for", { code: "stream_ended" }));
      return;
    }
    if (typeof frame.stream_id !== "string" || typeof frame.event !== "string") return; // newer
    this._streams.get(frame.stream_id)?._wsEvent(frame);
  }

  _errorFrame(frame) {
    const body = frame.error !== null && typeof frame.error === "object" ? frame.error : {};
    const error = () => new GatewayError(body.message || "the gateway refused the request", {
      code: body.code || "error", param: body.param ?? null,
      retryAfter: typeof frame.retry_after === "number" ? frame.retry_after : null,
      event: frame });
    // No stream named: it answers the frames still unanswered (a refused start).
    const targets = typeof frame.stream_id === "string"
      ? [this._streams.get(frame.stream_id)].filter(Boolean)
      : [...this._streams.values()].filter((s) => s._wsSent && !s._wsAcked);
    if (!targets.length) this._callback("onError", error());
    for (const stream of targets) stream._wsError(error());
  }

  _dropped(event) {
    this._ws = null;
    if (this.closed) return;
    const why = event.code ? ` (${event.code}${event.reason ? `: ${event.reason}` : ""})` : "";
    const cause = new GatewayError(`the WebSocket to the gateway closed${why}`,
      { code: "network_error" });
    if (finalClose(event.code)) {
      const failure = new GatewayError(event.reason || `the gateway closed the WebSocket${why}`,
        { code: event.code === 1008 || event.code === 4401 ? "unauthorized" : "network_error",
          cause });
      for (const stream of [...this._streams.values()]) stream._fail(failure);
      this._cancels.clear();
    } else if (event.code === TOO_BIG) {
      // A start over the gateway's body limit (413 over HTTP): sending it again cannot
      // help. It is one of the starts not answered yet; the others go on.
      for (const stream of [...this._streams.values()]) {
        if (stream._wsSent && !stream._wsAcked && !stream._wsResume) {
          stream._fail(new GatewayError("the request is over the gateway's size limit "
            + `(the WebSocket closed with ${TOO_BIG})`, { code: "payload_too_large", cause }));
        }
      }
    } else if (this._attempt === 0) {
      // Streams whose request never went out, on a first connection: as a POST that
      // could not reach the gateway.
      for (const stream of [...this._streams.values()]) {
        if (!stream._wsSent) {
          stream._fail(new GatewayError(`could not reach the gateway: ${cause.message}`,
            { code: "network_error", cause }));
        }
      }
    }
    this._reconnect(cause);
  }

  async _reconnect(cause) {
    if (this._streams.size === 0 && this._cancels.size === 0) {
      this._attempt = 0;
      this._setState("idle");
      return;
    }
    this._attempt += 1;
    if (this._attempt > this.options.maxRetries) {
      const failure = new GatewayError("lost the WebSocket to the gateway and could not "
        + `reconnect after ${this.options.maxRetries} attempt(s) (last: ${cause.message})`,
      { code: "reconnect_failed", cause });
      for (const stream of [...this._streams.values()]) stream._fail(failure);
      this._cancels.clear();
      this._attempt = 0;
      this._setState("idle");
      return;
    }
    this.stats.reconnects += 1;
    const delay = computeBackoff(this._attempt, { retryDelay: this.options.retryDelay,
      maxRetryDelay: this.options.maxRetryDelay, jitter: this.options.jitter,
      random: this._random });
    this._setState("reconnecting");
    for (const stream of this._streams.values()) {
      if (!stream._wsWaiting) stream._wsReconnecting(this._attempt, delay, cause);
    }
    try {
      await this._sleep(delay, this._stopper.signal);
    } catch {
      return; // closed meanwhile
    }
    if (this.closed) return;
    if (this._streams.size === 0 && this._cancels.size === 0) {
      this._attempt = 0;
      this._setState("idle");
      return;
    }
    this._connect();
  }

  // One stream tries again after a refused resume or a store outage, with backoff.
  async _retry(stream, cause) {
    stream._wsAttempt += 1;
    if (stream._wsAttempt > this.options.maxRetries) {
      stream._fail(new GatewayError(`could not resume stream ${stream.streamId} after `
        + `${this.options.maxRetries} attempt(s) (last: ${cause.message})`,
      { code: "reconnect_failed", cause }));
      return;
    }
    const delay = computeBackoff(stream._wsAttempt, { retryDelay: this.options.retryDelay,
      maxRetryDelay: this.options.maxRetryDelay, jitter: this.options.jitter,
      random: this._random, retryAfterMs: cause?.retryAfter ? cause.retryAfter * 1000 : 0 });
    stream._wsWaiting = true;
    stream._wsReconnecting(stream._wsAttempt, delay, cause);
    try {
      await this._sleep(delay, stream._stopper.signal);
    } catch {
      return; // the stream ended meanwhile
    } finally {
      stream._wsWaiting = false;
    }
    if (stream.outcome || this.closed) return;
    stream._wsResume = true;
    if (this.state === "open") this._hello(stream);
    else stream._setState("connecting"); // the reconnecting socket sends it when open
  }

  // stream.cancel(): the cancel frame, then up to cancelWait for the `cancelled` event.
  async _cancel(stream) {
    let sent = false;
    if (stream._wsSent) {
      sent = this._send({ type: "cancel", stream_id: stream.streamId });
      if (!sent) this._cancels.add(stream.streamId); // sent when the socket is back
      if (sent) {
        await Promise.race([
          stream.finished,
          this._sleep(stream.options.cancelWait, stream._stopper.signal).catch(() => {}),
        ]);
      }
    }
    if (!stream.outcome) {
      stream._finishCancelled({ reason: sent ? "deleted" : "aborted", local: true }, null);
    }
    return stream.finished;
  }
}

/** Create and start a stream: `streamChat({model, messages, onToken, ...})`. */
export function streamChat(options) {
  return new GatewayStream(options).start();
}

/** Follow an existing stream (another tab, a page reload): GET .../events from `lastEventId`. */
export function followStream(options) {
  if (!options?.streamId) throw new TypeError("followStream: streamId is required");
  return new GatewayStream({ ...options, follow: true }).start();
}
