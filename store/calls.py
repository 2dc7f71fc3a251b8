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
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import anyio

from confledger.store.durations import elapsed_ms

__all__ = ["CallOutcome", "UserCalls"]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one call did: returned ``value``, raised ``error``, overran its deadline, or was not made."""

    value: object = None
    error: Exception | None = None
    timed_out: bool = False
    # Not called: the previous call of the same key overran its deadline and has not returned yet.
    still_running: bool = False
    duration_ms: float = 0.0


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
