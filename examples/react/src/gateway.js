// What both pages share: where the gateway is, the models it offers, and the tab's
// own memory (sessionStorage) that survives a reload.

// "" = same origin: the dev and preview servers proxy /v1/* to the gateway.
export const GATEWAY = (import.meta.env.VITE_GATEWAY_URL || "").replace(/\/+$/, "");

export async function listModels() {
  const response = await fetch(`${GATEWAY}/v1/models`);
  if (!response.ok) throw new Error(`GET /v1/models answered ${response.status}`);
  const { data } = await response.json();
  return data;
}

/** The chat id in the URL (?chat=...), made and put there when missing: a reload keeps it. */
export function chatIdFromUrl() {
  const url = new URL(window.location.href);
  let id = url.searchParams.get("chat");
  if (!id || !/^[A-Za-z0-9_-]{16,128}$/.test(id)) {
    id = crypto.randomUUID();
    url.searchParams.set("chat", id);
    window.history.replaceState(null, "", url);
  }
  return id;
}

export function newChat() {
  const url = new URL(window.location.href);
  url.searchParams.delete("chat");
  window.location.assign(url);
}

export function load(key, fallback) {
  try {
    const value = sessionStorage.getItem(key);
    return value === null ? fallback : JSON.parse(value);
  } catch {
    return fallback;
  }
}

export function save(key, value) {
  if (value === undefined || value === null) sessionStorage.removeItem(key);
  else sessionStorage.setItem(key, JSON.stringify(value));
}
