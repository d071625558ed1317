// The chat both pages render: messages (text, reasoning, tool calls), the input,
// Send and Stop, and a model picker. Messages are in the AI SDK's UIMessage shape
// ({id, role, parts}); the sse-client page builds the same shape from its events.
import { useEffect, useRef, useState } from "react";
import { listModels, newChat } from "./gateway.js";

export function Chat({ title, subtitle, messages, busy, status, error, model, onModel,
  onSend, onStop, ids }) {
  const [input, setInput] = useState("");
  const [models, setModels] = useState(null);
  const [modelsError, setModelsError] = useState(null);
  const end = useRef(null);

  useEffect(() => {
    listModels().then(setModels, (e) => setModelsError(e.message));
  }, []);
  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
  }, [messages]);

  const submit = (event) => {
    event.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    setInput("");
    onSend(text);
  };

  return (
    <div className="app" data-testid="app" data-ready={models !== null} data-status={status}>
      <header>
        <div>
          <h1>{title}</h1>
          <p className="sub">{subtitle}</p>
        </div>
        <nav>
          <a href="./">Examples</a>
          <button type="button" className="ghost" onClick={newChat}>New chat</button>
        </nav>
      </header>
      <label className="model">
        Model{" "}
        <select data-testid="model-select" value={model} onChange={(e) => onModel(e.target.value)}
          disabled={busy}>
          {!models?.some((m) => m.id === model) && <option value={model}>{model}</option>}
          {(models || []).map((m) => (
            <option key={m.id} value={m.id} disabled={m.available === false}>{m.id}</option>
          ))}
        </select>
        {modelsError && <span className="error"> {modelsError}</span>}
      </label>
      <main data-testid="messages" role="log" aria-live="polite">
        {messages.length === 0 && <p className="empty">Ask something. Try demo/tools for reasoning and a tool call.</p>}
        {messages.map((message) => <Message key={message.id} message={message} />)}
        {error && <p className="error" data-testid="error" role="alert">{error}</p>}
        <div ref={end} />
      </main>
      <form onSubmit={submit}>
        <textarea data-testid="prompt" aria-label="Message" rows={2} value={input}
          onChange={(e) => setInput(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey) submit(e);
          }} />
        {busy
          ? <button type="button" data-testid="stop" onClick={onStop}>Stop</button>
          : <button type="submit" data-testid="send" disabled={!input.trim()}>Send</button>}
      </form>
      <p className="status">
        status <span data-testid="status">{status}</span>
        {Object.entries(ids || {}).map(([name, value]) => value && (
          <span key={name}> · {name} <code data-testid={name.replace(/ /g, "-")}>{value}</code></span>
        ))}
      </p>
    </div>
  );
}

function Message({ message }) {
  return (
    <article className={`message ${message.role}`} data-testid="message" data-role={message.role}>
      <div className="role">{message.role}</div>
      {message.parts.map((part, i) => <Part key={i} part={part} />)}
    </article>
  );
}

function Part({ part }) {
  if (part.type === "text") return <div className="text" data-testid="text">{part.text}</div>;
  if (part.type === "reasoning") {
    return (
      <details className="reasoning" data-testid="reasoning">
        <summary>Reasoning{part.state === "streaming" ? "…" : ""}</summary>
        <div data-testid="reasoning-text">{part.text}</div>
      </details>
    );
  }
  if (part.type === "dynamic-tool" || part.type.startsWith("tool-")) {
    const name = part.type === "dynamic-tool" ? part.toolName : part.type.slice("tool-".length);
    const input = typeof part.input === "string" ? part.input : JSON.stringify(part.input ?? null);
    return (
      <div className="tool" data-testid="tool" data-state={part.state}>
        <span className="tool-name" data-testid="tool-name">{name}</span>
        <code data-testid="tool-input">{input}</code>
        <span className="tool-state" data-testid="tool-state">{part.state}</span>
      </div>
    );
  }
  return null; // step-start and the like
}
