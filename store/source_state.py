"""What the service's config source held when last read, beside what is applied, and why they differ.

After a rollback the file still holds the config rolled back away from; after a failed reload it holds
something that was refused. ``describe_source`` says so, from the last reload that read the source (a
``ReloadOperation``) and the rollback pins: ``differs_from_applied`` and a ``reason`` (``rolled_back_hash``,
the refused reload's reason, ``dry_run``, or ``superseded`` when a later operation applied another
config). Both come from the log, so a restart, or the CLI reading the log alone, says the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from confledger.store.events import OperationKind, OperationStarted
from confledger.store.log import EventLog
from confledger.store.outcome import ReloadOperation, build_operation
from confledger.store.pins import PINNED_REASON, RollbackPins

__all__ = ["SourceState", "describe_source", "last_read"]

# How many operation starts a restart looks back through for the last read of its source: reloads of
# other files (a client's config_source) are the only ones skipped, so the read is found in the first few.
_SCAN = 1000
_BATCH = 50


@dataclass(frozen=True, slots=True)
class SourceState:
    source: str
    hash: str | None  # None: the source could not be loaded or the model refused it
    read_at: datetime | None
    operation_id: str
    differs_from_applied: bool
    reason: str | None
    rolled_back_at: datetime | None = None
    rolled_back_by: str | None = None


def last_read(log: EventLog, source: str | None, *, scan: int = _SCAN) -> ReloadOperation | None:
    """The newest reload that read ``source`` among the last ``scan`` operations (blocking)."""
    if source is None:
        return None
    before: int | None = None
    while scan > 0:
        size = min(_BATCH, scan)
        starts = log.read_reverse(before, size, types=[OperationStarted.event_type])
        for start in starts:
            payload = start.payload
            if (
                isinstance(payload, OperationStarted)
                and payload.kind is OperationKind.RELOAD
                and payload.source == source
                and start.operation_id is not None
            ):
                return build_operation(log.read_operation(start.operation_id))
        if len(starts) < size:
            return None  # the log holds no more operations
        scan -= size
        before = starts[-1].position
    return None


def describe_source(
    source: str | None, read: ReloadOperation | None, applied_hash: str | None, pins: RollbackPins
) -> SourceState | None:
    """The state of ``source`` as ``read`` found it, against ``applied_hash`` (None: never read)."""
    if source is None or read is None:
        return None
    loaded = read.new_config_hash
    state = SourceState(
        source=source,
        hash=loaded,
        read_at=read.started_at,
        operation_id=read.operation_id,
        differs_from_applied=loaded is None or loaded != applied_hash,
        reason=None,
    )
    if not state.differs_from_applied:
        return state
    pin = pins.get(loaded)
    if pin is not None:
        return replace(state, reason=PINNED_REASON, rolled_back_at=pin.at, rolled_back_by=pin.actor)
    if not read.success:
        reason = read.reason or read.status.value
    elif read.dry_run:
        reason = "dry_run"
    else:
        reason = "superseded"  # applied when read; another operation has applied something else since
    return replace(state, reason=reason)
