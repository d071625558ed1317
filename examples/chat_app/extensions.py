"""The app's extensions, created once and bound to an app in ``create_app``."""

from __future__ import annotations

from flask_login import LoginManager

from examples.chat_app.models import Database
from sse_gateway.flask import Streaming

db = Database()
login_manager = LoginManager()
streaming = Streaming()
