// Page (a): the chat on the Vercel AI SDK 5's useChat, against the gateway's AI SDK
// dialect (POST /v1/ai-sdk/chat answers a UI message stream).
//
//   Send    sendMessage() -> POST /v1/ai-sdk/chat {id: <chat id>, messages, trigger, model}
//   Stop    useChat's stop() aborts the fetch; DELETE /v1/ai-sdk/chat/<chat id>/stream makes
//           the gateway cancel the stream and close the provider request (an aborted
//           fetch alone is a disconnect, which the gateway outlives to allow a resume)
//   Reload  resume: true -> GET /v1/ai-sdk/chat/<chat id>/stream: the running answer from its
//           start, then live (204 when none runs). The chat id is in the URL (?chat=...),
//           the finished turns in sessionStorage.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { Chat } from "./Chat.jsx";
import { GATEWAY, chatIdFromUrl, load, save } from "./gateway.js";
import "./styles.css";

const API = `${GATEWAY}/v1/ai-sdk/chat`;
const chatId = chatIdFromUrl();
const KEY = `ai-sdk:${chatId}`; // the turns shown, without an answer still streaming
const transport = new DefaultChatTransport({ api: API });

function App() {
  const [model, setModel] = useState(() => load(`${KEY}:model`, "demo/echo"));
  const { messages, sendMessage, status, stop, error } = useChat({
    id: chatId,
    messages: load(KEY, []),
    transport,
    resume: true,
  });
  const busy = status === "submitted" || status === "streaming";

  // Keep the turns for a reload, but not an answer in progress: the resumed stream
  // rebuilds it from its start (kept, it would be appended to, twice).
  useEffect(() => {
    const last = messages[messages.length - 1];
    save(KEY, busy && last?.role === "assistant" ? messages.slice(0, -1) : messages);
  }, [messages, busy]);
  useEffect(() => save(`${KEY}:model`, model), [model]);

  const onStop = () => {
    stop();
    fetch(`${API}/${encodeURIComponent(chatId)}/stream`, { method: "DELETE" })
      .catch(() => {}); // already over, or the gateway is gone: nothing left to cancel
  };

  return (
    <Chat title="useChat" subtitle="Vercel AI SDK 5: POST /v1/ai-sdk/chat"
      messages={messages} busy={busy} status={status} error={error?.message}
      model={model} onModel={setModel}
      onSend={(text) => sendMessage({ text }, { body: { model } })} onStop={onStop}
      ids={{ "chat id": chatId }} />
  );
}

createRoot(document.getElementById("root")).render(<App />);
