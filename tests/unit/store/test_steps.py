"""store.steps: an operation's straight line, run across worker threads by ``drive``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from confledger.store.calls import Then
from confledger.store.steps import Notify, RunValidators, Steps, Work, drive
from confledger.store.validation import ModelResult

pytestmark = pytest.mark.anyio

WORK = RunValidators(ModelResult({}, {}, "h", frozenset(), (), 0.0))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A ``perform`` that answers each piece of work in turn and notes what it was offered."""

    def __init__(self, *answers: Any, run_then: bool = False) -> None:
        self.answers = list(answers)
        self.run_then = run_then
        self.work: list[Work] = []

    async def __call__(self, work: Work, then: Then) -> Any:
        self.work.append(work)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if self.run_then:
            # As a turn's thread does after its calls: the rest of the line, in that same thread.
            await anyio.to_thread.run_sync(then.run, answer)
        return answer


async def test_a_line_with_nothing_to_call_runs_whole_in_one_worker_thread() -> None:
    threads: list[int] = []

    def line() -> Steps[str]:
        threads.append(threading.get_ident())
        if False:  # pragma: no cover - a generator that never yields
            yield WORK
        threads.append(threading.get_ident())
        return "done"

    assert await drive(line(), Recorder()) == "done"
    assert len(set(threads)) == 1
    assert threads[0] != threading.get_ident()


@pytest.mark.parametrize(
    ("run_then", "hops_of_drive"),
    [
        (False, 3),  # the first stretch, then each answer sent back in a hop of its own
        (True, 1),  # the user code's thread ran each rest: no hop back and out again
    ],
)
async def test_each_answer_is_sent_back_to_its_yield(run_then: bool, hops_of_drive: int) -> None:
    seen: list[Any] = []
    hops: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", ""))
        return await original(function, *args, **kwargs)

    def line() -> Steps[int]:
        first = yield WORK
        second = yield Notify([], None, None, [], "forward")
        seen.extend([first, second])
        return 3

    perform = Recorder(1, 2, run_then=run_then)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(anyio.to_thread, "run_sync", counting)
        assert await drive(line(), perform) == 3
    assert seen == [1, 2]
    assert [type(work) for work in perform.work] == [RunValidators, Notify]
    assert hops.count("_advance") == hops_of_drive


async def test_an_error_of_the_user_code_is_raised_at_its_yield() -> None:
    def line() -> Steps[str]:
        try:
            yield WORK
        except KeyError as exc:
            return f"caught {exc.args[0]}"
        return "not raised"

    assert await drive(line(), Recorder(KeyError("missing"))) == "caught missing"


async def test_an_error_of_a_stretch_leaves_drive() -> None:
    def line() -> Steps[None]:
        yield WORK
        raise LookupError("the log refused")

    with pytest.raises(LookupError, match="the log refused"):
        await drive(line(), Recorder(None))


async def test_a_cancelled_drive_closes_its_line_off_the_loop() -> None:
    closed_in: list[int] = []
    waiting = anyio.Event()

    def line() -> Steps[None]:
        try:
            yield WORK
        finally:
            closed_in.append(threading.get_ident())

    async def never_answers(work: Work, then: Then) -> Any:
        waiting.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(drive, line(), never_answers)
        await waiting.wait()
        group.cancel_scope.cancel()
    assert len(closed_in) == 1
    assert closed_in[0] != threading.get_ident()  # its finally (a lock's release) ran in a worker thread


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
            release.wait(10)  # a slow model, in the first stretch
            yield WORK
        finally:
            closed.append("released")

    async def answers(work: Work, then: Then) -> Any:
        return None

    async def release_soon() -> None:
        await anyio.to_thread.run_sync(in_stretch.wait)
        await anyio.sleep(0.2)
        release.set()

    async with anyio.create_task_group() as group:
        group.start_soon(release_soon)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(drive(line(), answers), 0.05)
    assert closed == ["released"]
