"""Request and response bodies of the HTTP API (shapes follow the seed's documented JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from confledger.store.events import RecordedEvent
from confledger.store.log import StoredConfig, VerifyReport
from confledger.store.outcome import ReloadOperation, ReloadStatus
from confledger.store.secrets import redact
from confledger.store.source_state import SourceState

if TYPE_CHECKING:
    from confledger.api.fleet_judge import Judging

__all__ = [
    "MAX_POSITION",
    "BackupEntry",
    "BackupsResponse",
    "CurrentResponse",
    "DiffResponse",
    "ErrorResponse",
    "EventOut",
    "EventsResponse",
    "FileWatchDisabledResponse",
    "FileWatchEnabledResponse",
    "HistoryResponse",
    "InvalidField",
    "OperationDetail",
    "OperationOut",
    "RefusedOperationOut",
    "ReloadRequest",
    "RollbackRequest",
    "SourceStateOut",
    "StatusResponse",
    "TimelineResponse",
    "ValidationErrorResponse",
    "VerifyResponse",
    "VersionResponse",
    "history_json",
    "operation_json",
    "short",
]

SHORT = 16
# Positions are BIGINT in both backends: a larger cursor from a client is refused (422), not a 500.
MAX_POSITION = 2**63 - 1


def short(full_hash: str | None) -> str | None:
    """Hashes are shown as their first 16 hex digits, as the seed showed them."""
    return None if full_hash is None else full_hash[:SHORT]


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detail: str
    code: str = Field(description="stable reason code to branch on (the detail's wording may change)")
    running_operation_id: str | None = None
    operation_id: str | None = Field(None, description="the operation this refused request recorded, if any")


class InvalidField(BaseModel):
    type: str = Field(description="what was wrong, as pydantic names it")
    loc: list[str | int] = Field(description="where: the request part, then the field's path")
    msg: str


class ValidationErrorResponse(BaseModel):
    """A request that does not fit the schema (422): what was wrong where, never the input back."""

    detail: list[InvalidField] = Field(description="at most 20, each part bounded")
    code: Literal["invalid_request"]


class ReloadRequest(BaseModel):
    # Strict: a body that says "yes" or 1 for force is a client's mistake; lax mode would quietly read
    # it as true and force a reload the caller may not have meant. The OpenAPI schema says boolean.
    model_config = ConfigDict(extra="forbid", strict=True)

    force: bool = False
    config_source: str | None = Field(None, max_length=4096)
    dry_run: bool = False


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    target_hash: str | None = Field(None, max_length=64)


class OperationOut(BaseModel):
    """The seed's reload/rollback response."""

    operation_id: str
    kind: str
    trigger: str
    status: str
    success: bool
    message: str
    error_message: str | None
    reason: str | None
    actor: str
    dry_run: bool
    started_at: datetime | None = Field(description="when the request was received")
    completed_at: datetime | None = Field(description="when the outcome was recorded")
    total_duration_ms: float = Field(
        description="from the request's receipt (over HTTP: once its body had arrived) to its outcome "
        "ready to be recorded; the outcome's own commit comes after"
    )
    validation_duration_ms: float
    apply_duration_ms: float
    previous_config_hash: str | None
    new_config_hash: str | None
    changes_applied: list[str]
    services_notified: list[str]
    services_compensated: list[str]
    validation_errors: list[str]
    validation_warnings: list[str]
    trace_id: str | None = None
    first_position: int | None = Field(
        None,
        description="where the operation starts in the log: pass as `before` for the operations older than "
        "it; null while nothing of it is in the log yet",
    )

    @classmethod
    def of(cls, operation: ReloadOperation) -> OperationOut:
        return cls(
            operation_id=operation.operation_id,
            kind=operation.kind.value,
            trigger=operation.trigger.value,
            status=operation.status.value,
            success=operation.success,
            message=operation.message,
            error_message=operation.error_message,
            reason=operation.reason,
            actor=operation.actor,
            dry_run=operation.dry_run,
            started_at=operation.started_at,
            completed_at=operation.completed_at,
            total_duration_ms=round(operation.total_duration_ms, 3),
            validation_duration_ms=round(operation.validation_duration_ms, 3),
            apply_duration_ms=round(operation.apply_duration_ms, 3),
            previous_config_hash=short(operation.previous_config_hash),
            new_config_hash=short(operation.new_config_hash),
            changes_applied=list(operation.changes_applied),
            services_notified=list(operation.services_notified),
            services_compensated=list(operation.services_compensated),
            validation_errors=list(operation.validation_errors),
            validation_warnings=list(operation.validation_warnings),
            trace_id=operation.trace_id,
            first_position=operation.first_position or None,
        )


