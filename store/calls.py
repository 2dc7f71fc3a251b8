"""Calling user code (custom validators, service callbacks) under a deadline, off the event loop.

One concurrency model, anyio's: a sync function runs in an anyio worker thread
(``anyio.to_thread.run_sync``) drawn through one ``CapacityLimiter``; an async function runs on the
loop. Each call is bounded by ``anyio.move_on_after`` (not ``fail_after``: a ``TimeoutError`` the
function raises itself, a socket timeout, is its own error, not this deadline expiring). A sync function
that hands back an awaitable (a lambda around an async function) has it awaited on the loop, inside the
same deadline.

A thread cannot be killed. A sync call past its deadline is abandoned (``abandon_on_cancel=True``): the
caller records a timeout and goes on while the function keeps its thread until it returns. An abandoned
call no longer holds its limiter token, so the limiter alone would not bound the threads: a callback
that hangs forever, called again by every reload, would take one more thread each time. Hence one rule:
a function (a key such as ``service:cache``) has at most one call in flight. While its abandoned call
is still running it is not called again; the caller gets ``still_running`` and records an error. The
threads held by abandoned calls are therefore at most the number of registered callbacks and
validators, and the threads running calls on time at most the limiter's tokens.

Consecutive sync calls (the validators of a model, the sync callbacks of a reload) go to one worker
thread together (``call_in_turn``), one after another, so a reload pays one thread hop for them rather
than one each: a hop costs a fraction of a millisecond on an idle machine and a turn of the event loop
on a busy one. Each call keeps its own deadline, counted from its own start. The waiting side reads
which call is running and since when; when that call overruns, it alone is abandoned (recorded as timed
out), the thread starts nothing more, and the calls after it go on in a new turn. The waiting side's
first look comes when a later call could first be late; a turn no thread has taken by then (every thread
busy, or a loaded machine slow to start one) is handed to a thread again, from a task no look cancels,
since anyio never runs a thread job cancelled before a worker takes it: its first call is late only at
its own deadline.

An operation's own thread (``Line``, ``store.steps.drive``) makes such turns itself between the stretches
of its blocking work, so a reload whose user code is sync is one hop in all; the loop only watches the
deadlines of each turn as it waits for that thread (``run_line``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
from opentelemetry import trace

from confledger.store.durations import elapsed_ms

__all__ = ["CallOutcome", "Line", "TurnCall", "TurnPlan", "UserCalls"]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one call did: returned ``value``, raised ``error``, overran its deadline, or was not made."""

    value: object = None
    error: Exception | None = None
    timed_out: bool = False
    # Not called: the previous call of the same key overran its deadline and has not returned yet.
    still_running: bool = False
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class TurnCall:
    """One sync call of a turn: its key (one call in flight per key), the function, its own deadline,
    and the span it runs in."""

    key: str
    function: Callable[[], object]
    timeout: float
    span_name: str = "confledger.call"
    span_attributes: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """A piece of an operation's user code that is sync throughout (``store.steps``): its calls, to be
    made one after another in one thread, and ``finish``, which makes the line's answer of their
    outcomes (each with its span, which ``finish`` ends). ``finish`` runs in the thread that made the
    calls when they all ended on time with a plain value, else on the loop."""

    calls: Sequence[TurnCall]
    finish: Callable[[list[tuple[CallOutcome, trace.Span]]], Any]
    tracer: trace.Tracer


