// Drive app/static/sse-client.js under Node against a live gateway (used by
// tests/live/test_redis_trouble.py). Usage: node sse_client_node.mjs BASE_URL OPTIONS_JSON
// Prints one JSON line per token, reconnect and the final result.
import { streamChat } from "../../app/static/sse-client.js";

const [baseUrl, options] = [process.argv[2], JSON.parse(process.argv[3])];
const out = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const stream = streamChat({
  baseUrl, ...options,
  onToken: (text, event) => out({ kind: "token", id: event.id, text }),
  onReconnecting: (attempt, delay, cause) => out({ kind: "reconnecting", attempt, delay,
    code: cause?.code ?? null, message: cause?.message ?? null }),
});
const result = await stream.finished;
out({ kind: "result", status: result.status, text: result.text, streamId: stream.streamId,
  error: result.error ? { code: result.error.code, message: result.error.message } : null,
  ids: stream.events.map((event) => event.id), types: stream.events.map((event) => event.type) });