# Finished operations already rendered, by (id, last position): history pages show the same ones over
# and over, and building and encoding one is most of what a page costs (a page of 20 is 20 lookups and a
# join, where the whole model took 0.07 ms to dump). Bounded: about four history windows.
_FINISHED_RENDERED: dict[tuple[str, int], bytes] = {}
_FINISHED_RENDERED_MAX = 2048
_FINISHED = frozenset(
    {ReloadStatus.SUCCESS, ReloadStatus.FAILED, ReloadStatus.ROLLED_BACK, ReloadStatus.INTERRUPTED}
)


def operation_json(operation: ReloadOperation) -> bytes:
    """``OperationOut.of(operation)`` as JSON, kept once the operation has finished (an operation's
    events end with its last position, so the same id and last position always render the same).
    Event-loop only."""
    key = (operation.operation_id, operation.last_position)
    shown = _FINISHED_RENDERED.get(key)
    if shown is None:
        shown = OperationOut.of(operation).model_dump_json().encode()
        if operation.status in _FINISHED:
            if len(_FINISHED_RENDERED) >= _FINISHED_RENDERED_MAX:
                del _FINISHED_RENDERED[next(iter(_FINISHED_RENDERED))]
            _FINISHED_RENDERED[key] = shown
    return shown


class HistoryResponse(BaseModel):
    operations: list[OperationOut]
    total_count: int
    limit: int
    next_before: int | None = Field(None, description="pass as `before` to read the next (older) page")


def history_json(
    operations: Sequence[ReloadOperation], *, total_count: int, limit: int, next_before: int | None
) -> bytes:
    """The page ``HistoryResponse`` describes, as its ``model_dump_json`` writes it: the model writes the
    envelope around an empty list (1.6 us), and each operation's JSON as ``operation_json`` keeps it is
    set into that list, so only an operation not shown before is built and encoded."""
    envelope = HistoryResponse(
        operations=[], total_count=total_count, limit=limit, next_before=next_before
    ).model_dump_json()
    members = b",".join(operation_json(operation) for operation in operations)
    # The list is the model's first field and the others are numbers: its text occurs once, first.
    return envelope.encode().replace(_EMPTY_OPERATIONS, b'"operations":[' + members + b"]", 1)


_EMPTY_OPERATIONS = b'"operations":[]'


class BackupEntry(BaseModel):
    hash: str
    full_hash: str
    created_at: datetime
    actor: str
    trigger: str
    operation_id: str | None


class BackupsResponse(BaseModel):
    backups: list[BackupEntry]
    backup_count: int = Field(description="how many backups are listed")
    max_backups: int = Field(description="how many the service keeps (CONFLEDGER_BACKUP_COUNT)")
    current_config_hash: str | None

    @classmethod
    def of(cls, entries: list[dict[str, Any]], max_backups: int, current_hash: str | None) -> BackupsResponse:
        """From the backups projection's entries (full hashes, ISO times)."""
        return cls(
            backups=[
                BackupEntry(
                    hash=entry["hash"][:SHORT],
                    full_hash=entry["hash"],
                    created_at=datetime.fromisoformat(entry["applied_at"]),
                    actor=entry["actor"],
                    trigger=entry["trigger"],
                    operation_id=entry["operation_id"],
                )
                for entry in entries
            ],
            backup_count=len(entries),
            max_backups=max_backups,
            current_config_hash=short(current_hash),
        )


class ReloadStatistics(BaseModel):
    total_operations: int
    success_rate: float
    average_duration_ms: float


class SourceStateOut(BaseModel):
    """The configured source as its last reload read it, against the applied config."""

    source: str
    hash: str | None = Field(description="what the source held when read (None: it could not be loaded)")
    read_at: datetime | None
    operation_id: str = Field(description="the reload that read it")
    differs_from_applied: bool
    reason: str | None = Field(
        description="why it differs: rolled_back_hash (a reload will not apply it again without force), "
        "the refused reload's reason, dry_run, or superseded (a later operation applied another config)"
    )
    rolled_back_at: datetime | None = None
    rolled_back_by: str | None = None

    @classmethod
    def of(cls, state: SourceState | None) -> SourceStateOut | None:
        if state is None:
            return None
        return cls(
            source=state.source,
            hash=short(state.hash),
            read_at=state.read_at,
            operation_id=state.operation_id,
            differs_from_applied=state.differs_from_applied,
            reason=state.reason,
            rolled_back_at=state.rolled_back_at,
            rolled_back_by=state.rolled_back_by,
        )


