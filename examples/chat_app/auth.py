"""Signing in and out (Flask-Login, passwords hashed with werkzeug.security)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import login_required, login_user, logout_user
from sqlalchemy import select
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response

from examples.chat_app.extensions import db, login_manager
from examples.chat_app.models import User

bp = Blueprint("auth", __name__)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The signed-in user, from the id in the session cookie."""
    return db.session.get(User, int(user_id)) if user_id.isdigit() else None


@login_manager.unauthorized_handler
def unauthorized() -> Response | tuple[dict[str, str], int]:
    """An API call gets a JSON 401; a page sends the browser to the sign-in form."""
    if request.path.startswith("/api/"):
        return {"error": "sign in first"}, 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    """The sign-in form, and its answer."""
    if request.method == "GET":
        return render_template("login.html", error=None)
    username = request.form.get("username", "")
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None or not check_password_hash(user.password_hash,
                                               request.form.get("password", "")):
        return render_template("login.html", error="Wrong username or password."), 401
    login_user(user)
    target = request.args.get("next", "")
    # Only a path of this site: never an open redirect to another host.
    if not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        target = url_for("chat.index")
    return redirect(target)


@bp.post("/logout")
@login_required
def logout() -> Response:
    """Sign out."""
    logout_user()
    return redirect(url_for("auth.login"))
