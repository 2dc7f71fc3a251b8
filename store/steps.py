"""An operation as one straight line of blocking code, run across worker threads by ``drive``.

A reload, a rollback, and following one change another instance decided are each written as a generator
of plain blocking code: take the fleet's turn, read and check the source, append to the log. It yields
only where user code has to run (:class:`RunValidators`, :class:`Notify`), and gets back what that code
said. ``drive`` runs the generator in an anyio worker thread, and the user code each yield asks for as it
always ran: sync functions under their own deadlines, in a worker thread and bounded by the user calls'
limiter, async ones on the loop (``store.calls``). When a yield's user code is sync throughout, the
line's own thread makes those calls (while the loop watches their deadlines) and goes on to the next
stretch; otherwise the loop runs it and the next stretch gets a hop of its own.

Why a generator rather than async code with a thread hop per blocking step: on a busy event loop each
hop waits behind every ready request several times (anyio's checkpoint, its limiter's checkpoint, the
result's callback, the task's wake-up), and under load that waiting, not the work, is most of an
operation's time. Here the hops are set by the user code alone: an operation whose validators and
services are sync (or that has none) is one hop whatever it writes; each async validator or callback
group, each call that overruns its deadline, adds one.
The straight line stays one path, read top to bottom, whichever thread runs each stretch; a generator is
never resumed by two threads at once (``drive`` waits for each stretch before the next).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from confledger.store.calls import Line, TurnPlan, UserCalls
from confledger.store.services import ServiceSpec
from confledger.store.validation import Findings, ModelResult, ValidationOutcome, ValidationPipeline

__all__ = ["Notify", "RunValidators", "Steps", "Work", "drive", "validated"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunValidators:
    """Call the custom validators on ``model`` (answered with their ``Findings``, in order)."""

    model: ModelResult


@dataclass(frozen=True, slots=True)
class Notify:
    """Hand ``services`` the change from ``old`` to ``new`` (answered with one ``NotifyResult`` each)."""

    services: Sequence[ServiceSpec]
    old: Any
    new: Any
    secrets: list[str]
    direction: str


Work = RunValidators | Notify
# How often a cancelled drive looks whether the stretch still running in another thread is done.
_STILL_POLL_S = 0.005
# A straight line: yields the user code it needs run, is sent what that code said, returns its result.
Steps = Generator[Work, Any, T]


def validated(pipeline: ValidationPipeline, model: ModelResult) -> Steps[ValidationOutcome]:
    """``model`` through the custom validators: a yield only when one is to be called."""
    started = time.perf_counter()
    findings: list[Findings] = (yield RunValidators(model)) if pipeline.calls_for(model) else []
    return pipeline.outcome(model, findings, started)


async def drive(
    steps: Steps[T],
    perform: Callable[[Work], Awaitable[Any]],
    plan: Callable[[Work], TurnPlan | None],
    calls: UserCalls,
    *,
    shortest: float,
) -> T:
    """Run ``steps`` to its end in worker threads, one hop for as long as its user code is sync.

    The line's thread runs each stretch and, at a yield whose user code is sync throughout (``plan``
    gives its turn), makes those calls itself, each within its deadline, which the loop watches as it
    waits (``UserCalls.run_line``; ``shortest``: the shortest timeout any call may have, how often the
    loop looks while a stretch runs), and sends the answer on. Other user code (async functions, a
    turn whose call was late, an awaitable handed back) is the loop's: ``perform`` runs it (or
    ``UserCalls.finish`` ends the turn), and the next stretch gets a hop of its own. An exception
    ``perform`` raises is thrown into the generator at its yield, as an awaited call would raise it
    there. If the caller is cancelled, the line is given up, a stretch still running is waited for,
    and the generator is closed in a worker thread (shielded), so its ``finally`` clauses (releasing the
    fleet's turn) run off the loop.
    """
    sent: Any = None
    thrown: Exception | None = None
    line: Line | None = None
    try:
        while True:
            line = calls.line(shortest)
            advanced = await calls.run_line(line, functools.partial(_run, steps, plan, line, sent, thrown))
            if not line.started:
                continue  # no thread was free by the line's first look: it is asked for again
            if line.unfinished:
                sent, thrown = await calls.finish(line), None
                continue
            done, value = advanced
            if done:
                return value  # type: ignore[no-any-return]
            try:
                sent, thrown = await perform(value), None
            except Exception as exc:
                sent, thrown = None, exc
    finally:
        with anyio.CancelScope(shield=True):
            if line is not None and calls.stop(line):
                # Cancelled while the line's thread ran a stretch: it is not to be closed under it.
                await anyio.to_thread.run_sync(line.turn.finished.wait)
            if inspect.getgeneratorstate(steps) != inspect.GEN_CLOSED:
                await anyio.to_thread.run_sync(_close_when_still, steps)


def _run(
    steps: Steps[Any],
    plan: Callable[[Work], TurnPlan | None],
    line: Line,
    sent: Any,
    thrown: Exception | None,
) -> tuple[bool, Any]:
    """A line's thread: stretches, and between them the turns it can make itself. (True, the result) at
    the end; (False, the work) for the loop to perform, or whose turn it is to finish."""
    advanced = _advance(steps, sent, thrown)
    while not advanced[0]:
        turn = plan(advanced[1])
        if turn is None:
            return advanced
        made, answer = line.make(turn)
        if not made:
            return advanced
        advanced = _advance(steps, answer, None)
    return advanced


def _close_when_still(steps: Steps[Any]) -> None:
    """Close ``steps`` once no thread runs a stretch of it.

    A native asyncio cancel (``asyncio.wait_for`` around a reload, uvicorn's at the end of its graceful
    wait) ends the await of a worker thread that anyio would have waited for: the stretch runs on
    there, and closing the generator under it raised "generator already executing" to the caller
    (instead of its timeout) and left the line unclosed, its fleet turn held.
    """
    while inspect.getgeneratorstate(steps) == inspect.GEN_RUNNING:
        time.sleep(_STILL_POLL_S)
    if inspect.getgeneratorstate(steps) != inspect.GEN_CLOSED:
        steps.close()


def _advance(steps: Steps[Any], sent: Any, thrown: Exception | None) -> tuple[bool, Any]:
    """One stretch: (False, the work it yields) or (True, the generator's result). StopIteration is
    caught here: raised through the await in ``drive`` it would turn into a RuntimeError."""
    try:
        work = steps.send(sent) if thrown is None else steps.throw(thrown)
    except StopIteration as finished:
        return True, finished.value
    return False, work
