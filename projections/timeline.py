"""Looking back: the state as of a time or position, diffs between hashes, and incident replay."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confledger.projections.backups import BackupsProjection
from confledger.projections.base import Folder, Projection
from confledger.projections.history import HistoryProjection
from confledger.projections.stats import StatsProjection
from confledger.store.diff import Change, diff_bodies
from confledger.store.errors import UnknownConfigHash
from confledger.store.events import (
    ConfigApplied,
    InstanceStarted,
    InstanceStopped,
    OperationCompleted,
    OperationRejected,
    RecordedEvent,
)
from confledger.store.log import EventLog
from confledger.store.outcome import ReloadOperation, build_operation
from confledger.store.secrets import redact
from confledger.store.times import utc_text

__all__ = ["AsOf", "Incident", "as_of", "diff_configs", "incident_replay", "position_of_hash"]


@dataclass(frozen=True)
class AsOf:
    """Every projection as it stood at ``position``."""

    position: int
    occurred_at: datetime | None
    current_hash: str | None
    config: dict[str, Any] | None
    history: list[ReloadOperation]
    stats: dict[str, Any]
    backups: list[dict[str, Any]]


@dataclass(frozen=True)
class Incident:
    since: datetime | None
    until: datetime | None
    operations: list[ReloadOperation]
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    # The window held more events than were read: the oldest of it are not here.
    truncated: bool = False


def position_of_hash(log: EventLog, reference: str) -> int:
    """The position at which the config ``reference`` (hash or prefix) was last applied."""
    full = log.resolve_hash(reference)
    before: int | None = None
    while True:
        batch = log.read_reverse(before, 500, types=[ConfigApplied.event_type])
        for event in batch:
            if isinstance(event.payload, ConfigApplied) and event.payload.hash == full:
                return event.position
        if len(batch) < 500:
            raise UnknownConfigHash(f"config {full[:16]} was never applied")
        before = batch[-1].position


def as_of(
    log: EventLog,
    position: int,
    *,
    backup_count: int,
    history_window: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> AsOf:
    """Rebuild every projection from zero up to ``position`` (inclusive) - no checkpoint is trusted."""
    history = HistoryProjection(window=history_window)
    stats = StatsProjection()
    backups = BackupsProjection(backup_count)
    projections: Sequence[Projection] = (history, stats, backups)
    last: RecordedEvent | None = None
    current_hash: str | None = None

    def followed() -> Iterator[RecordedEvent]:
        # Runs on as each event has been folded (the folder asks for the next one only then).
        nonlocal last, current_hash
        for event in log.iter_events(0, until=position):
            yield event
            if isinstance(event.payload, ConfigApplied):
                current_hash = event.payload.hash
            last = event
            if progress is not None and event.position % 1000 == 0:
                progress(event.position, position)

    Folder(projections).fold(followed())
    config = None
    if current_hash is not None:
        # Left sealed: a replay shows secrets as ********** anyway, so it needs no key.
        stored = log.get_config(current_hash, reveal=False)
        config = redact(stored.body, stored.secret_paths)
    return AsOf(
        position=0 if last is None else last.position,
        occurred_at=None if last is None else last.occurred_at,
        current_hash=current_hash,
        config=config,
        history=history.recent(),
        stats=stats.summary(),
        backups=backups.backups,
    )


def diff_configs(log: EventLog, from_reference: str, to_reference: str) -> list[Change]:
    """Dotted-path differences between two stored configs; secret values appear as ``**********``."""
    old = log.get_config(from_reference)
    new = log.get_config(to_reference)
    return diff_bodies(old.body, new.body, secret_paths=old.secret_paths | new.secret_paths)


def incident_replay(
    log: EventLog, since: datetime | None, until: datetime | None, *, max_events: int | None = None
) -> Incident:
    """Operations that ran in [since, until] with their per-service outcomes, and lifecycle events;
    with ``max_events``, from the newest that many events of the window (``truncated`` if it held more)."""
    events = log.read_between(since, until, newest=None if max_events is None else max_events + 1)
    truncated = max_events is not None and len(events) > max_events
    if truncated:
        events = events[1:]
    grouped: dict[str, list[RecordedEvent]] = {}
    lifecycle: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for event in events:
        if event.operation_id is not None:
            grouped.setdefault(str(event.operation_id), []).append(event)
        if isinstance(event.payload, InstanceStarted | InstanceStopped):
            lifecycle.append(
                {
                    "position": event.position,
                    "occurred_at": utc_text(event.occurred_at),
                    "type": event.type,
                    "instance_id": event.instance_id,
                }
            )
        if isinstance(event.payload, ConfigApplied):
            changes.append(
                {
                    "position": event.position,
                    "occurred_at": utc_text(event.occurred_at),
                    "hash": event.payload.hash,
                    "previous_hash": event.payload.previous_hash,
                    "changes": list(event.payload.changes),
                    "actor": event.actor,
                }
            )
    operations = []
    for operation_id, operation_events in grouped.items():
        # An operation that started before the window still belongs in the review if it ended inside.
        if (
            not any(e.type == "operation.started" for e in operation_events)
            and not any(isinstance(e.payload, OperationRejected) for e in operation_events)
        ) or not any(isinstance(e.payload, OperationCompleted | OperationRejected) for e in operation_events):
            operation_events = log.read_operation(operation_id)
        operations.append(build_operation(operation_events))
    operations.sort(key=lambda op: op.first_position)
    return Incident(since, until, operations, lifecycle, changes, truncated)