class FleetJudgingOut(BaseModel):
    config_hash: str
    applied: int = Field(description="live instances whose every service took the change")
    failed: int = Field(description="live instances that refused it (drifted)")
    waiting: int = Field(description="live instances that have not answered yet")
    until: datetime = Field(description="when an instance that has not answered counts as not applied")

    @classmethod
    def of(cls, judging: Judging) -> FleetJudgingOut:
        answers = judging.answers
        return cls(
            config_hash=short(answers.hash) or "",
            applied=answers.applied,
            failed=answers.failed,
            waiting=answers.waiting,
            until=judging.until,
        )


class FleetThresholdOut(BaseModel):
    threshold: float = Field(description="the share of live instances that must apply a change")
    answer_wait_s: float
    judging: list[FleetJudgingOut] = Field(
        description="changes this instance decided whose answers are still coming in"
    )


class StatusResponse(BaseModel):
    config_reloader_enabled: bool
    current_config_hash: str | None
    registered_listeners: int
    listeners: list[str]
    available_backups: int
    file_watching_enabled: bool
    signal_handler_enabled: bool
    reload_statistics: ReloadStatistics
    instance_id: str
    log_head: int = Field(
        description="the last log position this instance has folded into its projections: its own appends "
        "at once, other instances' as its follower reaches them (GET /events reads the log's own head)"
    )
    running_operation_id: str | None
    service_drift: dict[str, str]
    source_state: SourceStateOut | None = Field(
        None, description="the config source as last read, and why it differs from the applied config"
    )
    fleet_threshold: FleetThresholdOut | None = Field(
        None, description="the fleet threshold (fleet_rollback_threshold) and what it is judging; null: off"
    )


class FileWatchEnabledResponse(BaseModel):
    file_watching_enabled: bool
    poll_interval_seconds: float
    config_source: str | None
    message: str
    mode: str


class FileWatchDisabledResponse(BaseModel):
    file_watching_enabled: bool
    message: str


class CurrentResponse(BaseModel):
    hash: str
    full_hash: str
    applied_at: datetime
    config: dict[str, Any]


class VersionResponse(BaseModel):
    hash: str
    full_hash: str
    size_bytes: int
    created_at: datetime
    first_position: int | None
    applied: bool
    config: dict[str, Any]

    @classmethod
    def of(cls, stored: StoredConfig, *, applied: bool) -> VersionResponse:
        """A stored config as shown: sealed values and secret-looking keys as ``**********``, no key needed."""
        return cls(
            hash=stored.hash[:SHORT],
            full_hash=stored.hash,
            size_bytes=stored.size_bytes,
            created_at=stored.created_at,
            first_position=stored.first_position,
            applied=applied,
            config=redact(stored.body, stored.secret_paths),
        )


class ChangeOut(BaseModel):
    path: str
    kind: str
    old: Any = None
    new: Any = None


class DiffResponse(BaseModel):
    from_hash: str
    to_hash: str
    changes: list[ChangeOut]


class EventOut(BaseModel):
    position: int
    event_id: str
    occurred_at: datetime
    type: str
    schema_version: int
    operation_id: str | None
    instance_id: str
    actor: str
    payload: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, event: RecordedEvent) -> EventOut:
        return cls(
            position=event.position,
            event_id=str(event.event_id),
            occurred_at=event.occurred_at,
            type=event.type,
            schema_version=event.schema_version,
            operation_id=None if event.operation_id is None else str(event.operation_id),
            instance_id=event.instance_id,
            actor=event.actor,
            payload=event.payload.model_dump(mode="json"),
            hash=event.hash,
        )


class EventsResponse(BaseModel):
    events: list[EventOut]
    next_after: int
    head: int


class RefusedOperationOut(OperationOut):
    """A rollback that failed, answered with a 4xx: the operation as recorded (the seed's shape), with the
    ``detail`` and ``code`` every error answer carries."""

    detail: str
    code: str = Field(description="the operation's reason: a stable code to branch on")

    @classmethod
    def refused(cls, operation: ReloadOperation) -> RefusedOperationOut:
        shown = OperationOut.of(operation).model_dump()
        detail = operation.error_message or operation.message
        return cls(**shown, detail=detail, code=operation.reason or "operation_failed")


