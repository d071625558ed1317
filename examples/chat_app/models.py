"""The app's tables (SQLAlchemy 2.x, SQLite by default) and its session handling.

A request's session lives in the app context (``db.session``) and is closed at
teardown, which Flask runs as soon as a streaming view has returned its
response, before the first token. Code that runs later, such as the completion
hook, opens its own (``db.new_session()``).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g
from sqlalchemy import ForeignKey, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm import sessionmaker as make_sessionmaker
from werkzeug.security import generate_password_hash

# Users created at start-up when missing: username -> password.
DEMO_USERS = {"alice": "alice", "bob": "bob"}


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))

    # Flask-Login's user protocol.
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        """The id Flask-Login keeps in the session cookie (and the streams' owner)."""
        return str(self.id)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)


class ChatMessage(Base):
    """One turn. An assistant reply is created as ``streaming`` when its stream
    starts and completed by the completion hook: ``done``, ``cancelled`` (the
    partial reply) or ``error``; ``note`` says why it ended (finish reason,
    cancel reason or error)."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # user or assistant
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="done")
    note: Mapped[str] = mapped_column(Text, default="")
    stream_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    output_tokens: Mapped[int | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=now)


class Database:
    """The engine and sessions of one app (``db.init_app(app)``, like an extension)."""

    def __init__(self) -> None:
        self._sessions: make_sessionmaker[Session] | None = None

    def init_app(self, app: Flask) -> None:
        engine = create_engine(app.config["DATABASE_URL"])
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        self._sessions = make_sessionmaker(engine, expire_on_commit=False)
        app.teardown_appcontext(self._close)
        Base.metadata.create_all(engine)
        self._seed(engine)

    def new_session(self) -> Session:
        """A session of its own, for code outside a request (close it yourself)."""
        assert self._sessions is not None, "db.init_app(app) first"
        return self._sessions()

    @property
    def session(self) -> Session:
        """The current app context's session, closed when the context ends."""
        if "db_session" not in g:
            g.db_session = self.new_session()
        session: Session = g.db_session
        return session

    @staticmethod
    def _close(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()

    def _seed(self, engine: Engine) -> None:
        with self.new_session() as session:
            for username, password in DEMO_USERS.items():
                if session.scalar(select(User).where(User.username == username)) is None:
                    session.add(User(username=username,
                                     password_hash=generate_password_hash(password)))
                    try:
                        session.commit()
                    except IntegrityError:  # another worker seeded it first
                        session.rollback()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL lets readers (the page) go on while a reply is written."""
    if isinstance(connection, sqlite3.Connection):
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
