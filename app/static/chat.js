// The demo chat page: a conversation streamed through sse-gateway with sse-client.js.
// Plain ES module, no build step. Tokens are added as text nodes, never as HTML.
// Reasoning streams into a <details> (open while it streams, closed when the answer
// starts), tool calls show their name and arguments as they build, refusals are marked.
// The page's own tools (get_time) are offered to demo/tools (and to any model with
// ?tools=1): when an answer ends with finish_reason "tool_calls", the page runs the
// calls, shows the results and streams the next turn with them.
// Answers come over SSE (one fetch per answer) or over one WebSocket that every answer of
// the page shares (the Transport select, or ?transport=websocket); the same callbacks serve
// both.

import { streamChat } from "./sse-client.js";

const STORE = { apiKey: "sse-gateway.apiKey", model: "sse-gateway.model",
  transport: "sse-gateway.transport" };
const TRANSPORTS = new Set(["sse", "websocket"]);
const CUSTOM = "__custom__";

const $ = (selector) => document.querySelector(selector);
const app = $(".app");
const ui = {
  model: $("#model"),
  customField: $('[data-testid="model-custom-field"]'),
  custom: $("#model-custom"),
  modelHint: $("#model-hint"),
  apiKey: $("#api-key"),
  transport: $("#transport"),
  transportShown: $('[data-testid="metric-transport"]'),
  newChat: $("#new-chat"),
  settings: $('[data-testid="settings"]'),
  conversation: $("#conversation"),
  messages: $("#messages"),
  empty: $('[data-testid="empty-state"]'),
  status: $('[data-testid="status"]'),
  statusLabel: $('[data-testid="status-label"]'),
  statusDetail: $('[data-testid="status-detail"]'),
  ttft: $('[data-testid="metric-ttft"]'),
  tps: $('[data-testid="metric-tps"]'),
  tokens: $('[data-testid="metric-tokens"]'),
  eventId: $('[data-testid="metric-event-id"]'),
  streamId: $('[data-testid="stream-id"]'),
  composer: $("#composer"),
  prompt: $("#prompt"),
  send: $("#send"),
  stop: $("#stop"),
  template: $("#message-template"),
  toolTemplate: $("#tool-call-template"),
};

const params = new URLSearchParams(location.search);
const history = []; // the conversation sent as `messages` (tool calls and results included)
let current = null; // {stream, view} while an answer streams

// ------------------------------------------------------------------------------ tools

/** The tools this page runs itself, in the browser, when a model calls them. */
const LOCAL_TOOLS = {
  get_time: {
    description: "The current date and time, in a time zone (an IANA name such as "
      + "Europe/Paris; default UTC).",
    parameters: {
      type: "object",
      properties: { timezone: { type: "string", description: "IANA time zone, e.g. UTC" } },
    },
    run({ timezone = "UTC" }) {
      const now = new Date();
      if (timezone === "UTC") return now.toISOString();
      return now.toLocaleString("en-GB", { timeZone: timezone, dateStyle: "medium",
        timeStyle: "long" }); // a RangeError for an unknown zone
    },
  },
};
const TOOLS = Object.entries(LOCAL_TOOLS).map(([name, tool]) => ({
  type: "function", function: { name, description: tool.description, parameters: tool.parameters },
}));
const TOOL_MODELS = new Set(["demo/tools"]);
const MAX_TOOL_ROUNDS = 4; // tool answers sent back per question, at most

function offersTools(model) {
  return TOOL_MODELS.has(model) || params.get("tools") === "1";
}

/** Run one call; its result as the text of a `tool` message (errors included). */
function runTool(call) {
  const tool = Object.hasOwn(LOCAL_TOOLS, call.function.name) ? LOCAL_TOOLS[call.function.name]
    : null;
  if (!tool) return { ok: false, content: `error: this page has no tool "${call.function.name}"` };
  let args;
  try {
    args = JSON.parse(call.function.arguments || "{}");
  } catch {
    return { ok: false, content: "error: the arguments are not JSON" };
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    return { ok: false, content: "error: the arguments are not a JSON object" };
  }
  try {
    return { ok: true, content: String(tool.run(args)) };
  } catch (error) {
    return { ok: false, content: `error: ${error.message}` };
  }
}