class OperationDetail(BaseModel):
    operation: OperationOut
    events: list[EventOut]


class VerifyResponse(BaseModel):
    ok: bool
    checked: int
    head: int
    first_broken_position: int | None
    reason: str | None
    # The failed check's reason code (link_mismatch, truncated, checkpoint_mac, anchor_mismatch,
    # config_body_mismatch, …) and, for a body, the config it concerns.
    code: str | None = None
    config_hash: str | None = None
    # Whether the log's end was checked against an anchor file (without one, events cut off the end
    # would go unseen). Where that file is stays on the server: the CLI names it.
    anchor_checked: bool = False

    @classmethod
    def of(cls, report: VerifyReport) -> VerifyResponse:
        return cls(
            ok=report.ok,
            checked=report.checked,
            head=report.head,
            first_broken_position=report.first_broken_position,
            reason=report.reason,
            code=report.code,
            config_hash=report.config_hash,
            anchor_checked=report.anchor_checked is not None,
        )


class TimelineResponse(BaseModel):
    since: datetime | None
    until: datetime | None
    operations: list[OperationOut]
    lifecycle: list[dict[str, Any]]
    config_changes: list[dict[str, Any]]
    truncated: bool = Field(
        False,
        description="the window holds more events than one answer is made from: its newest are given; "
        "narrow it with since and until",
    )


class FleetServiceFailure(BaseModel):
    service: str
    outcome: str
    error: str | None = None


class FleetInstance(BaseModel):
    instance_id: str
    applied_hash: str | None = Field(
        description="the config this instance last answered for; with outcome invalid its own model refused "
        "it, no service was given it, and the instance runs the config before (its /current)"
    )
    state: str = Field(description="in_sync, lagging, drifted or gone")
    outcome: str | None = Field(description="applied, failed or invalid: its answer to applied_hash")
    role: str | None = Field(description="decided, followed or start: how it came to apply it")
    lag_positions: int = Field(
        description="how far in the log the config it last applied lies behind the desired one (0 in sync)"
    )
    last_seen: datetime = Field(description="its last heartbeat or event, whichever is newer")
    followed_position: int | None = Field(
        description="the log position its follower had reached at its last heartbeat"
    )
    host: str | None
    pid: int | None
    version: str | None
    failures: list[FleetServiceFailure] = Field(description="the services that did not accept applied_hash")
    errors: list[str] = Field(description="why its own validation refused applied_hash (outcome invalid)")


class FleetKeptOut(BaseModel):
    """The fleet threshold's answers when it kept the desired change (``fleet.change_kept``)."""

    applied: int
    failed: int
    waiting: int
    threshold: float


class FleetResponse(BaseModel):
    desired_hash: str | None = Field(description="the fleet's config: the newest config.applied")
    desired_position: int
    desired_operation_id: str | None = Field(None, description="the operation that applied it")
    desired_decided_by: str | None = Field(None, description="the instance that recorded that operation")
    desired_kind: str | None = Field(None, description="reload or rollback: how it came to be desired")
    fleet_threshold_kept: FleetKeptOut | None = Field(
        None,
        description="the fleet threshold judged the change and kept it, with the answers it counted; null: "
        "not judged (the threshold is off, or the answers are still coming in)",
    )
    log_head: int
    instances: list[FleetInstance]
    gone_hidden: int = Field(
        0,
        description="instances gone longer than CONFLEDGER_FLEET_GONE_SHOWN_FOR, not listed (?all=true lists "
        "them)",
    )

    @classmethod
    def of(cls, view: dict[str, Any]) -> FleetResponse:
        instances = [
            FleetInstance.model_validate({**instance, "applied_hash": short(instance["applied_hash"])})
            for instance in view["instances"]
        ]
        change = view.get("desired_change")
        kept = (
            None
            if change is None or change.kept is None
            else FleetKeptOut.model_validate(change.kept, from_attributes=True)
        )
        return cls(
            desired_hash=short(view["desired_hash"]),
            desired_position=view["desired_position"],
            desired_operation_id=None if change is None else change.operation_id,
            desired_decided_by=None if change is None else change.decided_by,
            desired_kind=None if change is None else change.kind,
            fleet_threshold_kept=kept,
            log_head=view["log_head"],
            instances=instances,
            gone_hidden=view["gone_hidden"],
        )
