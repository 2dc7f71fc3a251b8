"""Spans of a whole reload, made by the OpenTelemetry SDK's own tracer, on a real SQLite log.

What must hold: the operation span is the parent of one span per custom validator and per service
callback (loading and the model are events on it); spans a callback opens, sync in a worker thread or
async on the loop, nest under that callback's span; a callback that overruns its timeout still ends its
span once; a sampler that records nothing costs the reload nothing but the spans.
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from confledger.api.reloader import ConfigReloader
from confledger.api.telemetry import Telemetry
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, SecretCipher, Trigger
from confledger.store.services import ServiceRegistry

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


_PROVIDERS: dict[int, TracerProvider] = {}


def sdk_tracer(sampler: Any = None) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _PROVIDERS[id(exporter)] = provider
    return provider.get_tracer("confledger"), exporter


def tracer_provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    return _PROVIDERS[id(exporter)]


def three_services(registry: ServiceRegistry, stuck: threading.Event) -> None:
    registry.register("accepts", lambda _old, _new: True, priority=30)
    registry.register("refuses", lambda _old, _new: False, priority=20)

    def overruns(_old: Any, _new: Any) -> bool:
        stuck.wait(5)  # past its 0.2 s timeout: the loop ends its span while this thread still runs
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


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def test_a_reload_is_one_span_with_a_child_per_validator_and_callback(tmp_path: Path) -> None:
    tracer, exporter = sdk_tracer()
    stuck = threading.Event()
    try:
        status = anyio.run(one_reload, tmp_path, tracer, functools.partial(three_services, stuck=stuck))
    finally:
        stuck.set()
    assert status == "rolled_back"  # 1 of 3 accepted
    spans = exporter.get_finished_spans()
    [_, root] = [s for s in spans if s.name == "confledger.reload"]  # the start-up reload, then this one
    assert root.parent is None
    assert [s.name for s in children(spans, root)] == [
        "confledger.validator",
        "confledger.validator",
        "confledger.service_callback",
        "confledger.service_callback",
        "confledger.service_callback",
        "confledger.service_callback",  # the compensation of "accepts"
    ]
    assert [event.name for event in root.events] == ["confledger.load", "confledger.model"]
    load = dict(root.events[0].attributes or {})
    assert load["confledger.format"] == "yaml"
    assert load["confledger.size_bytes"] > 0
    assert dict(root.events[1].attributes or {}) == {"confledger.errors": 0}
    overran = [s for s in spans if dict(s.attributes or {}).get("confledger.service") == "overruns"]
    assert len(overran) == 1  # ended once, by the loop, though its thread was still running
    assert dict(overran[0].attributes or {})["confledger.outcome"] == "timeout"
    assert overran[0].status.status_code is StatusCode.ERROR
    assert {s.context.trace_id for s in children(spans, root)} == {root.context.trace_id}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync-in-a-worker-thread", "async-on-the-loop"])
def test_spans_a_callback_opens_nest_under_its_span(tmp_path: Path, asynchronous: bool) -> None:
    tracer, exporter = sdk_tracer()
    # Another instrumentation scope of the same provider, as an instrumented HTTP client would use.
    their_tracer = tracer_provider_of(exporter).get_tracer("their.http.client")

    def calls_out(_old: Any, _new: Any) -> bool:
        with their_tracer.start_as_current_span("GET /warm-cache"):
            return True

    async def calls_out_async(_old: Any, _new: Any) -> bool:
        await anyio.sleep(0)
        return calls_out(_old, _new)

    anyio.run(
        functools.partial(
            one_reload,
            tmp_path,
            tracer,
            lambda registry: registry.register("cache", calls_out_async if asynchronous else calls_out),
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


def accepting_services(registry: ServiceRegistry) -> None:
    registry.register("cache", lambda _old, _new: True, priority=20)
    registry.register("api", lambda _old, _new: True, priority=10)


@pytest.mark.parametrize(
    "register",
    [
        # Sync validators and sync services that all end on time: the rest of the operation runs in
        # their worker thread after them, and their spans are ended there.
        accepting_services,
        # A service that refuses and one that overruns: the operation is decided back on the loop.
        functools.partial(three_services, stuck=threading.Event()),
    ],
    ids=["services-carry-on-in-their-thread", "services-decided-on-the-loop"],
)
def test_every_span_is_ended_once_and_marked_before_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, register: Callable[[ServiceRegistry], None]
) -> None:
    tracer, exporter = sdk_tracer()
    with caplog.at_level("WARNING", logger="opentelemetry"):
        try:
            anyio.run(one_reload, tmp_path, tracer, register)
        finally:
            if isinstance(register, functools.partial):
                register.keywords["stuck"].set()
    # The SDK ignores a second end() and attributes set after the first, and says so in the log.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    validators = [s for s in exporter.get_finished_spans() if s.name == "confledger.validator"]
    assert len(validators) == 4  # two validators, the start-up reload's and this one's


def test_a_tracer_switched_off_makes_no_spans_and_the_reload_still_runs(tmp_path: Path) -> None:
    tracer, exporter = sdk_tracer(ALWAYS_OFF)
    released = threading.Event()
    released.set()
    status = anyio.run(one_reload, tmp_path, tracer, functools.partial(three_services, stuck=released))
    assert status == "success"  # 2 of 3 accepted: "overruns" is released at once here
    assert exporter.get_finished_spans() == ()


def test_telemetry_hands_out_the_providers_own_tracer() -> None:
    provider = TracerProvider()
    telemetry = Telemetry(tracer_provider=provider, metric_readers=())
    try:
        assert type(telemetry.tracer) is type(provider.get_tracer("confledger"))
    finally:
        telemetry.shutdown()
