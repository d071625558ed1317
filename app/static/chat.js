// The demo chat page: a conversation streamed through sse-gateway with sse-client.js.
// Plain ES module, no build step. Tokens are added as text nodes, never as HTML.

import { streamChat } from "./sse-client.js";

const STORE = { apiKey: "sse-gateway.apiKey", model: "sse-gateway.model" };
const CUSTOM = "__custom__";

const $ = (selector) => document.querySelector(selector);
const app = $(".app");
const ui = {
  model: $("#model"),
  customField: $('[data-testid="model-custom-field"]'),
  custom: $("#model-custom"),
  modelHint: $("#model-hint"),
  apiKey: $("#api-key"),
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
};

const params = new URLSearchParams(location.search);
const history = []; // [{role, content}] sent as `messages`
let current = null; // {stream, view} while an answer streams

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
  const view = {
    node,
    text: node.querySelector('[data-testid="message-text"]'),
    state: node.querySelector('[data-testid="message-state"]'),
    note: node.querySelector('[data-testid="message-note"]'),
    textNode: document.createTextNode(text),
  };
  const who = node.querySelector('[data-testid="message-role"]');
  who.textContent = role === "user" ? "You" : "Assistant";
  view.model = node.querySelector('[data-testid="message-model"]');
  view.model.textContent = model;
  view.text.append(view.textNode);
  ui.messages.append(node);
  scrollToEnd(stick || role === "user");
  return view;
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
  ui.streamId.textContent = stream.streamId ?? "–";
  ui.streamId.title = stream.streamId ?? "";
}

function clearFigures() {
  for (const el of [ui.ttft, ui.tps, ui.tokens, ui.eventId, ui.streamId]) el.textContent = "–";
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
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const view = addMessage("assistant", "", model);
  setMessageState(view, "connecting");
  setBusy(true);
  clearFigures();
  setStatus("connecting", model);
  const body = {};
  const grace = params.get("resume_grace_s");
  if (grace !== null && grace !== "") body.resume_grace_s = Number(grace);
  const stream = streamChat({
    model,
    messages: history.map(({ role, content }) => ({ role, content })),
    apiKey: ui.apiKey.value || undefined,
    body,
    onStateChange(state) {
      if (state === "streaming") {
        setMessageState(view, "streaming");
        setStatus(this.stats.tokens ? "streaming" : "waiting", this.model ?? model);
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
      view.textNode.appendData(text);
      if (ui.status.dataset.state !== "streaming") setStatus("streaming", this.model ?? model);
      scheduleFigures(this);
      if (stick) scrollToEnd(true);
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
  showFigures(stream);
  const s = stream.stats;
  if (result.payload?.model) view.model.textContent = result.payload.model; // a fallback answered?
  if (result.status === "done") {
    history.push({ role: "assistant", content: result.text });
    const usage = result.payload?.usage;
    const metrics = result.payload?.metrics;
    const parts = [result.payload?.finish_reason && `finish: ${result.payload.finish_reason}`,
      usage?.output_tokens != null && `${usage.output_tokens} tokens`,
      metrics?.tokens_per_second != null && `${metrics.tokens_per_second} tok/s (server)`,
      s.reconnects && `resumed ${s.reconnects}×`].filter(Boolean);
    setMessageState(view, "done", parts.join(" · "));
    setStatus("done", parts.slice(0, 2).join(" · "));
  } else if (result.status === "cancelled") {
    if (result.text) history.push({ role: "assistant", content: result.text });
    const reason = result.payload?.reason ?? "deleted";
    setMessageState(view, "cancelled", `Stopped (${reason}) after ${s.tokens} token events.`);
    setStatus("cancelled", `reason: ${reason}`);
  } else {
    const error = result.error;
    // A failed turn leaves the question in the history only if some answer came back.
    if (result.text) history.push({ role: "assistant", content: result.text });
    else history.pop();
    const hint = error?.code === "unauthorized" ? " Enter an API key above." : "";
    const detail = `${error?.code ?? "error"}: ${error?.message ?? "the stream failed"}`;
    setMessageState(view, "error", detail + hint);
    setStatus("error", detail);
  }
  setBusy(false);
  ui.prompt.focus();
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
