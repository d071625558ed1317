"""The shared broker (``redis://``): streams any worker on any host can read.

Per stream, all in one hash slot (``sse:{id}:...``):

    sse:{id}:log      Redis Stream; event n is entry ``0-(n+1)``, field ``f`` = ``name LF payload``
    sse:{id}:meta     hash: owner, model, created, status, last_event_id, usage, cancel_reason
    sse:{id}:readers  sorted set: reader lease -> expiry (ms)
    sse:{id}:alive    set by the producer every few seconds with a short expiry
    sse:ev:{id}       channel: "new events" (tells waiting readers to look)
    sse:ctl:{id}      channel: "cancel" / "readers" (tells the producer)
    sse:slots:<key>   sorted set: a key's running streams -> expiry (ms)
    sse:held:<holder> sorted set: a holder's reader leases (on any stream) -> expiry (ms)
    sse:ended:<owner> sorted set: an owner's ended streams "<id>/<bytes>" -> end (ms)
    sse:stored:<owner> the bytes those streams keep (the sum of the members' <bytes>)
    sse:running       sorted set: running streams -> when their producer last ticked (ms)
    sse:conv:{<owner>:<id>}:turns  list: a conversation's turns (JSON text), oldest first
    sse:conv:{<owner>:<id>}:meta   hash: ``size`` (the turns' bytes), ``+<name>`` per addition
    sse:convs:<owner>     sorted set: an owner's conversation ids -> last addition (ms)
    sse:convbytes:<owner> hash: conversation id -> its bytes as counted; ``#`` what they
                          count for together (each its bytes plus the overhead)

A stream's log keeps at most ``max_events`` entries and ``max_bytes`` (the
``bytes`` field of its meta hash counts each entry's ``event_cost``); an owner's
ended streams keep at most ``max_stored_bytes``, else its oldest are deleted;
likewise its conversations ``max_conversation_bytes_per_owner``, least recently
added-to first. The scripts that do so name the owner's keys and the deleted
streams' (conversations') keys themselves: one Redis server, not a cluster
(README, "Known limits").

No greenlet blocks on Redis per stream: one *hub* thread per process (a
greenlet under gevent) holds the only pub/sub connection and wakes local
waiters. A wake-up is only a hint: readers re-read the log by position, so a
lost message delays nothing longer than the polling slice, and losing one
can never skip or repeat an event. Every key expires (``ttl`` after the end,
or, for a stream whose producer died, ``ttl`` after it was last heard of; a
conversation ``conversation_ttl`` after its last addition).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sse_gateway import events
from sse_gateway.broker.base import (
    CANCEL,
    EVENT_OVERHEAD,
    READ_COUNT,
    READERS,
    Batch,
    Broker,
    BrokerOptions,
    BrokerUnavailable,
    ConversationFull,
    PositionGone,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
    TooManyReaders,
    Watcher,
    log_evicted,
)
from sse_gateway.broker.redis_hub import Hub
from sse_gateway.events import ENDED, ERROR, RUNNING, Event

log = logging.getLogger(__name__)

_POLL_S = 1.0  # the longest a waiting reader goes without looking at Redis itself
_SWEEP_COUNT = 100  # streams one sweep looks at, at most

# Lua: trim a log from its oldest entry until it keeps at most max_events entries
# and max_bytes; never its newest entry (the terminal event is always kept).
# Reads what it drops in small batches: O(1) amortized per append.
_KEEP_WITHIN = """
local function keep_within(meta, log, entry, max_events, max_bytes, overhead)
  local kept = redis.call('HINCRBY', meta, 'bytes', #entry + overhead)
  local count = redis.call('XLEN', log)
  local start, first, batch = '-', nil, 2
  while (kept > max_bytes or count > max_events) and count > 1 do
    local entries = redis.call('XRANGE', log, start, '+', 'COUNT', batch)
    if #entries == 0 then break end  -- never loop in the server, whatever the count says
    for _, entry in ipairs(entries) do
      if not ((kept > max_bytes or count > max_events) and count > 1) then break end
      kept = kept - #entry[2][2] - overhead
      count = count - 1
      start = '(' .. entry[1]
      first = tonumber(string.match(entry[1], '%-(%d+)$')) + 1
    end
    batch = math.min(batch * 2, 64)
  end
  if first then
    redis.call('XTRIM', log, 'MINID', '0-' .. first)
    redis.call('HSET', meta, 'bytes', kept)
  end
  return kept
end
"""

# KEYS meta alive; ARGV running_ttl_ms producer_ms stream_id now_ms field value ...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('ZADD', 'sse:running', ARGV[4], ARGV[3])
return 1
"""

# Whether event ``id`` (its ``entry``) may be written now (KEYS meta log): nil,
# or what the script answers instead. A write sent again (its first attempt
# timed out, but was applied) finds its entry already stored under its id: 1,
# success. 0: the stream is not running; -1: out of order.
_REFUSAL = """
local function refusal(id, entry)
  local meta = redis.call('HMGET', KEYS[1], 'status', 'last_event_id')
  local last = tonumber(meta[2])
  if meta[1] == 'running' and last == id - 1 then return nil end
  if last ~= nil and last >= id then
    local found = redis.call('XRANGE', KEYS[2], '0-' .. (id + 1), '0-' .. (id + 1))
    if found[1] ~= nil and found[1][2][2] == entry then return 1 end
  end
  if meta[1] ~= 'running' then return 0 end
  return -1
end
local id = tonumber(ARGV[1])
local refused = refusal(id, ARGV[2])
if refused then return refused end
"""

# KEYS meta log; ARGV id entry ttl_ms max_events+1 channel max_events max_bytes overhead
# (XADD's MAXLEN is only a safety net: keep_within trims first, counting bytes.)
_APPEND = _REFUSAL + """
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. (id + 1), 'f', ARGV[2])
redis.call('HSET', KEYS[1], 'last_event_id', ARGV[1])
if ARGV[1] == '0' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
""" + _KEEP_WITHIN + """
keep_within(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
redis.call('PUBLISH', ARGV[5], '')
return 1
"""

# KEYS meta log readers alive; ARGV id entry status usage ttl_ms max_events+1 channel
#   max_events max_bytes overhead now_ms max_stored_bytes stream_id
_FINISH = _REFUSAL + """
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], '0-' .. (id + 1), 'f', ARGV[2])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'last_event_id', ARGV[1], 'usage', ARGV[4])
redis.call('HDEL', KEYS[1], 'suspected')
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
redis.call('DEL', KEYS[4])
redis.call('ZREM', 'sse:running', ARGV[13])
""" + _KEEP_WITHIN + """
local kept = keep_within(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[8]), tonumber(ARGV[9]),
                         tonumber(ARGV[10]))
-- The owner's ended streams: forget those past the ttl, add this one, and
-- delete the oldest (never a running stream, never this one) while over.
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
local ended, total = 'sse:ended:' .. owner, 'sse:stored:' .. owner
local now, ttl, self = tonumber(ARGV[11]), tonumber(ARGV[5]), ARGV[13] .. '/' .. kept
local held = tonumber(redis.call('GET', total) or '0')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', ended, '-inf', now - ttl)) do
  held = held - tonumber(string.match(m, '/(%d+)$'))
end
redis.call('ZREMRANGEBYSCORE', ended, '-inf', now - ttl)
local newest = redis.call('ZRANGE', ended, -1, -1, 'WITHSCORES')[2]
redis.call('ZADD', ended, math.max(now, tonumber(newest or '0') + 1), self)  -- in end order
held = held + kept
while held > tonumber(ARGV[12]) and redis.call('ZCARD', ended) > 1 do
  local oldest = redis.call('ZRANGE', ended, 0, 1)
  local m = oldest[1] == self and oldest[2] or oldest[1]
  redis.call('ZREM', ended, m)
  local sid, size = string.match(m, '^(.*)/(%d+)$')
  held = held - tonumber(size)
  local base = 'sse:{' .. sid .. '}:'
  if redis.call('HGET', base .. 'meta', 'status') ~= 'running' then
    redis.call('DEL', base .. 'meta', base .. 'log', base .. 'readers', base .. 'alive')
  end
end
redis.call('SET', total, held, 'PX', ttl)
redis.call('PEXPIRE', ended, ttl)
redis.call('PUBLISH', ARGV[7], '')
return 1
"""

# A producer whose alive key is gone is only *suspected* at first: the key also
# lapses when Redis itself stalled (its clock ran on) while the producer was
# fine. The first look records when (Redis TIME); the stream is declared lost
# only if the key is still missing confirm_ms later, two producer ticks, which
# a live producer uses to tick again (and clear the suspicion).
# Returns 1: declared lost; 0: nothing to do; -n: suspected, confirmable in n ms.
# KEYS meta log readers alive; ARGV expected_last entry ttl_ms max_events channel confirm_ms
#   stream_id
_LOST = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  redis.call('ZREM', 'sse:running', ARGV[7])
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local confirm = tonumber(ARGV[6])
local since = tonumber(redis.call('HGET', KEYS[1], 'suspected'))
if since == nil then
  redis.call('HSET', KEYS[1], 'suspected', now)
  return -math.max(confirm, 1)
end
if now - since < confirm then return -math.max(confirm - (now - since), 1) end
if redis.call('HGET', KEYS[1], 'last_event_id') ~= ARGV[1] then return 0 end
local id = tonumber(ARGV[1]) + 1
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. (id + 1), 'f', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'error', 'last_event_id', id)
redis.call('HDEL', KEYS[1], 'suspected')
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
redis.call('ZREM', 'sse:running', ARGV[7])
redis.call('PUBLISH', ARGV[5], '')
return 1
"""

# KEYS slots; ARGV now_ms expiry_ms limit stream_id
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[1]))
return 1
"""

