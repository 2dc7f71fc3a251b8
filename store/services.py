"""Registered service callbacks and how they are notified.

Sync callbacks run in a worker thread so a slow one never blocks the event loop (consecutive ones share
one thread hop); async callbacks run on the loop. Each runs under its own timeout. A thread cannot be
killed, so a timed-out sync callback is abandoned (its result ignored) and reported as ``timeout``; it is
the callback's job to be idempotent.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from opentelemetry import trace

from confledger.store.batch import CallOutcome, SyncCall, finish_awaitable, run_in_worker_then, span_starter
from confledger.store.events import ServiceOutcome
from confledger.store.validation import scrub

__all__ = ["Notified", "NotifyResult", "ServiceCallback", "ServiceRegistry", "ServiceSpec"]

ServiceCallback = Callable[[Any, Any], bool | Awaitable[bool | None] | None]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    callback: ServiceCallback
    priority: int = 0
    async_callback: bool = False
    timeout: float = 30.0
    order: int = 0


@dataclass(frozen=True, slots=True)
class NotifyResult:
    service: str
    priority: int
    outcome: ServiceOutcome
    duration_ms: float
    error: str | None = None

    @property
    def label(self) -> str:
        """The seed's ``"name:outcome"`` form."""
        return f"{self.service}:{self.outcome.value}"


class ServiceRegistry:
    """Callbacks by name; iteration order is priority (higher first), then registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, ServiceSpec] = {}
        self._counter = 0

    def register(
        self,
        name: str,
        callback: ServiceCallback,
        *,
        priority: int = 0,
        async_callback: bool = False,
        timeout: float = 30.0,
    ) -> ServiceSpec:
        if not name or not name.strip():
            raise ValueError("a service needs a name")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        is_async = async_callback or inspect.iscoroutinefunction(callback)
        with self._lock:
            self._counter += 1
            spec = ServiceSpec(name, callback, priority, is_async, timeout, self._counter)
            self._services[name] = spec
        return spec

    def unregister(self, name: str) -> bool:
        with self._lock:
            return self._services.pop(name, None) is not None

    def ordered(self) -> list[ServiceSpec]:
        with self._lock:
            specs = list(self._services.values())
        return sorted(specs, key=lambda spec: (-spec.priority, spec.order))

    def names(self) -> list[str]:
        return [spec.name for spec in self.ordered()]

    def __len__(self) -> int:
        return len(self._services)

    def __contains__(self, name: object) -> bool:
        return name in self._services

    async def notify(
        self,
        spec: ServiceSpec,
        old: Any,
        new: Any,
        *,
        secret_values: Iterable[str] = (),
        tracer: trace.Tracer | None = None,
        direction: str = "forward",
    ) -> NotifyResult:
        """Call one service: ``notify_all`` with a single spec."""
        notified = await self.notify_all(
            [spec], old, new, secret_values=secret_values, tracer=tracer, direction=direction
        )
        return notified.results[0]

    async def notify_all(
        self,
        specs: Sequence[ServiceSpec],
        old: Any,
        new: Any,
        *,
        secret_values: Iterable[str] = (),
        tracer: trace.Tracer | None = None,
        direction: str = "forward",
        before: Callable[[], object] | None = None,
        then: Callable[[list[NotifyResult]], object] | None = None,
    ) -> Notified:
        """Call each service in the given order with (old, new); one result per service.

        Consecutive sync callbacks share one worker-thread hop (``store.batch``), each under its own
        timeout. ``before`` runs in the same thread just ahead of the first service (the runner makes
        its start durable there); if it raises, no service is called and the exception propagates.
        ``then`` runs in that thread after the last service when every service was sync and answered
        in time (the runner records the outcome there); ``Notified.then`` says what it did, or is None.
        """
        tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        secret_values = list(secret_values)
        results: list[NotifyResult] = []
        then_outcome: CallOutcome | None = None
        index = 0
        while index < len(specs) or before is not None:
            run: list[ServiceSpec] = []
            while index + len(run) < len(specs) and not specs[index + len(run)].async_callback:
                run.append(specs[index + len(run)])
            calls = [self._sync_call(spec, old, new, tracer, direction, secret_values) for spec in run]
            if before is not None:
                calls.insert(0, SyncCall(before, stop_on_error=True))
            follow_up = None
            if then is not None and index == 0 and len(run) == len(specs):
                follow_up = _then_from_results(run, secret_values, then, skip=int(before is not None))
            if calls:
                outcomes, then_outcome = await run_in_worker_then(calls, follow_up)
                if before is not None:
                    first = outcomes.pop(0)
                    if first.error is not None:
                        raise first.error
                    before = None
                results += [
                    _result_of(spec, outcome, secret_values)
                    for spec, outcome in zip(run, outcomes, strict=True)
                ]
                index += len(run)
            if index < len(specs):  # an async callback: it runs on the loop
                results.append(
                    await self._notify_async(specs[index], old, new, secret_values, tracer, direction)
                )
                index += 1
        return Notified(results, then_outcome)

    def _sync_call(
        self,
        spec: ServiceSpec,
        old: Any,
        new: Any,
        tracer: trace.Tracer,
        direction: str,
        secret_values: list[str],
    ) -> SyncCall:
        def call() -> object:
            return finish_awaitable(spec.callback(old, new))

        def finish(span: trace.Span, outcome: CallOutcome) -> None:
            # Every attribute in one call when the outcome is known: each call takes the span's lock
            # and validates what it is given, and a span costs mostly per call, not per attribute.
            _close_span(span, _result_of(spec, outcome, secret_values), _span_attributes(spec, direction))

        return SyncCall(
            call,
            timeout=spec.timeout,
            start_span=span_starter(tracer, "confledger.service_callback"),
            finish_span=finish,
        )

    async def _notify_async(
        self,
        spec: ServiceSpec,
        old: Any,
        new: Any,
        secret_values: list[str],
        tracer: trace.Tracer,
        direction: str,
    ) -> NotifyResult:
        with tracer.start_as_current_span(
            "confledger.service_callback",
            attributes=_span_attributes(spec, direction),
            record_exception=False,
        ) as span:
            started = time.perf_counter()
            value: object = None
            error: Exception | None = None
            try:
                # move_on_after, not fail_after: a TimeoutError the callback raises itself (a socket
                # timeout) is an error it reported, not this deadline expiring.
                with anyio.move_on_after(spec.timeout) as deadline:
                    value = spec.callback(old, new)
                    if inspect.isawaitable(value):
                        value = await value
            except Exception as exc:
                error = exc
            outcome = CallOutcome(value, error, deadline.cancelled_caught, _ms(started))
            result = _result_of(spec, outcome, secret_values)
            _close_span(span, result)
            return result


@dataclass(frozen=True, slots=True)
class Notified:
    """The services' results, and what ``then`` did in the worker (None: it did not run there)."""

    results: list[NotifyResult]
    then: CallOutcome | None = None


