"""A run of synchronous calls in one worker thread, each under its own deadline.

A reload calls user code (validators, service callbacks) that may block, so each sync call runs off the
event loop. One thread hop per call costs far more than a no-op callback (a wake-up of the loop, a GIL
hand-over and a context copy each way), so consecutive sync calls share one hop: the worker runs them in
order and the loop wakes once, when all are done.

Each call keeps its own timeout, measured from when it starts, exactly as if it had its own hop. The loop
sleeps until the earliest deadline any call could have; if the batch is still running then, it looks at
which call is running and since when. A call past its deadline is recorded as timed out and abandoned with its thread
(a thread cannot be killed); the calls after it run in a fresh batch, so one hung callback never delays
the next one beyond its own timeout.

A call may carry a span: it is started in the worker when the call starts and made current there, so
spans the user's code opens nest under it; it is ended by whichever side records the call's outcome.
The calls of one batch share one copy of the caller's context variables, as calls on one thread would.

The hop itself is written against asyncio (what uvicorn and FastAPI run) rather than through
``anyio.to_thread``: a hop is the reload's largest fixed cost after the two fsyncs, and anyio's
capacity limiter, run-vars and cancel-scope bookkeeping cost as much again as the thread hand-over
itself. Here a hop is one queue put, one ``call_soon_threadsafe`` and one future; cancellation is
asyncio's own (which anyio's cancel scopes use on asyncio too), and timeouts are the batch's deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace

__all__ = [
    "NO_SPANS",
    "CallOutcome",
    "SyncCall",
    "finish_awaitable",
    "run_in_worker",
    "run_in_worker_then",
    "span_starter",
]

# The tracer that means "open no spans at all". Under an operation span that is not recording (no
# tracer provider configured, or the trace not sampled) its children would not be recorded either,
# yet each non-recording span still costs a context attach and detach and an outcome to format.
NO_SPANS: trace.Tracer = trace.NoOpTracer()


def span_starter(
    tracer: trace.Tracer, name: str, attributes: dict[str, str] | None = None
) -> Callable[[], trace.Span] | None:
    """What a ``SyncCall`` needs to open a span named ``name``; None under ``NO_SPANS``."""
    if tracer is NO_SPANS:
        return None
    # A partial, not a lambda: one Python frame fewer for every span a reload opens.
    return functools.partial(tracer.start_span, name, attributes=attributes)


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one call did: returned ``value``, raised ``error``, or overran its timeout."""

    value: object = None
    error: Exception | None = None
    timed_out: bool = False
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SyncCall:
    """One call of a batch.

    ``timeout`` is None for confledger's own work (loading a file, appending to the log), which has its
    own limits. ``stop_on_error``: when the call raises, the rest of the batch does not run (a failed
    load leaves nothing to validate; a failed append must not be followed by notifying services).
    ``start_span`` / ``finish_span`` open the call's span and set its outcome attributes before it ends.
    """

    function: Callable[[], object]
    timeout: float | None = None
    stop_on_error: bool = False
    start_span: Callable[[], trace.Span] | None = None
    finish_span: Callable[[trace.Span, CallOutcome], None] | None = None


