"""An operation as one straight line of blocking code, run across worker threads by ``drive``.

A reload, a rollback, and following one change another instance decided are each written as a generator
of plain blocking code: take the fleet's turn, read and check the source, append to the log. It yields
only where user code has to run (:class:`RunValidators`, :class:`Notify`), and gets back what that code
said. ``drive`` runs the generator in anyio worker threads and runs the user code each yield asks for as it
always ran: sync functions in their worker-thread turn, under their own deadlines, async ones on the
loop (``store.calls``). When a yield's user code is sync and ends on time, the thread that ran it runs the
next stretch too (``store.calls.Then``); otherwise that stretch gets a hop of its own.

Why a generator rather than async code with a thread hop per blocking step: on a busy event loop each
hop waits behind every ready request several times (anyio's checkpoint, its limiter's checkpoint, the
result's callback, the task's wake-up), and under load that waiting, not the work, is most of an
operation's time. Here the hops are set by the user code alone: an operation with no validator and no
service is one hop whatever it writes; one with sync validators and sync services is three (the first
stretch, the validators with the next, the services with the last).
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

from confledger.store.calls import Then
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


async def drive(steps: Steps[T], perform: Callable[[Work, Then], Awaitable[Any]]) -> T:
    """Run ``steps`` to its end: each stretch in a worker thread, each yield's user code by ``perform``.

    ``perform`` is offered the next stretch as a ``Then``: when the user code ends in sync calls that
    all end on time, their worker thread runs the stretch straight after them (one hop for both).
    Otherwise the stretch gets a hop of its own, sent what ``perform`` returned. An exception ``perform``
    raises is thrown into the generator at its yield, as an awaited call would raise it there. If the
    caller is cancelled between two stretches, the generator is closed in a worker thread (shielded),
    so its ``finally`` clauses (releasing the fleet's turn) run off the loop.
    """
    then: Then | None = None
    try:
        advanced = await anyio.to_thread.run_sync(_advance, steps, None, None)
        while True:
            done, value = advanced
            if done:
                return value  # type: ignore[no-any-return]
            then = Then(functools.partial(_advance, steps, thrown=None))
            try:
                answer = await perform(value, then)
            except Exception as exc:
                if then.ran:  # the stretch ran already: its outcome is the one that counts
                    raise
                advanced = await anyio.to_thread.run_sync(_advance, steps, None, exc)
                continue
            if then.ran:
                advanced = then.result()
            else:
                advanced = await anyio.to_thread.run_sync(_advance, steps, answer, None)
    finally:
        with anyio.CancelScope(shield=True):
            if then is not None and then.running:
                # Cancelled while the user code's thread ran the stretch: it is not to be closed under it.
                await anyio.to_thread.run_sync(then.wait)
            if inspect.getgeneratorstate(steps) != inspect.GEN_CLOSED:
                await anyio.to_thread.run_sync(_close_when_still, steps)


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
