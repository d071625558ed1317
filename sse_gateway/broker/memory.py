"""The in-process broker (``memory://``): one worker, nothing shared.

Readers wait on an event that the next change sets and replaces: an append
costs a deque append, a fresh event, and a wake-up only when someone waits
(no lock, no condition). Under gunicorn's gevent worker ``threading`` is patched, so the
events are gevent's; the same code works with real threads when unpatched
(one writer per stream, as the pump is). A stream keeps its last
``max_events`` events within ``max_bytes``; reads are of the last few, taken
from the right. Ended streams are forgotten ``ttl`` seconds after they end, or
sooner, oldest first, when their owner's ended streams keep more than
``max_stored_bytes``. Conversations expire ``conversation_ttl`` seconds after
their last addition, by the broker's clock (a test's fake one, say), or
sooner, least recently added-to first, when an addition takes their owner's
conversations over ``max_conversation_bytes_per_owner`` (each counting its
bytes and ``conversation_overhead``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

from sse_gateway.broker.base import (
    CANCEL,
    EVENT_OVERHEAD,
    READ_COUNT,
    READERS,
    Batch,
    Broker,
    BrokerOptions,
    ConversationFull,
    PositionGone,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
    TooManyReaders,
    Watcher,
    event_cost,
    log_evicted,
)
from sse_gateway.clock import REAL, Clock
from sse_gateway.events import ENDED, RUNNING, Event


def _copy(info: StreamInfo) -> StreamInfo:
    """A copy of ``info`` sharing no dict with it: what a caller holds, or is given,
    may change without changing what is kept (as with Redis)."""
    return replace(info, metadata=dict(info.metadata),
                   usage=dict(info.usage) if info.usage is not None else None)


@dataclass
class _Conversation:
    turns: list[bytes] = field(default_factory=list)
    size: int = 0  # the turns' bytes
    added: set[str] = field(default_factory=set)  # the names of its additions
    expires: float = 0.0  # by the broker's clock


@dataclass
class _Record:
    info: StreamInfo
    # Each event as its name (one shared string per kind) and its payload, in
    # two deques: an Event tuple per event would hold about 100 bytes more per
    # token, and reads build their tuples without copying a payload.
    names: deque[str] = field(default_factory=deque)
    payloads: deque[bytes] = field(default_factory=deque)
    offset: int = 0  # id of the first kept event; older events were dropped
    kept: int = 0  # the event_cost of the events kept
    forgotten: bool = False  # expired, or pushed out by its owner's newer streams
    # Set, and replaced by a fresh one, on every change: readers wait on it.
    changed: threading.Event = field(default_factory=lambda: threading.Event())
    leases: set[str] = field(default_factory=set)
    watchers: list[Watcher] = field(default_factory=list)


class MemoryBroker(Broker):
    """Streams in a dict of this process."""

    def __init__(self, options: BrokerOptions, clock: Clock = REAL) -> None:
        self._clock = clock
        self._conversation_ttl = options.conversation_ttl
        # (owner, conversation id) -> its turns, oldest added first
        self._conversations: OrderedDict[tuple[str, str], _Conversation] = OrderedDict()
        # owner -> its conversations by id, least recently added-to first, and
        # what they count for together (each its bytes and the overhead)
        self._owned: dict[str, OrderedDict[str, _Conversation]] = {}
        self._owned_bytes: dict[str, int] = {}
        self._max_owned = options.max_conversation_bytes_per_owner
        self._overhead = options.conversation_overhead
        self._ttl = options.ttl
        self._max_events = options.max_events
        self._max_bytes = options.max_bytes
        self._max_stored = options.max_stored_bytes
        self._records: dict[str, _Record] = {}
        # Ended streams in finish order = expiry order: all, and per owner with
        # the bytes they keep.
        self._expiry: deque[tuple[float, _Record]] = deque()
        self._ended: dict[str, deque[_Record]] = {}
        self._owner_bytes: dict[str, int] = {}
        self._slots: dict[str, set[str]] = {}
        self._held: dict[str, set[str]] = {}  # holder -> its reader leases
        self._holders: dict[str, str] = {}  # lease -> holder
        # (owner, chat id) -> (stream id, expiry), oldest set first
        self._chats: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def create(self, info: StreamInfo) -> bool:
        self._expire()
        if info.stream_id in self._records:
            return False
        self._records[info.stream_id] = _Record(_copy(info))
        return True

    def append(self, stream_id: str, event: Event) -> None:
        record = self._get(stream_id)
        if self._stored(record, event):
            return
        self._add(record, event)
        self._changed(record)

    def finish(self, stream_id: str, event: Event, status: str,
               usage: dict[str, Any] | None = None) -> None:
        record = self._get(stream_id)
        if self._stored(record, event):
            return
        self._add(record, event)
        record.info.status = status
        record.info.usage = usage
        self._changed(record)
        self._expire()
        self._expiry.append((time.monotonic() + self._ttl, record))
        self._keep_owner_within(record)

    def read(self, stream_id: str, after: int, timeout: float) -> Batch:
        record = self._get(stream_id)
        deadline = time.monotonic() + timeout
        while True:
            changed = record.changed  # taken before looking: a change after sets it
            if record.info.last_event_id > after or record.info.status in ENDED:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not changed.wait(remaining):
                break
        if record.forgotten:
            raise StreamNotFound(stream_id)
        last_id = record.info.last_event_id
        if after + 1 < record.offset:
            raise PositionGone(stream_id)
        # From the right: O(events returned), however long the log.
        # At most READ_COUNT events a read, as Redis: a reader far behind is
        # served in bounded batches, so what it renders at once is bounded too.
        behind = max(0, last_id - after)
        count = min(behind, READ_COUNT)
        skip = behind - count  # the newer events, left for the next read
        names = list(islice(reversed(record.names), skip, skip + count))[::-1]
        payloads = list(islice(reversed(record.payloads), skip, skip + count))[::-1]
        first = after + 1
        return Batch(list(map(Event, range(first, first + count), names, payloads)),
                     after + count, record.info.status in ENDED and skip == 0)

    def info(self, stream_id: str, *, confirm: bool = False) -> StreamInfo | None:
        self._expire()  # nothing to confirm: the producer lives in this process
        record = self._records.get(stream_id)
        return _copy(record.info) if record else None

    def cancel(self, stream_id: str, reason: str) -> StreamInfo | None:
        record = self._records.get(stream_id)
        if record is None:
            return None
        if record.info.status == RUNNING and record.info.cancel_reason is None:
            record.info.cancel_reason = reason
            self._tell(record, CANCEL)
        return _copy(record.info)

    def watch(self, stream_id: str, callback: Watcher) -> Callable[[], None]:
        record = self._get(stream_id)
        record.watchers.append(callback)
        if record.info.cancel_reason is not None:
            callback(CANCEL)
        return lambda: record.watchers.remove(callback) if callback in record.watchers else None

    def attach_reader(self, stream_id: str, holder: str = "", max_per_stream: int = 0,
                      max_per_holder: int = 0) -> str:
        record = self._get(stream_id)
        if max_per_stream and len(record.leases) >= max_per_stream:
            raise TooManyReaders("stream", max_per_stream)
        lease = self.hold(holder, max_per_holder)
        record.leases.add(lease)
        self._holders[lease] = holder
        self._tell(record, READERS)
        return lease

    def release_reader(self, stream_id: str, lease: str) -> None:
        holder = self._holders.pop(lease, None)
        if holder is not None:
            self.release_hold(holder, lease)
        record = self._records.get(stream_id)
        if record is not None and lease in record.leases:
            record.leases.discard(lease)
            self._tell(record, READERS)

    def holder_readers(self, holder: str) -> int:
        return len(self._held.get(holder, ()))

    def hold(self, holder: str, max_per_holder: int = 0) -> str:
        held = self._held.get(holder, ())
        if max_per_holder and len(held) >= max_per_holder:
            raise TooManyReaders("holder", max_per_holder)
        lease = secrets.token_urlsafe(8)
        self._held.setdefault(holder, set()).add(lease)
        return lease

    def renew_hold(self, holder: str, lease: str) -> None:
        """Leases here live as long as the process: nothing to renew."""

    def release_hold(self, holder: str, lease: str) -> None:
        held = self._held.get(holder)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[holder]

    def renew_reader(self, stream_id: str, lease: str) -> None:
        """Leases here live as long as the process: nothing to renew."""

    def readers(self, stream_id: str) -> int:
        record = self._records.get(stream_id)
        return len(record.leases) if record else 0

    def producer_tick(self, stream_id: str, slot_owner: str | None = None
                      ) -> tuple[str | None, int]:
        record = self._get(stream_id)
        return record.info.cancel_reason, len(record.leases)

    def take_slot(self, owner: str, stream_id: str, limit: int) -> bool:
        held = self._slots.setdefault(owner, set())
        if len(held) >= limit:
            return False
        held.add(stream_id)
        return True

    def release_slot(self, owner: str, stream_id: str) -> None:
        held = self._slots.get(owner)
        if held is not None:
            held.discard(stream_id)
            if not held:
                del self._slots[owner]

    def slots(self, owner: str) -> int:
        return len(self._slots.get(owner, ()))

    def set_chat(self, owner: str, chat_id: str, stream_id: str) -> None:
        now = time.monotonic()
        chats = self._chats
        while chats and next(iter(chats.values()))[1] <= now:  # expiry order = set order
            chats.popitem(last=False)
        chats.pop((owner, chat_id), None)
        chats[(owner, chat_id)] = (stream_id, now + self._ttl)

    def chat(self, owner: str, chat_id: str) -> str | None:
        found = self._chats.get((owner, chat_id))
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def conversation(self, owner: str, conversation_id: str) -> list[bytes]:
        found = self._live_conversation(owner, conversation_id)
        return list(found.turns) if found is not None else []

    def add_turns(self, owner: str, conversation_id: str, turns: list[bytes], *, once: str,
                  max_turns: int, max_bytes: int, after: str | None = None) -> bool:
        key = (owner, conversation_id)
        found = self._live_conversation(owner, conversation_id) or _Conversation()
        if once in found.added or (after is not None and after not in found.added):
            return False
        size = sum(map(len, turns))
        if len(found.turns) + len(turns) > max_turns or found.size + size > max_bytes:
            raise ConversationFull(len(found.turns), found.size)
        self._drop_conversation(key)  # taken out with its bytes, put back with the new
        found.turns.extend(turns)
        found.size += size
        found.added.add(once)
        found.expires = self._clock.monotonic() + self._conversation_ttl
        self._conversations[key] = found  # the newest addition last: expiry order
        owned = self._owned.setdefault(owner, OrderedDict())
        owned[conversation_id] = found  # likewise per owner: eviction order
        self._owned_bytes[owner] = self._owned_bytes.get(owner, 0) + found.size + self._overhead
        while self._owned_bytes[owner] > self._max_owned and len(owned) > 1:
            oldest_id, oldest = next(iter(owned.items()))  # this one is last: never it
            self._drop_conversation((owner, oldest_id))
            log_evicted(owner, oldest_id, oldest.size)
        return True

    def forget_conversation(self, owner: str, conversation_id: str) -> bool:
        found = self._live_conversation(owner, conversation_id)
        if found is not None:
            self._drop_conversation((owner, conversation_id))
        return found is not None

    def _live_conversation(self, owner: str, conversation_id: str) -> _Conversation | None:
        """The conversation, unless expired; forgets the expired ones first."""
        now = self._clock.monotonic()
        conversations = self._conversations
        while conversations and next(iter(conversations.values())).expires <= now:
            self._drop_conversation(next(iter(conversations)))
        return conversations.get((owner, conversation_id))

    def _drop_conversation(self, key: tuple[str, str]) -> None:
        """Forget a conversation (if kept), and its bytes from its owner's."""
        found = self._conversations.pop(key, None)
        if found is None:
            return
        owner, conversation_id = key
        owned = self._owned[owner]
        del owned[conversation_id]
        self._owned_bytes[owner] -= found.size + self._overhead
        if not owned:
            del self._owned[owner], self._owned_bytes[owner]

    def ping(self) -> None:
        """Memory is always there."""

    def _get(self, stream_id: str) -> _Record:
        record = self._records.get(stream_id)
        if record is None:
            raise StreamNotFound(stream_id)
        return record

    @staticmethod
    def _stored(record: _Record, event: Event) -> bool:
        """This very event is already stored under its id (a write sent again)."""
        assert event.id is not None, "only numbered events are stored"
        index = event.id - record.offset
        return (event.id <= record.info.last_event_id and 0 <= index < len(record.names)
                and record.names[index] == event.name and record.payloads[index] == event.data)

    def _add(self, record: _Record, event: Event) -> None:
        if record.info.status in ENDED:
            raise StreamEnded(f"stream {record.info.stream_id} has ended")
        if event.id != record.info.last_event_id + 1:
            raise ValueError(f"event {event.id} appended after {record.info.last_event_id}")
        names, payloads = record.names, record.payloads
        names.append(event.name)
        payloads.append(event.data)
        record.kept += event_cost(event)
        # The newest event stays, so the terminal event is always kept.
        while len(names) > 1 and (len(names) > self._max_events
                                  or record.kept > self._max_bytes):
            record.kept -= len(names.popleft()) + 1 + len(payloads.popleft()) + EVENT_OVERHEAD
            record.offset += 1
        record.info.last_event_id = event.id

    def _keep_owner_within(self, record: _Record) -> None:
        """Count an ended stream for its owner; forget the owner's oldest while over."""
        owner = record.info.owner
        ended = self._ended.setdefault(owner, deque())
        ended.append(record)
        stored = self._owner_bytes.get(owner, 0) + record.kept
        while stored > self._max_stored and len(ended) > 1:  # the newest fits: kept
            oldest = ended.popleft()
            stored -= oldest.kept
            self._forget(oldest)
        self._owner_bytes[owner] = stored

    def _forget(self, record: _Record) -> None:
        record.forgotten = True
        if self._records.get(record.info.stream_id) is record:
            del self._records[record.info.stream_id]

    @staticmethod
    def _changed(record: _Record) -> None:
        """Wake the readers waiting on this record; later readers wait on a fresh event."""
        changed, record.changed = record.changed, threading.Event()
        changed.set()

    @staticmethod
    def _tell(record: _Record, what: str) -> None:
        for callback in list(record.watchers):
            callback(what)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, record = self._expiry.popleft()
            if record.forgotten:
                continue  # pushed out already
            self._forget(record)
            owner = record.info.owner
            self._owner_bytes[owner] -= record.kept
            ended = self._ended[owner]
            while ended and ended[0].forgotten:
                ended.popleft()
            if not ended:
                del self._ended[owner], self._owner_bytes[owner]
