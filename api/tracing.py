"""The tracer an operation's spans are made with when ``Telemetry`` is given an SDK tracer provider.

Why not the SDK's own tracer: a reload makes eight spans (the operation, loading the source, three
validators, three service callbacks), and the rest of the reload costs about 2 ms of CPU. Inside a
reload the SDK's spans cost 45-60 µs each, a quarter of the reload; most of that is bookkeeping a
configuration operation never uses. Every ``set_attributes`` call re-validates its whole mapping
(against the ``Sequence`` and ``Mapping`` ABCs) under a lock, every span builds a ``BoundedAttributes``,
two ``BoundedList``s and a lock up front, and every ``end`` copies the span into a new ``ReadableSpan``.

``LeanTracer`` keeps everything that decides *what* is exported, taken from the provider: its sampler,
id generator, resource, span limits and span processors (``on_start`` with the live span, ``on_end``
with the finished one). What it drops is the per-call work: attributes are kept in a plain dict while the
span is open and cleaned once, against the provider's limits, when it ends; events and links get their
bounded lists only when there are some; and the span is itself the ``ReadableSpan`` the processors
receive, since nothing can change it after ``end``. A child of one of its own sampled spans skips the
sampler when the sampler's answer is known in advance (see ``_samples_every_sampled_local_child``).

Not done here, unlike the SDK's tracer: the experimental ``_on_ending`` processor hook, the experimental
tracer configurator (which can switch a scope off), and the SDK's opt-in span self-metrics
(``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``). ``tests/integration/api/
test_tracing.py`` runs one operation through both tracers and compares every exported field.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import time_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    StaticSampler,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["LeanSpan", "LeanTracer", "tracer_for"]

logger = logging.getLogger(__name__)

# Values the SDK's attribute cleaning returns unchanged: a mapping of only these needs no cleaning.
_PLAIN_VALUE_TYPES = frozenset({str, bool, int, float})
# Status has no setters; one instance serves every span that has not been given one.
_UNSET = Status(StatusCode.UNSET)


def tracer_for(provider: TracerProvider, name: str, version: str | None = None) -> trace.Tracer:
    """A ``LeanTracer`` where the provider makes the SDK's own tracer; anything else is used as it is.

    A provider subclass that returns its own tracer class has reasons of its own for how spans are made
    (a vendor's sampling or enrichment); those are not second-guessed.
    """
    tracer = provider.get_tracer(name, version)
    if type(tracer) is not SdkTracer:
        return tracer
    return LeanTracer(provider, name, version)


class LeanTracer(trace.Tracer):
    """A tracer for one instrumentation scope of an SDK ``TracerProvider``; see the module docstring."""

    def __init__(self, provider: TracerProvider, name: str, version: str | None = None) -> None:
        sdk_tracer = provider.get_tracer(name, version)
        if not isinstance(sdk_tracer, SdkTracer):
            raise TypeError(f"{type(provider).__name__}.get_tracer did not return an SDK tracer")
        self.sampler: Sampler = sdk_tracer.sampler
        self.id_generator: IdGenerator = sdk_tracer.id_generator
        self.span_processor: SpanProcessor = sdk_tracer.span_processor
        self.resource = sdk_tracer.resource
        self.scope = InstrumentationScope(name, version)
        # The provider's limits are not public; the SDK tracer carries the ones it was given. SpanLimits()
        # reads the OTEL_*_LIMIT variables, which is what the provider does when given none.
        limits = getattr(sdk_tracer, "_span_limits", None)
        self.limits: SpanLimits = limits if isinstance(limits, SpanLimits) else SpanLimits()
        self._children_sampled = _samples_every_sampled_local_child(self.sampler)

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        current = trace.get_current_span(context)
        current_context = current.get_span_context()
        if (
            self._children_sampled
            and not links
            and type(current) is LeanSpan
            and current._tracer is self
            and (flags := current_context.trace_flags).sampled
        ):
            # The sampler would answer "record and sample, with the parent's trace state": asking it
            # costs a third of such a span.
            parent: SpanContext | None = current_context
            span_context = SpanContext(
                current_context.trace_id,
                self.id_generator.generate_span_id(),
                False,
                flags,
                current_context.trace_state,
            )
            initial = dict(attributes) if attributes else {}
        else:
            parent = current_context
            if not parent.is_valid:
                parent = None
                trace_id = self.id_generator.generate_trace_id()
                random_trace_id = self.id_generator.is_trace_id_random()
            else:
                trace_id = parent.trace_id
                random_trace_id = parent.trace_flags.random_trace_id
            sampled = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            bits = (
                TraceFlags.SAMPLED if sampled.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
            )
            if random_trace_id:
                bits |= TraceFlags.RANDOM_TRACE_ID
            span_context = SpanContext(
                trace_id,
                self.id_generator.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(bits),
                trace_state=sampled.trace_state,
            )
            if sampled.decision is Decision.DROP:
                return trace.NonRecordingSpan(span_context)
            initial = dict(sampled.attributes) if sampled.attributes else {}
        span = LeanSpan(
            self,
            name,
            span_context,
            parent,
            kind,
            initial,
            _valid_links(links, self.limits) if links else (),
            start_time if start_time is not None else time_ns(),
        )
        if not record_exception:
            span._record_exception = False
        if not set_status_on_exception:
            span._set_status_on_exception = False
        self.span_processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    # The API types this as its private _AgnosticContextManager; a plain one behaves the same.
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class LeanSpan(trace.Span, ReadableSpan):
    """An open span, and once ended, the finished span the processors export."""

    # What most spans keep as they started, as class defaults: an instance stores only what differs.
    # ReadableSpan reads events and links as a tuple or a BoundedList; most spans have neither.
    _instrumentation_info = None
    _end_time: int | None = None
    _events: Any = ()
    _status = _UNSET
    _record_exception = True
    _set_status_on_exception = True

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, types.AnyValue],
        links: BoundedList[Any] | tuple[()],
        start_time: int,
    ) -> None:
        # ReadableSpan.__init__ is not called: it would build a default Resource only to be replaced.
        self._tracer = tracer
        self._name = name
        self._context = context
        self._span_context = context  # the same, typed as never None
        self._parent = parent
        self._kind = kind
        self._attributes: Any = attributes
        self._links: Any = links
        self._start_time: int | None = start_time
        self._instrumentation_scope = tracer.scope
        self._resource = tracer.resource
        # A span may be touched by two threads: a callback that overruns its deadline is closed by the
        # event loop while its worker thread may still run. Mutations and ``end`` check and change the
        # end time under this lock, so nothing is added to a span a processor already has.
        self._lock = threading.Lock()

    def get_span_context(self) -> SpanContext:
        return self._span_context

    def is_recording(self) -> bool:
        return self._end_time is None

    def _ended(self, what: str) -> bool:
        if self._end_time is not None:
            logger.warning("%s on ended span.", what)
            return True
        return False

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        with self._lock:
            if self._end_time is None:
                self._attributes[key] = value
                return
        logger.warning("Setting attribute on ended span.")

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        with self._lock:
            if self._end_time is None:
                self._attributes.update(attributes)
                return
        logger.warning("Setting attribute on ended span.")

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        limits = self._tracer.limits
        event = Event(
            name,
            BoundedAttributes(
                limits.max_event_attributes,
                attributes,
                immutable=True,
                max_value_len=limits.max_attribute_length,
            ),
            timestamp,
        )
        with self._lock:
            if self._ended("Adding event"):
                return
            if not isinstance(self._events, BoundedList):
                self._events = BoundedList(limits.max_events)
            self._events.append(event)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        links = _valid_links([Link(context, attributes)], self._tracer.limits)
        with self._lock:
            if self._ended("Adding link") or not links:
                return
            if not isinstance(self._links, BoundedList):
                self._links = BoundedList(self._tracer.limits.max_links)
            self._links.extend(links)

    def update_name(self, name: str) -> None:
        with self._lock:
            if not self._ended("Updating name"):
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET never overrides, a Status carries its own description.
        if isinstance(status, Status):
            if description is not None:
                logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            new = status
        else:
            new = Status(status, description)
        with self._lock:
            if self._ended("Setting status"):
                return
            if self._status.status_code is StatusCode.OK or new.status_code is StatusCode.UNSET:
                return
            self._status = new

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._attributes = _finished_attributes(self._attributes, self._tracer.limits)
        self._tracer.span_processor.on_end(self)

    def __exit__(self, exc_type: Any, exc_val: BaseException | None, exc_tb: Any) -> None:
        # ``with tracer.start_span(...) as span``: what the SDK's span does with an escaping exception.
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'


def _finished_attributes(attributes: dict[str, types.AnyValue], limits: SpanLimits) -> Mapping[str, Any]:
    """The attributes as the SDK would have kept them: cleaned, within the limits, read-only."""
    # The common case (a few str/bool/int/float values, no length limit) is what cleaning would return
    # unchanged, and nothing changes the dict once the span has ended.
    if limits.max_span_attribute_length is None and (
        limits.max_span_attributes is None or len(attributes) <= limits.max_span_attributes
    ):
        for value in attributes.values():
            if type(value) not in _PLAIN_VALUE_TYPES:
                break
        else:
            return attributes
    return BoundedAttributes(
        limits.max_span_attributes,
        attributes,
        immutable=True,
        max_value_len=limits.max_span_attribute_length,
    )


def _valid_links(links: Sequence[Link] | None, limits: SpanLimits) -> BoundedList[Any] | tuple[()]:
    """The links the SDK keeps: one needs a valid context, or else attributes or a trace state."""
    if not links:
        return ()
    kept: BoundedList[Link] = BoundedList(limits.max_links)
    for link in links:
        if not link or not link.context:
            continue
        if not (link.context.is_valid or link.attributes or link.context.trace_state):
            continue
        kept.append(
            Link(
                link.context,
                BoundedAttributes(
                    limits.max_link_attributes,
                    link.attributes,
                    immutable=True,
                    max_value_len=limits.max_attribute_length,
                ),
            )
        )
    return kept


def _samples_every_sampled_local_child(sampler: Sampler) -> bool:
    """Whether ``sampler`` records and samples every child of a sampled local span, whatever its name.

    True of ALWAYS_ON, and of the SDK's parent-based samplers whose delegate for a sampled local parent is
    ALWAYS_ON: the SDK's default, and the standard ``OTEL_TRACES_SAMPLER`` values always_on and parentbased_*.
    Their answer for such a child is fixed: record and sample, with the parent's trace state. The exact
    types are checked, so a subclass that decides differently is asked for every span.
    """
    decides: object = sampler
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        # The delegate is not public; without it, the sampler is simply asked every time.
        decides = getattr(sampler, "_local_parent_sampled", None)
    # isinstance narrows the type for the checker; the exact type keeps out subclasses that decide
    # differently.
    return (
        isinstance(decides, StaticSampler)
        and type(decides) is StaticSampler
        and decides.get_description() == "AlwaysOnSampler"
    )
