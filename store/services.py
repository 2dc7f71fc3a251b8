"""Registered service callbacks and how they are notified.

Sync callbacks run in a worker thread so a slow one never blocks the event loop; async callbacks run on
the loop. Each runs under its own timeout. A thread cannot be killed, so a timed-out sync callback is
abandoned (its result ignored) and reported as ``timeout``; it is the callback's job to be idempotent.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from opentelemetry import trace

from store.events import ServiceOutcome
from store.validation import scrub

__all__ = ["NotifyResult", "ServiceCallback", "ServiceRegistry", "ServiceSpec"]

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
        tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        with tracer.start_as_current_span(
            "confledger.service_callback",
            attributes={
                "confledger.service": spec.name,
                "confledger.priority": spec.priority,
                "confledger.direction": direction,
            },
            record_exception=False,
        ) as span:
            result = await self._call(spec, old, new, secret_values)
            span.set_attributes(
                {
                    "confledger.outcome": result.outcome.value,
                    "confledger.duration_ms": round(result.duration_ms, 3),
                }
            )
            if result.outcome is not ServiceOutcome.SUCCESS:
                span.set_status(trace.Status(trace.StatusCode.ERROR, result.outcome.value))
            return result

    async def _call(
        self, spec: ServiceSpec, old: Any, new: Any, secret_values: Iterable[str]
    ) -> NotifyResult:
        started = time.perf_counter()
        try:
            # move_on_after, not fail_after: a TimeoutError the callback raises itself (a socket
            # timeout) is an error it reported, not this deadline expiring.
            with anyio.move_on_after(spec.timeout) as deadline:
                if spec.async_callback:
                    result = spec.callback(old, new)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    result = await anyio.to_thread.run_sync(
                        partial(spec.callback, old, new), abandon_on_cancel=True
                    )
                    # A sync callable that hands back a coroutine (a lambda around an async method)
                    # has done nothing yet: run it rather than count an un-awaited coroutine as success.
                    if inspect.isawaitable(result):
                        result = await result
        except Exception as exc:
            message = scrub(f"{type(exc).__name__}: {exc}", secret_values)
            return NotifyResult(spec.name, spec.priority, ServiceOutcome.ERROR, _ms(started), message)
        if deadline.cancelled_caught:
            return NotifyResult(
                spec.name,
                spec.priority,
                ServiceOutcome.TIMEOUT,
                _ms(started),
                f"no answer within {spec.timeout:g}s",
            )
        # Only an explicit False is a refusal; a callback that returns nothing accepted the change.
        outcome = ServiceOutcome.FAILED if result is False else ServiceOutcome.SUCCESS
        error = "callback returned False" if outcome is ServiceOutcome.FAILED else None
        return NotifyResult(spec.name, spec.priority, outcome, _ms(started), error)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
