"""The demo chat page at ``/``; its script and the browser client are in ``app/static``."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

bp = Blueprint("web", __name__)

# The page loads its own script and stylesheet and talks to its own origin only.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@bp.get("/")
def index() -> Response:
    return Response(render_template("index.html"), headers=PAGE_HEADERS,
                    content_type="text/html; charset=utf-8")
