"""store.steps: an operation's straight line, run in worker threads by ``drive``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from opentelemetry import trace

from confledger.store.calls import CallOutcome, TurnCall, TurnPlan, UserCalls
from confledger.store.steps import Notify, RunValidators, Steps, Work, drive
from confledger.store.validation import ModelResult

pytestmark = pytest.mark.anyio

WORK = RunValidators(ModelResult({}, {}, "h", frozenset(), (), 0.0))
NOTIFY = Notify([], None, None, [], "forward")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A ``perform`` (the loop's) that answers each piece of work in turn and notes what it was given."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.work: list[Work] = []

    async def __call__(self, work: Work) -> Any:
        self.work.append(work)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def no_plan(_work: Work) -> TurnPlan | None:
    return None


def plan_calling(*functions: Any, timeout: float = 5.0) -> Any:
    """A ``plan`` that makes each work one turn of ``functions``; its answer, their values."""

    def finish(pairs: list[tuple[CallOutcome, trace.Span]]) -> list[Any]:
        for _outcome, span in pairs:
            span.end()
        return [outcome.value if not outcome.timed_out else "timed out" for outcome, _span in pairs]

    def plan(_work: Work) -> TurnPlan:
        calls = [TurnCall(f"k{index}", function, timeout) for index, function in enumerate(functions)]
        return TurnPlan(calls, finish, trace.get_tracer("test"))

    return plan


async def run(steps: Steps[Any], perform: Any, plan: Any = no_plan, shortest: float = 5.0) -> Any:
    return await drive(steps, perform, plan, UserCalls(2), shortest=shortest)


async def test_a_line_with_nothing_to_call_runs_whole_in_one_worker_thread() -> None:
    threads: list[int] = []

    def line() -> Steps[str]:
        threads.append(threading.get_ident())
        if False:  # pragma: no cover - a generator that never yields
            yield WORK
        threads.append(threading.get_ident())
        return "done"

    assert await run(line(), Recorder()) == "done"
    assert len(set(threads)) == 1
    assert threads[0] != threading.get_ident()


def counting_hops(patch: pytest.MonkeyPatch) -> list[str]:
    hops: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", ""))
        return await original(function, *args, **kwargs)

    patch.setattr(anyio.to_thread, "run_sync", counting)
    return hops


async def test_sync_user_code_is_called_in_the_lines_own_thread_in_one_hop() -> None:
    threads: list[int] = []
    seen: list[Any] = []

    def call() -> int:
        threads.append(threading.get_ident())
        return len(threads)

    def line() -> Steps[int]:
        threads.append(threading.get_ident())
        seen.append((yield WORK))
        seen.append((yield NOTIFY))
        threads.append(threading.get_ident())
        return 3

    perform = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        hops = counting_hops(patch)
        assert await run(line(), perform, plan_calling(call, call)) == 3
    assert seen == [[2, 3], [4, 5]]
    assert perform.work == []
    assert len(set(threads)) == 1
    assert hops == ["run"]


async def test_user_code_without_a_plan_is_run_by_the_loop_and_each_answer_sent_back() -> None:
    seen: list[Any] = []

    def line() -> Steps[int]:
        first = yield WORK
        second = yield NOTIFY
        seen.extend([first, second])
        return 3

    perform = Recorder(1, 2)
    with pytest.MonkeyPatch.context() as patch:
        hops = counting_hops(patch)
        assert await run(line(), perform) == 3
    assert seen == [1, 2]
    assert [type(work) for work in perform.work] == [RunValidators, Notify]
    assert hops == ["run", "run", "run"]  # the first stretch, then one hop per answer


async def test_a_late_call_is_answered_by_the_loop_and_the_line_goes_on_in_a_new_hop() -> None:
    release = threading.Event()
    seen: list[Any] = []

    def line() -> Steps[str]:
        seen.append((yield WORK))
        return "done"

    try:
        result = await run(
            line(), Recorder(), plan_calling(lambda: release.wait(10), lambda: "after", timeout=0.05), 0.05
        )
    finally:
        release.set()
    assert result == "done"
    assert seen == [["timed out", "after"]]


async def test_an_error_of_the_user_code_is_raised_at_its_yield() -> None:
    def line() -> Steps[str]:
        try:
            yield WORK
        except KeyError as exc:
            return f"caught {exc.args[0]}"
        return "not raised"

    assert await run(line(), Recorder(KeyError("missing"))) == "caught missing"


async def test_an_error_of_a_stretch_leaves_drive() -> None:
    def line() -> Steps[None]:
        yield WORK
        raise LookupError("the log refused")

    with pytest.raises(LookupError, match="the log refused"):
        await run(line(), Recorder(None))


async def test_a_cancelled_drive_closes_its_line_off_the_loop() -> None:
    closed_in: list[int] = []
    waiting = anyio.Event()

    def line() -> Steps[None]:
        try:
            yield WORK
        finally:
            closed_in.append(threading.get_ident())

    async def never_answers(work: Work) -> Any:
        waiting.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(run, line(), never_answers)
        await waiting.wait()
        group.cancel_scope.cancel()
    assert len(closed_in) == 1
    assert closed_in[0] != threading.get_ident()  # its finally (a lock's release) ran in a worker thread


async def test_a_drive_cancelled_during_a_call_of_its_line_starts_nothing_after_it() -> None:
    in_call = threading.Event()
    release = threading.Event()
    after: list[str] = []
    closed: list[str] = []

    def line() -> Steps[None]:
        try:
            yield WORK
            after.append("stretch")
        finally:
            closed.append("closed")

    def call() -> None:
        in_call.set()
        release.wait(10)

    async def cancel_in_call(group: anyio.abc.TaskGroup) -> None:
        await anyio.to_thread.run_sync(in_call.wait)
        group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_in_call, group)
            await run(line(), Recorder(), plan_calling(call, lambda: after.append("next call")))
    finally:
        release.set()
    await anyio.sleep(0.1)
    assert closed == ["closed"]
    assert after == []


async def test_a_native_cancel_during_a_stretch_closes_the_line_once_the_stretch_is_done() -> None:
    """``asyncio.wait_for`` cancels the task itself, which anyio's wait for the worker thread does not
    hold off: the caller gets its timeout (not "generator already executing"), and the line is closed,
    its ``finally`` run, once the thread's stretch is over."""
    in_stretch = threading.Event()
    release = threading.Event()
    closed: list[str] = []

    def line() -> Steps[None]:
        try:
            in_stretch.set()
            release.wait(30)  # a slow model, in the first stretch
            yield WORK
        finally:
            closed.append("released")

    async def release_once_cancelled(driving: asyncio.Task[None]) -> None:
        with anyio.fail_after(30):
            while not driving.cancelling():
                await anyio.sleep(0.01)
        release.set()

    driving = asyncio.ensure_future(run(line(), Recorder(None)))
    async with anyio.create_task_group() as group:
        group.start_soon(release_once_cancelled, driving)
        # The timeout runs from the moment the stretch is under way: a loaded machine can take longer than
        # the timeout to start a worker thread, and a line cancelled before its first stretch never starts.
        with anyio.fail_after(30):
            while not in_stretch.is_set():
                await anyio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(driving, 0.05)
    assert closed == ["released"]