@dataclass(slots=True)
class _Turn:
    """Calls made one after another in one worker thread, shared with the side waiting for them (under
    ``UserCalls._lock``): the call under way or next to start, since when, and what each call gave.

    A line's turn (``Line``) is the same record, reused by each turn its thread makes between stretches:
    ``continuing`` while a stretch runs (no call can be late then), and the waiting side looks again
    every ``shortest`` seconds, the shortest timeout any call of the line may have."""

    calls: Sequence[TurnCall]
    outcomes: list[CallOutcome | None]
    current: int = 0  # the call running, or the next to start
    since: float = field(default_factory=time.perf_counter)  # when it started, or the one before ended
    given_up: bool = False  # the waiting side has moved on: start nothing more
    finished: threading.Event = field(default_factory=threading.Event)  # the thread is done with it
    # Which job handed to a thread may run it (see ``UserCalls._turn``), and whether one has.
    job: int = 0
    started: bool = False
    continuing: bool = False
    shortest: float | None = None  # a line's: None for a turn of its own

    def deadline(self) -> float:
        """When the call under way (or next to start) is late."""
        return self.since + self.calls[self.current].timeout

    def wake_at(self, now: float) -> float:
        """The first moment a call still to finish could be late. The waiting side is not told when the
        thread moves on to the next call (that would cost the hop the turn saves), so it assumes a later
        call may start right now: it wakes at the current call's deadline or a later one's shortest
        timeout from now, whichever comes first, and then looks again. While a line's stretch runs, a
        turn may start at any moment: no call of it is late before ``shortest`` from now."""
        if self.continuing:
            return now + (math.inf if self.shortest is None else self.shortest)
        later = [call.timeout for call in self.calls[self.current + 1 :]]
        return min(self.deadline(), now + min(later)) if later else self.deadline()


class Line:
    """A worker thread's run of an operation's line (``store.steps.drive``): its stretches, and the
    turns of sync user code it makes between them (``make``), whose deadlines the loop watches as it
    waits for the thread (``UserCalls.run_line``).

    A turn the thread cannot finish (a call late, so given up by the loop, or one that handed back an
    awaitable) is left to the loop (``unfinished``; ``UserCalls.finish``), and the line's thread starts
    nothing more. One ``Line`` per hop: the thread of an abandoned one never touches the next."""

    def __init__(self, calls: UserCalls, shortest: float) -> None:
        self._calls = calls
        self.turn = _Turn((), [], continuing=True, shortest=shortest)
        self.plan: TurnPlan | None = None
        self.opened: list[trace.Span | None] = []
        self.unfinished = False
        # Whether the thread took the line up: one given up before that (its caller cancelled, or its
        # first look past before a thread was free: anyio then never runs it) never starts.
        self.started = False
        self.value: Any = None
        self.error: BaseException | None = None

    def make(self, plan: TurnPlan) -> tuple[bool, Any]:
        """In the line's thread: make ``plan``'s calls, each within its deadline, and return (True, its
        answer). (False, None) when the loop is to make or finish them: it has given the line up, or a
        call's timeout is shorter than the loop's looks (``shortest``: it would be seen late), or the
        turn is ``unfinished``."""
        turn = self.turn
        if turn.shortest is not None and any(call.timeout < turn.shortest for call in plan.calls):
            return False, None
        opened: list[trace.Span | None] = [None] * len(plan.calls)
        spanned = [
            dataclasses.replace(call, function=_in_own_span(plan.tracer, call, opened, index))
            for index, call in enumerate(plan.calls)
        ]
        with self._calls._lock:
            if turn.given_up:
                return False, None
            self.plan, self.opened = plan, opened
            turn.calls, turn.outcomes = spanned, [None] * len(spanned)
            turn.current, turn.since, turn.continuing = 0, time.perf_counter(), False
        if not self._calls._make_calls(turn):
            self.unfinished = True
            return False, None
        pairs = []
        for call, outcome, span in zip(spanned, turn.outcomes, opened, strict=True):
            assert outcome is not None  # the turn went on: every call has its outcome
            pairs.append((outcome, span or _span_of(plan.tracer, call)))
        return True, plan.finish(pairs)


def _loop_time_of(moment: float) -> float:
    """``moment`` (a ``time.perf_counter`` reading) on the event loop's clock, for a cancel scope."""
    return anyio.current_time() + (moment - time.perf_counter())


