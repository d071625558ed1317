"""The demo chat page at ``/``; its script and the browser client are in ``app/static``."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("web", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")
