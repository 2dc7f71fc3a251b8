"""The operations open in the log: ``operation.started`` events with no ``operation.completed``.

``EventLog.open_operations`` answers from here. The set is a fold of the log with a checkpoint of its
own (``store.open_operations``), like a projection's, so start-up does not pass over every operation
ever run; it is kept apart from ``store.log``, which reads and writes events and folds nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from confledger.store.checkpoints import Checkpoint, load_checkpoint
from confledger.store.events import EventRegistry, RecordedEvent
from confledger.store.queries import decode_event, select_events
from confledger.store.schema import events

__all__ = ["read_open_operations"]

# The open-operations fold is checkpointed once the tail it had to read holds this many lifecycle events.
_OPEN_OPERATIONS = "store.open_operations"
_OPEN_OPERATIONS_VERSION = 1
_OPEN_OPERATIONS_REFOLD = 256
_LIFECYCLE = ("operation.started", "operation.completed")


def read_open_operations(
    connection: Connection, registry: EventRegistry
) -> tuple[list[RecordedEvent], Checkpoint | None]:
    """The ``operation.started`` of each operation open in ``connection``'s snapshot (payloads decoded by
    ``registry``), and the checkpoint to save when the tail after the last one was long (else None).

    Only the started/completed events after the checkpoint are read; without a usable checkpoint (none,
    another version, a state it cannot read) the fold starts from position 0.
    """
    after, open_at = _open_operations_at(load_checkpoint(connection, _OPEN_OPERATIONS))
    tail = connection.execute(
        sa.select(events.c.position, events.c.type, events.c.operation_id)
        .where(events.c.type.in_(_LIFECYCLE), events.c.position > after)
        .order_by(events.c.position)
    ).all()
    for position, event_type, operation_id in tail:
        if operation_id is None:
            continue
        if event_type == "operation.started":
            open_at[str(operation_id)] = int(position)
        else:
            open_at.pop(str(operation_id), None)
    found = (
        [
            decode_event(registry, row)
            for row in connection.execute(
                select_events()
                .where(events.c.position.in_(sorted(open_at.values())))
                .order_by(events.c.position)
            )
        ]
        if open_at
        else []
    )
    if len(tail) < _OPEN_OPERATIONS_REFOLD:
        return found, None
    checkpoint = Checkpoint(
        name=_OPEN_OPERATIONS,
        version=_OPEN_OPERATIONS_VERSION,
        position=int(tail[-1].position),
        state={"open": open_at},
    )
    return found, checkpoint


def _open_operations_at(checkpoint: Checkpoint | None) -> tuple[int, dict[str, int]]:
    """The position the open-operations checkpoint was folded to, and the operations open there (by id,
    with the position of each one's start); ``(0, {})`` when there is none it can read."""
    if checkpoint is None or checkpoint.version != _OPEN_OPERATIONS_VERSION:
        return 0, {}
    state = checkpoint.state
    opened = state.get("open") if isinstance(state, dict) else None
    if not isinstance(opened, dict) or not all(type(value) is int for value in opened.values()):
        return 0, {}
    return checkpoint.position, {str(key): value for key, value in opened.items()}
