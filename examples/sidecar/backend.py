"""A team's own backend beside the gateway: the sidecar mode.

A plain Flask app under gunicorn's sync worker (no gevent here). It holds the
gateway's API key and builds the prompt itself (a fixed system prompt and the
user's text); it asks the gateway for a *detached* stream and gives the browser
only what it needs to read that one stream: ``{events_url, status_url, token}``.
The browser reads the stream from the gateway directly, with a native
``EventSource`` and ``?token=``, and stops it with ``DELETE`` and the token.
The backend's request takes a few milliseconds: no worker waits for the model.

    GATEWAY_API_KEY=sk-... GATEWAY_URL=http://127.0.0.1:8000 \\
        gunicorn -k sync -w 2 -b 127.0.0.1:5000 backend:app
"""

from __future__ import annotations

import os
from typing import Any

import requests
from flask import Flask, Response, jsonify, render_template, request

# The gateway as this backend reaches it, and as browsers reach it (often another
# address: a public host name in front of a private one).
GATEWAY_URL = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000").rstrip("/")
GATEWAY_PUBLIC_URL = os.environ.get("GATEWAY_PUBLIC_URL", GATEWAY_URL).rstrip("/")
GATEWAY_API_KEY = os.environ["GATEWAY_API_KEY"]  # never sent to a browser
MODEL = os.environ.get("SIDECAR_MODEL", "demo/echo")
MAX_TEXT = 4000

SYSTEM_PROMPT = ("You are the help desk of Example Ltd. Answer in plain text, briefly, "
                 "and only about our products.")

app = Flask(__name__)
gateway = requests.Session()  # one per worker process: its connections are reused
gateway.headers["Authorization"] = f"Bearer {GATEWAY_API_KEY}"


@app.get("/")
def index() -> Response:
    page = Response(render_template("index.html"))
    page.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {GATEWAY_PUBLIC_URL}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


@app.post("/chat")
def chat() -> tuple[Response, int]:
    """Start the answer to the user's text; hand the browser where to read it."""
    text = (request.get_json(silent=True) or {}).get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        return jsonify(error={"code": "invalid_request",
                              "message": f"text: 1 to {MAX_TEXT} characters"}), 400
    # Your own login, quotas and database go here: the prompt is yours to compose.
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                     {"role": "user", "content": text}],
        "detach": True,
    }
    try:
        answer = gateway.post(f"{GATEWAY_URL}/v1/streams", json=body, timeout=(3.05, 15))
    except requests.RequestException:
        app.logger.exception("the gateway did not answer")
        return jsonify(error={"code": "upstream_unavailable",
                              "message": "the streaming service is unavailable"}), 502
    if answer.status_code != 201:
        # The gateway's error bodies hold no secret: pass them on (429, 503, 400...).
        return jsonify(answer.json()), answer.status_code
    created = answer.json()
    return jsonify(stream_id=created["stream_id"], token=created["token"],
                   events_url=GATEWAY_PUBLIC_URL + created["events_url"],
                   status_url=GATEWAY_PUBLIC_URL + created["status_url"]), 200
