"""``LeanTracer`` against the SDK's own tracer: the same spans, field by field.

The lean tracer is what ``Telemetry`` hands the store when it is given an SDK tracer provider; it must
export what the SDK's tracer would. Each test here does the same thing through both tracers, each on its
own provider with an in-memory exporter, and compares what came out: the span API one call at a time,
then a whole reload (three validators, three callbacks: one accepting, one refusing, one overrunning its
timeout) on a real SQLite log.
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from confledger.api.reloader import ConfigReloader
from confledger.api.telemetry import Telemetry
from confledger.api.tracing import LeanTracer, _samples_every_sampled_local_child
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, SecretCipher, Trigger
from confledger.store.services import ServiceRegistry

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
# Fields that differ between two runs of the same thing: ids and clocks.
VOLATILE_ATTRIBUTES = frozenset({"confledger.operation_id", "confledger.duration_ms"})


def providers(**settings: Any) -> Iterator[tuple[str, trace.Tracer, InMemorySpanExporter]]:
    """One (label, tracer, exporter) per implementation, each on a provider of its own."""
    for label in ("sdk", "lean"):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(**settings)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("confledger") if label == "sdk" else LeanTracer(provider, "confledger")
        yield label, tracer, exporter


def shape(spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]]:
    """Everything exported except ids and times, with each parent named instead of numbered."""
    names = {span.context.span_id: span.name for span in spans}
    shaped = []
    for span in spans:
        attributes = {k: v for k, v in (span.attributes or {}).items() if k not in VOLATILE_ATTRIBUTES}
        shaped.append(
            (
                span.name,
                span.kind,
                None if span.parent is None else names.get(span.parent.span_id, "<outside>"),
                tuple(sorted(attributes.items())),
                span.status.status_code,
                span.status.description,
                tuple((e.name, tuple(sorted((e.attributes or {}).keys()))) for e in span.events),
                tuple(
                    (link.context.span_id, tuple(sorted((link.attributes or {}).items())))
                    for link in span.links
                ),
                (span.dropped_attributes, span.dropped_events, span.dropped_links),
                int(span.context.trace_flags),
                span.instrumentation_scope.name if span.instrumentation_scope else None,
                tuple(sorted(span.resource.attributes.items())),
            )
        )
    return sorted(shaped, key=repr)


def well_formed(spans: Sequence[ReadableSpan]) -> None:
    """What any exporter relies on: ended spans, one trace, parents that enclose their children in time."""
    by_id = {span.context.span_id: span for span in spans}
    for span in spans:
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
        parent = by_id.get(span.parent.span_id) if span.parent is not None else None
        if parent is not None:
            assert span.context.trace_id == parent.context.trace_id
            assert parent.start_time is not None
            assert parent.start_time <= span.start_time
    encode_spans(spans)  # the OTLP encoder takes them as it takes the SDK's


# --- the span API, one call at a time ------------------------------------------------------------------

LINKED = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))

SCRIPTS: list[tuple[str, Callable[[trace.Span], None]]] = [
    # attributes of every kind the API accepts, set one at a time and together, one replaced
    (
        "attributes",
        lambda s: (
            s.set_attribute("text", "value"),
            s.set_attributes({"count": 3, "ratio": 0.5, "flag": True, "text": "replaced"}),
            s.set_attribute("sequence", ["a", "b"]),
        ),
    ),
    # OK is final, UNSET never overrides, a Status carries its own description
    (
        "status rules",
        lambda s: (
            s.set_status(Status(StatusCode.ERROR, "first")),
            s.set_status(StatusCode.UNSET),
            s.set_status(StatusCode.OK),
            s.set_status(StatusCode.ERROR, "too late"),
        ),
    ),
    ("status with a description", lambda s: s.set_status(StatusCode.ERROR, "reason_code")),
    # events, an exception (as an event), links valid and not, a new name
    (
        "events, links and name",
        lambda s: (
            s.add_event("first", {"n": 1}),
            s.record_exception(ValueError("bad value"), {"extra": "x"}),
            s.add_link(LINKED, {"why": "caused by"}),
            s.add_link(trace.INVALID_SPAN_CONTEXT),
            s.update_name("renamed"),
        ),
    ),
    # after end nothing changes
    (
        "calls after end",
        lambda s: (
            s.end(),
            s.set_attribute("late", 1),
            s.set_status(StatusCode.ERROR, "late"),
            s.add_event("late"),
            s.update_name("late"),
            s.end(),
        ),
    ),
]


@pytest.mark.parametrize(("what", "script"), SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_each_span_call_leaves_what_the_sdk_leaves(what: str, script: Callable[[trace.Span], None]) -> None:
    shapes = {}
    for label, tracer, exporter in providers():
        with tracer.start_as_current_span("outer", attributes={"at_start": "yes"}, links=[Link(LINKED)]):
            span = tracer.start_span("inner", kind=trace.SpanKind.CLIENT)
            script(span)
            if span.is_recording():
                span.end()
        spans = exporter.get_finished_spans()
        well_formed(spans)
        shapes[label] = shape(spans)
    assert shapes["lean"] == shapes["sdk"]


@pytest.mark.parametrize(
    "limits",
    [
        # strings cut to a length
        SpanLimits(max_span_attribute_length=4),
        # the oldest attributes dropped past a count, and events and links past theirs
        SpanLimits(max_span_attributes=2, max_events=1, max_links=1),
    ],
    ids=["length", "counts"],
)
def test_the_providers_span_limits_hold(limits: SpanLimits) -> None:
    shapes = {}
    for label, tracer, exporter in providers(span_limits=limits):
        span = tracer.start_span("limited", attributes={"a": "abcdefgh"}, links=[Link(LINKED), Link(LINKED)])
        span.set_attributes({"b": "ijklmnop", "c": 3})
        span.add_event("one", {"k": "abcdefgh"})
        span.add_event("two")
        span.end()
        shapes[label] = shape(exporter.get_finished_spans())
    assert shapes["lean"] == shapes["sdk"]


def test_an_exception_escaping_the_span_is_recorded_as_the_sdk_does() -> None:
    shapes = {}
    for label, tracer, exporter in providers():
        with pytest.raises(KeyError), tracer.start_as_current_span("raises"):
            raise KeyError("missing")
        with pytest.raises(KeyError), tracer.start_span("raises, not current"):
            raise KeyError("missing")
        with (
            pytest.raises(KeyError),
            tracer.start_as_current_span(
                "raises quietly", record_exception=False, set_status_on_exception=False
            ),
        ):
            raise KeyError("missing")
        shapes[label] = shape(exporter.get_finished_spans())
    assert shapes["lean"] == shapes["sdk"]


# --- sampling -----------------------------------------------------------------------------------------


class DropValidators(Sampler):
    """Not one of the SDK's samplers: drops validator spans by name, so it must be asked every time."""

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.DROP if name == "confledger.validator" else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision, attributes if decision is not Decision.DROP else None)

    def get_description(self) -> str:
        return "DropValidators"


