"""The streams service: start, follow, cancel, look up, drain and close streams.

Everything a transport needs, with plain values in and out and no web
framework: a view parses its request, calls one method, renders the result
(``Reader`` batches as SSE, say). Admission lives here: a draining or full
worker, per-holder stream slots and reader caps. So do owners: a stream's
broker key is ``<owner>.<id>``, each owner has its own ids, and another
owner's stream is as unknown as a missing one. Refusals are
``sse_gateway.errors``; a store that does not answer is ``StoreUnreachable``.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple, ParamSpec, TypeVar

import gevent

from sse_gateway.broker import (
    ENDED,
    RUNNING,
    Broker,
    BrokerError,
    BrokerOptions,
    BrokerUnavailable,
    ConversationFull,
    StreamInfo,
    StreamNotFound,
    open_broker,
)
from sse_gateway.broker import PositionGone as EventsDropped
from sse_gateway.broker import TooManyReaders as ReadersRefused
from sse_gateway.config import StreamsConfig
from sse_gateway.errors import (
    InvalidRequest,
    NotFound,
    PositionGone,
    RequestTooLarge,
    StoreUnreachable,
    StreamExists,
    UnknownModel,
)
from sse_gateway.events import Event
from sse_gateway.hooks import EndHooks, Hook
from sse_gateway.providers import Catalog, ModelUnavailable, Provider, build_providers
from sse_gateway.providers.base import Unsupported
from sse_gateway.pump import Pump, PumpGroup
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.reader import Reader
from sse_gateway.results import Message, StreamResult
from sse_gateway.streams import conversations, ended
from sse_gateway.streams.admission import admit, scoped, too_many_readers
from sse_gateway.transports import dialects
from sse_gateway.transports.dialects import SSE
from sse_gateway.upstream import Candidate, RetryPolicy
from sse_gateway.validation import (
    CONVERSATION_ID,
    BodyTooLarge,
    InvalidBody,
    StreamRequest,
    parse_stream_request,
)
from sse_gateway.validation import messages as valid_messages

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class NothingFollows(NamedTuple):
    """A reader's position is at or past the end of an ended stream: no event will
    ever follow (over HTTP: 204, so a browser's EventSource stops reconnecting)."""

    stream_id: str


class Held:
    """An open WebSocket's place among its holder's readers (``Streams.hold_socket``):
    renewed while it is open, given back when it closes (else it lapses)."""

    def __init__(self, broker: Broker, holder: str, lease: str) -> None:
        self._broker = broker
        self._holder = holder
        self._lease: str | None = lease

    def renew(self) -> None:
        if self._lease is not None:
            with suppress(BrokerError):  # a store outage: it lapses, as readers' leases do
                self._broker.renew_hold(self._holder, self._lease)

    def release(self) -> None:
        """Idempotent."""
        lease, self._lease = self._lease, None
        if lease is not None:
            with suppress(BrokerError):
                self._broker.release_hold(self._holder, lease)


class Detached(NamedTuple):
    """A stream started with no reader (``detach``): read it later by its id."""

    stream_id: str
    model: str


def _reserved(added: list[bytes], stream_id: str) -> int:
    """The bytes a start needs in its conversation: its messages, and room for at
    least the marker of its answer (so what is kept never exceeds the bound)."""
    return sum(map(len, added)) + len(conversations.omitted("cancelled", stream_id))


def broker_options(config: StreamsConfig) -> BrokerOptions:
    """How the broker bounds and expires what it keeps, from the settings."""
    return BrokerOptions(
        ttl=config.stream_ttl_s, lease_ttl=config.reader_lease_ttl_s,
        producer_timeout=config.producer_timeout_s,
        max_events=config.max_events_per_stream, max_bytes=config.max_stream_bytes,
        max_stored_bytes=config.max_stored_bytes_per_key,
        max_connections=config.redis_max_connections,
        conversation_ttl=config.conversation_ttl_s,
        max_conversation_bytes_per_owner=config.max_conversation_bytes_per_key)


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Turn the store's own failures into the service's errors."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with _store_errors():
            return method(*args, **kwargs)

    return call


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except BrokerUnavailable as exc:
        log.warning("broker unavailable: %s", exc)
        raise StoreUnreachable() from None
    except StreamNotFound:
        raise NotFound("no such stream (it may have expired)") from None


class Streams:
    """The engine's one entry point: one per process, built from a ``StreamsConfig``."""

    def __init__(self, config: StreamsConfig, *, broker: Broker | None = None,
                 providers: Mapping[str, Provider] | None = None) -> None:
        self.config = config
        if broker is None:
            broker = open_broker(config.broker_url, broker_options(config))
        self.broker = broker
        self.catalog = Catalog(dict(build_providers(config) if providers is None else providers),
                               config.models)
        self.policy = RetryPolicy(config.retry_max_attempts, config.retry_budget_s,
                                  config.retry_base_delay_s, config.retry_max_delay_s,
                                  config.ttft_timeout_s, config.token_timeout_s)
        self._pumps = PumpGroup()
        self.hooks = EndHooks(config.end_hook_timeout_s)
        self.broker.on_lost = self._lost
        self._sweeper = ended.Sweeper(self.broker, config.producer_timeout_s / 2)

    def on_end(self, hook: Hook) -> Hook:
        """Call ``hook(result)`` once for every stream after its terminal event.

        In the process that stored that event: the producer's, or, for a
        stream whose producer died, the one that declared it lost. In its own
        greenlet, bounded by ``end_hook_timeout_s``; what it raises is logged.
        Register hooks before streams start: a stream started while no hook
        was registered calls none (it kept no text for them); a stream started
        with hooks calls every hook registered by the time it ends. A stream
        declared lost calls the hooks of the process that declares it.
        """
        self.hooks.add(hook)
        self._sweeper.ensure()
        return hook

    def parse(self, raw: bytes | Mapping[str, Any]) -> StreamRequest:
        """Validate a request body (JSON text, or its value) within this service's bounds."""
        config = self.config
        try:
            return parse_stream_request(raw, max_tokens_limit=config.max_tokens_limit,
                                        max_messages=config.max_messages,
                                        max_resume_grace_s=config.max_resume_grace_s,
                                        max_fallbacks=config.max_fallbacks,
                                        max_tools=config.max_tools,
                                        max_tools_bytes=config.max_tools_bytes,
                                        max_image_bytes=config.max_image_bytes)
        except BodyTooLarge as exc:
            raise RequestTooLarge(exc.message, param=exc.param) from None
        except InvalidBody as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None

    @_translated
    def start(self, request: StreamRequest | Callable[[], StreamRequest], *, owner: str,
              holder: str, caller: str = "", stream_id: str | None = None, digest: str = "",
              position: int | None = None, keep_text: bool = False,
              dialect: str = SSE) -> Reader | NothingFollows | Detached:
        """Start a stream of ``owner``'s and return its first reader (held by ``holder``).

        ``stream_id`` is the client's own id (else one is drawn), ``digest``
        the request's fingerprint. A start naming an existing stream of the
        owner is a client retrying a request whose answer it lost: with the
        same digest, or with a ``position`` (the last event it saw), it
        resumes that stream instead of paying for a second answer; with
        another request it is StreamExists. ``request`` may be a callable that
        validates the body: it is called only when a new stream starts.
        ``caller`` names the client in the stream's log lines. ``keep_text``
        keeps the answer's text in the producer's state while it runs (for
        whoever consumes the finished answer; a copy as large as the answer);
        it is kept anyway while completion hooks are registered. A request
        with ``detach`` starts with no reader: the answer is ``Detached``, and
        its resume grace runs until a reader follows it. ``dialect`` is the wire
        format every response renders the stream in (``transports.dialects``);
        a retry of a stream created in another dialect is StreamExists.

        A request with ``conversation_id`` is sent after the turns ``owner``'s
        conversation of that id keeps (``streams/conversations.py``); its
        messages are added to it as the stream starts (a retry that resumes
        adds nothing), its answer just before its terminal event is stored.
        RequestTooLarge (413) when the conversation, these messages and an
        answer would exceed ``max_conversation_turns`` or
        ``max_conversation_bytes``. An addition that takes the owner's
        conversations over ``max_conversation_bytes_per_key`` forgets its
        least recently added-to other ones (the broker, in the same step).
        """
        self._sweeper.ensure()
        existing = self._owned(stream_id, owner) if stream_id is not None else None
        if existing is not None and existing.dialect != dialect:
            raise StreamExists(f"a stream with id {stream_id!r} already exists (in another "
                               "dialect)", param="X-Stream-ID")
        if existing is not None and (position is not None
                                     or hmac.compare_digest(existing.request_digest, digest)):
            assert stream_id is not None
            return self._follow(stream_id, existing, -1 if position is None else position, holder)
        if position is not None:
            if stream_id is None:
                raise InvalidRequest("Last-Event-ID: a POST resumes only the stream named by "
                                     "its X-Stream-ID", param="Last-Event-ID")
            raise NotFound(f"no stream {stream_id!r} to resume")
        body = request() if callable(request) else request
        if existing is not None:
            raise StreamExists(f"a stream with id {stream_id!r} already exists (with another "
                               "request)", param="X-Stream-ID")
        stream_id = stream_id or secrets.token_urlsafe(18)
        key = scoped(owner, stream_id)
        added: list[bytes] = []
        if body.conversation_id is not None:
            body, added = self._in_conversation(owner, body, stream_id)
        candidates = [self._candidate(model, body, "model" if i == 0 else f"fallbacks.{i - 1}")
                      for i, model in enumerate((body.model, *body.fallbacks))]
        slot_owner = admit(self.config, self.broker, self._pumps, holder, key)
        created = round(time.time(), 3)
        try:
            if body.conversation_id is not None:
                self._add_sent(owner, body.conversation_id, added, key, len(body.sent))
            if not self.broker.create(StreamInfo(key, owner=owner, model=body.model,
                                                 created=created, request_digest=digest,
                                                 metadata=body.metadata, dialect=dialect,
                                                 conversation_id=body.conversation_id or "")):
                raise StreamExists(f"a stream with id {stream_id!r} already exists",
                                   param="X-Stream-ID")
            lease = None if body.detach else self.broker.attach_reader(key, holder)
        except Exception:
            if slot_owner:
                self.broker.release_slot(slot_owner, key)
            raise
        config = self.config
        grace = config.resume_grace_s if body.resume_grace_s is None else body.resume_grace_s
        pump = Pump(
            broker=self.broker, candidates=candidates, policy=self.policy,
            stream_id=key, public_id=stream_id, created=created, grace_s=grace,
            tick_s=config.producer_timeout_s / 4, stream_timeout_s=config.stream_timeout_s,
            slot_owner=slot_owner, caller=caller, on_exit=self._pumps.discard,
            keep_text=keep_text or bool(self.hooks) or body.conversation_id is not None,
            detached=body.detach,
            on_end=self._produced(owner, body.metadata) if self.hooks else None,
            on_ending=(self._answered(owner, body.conversation_id, key)
                       if body.conversation_id is not None else None),
            coalesce_s=(config.coalesce_ms if body.coalesce_ms is None
                        else body.coalesce_ms) / 1000,
            chunking=config.chunking if body.chunking is None else body.chunking)
        try:
            self._pumps.start(pump)  # appends the start event: the store may fail here
        except BaseException:
            self._pumps.discard(pump)  # never produced: it must not count for the worker
            with suppress(BrokerError):
                if lease is not None:
                    self.broker.release_reader(key, lease)
                if slot_owner:
                    self.broker.release_slot(slot_owner, key)
            raise
        if lease is None:
            return Detached(stream_id, body.model)
        return Reader(self.broker, key, stream_id=stream_id, after=-1, lease=lease,
                      idle_s=config.heartbeat_s, model=body.model,
                      started=True, dialect=dialect)

    @_translated
    def follow(self, stream_id: str, owner: str, position: int | None,
               holder: str) -> Reader | NothingFollows:
        """A reader of ``owner``'s stream from ``position`` (None: from the start)."""
        self._sweeper.ensure()
        info = self._info(stream_id, owner)
        return self._follow(stream_id, info, -1 if position is None else position, holder)

    @_translated
    def hold_socket(self, holder: str) -> Held:
        """Count an open WebSocket of ``holder`` as one of its readers while it is open
        (``max_readers_per_key``, with its SSE responses and the streams its
        sockets follow): TooManyReaders (429) when it holds as many already."""
        try:
            lease = self.broker.hold(holder, self.config.max_readers_per_key)
        except ReadersRefused as refused:
            raise too_many_readers(refused.scope, refused.limit) from None
        return Held(self.broker, holder, lease)

    @_translated
    def info(self, stream_id: str, owner: str) -> StreamInfo:
        """What is known of ``owner``'s stream, named by the id its client knows."""
        return dataclasses.replace(self._info(stream_id, owner), stream_id=stream_id)

    @_translated
    def message(self, stream_id: str, owner: str) -> Message:
        """The assistant message ``owner``'s stream has assembled so far."""
        try:
            return ended.message(self.broker, self._info(stream_id, owner))
        except EventsDropped:
            raise PositionGone("the first events of this stream are no longer kept: its "
                               "message cannot be assembled") from None

    @_translated
    def cancel(self, stream_id: str, owner: str, reason: str = "deleted") -> tuple[StreamInfo, bool]:
        """Ask ``owner``'s running stream to stop; True if it was running (and now is asked)."""
        info = self._info(stream_id, owner)
        running = info.status == RUNNING
        if running:
            info = self.broker.cancel(info.stream_id, reason) or info
        return dataclasses.replace(info, stream_id=stream_id), running

    @_translated
    def set_chat(self, owner: str, chat_id: str, stream_id: str) -> None:
        """Make ``stream_id`` the current stream of ``owner``'s chat ``chat_id`` (kept
        as long as an ended stream, ``stream_ttl_s``)."""
        self.broker.set_chat(owner, chat_id, stream_id)

    @_translated
    def chat_stream(self, owner: str, chat_id: str, *, running: bool = True) -> str | None:
        """The id of ``owner``'s chat's current stream, if there is one (and, with
        ``running``, if it still runs); None otherwise."""
        stream_id = self.broker.chat(owner, chat_id)
        if stream_id is None:
            return None
        info = self._owned(stream_id, owner, confirm=True)
        if info is None or (running and info.status != RUNNING):
            return None
        return stream_id

    @_translated
    def conversation(self, owner: str, conversation_id: str) -> list[dict[str, Any]]:
        """The turns ``owner``'s conversation keeps, oldest first, as stored (markers
        included: ``streams/conversations.py``); NotFound when there is none
        (never started, expired, forgotten, or another owner's)."""
        kept = (self.broker.conversation(owner, conversation_id)
                if CONVERSATION_ID.fullmatch(conversation_id) else [])
        if not kept:
            raise NotFound(f"no conversation {conversation_id!r}")
        return conversations.turns(kept)

    @_translated
    def forget_conversation(self, owner: str, conversation_id: str) -> None:
        """Forget ``owner``'s conversation (the next start with its id begins a new
        one); NotFound when there is none."""
        if not (CONVERSATION_ID.fullmatch(conversation_id)
                and self.broker.forget_conversation(owner, conversation_id)):
            raise NotFound(f"no conversation {conversation_id!r}")

    def models(self) -> list[dict[str, Any]]:
        """The models clients may name, for pickers."""
        return self.catalog.listing()

    def providers(self) -> dict[str, bool]:
        """Each provider, and whether it is configured."""
        return {name: p.available for name, p in self.catalog.providers.items()}

    def ping(self) -> None:
        """Raise StoreUnreachable when the stream store does not answer (not logged:
        a readiness probe asks this often)."""
        try:
            self.broker.ping()
        except BrokerError:
            raise StoreUnreachable() from None

    @property
    def draining(self) -> bool:
        return self._pumps.draining

    @property
    def active(self) -> int:
        """Streams this process is producing."""
        return len(self._pumps)

    def drain(self, graceful_timeout_s: float) -> None:
        """Start shutting down: refuse new streams, end the rest before the timeout
        (``shutdown_margin_s`` before it, with ``cancelled``/``shutdown``)."""
        self._pumps.drain(max(0.0, graceful_timeout_s - self.config.shutdown_margin_s))

    def close(self) -> None:
        """Release the store's connections (and its pub/sub thread) and the SDK pools.

        Call it when the process is done with streams (after ``drain``):
        streams still running are not ended by it; completion hooks still
        running get up to their timeout first.
        """
        self._sweeper.stop()
        self.hooks.join(self.config.end_hook_timeout_s)
        self.broker.close()
        for provider in self.catalog.providers.values():
            provider.close()

    def _produced(self, owner: str, metadata: dict[str, str]
                  ) -> Callable[[StreamState, Outcome], None]:
        """What a pump calls once it stored its stream's terminal event."""
        def fire(state: StreamState, outcome: Outcome) -> None:
            # The result is built later, in the hooks' greenlet: the end is now.
            ended_at = time.time()
            self.hooks.fire(lambda: ended.from_state(state, outcome, owner, metadata, ended_at),
                            time.monotonic())
        return fire

    def _in_conversation(self, owner: str, body: StreamRequest, stream_id: str
                         ) -> tuple[StreamRequest, list[bytes]]:
        """``body`` with the conversation's kept turns before its messages (checked as
        one list), and its messages as the turns to add; 413 over the bounds."""
        assert body.conversation_id is not None
        config = self.config
        kept = self.broker.conversation(owner, body.conversation_id)
        added = conversations.sent(body.sent, stream_id)
        size = sum(map(len, kept))
        self._within_bounds(len(kept), size, len(added), _reserved(added, stream_id))
        history = conversations.for_provider(conversations.turns(kept))
        try:
            combined = valid_messages([*history, *body.sent], config.max_messages,
                                      config.max_image_bytes)
        except InvalidBody as exc:
            raise self._in_history(exc, len(history)) from None
        return dataclasses.replace(body, request=dataclasses.replace(
            body.request, messages=combined)), added

    def _within_bounds(self, turns: int, size: int, new_turns: int, new_size: int) -> None:
        """413 unless a conversation of ``turns`` and ``size`` bytes has room for
        ``new_turns`` of ``new_size`` bytes (its answer's marker included) and
        its answer's turn."""
        config = self.config
        if (turns + new_turns + 1 <= config.conversation_turns
                and size + new_size <= config.max_conversation_bytes):
            return
        raise RequestTooLarge(
            f"conversation_id: the conversation keeps {turns} messages ({size} bytes); with "
            f"this request's {new_turns} ({new_size} bytes with room for the answer's marker) "
            "and its answer it would hold more "
            f"than {config.conversation_turns} messages or {config.max_conversation_bytes} "
            "bytes. Forget it (DELETE the conversation) or start a new conversation",
            param="conversation_id")

    @staticmethod
    def _in_history(exc: InvalidBody, kept: int) -> InvalidRequest:
        """A refusal of the combined messages, named as the client knows them: its
        own messages by their index in its request, else the kept conversation."""
        param = exc.param or ""
        head, _, rest = param.partition(".")
        index, _, tail = rest.partition(".")
        if head != "messages" or not index.isdigit():
            return InvalidRequest(exc.message, param=exc.param)
        if int(index) >= kept:
            mine = ".".join(filter(None, ("messages", str(int(index) - kept), tail)))
            return InvalidRequest(exc.message.replace(param, mine, 1), param=mine)
        return InvalidRequest(f"conversation_id: the kept conversation is refused "
                              f"({exc.message}); forget it or start a new conversation",
                              param="conversation_id")

    def _add_sent(self, owner: str, conversation_id: str, added: list[bytes], key: str,
                  count: int) -> None:
        """Add a starting stream's messages to its conversation (once per stream)."""
        config = self.config
        # Room is left for the answer: a turn, and at least its marker's bytes.
        public_id = key[len(owner) + 1:] if owner else key
        room = _reserved(added, public_id) - sum(map(len, added))
        try:
            self.broker.add_turns(owner, conversation_id, added, once=key,
                                  max_turns=config.conversation_turns - 1,
                                  max_bytes=config.max_conversation_bytes - room)
        except ConversationFull as full:  # another request filled it meanwhile
            self._within_bounds(full.turns, full.size, count, _reserved(added, public_id))
            raise  # not reached: over a bound, the check above refuses

    def _answered(self, owner: str, conversation_id: str, key: str
                  ) -> Callable[[StreamState, Outcome], None]:
        """What a pump calls just before it stores its terminal event: add the answer
        (as far as it got) to the stream's conversation."""
        def add(state: StreamState, outcome: Outcome) -> None:
            self._add_answer(owner, conversation_id, key,
                             conversations.answer(state.message(), outcome.status,
                                                  state.public_id), outcome.status)
        return add

    def _add_answer(self, owner: str, conversation_id: str, key: str, turn: bytes,
                    status: str) -> None:
        """Add a stream's answer to its conversation, or, when it does not fit, its
        marker (for which its start left room); once, whoever tries; and only
        while the conversation still holds the stream's own messages (forgotten
        meanwhile, by DELETE, eviction or expiry: an answer alone would begin
        the next request's history with an assistant message)."""
        config = self.config
        public_id = key[len(owner) + 1:] if owner else key
        once = key + conversations.ANSWER

        def add(answer: bytes) -> bool:
            return self.broker.add_turns(owner, conversation_id, [answer], once=once,
                                         max_turns=config.conversation_turns,
                                         max_bytes=config.max_conversation_bytes, after=key)
        try:
            try:
                added = add(turn)
            except ConversationFull:
                log.info("stream %s: its answer (%d bytes) does not fit in conversation %s; "
                         "kept as omitted", public_id, len(turn), conversation_id)
                added = add(conversations.omitted(status, public_id))
            if not added:
                log.info("stream %s: its answer was not added to conversation %s: already "
                         "added, or the conversation was forgotten meanwhile", public_id,
                         conversation_id)
        except BrokerError as exc:
            log.warning("stream %s: its answer was not added to conversation %s (%s)",
                        public_id, conversation_id, type(exc).__name__)

    def _lost(self, key: str) -> None:
        """The broker ended a stream as lost, here: this process adds its answer to its
        conversation (as far as the store keeps it) and calls its hooks."""
        ended_at = time.time()
        gevent.spawn(self._lost_answer, key)

        def result() -> StreamResult | None:
            info = self.broker.info(key)
            if info is None:
                return None
            public_id = key[len(info.owner) + 1:] if info.owner else key
            return ended.from_store(self.broker, key, public_id, ended_at)
        self.hooks.fire(result, time.monotonic())

    def _lost_answer(self, key: str) -> None:
        """A lost stream's answer, from the store, added to its conversation (if any)."""
        try:
            info = self.broker.info(key)
            if info is None or not info.conversation_id:
                return
            public_id = key[len(info.owner) + 1:] if info.owner else key
            result = ended.from_store(self.broker, key, public_id, time.time())
        except BrokerError as exc:
            log.warning("stream %s: lost; its answer was not added to its conversation (%s)",
                        key, type(exc).__name__)
            return
        if result is not None:
            self._add_answer(info.owner, info.conversation_id, key,
                             conversations.answer(result.message, info.status, public_id),
                             info.status)

    def _candidate(self, model: str, body: StreamRequest, param: str) -> Candidate:
        """The model (or a fallback) as one candidate of the stream; its provider
        must be able to honour every field of the request (else 400 naming it)."""
        try:
            provider, provider_model = self.catalog.resolve(model)
        except ModelUnavailable as exc:
            raise UnknownModel(str(exc), param=param) from None
        chat = body.chat(provider_model)
        try:
            provider.check(chat)
        except Unsupported as exc:
            raise InvalidRequest(f"{exc.param}: {exc.message} (model {model!r})",
                                 param=exc.param) from None
        return Candidate(model, provider, chat)

    def _follow(self, stream_id: str, info: StreamInfo, after: int,
                holder: str) -> Reader | NothingFollows:
        """A reader of ``info`` from position ``after``, or NothingFollows past its end."""
        if after >= info.last_event_id and info.status in ENDED:
            return NothingFollows(stream_id)
        if after > info.last_event_id:
            raise PositionGone(f"event {after} is past the last event of this stream "
                               f"({info.last_event_id}); the store lost it",
                               param="last_event_id")
        key = info.stream_id
        try:  # read now: a position that is gone must be refused before any event
            first = self.broker.read(key, after, timeout=0)
            history: tuple[Event, ...] = ()
            if after >= 0 and dialects.needs_history(info.dialect):
                history = tuple(e for e in ended.read_all(self.broker, key, upto=after)
                                if e.id is not None and e.id <= after)
        except EventsDropped:
            raise PositionGone(f"events after {after} are no longer kept; start a new stream",
                               param="last_event_id") from None
        except StreamNotFound:
            raise NotFound(f"no stream {stream_id!r}") from None
        config = self.config
        try:
            lease = self.broker.attach_reader(key, holder, config.max_readers_per_stream,
                                              config.max_readers_per_key)
        except ReadersRefused as refused:
            raise too_many_readers(refused.scope, refused.limit) from None
        return Reader(self.broker, key, stream_id=stream_id, after=after, lease=lease,
                      idle_s=config.heartbeat_s, model=info.model,
                      first=first, dialect=info.dialect, history=history)

    def _owned(self, stream_id: str, owner: str, *, confirm: bool = False) -> StreamInfo | None:
        """``owner``'s stream of this id, or None."""
        info = self.broker.info(scoped(owner, stream_id), confirm=confirm)
        if info is None or not hmac.compare_digest(info.owner, owner):
            return None
        return info

    def _info(self, stream_id: str, owner: str) -> StreamInfo:
        """The stream, if it exists and ``owner`` owns it; another owner's is as unknown."""
        # confirm: a stream whose producer died is reported ended (stream_lost),
        # not running, by this very look.
        info = self._owned(stream_id, owner, confirm=True)
        if info is None:
            raise NotFound(f"no stream {stream_id!r}")
        return info

