"""One operation while it runs: its request, what it started from, and the events it records.

``OperationRunner`` (``store.operations``) keeps one ``Operation`` per reload or rollback: the events
still to append (``pending``, with the bodies to store beside them) and those the log has recorded,
from which the caller's answer is folded.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from confledger.store.errors import SecretKeyError
from confledger.store.events import (
    EventPayload,
    OperationCompleted,
    OperationKind,
    OperationStatus,
    RecordedEvent,
    ServiceNotified,
    Trigger,
)
from confledger.store.log import PreparedConfig
from confledger.store.secrets import ConfigPath
from confledger.store.services import NotifyResult
from confledger.store.sources import LoadedSource
from confledger.store.validation import ModelResult, values_at

__all__ = ["ActiveConfig", "Candidate", "Change", "Ended", "Operation", "Request", "notified", "trace_id_of"]


@dataclass(frozen=True, slots=True)
class ActiveConfig:
    """The config this instance runs: what callbacks get as ``old`` and what a reload is compared with."""

    hash: str
    config: Any
    body: dict[str, Any]
    secret_paths: frozenset[ConfigPath]

    def secret_values(self) -> list[str]:
        return values_at(self.body, self.secret_paths)


@dataclass(frozen=True, slots=True)
class Request:
    kind: OperationKind
    trigger: Trigger
    actor: str
    client: str | None
    trace_id: str | None
    source: str | None = None  # reload: the file to read
    force: bool = False
    dry_run: bool = False
    target: str | None = None  # rollback: a hash or prefix; None for the previous config


@dataclass
class Operation:
    """One running operation: what it started from, and its events, recorded and still to record."""

    id: uuid.UUID
    request: Request
    trace_id: str | None
    previous: ActiveConfig | None
    expected_head: int
    started: float = field(default_factory=time.perf_counter)
    validation_ms: float = 0.0
    pending: list[EventPayload] = field(default_factory=list)
    configs: list[PreparedConfig] = field(default_factory=list)
    recorded: list[RecordedEvent] = field(default_factory=list)

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
            total_ms=(time.perf_counter() - self.started) * 1000,
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
    changes: tuple[str, ...]


class Ended(Exception):
    """The operation ends before any service hears of it; ``events`` say why, the last completes it."""

    def __init__(self, *events: EventPayload) -> None:
        super().__init__()
        self.events = events


def trace_id_of(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def notified(result: NotifyResult, direction: str, config_hash: str) -> ServiceNotified:
    return ServiceNotified(
        service=result.service,
        priority=result.priority,
        outcome=result.outcome,
        duration_ms=result.duration_ms,
        error=result.error,
        direction="forward" if direction == "forward" else "compensate",
        config_hash=config_hash,
    )
