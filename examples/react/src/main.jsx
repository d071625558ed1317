import { createRoot } from "react-dom/client";
import "./styles.css";

createRoot(document.getElementById("root")).render(
  <div className="menu">
    <h1>sse-gateway · React examples</h1>
    <ul>
      <li><a href="ai-sdk.html">useChat</a>: the Vercel AI SDK 5 against <code>/v1/ai-sdk/chat</code></li>
      <li><a href="sse-client.html">sse-client.js</a>: the gateway's own browser client against <code>/v1/streams</code></li>
    </ul>
  </div>,
);
