"""The feed behind ``GET /api/v1/config/watch``: each applied change, handed to every watching client.

The projections announce each ``config.applied`` they fold (``ProjectionSet.applied_listeners``), on
whatever thread folded it: this instance's own append, a catch-up, or the follower folding what another
instance decided. The feed turns it into an ``AppliedChange`` and hands it to each client's queue on that
client's event loop (``call_soon_threadsafe``: the folding thread never waits for a client). A queue is
bounded: a client that falls that far behind is dropped, not buffered without end; it reconnects with
``Last-Event-ID`` and replays the rest from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import TypeAdapter

from confledger.store.events import ConfigApplied, RecordedEvent
from confledger.store.log import EventLog

__all__ = ["AppliedChange", "ChangeFeed", "Subscription", "replay_changes"]

logger = logging.getLogger(__name__)

# Hashes are shown as their first 16 hex digits everywhere in the API.
_SHORT = 16
# Times as every other answer of the API writes them (pydantic's JSON: ...Z), not isoformat's +00:00.
_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """One ``config.applied`` as a watch client sees it: hashes, time, changed paths (never a value)."""

    position: int
    hash: str
    previous_hash: str | None
    applied_at: datetime
    changed_paths: tuple[str, ...]
    changes_omitted: int
    actor: str
    instance_id: str

    @classmethod
    def of(cls, event: RecordedEvent) -> AppliedChange:
        payload = event.payload
        if not isinstance(payload, ConfigApplied):
            raise TypeError(f"position {event.position} is a {event.type}, not a config.applied")
        return cls(
            position=event.position,
            hash=payload.hash,
            previous_hash=payload.previous_hash,
            applied_at=event.occurred_at,
            changed_paths=payload.changes,
            changes_omitted=payload.changes_omitted,
            actor=event.actor,
            instance_id=event.instance_id,
        )

    def data(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "hash": self.hash[:_SHORT],
            "previous_hash": None if self.previous_hash is None else self.previous_hash[:_SHORT],
            "applied_at": _TIME.dump_python(self.applied_at, mode="json"),
            "changed_paths": list(self.changed_paths),
            "changes_omitted": self.changes_omitted,
            "actor": self.actor,
            "instance_id": self.instance_id,
        }


class Subscription:
    """One client's queue, living on the client's event loop; iterate it for the changes in order."""

    def __init__(self, feed: ChangeFeed, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._feed = feed
        self._loop = loop
        sender, receiver = anyio.create_memory_object_stream[AppliedChange](max_buffer_size=size)
        self._send: MemoryObjectSendStream[AppliedChange] = sender
        self._receive: MemoryObjectReceiveStream[AppliedChange] = receiver
        self.overflowed = False

    def offer(self, change: AppliedChange) -> None:
        """From any thread: queue ``change`` for the client (on its loop). Never blocks."""
        try:
            self._loop.call_soon_threadsafe(self._deliver, change)
        except RuntimeError:  # the client's loop is closed: nobody is left to read
            self._feed.unsubscribe(self)

    def _deliver(self, change: AppliedChange) -> None:
        try:
            self._send.send_nowait(change)
        except anyio.WouldBlock:
            # Too slow: dropped rather than buffered without end; it replays from the log on reconnect.
            self.overflowed = True
            self._send.close()
            self._feed.unsubscribe(self)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def close(self) -> None:
        """From any thread: end the client's iteration once it has read what is queued."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._send.close)

    async def __aiter__(self) -> AsyncIterator[AppliedChange]:
        async with self._receive:
            async for change in self._receive:
                yield change


class ChangeFeed:
    """Fan-out of applied changes to the watching clients of one instance."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        # The newest position announced: a rebuild of the projections folds old applies again, and no
        # client is told of a change twice.
        self.position = 0
        self.closed = False

    def on_applied(self, event: RecordedEvent) -> None:
        """``ProjectionSet.applied_listeners`` calls this, in position order, on the folding thread."""
        with self._lock:
            if event.position <= self.position:
                return
            self.position = event.position
            subscriptions = list(self._subscriptions)
        if not subscriptions:
            return
        change = AppliedChange.of(event)
        for subscription in subscriptions:
            subscription.offer(change)

    def open(self, limit: int) -> Subscription | None:
        """A queue for a client on the running loop, or None when ``limit`` clients already have one.

        The count and the taking are one step under the lock: clients arriving at one moment cannot
        all pass a look at the count. The caller gives it back with ``unsubscribe``."""
        subscription = Subscription(self, asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            if self.closed:
                subscription.close()
            elif len(self._subscriptions) >= limit:
                return None
            else:
                self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    @property
    def watching(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def close(self) -> None:
        """The instance stops: every client's stream ends after what is already queued."""
        with self._lock:
            self.closed = True
            subscriptions = list(self._subscriptions)
            self._subscriptions.clear()
        for subscription in subscriptions:
            subscription.close()


async def replay_changes(log: EventLog, after: int) -> AsyncIterator[AppliedChange]:
    """Every ``config.applied`` after ``after`` in the log, oldest first, a page per worker-thread read."""
    position = after
    while True:
        page = await anyio.to_thread.run_sync(
            functools.partial(log.read, position, _REPLAY_PAGE, types=[ConfigApplied.event_type])
        )
        for event in page:
            yield AppliedChange.of(event)
        if len(page) < _REPLAY_PAGE:
            return
        position = page[-1].position
