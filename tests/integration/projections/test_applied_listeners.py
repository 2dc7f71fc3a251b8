"""``ProjectionSet.applied_listeners``: each ``config.applied`` is told once, in order, after the fold.

Whichever path folds it (this instance's own append, a catch-up of another instance's append), a
listener hears of an applied change once the current projection has published it (or a later
change folded in the same batch), and a listener
that raises never stops the projections. Both backends.
"""

from __future__ import annotations

import logging

import pytest

from confledger.projections.current import CurrentProjection
from confledger.projections.runner import ProjectionSet
from confledger.store import EventLog, NewEvent
from confledger.store.events import ConfigApplied, RecordedEvent


def apply(log: EventLog, number: int, previous: str | None) -> str:
    full_hash = log.put_config({"number": number})
    log.append([NewEvent(ConfigApplied(hash=full_hash, previous_hash=previous), actor="test")])
    return full_hash


def test_every_apply_is_told_once_in_order_after_the_current_config_is_published(
    log: EventLog, other_instance: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    first = apply(log, 0, None)
    current = CurrentProjection(lambda full_hash: {"materialized": full_hash})
    projections = ProjectionSet(log, [current])
    told: list[tuple[int, str, int]] = []

    def failing(event: RecordedEvent) -> None:
        raise RuntimeError("a broken listener")

    def recording(event: RecordedEvent) -> None:
        assert isinstance(event.payload, ConfigApplied)
        told.append(
            (event.position, event.payload.hash, 0 if current.value is None else current.value.position)
        )

    projections.applied_listeners.extend([failing, recording])
    projections.start()
    try:
        assert [hash_ for _, hash_, _ in told] == [first]  # folded at start (no checkpoint yet)

        # Another instance decides; this one folds it when it catches up (what a follower does).
        second = apply(other_instance, 1, first)
        assert len(told) == 1
        projections.catch_up()
        projections.catch_up()  # nothing new: nothing told again
        # This instance's own append reaches the set through the log's subscription.
        third = apply(log, 2, second)
        # A third append by the other instance, then one by this one: the gap makes the set catch up.
        fourth = apply(other_instance, 3, third)
        fifth = apply(log, 4, fourth)
    finally:
        projections.stop()

    hashes = [first, second, third, fourth, fifth]
    assert [hash_ for _, hash_, _ in told] == hashes
    # Each was told once the current config was published as that change or a later one of its batch.
    assert all(published >= position for position, _, published in told)
    positions = [position for position, _, _ in told]
    assert positions == sorted(set(positions))
    assert current.value is not None
    assert current.value.hash == fifth
    failures = [
        r for r in caplog.records if r.levelno == logging.ERROR and "applied-listener" in r.getMessage()
    ]
    assert len(failures) == len(hashes)


def test_a_rebuild_folds_old_applies_again_without_telling_them_again(log: EventLog) -> None:
    first = apply(log, 0, None)
    second = apply(log, 1, first)
    current = CurrentProjection(lambda full_hash: {"materialized": full_hash})
    projections = ProjectionSet(log, [current])
    told: list[int] = []
    projections.applied_listeners.append(lambda event: told.append(event.position))
    projections.start()
    try:
        assert len(told) == 2
        projections.rebuild()
        assert len(told) == 2
        assert current.value is not None
        assert current.value.hash == second
        apply(log, 2, second)  # after the rebuild: told, once
        projections.rebuild()
    finally:
        projections.stop()
    assert told == [1, 2, 3]
