"""History pages from the in-memory window: ``window_page`` against the plain reading of its contract
(every operation in the window, newest first by first position, filtered, cut at the limit), on logs
where operations overlap, so the order they finished in is not the order they started in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confledger.projections.history import HistoryProjection, window_page
from confledger.store.events import (
    OperationCompleted,
    OperationKind,
    OperationRejected,
    OperationStarted,
    OperationStatus,
    Trigger,
)
from confledger.store.outcome import ReloadOperation
from tests.unit.projections.test_projections import LogBuilder

TRIGGERS = [Trigger.API, Trigger.SIGNAL, Trigger.FILE_WATCH]
STATUSES = [OperationStatus.SUCCESS, OperationStatus.FAILED]


@dataclass(frozen=True)
class Step:
    """Start an operation, finish the open one at ``index`` (modulo how many are open), or refuse one."""

    action: str
    trigger: Trigger
    status: OperationStatus
    index: int


steps = st.lists(
    st.builds(
        Step,
        action=st.sampled_from(["start", "finish", "reject"]),
        trigger=st.sampled_from(TRIGGERS),
        status=st.sampled_from(STATUSES),
        index=st.integers(0, 3),
    ),
    max_size=40,
)


def fold(schedule: list[Step], window: int, *, settle: bool = True) -> HistoryProjection:
    log = LogBuilder()
    open_operations: list[int] = []
    for number, step in enumerate(schedule, start=1):
        if step.action == "start":
            log.add(OperationStarted(kind=OperationKind.RELOAD, trigger=step.trigger), number)
            open_operations.append(number)
        elif step.action == "finish" and open_operations:
            finishing = open_operations.pop(step.index % len(open_operations))
            log.add(OperationCompleted(status=step.status, total_ms=1.0), finishing)
        else:
            refused = OperationRejected(
                kind=OperationKind.RELOAD,
                trigger=step.trigger,
                reason="operation_in_progress",
                message="busy",
            )
            log.add(refused, number)
    history = HistoryProjection(window=window)
    for event in log.events:
        history.apply(event)
    if settle:  # the schedule is one batch
        history.settle()
    return history


def expected_page(
    history: HistoryProjection, limit: int, before: int | None, trigger: str | None, status: str | None
) -> list[ReloadOperation] | None:
    found = [
        op
        for op in history.recent()
        if (before is None or op.first_position < before)
        and (trigger is None or op.trigger.value == trigger)
        and (status is None or op.status.value == status)
    ][:limit]
    if len(found) >= limit or len(history.operations) < history.window:
        return found
    return None


@settings(max_examples=300, deadline=None)
@given(
    schedule=steps,
    window=st.integers(1, 8),
    limit=st.integers(1, 6),
    before=st.none() | st.integers(1, 60),
    trigger=st.none() | st.sampled_from([t.value for t in TRIGGERS]),
    status=st.none() | st.sampled_from(["success", "failed", "in_progress"]),
)
def test_a_window_page_is_the_newest_matches_of_the_whole_window(
    schedule: list[Step], window: int, limit: int, before: int | None, trigger: str | None, status: str | None
) -> None:
    history = fold(schedule, window)
    page = window_page(history, limit, before=before, trigger=trigger, status=status)
    assert page == expected_page(history, limit, before, trigger, status)
    # Before the batch is settled, readers already see the operations that ended in it.
    unsettled = fold(schedule, window, settle=False)
    assert window_page(unsettled, limit, before=before, trigger=trigger, status=status) == page
    assert unsettled.recent() == history.recent()


@pytest.mark.parametrize(
    ("finish_order", "limit", "expected"),
    [
        # (the order operations 1-3, started in that order, finish in; the page size; the page, newest first
        # by when each started)
        ([1, 2, 3], 2, [3, 2]),
        ([3, 2, 1], 2, [3, 2]),
        ([2, 3, 1], 2, [3, 2]),
        ([3, 1, 2], 2, [3, 2]),
        # 2 finished last, but 3 started after it, and 1, finished between them, is older than both
        ([3, 1, 2], 1, [3]),
        ([2, 1, 3], 1, [3]),
    ],
)
def test_an_operation_that_started_later_but_finished_first_is_still_newer(
    finish_order: list[int], limit: int, expected: list[int]
) -> None:
    schedule = [Step("start", Trigger.API, OperationStatus.SUCCESS, 0) for _ in range(3)]
    open_now = [1, 2, 3]
    for finishing in finish_order:
        schedule.append(Step("finish", Trigger.API, OperationStatus.SUCCESS, open_now.index(finishing)))
        open_now.remove(finishing)
    history = fold(schedule, window=10)

    page = window_page(history, limit)

    assert page is not None
    assert [op.first_position for op in page] == expected
