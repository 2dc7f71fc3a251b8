"""The fleet projection and view: desired config, per-instance answers, and the four states."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from confledger.projections.fleet import (
    MAX_INSTANCES,
    FileWatchState,
    FleetProjection,
    fleet_view,
    group_of,
)
from confledger.store.decision import FleetVerdict
from confledger.store.events import (
    ConfigApplied,
    ConfigRolledBack,
    EventPayload,
    FileWatchDisabled,
    FileWatchEnabled,
    FleetChangeKept,
    InstanceApplied,
    InstanceStarted,
    InstanceStopped,
    RecordedEvent,
    ServiceFailure,
    ServiceOutcome,
)
from confledger.store.fleet import Heartbeat

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
H1, H2 = "1" * 64, "2" * 64
OPERATION = uuid.UUID(int=7)


class Log:
    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    def add(self, instance: str, payload: EventPayload, operation: uuid.UUID | None = None) -> int:
        position = len(self.events) + 1
        self.events.append(
            RecordedEvent(
                position=position,
                event_id=uuid.UUID(int=position),
                occurred_at=T0 + timedelta(seconds=position),
                type=payload.event_type,
                schema_version=1,
                operation_id=operation,
                instance_id=instance,
                actor="system",
                payload=payload,
                prev_hash="0" * 64,
                hash=f"{position:064x}",
            )
        )
        return position

    def fold(self) -> FleetProjection:
        projection = FleetProjection()
        for event in self.events:
            projection.apply(event)
        return projection


def started(log: Log, instance: str) -> None:
    log.add(instance, InstanceStarted(version="1", host="h", pid=1))


def decide(log: Log, instance: str, config: str) -> int:
    """``config.applied`` by ``instance`` and its own answer beside it; returns the applied position."""
    position = log.add(instance, ConfigApplied(hash=config, previous_hash=None), OPERATION)
    log.add(
        instance,
        InstanceApplied(
            hash=config, position=None, operation_id=str(OPERATION), role="decided", outcome="applied"
        ),
    )
    return position


def view(log: Log, now: datetime | None = None, **beats: Heartbeat) -> dict[str, dict[str, object]]:
    shown = fleet_view(
        log.fold(),
        beats,
        now=now or T0 + timedelta(seconds=len(log.events)),
        default_interval_s=30.0,
        head=len(log.events),
    )
    return {item["instance_id"]: item for item in shown["instances"]}


def beat(instance: str, seen: datetime, interval: float = 30.0) -> Heartbeat:
    return Heartbeat(instance, "h", 1, "1", T0, seen, 0, interval)


@pytest.mark.parametrize(
    ("answer", "state", "lag"),
    [
        # (what b did with the desired config, its state, lag_positions)
        (None, "lagging", 4),  # b has not answered H2 yet: it still runs H1 (position 2 against 6)
        ("applied", "in_sync", 0),
        ("failed", "drifted", 0),
        ("invalid", "drifted", 0),
    ],
)
def test_an_instance_s_state_follows_its_answer_to_the_desired_config(
    answer: str | None, state: str, lag: int
) -> None:
    log = Log()
    started(log, "a")
    first = decide(log, "a", H1)
    started(log, "b")
    log.add("b", InstanceApplied(hash=H1, position=first, role="start", outcome="applied"))
    second = decide(log, "a", H2)
    if answer is not None:
        failures = (
            () if answer != "failed" else (ServiceFailure(service="cache", outcome=ServiceOutcome.FAILED),)
        )
        log.add(
            "b",
            InstanceApplied(hash=H2, position=second, role="followed", outcome=answer, failures=failures),  # type: ignore[arg-type]
        )
    shown = view(log)
    assert shown["a"]["state"] == "in_sync"
    assert shown["b"]["state"] == state
    assert shown["b"]["lag_positions"] == lag
    if answer == "failed":
        assert shown["b"]["failures"] == [{"service": "cache", "outcome": "failed", "error": None}]


def test_stopped_or_silent_for_three_intervals_is_gone() -> None:
    log = Log()
    started(log, "a")
    decide(log, "a", H1)
    started(log, "b")
    started(log, "c")
    log.add("c", InstanceStopped())
    now = T0 + timedelta(seconds=100)
    shown = view(
        log,
        now,
        a=beat("a", now - timedelta(seconds=2.9), interval=1.0),  # seen within 3 intervals
        b=beat("b", now - timedelta(seconds=3.1), interval=1.0),  # not seen for more than 3
    )
    assert {name: item["state"] for name, item in shown.items()} == {"a": "in_sync", "b": "gone", "c": "gone"}


@pytest.mark.parametrize(
    ("shown_for", "listed", "hidden"),
    [
        # (gone_shown_for, the instances listed, gone_hidden); a runs, b went an hour ago, c a week ago
        (timedelta(days=1), {"a", "b"}, 1),
        (timedelta(minutes=30), {"a"}, 2),  # a live instance is listed however short the window
        (timedelta(0), {"a"}, 2),
        (None, {"a", "b", "c"}, 0),  # ?all=true / --all
    ],
)
def test_an_instance_gone_longer_than_the_window_is_counted_not_listed(
    shown_for: timedelta | None, listed: set[str], hidden: int
) -> None:
    log = Log()
    for name in ("a", "b", "c"):
        started(log, name)
    decide(log, "a", H1)
    now = T0 + timedelta(days=10)
    beats = {
        "a": beat("a", now - timedelta(seconds=1)),
        "b": beat("b", now - timedelta(hours=1)),
        "c": beat("c", now - timedelta(days=7)),
    }
    shown = fleet_view(log.fold(), beats, now=now, default_interval_s=30.0, head=4, gone_shown_for=shown_for)
    assert {item["instance_id"] for item in shown["instances"]} == listed
    assert shown["gone_hidden"] == hidden


def test_a_restart_after_a_stop_is_not_gone() -> None:
    log = Log()
    started(log, "a")
    decide(log, "a", H1)
    log.add("a", InstanceStopped())
    started(log, "a")
    assert view(log)["a"]["state"] == "in_sync"


def test_the_checkpoint_state_restores_to_the_same_fold() -> None:
    log = Log()
    started(log, "a")
    first = decide(log, "a", H1)
    log.add("b", InstanceApplied(hash=H1, position=first, role="followed", outcome="failed"))
    kept(log, "a", H1, OPERATION)
    folded = log.fold()
    restored = FleetProjection()
    restored.restore(folded.snapshot())
    assert FleetProjection.state_model is not None
    FleetProjection.state_model.model_validate(folded.snapshot())
    assert restored.snapshot() == folded.snapshot()


def test_the_fold_keeps_the_most_recently_heard_of_instances() -> None:
    log = Log()
    for index in range(MAX_INSTANCES + 5):
        started(log, f"host:{index}")
    instances = log.fold().instances
    assert len(instances) == MAX_INSTANCES
    assert "host:0" not in instances
    assert f"host:{MAX_INSTANCES + 4}" in instances


RELOAD, ROLLBACK, LATER = uuid.UUID(int=11), uuid.UUID(int=12), uuid.UUID(int=13)


def kept(log: Log, instance: str, config: str, operation: uuid.UUID) -> None:
    log.add(
        instance,
        FleetChangeKept(
            hash=config, operation_id=str(operation), applied=2, failed=1, waiting=0, threshold=0.5
        ),
    )


def test_the_desired_change_names_its_decider_its_kind_and_whether_it_was_kept() -> None:
    log = Log()
    assert log.fold().desired is None  # nothing applied yet
    at = log.add("a", ConfigApplied(hash=H2, previous_hash=H1), RELOAD)
    change = log.fold().desired
    assert change is not None
    assert (change.operation_id, change.hash, change.previous_hash) == (str(RELOAD), H2, H1)
    assert (change.kind, change.decided_by, change.kept) == ("reload", "a", None)
    assert change.decided_at == T0 + timedelta(seconds=at)

    kept(log, "b", H2, RELOAD)  # kept by another instance standing in for a: the verdict is the change's
    assert log.fold().desired.kept == FleetVerdict(H2, 2, 1, 0, 0.5, operation_id=str(RELOAD))  # type: ignore[union-attr]

    # A rollback records config.rolled_back before its config.applied: the change it makes is a rollback,
    # and the verdict on the change before it is no longer the desired change's.
    log.add("b", ConfigRolledBack(from_hash=H2, to_hash=H1, reason="manual"), ROLLBACK)
    log.add("b", ConfigApplied(hash=H1, previous_hash=H2), ROLLBACK)
    change = log.fold().desired
    assert change is not None
    assert (change.kind, change.decided_by, change.kept) == ("rollback", "b", None)

    # A verdict on a change that is no longer desired (recorded late) is not the new change's.
    log.add("c", ConfigApplied(hash=H2, previous_hash=H1), LATER)
    kept(log, "a", H1, ROLLBACK)
    change = log.fold().desired
    assert change is not None
    assert (change.kind, change.kept) == ("reload", None)


def test_a_service_threshold_rollback_inside_a_reload_does_not_make_the_next_change_a_rollback() -> None:
    log = Log()
    # config.rolled_back reason automatic: the reload applied nothing, so no config.applied follows it.
    log.add("a", ConfigRolledBack(from_hash=H1, to_hash=H1, reason="automatic"), RELOAD)
    log.add("a", ConfigApplied(hash=H2, previous_hash=H1), LATER)
    assert log.fold().desired.kind == "reload"  # type: ignore[union-attr]


# (instance id, its group): the workers of one serve --workers service share one
GROUPS = [
    ("web-1:4242/w0", "web-1:4242"),
    ("web-1:4242/w13", "web-1:4242"),
    ("web-1", "web-1"),  # not a worker: its own group
    ("web/w1/x", "web/w1/x"),  # a suffix only at the end
]


@pytest.mark.parametrize(("instance", "group"), GROUPS)
def test_a_worker_belongs_to_its_service_s_group(instance: str, group: str) -> None:
    assert group_of(instance) == group


def test_a_group_s_last_file_watch_toggle_is_kept_whichever_worker_made_it() -> None:
    log = Log()
    log.add("svc/w1", FileWatchEnabled(source="c.yaml", poll_interval=0.5, mode="polling"))
    on = log.fold().file_watch_of("svc")
    assert on is not None
    assert (on.enabled, on.poll_interval, on.mode) == (True, 0.5, "polling")
    at = log.add("svc/w0", FileWatchDisabled(source="c.yaml"))
    log.add("other", FileWatchEnabled(source="d.yaml", poll_interval=1.0))
    folded = log.fold()
    assert folded.file_watch_of("svc") == FileWatchState(
        enabled=False, poll_interval=None, mode=None, position=at, toggled_at=T0 + timedelta(seconds=at)
    )
    assert folded.file_watch_of("other").enabled  # type: ignore[union-attr]
    assert folded.file_watch_of("nobody") is None
    restored = FleetProjection()
    restored.restore(folded.snapshot())
    assert restored.file_watch_of("svc") == folded.file_watch_of("svc")
