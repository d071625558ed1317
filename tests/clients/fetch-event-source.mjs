// Drives @microsoft/fetch-event-source against the gateway, for
// tests/live/test_sse_clients.py. One argument, JSON:
//   {"url", "method", "headers", "body", "maxErrors", "deadlineMs"}
// It prints one JSON object a line: "open" (status, content type) for every response,
// "message" for every message the library hands to onmessage (event, id, data, retry, as
// it parsed them), "error" for every failure the library reports to onerror (it then
// retries the same request after the server's `retry:`, with Last-Event-ID), and at the
// end "end" (the library resolved: the server closed a stream normally) or "gave_up"
// (more than maxErrors errors in a row).
import { fetchEventSource } from "@microsoft/fetch-event-source";

// The library is written for browsers: it takes fetch and the timers from `window` and
// calls `document.removeEventListener` when it is done, even with openWhenHidden
// (lib/cjs/fetch.js). Node 20 has fetch and the timers on globalThis.
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };

const config = JSON.parse(process.argv[2]);
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
let errors = 0;

setTimeout(() => { emit({ kind: "deadline" }); process.exit(2); }, config.deadlineMs ?? 20000);

try {
  await fetchEventSource(config.url, {
    method: config.method ?? "GET",
    headers: config.headers ?? {},
    body: config.body,
    openWhenHidden: true,
    // What the library's README shows: accept an event stream, refuse anything else.
    async onopen(response) {
      const type = response.headers.get("content-type") ?? "";
      emit({ kind: "open", status: response.status, contentType: type });
      if (!response.ok || !type.startsWith("text/event-stream")) {
        const body = await response.text();
        throw new Error(`HTTP ${response.status}: ${body}`);
      }
    },
    onmessage(m) {
      errors = 0;
      emit({ kind: "message", event: m.event, id: m.id, data: m.data, retry: m.retry ?? null });
    },
    onerror(err) {
      errors += 1;
      emit({ kind: "error", message: String(err?.message ?? err), cause: String(err?.cause ?? "") });
      if (errors > (config.maxErrors ?? 5)) throw err; // stops the library's retries
      // undefined: retry after the server's `retry:` interval
    },
  });
  emit({ kind: "end" });
  process.exit(0);
} catch (err) {
  emit({ kind: "gave_up", message: String(err?.message ?? err) });
  process.exit(1);
}
