// Page (b): the same chat on the gateway's own protocol, with its browser client
// app/static/sse-client.js (imported through the Vite alias "sse-gateway-client"),
// for teams not on the AI SDK.
//
//   Send    streamChat() -> POST /v1/streams, with a stream id made here (X-Stream-ID)
//   Stop    stream.cancel() -> DELETE /v1/streams/<id>: the gateway closes the provider request
//   Reload  the stream id is in sessionStorage before the POST leaves; the reloaded page
//           follows it with followStream() -> GET /v1/streams/<id>/events from the start,
//           so the answer is rebuilt whole, once, from the same provider request.
import { useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import { followStream, streamChat } from "sse-gateway-client";
import { Chat } from "./Chat.jsx";
import { GATEWAY, chatIdFromUrl, load, save } from "./gateway.js";
import "./styles.css";

const chatId = chatIdFromUrl();
const KEY = `sse-client:${chatId}`; // {messages, model, pending: {streamId, assistantId} | null}

/** The conversation as POST /v1/streams takes it: the text of each turn. */
function toWire(messages) {
  return messages.map((m) => {
    const content = m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
    return m.role === "user" || content ? { role: m.role, content } : null;
  }).filter(Boolean);
}

/** Folds a stream's events into the parts of one assistant message (UIMessage shape). */
class Draft {
  constructor(id) {
    this.id = id;
    this.parts = [];
    this.tools = new Map(); // tool call index -> its part
  }

  add(type, text) {
    const last = this.parts[this.parts.length - 1];
    if (last?.type === type) last.text += text;
    else this.parts.push({ type, text, state: "streaming" });
  }

  tool(index, change) {
    let part = this.tools.get(index);
    if (!part) {
      part = { type: "dynamic-tool", toolName: "", toolCallId: "", state: "input-streaming",
        input: "" };
      this.tools.set(index, part);
      this.parts.push(part);
    }
    Object.assign(part, change(part));
  }

  finish() {
    for (const part of this.parts) if (part.state === "streaming") part.state = "done";
  }

  get message() {
    return { id: this.id, role: "assistant", parts: this.parts.map((p) => ({ ...p })) };
  }
}

function App() {
  const stored = useRef(load(KEY, { messages: [], model: "demo/echo", pending: null })).current;
  const [messages, setMessages] = useState(stored.messages);
  const [model, setModel] = useState(stored.model);
  const [status, setStatus] = useState("ready");
  const [error, setError] = useState(null);
  const [streamId, setStreamId] = useState(null);
  const stream = useRef(null);

  // Run one stream (a new one, or one followed after a reload) into an assistant message.
  function run(history, pending, open) {
    const draft = new Draft(pending.assistantId);
    const show = () => setMessages([...history, draft.message]);
    setError(null);
    setStreamId(pending.streamId);
    show();
    stream.current = open({
      baseUrl: GATEWAY,
      streamId: pending.streamId,
      onStateChange: (state) => setStatus(state),
      onToken: (text) => { draft.add("text", text); show(); },
      onReasoning: (text) => { draft.add("reasoning", text); show(); },
      onToolCall: ({ index, id, name }) => {
        draft.tool(index, () => ({ toolName: name, toolCallId: id }));
        show();
      },
      onToolCallDelta: ({ index, arguments: delta }) => {
        draft.tool(index, (part) => ({ input: part.input + delta }));
        show();
      },
      onToolCallDone: ({ index, id, name, arguments: args }) => {
        let input = args;
        try { input = JSON.parse(args); } catch { /* shown as it came */ }
        draft.tool(index, () => ({ toolName: name, toolCallId: id, input,
          state: "input-available" }));
        show();
      },
    });
    stream.current.finished.then((result) => {
      draft.finish();
      const final = draft.parts.length ? [...history, draft.message] : history;
      setMessages(final);
      setStatus(result.status === "error" ? "error" : "ready");
      if (result.status === "error") setError(`${result.error.code}: ${result.error.message}`);
      save(KEY, { messages: final, model, pending: null });
      stream.current = null;
    });
  }

  // A reload in the middle of an answer: follow the stream the last page started.
  const resumed = useRef(false);
  useEffect(() => {
    if (resumed.current || !stored.pending) return;
    resumed.current = true;
    run(stored.messages, stored.pending, followStream);
  }, []); // eslint-disable-line react-hooks/exhaustive-deps

  const send = (text) => {
    const history = [...messages, { id: crypto.randomUUID(), role: "user",
      parts: [{ type: "text", text }] }];
    const pending = { streamId: crypto.randomUUID(), assistantId: crypto.randomUUID() };
    save(KEY, { messages: history, model, pending }); // before the POST leaves
    run(history, pending, (options) => streamChat({ ...options, model,
      messages: toWire(history) }));
  };

  const busy = status !== "ready" && status !== "error";
  return (
    <Chat title="sse-client.js" subtitle="The gateway's own browser client: POST /v1/streams"
      messages={messages} busy={busy} status={status} error={error} model={model}
      onModel={setModel} onSend={send} onStop={() => stream.current?.cancel()}
      ids={{ "stream id": streamId }} />
  );
}

createRoot(document.getElementById("root")).render(<App />);
