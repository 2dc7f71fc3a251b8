"""store.calls: user code under a deadline, in anyio worker threads or on the loop, with bounded threads."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import anyio
import pytest

from confledger.store.calls import CallOutcome, UserCalls

pytestmark = pytest.mark.anyio

REQUEST = contextvars.ContextVar("REQUEST", default="none")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def returns() -> str:
    return "value"


def raises() -> str:
    raise KeyError("missing")


async def returns_async() -> str:
    await anyio.sleep(0)
    return "value"


async def raises_async() -> str:
    raise KeyError("missing")


async def sleeps_async() -> str:
    await anyio.sleep(10)
    return "late"


def hands_back_a_coroutine() -> Any:
    return returns_async()


@pytest.mark.parametrize(
    ("function", "in_thread", "value", "error", "timed_out"),
    [
        (returns, True, "value", None, False),  # sync, in a worker thread
        (raises, True, None, KeyError, False),  # sync, raising: the error is kept, not raised here
        (hands_back_a_coroutine, True, "value", None, False),  # sync returning a coroutine: awaited
        (returns_async, False, "value", None, False),  # async, on the loop
        (raises_async, False, None, KeyError, False),
        (sleeps_async, False, None, None, True),  # async past the deadline: cancelled
    ],
)
async def test_outcomes(
    function: Any, in_thread: bool, value: object, error: type[Exception] | None, timed_out: bool
) -> None:
    outcome = await UserCalls(2).call("key", function, timeout=0.2, in_thread=in_thread)
    assert outcome.value == value
    assert (type(outcome.error) if outcome.error else None) is error
    assert outcome.timed_out is timed_out
    assert not outcome.still_running
    assert outcome.duration_ms > 0


async def test_a_sync_call_runs_off_the_loop_and_sees_the_callers_context_variables() -> None:
    seen: list[tuple[int, str]] = []
    REQUEST.set("request-7")
    await UserCalls(1).call(
        "key", lambda: seen.append((threading.get_ident(), REQUEST.get())), timeout=5, in_thread=True
    )
    [(thread, value)] = seen
    assert thread != threading.get_ident()
    assert value == "request-7"


async def test_a_hung_call_holds_one_thread_however_often_it_is_called() -> None:
    release = threading.Event()
    entered: list[int] = []

    def hangs() -> None:
        entered.append(threading.get_ident())
        release.wait(10)

    calls = UserCalls(4)
    threads_before = threading.active_count()
    try:
        outcomes = [await calls.call("service:hung", hangs, timeout=0.02, in_thread=True) for _ in range(20)]
        # One thread parked in the hung call; the other 19 calls were never made.
        assert len(entered) == 1
        assert threading.active_count() <= threads_before + 1
        assert calls.in_flight() == {"service:hung"}
    finally:
        release.set()
    assert outcomes[0].timed_out
    assert all(outcome == CallOutcome(still_running=True) for outcome in outcomes[1:])
    with anyio.fail_after(5):
        while calls.in_flight():
            await anyio.sleep(0.01)
    assert (await calls.call("service:hung", returns, timeout=5, in_thread=True)).value == "value"


async def test_the_limiter_bounds_the_calls_running_at_once() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.05)
        with lock:
            running -= 1

    calls = UserCalls(2)
    async with anyio.create_task_group() as group:
        for index in range(6):
            group.start_soon(lambda index=index: calls.call(f"k{index}", work, timeout=5, in_thread=True))
    assert most == 2


async def test_a_call_given_up_while_waiting_for_a_thread_never_runs_and_frees_its_key() -> None:
    release = threading.Event()
    ran: list[str] = []
    calls = UserCalls(1)
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: calls.call("busy", lambda: release.wait(10), timeout=10, in_thread=True))
        await anyio.wait_all_tasks_blocked()
        waited = await calls.call("queued", lambda: ran.append("queued"), timeout=0.05, in_thread=True)
        assert waited.timed_out
        assert calls.in_flight() == {"busy"}
        release.set()
    assert ran == []
    assert calls.in_flight() == frozenset()


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        UserCalls(0)
