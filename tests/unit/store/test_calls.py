"""store.calls: user code under a deadline, in anyio worker threads or on the loop, with bounded threads."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from opentelemetry import trace

from confledger.store.calls import CallOutcome, TurnCall, TurnPlan, UserCalls

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


# Only a call that must time out gets a short deadline, and it never ends before it (it waits to be
# released, or sleeps far past it): under a loaded machine's scheduling a worker thread's first call
# alone took longer than 0.2 s, so a call meant to finish "timed out" under a short one.
QUICK, SHORT = 30.0, 0.2


async def abandoned(calls: UserCalls, key: str, hangs: Callable[[], object]) -> CallOutcome:
    """The outcome of a call of ``key`` that started ``hangs`` in a worker thread and was abandoned at its
    deadline, its thread still in it (``hangs`` must not return until released). A call given up before
    a worker thread started it never runs and frees its key, as it should; a loaded machine can take
    longer than a short deadline to start a thread, so such a call is made again with twice the time."""
    timeout = 0.05
    with anyio.fail_after(60):
        while True:
            outcome = await calls.call(key, hangs, timeout=timeout, in_thread=True)
            if key in calls.in_flight():
                return outcome
            timeout *= 2


@pytest.mark.parametrize(
    ("function", "in_thread", "timeout", "value", "error", "timed_out"),
    [
        (returns, True, QUICK, "value", None, False),  # sync, in a worker thread
        (raises, True, QUICK, None, KeyError, False),  # sync, raising: the error is kept, not raised here
        (hands_back_a_coroutine, True, QUICK, "value", None, False),  # sync returning a coroutine: awaited
        (returns_async, False, QUICK, "value", None, False),  # async, on the loop
        (raises_async, False, QUICK, None, KeyError, False),
        (sleeps_async, False, SHORT, None, None, True),  # async past the deadline: cancelled
    ],
)
async def test_outcomes(
    function: Any,
    in_thread: bool,
    timeout: float,
    value: object,
    error: type[Exception] | None,
    timed_out: bool,
) -> None:
    outcome = await UserCalls(2).call("key", function, timeout=timeout, in_thread=in_thread)
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
        release.wait(60)

    calls = UserCalls(4)
    try:
        first = await abandoned(calls, "service:hung", hangs)
        threads_parked = threading.active_count()
        again = [await calls.call("service:hung", hangs, timeout=0.02, in_thread=True) for _ in range(19)]
        # One thread parked in the hung call; the other 19 calls were never made.
        assert len(entered) == 1
        assert threading.active_count() <= threads_parked
        assert calls.in_flight() == {"service:hung"}
    finally:
        release.set()
    assert first.timed_out
    assert all(outcome == CallOutcome(still_running=True) for outcome in again)
    with anyio.fail_after(5):
        while calls.in_flight():
            await anyio.sleep(0.01)
    assert (await calls.call("service:hung", returns, timeout=5, in_thread=True)).value == "value"


async def test_the_limiter_bounds_the_calls_running_at_once() -> None:
    running = 0
    most = 0
    lock = threading.Lock()
    # Two at a time go on together, however late a loaded machine starts the second thread (with one
    # token the barrier breaks, well before the calls' deadline); the wait after it gives a third, were it
    # let in, time to be counted.
    pairs = threading.Barrier(2, timeout=10)

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            pairs.wait()
            threading.Event().wait(0.05)
        finally:
            with lock:
                running -= 1

    calls = UserCalls(2)
    async with anyio.create_task_group() as group:
        for index in range(6):
            group.start_soon(lambda index=index: calls.call(f"k{index}", work, timeout=QUICK, in_thread=True))
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


# --- several sync calls in one worker thread (call_in_turn) ------------------------------------------


async def in_turn(calls: UserCalls, turn: list[TurnCall]) -> list[CallOutcome]:
    """The outcomes of ``calls.call_in_turn`` (each call's span ended, as a caller ends it)."""
    outcomes = []
    for outcome, span in await calls.call_in_turn(turn, trace.get_tracer("test")):
        span.end()
        outcomes.append(outcome)
    return outcomes


@pytest.mark.parametrize(
    ("functions", "values", "errors"),
    [
        # each outcome in order, whatever the others did
        ([returns, raises, returns], ["value", None, "value"], [None, KeyError, None]),
        # a function handing back a coroutine has it awaited on the loop, as call() does
        ([hands_back_a_coroutine, returns], ["value", "value"], [None, None]),
    ],
)
async def test_a_turn_gives_one_outcome_per_call_in_order(
    functions: list[Any], values: list[object], errors: list[type[Exception] | None]
) -> None:
    outcomes = await in_turn(
        UserCalls(2), [TurnCall(f"k{index}", function, QUICK) for index, function in enumerate(functions)]
    )
    assert [outcome.value for outcome in outcomes] == values
    assert [type(outcome.error) if outcome.error else None for outcome in outcomes] == errors
    assert not any(outcome.timed_out or outcome.still_running for outcome in outcomes)


async def test_a_turn_runs_its_calls_one_after_another_in_one_thread_off_the_loop() -> None:
    seen: list[tuple[int, str]] = []
    REQUEST.set("request-8")
    await in_turn(
        UserCalls(4),
        [
            TurnCall(f"k{n}", lambda: seen.append((threading.get_ident(), REQUEST.get())), QUICK)
            for n in range(3)
        ],
    )
    assert len({thread for thread, _ in seen}) == 1
    assert seen[0][0] != threading.get_ident()
    assert {value for _, value in seen} == {"request-8"}


async def test_only_the_late_call_of_a_turn_times_out_and_the_rest_go_on() -> None:
    release = threading.Event()
    ran: list[str] = []
    calls = UserCalls(4)
    try:
        outcomes = await in_turn(
            calls,
            [
                TurnCall("first", lambda: ran.append("first"), QUICK),
                # Its deadline counts from the moment the first call ended, in the turn's thread: this one
                # starts right after, so it outlasts a loaded machine's pauses of a thread.
                TurnCall("hung", lambda: release.wait(10), 0.5),
                TurnCall("after", lambda: ran.append("after"), QUICK),
            ],
        )
        # The hung call keeps its thread and its key until it returns; the one after it ran meanwhile.
        assert calls.in_flight() == {"hung"}
    finally:
        release.set()
    assert [outcome.timed_out for outcome in outcomes] == [False, True, False]
    assert ran == ["first", "after"]
    with anyio.fail_after(5):
        while calls.in_flight():
            await anyio.sleep(0.01)
    again = await in_turn(calls, [TurnCall("hung", returns, QUICK)])
    assert again[0].value == "value"  # called again once its abandoned call returned


async def test_each_deadline_counts_from_its_own_calls_start() -> None:
    # 0.6 s of a 30 s budget, then a call with a 0.5 s budget: neither is late, though the second
    # finishes more than 0.5 s after the turn began (0.5 s, for it to start and return on a loaded machine).
    outcomes = await in_turn(
        UserCalls(2),
        [TurnCall("slow", lambda: threading.Event().wait(0.6), QUICK), TurnCall("quick", returns, 0.5)],
    )
    assert [outcome.timed_out for outcome in outcomes] == [False, False]
    assert outcomes[1].value == "value"


async def test_a_key_whose_abandoned_call_still_runs_is_not_called_in_a_turn() -> None:
    release = threading.Event()
    calls = UserCalls(4)
    try:
        first = await abandoned(calls, "service:hung", lambda: release.wait(60))
        outcomes = await in_turn(
            calls, [TurnCall("service:hung", returns, QUICK), TurnCall("service:other", returns, QUICK)]
        )
    finally:
        release.set()
    assert first.timed_out
    assert outcomes == [CallOutcome(still_running=True), outcomes[1]]
    assert outcomes[1].value == "value"


async def test_a_turn_given_up_while_waiting_for_a_thread_never_runs_its_late_call() -> None:
    release = threading.Event()
    ran: list[str] = []
    calls = UserCalls(1)
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: calls.call("busy", lambda: release.wait(10), timeout=10, in_thread=True))
        await anyio.wait_all_tasks_blocked()

        async def release_after_the_deadline() -> None:
            # On the loop's clock, as the deadline is: a loop held up past both still sees this one
            # second (a thread set to release it could beat the deadline to the loop).
            await anyio.sleep(0.2)
            release.set()

        group.start_soon(release_after_the_deadline)
        outcomes = await in_turn(
            calls,
            [
                TurnCall("queued", lambda: ran.append("queued"), 0.05),
                TurnCall("next", lambda: ran.append("next"), QUICK),
            ],
        )
    assert [outcome.timed_out for outcome in outcomes] == [True, False]
    assert ran == ["next"]  # the late one never ran; the next one did, once a thread was free
    assert calls.in_flight() == frozenset()


