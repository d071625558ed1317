"""The common blog-post pattern: Flask, a generator, the sync OpenAI SDK.

    gunicorn --workers 5 bench.alternatives.flask_naive:app                      # sync
    gunicorn --worker-class gthread --workers 2 --threads 128 bench.alternatives.flask_naive:app
"""

import json

from flask import Flask, Response, request
from openai import OpenAI

app = Flask(__name__)
client = OpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment


@app.post("/chat")
def chat():
    body = request.get_json()

    def generate():
        stream = client.chat.completions.create(
            model=body["model"],
            messages=[{"role": "user", "content": body["prompt"]}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {json.dumps({'content': chunk.choices[0].delta.content})}\n\n"
        yield "data: [DONE]\n\n"

    return Response(generate(), mimetype="text/event-stream")


@app.get("/healthz")
def healthz():
    return "ok"
