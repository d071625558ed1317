// The chat page: send the new text, show the reply as it streams, Stop it, and
// follow a reply that was still streaming when the page was (re)loaded.
//
// The reply is an SSE response to our own POST (fetch + a stream reader, so
// the cookie session and a JSON body go with it). Its headers tell where the
// stream lives on the extension's blueprint: Location is its events URL
// (/api/streams/<id>/events), and DELETE on /api/streams/<id> cancels it.

const app = document.getElementById("app");
const list = app.querySelector('[data-testid="messages"]');
const form = app.querySelector('[data-testid="composer"]');
const prompt = app.querySelector('[data-testid="prompt"]');
const sendButton = app.querySelector('[data-testid="send"]');
const stopButton = app.querySelector('[data-testid="stop"]');
const errorBox = app.querySelector('[data-testid="error"]');
const CANCEL_NOTES = JSON.parse(app.dataset.cancelNotes);
const TITLE_LENGTH = 60; // as chat.py's

let streamUrl = null; // the running reply's stream (for Stop)

// ------------------------------------------------------------------------- the page

function addMessage(role, text, state) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  item.dataset.testid = "message";
  item.dataset.role = role;
  item.dataset.state = state;
  const body = document.createElement("div");
  body.className = "text";
  body.dataset.testid = "message-text";
  body.textContent = text;
  const note = document.createElement("div");
  note.className = "note";
  note.dataset.testid = "message-note";
  item.append(body, note);
  list.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function textOf(item) {
  return item.querySelector('[data-testid="message-text"]');
}

function finish(item, state, note) {
  item.dataset.state = state;
  item.querySelector('[data-testid="message-note"]').textContent = note;
}

function busy(running, url = null) {
  streamUrl = running ? url : null;
  sendButton.hidden = running;
  stopButton.hidden = !running;
  prompt.disabled = running;
  app.dataset.busy = String(running);
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

// One terminal event's payload as the note under a reply (as the server saves it).
function noteFor(type, payload) {
  if (type === "done") {
    return payload.finish_reason === "stop" ? "" : `finish reason: ${payload.finish_reason}`;
  }
  if (type === "cancelled") return CANCEL_NOTES[payload.reason] ?? payload.reason;
  return `${payload.code}: ${payload.message}`;
}

// Apply one event to the reply; true when it was the stream's last.
function apply(item, type, data) {
  const payload = JSON.parse(data);
  if (type === "token") {
    textOf(item).textContent += payload.content;
    item.scrollIntoView({ block: "end" });
    return false;
  }
  if (type === "done" || type === "error" || type === "cancelled") {
    finish(item, type, noteFor(type, payload));
    return true;
  }
  return false; // start, and kinds this page does not show
}

// --------------------------------------------------------------- reading the stream

// The lines of an event stream, as they arrive, grouped into events.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop(); // an unfinished line waits for the next chunk
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) yield { ...event, data: event.data.join("\n") };
        event = { type: "message", data: [], id: null };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.type = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  }
}

// Read a reply to its end; false when the connection broke first.
async function readReply(item, response) {
  try {
    for await (const event of serverSentEvents(response.body)) {
      if (apply(item, event.type, event.data)) return true;
    }
  } catch (error) {
    // the connection broke
  }
  return false;
}

async function createConversation() {
  const select = app.querySelector('[data-testid="model-select"]');
  const response = await fetch(app.dataset.createUrl, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: select ? select.value : null }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error);
  app.dataset.conversationId = body.id;
  app.dataset.messagesUrl = body.messages_url;
  history.replaceState(null, "", body.url);
  return body;
}

// The page of a conversation just started: its title (the first message, as
// the server names it), its model, and its place at the top of the list.
function showConversation(conversation, text) {
  const title = text.trim().slice(0, TITLE_LENGTH);
  app.querySelector('[data-testid="title"]').textContent = title;
  document.title = `${title} · Team chat`;
  const model = document.createElement("span");
  model.className = "model";
  model.dataset.testid = "model";
  model.textContent = conversation.model;
  app.querySelector("label.model").replaceWith(model);
  const link = document.createElement("a");
  link.href = conversation.url;
  link.dataset.testid = "conversation-link";
  link.dataset.id = conversation.id;
  link.setAttribute("aria-current", "page");
  link.textContent = title;
  const item = document.createElement("li");
  item.append(link);
  app.querySelector('[data-testid="conversations"]').prepend(item);
}

async function send(text) {
  showError("");
  if (!app.dataset.messagesUrl) showConversation(await createConversation(), text);
  const question = addMessage("user", text, "done");
  const reply = addMessage("assistant", "", "streaming");
  busy(true);
  let response;
  try {
    response = await fetch(app.dataset.messagesUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ text }),
    });
  } catch (error) {
    response = null;
  }
  if (response === null || !response.ok) {
    const body = response ? await response.json().catch(() => ({})) : {};
    question.remove();
    reply.remove();
    busy(false);
    prompt.value = text;
    showError(body.error?.message ?? body.error ?? "The message could not be sent.");
    return;
  }
  reply.dataset.streamId = response.headers.get("X-Stream-ID");
  reply.dataset.eventsUrl = new URL(response.headers.get("Location"), window.location.href)
    .pathname;
  busy(true, reply.dataset.eventsUrl.replace(/\/events$/, ""));
  if (await readReply(reply, response)) {
    busy(false);
    prompt.focus();
    return;
  }
  // The connection broke before the reply's end: it goes on for the resume
  // grace, so follow it again, from its start.
  textOf(reply).textContent = "";
  follow(reply);
}

// Follow a reply with the browser's own EventSource (same origin, so the
// session cookie goes with it; it reconnects with Last-Event-ID by itself):
// one still streaming when the page loaded, or one whose connection broke.
function follow(item) {
  const eventsUrl = item.dataset.eventsUrl;
  busy(true, eventsUrl.replace(/\/events$/, ""));
  const source = new EventSource(eventsUrl);
  const end = () => {
    source.close();
    busy(false);
  };
  for (const type of ["token", "done", "error", "cancelled"]) {
    source.addEventListener(type, (event) => {
      if (apply(item, type, event.data)) end();
    });
  }
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      finish(item, "error", "this reply is no longer streaming: reload to see it");
      end();
    }
  };
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = prompt.value;
  if (!text.trim()) return;
  prompt.value = "";
  send(text).catch((error) => {
    busy(false);
    showError(String(error.message || error));
  });
});

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", async () => {
  if (!streamUrl) return;
  stopButton.disabled = true;
  try {
    await fetch(streamUrl, { method: "DELETE" }); // the stream then ends with `cancelled`
  } finally {
    stopButton.disabled = false;
  }
});

const streaming = list.querySelector('[data-testid="message"][data-state="streaming"]');
if (streaming) follow(streaming);
app.dataset.ready = "true";
