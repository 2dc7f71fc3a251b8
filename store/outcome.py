"""One operation as the seed's ``ReloadOperation`` shows it, folded from the events it recorded.

The runner answers its caller with ``build_operation`` over the events it just appended, and history
folds the same events with the same function: an answer can never disagree with the record. The read
side imports this module, not the runner.

Status as the seed reports it: a rollback that completed successfully is ``rolled_back`` with
``success: true`` (the seed's reloader set ROLLED_BACK after completing a rollback), while the log records
its ``operation.completed`` as ``success``. A reload whose services fell below the threshold is
``rolled_back`` with ``success: false``. ``reported_status`` is that rule, for history, stats and metrics.

Lists from user input (validation errors and warnings, changed paths) are answered up to ``listed``
items each; what was left out, in the event or here, is counted in one last line, ``(and N more
errors)``, so a log written before events were capped still answers a small history page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from confledger.store.events import (
    ConfigApplied,
    ConfigLoaded,
    ConfigLoadFailed,
    ConfigUnchanged,
    OperationCompleted,
    OperationKind,
    OperationRejected,
    OperationStarted,
    OperationStatus,
    PayloadTable,
    RecordedEvent,
    ServiceNotified,
    Trigger,
    ValidationFailed,
    ValidationPassed,
)

__all__ = [
    "DEFAULT_LISTED",
    "ReloadOperation",
    "ReloadStatus",
    "build_operation",
    "operation_fields",
    "operation_of",
    "reported_status",
]

# Items of each list an answer shows when its caller does not say (``CONFLEDGER_MAX_RECORDED_ITEMS``).
DEFAULT_LISTED = 50


class ReloadStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    VALIDATING = "validating"
    APPLYING = "applying"
    SUCCESS = "success"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"


class ReloadOperation(BaseModel):
    """One operation as the seed's ``ReloadOperation`` shows it, folded from its events."""

    model_config = ConfigDict(frozen=True)

    operation_id: str
    kind: OperationKind = OperationKind.RELOAD
    trigger: Trigger = Trigger.MANUAL
    status: ReloadStatus = ReloadStatus.PENDING
    success: bool = False
    message: str = ""
    error_message: str | None = None
    reason: str | None = None
    actor: str = "system"
    client: str | None = None
    instance_id: str | None = None
    source: str | None = None
    force: bool = False
    dry_run: bool = False
    started_at: datetime | None = None
    completed_at: datetime | None = None
    previous_config_hash: str | None = None
    new_config_hash: str | None = None
    changes_applied: tuple[str, ...] = ()
    services_notified: tuple[str, ...] = ()
    services_compensated: tuple[str, ...] = ()
    would_notify: tuple[str, ...] = ()
    validation_errors: tuple[str, ...] = ()
    validation_warnings: tuple[str, ...] = ()
    total_duration_ms: float = 0.0
    validation_duration_ms: float = 0.0
    apply_duration_ms: float = 0.0
    load_duration_ms: float = 0.0
    service_durations_ms: dict[str, float] = Field(default_factory=dict)
    running_operation_id: str | None = None
    trace_id: str | None = None
    first_position: int = 0
    last_position: int = 0

    @property
    def duration_ms(self) -> float:
        return self.total_duration_ms

    @property
    def rejected(self) -> bool:
        # Refused for another operation: running here, or holding the fleet's lock past the wait.
        return self.reason in ("operation_in_progress", "fleet_lock_busy")

    @property
    def slowest_phase(self) -> str:
        phases = {
            "load": self.load_duration_ms,
            "validation": self.validation_duration_ms,
            "apply": self.apply_duration_ms,
        }
        return max(phases, key=lambda name: phases[name])

    @property
    def slowest_service(self) -> str | None:
        if not self.service_durations_ms:
            return None
        return max(self.service_durations_ms, key=lambda name: self.service_durations_ms[name])


_STATUS = {
    OperationStatus.SUCCESS: ReloadStatus.SUCCESS,
    OperationStatus.FAILED: ReloadStatus.FAILED,
    OperationStatus.ROLLED_BACK: ReloadStatus.ROLLED_BACK,
    OperationStatus.INTERRUPTED: ReloadStatus.INTERRUPTED,
}


def reported_status(kind: str, status: OperationStatus) -> tuple[ReloadStatus, bool]:
    """(status, success) of an operation of ``kind`` (an ``OperationKind`` or its value, as a stats
    checkpoint keeps it) whose ``operation.completed`` says ``status``."""
    if status is OperationStatus.SUCCESS:
        return (ReloadStatus.ROLLED_BACK if kind == OperationKind.ROLLBACK else ReloadStatus.SUCCESS), True
    return _STATUS[status], False


def _listed(items: Sequence[str], omitted: int, limit: int, noun: str) -> tuple[str, ...]:
    """The first ``limit`` items, and a last line counting the rest (omitted in the event or here)."""
    if not omitted and len(items) <= limit:
        return tuple(items)  # the common case: nothing to cut or count (a payload's tuple, as it is)
    omitted += max(len(items) - limit, 0)
    kept = tuple(items[:limit])
    return (*kept, f"(and {omitted} more {noun})") if omitted else kept


class _Folding:
    """One operation's answer while ``build_operation`` folds its events into it."""

    __slots__ = ("compensated", "durations", "fields", "listed", "notified")

    def __init__(self, fields: dict[str, Any], listed: int) -> None:
        self.fields = fields
        self.listed = listed
        self.notified: list[str] = []
        self.compensated: list[str] = []
        self.durations: dict[str, float] = {}


def _started(folding: _Folding, event: RecordedEvent, payload: OperationStarted) -> None:
    folding.fields.update(
        kind=payload.kind,
        trigger=payload.trigger,
        source=payload.source,
        force=payload.force,
        dry_run=payload.dry_run,
        previous_config_hash=payload.previous_hash,
        new_config_hash=payload.target_hash,
        started_at=payload.started_at or event.occurred_at,
        status=ReloadStatus.IN_PROGRESS,
        client=payload.client,
        trace_id=payload.trace_id,
    )


def _loaded(folding: _Folding, event: RecordedEvent, payload: ConfigLoaded) -> None:
    fields = folding.fields
    fields["new_config_hash"] = payload.hash or fields.get("new_config_hash")
    fields["load_duration_ms"] = payload.load_ms


def _load_failed(folding: _Folding, event: RecordedEvent, payload: ConfigLoadFailed) -> None:
    folding.fields["reason"] = payload.reason
    folding.fields["error_message"] = payload.message


def _unchanged(folding: _Folding, event: RecordedEvent, payload: ConfigUnchanged) -> None:
    folding.fields["new_config_hash"] = payload.hash


def _passed(folding: _Folding, event: RecordedEvent, payload: ValidationPassed) -> None:
    fields = folding.fields
    fields["validation_warnings"] = _listed(
        payload.warnings, payload.warnings_omitted, folding.listed, "warnings"
    )
    fields["validation_duration_ms"] = payload.duration_ms


def _failed(folding: _Folding, event: RecordedEvent, payload: ValidationFailed) -> None:
    fields, listed = folding.fields, folding.listed
    fields["validation_errors"] = _listed(payload.errors, payload.errors_omitted, listed, "errors")
    fields["validation_warnings"] = _listed(payload.warnings, payload.warnings_omitted, listed, "warnings")
    fields["validation_duration_ms"] = payload.duration_ms


def _notified(folding: _Folding, event: RecordedEvent, payload: ServiceNotified) -> None:
    # ``_value_``: a plain attribute, where ``.value`` is a descriptor call four times slower.
    label = f"{payload.service}:{payload.outcome._value_}"
    if payload.direction == "forward":
        folding.notified.append(label)
        folding.durations[payload.service] = payload.duration_ms
    else:
        folding.compensated.append(label)


def _applied(folding: _Folding, event: RecordedEvent, payload: ConfigApplied) -> None:
    folding.fields["new_config_hash"] = payload.hash
    folding.fields["changes_applied"] = _listed(
        payload.changes, payload.changes_omitted, folding.listed, "changes"
    )


def _completed(folding: _Folding, event: RecordedEvent, payload: OperationCompleted) -> None:
    fields = folding.fields
    status, success = reported_status(fields.get("kind", OperationKind.RELOAD), payload.status)
    fields.update(
        status=status,
        success=success,
        message=payload.message,
        error_message=payload.error_message or fields.get("error_message"),
        reason=payload.reason or fields.get("reason"),
        total_duration_ms=payload.total_ms,
        validation_duration_ms=payload.validation_ms or fields.get("validation_duration_ms", 0.0),
        apply_duration_ms=payload.apply_ms,
        completed_at=event.occurred_at,
    )


def _rejected(folding: _Folding, event: RecordedEvent, payload: OperationRejected) -> None:
    folding.fields.update(
        kind=payload.kind,
        trigger=payload.trigger,
        status=ReloadStatus.FAILED,
        success=False,
        message=payload.message,
        error_message=payload.message,
        reason=payload.reason,
        running_operation_id=payload.running_operation_id,
        source=payload.source,
        client=payload.client,
        started_at=payload.started_at or event.occurred_at,
        completed_at=event.occurred_at,
        total_duration_ms=payload.total_ms or 0.0,
    )


# Each step takes the payload of its own type (the table below pairs them); Any here, so one table
# holds them all.
_Step = Callable[[_Folding, RecordedEvent, Any], None]

# The step of each payload type; a type not here (nor a subclass of one here) changes nothing of the
# answer. Looked up once per type (an isinstance chain per event was a sixth of folding the history).
_STEPS: PayloadTable[_Step] = PayloadTable(
    {
        OperationStarted: _started,
        ConfigLoaded: _loaded,
        ConfigLoadFailed: _load_failed,
        ConfigUnchanged: _unchanged,
        ValidationPassed: _passed,
        ValidationFailed: _failed,
        ServiceNotified: _notified,
        ConfigApplied: _applied,
        OperationCompleted: _completed,
        OperationRejected: _rejected,
    }
)


def build_operation(events: Sequence[RecordedEvent], *, listed: int = DEFAULT_LISTED) -> ReloadOperation:
    """Fold one operation's events (in position order) into its ``ReloadOperation``.

    ``listed``: how many validation errors, warnings and changed paths the answer shows, each.
    """
    return operation_of(operation_fields(events, listed=listed))


def operation_of(fields: Mapping[str, Any]) -> ReloadOperation:
    """The answer made of ``operation_fields``' fields, its id formatted as text here."""
    return ReloadOperation(**{**fields, "operation_id": str(fields["operation_id"])})


def operation_fields(events: Sequence[RecordedEvent], *, listed: int = DEFAULT_LISTED) -> dict[str, Any]:
    """The fields ``build_operation`` makes its answer of (``operation_of``): what a reader that may
    never need the answer keeps instead of the events (a few dozen objects where eight events are
    hundreds), so the model is made only if it is asked for.

    The id stays the event's UUID until the answer is made: formatting it (``UUID.__str__``, Python)
    was a tenth of an operation's fields, and a rebuild makes the fields of every operation in the
    log to answer for the last few hundred."""
    if not events:
        raise ValueError("an operation has at least one event")
    folding = _Folding(
        {
            "operation_id": events[0].operation_id,
            "first_position": events[0].position,
            "last_position": events[-1].position,
            "instance_id": events[0].instance_id,
            "actor": events[0].actor,
        },
        listed,
    )
    for event in events:
        payload = event.payload
        step = _STEPS[type(payload)]
        if step is not None:
            step(folding, event, payload)
    fields = folding.fields
    fields["services_notified"] = tuple(folding.notified)
    fields["services_compensated"] = tuple(folding.compensated)
    fields["service_durations_ms"] = folding.durations
    return fields