@dataclass(slots=True)
class _Batch:
    calls: Sequence[SyncCall]
    then: Callable[[list[CallOutcome]], object] | None = None
    then_outcome: CallOutcome | None = None
    outcomes: list[CallOutcome] = field(default_factory=list)
    # One lock orders the worker starting/finishing a call against the loop declaring it timed out, so
    # exactly one side records each outcome and ends its span.
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    version: int = 0
    # Threads sleeping on ``changed`` (the slow path only): with none, a bump skips the notify, which
    # costs more than the call it reports when the calls are no-ops.
    watchers: int = 0
    running: int | None = None
    started: float = 0.0
    span: trace.Span | None = None
    abandoned: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    # --- worker side ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            for index, call in enumerate(self.calls):
                with self.lock:
                    if self.abandoned:
                        return
                    span = call.start_span() if call.start_span is not None else None
                    self.running, self.started, self.span = index, time.perf_counter(), span
                    self._bump()
                token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
                error: Exception | None = None
                value: object = None
                try:
                    value = call.function()
                except Exception as exc:
                    error = exc
                finally:
                    if token is not None:
                        otel_context.detach(token)
                outcome = CallOutcome(value, error, False, (time.perf_counter() - self.started) * 1000)
                with self.lock:
                    if self.abandoned:
                        return  # the loop recorded this call as timed out and closed its span
                    self.outcomes.append(outcome)
                    self.running, self.span = None, None
                    self._bump()
                # Outside the lock: a span processor may export synchronously, and the loop must not
                # wait on that to check a deadline. Recorded above, so no other side touches it.
                _close(call, span, outcome)
                if error is not None and call.stop_on_error:
                    return
            if self.then is not None:
                self._run_then(self.then)
        finally:
            with self.lock:
                self.finished = True
                self._bump()

    def _run_then(self, then: Callable[[list[CallOutcome]], object]) -> None:
        with self.lock:
            if self.abandoned:
                return
            outcomes = list(self.outcomes)
        started = time.perf_counter()
        try:
            self.then_outcome = CallOutcome(then(outcomes), None, False, _ms_since(started))
        except Exception as exc:
            self.then_outcome = CallOutcome(None, exc, False, _ms_since(started))

    def _bump(self) -> None:
        self.version += 1
        if self.watchers:
            self.changed.notify_all()

    def wait_for_change(self, seen: int, timeout: float | None) -> None:
        with self.changed:
            self.watchers += 1
            try:
                self.changed.wait_for(lambda: self.version != seen, timeout)
            finally:
                self.watchers -= 1

    # --- loop side -----------------------------------------------------------------------------------

    def check(self) -> tuple[bool, int, float | None]:
        """(done, version, seconds until the running call's deadline); records a timeout when due."""
        with self.lock:
            if self.finished or self.abandoned:
                return True, self.version, None
            if self.running is None:
                return False, self.version, None  # between two calls: the next one is about to start
            call = self.calls[self.running]
            if call.timeout is None:
                return False, self.version, None
            elapsed = time.perf_counter() - self.started
            if elapsed < call.timeout:
                return False, self.version, call.timeout - elapsed
            outcome = CallOutcome(timed_out=True, duration_ms=elapsed * 1000)
            self.outcomes.append(outcome)
            _close(call, self.span, outcome)
            self.abandoned = True
            return True, self.version, None

    def abandon(self) -> None:
        """The caller was cancelled: run nothing more, and close the span of the call left running."""
        with self.lock:
            if self.finished or self.abandoned:
                return
            self.abandoned = True
            if self.running is not None and self.span is not None:
                self.span.set_status(trace.Status(trace.StatusCode.ERROR, "cancelled"))
                self.span.end()

    async def wait(self) -> None:
        # No call can reach its deadline before now + its timeout (none has started yet), so the
        # shortest timeout is the earliest moment worth looking; waking early only costs a look.
        first = min((call.timeout for call in self.calls if call.timeout is not None), default=math.inf)
        try:
            if await _hop(self.run, first):
                return
            # The first deadline passed with the batch still running: the slow path, where a second
            # worker sleeps on the batch's condition until the next call starts or a deadline is due.
            while True:
                done, version, remaining = self.check()
                if done:
                    return
                await _hop(functools.partial(self.wait_for_change, version, remaining), math.inf)
        except BaseException:
            self.abandon()
            raise


class _Worker:
    """One worker thread: runs the jobs it is handed, and retires after a while with nothing to do."""

    def __init__(self, pool: _WorkerPool) -> None:
        self.pool = pool
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="confledger-worker", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self.pool.retire(self):
                    return
                continue  # handed a job just as it timed out: it is already in the queue
            job(self.release)

    def release(self) -> None:
        self.pool.release(self)