async def test_a_turn_no_thread_took_by_the_first_look_still_runs_once_one_is_free() -> None:
    # The first look comes when the second call could first be late (0.2 s). The only thread is busy
    # until 1 s: the turn, not yet in a thread then, was dropped, and its first call, never made, was
    # recorded as timed out at its own 5 s deadline (as on a loaded machine slow to start a thread).
    release = threading.Event()
    ran: list[str] = []
    calls = UserCalls(1)
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: calls.call("busy", lambda: release.wait(30), timeout=QUICK, in_thread=True))
        await anyio.wait_all_tasks_blocked()

        async def release_after_the_first_look() -> None:
            await anyio.sleep(1.0)
            release.set()

        group.start_soon(release_after_the_first_look)
        outcomes = await in_turn(
            calls,
            [
                TurnCall("first", lambda: ran.append("first"), 5.0),
                TurnCall("second", lambda: ran.append("second"), 0.2),
            ],
        )
    assert ran == ["first", "second"]
    assert [outcome.timed_out for outcome in outcomes] == [False, False]
    assert calls.in_flight() == frozenset()


# --- a line: a worker thread's stretches and the turns it makes between them -------------------------


def plan_of(*calls: TurnCall) -> TurnPlan:
    """A plan whose answer is its calls' outcomes (their spans ended)."""

    def finish(pairs: list[tuple[CallOutcome, trace.Span]]) -> list[CallOutcome]:
        for _outcome, span in pairs:
            span.end()
        return [outcome for outcome, _span in pairs]

    return TurnPlan(calls, finish, trace.get_tracer("test"))