class _State(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLED = "cancelled"


class UserCalls:
    """Runs user functions with deadlines; at most ``max_threads`` threads run calls that are on time."""

    def __init__(self, max_threads: int) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.limiter = anyio.CapacityLimiter(max_threads)
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def in_flight(self) -> frozenset[str]:
        """Keys with a call under way, including calls abandoned at their deadline that still run."""
        with self._lock:
            return frozenset(self._in_flight)

    async def call(
        self, key: str, function: Callable[[], object], *, timeout: float, in_thread: bool
    ) -> CallOutcome:
        """Call ``function`` (in a worker thread when ``in_thread``), giving up after ``timeout`` seconds."""
        with self._lock:
            if key in self._in_flight:
                return CallOutcome(still_running=True)
            self._in_flight.add(key)
        started = time.perf_counter()
        value: object = None
        error: Exception | None = None
        # For a thread call, who releases the key: the worker once the function returns, or this side
        # when the call was given up before a worker started it (anyio then never runs it).
        state = [_State.QUEUED]
        try:
            with anyio.move_on_after(timeout) as deadline:
                if in_thread:
                    returned = await anyio.to_thread.run_sync(
                        self._releasing(key, function, state), abandon_on_cancel=True, limiter=self.limiter
                    )
                else:
                    returned = function()
                value = (await returned) if inspect.isawaitable(returned) else returned
        except Exception as exc:
            error = exc
        finally:
            with self._lock:
                if not in_thread or state[0] is _State.QUEUED:
                    state[0] = _State.CANCELLED
                    self._in_flight.discard(key)
        duration_ms = elapsed_ms(started)
        return CallOutcome(value, error, deadline.cancelled_caught, False, duration_ms)

    async def call_in_turn(
        self, calls: Sequence[TurnCall], tracer: trace.Tracer
    ) -> list[tuple[CallOutcome, trace.Span]]:
        """Call each of ``calls`` in order in one worker thread, each within its own deadline (see the
        module docstring): one outcome per call, in order, each with its span.

        A call's span opens in the worker thread as the call starts, so spans the function opens nest
        under it; a call never started gets one opened now. The caller records what the outcome means
        on the span and ends it (a timed-out call's at its deadline, though its thread still runs). A
        lone call goes through ``call``, whose bookkeeping costs less than a turn's for one.
        """
        opened: list[trace.Span | None] = [None] * len(calls)
        spanned = [
            dataclasses.replace(call, function=_in_own_span(tracer, call, opened, index))
            for index, call in enumerate(calls)
        ]
        if len(spanned) == 1:
            [call] = spanned
            outcomes = [await self.call(call.key, call.function, timeout=call.timeout, in_thread=True)]
        else:
            outcomes = await self._turn(spanned)
        return [
            (outcome, span or _span_of(tracer, call))
            for call, outcome, span in zip(calls, outcomes, opened, strict=True)
        ]

    async def call_planned(self, plan: TurnPlan) -> Any:
        """``plan``'s calls in one turn, and the answer ``finish`` makes of them (on the loop)."""
        return plan.finish(await self.call_in_turn(plan.calls, plan.tracer))

    def line(self, shortest: float) -> Line:
        """A line's run for one hop (``run_line``); ``shortest``: no call it makes has a shorter timeout."""
        return Line(self, shortest)

    async def run_line(self, line: Line, body: Callable[[], Any]) -> Any:
        """Run ``body`` (a line's stretches and the turns it ``make``s) in a worker thread, watching each
        turn's deadlines as ``_turn`` does: what it returns or raises. When a call is late, the turn is
        given up and left to ``finish`` (``line.unfinished``), and this returns None without waiting for
        the thread, which starts nothing more. None too, with ``line.started`` false, when no thread took
        the line up by its first look: it never will, and the caller runs it again. The thread holds a
        token of the limiter, as a turn's does: it runs user calls."""
        turn = line.turn

        def run() -> None:
            try:
                with self._lock:
                    if turn.given_up:
                        return
                    line.started = True
                line.value = body()
            except BaseException as exc:  # raised on the loop, as a call in the thread raises there
                line.error = exc
            finally:
                turn.finished.set()

        with self._lock:
            first_look = turn.wake_at(time.perf_counter())
        with anyio.CancelScope(deadline=_loop_time_of(first_look)) as scope:
            await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self.limiter)
        if scope.cancelled_caught:
            with self._lock:
                if not line.started:
                    turn.given_up = True
                    return None
            await self._watch(turn)
            if not turn.finished.is_set():
                line.unfinished = True
                return None
        if line.error is not None:
            raise line.error
        return line.value

    async def finish(self, line: Line) -> Any:
        """On the loop, the turn a line's thread left unfinished: the calls after a late one in a turn
        of their own, awaitables awaited, and the answer its plan makes of the outcomes."""
        plan, turn = line.plan, line.turn
        assert plan is not None  # a turn was made, and left unfinished
        outcomes = await self._completed(turn.calls, list(turn.outcomes))
        return plan.finish(
            [
                (outcome, span or _span_of(plan.tracer, call))
                for call, outcome, span in zip(turn.calls, outcomes, line.opened, strict=True)
            ]
        )

    def stop(self, line: Line) -> bool:
        """Give ``line`` up (its caller is cancelled): its thread starts nothing more. Whether a stretch
        may still be running in it, which the caller must wait for before closing the line."""
        with self._lock:
            line.turn.given_up = True
            return line.started and line.turn.continuing and not line.turn.finished.is_set()

    async def _turn(self, calls: Sequence[TurnCall]) -> list[CallOutcome]:
        turn = _Turn(calls, [None] * len(calls))
        try:
            # The thread is awaited in this task, under a deadline at the first moment a call could be
            # late: a task to run it beside a watcher costs the loop three more turns for each group of
            # calls, and on a busy loop each turn waits behind every request ready to run.
            with self._lock:
                first_look = turn.wake_at(time.perf_counter())
            with anyio.CancelScope(deadline=_loop_time_of(first_look)) as scope:
                await anyio.to_thread.run_sync(
                    self._run_turn, turn, 0, abandon_on_cancel=True, limiter=self.limiter
                )
            if scope.cancelled_caught:
                if self._started_or_retired(turn):
                    await self._watch(turn)
                else:
                    await self._hand_over(turn)
        finally:
            with self._lock:
                turn.given_up = True  # cancelled from outside too: the thread starts nothing more
        return await self._completed(calls, list(turn.outcomes))

    async def _completed(
        self, calls: Sequence[TurnCall], outcomes: list[CallOutcome | None]
    ) -> list[CallOutcome]:
        """A turn's outcomes once it is over: the calls after an abandoned one (never started) made in a
        thread of their own, and awaitables awaited here."""
        rest = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if rest:
            for index, outcome in zip(rest, await self._turn([calls[i] for i in rest]), strict=True):
                outcomes[index] = outcome
        return [await self._settled(call, outcome) for call, outcome in zip(calls, outcomes, strict=True)]

    async def _hand_over(self, turn: _Turn) -> None:
        """Watch a turn no thread took by the first look (every thread busy, or a loaded machine slow to
        start one) while a task of its own hands it to a thread again. anyio never runs a thread job
        cancelled before a worker takes it, and another under a deadline at the next look could be
        dropped the same way, look after look: here no look cancels it, and the turn's first call is
        late only at its own deadline (then, still not taken, it never runs)."""
        with self._lock:
            job = turn.job
        async with anyio.create_task_group() as group:
            group.start_soon(
                functools.partial(
                    anyio.to_thread.run_sync,
                    self._run_turn,
                    turn,
                    job,
                    abandon_on_cancel=True,
                    limiter=self.limiter,
                )
            )
            try:
                await self._watch(turn)
            finally:
                group.cancel_scope.cancel()

    async def _watch(self, turn: _Turn) -> None:
        """Wait for a turn that outlived its first look: until it finishes, or until the call under way
        is late (then it is abandoned and the turn given up).

        anyio has abandoned the thread at that first look, so from here on it runs without a limiter
        token (its calls are still keyed: the bound on threads in the module docstring holds). It is
        waited for from a second thread, one look at a time, each look at the next moment a call
        could be late."""
        while not turn.finished.is_set() and not self._give_up_if_late(turn):
            with self._lock:
                now = time.perf_counter()
                wait = turn.wake_at(now) - now
            await anyio.to_thread.run_sync(
                turn.finished.wait, None if math.isinf(wait) else max(0.0, wait), abandon_on_cancel=True
            )

    def _give_up_if_late(self, turn: _Turn) -> bool:
        """Whether the call under way (or not yet started) is past its own deadline; if so it is recorded
        as timed out and the turn is given up. False when it is not (the turn may have moved on)."""
        with self._lock:
            if turn.continuing or time.perf_counter() < turn.deadline():
                return False
            turn.given_up = True
            if turn.outcomes[turn.current] is None:
                turn.outcomes[turn.current] = CallOutcome(timed_out=True, duration_ms=elapsed_ms(turn.since))
            return True

    def _started_or_retired(self, turn: _Turn) -> bool:
        """Whether a thread has started ``turn``; if none has, the job handed over is retired (a worker
        that takes it after all does nothing: the turn is handed over again)."""
        with self._lock:
            if not turn.started:
                turn.job += 1
            return turn.started

    def _run_turn(self, turn: _Turn, job: int) -> None:
        with self._lock:
            if job != turn.job:
                return  # retired before it started: another job runs the turn
            turn.started = True
        try:
            self._make_calls(turn)
        finally:
            turn.finished.set()

    def _make_calls(self, turn: _Turn) -> bool:
        """Make ``turn``'s calls in order in this thread. Whether its line's thread may go on to the next
        stretch: every call ended on time with a plain value, and the turn is a line's (``continuing``
        from then on: no call can be late, and the waiting side waits for the thread)."""
        for index, call in enumerate(turn.calls):
            with self._lock:
                if turn.given_up:
                    return False
                turn.current, turn.since = index, time.perf_counter()
                if call.key in self._in_flight:
                    turn.outcomes[index] = CallOutcome(still_running=True)
                    continue
                self._in_flight.add(call.key)
            value: object = None
            error: Exception | None = None
            try:
                value = call.function()
            except Exception as exc:
                error = exc
            finally:
                with self._lock:
                    self._in_flight.discard(call.key)
                    if turn.outcomes[index] is None:  # not already recorded as timed out
                        turn.outcomes[index] = CallOutcome(value, error, False, False, elapsed_ms(turn.since))
                    if not turn.given_up and index + 1 < len(turn.calls):
                        turn.current, turn.since = index + 1, time.perf_counter()
        with self._lock:
            if turn.shortest is None or turn.given_up:
                return False
            if any(outcome is None or inspect.isawaitable(outcome.value) for outcome in turn.outcomes):
                return False  # an awaitable is awaited on the loop: the rest of the line waits for it there
            turn.continuing = True
            return True

    async def _settled(self, call: TurnCall, outcome: CallOutcome | None) -> CallOutcome:
        """``outcome``, with an awaitable a sync function handed back awaited here, on the loop, within
        what is left of the call's deadline (as ``call`` does)."""
        assert outcome is not None
        if not inspect.isawaitable(outcome.value):
            return outcome
        started = time.perf_counter() - outcome.duration_ms / 1000
        value: object = None
        error: Exception | None = None
        with anyio.move_on_after(call.timeout - outcome.duration_ms / 1000) as deadline:
            try:
                value = await outcome.value
            except Exception as exc:
                error = exc
        return CallOutcome(value, error, deadline.cancelled_caught, False, elapsed_ms(started))

    def _releasing(
        self, key: str, function: Callable[[], object], state: list[_State]
    ) -> Callable[[], object]:
        def run() -> object:
            with self._lock:
                if state[0] is _State.CANCELLED:
                    return None  # given up before it started: nobody waits for it
                state[0] = _State.RUNNING
            try:
                return function()
            finally:
                with self._lock:
                    self._in_flight.discard(key)

        return run


def _span_of(tracer: trace.Tracer, call: TurnCall) -> trace.Span:
    """The span of a call that was never made, opened when its outcome is known."""
    return tracer.start_span(call.span_name, attributes=call.span_attributes)


def _in_own_span(
    tracer: trace.Tracer, call: TurnCall, opened: list[trace.Span | None], index: int
) -> Callable[[], object]:
    """``call``'s function, made to open its span as it starts (in its worker thread) and leave it in
    ``opened[index]`` for the caller to finish once the outcome is known."""

    def run() -> object:
        span = tracer.start_span(call.span_name, attributes=call.span_attributes, record_exception=False)
        opened[index] = span
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            return call.function()

    return run
