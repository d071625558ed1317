"""The one pub/sub connection per process that wakes local readers and producers.

No greenlet blocks on Redis per stream: this hub thread (a greenlet under
gevent) holds the process's only pub/sub connection, subscribed to the
channels its readers and producers care about, and turns messages into local
wake-ups and callbacks. A wake-up is only a hint: readers re-read the log by
position, so a lost message (pub/sub is at most once; a reconnect loses some)
costs a polling slice, never an event.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sse_gateway.broker.base import Watcher

log = logging.getLogger(__name__)


@dataclass
class Interest:
    """Local interest in one channel: who waits on it, who is called back."""

    refs: int = 0
    epoch: int = 0
    callbacks: list[Watcher] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def bump(self) -> None:
        with self.changed:
            self.epoch += 1
            self.changed.notify_all()

    def wait_change(self, seen: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.epoch != seen, timeout)


class Hub(threading.Thread):
    """The process's one pub/sub connection, shared by every local reader and producer.

    Only this thread touches the connection. Others ask for (un)subscriptions
    through a queue and wake it by publishing to its own channel.
    """

    def __init__(self, url: str, client: redis.Redis) -> None:
        super().__init__(name="redis-hub", daemon=True)
        self._url = url
        self._client = client
        self._hello = f"sse:hub:{secrets.token_hex(8)}"
        self._interests: dict[str, Interest] = {}
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._stopping = threading.Event()

    def acquire(self, channel: str, callback: Watcher | None = None,
                wait: float = 2.0) -> Interest:
        """Take an interest in ``channel``; subscribe (and wait for it) on the first."""
        with self._lock:
            interest = self._interests.setdefault(channel, Interest())
            interest.refs += 1
            first = interest.refs == 1
            if callback is not None:
                interest.callbacks.append(callback)
        if first:
            self._request("subscribe", channel)
        interest.subscribed.wait(wait)  # a message sent after this will reach us
        return interest

    def release(self, channel: str) -> None:
        with self._lock:
            interest = self._interests.get(channel)
            if interest is None:
                return
            interest.refs -= 1
            if interest.refs > 0:
                return
            del self._interests[channel]
        self._request("unsubscribe", channel)

    def poke(self, channel: str) -> None:
        """Wake local waiters at once (a local producer wrote)."""
        interest = self._interests.get(channel)
        if interest is not None:
            interest.bump()

    def stop(self) -> None:
        self._stopping.set()
        self._request("stop", "")

    def _request(self, action: str, channel: str) -> None:
        self._requests.put((action, channel))
        with suppress(RedisConnectionError, RedisTimeoutError):
            self._client.publish(self._hello, b"")  # else the hub resubscribes on reconnect

    def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            pubsub: Any = self._client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._hello)
                with self._lock:
                    channels = list(self._interests)
                if channels:
                    pubsub.subscribe(*channels)
                backoff = 0.1
                self._listen(pubsub)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis pub/sub connection lost (%s); reconnecting", exc)
                with self._lock:
                    for interest in self._interests.values():
                        interest.subscribed.clear()
                        interest.bump()  # waiters look at Redis themselves
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with suppress(Exception):  # closing a broken connection
                    pubsub.close()

    def _listen(self, pubsub: Any) -> None:
        while not self._stopping.is_set():
            while not self._requests.empty():
                action, channel = self._requests.get()
                if action == "subscribe":
                    pubsub.subscribe(channel)
                elif action == "unsubscribe":
                    with self._lock:
                        wanted = channel in self._interests
                    if not wanted:
                        pubsub.unsubscribe(channel)
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            channel = message["channel"].decode()
            interest = self._interests.get(channel)
            if interest is None:
                continue
            if message["type"] == "subscribe":
                interest.subscribed.set()
            elif message["type"] == "message":
                interest.bump()
                what = message["data"].decode()
                for callback in list(interest.callbacks):
                    callback(what)
