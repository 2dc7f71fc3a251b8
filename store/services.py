"""Registered service callbacks and how they are notified.

Each callback runs through ``store.calls`` under its own timeout: a sync one in a worker thread, an async
one on the loop. A sync callback past its timeout is abandoned (its result ignored) and reported as
``timeout``; while it is still running it is not called again, and each operation that would have called
it records ``error`` instead. It is the callback's job to be idempotent.

``notify_on_start``: whether a restarted instance hands the callback the config it restored from the log
(``old=None``), so state the callback builds is there after a restart as after the first start. None
takes the runner's default (``CONFLEDGER_NOTIFY_ON_START``).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from confledger.store import failpoints
from confledger.store.calls import CallOutcome, TurnCall, TurnPlan, UserCalls
from confledger.store.events import ServiceOutcome
from confledger.store.validation import scrub

__all__ = [
    "NotifyResult",
    "ServiceCallback",
    "ServiceRegistry",
    "ServiceSpec",
    "notification_plan",
    "notify_services",
]

ServiceCallback = Callable[[Any, Any], bool | Awaitable[bool | None] | None]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    callback: ServiceCallback
    priority: int = 0
    async_callback: bool = False
    # None: the runner's callback timeout (``CONFLEDGER_CALLBACK_TIMEOUT``).
    timeout: float | None = None
    order: int = 0
    notify_on_start: bool | None = None


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

    @property
    def accepted(self) -> bool:
        return self.outcome is ServiceOutcome.SUCCESS


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
        timeout: float | None = None,
        notify_on_start: bool | None = None,
    ) -> ServiceSpec:
        if not name or not name.strip():
            raise ValueError("a service needs a name")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        is_async = async_callback or inspect.iscoroutinefunction(callback)
        with self._lock:
            self._counter += 1
            spec = ServiceSpec(name, callback, priority, is_async, timeout, self._counter, notify_on_start)
            self._services[name] = spec
        return spec

    def unregister(self, name: str) -> bool:
        with self._lock:
            return self._services.pop(name, None) is not None

    def ordered(self) -> list[ServiceSpec]:
        with self._lock:
            specs = list(self._services.values())
        return sorted(specs, key=lambda spec: (-spec.priority, spec.order))

    def notified_at_start(self, *, default: bool) -> list[ServiceSpec]:
        """The services, in order, that get the restored config at start (``default`` for those unset)."""
        return [
            spec
            for spec in self.ordered()
            if (default if spec.notify_on_start is None else spec.notify_on_start)
        ]

    def names(self) -> list[str]:
        return [spec.name for spec in self.ordered()]

    def __len__(self) -> int:
        return len(self._services)

    def __contains__(self, name: object) -> bool:
        return name in self._services


async def notify_services(
    specs: Sequence[ServiceSpec],
    old: Any,
    new: Any,
    *,
    calls: UserCalls,
    default_timeout: float,
    tracer: trace.Tracer,
    direction: str = "forward",
    secret_values: Iterable[str] = (),
) -> list[NotifyResult]:
    """Call each service in the given order with (old, new), one span each; one result per service.

    Consecutive sync callbacks share one worker thread (one hop for them all), each within its own
    timeout; an async callback runs on the loop between them."""
    secrets = list(secret_values)
    results: list[NotifyResult] = []
    for is_async, group in itertools.groupby(specs, key=_is_async):
        notifications = [
            _Notification(spec, old, new, direction, first=not results and index == 0, tracer=tracer)
            for index, spec in enumerate(group)
        ]
        if is_async:
            for notification in notifications:
                notification.before()
                with notification.span_opened() as span:
                    outcome = await calls.call(
                        notification.key,
                        notification.callback,
                        timeout=notification.timeout(default_timeout),
                        in_thread=False,
                    )
                    results.append(notification.finish(span, outcome, default_timeout, secrets))
                notification.after()
            continue
        results += await calls.call_planned(_turn_plan(notifications, default_timeout, secrets, tracer))
    return results


def notification_plan(
    specs: Sequence[ServiceSpec],
    old: Any,
    new: Any,
    *,
    default_timeout: float,
    tracer: trace.Tracer,
    direction: str = "forward",
    secret_values: Iterable[str] = (),
) -> TurnPlan | None:
    """``notify_services`` as one turn of sync calls (``store.steps``), when no callback is async and
    there are any; None otherwise (the loop notifies them)."""
    if not specs or any(spec.async_callback for spec in specs):
        return None
    notifications = [
        _Notification(spec, old, new, direction, first=index == 0, tracer=tracer)
        for index, spec in enumerate(specs)
    ]
    return _turn_plan(notifications, default_timeout, list(secret_values), tracer)


def _turn_plan(
    notifications: list[_Notification], default_timeout: float, secrets: list[str], tracer: trace.Tracer
) -> TurnPlan:
    """Sync callbacks as one turn, in order; ``_finished`` makes their results."""
    return TurnPlan(
        [
            TurnCall(
                notification.key,
                notification.in_thread,
                notification.timeout(default_timeout),
                _SPAN,
                notification.attributes,
            )
            for notification in notifications
        ],
        functools.partial(_finished, notifications, default_timeout, secrets),
        tracer,
    )


_Pairs = list[tuple[CallOutcome, trace.Span]]


def _finished(
    notifications: list[_Notification], default_timeout: float, secrets: list[str], pairs: _Pairs
) -> list[NotifyResult]:
    """The results of a turn's calls, their spans ended."""
    done = []
    for notification, (outcome, span) in zip(notifications, pairs, strict=True):
        done.append(notification.finish(span, outcome, default_timeout, secrets))
        span.end()
    return done


