"""The feed behind ``GET /watch``: per-client queues on the client's loop, fed from any thread.

A slow client is dropped once its queue is full (never buffered without end), a position is announced
once however often the projections fold it, and closing the feed ends every client's iteration.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import anyio
import pytest

from confledger.api.watch import AppliedChange, ChangeFeed, Subscription
from confledger.store.events import ConfigApplied, InstanceStarted, RecordedEvent


def applied(position: int, *, changes: tuple[str, ...] = ("database.pool_size",)) -> RecordedEvent:
    return RecordedEvent(
        position=position,
        event_id=uuid.uuid4(),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        type=ConfigApplied.event_type,
        schema_version=1,
        operation_id=uuid.uuid4(),
        instance_id="host:1/w0",
        actor="signal",
        payload=ConfigApplied(hash=f"{position:064x}", previous_hash=f"{position - 1:064x}", changes=changes),
        prev_hash="0" * 64,
        hash="1" * 64,
    )


def from_another_thread(feed: ChangeFeed, *positions: int) -> None:
    """Fold positions as a worker thread does (the appending thread or the follower)."""
    thread = threading.Thread(target=lambda: [feed.on_applied(applied(p)) for p in positions])
    thread.start()
    thread.join()


@contextmanager
def subscribed(feed: ChangeFeed, limit: int = 1000) -> Iterator[Subscription]:
    """A client's queue for the block, as the route takes and gives back one."""
    subscription = feed.open(limit)
    assert subscription is not None
    try:
        yield subscription
    finally:
        feed.unsubscribe(subscription)


async def drain(feed: ChangeFeed, size_hint: int) -> tuple[list[int], bool]:
    with subscribed(feed) as subscription:
        from_another_thread(feed, *range(1, size_hint + 1))
        await anyio.sleep(0)  # the loop runs the deliveries queued by the other thread
        received = [change.position async for change in subscription]
        return received, subscription.overflowed


def test_a_client_further_behind_than_its_queue_is_dropped_after_what_was_queued() -> None:
    async def scenario() -> None:
        feed = ChangeFeed(queue_size=3)
        received, overflowed = await drain(feed, 10)
        assert received == [1, 2, 3]
        assert overflowed is True
        assert feed.watching == 0

    anyio.run(scenario)


def test_changes_arrive_in_order_each_position_once_and_close_ends_the_stream() -> None:
    async def scenario() -> None:
        feed = ChangeFeed(queue_size=100)
        with subscribed(feed) as subscription:
            assert feed.watching == 1
            from_another_thread(feed, 1, 2, 3)
            from_another_thread(feed, 2, 3)  # a rebuild of the projections folds old applies again
            from_another_thread(feed, 4)
            feed.close()
            received = [change async for change in subscription]
        assert [change.position for change in received] == [1, 2, 3, 4]
        assert subscription.overflowed is False
        # A client that arrives after the close gets an empty stream, not a hang.
        with subscribed(feed) as late:
            assert [change async for change in late] == []

    anyio.run(scenario)


def test_a_full_feed_refuses_a_client_until_one_leaves() -> None:
    async def scenario() -> None:
        feed = ChangeFeed(queue_size=10)
        first = feed.open(2)
        second = feed.open(2)
        assert first is not None
        assert second is not None
        assert feed.open(2) is None  # the third of a limit of two
        feed.unsubscribe(first)
        third = feed.open(2)
        assert third is not None
        assert feed.watching == 2

    anyio.run(scenario)


def test_a_change_carries_paths_and_short_hashes_only() -> None:
    change = AppliedChange.of(applied(7, changes=("embedding.openai_api_key",)))
    data = change.data()
    assert data["hash"] == f"{7:064x}"[:16]
    assert data["previous_hash"] == f"{6:064x}"[:16]
    assert data["changed_paths"] == ["embedding.openai_api_key"]
    assert set(data) == {
        "position",
        "hash",
        "previous_hash",
        "applied_at",
        "changed_paths",
        "changes_omitted",
        "actor",
        "instance_id",
    }


def test_only_config_applied_is_a_change() -> None:
    event = applied(3).model_copy(
        update={"type": InstanceStarted.event_type, "payload": InstanceStarted(version="1", host="h", pid=1)}
    )
    with pytest.raises(TypeError):
        AppliedChange.of(event)
