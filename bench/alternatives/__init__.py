"""What a user would run instead of the gateway, as a blog post would show it.

* ``flask_naive``: Flask returning ``Response(generator(), mimetype="text/event-stream")``
  over the sync ``openai`` SDK, under gunicorn's ``sync`` or ``gthread`` workers;
* ``starlette_sse``: Starlette with ``sse-starlette`` over ``AsyncOpenAI``, under uvicorn.

Both read ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` from the environment, take
``{"model": ..., "prompt": ...}`` on ``POST /chat`` and send one
``data: {"content": ...}`` event per delta, then ``data: [DONE]``.
"""