# KEYS readers held; ARGV now_ms expiry_ms lease max_stream max_held readers_ttl_ms
#                      held_ttl_ms channel
# Returns 0 (taken), 1 (the stream is full) or 2 (the holder is full).
_ATTACH = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local max_stream, max_held = tonumber(ARGV[4]), tonumber(ARGV[5])
if max_stream > 0 and redis.call('ZCARD', KEYS[1]) >= max_stream then return 1 end
if max_held > 0 and redis.call('ZCARD', KEYS[2]) >= max_held then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PUBLISH', ARGV[8], 'readers')
return 0
"""

# KEYS held; ARGV now_ms expiry_ms lease max_held held_ttl_ms
_HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local max_held = tonumber(ARGV[4])
if max_held > 0 and redis.call('ZCARD', KEYS[1]) >= max_held then return 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 0
"""

# KEYS meta; ARGV reason channel
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status == 'running' and redis.call('HEXISTS', KEYS[1], 'cancel_reason') == 0 then
  redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[1])
  redis.call('PUBLISH', ARGV[2], 'cancel')
end
return redis.call('HGETALL', KEYS[1])
"""


# KEYS turns meta index sizes; ARGV ttl_ms max_turns max_bytes once max_owned owner
#   conversation_id overhead after turn...
# Returns {1, turns, bytes, evicted id, its bytes, ...} (added), {0, ...} (``once``
# was added before, or ``after`` (when not empty) was not: nothing changes) or
# {-1, turns, bytes} (over a bound: nothing added).
# The owner's index scores each conversation by its last addition, by Redis's
# clock (TIME: the clock its keys expire by), each score above the others (the
# order of additions within a millisecond is kept); a member whose score is a
# ttl old is expired, so it is pruned, and its bytes with it, before counting.
_ADD_TURNS = """
local first = 10  -- ARGV index of the first turn
local count = redis.call('LLEN', KEYS[1])
local size = tonumber(redis.call('HGET', KEYS[2], 'size') or '0')
if redis.call('HEXISTS', KEYS[2], '+' .. ARGV[4]) == 1 then return {0, count, size} end
if ARGV[9] ~= '' and redis.call('HEXISTS', KEYS[2], '+' .. ARGV[9]) == 0 then
  return {0, count, size}  -- what it follows is no longer there
