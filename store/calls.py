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
out), the thread starts nothing more, and the calls after it go on in a new turn.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
from opentelemetry import trace

from confledger.store.durations import elapsed_ms

__all__ = ["CallOutcome", "Then", "TurnCall", "UserCalls"]


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


class Then:
    """The rest of an operation's straight line (``store.steps``), offered to a turn's worker thread.

    Run there right after the turn's last call, when every call ended on time with a plain value, it
    saves the operation a hop back to the loop and out again. Given the caller's answer (``after``
    makes it from the turn's outcomes and keeps it as ``answer``); what it returns or raises is kept for
    the loop (``result``). It runs at most once; when it did not run, the caller runs the rest itself
    with the answer the turn returned.
    """

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self._function = function
        self.answer: list[Any] = []
        self._value: Any = None
        self._error: BaseException | None = None
        self._started = False
        self._done = threading.Event()

    @property
    def ran(self) -> bool:
        return self._started

    @property
    def running(self) -> bool:
        """Started in a turn's thread and not yet ended (the waiting side was cancelled meanwhile)."""
        return self._started and not self._done.is_set()

    def after(
        self, earlier: Sequence[Any], finish: Callable[[list[tuple[CallOutcome, trace.Span]]], list[Any]]
    ) -> Callable[[list[tuple[CallOutcome, trace.Span]]], None]:
        """What a turn's thread runs after its calls: the caller's whole answer (``earlier``, then what
        ``finish`` makes of this turn's outcomes), kept as ``answer``, then the rest with it."""

        def carry_on(pairs: list[tuple[CallOutcome, trace.Span]]) -> None:
            self.answer = [*earlier, *finish(pairs)]
            self.run(self.answer)

        return carry_on

    def run(self, answer: Any) -> None:
        self._started = True
        try:
            self._value = self._function(answer)
        except BaseException as exc:  # handed to the loop as it is, as an awaited call would raise it
            self._error = exc
        finally:
            self._done.set()

    def wait(self) -> None:
        """Until a run that started has ended (blocking)."""
        if self._started:
            self._done.wait()

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(slots=True)
class _Turn:
    """Calls made one after another in one worker thread, shared with the side waiting for them (under
    ``UserCalls._lock``): the call under way or next to start, since when, and what each call gave."""

    calls: Sequence[TurnCall]
    outcomes: list[CallOutcome | None]
    current: int = 0  # the call running, or the next to start
    since: float = field(default_factory=time.perf_counter)  # when it started, or the one before ended
    given_up: bool = False  # the waiting side has moved on: start nothing more
    finished: threading.Event = field(default_factory=threading.Event)  # the thread is done with it
    # Run in the thread after the last call when all ended on time (``Then``); ``continuing`` once it has
    # started: from then on no call can be late, and the waiting side waits for the thread to finish.
    then: Callable[[], None] | None = None
    continuing: bool = False

    def deadline(self) -> float:
        """When the call under way (or next to start) is late."""
        return self.since + self.calls[self.current].timeout

    def wake_at(self, now: float) -> float:
        """The first moment a call still to finish could be late. The waiting side is not told when the
        thread moves on to the next call (that would cost the hop the turn saves), so it assumes a later
        call may start right now: it wakes at the current call's deadline or a later one's shortest
        timeout from now, whichever comes first, and then looks again."""
        later = [call.timeout for call in self.calls[self.current + 1 :]]
        return min(self.deadline(), now + min(later)) if later else self.deadline()


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
        self,
        calls: Sequence[TurnCall],
        tracer: trace.Tracer,
        then: Callable[[list[tuple[CallOutcome, trace.Span]]], None] | None = None,
    ) -> list[tuple[CallOutcome, trace.Span]]:
        """Call each of ``calls`` in order in one worker thread, each within its own deadline (see the
        module docstring): one outcome per call, in order, each with its span.

        A call's span opens in the worker thread as the call starts, so spans the function opens nest
        under it; a call never started gets one opened now. The caller records what the outcome means
        on the span and ends it (a timed-out call's at its deadline, though its thread still runs). A
        lone call goes through ``call``, whose bookkeeping costs less than a turn's for one, unless
        there is a ``then``: it is given the outcomes with their spans in the thread, after the last call,
        when every call ended on time with a plain value (the caller then finds it has run).
        """
        opened: list[trace.Span | None] = [None] * len(calls)
        spanned = [
            dataclasses.replace(call, function=_in_own_span(tracer, call, opened, index))
            for index, call in enumerate(calls)
        ]
        if len(spanned) == 1 and then is None:
            [call] = spanned
            outcomes = [await self.call(call.key, call.function, timeout=call.timeout, in_thread=True)]
        else:
            continuation = None
            if then is not None:
                after = then

                def continuation(turn: _Turn) -> None:
                    pairs: list[tuple[CallOutcome, trace.Span]] = []
                    for call, outcome, span in zip(calls, turn.outcomes, opened, strict=True):
                        assert outcome is not None  # the turn is over: every call has its outcome
                        # A call not made (its previous call still runs) gets its span now.
                        pairs.append((outcome, span or _span_of(tracer, call)))
                    after(pairs)

            outcomes = await self._turn(spanned, continuation)
        return [
            (outcome, span or _span_of(tracer, call))
            for call, outcome, span in zip(calls, outcomes, opened, strict=True)
        ]

    async def _turn(
        self, calls: Sequence[TurnCall], then: Callable[[_Turn], None] | None = None
    ) -> list[CallOutcome]:
        turn = _Turn(calls, [None] * len(calls))
        if then is not None:
            turn.then = functools.partial(then, turn)
        try:
            # The thread is awaited in this task, under a deadline at the first moment a call could be
            # late: a task to run it beside a watcher costs the loop three more turns for each group of
            # calls, and on a busy loop each turn waits behind every request ready to run.
            with self._lock:
                first_look = turn.wake_at(time.perf_counter())
            with anyio.CancelScope(deadline=_loop_time_of(first_look)) as scope:
                await anyio.to_thread.run_sync(
                    self._run_turn, turn, abandon_on_cancel=True, limiter=self.limiter
                )
            if scope.cancelled_caught:
                await self._watch(turn)
        finally:
            with self._lock:
                turn.given_up = True  # cancelled from outside too: the thread starts nothing more
        outcomes = list(turn.outcomes)
        rest = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if rest:
            # The calls after an abandoned one were never started: they get a thread of their own.
            for index, outcome in zip(rest, await self._turn([calls[i] for i in rest]), strict=True):
                outcomes[index] = outcome
        return [await self._settled(call, outcome) for call, outcome in zip(calls, outcomes, strict=True)]

    async def _watch(self, turn: _Turn) -> None:
        """Wait for a turn that outlived its first look: until it finishes, or until the call under way
        is late (then it is abandoned and the turn given up).

        anyio has abandoned the thread at that first look, so from here on it runs without a limiter
        token (its calls are still keyed: the bound on threads in the module docstring holds). It is
        waited for from a second thread, one look at a time, each look at the next moment a call
        could be late."""
        while not turn.finished.is_set() and not self._give_up_if_late(turn):
            with self._lock:
                wait = None if turn.continuing else turn.wake_at(time.perf_counter()) - time.perf_counter()
            await anyio.to_thread.run_sync(
                turn.finished.wait, None if wait is None else max(0.0, wait), abandon_on_cancel=True
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

    def _run_turn(self, turn: _Turn) -> None:
        try:
            self._make_calls(turn)
        finally:
            turn.finished.set()

    def _make_calls(self, turn: _Turn) -> None:
        for index, call in enumerate(turn.calls):
            with self._lock:
                if turn.given_up:
                    return
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
            if turn.then is None or turn.given_up:
                return
            if any(outcome is None or inspect.isawaitable(outcome.value) for outcome in turn.outcomes):
                return  # an awaitable is awaited on the loop: the rest waits for it there
            turn.continuing = True
        turn.then()

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