class AlwaysOnLookalike(StaticSampler):
    """Describes itself as ALWAYS_ON but is not the SDK's class: no shortcut may be taken for it."""


@pytest.mark.parametrize(
    ("sampler", "known"),
    [
        # the SDK's default, and the standard parent-based ones: a sampled local parent's child is sampled
        (ParentBased(ALWAYS_ON), True),
        (ParentBased(ALWAYS_OFF), True),
        (ParentBasedTraceIdRatio(0.25), True),
        (ALWAYS_ON, True),
        # decided otherwise, or not known in advance: asked for every span
        (ALWAYS_OFF, False),
        (TraceIdRatioBased(0.25), False),
        (ParentBased(ALWAYS_ON, local_parent_sampled=ALWAYS_OFF), False),
        (AlwaysOnLookalike(Decision.RECORD_AND_SAMPLE), False),
        (DropValidators(), False),
    ],
)
def test_the_sampler_is_skipped_only_when_its_answer_is_known(sampler: Sampler, known: bool) -> None:
    assert _samples_every_sampled_local_child(sampler) is known


# --- a whole reload ------------------------------------------------------------------------------------


def three_services(registry: ServiceRegistry, stuck: threading.Event) -> None:
    registry.register("accepts", lambda _old, _new: True, priority=30)
    registry.register("refuses", lambda _old, _new: False, priority=20)

    def overruns(_old: Any, _new: Any) -> bool:
        stuck.wait(5)  # past its 0.2 s timeout: the loop closes its span while this thread still runs
        return True

    registry.register("overruns", overruns, priority=10, timeout=0.2)