end
local added, new = 0, #ARGV - first + 1
for i = first, #ARGV do added = added + #ARGV[i] end
if count + new > tonumber(ARGV[2]) or size + added > tonumber(ARGV[3]) then
  return {-1, count, size}
end
if new > 0 then redis.call('RPUSH', KEYS[1], unpack(ARGV, first)) end
redis.call('HSET', KEYS[2], 'size', size + added, '+' .. ARGV[4], '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local index, sizes, mine, ttl = KEYS[3], KEYS[4], ARGV[7], tonumber(ARGV[1])
local overhead = tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = tonumber(redis.call('HGET', sizes, '#') or '0')
local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl)
for _, id in ipairs(expired) do
  local bytes = redis.call('HGET', sizes, id)
  if bytes then held = held - tonumber(bytes) - overhead end
  redis.call('HDEL', sizes, id)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl) end
-- This one as counted (not at all when new; stale when it expired just now)
-- gives way to what it counts for now.
local counted = redis.call('HGET', sizes, mine)
if counted then held = held - tonumber(counted) - overhead end
held = held + size + added + overhead
local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')[2]
redis.call('ZADD', index, math.max(now, tonumber(newest or '0') + 1), mine)
redis.call('HSET', sizes, mine, size + added)
local result = {1, count + new, size + added}
while held > tonumber(ARGV[5]) do
  local oldest = redis.call('ZRANGE', index, 0, 0)[1]
  if oldest == nil or oldest == mine then break end  -- this one is the newest: never it
  local bytes = tonumber(redis.call('HGET', sizes, oldest) or '0')
  redis.call('ZREM', index, oldest)
  redis.call('HDEL', sizes, oldest)
  held = held - bytes - overhead
  local base = 'sse:conv:{' .. ARGV[6] .. ':' .. oldest .. '}:'
  if redis.call('DEL', base .. 'turns', base .. 'meta') > 0 then  -- else it had expired
    table.insert(result, oldest)
    table.insert(result, bytes)
  end
