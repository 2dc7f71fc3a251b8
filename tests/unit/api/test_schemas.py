"""The history page as ``history_json`` encodes it from each operation's kept JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from confledger.api import schemas
from confledger.api.schemas import HistoryResponse, OperationOut, history_json, operation_json
from confledger.store import OperationKind, Trigger
from confledger.store.outcome import ReloadOperation, ReloadStatus

MOMENT = datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=UTC)


def operation(number: int, status: ReloadStatus = ReloadStatus.SUCCESS, **fields: object) -> ReloadOperation:
    values: dict[str, object] = {
        "operation_id": f"0193a1b2-0000-7000-8000-{number:012d}",
        "status": status,
        "success": status is ReloadStatus.SUCCESS,
        "message": "applied",
        "started_at": MOMENT,
        "completed_at": MOMENT,
        "total_duration_ms": 1.23456,
        "new_config_hash": "ab" * 32,
        "changes_applied": ("database.pool_size",),
        "services_notified": ("cache", "api"),
        "first_position": 10 * number,
        "last_position": 10 * number + 4,
    }
    values.update(fields)
    return ReloadOperation.model_validate(values)


UNUSUAL = operation(
    7,
    ReloadStatus.FAILED,
    kind=OperationKind.ROLLBACK,
    trigger=Trigger.SIGNAL,
    message='refused: "quoted" \\ back\\slash, ünïcode, \u2028 and a tab\t',
    error_message="line 3: bad",
    reason="validation_failed",
    validation_errors=("a" * 300, "<script>"),
    trace_id="0af7651916cd43dd8448eb211c80319c",
    completed_at=None,
)


@pytest.mark.parametrize(
    ("operations", "total_count", "limit", "next_before"),
    [
        # An empty log: no operations, nothing further back.
        ([], 0, 20, None),
        # One page holding everything.
        ([operation(3), operation(2), operation(1)], 3, 20, None),
        # A full page with more behind it: the cursor is the last one's first position.
        ([operation(5), operation(4)], 9, 2, 40),
        # Text that JSON must escape, a failed rollback, a missing completion time, capped lists.
        ([UNUSUAL, operation(6, ReloadStatus.APPLYING)], 2, 100, None),
        # The largest cursor a client can send back.
        ([operation(1)], 1, 1, 2**63 - 1),
    ],
)
def test_a_page_is_what_the_history_response_model_dumps(
    operations: list[ReloadOperation], total_count: int, limit: int, next_before: int | None
) -> None:
    page = history_json(operations, total_count=total_count, limit=limit, next_before=next_before)

    model = HistoryResponse(
        operations=[OperationOut.of(op) for op in operations],
        total_count=total_count,
        limit=limit,
        next_before=next_before,
    )
    assert page == model.model_dump_json().encode()
    assert HistoryResponse.model_validate_json(page) == model


def test_a_finished_operation_is_rendered_once_a_running_one_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(schemas, "_FINISHED_RENDERED", {})
    built: list[str] = []
    original = OperationOut.of

    def counting(op: ReloadOperation) -> OperationOut:
        built.append(op.operation_id)
        return original(op)

    monkeypatch.setattr(OperationOut, "of", counting)
    done, running = operation(1), operation(2, ReloadStatus.APPLYING, last_position=21)

    assert operation_json(done) == operation_json(done)
    assert operation_json(running) == operation_json(running)
    assert built == [done.operation_id, running.operation_id, running.operation_id]

    # The same operation with more events (a later last position) is another rendering.
    later = done.model_copy(update={"last_position": done.last_position + 1, "message": "rolled back"})
    assert b'"rolled back"' in operation_json(later)


def test_the_kept_renderings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schemas, "_FINISHED_RENDERED", {})
    monkeypatch.setattr(schemas, "_FINISHED_RENDERED_MAX", 3)
    for number in range(1, 6):
        operation_json(operation(number))

    kept = list(schemas._FINISHED_RENDERED)
    assert [operation_id[-1] for operation_id, _ in kept] == ["3", "4", "5"]
