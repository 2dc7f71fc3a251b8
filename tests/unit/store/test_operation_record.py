"""``store.operation_record``: when an operation counts from (``arrival``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from confledger.store.events import OperationKind, Trigger
from confledger.store.operation_record import Request, arrival

# (seconds from now the caller says its request arrived, whether it lies in the future)
ARRIVALS = [
    (-2.0, False),  # two seconds ago: counted from then, on both clocks
    (0.0, False),  # just now
    (5.0, True),  # a reading from the future is taken as now: never a negative duration
]
# The two clocks are read at slightly different moments; their granularity is far below this.
SLACK = timedelta(milliseconds=1)


@pytest.mark.parametrize(("offset_s", "future"), ARRIVALS)
def test_a_request_counts_from_when_it_arrived_and_never_from_the_future(
    offset_s: float, future: bool
) -> None:
    wall_before = datetime.now(UTC)
    asked = time.perf_counter()

    received, received_at = arrival(asked + offset_s)
    request = Request(
        OperationKind.RELOAD,
        Trigger.API,
        "token:admin",
        None,
        None,
        received=received,
        received_at=received_at,
    )

    after = time.perf_counter()
    wall_after = datetime.now(UTC)
    if future:
        assert asked <= request.received <= after
        counted_back = timedelta(0)
    else:
        assert request.received == asked + offset_s
        counted_back = timedelta(seconds=-offset_s)
    # The wall-clock start is the monotonic interval back from the moment it was placed.
    assert wall_before - counted_back - timedelta(seconds=after - asked) - SLACK <= request.received_at
    assert request.received_at <= wall_after - counted_back + SLACK


def test_without_an_arrival_a_request_counts_from_its_creation() -> None:
    before = time.perf_counter()
    received, received_at = arrival(None)
    request = Request(
        OperationKind.ROLLBACK,
        Trigger.MANUAL,
        "operator",
        None,
        None,
        received=received,
        received_at=received_at,
    )
    assert before <= request.received <= time.perf_counter()
