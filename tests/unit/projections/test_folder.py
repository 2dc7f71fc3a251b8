"""Folding through a type-to-handlers table (``Folder``, and ``ProjectionSet`` on it) lands exactly where
``apply`` on each projection in turn lands: same states, same positions, also when the projections
start from different checkpoints, when events come twice or out of order, and when a handler raises."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confledger.projections.backups import BackupsProjection
from confledger.projections.base import Folder, Handler, Projection
from confledger.projections.current import CurrentProjection
from confledger.projections.history import HistoryProjection
from confledger.projections.runner import ProjectionSet
from confledger.projections.stats import StatsProjection
from confledger.projections.timeline import as_of
from confledger.store.canonical import canonical_json
from confledger.store.events import (
    ConfigApplied,
    EventPayload,
    RecordedEvent,
)
from confledger.store.log import Checkpoint, EventLog
from tests.unit.projections.test_projections import EVENTS, FACTORIES, materialize, op, plain, views

NAMES = list(FACTORIES)
Observed = tuple[list[Any], list[int], list[Any]]


def prepared(name: str, position: int) -> Projection:
    """A projection as a checkpoint at ``position`` would leave it (the events up to it folded)."""
    projection = FACTORIES[name]()
    for event in EVENTS[:position]:
        projection.apply(event)
    return projection


def observe(projections: list[Projection]) -> Observed:
    for projection in projections:
        projection.settle()
    return (
        [plain(p.snapshot()) for p in projections],
        [p.position for p in projections],
        [views(p) for p in projections],
    )


def one_by_one(projections: list[Projection], events: list[RecordedEvent]) -> None:
    for event in events:
        for projection in projections:
            projection.apply(event)


@settings(max_examples=60, deadline=None)
@given(
    starts=st.lists(st.integers(0, len(EVENTS)), min_size=len(NAMES), max_size=len(NAMES)),
    stream=st.lists(st.integers(0, len(EVENTS) - 1), max_size=2 * len(EVENTS)),
    in_order=st.booleans(),
)
def test_a_folder_lands_where_apply_one_by_one_lands(
    starts: list[int], stream: list[int], in_order: bool
) -> None:
    events = [EVENTS[i] for i in (sorted(stream) if in_order else stream)]
    expected = [prepared(name, start) for name, start in zip(NAMES, starts, strict=True)]
    one_by_one(expected, events)
    folded = [prepared(name, start) for name, start in zip(NAMES, starts, strict=True)]
    assert Folder(folded).fold(events) == len(events)
    assert observe(folded) == observe(expected)


def test_every_projection_reaches_the_last_position_whether_it_reads_the_events_or_not() -> None:
    # Nothing here is a config.applied: current reads none of these events, yet takes their positions.
    events = [e for e in EVENTS if not isinstance(e.payload, ConfigApplied)][:5]
    projections = [FACTORIES[name]() for name in NAMES]
    Folder(projections).fold(events)
    assert [p.position for p in projections] == [events[-1].position] * len(projections)


class Boom(Exception):
    pass


def exploding(name: str, at: int) -> Projection:
    """A projection that raises once, the first time it reads the event at position ``at`` (a projection
    with handlers reads only the events they take: its ``fold`` is never called for the others)."""
    base = type(FACTORIES[name]())
    armed = [True]

    def explode(event: RecordedEvent) -> None:
        if event.position == at and armed[0]:
            armed[0] = False
            raise Boom

    class ExplodingFold(base):  # type: ignore[valid-type,misc]
        def fold(self, event: RecordedEvent) -> None:
            explode(event)
            super().fold(event)

    class ExplodingHandlers(base):  # type: ignore[valid-type,misc]
        def handlers(self) -> Mapping[type[EventPayload], Handler] | None:
            return {kind: exploding_handler(handler) for kind, handler in super().handlers().items()}

    def exploding_handler(handler: Handler) -> Handler:
        def run(event: RecordedEvent) -> None:
            explode(event)
            handler(event)

        return run

    projection = FACTORIES[name]()  # made as its factory makes it, then given the exploding class
    projection.__class__ = ExplodingFold if projection.handlers() is None else ExplodingHandlers
    return cast(Projection, projection)


def folded_until_it_raises(projections: list[Projection], fold: Any) -> bool:
    try:
        fold()
    except Boom:
        return True
    return False


# Positions of an operation.started, a service.notified, a config.applied and an operation.completed.
@pytest.mark.parametrize("at", [7, 10, 12, 13])
@pytest.mark.parametrize("failing", range(len(NAMES)))
def test_a_failing_handler_leaves_every_position_where_apply_leaves_it(failing: int, at: int) -> None:
    def built() -> list[Projection]:
        return [exploding(n, at) if i == failing else FACTORIES[n]() for i, n in enumerate(NAMES)]

    expected, folded = built(), built()
    raised = folded_until_it_raises(expected, lambda: one_by_one(expected, EVENTS))
    assert folded_until_it_raises(folded, lambda: Folder(folded).fold(EVENTS)) is raised
    assert raised is (
        NAMES[failing] in ("history", "stats") or (at != 10 and NAMES[failing] == "backups") or at == 12
    )
    assert [p.position for p in folded] == [p.position for p in expected]
    assert [plain(p.snapshot()) for p in folded] == [plain(p.snapshot()) for p in expected]
    # Folding on from there (the handler no longer fails) still lands where apply does.
    one_by_one(expected, EVENTS)
    Folder(folded).fold(EVENTS)
    assert observe(folded) == observe(expected)


def test_an_iterator_that_fails_leaves_the_positions_of_what_was_folded() -> None:
    def failing() -> Iterator[RecordedEvent]:
        yield from EVENTS[:7]
        raise Boom

    projections = [FACTORIES[name]() for name in NAMES]
    with pytest.raises(Boom):
        Folder(projections).fold(failing())
    expected = [FACTORIES[name]() for name in NAMES]
    one_by_one(expected, EVENTS[:7])
    assert observe(projections) == observe(expected)


# --- which handler an event goes to ----------------------------------------------------------------------


def test_a_payload_subclass_goes_to_its_base_types_handler() -> None:
    class LateApplied(ConfigApplied):
        pass

    stats = StatsProjection()
    assert stats.handler_for(LateApplied) == stats._applied
    assert stats.handler_for(EventPayload) is None
    history = HistoryProjection(window=500)
    assert history.handler_for(LateApplied) == history.fold


def test_a_projection_with_neither_fold_nor_handlers_is_refused() -> None:
    class Empty(Projection):
        name = "empty"

        def reset(self) -> None:
            pass

        def snapshot(self) -> dict[str, Any]:
            return {}

        def restore(self, state: dict[str, Any]) -> None:
            pass

    with pytest.raises(TypeError, match="neither fold nor handlers"):
        Empty().fold(EVENTS[0])


# --- ProjectionSet over a log ----------------------------------------------------------------------------


class ListLog:
    """What ProjectionSet asks of the log, over a list of events and a dict of checkpoints."""

    def __init__(self, events: list[RecordedEvent]) -> None:
        self.events = events
        self.checkpoints: dict[str, Checkpoint] = {}

    def subscribe(self, listener: Any, *, folded_to: Any = None) -> Any:
        return lambda: None

    def head(self) -> int:
        return self.events[-1].position if self.events else 0

    def iter_events(self, after: int, until: int | None = None) -> Iterator[RecordedEvent]:
        return iter([e for e in self.events if e.position > after and (until is None or e.position <= until)])

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        return self.checkpoints.get(name)

    def save_checkpoint(self, *checkpoints: Checkpoint) -> None:
        # Stored as JSON, as the log does: a state shares its dicts with the live projection.
        for checkpoint in checkpoints:
            self.checkpoints[checkpoint.name] = Checkpoint(
                checkpoint.name, checkpoint.version, checkpoint.position, plain(checkpoint.state)
            )

    def get_config(self, reference: str, *, reveal: bool = True) -> Any:
        @dataclass
        class Stored:
            body: dict[str, Any]
            secret_paths: frozenset[str] = frozenset()

        return Stored({"config": reference[:4]})


def full_fold() -> Observed:
    projections = [FACTORIES[name]() for name in NAMES]
    one_by_one(projections, EVENTS)
    return observe(projections)


def projection_set(log: ListLog, **options: Any) -> ProjectionSet:
    return ProjectionSet(cast(EventLog, log), [FACTORIES[name]() for name in NAMES], **options)


def test_batches_with_gaps_and_repeats_fold_every_event_once() -> None:
    log = ListLog(EVENTS)
    projections = projection_set(log)
    projections.on_appended(EVENTS[:5])
    projections.on_appended(EVENTS[3:9])  # partly folded already
    projections.on_appended(EVENTS[20:22])  # a gap: the rest is read from the log
    projections.on_appended(reversed(EVENTS[22:30]))
    projections.on_appended(EVENTS[25:28])  # all folded already
    projections.on_appended([])
    projections.on_appended(EVENTS[30:])
    assert projections.position == EVENTS[-1].position
    assert observe(projections.projections) == full_fold()


@pytest.mark.parametrize("stale", NAMES)
def test_checkpoints_at_different_positions_then_the_tail_equal_a_full_fold(stale: str) -> None:
    log = ListLog(EVENTS[:20])
    first = projection_set(log)
    first.start()
    first.stop()  # every checkpoint at 20 ...
    ahead = prepared("history", 33)  # ... but history's at 33, and one of another version
    log.checkpoints["history"] = Checkpoint("history", ahead.version, 33, plain(ahead.snapshot()))
    old = log.checkpoints[stale]
    log.checkpoints[stale] = Checkpoint(stale, old.version + 1, old.position, old.state)
    log.events = EVENTS
    restarted = projection_set(log)
    restarted.start()
    assert restarted.replayed_on_start == len(EVENTS)  # from the stale one's 0
    assert observe(restarted.projections) == full_fold()


def test_a_checkpoint_is_written_every_so_many_events_and_restores_to_the_same_state() -> None:
    log = ListLog(EVENTS)
    projections = projection_set(log, checkpoint_every=10, checkpoint_min_interval_s=0.0)
    saved: list[int] = []
    for start in range(0, len(EVENTS), 7):
        projections.on_appended(EVENTS[start : start + 7])
        saved.extend(sorted({c.position for c in log.checkpoints.values()} - set(saved)))
    # Batches end at 7, 14, ..., 48: written at 14, 28 and 42, not at 48 (only 6 events after 42).
    assert saved == [14, 28, 42]
    assert {c.position for c in log.checkpoints.values()} == {42}
    restarted = projection_set(log)
    restarted.start()
    assert restarted.replayed_on_start == len(EVENTS) - 42
    assert observe(restarted.projections) == full_fold()


def test_with_checkpoints_off_the_append_path_a_due_one_waits_for_checkpoint_if_due() -> None:
    log = ListLog(EVENTS)
    projections = projection_set(log, checkpoint_every=10, checkpoint_min_interval_s=0.0)
    projections.checkpoint_on_append = False
    assert not projections.checkpoint_if_due()  # nothing folded yet
    projections.on_appended(EVENTS[:12])  # due, but not saved by the append
    assert log.checkpoints == {}
    assert projections.checkpoint_if_due()
    assert {c.position for c in log.checkpoints.values()} == {12}
    projections.on_appended(EVENTS[12:20])  # 8 more: not due again
    assert not projections.checkpoint_if_due()
    assert {c.position for c in log.checkpoints.values()} == {12}


class SlowSaveLog(ListLog):
    """A log whose checkpoint write waits until the test lets it finish (an fsync that takes its time)."""

    def __init__(self, events: list[RecordedEvent]) -> None:
        super().__init__(events)
        self.saving = threading.Event()
        self.finish = threading.Event()

    def save_checkpoint(self, *checkpoints: Checkpoint) -> None:
        self.saving.set()
        assert self.finish.wait(10)
        super().save_checkpoint(*checkpoints)


def test_an_append_folds_while_a_checkpoint_off_its_path_is_being_written() -> None:
    log = SlowSaveLog(EVENTS)
    projections = projection_set(log, checkpoint_every=10, checkpoint_min_interval_s=0.0)
    projections.checkpoint_on_append = False
    projections.on_appended(EVENTS[:12])
    saver = threading.Thread(target=projections.checkpoint_if_due)
    saver.start()
    try:
        assert log.saving.wait(10)
        folded = threading.Thread(target=projections.on_appended, args=(EVENTS[12:20],))
        folded.start()
        folded.join(10)
        assert not folded.is_alive()  # it did not wait for the write
        assert projections.position == EVENTS[19].position
    finally:
        log.finish.set()
        saver.join(10)
    # What was written is the set as it stood when it was taken, whole.
    assert {c.position for c in log.checkpoints.values()} == {12}
    assert not projections.checkpoint_if_due()  # counted from 12: 8 more is not due


def test_only_projections_with_a_settle_of_their_own_are_settled_per_batch() -> None:
    projections = projection_set(ListLog(EVENTS))
    assert [p.name for p in projections._settling] == ["current", "history", "backups"]


# --- the per-projection shortcuts ------------------------------------------------------------------------


def test_history_checkpoints_reuse_the_dumps_of_unchanged_operations_and_stay_within_the_window() -> None:
    history = HistoryProjection(window=3)
    for split in range(len(EVENTS) + 1):
        fresh = HistoryProjection(window=3)
        for event in EVENTS[:split]:
            fresh.apply(event)
        if split:
            history.apply(EVENTS[split - 1])
        assert plain(history.snapshot()) == plain(fresh.snapshot()), split
        # The text joined from the kept parts is the state's own canonical JSON.
        state, encoded = history.encoded_snapshot()
        assert encoded == canonical_json(state) == canonical_json(fresh.snapshot()), split
        assert len(history._dumped) <= 3
    # An operation replaced under the same id (folded again after a restore) is dumped anew.
    key = next(iter(history.operations))
    history.operations[key] = history.operations[key].model_copy(update={"message": "changed"})
    assert history.snapshot()["operations"][0]["message"] == "changed"
    state, encoded = history.encoded_snapshot()
    assert encoded == canonical_json(state)
    assert '"message":"changed"' in encoded


@pytest.mark.parametrize("name", NAMES)
def test_every_projections_encoded_snapshot_is_its_snapshots_canonical_json(name: str) -> None:
    # What a checkpoint stores (and MACs) is this text: it must be the state's, whatever the projection
    # kept to make it.
    projection = FACTORIES[name]()
    for event in EVENTS:
        projection.apply(event)
        state, encoded = projection.encoded_snapshot()
        assert encoded == canonical_json(state)
        assert json.loads(encoded) == plain(state)


def reference_entries(applied: list[str], kept: int) -> list[str]:
    """The hashes the backups list shows: newest first, each once, at most ``kept``."""
    entries: list[str] = []
    for config_hash in applied:
        entries = [config_hash, *(h for h in entries if h != config_hash)][:kept]
    return entries


@given(st.lists(st.integers(0, 130), max_size=400))
@settings(max_examples=40, deadline=None)
def test_backups_move_a_reapplied_config_to_the_front_of_a_long_list(picks: list[int]) -> None:
    backups = BackupsProjection(backup_count=5)
    applied = [f"{n:064x}" for n in picks]
    for position, config_hash in enumerate(applied, start=1):
        backups.apply(
            EVENTS[0].model_copy(
                update={
                    "position": position,
                    "type": ConfigApplied.event_type,
                    "operation_id": op(position),
                    "payload": ConfigApplied(hash=config_hash, previous_hash=None, changes=()),
                }
            )
        )
    expected = reference_entries(applied, 100)
    # Before the batch is settled (readers see its applies) and after.
    assert [e["hash"] for e in backups.entries] == expected
    backups.settle()
    assert [e["hash"] for e in backups.entries] == expected
    restored = BackupsProjection(backup_count=5)
    restored.restore(plain(backups.snapshot()))
    assert [e["hash"] for e in restored.entries] == expected


def test_current_answers_from_a_restored_state_and_from_a_folded_event_alike() -> None:
    folded = CurrentProjection(materialize)
    for event in EVENTS:
        folded.apply(event)
    folded.settle()
    restored = CurrentProjection(materialize)
    restored.restore(plain(folded.snapshot()))
    assert restored.value is None  # published by the next settle
    assert restored.hash == folded.hash
    restored.settle()
    assert restored.value == folded.value
    assert plain(restored.snapshot()) == plain(folded.snapshot())
    empty = CurrentProjection(materialize)
    empty.restore({"applied": None})
    empty.settle()
    assert (empty.hash, empty.value) == (None, None)


def test_open_operations_checkpoint_with_their_ids_as_text() -> None:
    stats, backups, history = (
        StatsProjection(),
        BackupsProjection(backup_count=5),
        HistoryProjection(window=500),
    )
    for projection in (stats, backups, history):
        for event in EVENTS:
            projection.apply(event)
    running = str(op(10))
    assert list(stats.snapshot()["open"]) == [running]
    assert list(backups.snapshot()["triggers"]) == [running]
    assert list(history.snapshot()["open"]) == [running]
    assert uuid.UUID(running).int in stats._open


def test_as_of_equals_applying_every_event_in_turn() -> None:
    log = ListLog(EVENTS)
    progress: list[tuple[int, int]] = []
    for position in (0, 7, 30, EVENTS[-1].position):
        state = as_of(
            cast(EventLog, log), position, backup_count=2, progress=lambda a, b: progress.append((a, b))
        )
        expected = [FACTORIES[name]() for name in ("history", "stats", "backups")]
        one_by_one(expected, EVENTS[:position])
        history, stats, backups = cast(
            tuple[HistoryProjection, StatsProjection, BackupsProjection], tuple(expected)
        )
        assert state.history == history.recent()
        assert state.stats == stats.summary()
        assert state.backups == backups.backups
        assert state.position == position
        applied = [e for e in EVENTS[:position] if isinstance(e.payload, ConfigApplied)]
        assert state.current_hash == (applied[-1].payload.hash if applied else None)  # type: ignore[attr-defined]
        assert state.config == (None if not applied else {"config": state.current_hash[:4]})  # type: ignore[index]
        assert state.occurred_at == (None if position == 0 else EVENTS[position - 1].occurred_at)
    assert progress == []  # positions are reported every 1000 events