async def test_a_line_no_thread_took_up_by_its_first_look_is_run_once_a_thread_is_free() -> None:
    calls = UserCalls(1)
    release = threading.Event()
    ran: list[str] = []

    def line() -> Steps[str]:
        ran.append("stretch")
        seen = yield WORK
        return f"done {seen}"

    async with anyio.create_task_group() as group:
        # The limiter's one token held past the line's first look (0.05 s).
        group.start_soon(lambda: calls.call("busy", lambda: release.wait(10), timeout=10, in_thread=True))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(
            lambda: anyio.to_thread.run_sync(lambda: threading.Event().wait(0.3) or release.set())
        )
        result = await drive(
            line(), Recorder(), plan_calling(lambda: "v", timeout=0.05), calls, shortest=0.05
        )
    assert result == "done ['v']"
    assert ran == ["stretch"]


async def test_a_drive_cancelled_before_a_thread_took_its_line_up_ends_at_once() -> None:
    calls = UserCalls(1)
    release = threading.Event()
    ran: list[str] = []

    def line() -> Steps[None]:
        ran.append("stretch")
        yield WORK

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: calls.call("busy", lambda: release.wait(10), timeout=10, in_thread=True))
            await anyio.wait_all_tasks_blocked()
            with anyio.move_on_after(0.1):
                await drive(line(), Recorder(), no_plan, calls, shortest=5.0)
            release.set()
    finally:
        release.set()
    await anyio.sleep(0.1)
    assert ran == []
