"""``EventLog.open_operations`` folds from a cached checkpoint (``store.open_operations``) instead of
scanning every operation: with open operations before and after the checkpoint it returns what a fold
from position 0 returns, and a checkpoint it cannot read is a cache miss, not an error."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from confledger.store import Checkpoint, EventLog, NewEvent, OperationKind, Trigger
from confledger.store.events import OperationCompleted, OperationStarted, OperationStatus
from confledger.store.schema import projection_checkpoints


def _start(operation_id: uuid.UUID) -> NewEvent:
    return NewEvent(
        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.MANUAL), operation_id=operation_id
    )


def _complete(operation_id: uuid.UUID) -> NewEvent:
    return NewEvent(OperationCompleted(status=OperationStatus.SUCCESS), operation_id=operation_id)


def _open_from_zero(log: EventLog) -> list[int]:
    """The plain fold over the whole log, as the reference."""
    open_at: dict[uuid.UUID, int] = {}
    for event in log.read():
        if event.operation_id is None:
            continue
        if event.type == "operation.started":
            open_at[event.operation_id] = event.position
        elif event.type == "operation.completed":
            open_at.pop(event.operation_id, None)
    return sorted(open_at.values())


def test_open_operations_from_a_checkpoint_equal_the_fold_from_zero(log: EventLog) -> None:
    ids = [uuid.uuid4() for _ in range(400)]
    left_open = {ids[3], ids[150], ids[399]}
    # 400 operations in one batch: enough lifecycle events for open_operations to checkpoint its fold.
    batch: list[NewEvent] = []
    for operation_id in ids:
        batch.append(_start(operation_id))
        if operation_id not in left_open:
            batch.append(_complete(operation_id))
    log.append(batch)
    assert [e.position for e in log.open_operations()] == _open_from_zero(log)
    checkpoint = log.load_checkpoint("store.open_operations")
    assert checkpoint is not None
    assert checkpoint.position == log.head()

    # After the checkpoint: one open operation completes, new ones start, one of them completes.
    later = [uuid.uuid4() for _ in range(3)]
    log.append([_complete(ids[150]), _start(later[0]), _start(later[1])])
    log.append([_complete(later[0]), _start(later[2])])
    found = log.open_operations()
    assert [e.position for e in found] == _open_from_zero(log)
    assert {e.operation_id for e in found} == {ids[3], ids[399], later[1], later[2]}
    assert all(e.type == "operation.started" for e in found)

    # Without the cached fold the answer is the same, and it is rebuilt.
    with log.engine.begin() as connection:
        connection.execute(sa.delete(projection_checkpoints))
    assert [e.position for e in log.open_operations()] == _open_from_zero(log)
    assert log.load_checkpoint("store.open_operations") is not None


# Checkpoints of the right name and version whose state is not a fold's: each is ignored.
@pytest.mark.parametrize(
    "state",
    [
        [],  # not an object
        {},  # no "open"
        {"open": ["a"]},  # "open" not an object
        {"open": {"x": "1"}},  # a position as text
        {"open": {"x": None}},  # no position
    ],
)
def test_an_unreadable_open_operations_checkpoint_folds_from_zero(log: EventLog, state: Any) -> None:
    running, finished = uuid.uuid4(), uuid.uuid4()
    log.append([_start(running), _start(finished)])
    log.append([_complete(finished)])
    log.save_checkpoint(Checkpoint("store.open_operations", 1, log.head(), state))
    assert [e.operation_id for e in log.open_operations()] == [running]
