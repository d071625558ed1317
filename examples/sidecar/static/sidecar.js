// The browser's side of the sidecar mode: ask our backend to start an answer, then
// read it straight from the gateway with a native EventSource and the stream's
// token (an EventSource cannot send headers, so the token rides in the URL).
// Stop cancels it with DELETE and the same token. The API key never gets here.

const form = document.querySelector('[data-testid="ask"]');
const text = document.querySelector('[data-testid="text"]');
const send = document.querySelector('[data-testid="send"]');
const stop = document.querySelector('[data-testid="stop"]');
const status = document.querySelector('[data-testid="status"]');
const answer = document.querySelector('[data-testid="answer"]');

let source = null;  // the EventSource of the running answer
let stream = null;  // {stream_id, token, events_url, status_url} from our backend

function show(state, label) {
  status.dataset.state = state;
  status.textContent = label;
  const running = state === "starting" || state === "streaming" || state === "stopping";
  send.hidden = running;
  stop.hidden = !running || state === "starting";
}

function finish(state, label) {
  if (source) source.close();  // no reconnect after the end
  source = null;
  show(state, label);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (source || !text.value.trim()) return;
  answer.textContent = "";
  show("starting", "Starting…");
  let reply;
  try {
    reply = await fetch("/chat", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: text.value}),
    });
  } catch {
    show("error", "Our server did not answer");
    return;
  }
  const body = await reply.json();
  if (!reply.ok) {
    show("error", body.error ? body.error.message : `HTTP ${reply.status}`);
    return;
  }
  stream = body;
  status.dataset.streamId = stream.stream_id;
  source = new EventSource(`${stream.events_url}?token=${encodeURIComponent(stream.token)}`);
  source.addEventListener("start", () => show("streaming", "Answering…"));
  source.addEventListener("token", (e) => { answer.textContent += JSON.parse(e.data).content; });
  source.addEventListener("done", () => finish("done", "Done"));
  source.addEventListener("cancelled", (e) => {
    finish("cancelled", `Stopped (${JSON.parse(e.data).reason})`);
  });
  source.addEventListener("error", (e) => {
    if (e.data !== undefined) {  // the stream's own error event
      finish("error", JSON.parse(e.data).message);
    } else if (source && source.readyState === EventSource.CLOSED) {
      finish("error", "The connection was refused");  // 401 (token expired), 404...
    }  // else: the browser reconnects by itself, with Last-Event-ID
  });
});

stop.addEventListener("click", async () => {
  if (!source || !stream) return;
  show("stopping", "Stopping…");
  // The stream's `cancelled` event, on the EventSource, ends it on this page.
  const reply = await fetch(stream.status_url, {
    method: "DELETE",
    headers: {"Authorization": `Bearer ${stream.token}`},
  });
  if (reply.status === 200) finish("cancelled", "Stopped (it had already ended)");
});