async def test_a_line_makes_its_turns_in_its_own_thread_between_its_stretches() -> None:
    threads: list[int] = []
    calls = UserCalls(2)
    line = calls.line(1.0)

    def body() -> list[object]:
        threads.append(threading.get_ident())
        made, outcomes = line.make(
            plan_of(
                *[
                    TurnCall(f"k{n}", lambda n=n: threads.append(threading.get_ident()) or n, 1.0)
                    for n in range(2)
                ]
            )
        )
        threads.append(threading.get_ident())
        assert made
        return [outcome.value for outcome in outcomes]

    assert await calls.run_line(line, body) == [0, 1]
    assert len(set(threads)) == 1
    assert threads[0] != threading.get_ident()
    assert not line.unfinished


async def test_a_late_call_of_a_line_leaves_its_turn_to_the_loop_and_the_line_stops() -> None:
    release = threading.Event()
    ran: list[str] = []
    calls = UserCalls(4)
    line = calls.line(0.05)
    plan = plan_of(
        TurnCall("hung", lambda: release.wait(10), 0.05),
        TurnCall("after", lambda: ran.append("after"), 5.0),
    )

    def body() -> str:
        made, _ = line.make(plan)
        ran.append(f"line went on: {made}")
        return "stretch"

    try:
        assert await calls.run_line(line, body) is None  # not waited for: its call still runs
        assert line.unfinished
        outcomes = await calls.finish(line)
    finally:
        release.set()
    assert [outcome.timed_out for outcome in outcomes] == [True, False]
    with anyio.fail_after(5):
        while calls.in_flight():
            await anyio.sleep(0.01)
    assert ran == ["after", "line went on: False"]  # the call after it made by the loop's turn


async def test_an_awaitable_handed_back_in_a_lines_turn_is_awaited_by_the_loop() -> None:
    calls = UserCalls(2)
    line = calls.line(1.0)
    plan = plan_of(TurnCall("first", returns, 1.0), TurnCall("second", hands_back_a_coroutine, 1.0))
    assert await calls.run_line(line, lambda: line.make(plan)) == (False, None)
    assert line.unfinished
    assert [outcome.value for outcome in await calls.finish(line)] == ["value", "value"]


async def test_a_call_with_a_timeout_shorter_than_the_lines_looks_is_left_to_the_loop() -> None:
    ran: list[str] = []
    calls = UserCalls(2)
    line = calls.line(1.0)
    plan = plan_of(TurnCall("quick", lambda: ran.append("quick"), 0.5))
    assert await calls.run_line(line, lambda: line.make(plan)) == (False, None)
    assert not line.unfinished
    assert ran == []


async def test_a_stretch_slower_than_the_lines_looks_is_waited_for_not_abandoned() -> None:
    calls = UserCalls(2)
    line = calls.line(0.05)

    def body() -> object:
        threading.Event().wait(0.3)
        # Its own deadline is long (a loaded machine may pause the thread); the loop looks every 0.05 s.
        made, outcomes = line.make(plan_of(TurnCall("quick", returns, QUICK)))
        threading.Event().wait(0.3)
        return made and outcomes[0].value

    assert await calls.run_line(line, body) == "value"
    assert not line.unfinished


async def test_an_error_of_a_lines_stretch_is_raised_on_the_loop() -> None:
    calls = UserCalls(2)
    line = calls.line(0.05)

    def body() -> None:
        threading.Event().wait(0.1)  # past the first look
        raise LookupError("the log refused")

    with pytest.raises(LookupError, match="the log refused"):
        await calls.run_line(line, body)