end
redis.call('HSET', sizes, '#', held)
redis.call('PEXPIRE', index, ttl)
redis.call('PEXPIRE', sizes, ttl)
return result
"""

# KEYS turns meta index sizes; ARGV conversation_id overhead. Returns the keys deleted.
_FORGET_CONVERSATION = """
local gone = redis.call('DEL', KEYS[1], KEYS[2])
local bytes = redis.call('HGET', KEYS[4], ARGV[1])
if bytes then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[4], '#', -tonumber(bytes) - tonumber(ARGV[2]))
end
return gone
"""


def _conversation(owner: str, conversation_id: str) -> tuple[str, str]:
    base = f"sse:conv:{{{owner}:{conversation_id}}}"  # as _ADD_TURNS builds it too
    return f"{base}:turns", f"{base}:meta"


def _owned_conversations(owner: str) -> tuple[str, str]:
    return f"sse:convs:{owner}", f"sse:convbytes:{owner}"


def _keys(stream_id: str) -> tuple[str, str, str, str]:
    base = f"sse:{{{stream_id}}}"
    return f"{base}:meta", f"{base}:log", f"{base}:readers", f"{base}:alive"


def _slots(owner: str) -> str:
    return f"sse:slots:{owner}"


def _held(holder: str) -> str:
    return f"sse:held:{holder}"


def _chat(owner: str, chat_id: str) -> str:
    return f"sse:chat:{owner}:{chat_id}"


def _events(stream_id: str) -> str:
    return f"sse:ev:{stream_id}"


def _control(stream_id: str) -> str:
    return f"sse:ctl:{stream_id}"


@contextmanager
def _reachable() -> Iterator[None]:
    """Turn Redis connection trouble into BrokerUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise BrokerUnavailable(f"redis: {exc.__class__.__name__}") from None


