"""Each projection folds a hand-built log; a checkpoint taken anywhere, restored and folded on, equals a
fold of the whole log from zero."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from confledger.projections.backups import BackupsProjection
from confledger.projections.base import Projection, event_from_state, event_to_state
from confledger.projections.current import CurrentProjection
from confledger.projections.history import HistoryProjection
from confledger.projections.stats import StatsProjection
from confledger.store.events import (
    ConfigApplied,
    ConfigLoaded,
    ConfigRolledBack,
    ConfigUnchanged,
    EventPayload,
    InstanceStarted,
    InstanceStopped,
    OperationCompleted,
    OperationKind,
    OperationRejected,
    OperationStarted,
    OperationStatus,
    RecordedEvent,
    ServiceNotified,
    ServiceOutcome,
    Trigger,
    ValidationFailed,
    ValidationPassed,
)
from confledger.store.outcome import ReloadStatus, build_operation

H1, H2, H3, H4 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def op(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


class LogBuilder:
    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    def add(self, payload: EventPayload, operation: int | None = None, *, actor: str = "system") -> None:
        position = len(self.events) + 1
        self.events.append(
            RecordedEvent(
                position=position,
                event_id=uuid.UUID(int=10_000 + position),
                occurred_at=T0 + timedelta(seconds=position),
                type=payload.event_type,
                schema_version=type(payload).schema_version,
                operation_id=None if operation is None else op(operation),
                instance_id="node-a",
                actor=actor,
                payload=payload,
                prev_hash=f"{position - 1:064x}",
                hash=f"{position:064x}",
            )
        )


def completed(status: OperationStatus, total: float, **fields: Any) -> OperationCompleted:
    return OperationCompleted(status=status, total_ms=total, **fields)


def notified(
    service: str, outcome: ServiceOutcome, config: str, direction: str = "forward"
) -> ServiceNotified:
    return ServiceNotified(
        service=service,
        priority=0,
        outcome=outcome,
        duration_ms=1.5,
        direction=direction,  # type: ignore[arg-type]
        config_hash=config,
        error=None if outcome is ServiceOutcome.SUCCESS else outcome.value,
    )


def started(kind: OperationKind, trigger: Trigger, **fields: Any) -> OperationStarted:
    return OperationStarted(kind=kind, trigger=trigger, **fields)


RELOAD, ROLLBACK = OperationKind.RELOAD, OperationKind.ROLLBACK
SUCCESS, FAILED = OperationStatus.SUCCESS, OperationStatus.FAILED
OK, REFUSED, TIMEOUT, ERROR = (
    ServiceOutcome.SUCCESS,
    ServiceOutcome.FAILED,
    ServiceOutcome.TIMEOUT,
    ServiceOutcome.ERROR,
)


def hand_built_log() -> list[RecordedEvent]:
    log = LogBuilder()
    log.add(InstanceStarted(version="0.1.0", host="h", pid=1))
    # 1: the initial config at start-up
    log.add(started(RELOAD, Trigger.STARTUP, source="c.yaml"), 1)
    log.add(ConfigLoaded(hash=H1, source="c.yaml", size_bytes=10, load_ms=0.5), 1)
    log.add(ValidationPassed(hash=H1, duration_ms=1.0), 1)
    log.add(ConfigApplied(hash=H1, previous_hash=None, changes=("initial_configuration",)), 1)
    log.add(completed(SUCCESS, 5.0, validation_ms=1.0, apply_ms=0.5), 1)
    # 2: a manual reload, one of two services refuses (at the threshold: applied)
    log.add(started(RELOAD, Trigger.MANUAL, previous_hash=H1), 2)
    log.add(ConfigLoaded(hash=H2, source="c.yaml", size_bytes=11, load_ms=0.4), 2)
    log.add(ValidationPassed(hash=H2, warnings=("careful",), duration_ms=2.0), 2)
    log.add(notified("a", OK, H2), 2)
    log.add(notified("b", REFUSED, H2), 2)
    log.add(ConfigApplied(hash=H2, previous_hash=H1, changes=("cache.ttl",)), 2)
    log.add(completed(SUCCESS, 12.0, validation_ms=2.0, apply_ms=3.0), 2)
    # 3: a manual reload that fails validation
    log.add(started(RELOAD, Trigger.MANUAL, previous_hash=H2), 3)
    log.add(ConfigLoaded(hash=None, source="c.yaml", size_bytes=3, load_ms=0.1), 3)
    log.add(ValidationFailed(errors=("x: bad",), duration_ms=0.3), 3)
    log.add(completed(FAILED, 1.0, reason="validation_failed", error_message="validation failed"), 3)
    # 4: an API request refused while another operation ran
    log.add(
        OperationRejected(
            kind=RELOAD, trigger=Trigger.API, reason="operation_in_progress", message="Another reload"
        ),
        4,
        actor="token:ops",
    )
    # 5: too few services accept: rolled back automatically, the one that accepted compensated
    log.add(started(RELOAD, Trigger.MANUAL, previous_hash=H2), 5)
    log.add(ConfigLoaded(hash=H3, source="c.yaml", size_bytes=12, load_ms=0.2), 5)
    log.add(ValidationPassed(hash=H3, duration_ms=1.0), 5)
    log.add(notified("a", OK, H3), 5)
    log.add(notified("b", TIMEOUT, H3), 5)
    log.add(notified("c", ERROR, H3), 5)
    log.add(notified("a", OK, H2, "compensate"), 5)
    log.add(
        ConfigRolledBack(from_hash=H3, to_hash=H2, reason="automatic", success_ratio=1 / 3, threshold=0.5), 5
    )
    log.add(completed(OperationStatus.ROLLED_BACK, 30.0, reason="services_below_threshold"), 5)
    # 6: a manual rollback to the first config
    log.add(started(ROLLBACK, Trigger.MANUAL, previous_hash=H2, target_hash=H1), 6)
    log.add(ValidationPassed(hash=H1, duration_ms=1.0), 6)
    log.add(notified("a", OK, H1), 6)
    log.add(notified("b", OK, H1), 6)
    log.add(ConfigRolledBack(from_hash=H2, to_hash=H1, reason="manual"), 6)
    log.add(ConfigApplied(hash=H1, previous_hash=H2, changes=("cache.ttl",)), 6)
    log.add(completed(SUCCESS, 8.0), 6)
    # 7: a signal reload with nothing changed
    log.add(started(RELOAD, Trigger.SIGNAL, previous_hash=H1), 7, actor="signal")
    log.add(ConfigLoaded(hash=H1, source="c.yaml", size_bytes=10, load_ms=0.2), 7, actor="signal")
    log.add(ConfigUnchanged(hash=H1), 7, actor="signal")
    log.add(completed(SUCCESS, 0.7, message="No configuration changes detected"), 7, actor="signal")
    # 8: an API reload with no services registered
    log.add(started(RELOAD, Trigger.API, previous_hash=H1), 8, actor="token:ops")
    log.add(ConfigLoaded(hash=H4, source="c.yaml", size_bytes=13, load_ms=0.2), 8, actor="token:ops")
    log.add(ValidationPassed(hash=H4, duration_ms=1.0), 8, actor="token:ops")
    log.add(ConfigApplied(hash=H4, previous_hash=H1, changes=("debug",)), 8, actor="token:ops")
    log.add(completed(SUCCESS, 4.0), 8, actor="token:ops")
    # 9: a file-watch reload interrupted by a crash, closed at the next start
    log.add(started(RELOAD, Trigger.FILE_WATCH, previous_hash=H4), 9, actor="file_watch")
    log.add(InstanceStopped(reason="crash"))
    log.add(InstanceStarted(version="0.1.0", host="h", pid=2))
    log.add(completed(OperationStatus.INTERRUPTED, 0.0, reason="interrupted"), 9)
    # 10: still running when the log ends
    log.add(started(RELOAD, Trigger.API, previous_hash=H4), 10, actor="token:ops")
    return log.events


EVENTS = hand_built_log()


def materialize(full_hash: str) -> dict[str, str]:
    return {"config": full_hash[:4]}


FACTORIES: dict[str, Callable[[], Projection]] = {
    "current": lambda: CurrentProjection(materialize),
    "history": lambda: HistoryProjection(window=500),
    "stats": StatsProjection,
    "backups": lambda: BackupsProjection(backup_count=2),
}


def fold(projection: Projection, events: list[RecordedEvent]) -> Projection:
    for event in events:
        projection.apply(event)
    projection.settle()
    return projection


def plain(state: dict[str, Any]) -> Any:
    return json.loads(json.dumps(state))


# --- each projection on the hand-built log ---------------------------------------------------------------


def test_current_is_the_last_applied_config() -> None:
    current = fold(CurrentProjection(materialize), EVENTS)
    assert isinstance(current, CurrentProjection)
    assert current.hash == H4
    value = current.value
    assert value is not None
    assert value.config == {"config": "4444"}
    assert value.short_hash == "4" * 16
    assert value.actor == "token:ops"
    assert value.position == next(
        e.position for e in EVENTS if isinstance(e.payload, ConfigApplied) and e.payload.hash == H4
    )


def test_current_builds_one_object_per_batch() -> None:
    built: list[str] = []

    def counting(full_hash: str) -> str:
        built.append(full_hash)
        return full_hash

    fold(CurrentProjection(counting), EVENTS)
    assert built == [H4]


def test_history_shows_every_operation_newest_first() -> None:
    history = fold(HistoryProjection(window=500), EVENTS)
    assert isinstance(history, HistoryProjection)
    recent = history.recent()
    assert [r.operation_id for r in recent] == [str(op(n)) for n in (10, 9, 8, 7, 6, 5, 4, 3, 2, 1)]
    by_id = {int(uuid.UUID(r.operation_id)): r for r in recent}
    assert [by_id[n].status for n in range(1, 11)] == [
        ReloadStatus.SUCCESS,
        ReloadStatus.SUCCESS,
        ReloadStatus.FAILED,
        ReloadStatus.FAILED,
        ReloadStatus.ROLLED_BACK,  # automatic: services below the threshold
        ReloadStatus.ROLLED_BACK,  # a manual rollback that completed: the seed's status
        ReloadStatus.SUCCESS,
        ReloadStatus.SUCCESS,
        ReloadStatus.INTERRUPTED,
        ReloadStatus.IN_PROGRESS,
    ]
    assert (by_id[5].success, by_id[6].success) == (False, True)
    assert by_id[1].changes_applied == ("initial_configuration",)
    assert by_id[2].services_notified == ("a:success", "b:failed")
    assert by_id[2].validation_warnings == ("careful",)
    assert (by_id[2].previous_config_hash, by_id[2].new_config_hash) == (H1, H2)
    assert by_id[3].validation_errors == ("x: bad",)
    assert by_id[4].rejected
    assert by_id[4].actor == "token:ops"
    assert by_id[5].services_notified == ("a:success", "b:timeout", "c:error")
    assert by_id[5].services_compensated == ("a:success",)
    assert by_id[5].new_config_hash == H3
    assert by_id[6].kind is OperationKind.ROLLBACK
    assert by_id[6].new_config_hash == H1
    assert by_id[7].message == "No configuration changes detected"
    assert by_id[9].trigger is Trigger.FILE_WATCH
    assert history.in_progress() == [by_id[10]]
    assert history.oldest_position == by_id[1].first_position


def test_an_operation_of_payload_subclasses_reads_as_one_of_their_bases() -> None:
    class LateStarted(OperationStarted):
        pass

    class LateApplied(ConfigApplied):
        pass

    class LateCompleted(OperationCompleted):
        pass

    plain_log, late_log = LogBuilder(), LogBuilder()
    for log, started_type, applied_type, completed_type in (
        (plain_log, OperationStarted, ConfigApplied, OperationCompleted),
        (late_log, LateStarted, LateApplied, LateCompleted),
    ):
        log.add(started_type(kind=RELOAD, trigger=Trigger.API, previous_hash=H1), 1)
        log.add(applied_type(hash=H2, previous_hash=H1, changes=("a.b",)), 1)
        log.add(completed_type(status=OperationStatus.SUCCESS, total_ms=3.0), 1)
    assert build_operation(late_log.events) == build_operation(plain_log.events)
    assert build_operation(late_log.events).changes_applied == ("a.b",)


def test_history_keeps_a_window() -> None:
    history = fold(HistoryProjection(window=3), EVENTS)
    assert isinstance(history, HistoryProjection)
    assert [int(uuid.UUID(k)) for k in history.operations] == [7, 8, 9]


def test_stats_count_and_break_down() -> None:
    stats = fold(StatsProjection(), EVENTS)
    assert isinstance(stats, StatsProjection)
    summary = stats.summary()
    # The running one is not counted yet; the rejected request (4) never ran: it is counted apart.
    assert summary["total_operations"] == 8
    assert summary["successful_operations"] == 5
    assert summary["failed_operations"] == 3
    assert summary["success_rate"] == pytest.approx(5 / 8, abs=1e-6)
    assert summary["rejected_requests"] == 1
    assert summary["rejected_requests_by_reason"] == {"operation_in_progress": 1}
    # A manual rollback is rolled_back and a success; an automatic one rolled_back and a failure.
    assert summary["operations_by_status"] == {"failed": 1, "interrupted": 1, "rolled_back": 2, "success": 4}
    assert summary["operations_by_kind"] == {"reload": 7, "rollback": 1}
    assert summary["rollbacks"] == {"automatic": 1, "manual": 1}
    # History lists the rejected request as failed, so the totals of its pages count it.
    assert stats.count_matching() == 9
    assert stats.count_matching(status="failed") == 2
    assert stats.count_matching(trigger="api", status="failed") == 1
    assert stats.count_matching(trigger="api", status="success") == 1
    assert summary["triggers"] == {
        "api": {"total": 1, "failed": 0, "failure_rate": 0.0},
        "file_watch": {"total": 1, "failed": 1, "failure_rate": 1.0},
        "manual": {"total": 4, "failed": 2, "failure_rate": 0.5},
        "signal": {"total": 1, "failed": 0, "failure_rate": 0.0},
        "startup": {"total": 1, "failed": 0, "failure_rate": 0.0},
    }
    # Durations of the 7 operations that completed or failed on their own (not the rejected or interrupted).
    durations = [5.0, 12.0, 1.0, 30.0, 8.0, 0.7, 4.0]
    assert stats.durations.count == 7
    assert summary["average_duration_ms"] == pytest.approx(sum(durations) / 7, abs=1e-3)
    assert summary["max_duration_ms"] == 30.0
    assert summary["p50_duration_ms"] == pytest.approx(5.0, rel=0.02)
    services = summary["services"]
    assert services["a"]["outcomes"] == {"success": 3}
    assert services["a"]["compensations"] == 1
    assert services["b"]["outcomes"] == {"failed": 1, "success": 1, "timeout": 1}
    assert services["b"]["failure_rate"] == pytest.approx(2 / 3)
    assert services["c"]["outcomes"] == {"error": 1}
    # c refused the one config it was offered: it runs none the log knows of, and shows as drift.
    assert services["c"]["running_hash"] == ""
    assert stats.drift(H4) == {"a": H1, "b": H1, "c": ""}
    # Counted by the status history shows, so a filtered history page and its total agree.
    assert stats.count_matching(trigger="manual", status="success") == 1
    assert stats.count_matching(trigger="manual", status="rolled_back") == 2  # one automatic, one manual


def test_backups_keep_the_last_distinct_applied_configs() -> None:
    backups = fold(BackupsProjection(backup_count=2), EVENTS)
    assert isinstance(backups, BackupsProjection)
    # Applied in order: H1, H2, H1 (rollback), H4. Re-applying H1 moved it to the front.
    assert [e["hash"] for e in backups.entries] == [H4, H1, H2]
    assert [(e["hash"], e["trigger"], e["actor"]) for e in backups.backups] == [
        (H1, "manual", "system"),
        (H2, "manual", "system"),
    ]
    assert backups.entries[0]["trigger"] == "api"
    assert [e["hash"] for e in fold(BackupsProjection(backup_count=1), EVENTS).backups] == [H1]  # type: ignore[attr-defined]


def test_backup_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BackupsProjection(backup_count=0)


# --- checkpoints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FACTORIES))
def test_a_checkpoint_anywhere_then_the_tail_equals_a_fold_from_zero(name: str) -> None:
    whole = fold(FACTORIES[name](), EVENTS)
    for split in range(len(EVENTS) + 1):
        head = fold(FACTORIES[name](), EVENTS[:split])
        checkpoint = plain(head.snapshot())  # through JSON, as projection_checkpoints stores it

        resumed = FACTORIES[name]()
        resumed.restore(checkpoint)
        resumed.position = head.position
        fold(resumed, EVENTS[split:])

        assert plain(resumed.snapshot()) == plain(whole.snapshot()), f"checkpoint after {split} events"
        assert resumed.position == whole.position == EVENTS[-1].position
        assert views(resumed) == views(whole)


def views(projection: Projection) -> Any:
    """What readers see of each projection."""
    if isinstance(projection, CurrentProjection):
        return projection.value
    if isinstance(projection, HistoryProjection):
        return projection.recent()
    if isinstance(projection, StatsProjection):
        return projection.summary()
    assert isinstance(projection, BackupsProjection)
    return projection.backups


@pytest.mark.parametrize("name", list(FACTORIES))
def test_reset_then_fold_again_rebuilds_the_same_state(name: str) -> None:
    projection = fold(FACTORIES[name](), EVENTS)
    first = plain(projection.snapshot())
    projection.reset()
    projection.position = 0
    fold(projection, EVENTS)
    assert plain(projection.snapshot()) == first


@pytest.mark.parametrize("name", list(FACTORIES))
def test_an_event_already_folded_is_skipped(name: str) -> None:
    projection = fold(FACTORIES[name](), EVENTS)
    before = plain(projection.snapshot())
    assert not any(projection.apply(event) for event in EVENTS)
    assert plain(projection.snapshot()) == before


def test_events_round_trip_through_checkpoint_state() -> None:
    for event in EVENTS:
        assert event_from_state(plain(event_to_state(event))) == event


def test_backups_checkpoint_serves_a_larger_backup_count_after_restart() -> None:
    # The checkpoint keeps more entries than a small backup_count shows, so raising the count on a
    # restart shows the older backups at once instead of after a rebuild.
    small = fold(BackupsProjection(backup_count=1), EVENTS)
    assert isinstance(small, BackupsProjection)
    larger = BackupsProjection(backup_count=2)
    larger.restore(small.snapshot())
    assert [e["hash"] for e in larger.backups] == [H1, H2]