// ------------------------------------------------------------------------------ storage

function load(key) {
  try {
    return sessionStorage.getItem(key) ?? "";
  } catch {
    return "";
  }
}

function save(key, value) {
  try {
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  } catch {
    // storage disabled: the value lives in the page only
  }
}

// ------------------------------------------------------------------------------ models

function selectedModel() {
  return ui.model.value === CUSTOM ? ui.custom.value.trim() : ui.model.value;
}

function syncCustomField() {
  const custom = ui.model.value === CUSTOM;
  ui.customField.hidden = !custom;
  ui.custom.required = custom;
}

async function loadModels() {
  const wanted = params.get("model") || load(STORE.model) || ui.model.value;
  let listed = [];
  let problem = "";
  try {
    const headers = ui.apiKey.value ? { Authorization: `Bearer ${ui.apiKey.value}` } : {};
    const response = await fetch("/v1/models", { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.ok) listed = Array.isArray(body.data) ? body.data : [];
    else problem = body?.error?.message || `GET /v1/models answered ${response.status}`;
  } catch (error) {
    problem = `could not load models: ${error.message}`;
  }
  ui.model.replaceChildren();
  const groups = new Map();
  for (const entry of listed) {
    const provider = entry.provider || entry.id.split("/")[0];
    if (!groups.has(provider)) {
      const group = document.createElement("optgroup");
      group.label = provider;
      groups.set(provider, group);
      ui.model.append(group);
    }
    const option = new Option(entry.id, entry.id);
    option.dataset.testid = "model-option";
    if (entry.available === false) {
      option.disabled = true;
      option.textContent = `${entry.id} (not configured)`;
    }
    groups.get(provider).append(option);
  }
  const other = new Option("Other model…", CUSTOM);
  ui.model.append(other);
  const usable = listed.filter((m) => m.available !== false).map((m) => m.id);
  if (wanted && usable.includes(wanted)) {
    ui.model.value = wanted;
  } else if (wanted && wanted !== CUSTOM && !listed.some((m) => m.id === wanted)) {
    ui.model.value = CUSTOM;
    ui.custom.value = wanted;
  } else if (wanted === CUSTOM) {
    ui.model.value = CUSTOM;
  } else {
    ui.model.value = usable[0] ?? CUSTOM;
  }
  syncCustomField();
  ui.modelHint.textContent = problem
    ? problem
    : `${usable.length} model${usable.length === 1 ? "" : "s"} from GET /v1/models`
      + (listed.length > usable.length ? `, ${listed.length - usable.length} not configured` : "");
  ui.modelHint.classList.toggle("warn", Boolean(problem));
}

// ------------------------------------------------------------------------------ rendering

function nearBottom() {
  const el = ui.conversation;
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function scrollToEnd(force = false) {
  if (force || nearBottom()) ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function addMessage(role, text = "", model = "") {
  ui.empty.hidden = true;
  const stick = nearBottom();
  const node = ui.template.content.firstElementChild.cloneNode(true);
  node.dataset.role = role;
  node.classList.add(`message-${role}`);
  const find = (id) => node.querySelector(`[data-testid="${id}"]`);
  const view = {
    node,
    text: find("message-text"),
    state: find("message-state"),
    note: find("message-note"),
    textNode: document.createTextNode(text),
    reasoning: find("message-reasoning"),
    reasoningMeta: find("reasoning-meta"),
    reasoningNode: document.createTextNode(""),
    reasoningAuto: false, // opened by the page (so the page closes it), not by the reader
    refusal: find("message-refusal"),
    refusalNode: document.createTextNode(""),
    toolList: find("tool-calls"),
    calls: new Map(), // tool call views by index
  };
  find("reasoning-text").append(view.reasoningNode);
  find("refusal-text").append(view.refusalNode);
  const who = node.querySelector('[data-testid="message-role"]');
  who.textContent = role === "user" ? "You" : "Assistant";
  view.model = node.querySelector('[data-testid="message-model"]');
  view.model.textContent = model;
  view.text.append(view.textNode);
  ui.messages.append(node);
  scrollToEnd(stick || role === "user");
  return view;
}

// Reasoning: shown (open) with its first text; closed once the answer itself starts.
function addReasoning(view, text) {
  if (view.reasoning.hidden) {
    view.reasoning.hidden = false;
    view.reasoning.open = true;
    view.reasoningAuto = true;
    view.node.dataset.reasoning = "streaming";
    view.reasoningMeta.textContent = "thinking…";
  }
  view.reasoningNode.appendData(text);
}

function answerStarts(view) {
  if (view.node.dataset.reasoning !== "streaming") return;
  view.node.dataset.reasoning = "done";
  view.reasoningMeta.textContent = "";
  if (view.reasoningAuto) view.reasoning.open = false;
}

function addRefusal(view, text) {
  answerStarts(view);
  view.refusal.hidden = false;
  view.node.dataset.refused = "true";
  view.refusalNode.appendData(text);
}

function toolCallView(view, index) {
  let call = view.calls.get(index);
  if (call) return call;
  const node = ui.toolTemplate.content.firstElementChild.cloneNode(true);
  node.dataset.index = String(index);
  const find = (id) => node.querySelector(`[data-testid="${id}"]`);
  call = { node, name: find("tool-call-name"), id: find("tool-call-id"),
    args: document.createTextNode(""), result: find("tool-result"),
    resultLabel: find("tool-result-label"), resultText: find("tool-result-text") };
  find("tool-call-arguments").append(call.args);
  // In index order, whatever order the calls' first events came in.
  const after = [...view.calls.keys()].filter((i) => i > index).sort((a, b) => a - b)[0];
  view.toolList.insertBefore(node, after === undefined ? null : view.calls.get(after).node);
  view.calls.set(index, call);
  view.toolList.hidden = false;
  view.node.dataset.tools = "true";
  return call;
}

function showToolResult(call, outcome) {
  call.node.dataset.state = outcome.ok ? "ran" : "failed";
  call.resultLabel.textContent = outcome.ok ? "Result" : "Failed";
  call.resultText.textContent = outcome.content;
  call.result.hidden = false;
}

function setMessageState(view, state, note = "") {
  view.node.dataset.state = state;
  view.node.setAttribute("aria-busy", String(state === "streaming" || state === "reconnecting"
    || state === "connecting"));
  view.state.textContent = {
    connecting: "connecting", streaming: "streaming", reconnecting: "reconnecting",
    done: "done", error: "error", cancelled: "stopped",
  }[state] ?? state;
  view.note.hidden = !note;
  view.note.textContent = note;
}

const LABELS = {
  idle: "Ready",
  connecting: "Connecting…",
  waiting: "Waiting for the first token…",
  streaming: "Streaming",
  reconnecting: "Reconnecting…",
  done: "Done",
  error: "Error",
  cancelled: "Stopped",
};

function setStatus(state, detail = "") {
  ui.status.dataset.state = state;
  app.dataset.state = state;
  ui.statusLabel.textContent = LABELS[state] ?? state;
  ui.statusDetail.textContent = detail;
}

function formatMs(ms) {
  if (ms == null) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function showFigures(stream) {
  const s = stream.stats;
  ui.ttft.textContent = formatMs(s.ttftMs);
  ui.tps.textContent = s.tokensPerSecond == null ? "–" : s.tokensPerSecond.toFixed(1);
  ui.tokens.textContent = String(s.tokens);
  ui.eventId.textContent = stream.lastEventId ?? "–";
  ui.transportShown.textContent = stream.options.transport === "websocket" ? "WebSocket" : "SSE";
  ui.streamId.textContent = stream.streamId ?? "–";
  ui.streamId.title = stream.streamId ?? "";
}

function clearFigures() {
  for (const el of [ui.ttft, ui.tps, ui.tokens, ui.eventId, ui.streamId, ui.transportShown]) {
    el.textContent = "–";
  }
  ui.streamId.title = "";
}

let frame = 0;
function scheduleFigures(stream) {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    showFigures(stream);
  });
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.stop.disabled = false;
  ui.send.disabled = busy;
  ui.newChat.disabled = busy;
  ui.model.disabled = busy;
  ui.custom.disabled = busy;
  ui.transport.disabled = busy;
  app.dataset.busy = String(busy);
}

// ------------------------------------------------------------------------------ chat

async function send(text) {
  const model = selectedModel();
  if (!model) {
    setStatus("error", "choose a model first");
    (ui.model.value === CUSTOM ? ui.custom : ui.model).focus();
    return;
  }
  const turnStart = history.length;
  history.push({ role: "user", content: text });
  addMessage("user", text);
  setBusy(true);
  const tools = offersTools(model) ? TOOLS : null;
  for (let round = 0; ; round++) {
    const { result, stream, view } = await streamAnswer(model, tools);
    if (result.status !== "done") {
      // A failed turn leaves the question in the history only if some answer came back.
      if (result.text) history.push({ role: "assistant", content: result.text });
      else if (result.status === "error") history.length = turnStart;
      break;
    }
    const message = result.message;
    history.push(message.tool_calls || message.provider_data ? stream.assistantMessage()
      : { role: "assistant", content: result.text });
    if (result.payload?.finish_reason !== "tool_calls" || !message.tool_calls) break;
    // Every call gets its result (an error too), as the next turn must answer each one.
    for (const [index, call] of message.tool_calls.entries()) {
      const outcome = runTool(call);
      showToolResult(toolCallView(view, index), outcome);
      history.push({ role: "tool", tool_call_id: call.id, content: outcome.content });
    }
    if (round + 1 >= MAX_TOOL_ROUNDS) {
      setStatus("done", `stopped after ${MAX_TOOL_ROUNDS} tool rounds`);
      break;
    }
  }
  setBusy(false);
  ui.prompt.focus();
}

/** Stream one answer to the conversation so far into a new assistant message. */
async function streamAnswer(model, tools) {
  const view = addMessage("assistant", "", model);
  setMessageState(view, "connecting");
  clearFigures();
  setStatus("connecting", model);
  const body = {};
  const grace = params.get("resume_grace_s");
  if (grace !== null && grace !== "") body.resume_grace_s = Number(grace);
  const output = (stream) => {
    if (ui.status.dataset.state !== "streaming") setStatus("streaming", stream.model ?? model);
    scheduleFigures(stream);
  };
  const stream = streamChat({
    transport: ui.transport.value,
    model,
    messages: history.map((message) => ({ ...message })),
    tools: tools ?? undefined,
    apiKey: ui.apiKey.value || undefined,
    body,
    onStateChange(state) {
      if (state === "streaming") {
        setMessageState(view, "streaming");
        setStatus(this.stats.outputs ? "streaming" : "waiting", this.model ?? model);
      } else if (state === "connecting" && this.stats.reconnects) {
        setStatus("reconnecting", `attempt ${this.stats.reconnects}: connecting…`);
      }
      scheduleFigures(this);
    },
    onStart(payload) {
      if (payload?.model) view.model.textContent = payload.model;
      scheduleFigures(this);
    },
    onToken(text) {
      const stick = nearBottom();
      answerStarts(view);
      view.textNode.appendData(text);
      output(this);
      if (stick) scrollToEnd(true);
    },
    onReasoning(text) {
      const stick = nearBottom();
      addReasoning(view, text);
      output(this);
      if (stick) scrollToEnd(true);
    },
    onRefusal(text) {
      addRefusal(view, text);
      output(this);
    },
    onToolCall({ index, id, name }) {
      answerStarts(view);
      const call = toolCallView(view, index);
      call.name.textContent = name;
      call.id.textContent = id;
      output(this);
    },
    onToolCallDelta({ index, arguments: fragment }) {
      toolCallView(view, index).args.appendData(fragment);
      output(this);
    },
    onToolCallDone({ index, id, name, arguments: whole }) {
      const call = toolCallView(view, index);
      call.name.textContent = name;
      call.id.textContent = id;
      call.args.data = whole; // the whole text: also right when its start was not seen
      call.node.dataset.state = "done";
      output(this);
    },
    onReconnecting(attempt, delay, cause) {
      setMessageState(view, "reconnecting");
      const why = cause?.message ? ` (${cause.message})` : "";
      setStatus("reconnecting", `attempt ${attempt} in ${formatMs(delay)}${why}`);
      app.dataset.reconnected = "true";
    },
  });
  current = { stream, view };
  const result = await stream.finished;
  current = null;
  if (frame) {
    cancelAnimationFrame(frame);
    frame = 0;
  }
  answerStarts(view);
  showFigures(stream);
  const s = stream.stats;
  if (result.payload?.model) view.model.textContent = result.payload.model; // a fallback answered?
  if (result.status === "done") {
    const usage = result.payload?.usage;
    const metrics = result.payload?.metrics;
    const parts = [result.payload?.finish_reason && `finish: ${result.payload.finish_reason}`,
      usage?.output_tokens != null && `${usage.output_tokens} tokens`,
      usage?.reasoning_tokens != null && `${usage.reasoning_tokens} reasoning`,
      metrics?.tokens_per_second != null && `${metrics.tokens_per_second} tok/s (server)`,
      s.reconnects && `resumed ${s.reconnects}×`].filter(Boolean);
    setMessageState(view, "done", parts.join(" · "));
    setStatus("done", parts.slice(0, 2).join(" · "));
  } else if (result.status === "cancelled") {
    const reason = result.payload?.reason ?? "deleted";
    setMessageState(view, "cancelled", `Stopped (${reason}) after ${s.tokens} token events.`);
    setStatus("cancelled", `reason: ${reason}`);
  } else {
    const error = result.error;
    const hint = error?.code === "unauthorized" ? " Enter an API key above." : "";
    const detail = `${error?.code ?? "error"}: ${error?.message ?? "the stream failed"}`;
    setMessageState(view, "error", detail + hint);
    setStatus("error", detail);
  }
  return { result, stream, view };
}

function stop() {
  if (!current) return;
  ui.stop.disabled = true;
  setStatus("cancelled", "stopping…");
  current.stream.cancel();
}

function newChat() {
  if (current) return;
  history.length = 0;
  for (const node of ui.messages.querySelectorAll('[data-testid="message"]')) node.remove();
  ui.empty.hidden = false;
  clearFigures();
  setStatus("idle");
  ui.prompt.focus();
}

function autosize() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 240)}px`;
}

// ------------------------------------------------------------------------------ wiring

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value;
  if (current || !text.trim()) return;
  ui.prompt.value = "";
  autosize();
  send(text);
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.prompt.addEventListener("input", autosize);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && current) stop();
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);
ui.settings.addEventListener("submit", (event) => event.preventDefault());
ui.model.addEventListener("change", () => {
  syncCustomField();
  save(STORE.model, ui.model.value === CUSTOM ? selectedModel() || CUSTOM : ui.model.value);
  if (ui.model.value === CUSTOM) ui.custom.focus();
});
ui.custom.addEventListener("change", () => save(STORE.model, selectedModel() || CUSTOM));
ui.transport.value = [params.get("transport"), load(STORE.transport)]
  .find((value) => TRANSPORTS.has(value)) ?? "sse";
app.dataset.transport = ui.transport.value;
ui.transport.addEventListener("change", () => {
  save(STORE.transport, ui.transport.value);
  app.dataset.transport = ui.transport.value;
});
ui.apiKey.value = load(STORE.apiKey);
ui.apiKey.addEventListener("change", () => {
  save(STORE.apiKey, ui.apiKey.value);
  loadModels();
});

setBusy(false);
loadModels().finally(() => {
  app.dataset.ready = "true";
  ui.prompt.focus();
});
