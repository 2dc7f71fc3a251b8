"""The event catalogue: one frozen pydantic model per event type, and the registry that reads them back.

Payload models are frozen because an event is a fact: once appended, nothing may change it, and a
mutable object handed to a projection would invite exactly that. Every type carries a ``schema_version``;
when a payload's shape changes, the version goes up and an upcaster translates the old stored form on
read, so the log never has to be rewritten (rewriting would break the hash chain).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from confledger.store.errors import EventSchemaError

__all__ = [
    "DEFAULT_REGISTRY",
    "ConfigApplied",
    "ConfigLoadFailed",
    "ConfigLoaded",
    "ConfigRolledBack",
    "ConfigUnchanged",
    "EventPayload",
    "EventRegistry",
    "FileWatchDisabled",
    "FileWatchEnabled",
    "FleetChangeKept",
    "InstanceApplied",
    "InstanceStarted",
    "InstanceStopped",
    "NewEvent",
    "OperationCompleted",
    "OperationKind",
    "OperationRejected",
    "OperationStarted",
    "OperationStatus",
    "PayloadTable",
    "RecordedEvent",
    "ServiceFailure",
    "ServiceNotified",
    "ServiceOutcome",
    "Trigger",
    "UnknownPayload",
    "ValidationFailed",
    "ValidationPassed",
]


class Trigger(StrEnum):
    MANUAL = "manual"
    API = "api"
    SIGNAL = "signal"
    FILE_WATCH = "file_watch"
    SCHEDULED = "scheduled"
    CLI = "cli"
    STARTUP = "startup"
    # The fleet threshold: too few of the fleet's instances applied a change this instance decided.
    FLEET_THRESHOLD = "fleet_threshold"


class OperationKind(StrEnum):
    RELOAD = "reload"
    ROLLBACK = "rollback"


class OperationStatus(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"


class ServiceOutcome(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


class EventPayload(BaseModel):
    """Base of every payload; subclasses set ``event_type`` and, when their shape changes, bump the version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1


class UnknownPayload(EventPayload):
    """A type this code does not know (written by a newer instance sharing the log): kept, not dropped."""

    model_config = ConfigDict(frozen=True, extra="allow")


# --- instance lifecycle -------------------------------------------------------------------------------


class InstanceStarted(EventPayload):
    event_type: ClassVar[str] = "instance.started"
    version: str
    host: str
    pid: int
    current_hash: str | None = None
    # The file this instance reloads from (None: it has none), so a reader of the log alone can say
    # what the service's source last held (``confledger status``).
    config_source: str | None = None


class InstanceStopped(EventPayload):
    event_type: ClassVar[str] = "instance.stopped"
    reason: str = "shutdown"