class _WorkerPool:
    """Idle worker threads, reused; a new one starts when none is idle.

    A thread stuck in a hung call is never idle again, so it is never handed another job: the pool
    grows by one thread per abandoned call, as any pool that cannot kill a thread must. Threads are
    daemons, so a hung one does not hold up the interpreter's exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, job: _Job) -> None:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        (worker or _Worker(self)).jobs.put(job)

    def release(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        with self._lock:
            if worker not in self._idle:
                return False
            self._idle.remove(worker)
            return True


# A job gets the callable that marks its thread idle again.
_Job = Callable[[Callable[[], None]], None]
_IDLE_SECONDS = 10.0
_pool = _WorkerPool()
_thread_state = threading.local()


async def _hop(function: Callable[[], None], timeout: float) -> bool:
    """Run ``function`` in a worker thread; True once it has returned, False when ``timeout`` came first.

    After a False it keeps running in its thread: the caller decides what its lateness means. What it
    raises is raised here (the batch's own functions record their calls' errors instead of raising).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    context = contextvars.copy_context()

    def job(release: Callable[[], None]) -> None:
        _thread_state.loop = loop
        error: BaseException | None = None
        try:
            context.run(function)
        except BaseException as exc:  # handed to the loop; the worker thread lives on
            error = exc
        finally:
            _thread_state.loop = None
        # Idle again before the loop hears of it, so the loop's next hop reuses this thread.
        release()
        # A RuntimeError: the loop closed while an abandoned call was still running; nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, done, error)

    _pool.submit(job)
    timer = None if math.isinf(timeout) else loop.call_later(timeout, _resolve, done, None, False)
    try:
        return await done
    finally:
        if timer is not None:
            timer.cancel()


def _resolve(done: asyncio.Future[bool], error: BaseException | None, finished: bool = True) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(finished)


def _close(call: SyncCall, span: trace.Span | None, outcome: CallOutcome) -> None:
    if span is None:
        return
    if call.finish_span is not None:
        call.finish_span(span, outcome)
    span.end()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def run_in_worker(calls: Sequence[SyncCall]) -> list[CallOutcome]:
    """Run ``calls`` in order off the event loop; one outcome per call that ran.

    Fewer outcomes than calls means a ``stop_on_error`` call raised (its outcome is the last one).
    """
    outcomes, _ = await run_in_worker_then(calls, None)
    return outcomes


async def run_in_worker_then(
    calls: Sequence[SyncCall], then: Callable[[list[CallOutcome]], object] | None
) -> tuple[list[CallOutcome], CallOutcome | None]:
    """``run_in_worker``, then ``then(outcomes)`` in the same hop when every call ran in one batch.

    ``then`` is confledger's own follow-up (recording what the calls did), so it has no deadline. Its
    outcome is None when it did not run there (a call timed out or stopped the batch): the caller
    then does that work itself.
    """
    outcomes: list[CallOutcome] = []
    then_outcome: CallOutcome | None = None
    remaining = list(calls)
    first = True
    while remaining:
        batch = _Batch(remaining, then if first else None)
        first = False
        await batch.wait()
        then_outcome = then_outcome or batch.then_outcome
        outcomes.extend(batch.outcomes)
        ran = len(batch.outcomes)
        if ran == 0 or ran == len(remaining):
            break
        if not batch.outcomes[-1].timed_out or remaining[ran - 1].stop_on_error:
            break  # stopped on an error: what did not run must not run now either
        remaining = remaining[ran:]
    return outcomes, then_outcome


def finish_awaitable(result: object) -> object:
    """In a worker: run ``result`` on the event loop if it is awaitable, else return it as it is.

    A sync callable that hands back a coroutine (a lambda around an async function) has done nothing
    yet; running it from the call keeps it inside that call's deadline and span.
    """
    if not inspect.isawaitable(result):
        return result
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_state, "loop", None)
    if loop is None:
        raise RuntimeError("finish_awaitable runs only inside a batch's worker thread")
    return asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable
