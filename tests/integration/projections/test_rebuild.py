"""A rebuild from the log lands exactly where folding each append as it happened landed. Both backends.

Live folding takes the events as the append recorded them (``EventLog.append_recorded``'s rows, through
the log's subscription), with what other instances appended before them (read in the append's own
transaction), or from a catch-up read; a rebuild reads every event back from the log in pages. Both must
leave every projection with the same state and views.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from confledger.projections.backups import BackupsProjection
from confledger.projections.current import CurrentProjection
from confledger.projections.fleet import FleetProjection
from confledger.projections.history import HistoryProjection
from confledger.projections.runner import ProjectionSet
from confledger.projections.stats import StatsProjection
from confledger.store import EventLog, NewEvent
from confledger.store.events import InstanceApplied, RecordedEvent
from tests.unit.projections.test_projections import hand_built_log


def projection_set(log: EventLog) -> ProjectionSet:
    return ProjectionSet(
        log,
        [
            CurrentProjection(lambda full_hash: {"materialized": full_hash}),
            # A window smaller than the log, so operations leave it during both folds.
            HistoryProjection(window=4),
            StatsProjection(),
            BackupsProjection(backup_count=2),
            FleetProjection(),
        ],
    )


def state_of(projections: ProjectionSet) -> dict[str, Any]:
    current = projections.get("current")
    history = projections.get("history")
    stats = projections.get("stats")
    backups = projections.get("backups")
    fleet = projections.get("fleet")
    assert isinstance(current, CurrentProjection)
    assert isinstance(history, HistoryProjection)
    assert isinstance(stats, StatsProjection)
    assert isinstance(backups, BackupsProjection)
    assert isinstance(fleet, FleetProjection)
    return {
        "snapshots": {
            p.name: (p.position, json.loads(json.dumps(p.snapshot()))) for p in projections.projections
        },
        "current": current.value,
        "history": history.recent(),
        "in_progress": history.in_progress(),
        "stats": stats.summary(),
        "backups": backups.backups,
        "fleet": (fleet.desired_hash, fleet.desired_position, fleet.instances),
    }


def as_new(event: RecordedEvent) -> NewEvent:
    return NewEvent(event.payload, actor=event.actor, operation_id=event.operation_id)


def test_a_rebuild_equals_the_state_folded_append_by_append(log: EventLog, other_instance: EventLog) -> None:
    projections = projection_set(log)
    told: list[int] = []
    projections.applied_listeners.append(lambda event: told.append(event.position))
    projections.start()
    try:
        events = hand_built_log()
        for round_number in range(3):
            for index, event in enumerate(events):
                if index % 5 == 4:
                    # Another instance's append: folded by the catch-up a follower would run.
                    other_instance.append([as_new(event)])
                    projections.catch_up()
                else:
                    log.append([as_new(event)])
            answered = InstanceApplied(
                hash=str(projections.get("fleet").snapshot()["desired_hash"]),
                position=int(projections.get("fleet").snapshot()["desired_position"]),
                role="followed",
                outcome="failed" if round_number == 1 else "applied",
            )
            other_instance.append([NewEvent(answered)])
            # Several events in one append: folded as one batch.
            log.append([as_new(event) for event in events[:6]])
        projections.catch_up()
        assert projections.position == log.head()
        folded = state_of(projections)
        told_before = list(told)

        projections.rebuild()

        assert projections.position == log.head()
        assert state_of(projections) == folded
        assert told == told_before  # the rebuild told nobody anything again
        assert folded["current"] is not None
        assert len(folded["history"]) == 4 + len(folded["in_progress"])
    finally:
        projections.stop()


def test_others_appends_are_folded_from_this_instances_next_append_without_a_read(
    log: EventLog, other_instance: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fleet's instances append in turn: what the others appended reaches the projections with the next
    # batch of this instance (read under its append's lock), in order, with no catch-up read of the log.
    projections = projection_set(log)
    told: list[int] = []
    projections.applied_listeners.append(lambda event: told.append(event.position))
    projections.start()
    reads: list[int] = []
    read = log.iter_events
    monkeypatch.setattr(log, "iter_events", lambda *a, **k: (reads.append(1), read(*a, **k))[1])
    try:
        events = hand_built_log()
        for index, event in enumerate(events):
            if index % 3:
                other_instance.append([as_new(event)])
            else:
                log.append([as_new(event)])
        log.append([as_new(events[0])])  # the others' last ones, then this
        assert reads == []
        assert projections.position == log.head()
        folded = state_of(projections)
        told_live = list(told)

        projections.rebuild()

        assert state_of(projections) == folded
        applies = [e.position for e in log.read() if e.type == "config.applied"]
        assert told_live == applies  # every apply told once, in order, whoever appended it
    finally:
        projections.stop()