class ServiceFailure(BaseModel):
    """One service that did not accept a config an instance applied (its error as recorded, clipped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    outcome: ServiceOutcome
    error: str | None = None


class InstanceApplied(EventPayload):
    """What one instance did with a config the fleet decided (``config.applied`` at ``position``).

    ``role``: ``decided`` (this instance made the change, recorded with its ``config.applied``),
    ``followed`` (another instance decided it; this one saw it in the log), ``start`` (restored from
    the log as this instance started). ``outcome``: ``applied`` (every service accepted), ``failed``
    (a service refused or timed out: the instance is drifted; the fleet's desired config stays), or
    ``invalid`` (this instance's own model or validators refused the body; its services were not told).
    """

    event_type: ClassVar[str] = "instance.applied"
    hash: str
    # The config.applied it answers; None for ``decided``: the one just before it in the same append.
    position: int | None
    operation_id: str | None = None
    role: Literal["decided", "followed", "start"]
    outcome: Literal["applied", "failed", "invalid"]
    failures: tuple[ServiceFailure, ...] = ()
    errors: tuple[str, ...] = ()


# --- operations ---------------------------------------------------------------------------------------


class OperationStarted(EventPayload):
    """An operation began; ``started_at`` (v2) is when it was asked for, before any commit."""

    event_type: ClassVar[str] = "operation.started"
    schema_version: ClassVar[int] = 2
    kind: OperationKind
    trigger: Trigger
    source: str | None = None
    force: bool = False
    dry_run: bool = False
    previous_hash: str | None = None
    target_hash: str | None = None
    expected_head: int = 0
    client: str | None = None
    trace_id: str | None = None
    started_at: datetime | None = None


class ConfigLoaded(EventPayload):
    """A source was read and parsed; ``hash`` is the config hash once the model accepted it."""

    event_type: ClassVar[str] = "config.loaded"
    hash: str | None
    source: str | None
    size_bytes: int
    load_ms: float
    input_sha256: str | None = None
    format: str | None = None


class ConfigLoadFailed(EventPayload):
    event_type: ClassVar[str] = "config.load_failed"
    reason: str
    message: str
    source: str | None = None
    input_sha256: str | None = None
    size_bytes: int | None = None


class ConfigUnchanged(EventPayload):
    event_type: ClassVar[str] = "config.unchanged"
    hash: str


class ValidationPassed(EventPayload):
    event_type: ClassVar[str] = "validation.passed"
    hash: str | None = None
    warnings: tuple[str, ...] = ()
    duration_ms: float
    # Lists from user input are recorded up to a cap (``CONFLEDGER_MAX_RECORDED_ITEMS``); the rest counted.
    warnings_omitted: int = 0


class ValidationFailed(EventPayload):
    event_type: ClassVar[str] = "validation.failed"
    hash: str | None = None
    errors: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    duration_ms: float
    errors_omitted: int = 0
    warnings_omitted: int = 0


class ServiceNotified(EventPayload):
    event_type: ClassVar[str] = "service.notified"
    service: str
    priority: int
    outcome: ServiceOutcome
    duration_ms: float
    error: str | None = None
    # start: the restored config handed to a service as the instance starts (old=None), outside any
    # operation; it changes no config.
    direction: Literal["forward", "compensate", "start"] = "forward"
    config_hash: str | None = None


class ConfigApplied(EventPayload):
    event_type: ClassVar[str] = "config.applied"
    hash: str
    previous_hash: str | None
    changes: tuple[str, ...] = ()
    changes_omitted: int = 0


class ConfigRolledBack(EventPayload):
    event_type: ClassVar[str] = "config.rolled_back"
    from_hash: str | None
    to_hash: str | None
    # automatic: the service threshold (inside a reload, nothing applied); fleet_threshold: too few of the
    # fleet's instances applied a change (a rollback operation, which applies the config before it).
    reason: Literal["manual", "automatic", "fleet_threshold"]
    success_ratio: float | None = None
    threshold: float | None = None


class FleetChangeKept(EventPayload):
    """The fleet threshold kept a change: enough of the fleet's live instances applied it.

    Recorded outside any operation by the instance that judged it (the one that decided the change, or
    one standing in for it), so that every instance knows the change was judged: without it, an instance
    could not tell a change still being judged from one judged and kept. A change the threshold refused
    needs no such event: its rollback (``config.rolled_back`` reason ``fleet_threshold``) says so.
    """

    event_type: ClassVar[str] = "fleet.change_kept"
    hash: str
    operation_id: str  # the reload that made the change
    applied: int
    failed: int
    waiting: int
    threshold: float


class OperationCompleted(EventPayload):
    event_type: ClassVar[str] = "operation.completed"
    status: OperationStatus
    message: str = ""
    error_message: str | None = None
    reason: str | None = None
    total_ms: float = 0.0
    validation_ms: float = 0.0
    apply_ms: float = 0.0


class OperationRejected(EventPayload):
    """A request refused before it became an operation. ``started_at`` and ``total_ms`` (v2): when it
    was asked for and how long it was kept before the refusal (a request refused for the fleet's lock
    waited the whole lock wait; v1 recorded neither, and its answer said 0 ms)."""

    event_type: ClassVar[str] = "operation.rejected"
    schema_version: ClassVar[int] = 2
    kind: OperationKind
    trigger: Trigger
    reason: str
    message: str
    running_operation_id: str | None = None
    source: str | None = None
    client: str | None = None
    started_at: datetime | None = None
    total_ms: float | None = None


class FileWatchEnabled(EventPayload):
    event_type: ClassVar[str] = "file_watch.enabled"
    source: str | None
    poll_interval: float
    mode: Literal["inotify", "polling"] = "inotify"


class FileWatchDisabled(EventPayload):
    event_type: ClassVar[str] = "file_watch.disabled"
    source: str | None = None


class IntegrityCheckFailed(EventPayload):
    """A start-up found a stored body that is not the one its hash names: it was not applied, and the
    instance refuses writes. (A broken chain is not recorded: nothing should be chained onto it.)"""

    event_type: ClassVar[str] = "integrity.check_failed"
    reason: str
    message: str
    config_hash: str | None = None
    position: int | None = None


# --- envelopes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet appended: the log assigns position, id, time, instance and the chain hash."""

    payload: EventPayload
    actor: str = "system"
    operation_id: uuid.UUID | None = None


class RecordedEvent(BaseModel):
    """One row of ``events``, with its payload upcast to the current model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    position: int
    event_id: uuid.UUID
    occurred_at: datetime
    type: str
    schema_version: int
    operation_id: uuid.UUID | None
    instance_id: str
    actor: str
    payload: EventPayload
    prev_hash: str
    hash: str


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


_Entry = TypeVar("_Entry")


class PayloadTable(dict[type[EventPayload], _Entry | None], Generic[_Entry]):
    """The entry of ``table`` a payload type takes, as ``isinstance`` would match it: its own type's,
    else its nearest base's (by the MRO); None when no type of the table is among its bases.

    Read as ``table[payload_type]``. Looked up once per payload type and kept: a fold asks for every
    event, and ``isinstance`` on a pydantic model goes through ABCMeta (about 0.7 µs for a miss). The
    table is the dict of what was looked up, so a hit is the interpreter's own subscript, with no
    Python call: a method doing the same dict lookup cost three calls per event of a rebuild (the
    history's end check, the operation fold's step, the applied-listeners' check).
    """

    __slots__ = ("_table",)

    def __init__(self, table: Mapping[type[EventPayload], _Entry]) -> None:
        super().__init__()
        self._table = dict(table)

    def __missing__(self, payload_type: type[EventPayload]) -> _Entry | None:
        table = self._table
        entry = next((table[base] for base in payload_type.__mro__ if base in table), None)
        self[payload_type] = entry
        return entry

    # dict.get would answer None for a type not yet looked up, whatever its base's entry.
    def get(self, payload_type: type[EventPayload]) -> _Entry | None:  # type: ignore[override]
        return self[payload_type]


@dataclass
class EventRegistry:
    """Maps type names to payload models and old schema versions to upcasters."""

    models: dict[str, type[EventPayload]] = field(default_factory=dict)
    upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)

    def register(self, model: type[EventPayload]) -> type[EventPayload]:
        if not model.event_type:
            raise ValueError(f"{model.__name__} has no event_type")
        self.models[model.event_type] = model
        return model

    def register_upcaster(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        """``upcaster`` turns a version ``from_version`` payload into a ``from_version + 1`` payload."""
        self.upcasters[(event_type, from_version)] = upcaster

    def model_for(self, event_type: str) -> type[EventPayload] | None:
        return self.models.get(event_type)

    def decode(self, event_type: str, schema_version: int, data: Mapping[str, Any]) -> EventPayload:
        model = self.models.get(event_type)
        if model is None:
            return UnknownPayload.model_validate(dict(data))
        if schema_version > model.schema_version:
            raise EventSchemaError(
                f"{event_type} v{schema_version} is newer than this code understands "
                f"(v{model.schema_version}); upgrade confledger to read it",
                code="event_version_too_new",
            )
        payload = dict(data)
        for version in range(schema_version, model.schema_version):
            upcaster = self.upcasters.get((event_type, version))
            if upcaster is None:
                raise EventSchemaError(
                    f"no upcaster for {event_type} v{version} -> v{version + 1}", code="missing_upcaster"
                )
            payload = upcaster(payload)
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise _invalid_payload(event_type, exc) from exc

    def decode_json(self, event_type: str, schema_version: int, text: str | bytes) -> EventPayload:
        """``decode`` for a payload given as its stored JSON text, as the log reads rows back.

        A payload of its model's own version is parsed by pydantic straight into the model, with no dict
        in between: a fold over the whole log spent most of its time in ``json.loads`` and validating
        that dict. Any other (an older version to upcast, a newer one to refuse, an unknown type) takes
        ``decode``, which alone knows those rules.
        """
        model = self.models.get(event_type)
        if model is None or schema_version != model.schema_version:
            return self.decode(event_type, schema_version, json.loads(text))
        try:
            # The model's own validator, as model_validate_json calls it, without that call's keyword
            # handling: a fifth of the time of reading a payload back.
            payload: EventPayload = model.__pydantic_validator__.validate_json(text)
        except ValidationError as exc:
            raise _invalid_payload(event_type, exc) from exc
        return payload

    def copy(self) -> EventRegistry:
        return EventRegistry(dict(self.models), dict(self.upcasters))


def _invalid_payload(event_type: str, exc: ValidationError) -> EventSchemaError:
    return EventSchemaError(
        f"stored {event_type} payload does not match its model: {exc.error_count()} error(s)",
        code="invalid_payload",
    )


DEFAULT_REGISTRY = EventRegistry()
for _model in (
    InstanceStarted,
    InstanceStopped,
    InstanceApplied,
    OperationStarted,
    ConfigLoaded,
    ConfigLoadFailed,
    ConfigUnchanged,
    ValidationPassed,
    ValidationFailed,
    ServiceNotified,
    ConfigApplied,
    ConfigRolledBack,
    FleetChangeKept,
    OperationCompleted,
    OperationRejected,
    FileWatchEnabled,
    FileWatchDisabled,
    IntegrityCheckFailed,
):
    DEFAULT_REGISTRY.register(_model)

# v1 had no started_at: such an operation's start is its event's commit time, which readers fall back to.
DEFAULT_REGISTRY.register_upcaster(OperationStarted.event_type, 1, dict)
DEFAULT_REGISTRY.register_upcaster(OperationRejected.event_type, 1, dict)
