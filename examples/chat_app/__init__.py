"""A small team chat app: Flask-Login, SQLAlchemy, and streaming replies.

Run it with ``make example`` (gunicorn's gevent worker, the demo provider),
then sign in as alice/alice or bob/bob. See README.md beside this file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_login import current_user

from examples.chat_app.extensions import db, login_manager, streaming


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``FLASK_*`` variables, then ``config``."""
    app = Flask(__name__, instance_path=os.path.join(os.path.dirname(__file__), "instance"))
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        SECRET_KEY="dev-only-change-me",  # set FLASK_SECRET_KEY in production
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=64 * 1024,  # a message is a few KiB at most
        DATABASE_URL=f"sqlite:///{os.path.join(app.instance_path, 'chat.db')}",
        # The models a new conversation may use (the first is the default).
        CHAT_MODELS="demo/echo,demo/lorem",
        CHAT_SYSTEM_PROMPT="You are a helpful assistant talking to {username}. Be concise.",
        # Streaming settings: SSE_GATEWAY_ + any field of sse_gateway.config.StreamsConfig
        # (the demo provider needs none). FLASK_SSE_GATEWAY_REDIS_URL=redis://... shares
        # streams between workers; FLASK_SSE_GATEWAY_OPENAI_API_KEY=sk-... with
        # FLASK_CHAT_MODELS=openai/gpt-4o-mini lets conversations use OpenAI.
        SSE_GATEWAY_MAX_STREAMS_PER_KEY=3,  # replies one user may have streaming at once
    )
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY, FLASK_SSE_GATEWAY_HEARTBEAT_S, ...
    app.config.update(config or {})

    db.init_app(app)
    login_manager.init_app(app)
    streaming.init_app(
        app,
        owner=lambda: current_user.get_id() if current_user.is_authenticated else None,
        url_prefix="/api/streams",
    )

    from examples.chat_app import auth, chat

    app.register_blueprint(auth.bp)
    app.register_blueprint(chat.bp)
    return app