def _then_from_results(
    specs: Sequence[ServiceSpec],
    secret_values: Iterable[str],
    then: Callable[[list[NotifyResult]], object],
    *,
    skip: int,
) -> Callable[[list[CallOutcome]], object]:
    def follow_up(outcomes: list[CallOutcome]) -> object:
        answered = outcomes[skip:]
        return then([_result_of(spec, o, secret_values) for spec, o in zip(specs, answered, strict=True)])

    return follow_up


def _span_attributes(spec: ServiceSpec, direction: str) -> dict[str, str | int]:
    return {
        "confledger.service": spec.name,
        "confledger.priority": spec.priority,
        "confledger.direction": direction,
    }


def _close_span(
    span: trace.Span, result: NotifyResult, attributes: dict[str, str | int] | None = None
) -> None:
    span.set_attributes(
        {
            **(attributes or {}),
            "confledger.outcome": result.outcome.value,
            "confledger.duration_ms": round(result.duration_ms, 3),
        }
    )
    if result.outcome is not ServiceOutcome.SUCCESS:
        span.set_status(trace.Status(trace.StatusCode.ERROR, result.outcome.value))


def _result_of(spec: ServiceSpec, outcome: CallOutcome, secret_values: Iterable[str]) -> NotifyResult:
    if outcome.timed_out:
        return NotifyResult(
            spec.name,
            spec.priority,
            ServiceOutcome.TIMEOUT,
            outcome.duration_ms,
            f"no answer within {spec.timeout:g}s",
        )
    if outcome.error is not None:
        message = scrub(f"{type(outcome.error).__name__}: {outcome.error}", secret_values)
        return NotifyResult(spec.name, spec.priority, ServiceOutcome.ERROR, outcome.duration_ms, message)
    # Only an explicit False is a refusal; a callback that returns nothing accepted the change.
    if outcome.value is False:
        return NotifyResult(
            spec.name, spec.priority, ServiceOutcome.FAILED, outcome.duration_ms, "callback returned False"
        )
    return NotifyResult(spec.name, spec.priority, ServiceOutcome.SUCCESS, outcome.duration_ms)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
