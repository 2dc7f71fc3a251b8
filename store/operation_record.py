"""One operation while it runs: its request, what it started from, and the events it records.

``OperationRunner`` (``store.operations``) keeps one ``Operation`` per reload or rollback: the events
still to append (``pending``, with the bodies to store beside them) and those the log has recorded,
from which the caller's answer is folded.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from opentelemetry import trace

from confledger.store.decision import FleetVerdict
from confledger.store.durations import elapsed_ms
from confledger.store.errors import SecretKeyError
from confledger.store.events import (
    EventPayload,
    NewEvent,
    OperationCompleted,
    OperationKind,
    OperationStarted,
    OperationStatus,
    RecordedEvent,
    ServiceFailure,
    ServiceNotified,
    Trigger,
)
from confledger.store.log import PreparedConfig
from confledger.store.outcome import ReloadOperation
from confledger.store.secrets import ConfigPath
from confledger.store.services import NotifyResult
from confledger.store.sources import LoadedSource
from confledger.store.sources.reading import SourceGuard
from confledger.store.validation import ModelResult, values_at

__all__ = [
    "ActiveConfig",
    "Candidate",
    "Change",
    "Ended",
    "Operation",
    "Request",
    "arrival",
    "closings_of_interrupted",
    "default_actor",
    "failures_of",
    "finish",
    "notified",
    "owner_is_gone",
    "trace_id_of",
]

logger = logging.getLogger("confledger.store.operations")


@dataclass(frozen=True, slots=True)
class ActiveConfig:
    """The config this instance runs: what callbacks get as ``old`` and what a reload is compared with."""

    hash: str
    config: Any
    body: dict[str, Any]
    secret_paths: frozenset[ConfigPath]

    def secret_values(self) -> list[str]:
        return values_at(self.body, self.secret_paths)


def default_actor(trigger: Trigger) -> str:
    """Who caused an operation when the caller names nobody."""
    if trigger is Trigger.SIGNAL:
        return "signal"
    if trigger is Trigger.FILE_WATCH:
        return "file_watch"
    return "system"


@dataclass(frozen=True, slots=True)
class Request:
    kind: OperationKind
    trigger: Trigger
    actor: str
    client: str | None
    trace_id: str | None
    source: str | None = None  # reload: the file to read
    guard: SourceGuard | None = None  # reload of a client-named file: where the opened file must lie
    force: bool = False
    dry_run: bool = False
    target: str | None = None  # rollback: a hash or prefix; None for the previous config
    # A rollback the fleet threshold asked for: recorded with reason fleet_threshold, and made only while
    # the fleet's config is still the change judged (another may have come since the verdict).
    fleet_verdict: FleetVerdict | None = None
    # When it was asked for: an operation's total time counts from here, so the wait for the fleet's
    # turn and the catch-up before it are inside total_duration_ms, as they are inside a caller's wait.
    # Over HTTP that is when the config API had the whole request (``api.limits.arrived``, through
    # ``arrival``): its JSON check, parse and token dependency are waited through by the caller too.
    received: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def arrival(received: float | None) -> tuple[float, datetime]:
    """``Request``'s ``received`` and ``received_at`` for a request that arrived at ``received`` (a
    ``time.perf_counter()`` reading; None: now)."""
    now = time.perf_counter()
    # Never later than now: a caller's reading from the future would make a negative duration.
    received = now if received is None else min(received, now)
    # The wall-clock moment placed by the monotonic interval since.
    return received, datetime.now(UTC) - timedelta(seconds=now - received)


@dataclass
class Operation:
    """One running operation: what it started from, and its events, recorded and still to record."""

    id: uuid.UUID
    request: Request
    trace_id: str | None
    previous: ActiveConfig | None
    expected_head: int
    validation_ms: float = 0.0
    pending: list[EventPayload] = field(default_factory=list)
    configs: list[PreparedConfig] = field(default_factory=list)
    recorded: list[RecordedEvent] = field(default_factory=list)

    def started_event(self, **own: Any) -> OperationStarted:
        """``operation.started`` with what every kind records; ``own`` adds what only this kind knows
        (a reload's source and flags, a rollback's target)."""
        request, previous = self.request, self.previous
        return OperationStarted(
            kind=request.kind,
            trigger=request.trigger,
            previous_hash=None if previous is None else previous.hash,
            expected_head=self.expected_head,
            client=request.client,
            trace_id=self.trace_id,
            # Wall-clock start: the event's own occurred_at is the commit's time, which for an operation
            # written in one transaction is also its completion's.
            started_at=self.request.received_at,
            **own,
        )

    @property
    def noun(self) -> str:
        return "Rollback" if self.request.kind is OperationKind.ROLLBACK else "Configuration"

    def completed(
        self,
        status: OperationStatus,
        message: str,
        *,
        error: str | None = None,
        reason: str | None = None,
        apply_ms: float = 0.0,
    ) -> OperationCompleted:
        return OperationCompleted(
            status=status,
            message=message,
            error_message=error,
            reason=reason,
            total_ms=elapsed_ms(self.request.received),
            validation_ms=self.validation_ms,
            apply_ms=apply_ms,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A source as read: its bytes' facts, the model's verdict, and its body sealed for storage."""

    loaded: LoadedSource
    model: ModelResult
    sealed: PreparedConfig | None = None
    seal_error: SecretKeyError | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A validated config that differs from the current one: what the services are told about."""

    active: ActiveConfig
    changes: tuple[str, ...]  # the first of them, up to the recorded cap
    changes_omitted: int = 0


class Ended(Exception):
    """The operation ends before any service hears of it; ``events`` say why, the last completes it."""

    def __init__(self, *events: EventPayload) -> None:
        super().__init__()
        self.events = events


def trace_id_of(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def notified(
    result: NotifyResult, direction: Literal["forward", "compensate", "start"], config_hash: str
) -> ServiceNotified:
    return ServiceNotified(
        service=result.service,
        priority=result.priority,
        outcome=result.outcome,
        duration_ms=result.duration_ms,
        error=result.error,
        direction=direction,
        config_hash=config_hash,
    )


# A service's error as kept in instance.applied (the full text is in its service.notified event).
_FAILURE_ERROR_CHARS = 200


def failures_of(results: Sequence[NotifyResult]) -> tuple[ServiceFailure, ...]:
    """The services that did not accept, as ``instance.applied`` lists them."""
    return tuple(
        ServiceFailure(
            service=result.service,
            outcome=result.outcome,
            error=None if result.error is None else result.error[:_FAILURE_ERROR_CHARS],
        )
        for result in results
        if not result.accepted
    )


def finish(span: trace.Span, result: ReloadOperation) -> None:
    """Close an operation: span attributes and status, and its one structured log line."""
    attributes = {"confledger.operation_id": result.operation_id, "confledger.status": result.status.value}
    if result.previous_config_hash:
        attributes["confledger.previous_hash"] = result.previous_config_hash
    if result.new_config_hash:
        attributes["confledger.new_hash"] = result.new_config_hash
    span.set_attributes(attributes)
    if not result.success:
        span.set_status(trace.Status(trace.StatusCode.ERROR, result.reason or result.status.value))
    level = logging.INFO if result.success else logging.WARNING
    # The reason code beside the status, so a failure in the text log names what to look for.
    outcome = result.status.value if result.reason is None else f"{result.status.value} ({result.reason})"
    logger.log(
        level,
        "%s %s %s: %s (%.1f ms)",
        result.kind.value,
        result.operation_id,
        outcome,
        result.message,
        result.total_duration_ms,
        extra={
            "confledger": {
                "operation_id": result.operation_id,
                "trace_id": result.trace_id,
                "kind": result.kind.value,
                "trigger": result.trigger.value,
                "actor": result.actor,
                "status": result.status.value,
                "reason": result.reason,
                "previous_hash": result.previous_config_hash,
                "new_hash": result.new_config_hash,
                "total_ms": round(result.total_duration_ms, 3),
                "validation_ms": round(result.validation_duration_ms, 3),
                "apply_ms": round(result.apply_duration_ms, 3),
                "services": list(result.services_notified),
            }
        },
    )


_WORKER_SUFFIX = re.compile(r"/w[0-9]+$")


def owner_is_gone(instance_id: str, own_instance_id: str) -> bool:
    """Whether the instance that started an open operation can no longer complete it.

    Our own id means we restarted. For the default ``host:pid`` form on this host, a dead pid means the
    process is gone. An operation of a live process or another host is left alone: it may be running.
    A worker of ``confledger serve --workers`` is ``host:pid/w<index>`` with its supervisor's pid: a
    worker started again has its old id (the first rule), and a dead supervisor took its workers along.
    """
    if instance_id == own_instance_id:
        return True
    host, _, pid_text = _WORKER_SUFFIX.sub("", instance_id).rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def closings_of_interrupted(open_operations: list[RecordedEvent], own_instance_id: str) -> list[NewEvent]:
    """``operation.completed(interrupted)`` for each open operation whose writer is provably gone."""
    return [
        NewEvent(
            OperationCompleted(
                status=OperationStatus.INTERRUPTED,
                message="Operation was interrupted (its process stopped before it completed)",
                error_message="interrupted",
                reason="interrupted",
            ),
            actor="system",
            operation_id=started.operation_id,
        )
        for started in open_operations
        if owner_is_gone(started.instance_id, own_instance_id)
    ]
