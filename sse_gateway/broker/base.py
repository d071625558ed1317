"""The broker: the only state streams share, behind one small interface.

A stream is a numbered log of events (``events.Event``, ids from 0), a
status, a cancel flag and a set of reader leases. The pump is the single writer; every
SSE response is a reader that asks for the events after a position. Backends
are chosen by URL scheme (``memory://``, ``redis://``) and must pass the same
contract tests (``tests/test_broker.py``).

Events are stored exactly as the producer built them (name and serialised
payload), never as a transport's bytes: a transport renders them, the same
way on every delivery, so a replay is identical to the first one.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sse_gateway.events import RUNNING, Event

log = logging.getLogger(__name__)

# What a watcher is told: the stream was cancelled, or its readers changed.
CANCEL, READERS = "cancel", "readers"
Watcher = Callable[[str], None]


class BrokerError(Exception):
    """Base of the broker's own errors."""


class StreamNotFound(BrokerError, LookupError):
    """No stream with this id (never created, or expired)."""


class PositionGone(BrokerError, LookupError):
    """The events after this position are no longer kept."""


class BrokerUnavailable(BrokerError, RuntimeError):
    """The backend cannot be reached."""


class TooManyReaders(BrokerError):
    """A reader lease was refused: ``scope`` ("stream" or "holder") holds its cap."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} holds {limit} readers")
        self.scope = scope
        self.limit = limit


class ConversationFull(BrokerError):
    """Turns were not added: the conversation would keep more than its bounds.
    ``turns`` and ``size`` are what it keeps now."""

    def __init__(self, turns: int, size: int) -> None:
        super().__init__(f"the conversation keeps {turns} turns, {size} bytes")
        self.turns = turns
        self.size = size


class StreamEnded(BrokerError, ValueError):
    """The stream is no longer running: a write for it came too late (it was ended
    elsewhere, e.g. declared lost while its producer could not reach the store)."""


@dataclass
class StreamInfo:
    """What is known of a stream besides its events."""

    stream_id: str
    owner: str
    model: str
    created: float
    status: str = RUNNING
    last_event_id: int = -1
    usage: dict[str, Any] | None = None
    cancel_reason: str | None = None
    # A digest of the request that created it: a retried POST of the same
    # request resumes this stream instead of being refused as a duplicate.
    request_digest: str = ""
    # The creator's own values (string to string), for the status route and hooks.
    metadata: dict[str, str] = field(default_factory=dict)
    # The wire format it was created in: every response renders it so
    # (``transports.dialects``).
    dialect: str = "sse"
    # The conversation its answer is added to ("" none): whoever ends it
    # (its producer, or the process that declares it lost) adds the answer.
    conversation_id: str = ""

    def public(self) -> dict[str, Any]:
        """The status body of the HTTP contract."""
        return {"stream_id": self.stream_id, "status": self.status, "model": self.model,
                "created": self.created, "last_event_id": self.last_event_id,
                "usage": self.usage, "metadata": self.metadata}


# What one conversation counts for against its owner's bound besides its turns'
# bytes: its keys, its index entries, its addition names (measured: about 630
# bytes in memory, 650 in Redis, for a conversation of one short turn), so
# many tiny conversations cannot hide in the bound.
CONVERSATION_OVERHEAD = 640


@dataclass(frozen=True)
class BrokerOptions:
    """How a backend bounds and expires what it keeps."""

    ttl: float  # seconds an ended stream stays replayable
    lease_ttl: float = 45.0  # seconds a reader lease lives without renewal
    producer_timeout: float = 5.0  # a producer silent this long is dead
    max_events: int = 50_000  # events kept per stream; older positions are gone
    max_bytes: int = 4 << 20  # bytes of events (event_cost) kept per stream, likewise
    # Bytes of ended streams kept per owner; over it, its oldest ended streams go.
    max_stored_bytes: int = 64 << 20
    max_connections: int = 64  # connections to the backend, per process
    # Seconds a conversation is kept after its last turn was added.
    conversation_ttl: float = 86400.0
    # Bytes of all of one owner's conversations, each counting its turns' bytes
    # plus ``conversation_overhead``; over it, an addition forgets the owner's
    # least recently added-to other conversations first.
    max_conversation_bytes_per_owner: int = 64 << 20
    conversation_overhead: int = CONVERSATION_OVERHEAD  # 0 in tests of the arithmetic


# What one kept event counts for besides its name and payload: in memory the
# objects' headers and its slot in the log, so many tiny events cannot hide in
# the bound.
EVENT_OVERHEAD = 48
READ_COUNT = 1000  # events one read returns at most


def event_cost(event: Event) -> int:
    """The bytes an event counts for against ``max_bytes`` and ``max_stored_bytes``:
    its name, a separator and its payload (as Redis stores it), plus the overhead."""
    return len(event.name) + 1 + len(event.data) + EVENT_OVERHEAD


def log_evicted(owner: str, conversation_id: str, size: int) -> None:
    """Say that an addition forgot one of the owner's other conversations (its
    names and size only: never what it said)."""
    log.info("conversation %s of key %r (%d bytes) forgotten: the key's conversations "
             "keep more than their bound", conversation_id, owner, size)


class Batch(NamedTuple):
    """The result of one read: events after a position, and whether the stream ended."""

    events: list[Event]
    last_id: int  # id of the last event returned, or the position asked for
    ended: bool  # nothing will follow these events


class Broker(ABC):
    """Create, append, read from a position, finish, cancel, watch, lease readers."""

    # Called with a stream's key when this process ended it as ``stream_lost``
    # (its producer died elsewhere): exactly one process does, per stream.
    on_lost: Callable[[str], None] | None = None
    # Whether ``sweep`` has work to do: streams here can outlive their producer.
    sweeps = False

    @abstractmethod
    def create(self, info: StreamInfo) -> bool:
        """Register a running stream; False if the id is taken."""

    @abstractmethod
    def append(self, stream_id: str, event: Event) -> None:
        """Add the next event (its id is last_event_id + 1) and wake readers.

        Idempotent: the same event sent again under an id already stored (a retry
        of an append whose answer was lost) succeeds and changes nothing. Any
        other id raises ValueError; StreamEnded when the stream has ended.
        """

    @abstractmethod
    def finish(self, stream_id: str, event: Event, status: str,
               usage: dict[str, Any] | None = None) -> None:
        """Append the terminal event, set the final status, start the expiry clock.

        Idempotent as ``append``; ValueError for an id out of order while the
        stream runs, StreamEnded when it has already ended otherwise.
        """

    @abstractmethod
    def read(self, stream_id: str, after: int, timeout: float) -> Batch:
        """Events with ids > ``after``; wait up to ``timeout`` s when there are none yet.

        Raises StreamNotFound or PositionGone.
        """

    @abstractmethod
    def info(self, stream_id: str, *, confirm: bool = False) -> StreamInfo | None:
        """The stream's status, or None when unknown or expired.

        A running stream whose producer has gone silent is ended with
        ``stream_lost`` once the silence is confirmed (see RedisBroker); with
        ``confirm`` the call waits out that confirmation (at most half the
        producer timeout), so that one look tells the truth.
        """

    @abstractmethod
    def cancel(self, stream_id: str, reason: str) -> StreamInfo | None:
        """Ask the producer of a running stream to stop; tell its watchers."""

    @abstractmethod
    def watch(self, stream_id: str, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(CANCEL | READERS)`` on changes; returns the unwatch function."""

    @abstractmethod
    def attach_reader(self, stream_id: str, holder: str = "", max_per_stream: int = 0,
                      max_per_holder: int = 0) -> str:
        """Take a reader lease; the producer keeps going while one is held.

        The lease counts for the stream and for ``holder`` (who reads: a key
        id or a client address). Raises TooManyReaders, taking nothing, when
        either already holds its cap (0: no cap); the check and the take are
        one step, so concurrent requests cannot slip past it.
        """

    @abstractmethod
    def holder_readers(self, holder: str) -> int:
        """How many reader leases ``holder`` holds, on every stream."""

    @abstractmethod
    def hold(self, holder: str, max_per_holder: int = 0) -> str:
        """Take a lease that counts for ``holder`` alone, on no stream (an open
        WebSocket): the same count and cap as ``attach_reader``'s, checked and
        taken in one step (TooManyReaders "holder", taking nothing). It lapses
        unless renewed (``renew_hold``) within ``lease_ttl``."""

    @abstractmethod
    def renew_hold(self, holder: str, lease: str) -> None:
        """Keep a ``hold`` lease alive."""

    @abstractmethod
    def release_hold(self, holder: str, lease: str) -> None:
        """Give a ``hold`` lease back (idempotent)."""

    @abstractmethod
    def release_reader(self, stream_id: str, lease: str) -> None:
        """Give a lease back (idempotent); tell the watchers."""

    @abstractmethod
    def renew_reader(self, stream_id: str, lease: str) -> None:
        """Keep a lease alive; a lease not renewed for ``lease_ttl`` s lapses."""

    @abstractmethod
    def readers(self, stream_id: str) -> int:
        """How many reader leases are held."""

    @abstractmethod
    def producer_tick(self, stream_id: str, slot_owner: str | None = None
                      ) -> tuple[str | None, int]:
        """Say the producer is alive; return (cancel reason or None, readers).

        The producer calls this every few seconds: it catches a cancel or a
        reader change whose notification was lost, and its silence is how
        readers elsewhere learn that the producer died (``stream_lost``). It
        also keeps the stream's slot of ``slot_owner`` from lapsing.
        """

    @abstractmethod
    def take_slot(self, owner: str, stream_id: str, limit: int) -> bool:
        """Count a running stream against ``owner``; False if it already holds ``limit``.

        A slot lapses ``2 * producer_timeout`` after its producer last ticked,
        so the slots of a killed worker come back by themselves.
        """

    @abstractmethod
    def release_slot(self, owner: str, stream_id: str) -> None:
        """Give a slot back (idempotent)."""

    @abstractmethod
    def slots(self, owner: str) -> int:
        """How many slots ``owner`` holds."""

    @abstractmethod
    def set_chat(self, owner: str, chat_id: str, stream_id: str) -> None:
        """Make ``stream_id`` the current stream of ``owner``'s chat ``chat_id`` (the
        AI SDK's resume asks for a chat, not a stream); kept ``ttl`` seconds."""

    @abstractmethod
    def chat(self, owner: str, chat_id: str) -> str | None:
        """The current stream id of ``owner``'s chat ``chat_id``, or None."""

    @abstractmethod
    def conversation(self, owner: str, conversation_id: str) -> list[bytes]:
        """Every turn ``owner``'s conversation keeps (each as the JSON text it was
        added as), oldest first; empty when unknown or expired."""

    @abstractmethod
    def add_turns(self, owner: str, conversation_id: str, turns: list[bytes], *, once: str,
                  max_turns: int, max_bytes: int, after: str | None = None) -> bool:
        """Add ``turns`` to the end of ``owner``'s conversation (creating it), and
        keep it ``conversation_ttl`` seconds from now.

        With ``after`` (the name of an earlier addition), only to the conversation
        that holds that addition: if it was forgotten (deleted, evicted, expired)
        meanwhile, nothing is added (an answer never lands without its question)
        and False is returned.

        One step: raises ConversationFull, adding nothing, when it would then
        keep more than ``max_turns`` turns or ``max_bytes`` bytes (each turn's
        length). ``once`` names this addition: an addition under a name already
        used in this conversation adds nothing and returns False (a retry), and
        refreshes nothing either.

        In the same step, while the owner's conversations together count for
        more than ``max_conversation_bytes_per_owner`` (each its bytes plus
        ``conversation_overhead``), its least recently added-to other
        conversation is forgotten (``log_evicted``); never this one, whose own
        ``max_bytes`` bounds it. Expired and forgotten conversations count for
        nothing.
        """

    @abstractmethod
    def forget_conversation(self, owner: str, conversation_id: str) -> bool:
        """Forget ``owner``'s conversation; False if there was none."""

    @abstractmethod
    def ping(self) -> None:
        """Raise BrokerUnavailable when the backend cannot serve."""

    def sweep(self) -> None:  # noqa: B027 - optional: only shared backends lose producers
        """End as ``stream_lost`` the running streams whose producer went silent,
        whether or not anyone reads them (called every few seconds)."""

    def close(self) -> None:  # noqa: B027 - optional: only networked backends hold anything
        """Release connections."""