def _is_async(spec: ServiceSpec) -> bool:
    return spec.async_callback


_SPAN = "confledger.service_callback"


class _Notification:
    """One service's call of one notification: its span's attributes, and the crash points around it."""

    def __init__(
        self, spec: ServiceSpec, old: Any, new: Any, direction: str, *, first: bool, tracer: trace.Tracer
    ) -> None:
        self.spec = spec
        self.key = f"service:{spec.name}"
        self.callback = functools.partial(spec.callback, old, new)
        self.direction = direction
        self.first = first
        self.tracer = tracer
        self.attributes: dict[str, str | int] = {
            "confledger.service": spec.name,
            "confledger.priority": spec.priority,
            "confledger.direction": direction,
        }

    def timeout(self, default: float) -> float:
        return self.spec.timeout if self.spec.timeout is not None else default

    def before(self) -> None:
        if not self.first and self.direction == "forward":
            failpoints.hit("between_callbacks")

    def after(self) -> None:
        if self.direction == "compensate":
            failpoints.hit("mid_rollback")

    def in_thread(self) -> object:
        """The callback with its crash points, as a worker thread runs it (one after another)."""
        self.before()
        try:
            return self.callback()
        finally:
            self.after()

    def span_opened(self) -> Any:
        # The span is current while the callback runs, so spans it opens (an HTTP client's, a driver's)
        # nest under it; in a worker thread ``UserCalls.call_in_turn`` does the same.
        return self.tracer.start_as_current_span(_SPAN, attributes=self.attributes, record_exception=False)

    def finish(
        self, span: trace.Span, outcome: CallOutcome, default_timeout: float, secrets: list[str]
    ) -> NotifyResult:
        result = _result_of(self.spec, self.timeout(default_timeout), outcome, secrets)
        span.set_attributes(
            {
                "confledger.outcome": result.outcome.value,
                "confledger.duration_ms": round(result.duration_ms, 3),
            }
        )
        if not result.accepted:
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.outcome.value))
        return result


def _result_of(spec: ServiceSpec, timeout: float, outcome: CallOutcome, secrets: list[str]) -> NotifyResult:
    def result(status: ServiceOutcome, error: str | None = None) -> NotifyResult:
        return NotifyResult(spec.name, spec.priority, status, outcome.duration_ms, error)

    if outcome.still_running:
        return result(
            ServiceOutcome.ERROR, "not called: its previous call overran its timeout and is still running"
        )
    if outcome.timed_out:
        return result(ServiceOutcome.TIMEOUT, f"no answer within {timeout:g}s")
    if outcome.error is not None:
        return result(
            ServiceOutcome.ERROR, scrub(f"{type(outcome.error).__name__}: {outcome.error}", secrets)
        )
    # Only an explicit False is a refusal; a callback that returns nothing accepted the change.
    if outcome.value is False:
        return result(ServiceOutcome.FAILED, "callback returned False")
    return result(ServiceOutcome.SUCCESS)
