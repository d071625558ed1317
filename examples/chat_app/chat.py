"""The chat: pages, the JSON API the page calls, and saving replies.

The browser sends only the new text. The prompt (a system prompt and the
conversation so far) is built here from the database, and the reply streams
from this app's own view; the completion hook stores it when its stream ends.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required
from sqlalchemy import select

from examples.chat_app.extensions import db, streaming
from examples.chat_app.models import ChatMessage, Conversation, now
from sse_gateway.errors import InvalidRequest, StreamsError, UnknownModel
from sse_gateway.flask import error_response
from sse_gateway.results import StreamResult

log = logging.getLogger(__name__)

bp = Blueprint("chat", __name__)

TITLE_LENGTH = 60
# What the page says about a reply that did not end normally.
CANCEL_NOTES = {"deleted": "stopped", "client_disconnected": "the connection was lost",
                "shutdown": "the server restarted"}

JSONAnswer = tuple[dict[str, Any], int]


def chat_models() -> list[str]:
    """The models a conversation may use (CHAT_MODELS: a list or comma-separated)."""
    raw = current_app.config["CHAT_MODELS"]
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return [item.strip() for item in items if item.strip()]


def own_conversation(conversation_id: int) -> Conversation:
    """The signed-in user's conversation, else 404 (someone else's looks unknown)."""
    conversation = db.session.get(Conversation, conversation_id)
    if conversation is None or conversation.user_id != int(current_user.get_id()):
        abort(404)
    return conversation


def history(conversation_id: int) -> list[ChatMessage]:
    """A conversation's messages, oldest first."""
    return list(db.session.scalars(select(ChatMessage)
                                   .where(ChatMessage.conversation_id == conversation_id)
                                   .order_by(ChatMessage.id)))


def build_prompt(conversation: Conversation) -> list[dict[str, str]]:
    """The model's input: the system prompt, then every finished turn (a stopped
    reply as far as it got: that is what the user saw)."""
    system = current_app.config["CHAT_SYSTEM_PROMPT"].format(username=current_user.username)
    messages = [{"role": "system", "content": system}]
    for message in history(conversation.id):
        if message.role == "user" or (message.status != "streaming" and message.content):
            messages.append({"role": message.role, "content": message.content})
    return messages


# ------------------------------------------------------------------------------ pages


@bp.get("/")
@login_required
def index() -> str:
    """The chat page with no conversation open: the first message starts one."""
    return render_page(None)


@bp.get("/c/<int:conversation_id>")
@login_required
def conversation_page(conversation_id: int) -> str:
    """One conversation, as saved."""
    return render_page(own_conversation(conversation_id))


def render_page(conversation: Conversation | None) -> str:
    conversations = db.session.scalars(
        select(Conversation).where(Conversation.user_id == int(current_user.get_id()))
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())).all()
    messages = history(conversation.id) if conversation is not None else []
    return render_template("chat.html", conversations=conversations, conversation=conversation,
                           messages=messages, models=chat_models(),
                           cancel_notes=CANCEL_NOTES)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """For load balancers (and the tests): the process answers."""
    return {"status": "ok"}


# ------------------------------------------------------------------------------ API


@bp.post("/api/conversations")
@login_required
def create_conversation() -> JSONAnswer:
    """Start a conversation: ``{"model": ...}`` (optional, one of CHAT_MODELS)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {"error": "send a JSON object"}, 400
    model = body.get("model") or chat_models()[0]
    if model not in chat_models():
        return {"error": f"model: choose one of {', '.join(chat_models())}"}, 400
    conversation = Conversation(user_id=int(current_user.get_id()), title="New conversation",
                                model=model)
    db.session.add(conversation)
    db.session.commit()
    return {"id": conversation.id, "model": model,
            "url": url_for("chat.conversation_page", conversation_id=conversation.id),
            "messages_url": url_for("chat.send_message", conversation_id=conversation.id)}, 201


@bp.post("/api/conversations/<int:conversation_id>/messages")
@login_required
def send_message(conversation_id: int) -> ResponseReturnValue:
    """Store the user's text and stream the reply (Server-Sent Events).

    The reply is stored at once as ``streaming`` under the stream's id, so a
    reload shows it (and follows it), and the completion hook finds it.
    """
    conversation = own_conversation(conversation_id)
    body = request.get_json(silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return {"error": "text: write something"}, 400
    if not history(conversation.id):
        conversation.title = text.strip()[:TITLE_LENGTH]
    question = ChatMessage(conversation_id=conversation.id, role="user", content=text)
    reply = ChatMessage(conversation_id=conversation.id, role="assistant", status="streaming",
                        stream_id=secrets.token_urlsafe(18))
    conversation.updated_at = now()
    db.session.add_all([question, reply])
    db.session.commit()
    try:
        return streaming.stream(model=conversation.model, messages=build_prompt(conversation),
                                metadata={"conversation_id": str(conversation.id)},
                                stream_id=reply.stream_id)
    except (InvalidRequest, UnknownModel) as exc:
        forget(question, reply)
        return {"error": exc.message}, 400
    except StreamsError as exc:  # too many streams, overloaded: the product's JSON answer
        forget(question, reply)
        return error_response(exc)


def forget(*messages: ChatMessage) -> None:
    """Remove the turn a refused stream would have answered."""
    for message in messages:
        db.session.delete(message)
    db.session.commit()


# ------------------------------------------------------------------------------ the hook


@streaming.on_end
def save_reply(result: StreamResult) -> None:
    """Store a reply when its stream ends: whole, as far as it got when
    stopped, or with its error. Runs once per stream, with an app context but
    no request, so in a session of its own."""
    with db.new_session() as session, session.begin():
        reply = session.scalar(select(ChatMessage)
                               .where(ChatMessage.stream_id == result.stream_id))
        if reply is None:
            log.warning("no reply waits for stream %s", result.stream_id)
            return
        reply.content = result.text
        reply.status = result.status  # done, cancelled or error
        reply.note = note(result)
        reply.output_tokens = (result.usage or {}).get("output_tokens")
        conversation = session.get(Conversation, int(result.metadata["conversation_id"]))
        if conversation is not None:
            conversation.updated_at = now()
    log.info("saved reply %s (%s, %d characters)", reply.id, result.status, len(result.text))


def note(result: StreamResult) -> str:
    """Why a reply ended, for the page ("" when it simply finished)."""
    if result.status == "done":
        return "" if result.reason == "stop" else f"finish reason: {result.reason}"
    if result.status == "cancelled":
        return CANCEL_NOTES.get(result.reason, result.reason)
    return f"{result.reason}: {result.terminal.get('message', '')}".strip()
