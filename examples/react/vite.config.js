// The example's build and its two servers (`npm run dev`, `npm run preview`).
//
// Same origin: both servers proxy /v1/* to the gateway (GATEWAY_URL, default
// http://127.0.0.1:8000), so the pages call "/v1/..." and need no CORS. To call a
// gateway on another origin instead, build with VITE_GATEWAY_URL=https://gateway.example
// and set the gateway's CORS_ORIGINS to this page's origin (README.md).
//
// The gateway's browser client is not copied into the example: the alias
// "sse-gateway-client" resolves to app/static/sse-client.js, the file the gateway serves.
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const gateway = process.env.GATEWAY_URL || "http://127.0.0.1:8000";
const proxy = { "/v1": { target: gateway } };

export default defineConfig({
  plugins: [react()],
  resolve: { alias: { "sse-gateway-client": here("../../app/static/sse-client.js") } },
  server: { host: "127.0.0.1", port: 5173, proxy, fs: { allow: [here("."), here("../../app/static")] } },
  preview: { host: "127.0.0.1", port: 4173, proxy },
  build: {
    rollupOptions: {
      input: { index: here("index.html"), "ai-sdk": here("ai-sdk.html"),
        "sse-client": here("sse-client.html") },
    },
  },
});