async def one_reload(
    workdir: Path,
    tracer: trace.Tracer,
    register: Callable[[ServiceRegistry], None],
    *,
    registered_at_start: bool = False,
) -> str:
    """Start a reloader on the example config (the start-up reload), change the file, reload it."""
    source = workdir / "config.yaml"
    shutil.copy(EXAMPLES / "config.yaml", source)
    log = EventLog(
        f"sqlite:///{workdir / 'confledger.db'}",
        instance_id=workdir.name,
        cipher=SecretCipher([SecretCipher.generate_key()]),
    )
    registry = ServiceRegistry()
    if registered_at_start:
        register(registry)
    reloader = ConfigReloader(
        log,
        config_model=AppConfig,
        config_source=source,
        validators=list(VALIDATORS),
        services=registry,
        tracer=tracer,
    )
    try:
        await reloader.start()
        if not registered_at_start:
            register(registry)
        source.write_text(source.read_text(encoding="utf-8").replace("pool_size: 20", "pool_size: 25"))
        operation = await reloader.reload_config(Trigger.MANUAL)
        return operation.status.value
    finally:
        await reloader.stop()
        log.close()


def test_a_reload_exports_the_same_span_tree_through_either_tracer(tmp_path: Path) -> None:
    shapes = {}
    for label, tracer, exporter in providers():
        # The same path for both runs: the source's path is one of the load span's attributes.
        workdir = tmp_path / "run"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        stuck = threading.Event()
        try:
            status = anyio.run(one_reload, workdir, tracer, functools.partial(three_services, stuck=stuck))
        finally:
            stuck.set()
        spans = exporter.get_finished_spans()
        well_formed(spans)
        names = sorted(span.name for span in spans)
        # the start-up reload and this one, which notified the three services (and then some)
        assert names.count("confledger.reload") == 2, (status, names)
        assert names.count("confledger.service_callback") >= 3, names
        shapes[label] = shape(spans)
    assert shapes["lean"] == shapes["sdk"]


def test_spans_a_callback_opens_nest_under_its_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The callback uses the SDK's tracer, as an instrumented HTTP client or driver would.
    theirs = provider.get_tracer("their.http.client")

    def calls_out(_old: Any, _new: Any) -> bool:
        with theirs.start_as_current_span("GET /warm-cache"):
            return True

    anyio.run(
        functools.partial(
            one_reload,
            tmp_path,
            LeanTracer(provider, "confledger"),
            lambda registry: registry.register("cache", calls_out),
            registered_at_start=True,
        )
    )
    spans = exporter.get_finished_spans()
    callbacks = {s.context.span_id: s for s in spans if s.name == "confledger.service_callback"}
    outgoing = [s for s in spans if s.name == "GET /warm-cache"]
    assert len(outgoing) == 2  # the start-up reload and the changed one
    for span in outgoing:
        assert span.parent is not None
        assert span.parent.span_id in callbacks
        assert span.context.trace_id == callbacks[span.parent.span_id].context.trace_id


def test_a_sampler_that_drops_by_name_is_asked_for_every_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=DropValidators())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    released = threading.Event()
    released.set()  # no callback overruns here
    anyio.run(
        one_reload,
        tmp_path,
        LeanTracer(provider, "confledger"),
        functools.partial(three_services, stuck=released),
    )
    names = {span.name for span in exporter.get_finished_spans()}
    assert "confledger.validator" not in names
    assert {"confledger.reload", "confledger.load", "confledger.service_callback"} <= names


def test_a_tracer_switched_off_makes_no_spans_and_the_reload_still_runs(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    released = threading.Event()
    released.set()
    status = anyio.run(
        one_reload,
        tmp_path,
        LeanTracer(provider, "confledger"),
        functools.partial(three_services, stuck=released),
    )
    assert status == "success"
    assert exporter.get_finished_spans() == ()


class VendorTracer(SdkTracer):
    """A tracer subclass, as a vendor's distribution might ship: its own way of starting spans."""


class VendorProvider(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        made = super().get_tracer(*args, **kwargs)
        made.__class__ = VendorTracer
        return made


@pytest.mark.parametrize(
    ("provider", "lean"),
    [
        # the SDK's own provider and tracer: spans are made lean
        (TracerProvider(), True),
        # a provider whose tracer is a subclass: its tracer is used as it is
        (VendorProvider(), False),
    ],
)
def test_telemetry_makes_spans_lean_only_for_the_sdks_own_tracer(
    provider: TracerProvider, lean: bool
) -> None:
    telemetry = Telemetry(tracer_provider=provider, metric_readers=())
    try:
        assert isinstance(telemetry.tracer, LeanTracer) is lean
        assert isinstance(telemetry.tracer, VendorTracer) is (not lean)
    finally:
        telemetry.shutdown()