class RedisBroker(Broker):
    """Streams in Redis, shared by every worker and host that points at it."""

    def __init__(self, url: str, options: BrokerOptions) -> None:
        self._options = options
        self._ttl_ms = int(options.ttl * 1000)
        self._producer_ms = int(options.producer_timeout * 1000)
        # Running streams keep their keys while the producer ticks; if it dies,
        # they go ttl after it was last heard of.
        self._running_ttl_ms = self._ttl_ms + self._producer_ms
        # A silent producer is declared lost this long after it was first
        # suspected (two of its ticks, which come every producer_timeout / 4).
        self._confirm_ms = max(1, self._producer_ms // 2)
        self._trim_args = (options.max_events, options.max_bytes, EVENT_OVERHEAD)
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=options.max_connections, timeout=5,
            socket_timeout=5, socket_connect_timeout=2)
        self._redis = redis.Redis(connection_pool=pool)
        self._create = self._redis.register_script(_CREATE)
        self._append = self._redis.register_script(_APPEND)
        self._finish = self._redis.register_script(_FINISH)
        self._lost = self._redis.register_script(_LOST)
        self._cancel = self._redis.register_script(_CANCEL)
        self._take_slot = self._redis.register_script(_TAKE_SLOT)
        self._attach = self._redis.register_script(_ATTACH)
        self._hold = self._redis.register_script(_HOLD)
        self._add_turns = self._redis.register_script(_ADD_TURNS)
        self._forget_conversation = self._redis.register_script(_FORGET_CONVERSATION)
        self._conversation_ms = max(1, int(options.conversation_ttl * 1000))
        self._hub = Hub(url, self._redis)
        self._hub.start()
        # lease -> (stream, holder): for the hub interest and the holder's set
        self._lease_streams: dict[str, tuple[str, str]] = {}

    def create(self, info: StreamInfo) -> bool:
        meta, _, _, alive = _keys(info.stream_id)
        fields = [b for k, v in (("owner", info.owner), ("model", info.model),
                                 ("created", repr(info.created)), ("status", RUNNING),
                                 ("last_event_id", "-1"),
                                 ("request_digest", info.request_digest),
                                 ("metadata", json.dumps(info.metadata)),
                                 ("dialect", info.dialect),
                                 ("conversation_id", info.conversation_id)) for b in (k, v)]
        with _reachable():
            return bool(self._create(keys=[meta, alive],
                                     args=[self._running_ttl_ms, self._producer_ms,
                                           info.stream_id, int(time.time() * 1000), *fields]))

    def append(self, stream_id: str, event: Event) -> None:
        meta, log_key, _, _ = _keys(stream_id)
        event_id = _numbered(event)
        with _reachable():
            appended = self._append(keys=[meta, log_key],
                                    args=[event_id, stored(event), self._running_ttl_ms,
                                          self._options.max_events + 1, _events(stream_id),
                                          *self._trim_args])
        if appended != 1:
            _refuse(stream_id, event_id, appended)
        self._hub.poke(_events(stream_id))

    def finish(self, stream_id: str, event: Event, status: str,
               usage: dict[str, Any] | None = None) -> None:
        event_id = _numbered(event)
        with _reachable():
            finished = self._finish(keys=list(_keys(stream_id)),
                                    args=[event_id, stored(event), status, json.dumps(usage),
                                          self._ttl_ms, self._options.max_events + 1,
                                          _events(stream_id), *self._trim_args,
                                          int(time.time() * 1000),
                                          self._options.max_stored_bytes, stream_id])
        if finished != 1:
            _refuse(stream_id, event_id, finished)
        self._hub.poke(_events(stream_id))

    def read(self, stream_id: str, after: int, timeout: float) -> Batch:
        channel = _events(stream_id)
        interest = self._hub.acquire(channel)
        try:
            deadline = time.monotonic() + timeout
            look_in = _POLL_S
            while True:
                seen = interest.epoch
                batch = self._fetch(stream_id, after)
                remaining = deadline - time.monotonic()
                if batch.events or batch.ended or remaining <= 0:
                    return batch
                if not interest.wait_change(seen, min(remaining, look_in)):
                    # Nothing for a while: is the producer still there?
                    look_in = self._settle(stream_id)[1] or _POLL_S
        finally:
            self._hub.release(channel)

    def _fetch(self, stream_id: str, after: int) -> Batch:
        meta, log_key, _, _ = _keys(stream_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.xrange(log_key, min=f"(0-{after + 1}", max="+", count=READ_COUNT)
        pipe.hmget(meta, "status", "last_event_id")
        with _reachable():
            entries, (status, last) = pipe.execute()
        if status is None:
            raise StreamNotFound(stream_id)
        last_event_id = int(last)
        if entries:
            first = int(entries[0][0].split(b"-")[1]) - 1
            if first != after + 1:
                raise PositionGone(stream_id)
            last_id = int(entries[-1][0].split(b"-")[1]) - 1
            found = [unstored(event_id, fields[b"f"])
                     for event_id, (_, fields) in enumerate(entries, start=first)]
        elif last_event_id > after:
            raise PositionGone(stream_id)  # trimmed, or the log expired
        else:
            last_id, found = after, []
        return Batch(found, last_id, status.decode() in ENDED and last_id >= last_event_id)

    def _look(self, stream_id: str) -> tuple[StreamInfo | None, bool]:
        """The stream's status, and whether its producer's alive key is there."""
        meta, _, _, alive = _keys(stream_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(meta)
        pipe.exists(alive)
        with _reachable():
            fields, present = pipe.execute()
        return _info(stream_id, fields), bool(present)

    def _settle(self, stream_id: str) -> tuple[StreamInfo | None, float]:
        """Look at a stream; suspect a silent producer, or end its stream with ``stream_lost``.

        Returns the status and, while a suspicion waits for its confirmation,
        the seconds until it can be confirmed (else 0).
        """
        info, alive = self._look(stream_id)
        if info is None or info.status != RUNNING or alive:
            return info, 0.0
        lost = events.stream_lost(info.last_event_id + 1, info.model)
        with _reachable():
            result = self._lost(keys=list(_keys(stream_id)),
                                args=[info.last_event_id, stored(lost), self._ttl_ms,
                                      self._options.max_events, _events(stream_id),
                                      self._confirm_ms, stream_id])
        if result < 0:
            return info, -result / 1000
        if result == 1:
            log.warning("stream %s: its producer stopped (silent for %g s while the stream "
                        "store answered); ended as stream_lost", stream_id,
                        (self._producer_ms + self._confirm_ms) / 1000)
            if self.on_lost is not None:
                self.on_lost(stream_id)
        return self._look(stream_id)[0], 0.0

    sweeps = True

    def sweep(self) -> None:
        """Settle the running streams whose producer has not ticked for a producer
        timeout (a few at a time, oldest first): a stream nobody reads is ended
        as lost too, so its end is recorded (and its hooks run) all the same."""
        now_ms = int(time.time() * 1000)
        with _reachable():
            suspects = self._redis.zrangebyscore("sse:running", "-inf",
                                                 now_ms - self._producer_ms, start=0,
                                                 num=_SWEEP_COUNT)
        for raw in suspects:
            stream_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            info, _ = self._settle(stream_id)
            if info is None:  # expired without an end: nothing left to settle
                with _reachable():
                    self._redis.zrem("sse:running", stream_id)

    def info(self, stream_id: str, *, confirm: bool = False) -> StreamInfo | None:
        info, pending = self._settle(stream_id)
        waited = 0.0
        while confirm and pending and waited < self._confirm_ms / 1000 + _POLL_S:
            # Look again soon: a live producer clears the suspicion with its tick.
            pause = min(pending, self._confirm_ms / 4000)
            time.sleep(pause)
            waited += pause
            info, pending = self._settle(stream_id)
        return info

    def cancel(self, stream_id: str, reason: str) -> StreamInfo | None:
        with _reachable():
            flat = self._cancel(keys=[_keys(stream_id)[0]], args=[reason, _control(stream_id)])
        if not flat:
            return None
        return _info(stream_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    def watch(self, stream_id: str, callback: Watcher) -> Callable[[], None]:
        channel = _control(stream_id)
        interest = self._hub.acquire(channel, callback)
        info = self.info(stream_id)
        if info is not None and info.cancel_reason is not None:
            callback(CANCEL)

        def unwatch() -> None:
            interest.callbacks.remove(callback) if callback in interest.callbacks else None
            self._hub.release(channel)

        return unwatch

    def attach_reader(self, stream_id: str, holder: str = "", max_per_stream: int = 0,
                      max_per_holder: int = 0) -> str:
        lease = secrets.token_urlsafe(8)
        lease_ttl_ms = int(self._options.lease_ttl * 1000)
        with _reachable():
            refused = self._attach(
                keys=[_keys(stream_id)[2], _held(holder)],
                args=[int(time.time() * 1000), self._lease_expiry(), lease, max_per_stream,
                      max_per_holder, self._running_ttl_ms, 2 * lease_ttl_ms,
                      _control(stream_id)])
        if refused:
            raise TooManyReaders("stream" if refused == 1 else "holder",
                                 max_per_stream if refused == 1 else max_per_holder)
        self._hub.acquire(_events(stream_id))  # held while the lease is: no resubscribing
        self._lease_streams[lease] = (stream_id, holder)
        return lease

    def release_reader(self, stream_id: str, lease: str) -> None:
        holder = self._drop_lease(lease)
        if holder is None:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(_keys(stream_id)[2], lease)
        pipe.zrem(_held(holder), lease)
        pipe.publish(_control(stream_id), READERS)
        try:
            with _reachable():
                pipe.execute()
        except BrokerUnavailable:
            log.warning("stream %s: could not release a reader lease; it will lapse", stream_id)

    def _drop_lease(self, lease: str) -> str | None:
        """Forget a lease of this process; its holder, or None if it was not held."""
        held = self._lease_streams.pop(lease, None)
        if held is None:
            return None
        self._hub.release(_events(held[0]))
        return held[1]

    def renew_reader(self, stream_id: str, lease: str) -> None:
        expiry = self._lease_expiry()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(_keys(stream_id)[2], {lease: expiry})
        held = self._lease_streams.get(lease)
        if held is not None:
            self._renew_held(pipe, held[1], lease, expiry)
        with _reachable():
            pipe.execute()

    def _renew_held(self, pipe: Any, holder: str, lease: str, expiry: int) -> None:
        """Queue the renewal of ``lease`` in ``holder``'s count (a reader's or a hold's)."""
        pipe.zadd(_held(holder), {lease: expiry}, xx=True)
        pipe.pexpire(_held(holder), 2 * int(self._options.lease_ttl * 1000))

    def hold(self, holder: str, max_per_holder: int = 0) -> str:
        lease = secrets.token_urlsafe(8)
        with _reachable():
            refused = self._hold(keys=[_held(holder)], args=[
                int(time.time() * 1000), self._lease_expiry(), lease, max_per_holder,
                2 * int(self._options.lease_ttl * 1000)])
        if refused:
            raise TooManyReaders("holder", max_per_holder)
        return lease

    def renew_hold(self, holder: str, lease: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._renew_held(pipe, holder, lease, self._lease_expiry())
        with _reachable():
            pipe.execute()

    def release_hold(self, holder: str, lease: str) -> None:
        try:
            with _reachable():
                self._redis.zrem(_held(holder), lease)
        except BrokerUnavailable:
            log.warning("could not release a websocket's lease of %s; it will lapse", holder)

    def holder_readers(self, holder: str) -> int:
        count: int = self._count_live(self._redis.pipeline(transaction=False), _held(holder))[-1]
        return count

    def readers(self, stream_id: str) -> int:
        count: int = self._count_live(self._redis.pipeline(transaction=False),
                                      _keys(stream_id)[2])[-1]
        return count

    def producer_tick(self, stream_id: str, slot_owner: str | None = None
                      ) -> tuple[str | None, int]:
        meta, log_key, readers, alive = _keys(stream_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(alive, b"1", px=self._producer_ms)
        for key in (meta, log_key, readers):
            pipe.pexpire(key, self._running_ttl_ms)
        pipe.hget(meta, "cancel_reason")
        pipe.hdel(meta, "suspected")  # heard of: whoever suspected it was wrong
        now_ms = int(time.time() * 1000)
        pipe.zadd("sse:running", {stream_id: now_ms}, xx=True)
        if slot_owner is not None:
            pipe.zadd(_slots(slot_owner), {stream_id: now_ms + 2 * self._producer_ms}, xx=True)
            pipe.pexpire(_slots(slot_owner), 2 * self._producer_ms)
        results = self._count_live(pipe, readers)
        reason = results[4]
        return (reason.decode() if reason else None), results[-1]

    def take_slot(self, owner: str, stream_id: str, limit: int) -> bool:
        now_ms = int(time.time() * 1000)
        with _reachable():
            return bool(self._take_slot(keys=[_slots(owner)],
                                        args=[now_ms, now_ms + 2 * self._producer_ms, limit,
                                              stream_id]))

    def release_slot(self, owner: str, stream_id: str) -> None:
        with _reachable():
            self._redis.zrem(_slots(owner), stream_id)

    def slots(self, owner: str) -> int:
        count: int = self._count_live(self._redis.pipeline(transaction=False), _slots(owner))[-1]
        return count

    @staticmethod
    def _count_live(pipe: Any, key: str) -> list[Any]:
        """Run ``pipe`` with, last, the live members of the sorted set ``key`` (score =
        expiry in ms) counted, after dropping the lapsed ones: readers, leases, slots."""
        pipe.zremrangebyscore(key, "-inf", int(time.time() * 1000))
        pipe.zcard(key)
        with _reachable():
            results: list[Any] = pipe.execute()
        return results

    def _lease_expiry(self) -> int:
        return int((time.time() + self._options.lease_ttl) * 1000)

    def set_chat(self, owner: str, chat_id: str, stream_id: str) -> None:
        with _reachable():
            self._redis.set(_chat(owner, chat_id), stream_id, px=self._ttl_ms)

    def chat(self, owner: str, chat_id: str) -> str | None:
        with _reachable():
            found = self._redis.get(_chat(owner, chat_id))
        if found is None:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)

    def conversation(self, owner: str, conversation_id: str) -> list[bytes]:
        with _reachable():
            turns = self._redis.lrange(_conversation(owner, conversation_id)[0], 0, -1)
        return [turn if isinstance(turn, bytes) else turn.encode() for turn in turns]

    def add_turns(self, owner: str, conversation_id: str, turns: list[bytes], *, once: str,
                  max_turns: int, max_bytes: int, after: str | None = None) -> bool:
        with _reachable():
            added, count, size, *evicted = self._add_turns(
                keys=[*_conversation(owner, conversation_id), *_owned_conversations(owner)],
                args=[self._conversation_ms, max_turns, max_bytes, once,
                      self._options.max_conversation_bytes_per_owner, owner, conversation_id,
                      self._options.conversation_overhead, after or "", *turns])
        if added < 0:
            raise ConversationFull(int(count), int(size))
        for gone, gone_size in zip(evicted[::2], evicted[1::2], strict=True):
            log_evicted(owner, gone.decode() if isinstance(gone, bytes) else str(gone),
                        int(gone_size))
        return bool(added)

    def forget_conversation(self, owner: str, conversation_id: str) -> bool:
        with _reachable():
            return bool(self._forget_conversation(
                keys=[*_conversation(owner, conversation_id), *_owned_conversations(owner)],
                args=[conversation_id, self._options.conversation_overhead]))

    def ping(self) -> None:
        with _reachable():
            self._redis.ping()

    def close(self) -> None:
        self._hub.stop()
        self._redis.close()


def stored(event: Event) -> bytes:
    """An event as the one string a log entry keeps: ``name LF payload`` (a
    payload is one line of JSON, so the first line break ends the name)."""
    return event.name.encode() + b"\n" + event.data


def unstored(event_id: int, raw: bytes) -> Event:
    """The event ``stored`` wrote, under its id."""
    name, _, data = raw.partition(b"\n")
    return Event(event_id, name.decode(), data)


def _numbered(event: Event) -> int:
    if event.id is None:
        raise ValueError("only numbered events are stored")
    return event.id


def _refuse(stream_id: str, event_id: int, result: int) -> None:
    if result == 0:
        raise StreamEnded(f"stream {stream_id}: no longer running; event {event_id} refused")
    raise ValueError(f"stream {stream_id}: event {event_id} is out of order")


def _info(stream_id: str, fields: dict[bytes, bytes]) -> StreamInfo | None:
    if not fields:
        return None
    text = {k.decode(): v.decode() for k, v in fields.items()}
    usage = json.loads(text["usage"]) if text.get("usage") else None
    return StreamInfo(stream_id, text.get("owner", ""), text.get("model", ""),
                      float(text.get("created", "0")), text.get("status", ERROR),
                      int(text.get("last_event_id", "-1")), usage, text.get("cancel_reason"),
                      text.get("request_digest", ""), json.loads(text.get("metadata") or "{}"),
                      text.get("dialect", "sse"), text.get("conversation_id", ""))
