"""Issue 5: traces, metrics, the Prometheus endpoint, operation logs and slow operations, end to end.

Every test runs the real service (FastAPI ``TestClient`` over ``setup_configuration_lifecycle``) on an
SQLite file, with the OpenTelemetry SDK's in-memory span exporter and metric reader injected through
``Telemetry(tracer_provider=..., meter_provider=...)``. The global providers are never set: they can be set
only once per process, and the code under test must use the providers it was given.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from confledger.api import telemetry as telemetry_module
from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.api.logs import JsonFormatter
from confledger.api.reloader import ConfigReloader
from confledger.api.telemetry import METRIC_NAMES, Telemetry
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store.events import OperationStarted, ServiceNotified
from confledger.store.services import ServiceRegistry

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
SECRETS = (BASE["embedding"]["openai_api_key"], BASE["crawl"]["firecrawl_api_key"])

ADMIN = "admin-token-for-telemetry-tests-0001"
READER = "read-token-for-telemetry-tests-0002"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
READ_HEADERS = {"Authorization": f"Bearer {READER}"}
PREFIX = "/api/v1/config"

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"

COUNTERS = (
    "config_operations_total",
    "config_operation_errors_total",
    "config_service_callback_outcomes_total",
    "config_rollbacks_total",
)
HISTOGRAMS = (
    "config_operation_duration_seconds",
    "config_validation_duration_seconds",
    "config_service_callback_duration_seconds",
)

Labels = tuple[tuple[str, str], ...]


# --- harness -------------------------------------------------------------------------------------------


@dataclass
class Running:
    client: TestClient
    lifecycle: ConfigLifecycle
    services: ServiceRegistry
    source: Path
    exporter: InMemorySpanExporter | None
    reader: InMemoryMetricReader | None
    telemetry: Telemetry | None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def reloader(self) -> ConfigReloader:
        assert self.lifecycle.reloader is not None
        return self.lifecycle.reloader

    def reload(self, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        response = self.client.post(
            f"{PREFIX}/reload", json=body, headers={**ADMIN_HEADERS, **(headers or {})}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def rollback(self, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        response = self.client.post(
            f"{PREFIX}/rollback", json=body, headers={**ADMIN_HEADERS, **(headers or {})}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def write_config(self, **changes: Any) -> None:
        """Write the example config with dotted-path changes (``None`` deletes the key)."""
        body = json.loads(json.dumps(BASE))
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            target = body
            for part in parents:
                target = target[part]
            if value is None:
                target.pop(leaf, None)
            else:
                target[leaf] = value
        self.source.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")

    def clear_spans(self) -> None:
        assert self.exporter is not None
        self.exporter.clear()

    def spans(self) -> list[ReadableSpan]:
        assert self.exporter is not None
        return list(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[Labels, Any]]]:
        assert self.reader is not None
        return collect_metrics(self.reader)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


@contextmanager
def running(
    workdir: Path,
    *,
    services: ServiceRegistry | None = None,
    validators: list[Any] | None = None,
    telemetry: bool = True,
    metrics: bool = False,
    extra_readers: Sequence[InMemoryMetricReader] = (),
) -> Iterator[Running]:
    exporter: InMemorySpanExporter | None = None
    reader: InMemoryMetricReader | None = None
    tel: Telemetry | None = None
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    if telemetry:
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader, *extra_readers])
        tel = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    registry = services if services is not None else ServiceRegistry()
    app = FastAPI()
    source = workdir / "config.yaml"
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=AppConfig,
        config_source=source,
        database_url=f"sqlite:///{workdir / 'confledger.db'}",
        validators=VALIDATORS if validators is None else validators,
        admin_token=ADMIN,
        read_token=READER,
        services=registry,
        enable_signal_handler=False,
        metrics=metrics,
        telemetry=tel,
    )
    try:
        with TestClient(app) as client:
            yield Running(client, lifecycle, registry, source, exporter, reader, tel)
    finally:
        for provider in (tracer_provider, meter_provider):
            if provider is not None:
                provider.shutdown()


# --- reading spans and metrics -------------------------------------------------------------------------


def hex_trace(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def children_of(
    spans: list[ReadableSpan], parent: ReadableSpan, name: str | None = None
) -> list[ReadableSpan]:
    found = [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and (name is None or s.name == name)
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


def collect_metrics(reader: InMemoryMetricReader) -> dict[str, list[tuple[Labels, Any]]]:
    """Metric name -> [(sorted labels, value for sums/gauges or count for histograms)]."""
    result: dict[str, list[tuple[Labels, Any]]] = defaultdict(list)
    data = reader.get_metrics_data()
    if data is None:
        return result
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    labels: Labels = tuple(sorted((k, str(v)) for k, v in (point.attributes or {}).items()))
                    if isinstance(point, HistogramDataPoint):
                        result[metric.name].append((labels, point.count))
                    else:
                        assert isinstance(point, NumberDataPoint)
                        result[metric.name].append((labels, point.value))
    return result


def series(
    metrics: dict[str, list[tuple[Labels, Any]]], name: str, *keys: str, drop_zero: bool = False
) -> dict[tuple[str, ...], Any]:
    """One metric's points keyed by the values of ``keys`` (each series must be unique under them)."""
    out: dict[tuple[str, ...], Any] = {}
    for labels, value in metrics.get(name, []):
        as_dict = dict(labels)
        key = tuple(as_dict[k] for k in keys)
        assert key not in out, f"{name}: two series for {key}"
        if drop_zero and value == 0:
            continue
        out[key] = value
    return out


def operation_events(running_: Running, operation_id: str) -> list[Any]:
    return running_.reloader.log.read_operation(operation_id)


# --- the three callbacks ---------------------------------------------------------------------------------


def register_three(registry: ServiceRegistry, state: dict[str, Any]) -> None:
    """ok always accepts; failing returns False and slow outlives its 0.2 s timeout, unless state['healthy']."""

    def ok(_old: Any, _new: Any) -> bool:
        return True

    def failing(_old: Any, _new: Any) -> bool:
        return bool(state["healthy"])

    async def slow(_old: Any, _new: Any) -> bool:
        if not state["healthy"]:
            await anyio.sleep(10)
        return True

    registry.register("ok", ok, priority=30)
    registry.register("failing", failing, priority=20)
    registry.register("slow", slow, priority=10, async_callback=True, timeout=0.2)


# --- traces and metrics --------------------------------------------------------------------------------


def test_reload_span_tree_metrics_rollbacks_and_restart(workdir: Path) -> None:
    state: dict[str, Any] = {"healthy": False}
    with running(workdir) as svc:
        first_hash = svc.reloader.current_hash
        assert first_hash is not None
        register_three(svc.services, state)
        svc.clear_spans()

        # --- a reload with one good, one failing and one timing-out callback: rolled back automatically
        result = svc.reload(headers={"traceparent": TRACEPARENT}, force=True)
        assert result["status"] == "rolled_back"
        assert result["reason"] == "services_below_threshold"
        assert result["services_notified"] == ["ok:success", "failing:failed", "slow:timeout"]
        assert result["services_compensated"] == ["ok:success"]
        spans = svc.spans()
        root = only(spans, "confledger.reload")
        assert root.parent is not None
        assert format(root.parent.span_id, "016x") == CALLER_SPAN_ID
        assert root.parent.is_remote
        assert {hex_trace(s) for s in spans} == {CALLER_TRACE_ID}
        attrs = dict(root.attributes or {})
        assert root.name == "confledger.reload"
        assert attrs["confledger.trigger"] == "api"
        assert attrs["confledger.force"] is True
        assert attrs["confledger.dry_run"] is False
        assert attrs["confledger.previous_hash"] == first_hash
        assert attrs["confledger.new_hash"] == first_hash  # same bytes, forced
        assert attrs["confledger.status"] == "rolled_back"
        assert attrs["confledger.operation_id"] == result["operation_id"]
        assert root.status.status_code is StatusCode.ERROR
        assert root.status.description == "services_below_threshold"

        # One span per custom validator and per callback, all children of the operation; loading the
        # source and the model's verdict are events on the operation span.
        assert [s.name for s in children_of(spans, root)] == [
            "confledger.validator",
            "confledger.validator",
            "confledger.service_callback",
            "confledger.service_callback",
            "confledger.service_callback",
            "confledger.service_callback",
        ]
        assert [event.name for event in root.events] == ["confledger.load", "confledger.model"]
        assert dict(root.events[0].attributes or {})["confledger.format"] == "yaml"
        assert "confledger.validation.errors" not in attrs  # set only when something was found
        validators = children_of(spans, root, "confledger.validator")
        assert [dict(s.attributes or {})["confledger.validator"] for s in validators] == [
            "check_provider_keys",
            "check_performance",
        ]
        assert all(s.status.status_code is StatusCode.UNSET for s in validators)

        callbacks = children_of(spans, root, "confledger.service_callback")
        by_direction = defaultdict(list)
        for span in callbacks:
            by_direction[dict(span.attributes or {})["confledger.direction"]].append(span)
        forward = by_direction["forward"]
        recorded = {
            (e.payload.service, e.payload.direction): e.payload
            for e in operation_events(svc, result["operation_id"])
            if isinstance(e.payload, ServiceNotified)
        }
        expected = [
            ("ok", 30, "success", StatusCode.UNSET),
            ("failing", 20, "failed", StatusCode.ERROR),
            ("slow", 10, "timeout", StatusCode.ERROR),
        ]
        assert len(forward) == 3
        for span, (name, priority, outcome, code) in zip(forward, expected, strict=True):
            span_attrs = dict(span.attributes or {})
            assert span_attrs["confledger.service"] == name
            assert span_attrs["confledger.priority"] == priority
            assert span_attrs["confledger.outcome"] == outcome
            assert span.status.status_code is code
            if code is StatusCode.ERROR:
                assert span.status.description == outcome
            # The span and the log carry the same duration.
            assert span_attrs["confledger.duration_ms"] == round(recorded[(name, "forward")].duration_ms, 3)
        [compensation] = by_direction["compensate"]
        assert dict(compensation.attributes or {})["confledger.service"] == "ok"
        assert dict(compensation.attributes or {})["confledger.outcome"] == "success"

        metrics = svc.metrics()
        assert series(metrics, "config_rollbacks_total", "reason") == {
            ("manual",): 0,
            ("automatic",): 1,
            ("fleet_threshold",): 0,
        }
        assert series(metrics, "config_services_detected") == {(): 3}

        # --- a failed validation: ERROR with the reason code, down to the validator that refused
        svc.write_config(embedding__openai_api_key=None)
        svc.clear_spans()
        failed = svc.reload()
        assert failed["status"] == "failed"
        assert failed["reason"] == "validation_failed"
        spans = svc.spans()
        root = only(spans, "confledger.reload")
        assert root.parent is None
        assert root.status.status_code is StatusCode.ERROR
        assert root.status.description == "validation_failed"
        assert dict(root.attributes or {})["confledger.status"] == "failed"
        assert dict(root.attributes or {})["confledger.force"] is False
        assert dict(root.attributes or {})["confledger.validation.errors"] == 1
        codes = {
            dict(s.attributes or {})["confledger.validator"]: s.status.status_code
            for s in children_of(spans, root, "confledger.validator")
        }
        assert codes == {
            "check_provider_keys": StatusCode.ERROR,
            "check_performance": StatusCode.UNSET,
        }
        assert not [s for s in spans if s.name == "confledger.service_callback"]

        # --- a successful change, then a manual rollback to the first config
        state["healthy"] = True
        svc.write_config(performance__max_retries=5)
        applied = svc.reload()
        assert applied["status"] == "success"
        second_hash = svc.reloader.current_hash
        assert second_hash is not None
        assert second_hash != first_hash
        svc.clear_spans()
        rolled = svc.rollback(target_hash=first_hash[:16])
        assert rolled["status"] == "rolled_back"  # the seed's contract: a completed rollback
        assert rolled["success"] is True
        assert svc.reloader.current_hash == first_hash
        rollback_span = only(svc.spans(), "confledger.rollback")
        attrs = dict(rollback_span.attributes or {})
        assert attrs["confledger.trigger"] == "api"
        assert attrs["confledger.previous_hash"] == second_hash
        assert attrs["confledger.new_hash"] == first_hash
        assert attrs["confledger.status"] == "rolled_back"
        assert attrs["confledger.operation_id"] == rolled["operation_id"]
        assert rollback_span.status.status_code is StatusCode.UNSET
        assert len(children_of(svc.spans(), rollback_span, "confledger.service_callback")) == 3

        # --- metric values
        metrics = svc.metrics()
        operations = series(metrics, "config_operations_total", "operation", "trigger", "status")
        assert operations == {
            ("reload", "startup", "success"): 1,
            ("reload", "api", "rolled_back"): 1,
            ("reload", "api", "failed"): 1,
            ("reload", "api", "success"): 1,
            ("rollback", "api", "rolled_back"): 1,
        }
        assert sum(operations.values()) == svc.reloader.get_reload_stats()["total_operations"]
        assert series(metrics, "config_operation_errors_total", "operation", "reason") == {
            ("reload", "services_below_threshold"): 1,
            ("reload", "validation_failed"): 1,
        }
        assert series(metrics, "config_rollbacks_total", "reason") == {
            ("manual",): 1,
            ("automatic",): 1,
            ("fleet_threshold",): 0,
        }
        assert series(metrics, "config_services_detected") == {(): 3}
        assert series(
            metrics, "config_service_callback_outcomes_total", "service", "outcome", "direction"
        ) == {
            ("ok", "success", "forward"): 3,
            ("ok", "success", "compensate"): 1,
            ("failing", "failed", "forward"): 1,
            ("failing", "success", "forward"): 2,
            ("slow", "timeout", "forward"): 1,
            ("slow", "success", "forward"): 2,
        }
        assert series(metrics, "config_operation_duration_seconds", "operation", "status") == {
            ("reload", "success"): 2,
            ("reload", "rolled_back"): 1,
            ("reload", "failed"): 1,
            ("rollback", "rolled_back"): 1,
        }
        assert series(metrics, "config_validation_duration_seconds", "operation") == {
            ("reload",): 4,
            ("rollback",): 1,
        }
        assert series(
            metrics, "config_service_callback_duration_seconds", "service", "outcome", "direction"
        ) == {
            ("ok", "success", "forward"): 3,
            ("ok", "success", "compensate"): 1,
            ("failing", "failed", "forward"): 1,
            ("failing", "success", "forward"): 2,
            ("slow", "timeout", "forward"): 1,
            ("slow", "success", "forward"): 2,
        }
        assert series(metrics, "config_info", "hash") == {(first_hash[:16],): 1}
        before_restart = {name: series(metrics, name, *_label_names(metrics, name)) for name in COUNTERS}

    # --- a restart on the same log, with fresh providers: the counters resume from the log
    with running(workdir) as restarted:
        assert restarted.reloader.current_hash == first_hash
        metrics = restarted.metrics()
        after_restart = {name: series(metrics, name, *_label_names(metrics, name)) for name in COUNTERS}
        assert after_restart == before_restart
        assert series(metrics, "config_info", "hash") == {(first_hash[:16],): 1}
        assert series(metrics, "config_services_detected") == {(): 0}
        # Histograms are this process's own latencies: nothing has run here yet.
        assert all(not metrics.get(name) for name in HISTOGRAMS)
        # A spanless restart: restoring from the log is not an operation.
        assert not [s for s in restarted.spans() if s.name.startswith("confledger.")]


def _label_names(metrics: dict[str, list[tuple[Labels, Any]]], name: str) -> tuple[str, ...]:
    names = {tuple(k for k, _ in labels) for labels, _ in metrics.get(name, [])}
    assert len(names) <= 1, names
    return next(iter(names), ())


def test_caller_traceparent_is_continued_and_recorded_in_the_events(workdir: Path) -> None:
    with running(workdir) as svc:
        svc.clear_spans()
        svc.write_config(performance__max_retries=4)
        reloaded = svc.reload(headers={"traceparent": TRACEPARENT})
        assert reloaded["status"] == "success"
        rolled = svc.rollback(headers={"traceparent": TRACEPARENT})
        assert rolled["status"] == "rolled_back"
        untraced = svc.reload(force=True)

        spans = svc.spans()
        operation_spans = [s for s in spans if s.name in ("confledger.reload", "confledger.rollback")]
        assert len(operation_spans) == 3
        for result, name in ((reloaded, "confledger.reload"), (rolled, "confledger.rollback")):
            # The API answer, the operation.started event and every span of the operation share the trace.
            assert result["trace_id"] == CALLER_TRACE_ID
            started = [
                e.payload
                for e in operation_events(svc, result["operation_id"])
                if isinstance(e.payload, OperationStarted)
            ]
            assert [p.trace_id for p in started] == [CALLER_TRACE_ID]
            detail = svc.client.get(f"{PREFIX}/operations/{result['operation_id']}", headers=READ_HEADERS)
            assert detail.status_code == 200
            [started_out] = [e for e in detail.json()["events"] if e["type"] == "operation.started"]
            assert started_out["payload"]["trace_id"] == CALLER_TRACE_ID
            [span] = [
                s
                for s in operation_spans
                if dict(s.attributes or {})["confledger.operation_id"] == result["operation_id"]
            ]
            assert span.name == name
            assert hex_trace(span) == CALLER_TRACE_ID
            assert span.parent is not None
            assert format(span.parent.span_id, "016x") == CALLER_SPAN_ID
        caller_spans = [s for s in spans if hex_trace(s) == CALLER_TRACE_ID]
        assert {s.name for s in caller_spans} >= {
            "confledger.reload",
            "confledger.rollback",
            "confledger.validator",
        }

        # Without a traceparent the operation starts its own trace, and that id is the one recorded.
        assert untraced["trace_id"] not in (None, CALLER_TRACE_ID)
        [own] = [
            s
            for s in operation_spans
            if dict(s.attributes or {})["confledger.operation_id"] == untraced["operation_id"]
        ]
        assert own.parent is None
        assert hex_trace(own) == untraced["trace_id"]
        [own_started] = [
            e.payload
            for e in operation_events(svc, untraced["operation_id"])
            if isinstance(e.payload, OperationStarted)
        ]
        assert own_started.trace_id == untraced["trace_id"]


def test_a_caller_that_did_not_sample_gets_no_spans_and_the_same_operation(workdir: Path) -> None:
    # Flags 00: the caller's trace is not sampled, so neither is the operation under it (the SDK's
    # default sampler follows the parent). Its steps then open no spans at all - the callbacks still
    # run, the outcome is the same, and the events still name the caller's trace.
    state: dict[str, Any] = {}

    def accept(old: Any, new: Any) -> None:
        state["called"] = state.get("called", 0) + 1

    with running(workdir) as svc:
        svc.services.register("cache", accept)
        svc.clear_spans()
        result = svc.reload(headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-00"}, force=True)

        assert result["status"] == "success"
        assert result["services_notified"] == ["cache:success"]
        assert state["called"] == 1
        assert [s.name for s in svc.spans() if s.name.startswith("confledger.")] == []
        assert result["trace_id"] == CALLER_TRACE_ID
        [started] = [
            e.payload
            for e in operation_events(svc, result["operation_id"])
            if isinstance(e.payload, OperationStarted)
        ]
        assert started.trace_id == CALLER_TRACE_ID


OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


@pytest.mark.parametrize(
    ("environment", "traces", "metrics"),
    [
        # nothing set: nothing exported, and no error
        ({}, False, False),
        # the shared endpoint exports both signals
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True, True),
        # a per-signal endpoint exports only that signal: no trace exporter posting to localhost:4318
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics"}, False, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True, False),
        # an exporter set to none turns its signal off, whatever the endpoints say
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "None"}, True, False),
        # the exporter variables are lists: "none" anywhere in one wins
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp, none"}, False, True),
        # the SDK switched off as a whole
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False, False),
    ],
)
def test_otlp_export_follows_the_standard_variables_per_signal(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], traces: bool, metrics: bool
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert (telemetry_module._exports("traces"), telemetry_module._exports("metrics")) == (traces, metrics)
    assert telemetry_module.otlp_configured() is (traces or metrics)


def test_with_no_trace_exporter_no_spans_are_made_and_the_callers_trace_id_is_still_recorded(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `confledger serve` runs by default: metrics on, no OTLP. Spans would reach no one, so none are
    # made (each costs the reload tens of microseconds); an operation under a traceparent still records
    # the caller's trace id, and one without records none rather than the id of a trace that no backend has.
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with running(workdir, telemetry=False, metrics=True) as svc:
        telemetry = svc.lifecycle.telemetry
        assert telemetry is not None
        assert telemetry.tracer_provider is None
        svc.write_config(performance__max_retries=4)
        traced = svc.reload(headers={"traceparent": TRACEPARENT})
        untraced = svc.reload(force=True)

        assert (traced["status"], untraced["status"]) == ("success", "success")
        assert traced["trace_id"] == CALLER_TRACE_ID
        assert untraced["trace_id"] is None
        for result in (traced, untraced):
            [started] = [
                e.payload
                for e in operation_events(svc, result["operation_id"])
                if isinstance(e.payload, OperationStarted)
            ]
            assert started.trace_id == result["trace_id"]
        scraped = svc.client.get("/metrics", headers=READ_HEADERS)
        assert scraped.status_code == 200
        totals = {
            (sample.labels["operation"], sample.labels["trigger"], sample.labels["status"]): sample.value
            for family in text_string_to_metric_families(scraped.text)
            for sample in family.samples
            if sample.name == "config_operations_total"
        }
        assert totals[("reload", "api", "success")] == 2


@dataclass
class OtlpReceiver:
    """A local OTLP/HTTP collector: keeps every request body by path."""

    url: str
    bodies: dict[str, list[bytes]]


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    bodies: dict[str, list[bytes]] = defaultdict(list)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            bodies[self.path].append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OtlpReceiver(f"http://127.0.0.1:{server.server_address[1]}", bodies)
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_exports_spans_and_metrics_under_the_operators_resource(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    # The service's own Telemetry, configured only by the standard variables: the spans and the metrics
    # reach the collector when the service stops (the batch processor and the periodic reader flush), under
    # the resource the operator named in OTEL_RESOURCE_ATTRIBUTES, not confledger's default name.
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=search-api,deployment.environment=staging")
    with running(workdir, telemetry=False) as svc:
        svc.services.register("cache", lambda _old, _new: True)
        svc.write_config(performance__max_retries=4)
        reloaded = svc.reload(headers={"traceparent": TRACEPARENT})
        assert reloaded["status"] == "success"
        svc.write_config(performance__max_retries="lots")
        assert svc.reload()["status"] == "failed"  # a validation error: every counter now has a series

    traces = [ExportTraceServiceRequest.FromString(b) for b in otlp_receiver.bodies["/v1/traces"]]
    spans = [
        (resource_spans.resource, span)
        for request in traces
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert {"confledger.reload", "confledger.validator"} <= {s.name for _, s in spans}
    [(resource, traced)] = [
        (resource, span)
        for resource, span in spans
        if span.name == "confledger.reload"
        and {a.key: a.value.string_value for a in span.attributes}.get("confledger.operation_id")
        == reloaded["operation_id"]
    ]
    resource_attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert resource_attributes["service.name"] == "search-api"
    assert resource_attributes["deployment.environment"] == "staging"
    assert traced.trace_id.hex() == CALLER_TRACE_ID
    assert traced.parent_span_id.hex() == CALLER_SPAN_ID

    metrics = [ExportMetricsServiceRequest.FromString(b) for b in otlp_receiver.bodies["/v1/metrics"]]
    names = {
        metric.name
        for request in metrics
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }
    assert set(METRIC_NAMES) <= names


# --- the Prometheus endpoint ---------------------------------------------------------------------------


def test_metrics_endpoint_parses_and_names_every_metric(workdir: Path) -> None:
    state: dict[str, Any] = {"healthy": False}
    registry = ServiceRegistry()
    with running(workdir, services=registry, telemetry=False, metrics=True) as svc:
        first_hash = svc.reloader.current_hash
        assert first_hash is not None
        register_three(registry, state)
        assert svc.reload(force=True)["status"] == "rolled_back"  # automatic rollback, callback outcomes
        svc.write_config(crawl__firecrawl_api_key=None)
        assert svc.reload()["reason"] == "validation_failed"
        state["healthy"] = True
        svc.write_config(performance__max_retries=6)
        assert svc.reload()["status"] == "success"
        assert svc.rollback()["status"] == "rolled_back"  # manual rollback: rolled_back, a success

        assert svc.client.get("/metrics").status_code == 401
        assert svc.client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40}).status_code == 401
        response = svc.client.get("/metrics", headers=READ_HEADERS)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {family.name: family for family in text_string_to_metric_families(response.text)}
        samples = {sample.name: sample for family in families.values() for sample in family.samples}
        for name in METRIC_NAMES:
            assert name in families or name in samples, f"{name} missing from /metrics"
        kinds = {
            "config_operations": "counter",
            "config_operation_errors": "counter",
            "config_service_callback_outcomes": "counter",
            "config_rollbacks": "counter",
            "config_operation_duration_seconds": "histogram",
            "config_validation_duration_seconds": "histogram",
            "config_service_callback_duration_seconds": "histogram",
            "config_services_detected": "gauge",
            "config_info": "gauge",
            "config_database_connections": "gauge",
        }
        assert {name: families[name].type for name in kinds} == kinds
        connections = {s.labels["state"]: s.value for s in families["config_database_connections"].samples}
        # The log's writer keeps its connection (an SQLite file's: no fleet lock connection, no LISTEN).
        assert set(connections) == {"in_use", "idle"}
        assert connections["in_use"] >= 1
        [info] = families["config_info"].samples
        assert info.labels["hash"] == first_hash[:16]
        rollbacks = {s.labels["reason"]: s.value for s in families["config_rollbacks"].samples}
        assert rollbacks == {"manual": 1.0, "automatic": 1.0, "fleet_threshold": 0.0}
        assert [s.value for s in families["config_services_detected"].samples] == [3.0]
        errors = {
            (s.labels["operation"], s.labels["reason"]): s.value
            for s in families["config_operation_errors"].samples
        }
        assert errors == {("reload", "services_below_threshold"): 1.0, ("reload", "validation_failed"): 1.0}
        # The admin token reads too.
        assert svc.client.get("/metrics", headers=ADMIN_HEADERS).status_code == 200


# --- logs ----------------------------------------------------------------------------------------------


def test_one_structured_log_line_per_operation_and_no_secrets(
    workdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # configure_logging() (run by any test that starts `confledger serve` in-process) stops propagation;
    # caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("confledger"), "propagate", True)
    caplog.set_level(logging.DEBUG)

    def leaky_validator(config: AppConfig) -> dict[str, list[str]]:
        """User code that quotes the values it dislikes: the log must still never show them."""
        if config.performance.max_retries == 9:
            keys = [config.embedding.openai_api_key, config.crawl.firecrawl_api_key]
            return {"errors": [f"rejected key {k.get_secret_value()}" for k in keys if k], "warnings": []}
        return {"errors": [], "warnings": []}

    def leaky_service(_old: Any, new: AppConfig) -> bool:
        if new.performance.max_retries == 7 and new.embedding.openai_api_key is not None:
            raise RuntimeError(f"cannot connect with {new.embedding.openai_api_key.get_secret_value()}")
        return True

    registry = ServiceRegistry()
    registry.register("leaky", leaky_service)
    with running(workdir, services=registry, validators=[*VALIDATORS, leaky_validator]) as svc:
        svc.write_config(performance__max_retries=9)
        assert svc.reload()["reason"] == "validation_failed"
        svc.write_config(performance__max_retries=7)
        assert svc.reload()["status"] == "rolled_back"
        svc.write_config(performance__max_retries=5)
        assert svc.reload()["status"] == "success"
        assert svc.rollback()["status"] == "rolled_back"
        history = svc.reloader.get_reload_history(50)
        operation_ids = {op.operation_id for op in history}
        assert len(operation_ids) == 5  # startup + the four above

    structured = [
        r for r in caplog.records if r.name == "confledger.store.operations" and hasattr(r, "confledger")
    ]
    per_operation = Counter(r.confledger["operation_id"] for r in structured)
    assert set(per_operation) == operation_ids
    assert set(per_operation.values()) == {1}
    formatter = JsonFormatter()
    by_id = {op.operation_id: op for op in history}
    for record in structured:
        fields = record.confledger
        operation = by_id[fields["operation_id"]]
        assert fields["trace_id"] == operation.trace_id
        assert fields["trace_id"]
        assert fields["trigger"] == operation.trigger.value
        assert fields["actor"] == operation.actor
        assert fields["status"] == operation.status.value
        assert fields["total_ms"] == round(operation.total_duration_ms, 3)
        assert {"validation_ms", "apply_ms"} <= set(fields)
        assert record.levelno == (logging.INFO if operation.success else logging.WARNING)
        line = formatter.format(record)
        assert "\n" not in line
        entry = json.loads(line)
        assert entry["logger"] == "confledger.store.operations"
        assert entry["operation_id"] == operation.operation_id
        assert entry["trace_id"] == operation.trace_id
        assert entry["status"] == operation.status.value
        assert entry["actor"] == operation.actor
        assert entry["trigger"] == operation.trigger.value
        assert entry["total_ms"] == fields["total_ms"]
    actors = {r.confledger["actor"] for r in structured}
    assert actors == {"system", "token:admin"}

    assert caplog.records
    for record in caplog.records:
        rendered = [record.getMessage(), formatter.format(record), repr(vars(record))]
        for text in rendered:
            for secret in SECRETS:
                assert secret not in text, f"secret in a {record.name} log record"
            assert ADMIN not in text
            assert READER not in text
    for secret in SECRETS:
        assert secret not in caplog.text


# --- slow operations -----------------------------------------------------------------------------------


def test_slow_operations_name_their_slowest_phase_and_service(workdir: Path) -> None:
    registry = ServiceRegistry()
    with running(workdir, services=registry) as svc:

        def sleepy(_old: Any, _new: Any) -> bool:
            time.sleep(0.2)  # well above the 100 ms threshold below
            return True

        registry.register("quick", lambda _old, _new: True, priority=10)
        registry.register("sleepy", sleepy, priority=5)
        slow = svc.reload(force=True)
        assert slow["status"] == "success"
        registry.unregister("sleepy")
        assert svc.reload(force=True)["status"] == "success"

        response = svc.client.get(f"{PREFIX}/stats", params={"slow_ms": 0}, headers=READ_HEADERS)
        assert response.status_code == 200
        listed = response.json()["slow_operations"]
        history = svc.reloader.get_reload_history(20)
        assert {entry["operation_id"] for entry in listed} == {op.operation_id for op in history}
        durations = [entry["total_duration_ms"] for entry in listed]
        assert durations == sorted(durations, reverse=True)
        by_id = {entry["operation_id"]: entry for entry in listed}
        assert by_id[slow["operation_id"]]["slowest_service"] == "sleepy"
        assert by_id[slow["operation_id"]]["slowest_phase"] == "apply"
        startup = next(op for op in history if op.trigger.value == "startup")
        assert by_id[startup.operation_id]["slowest_service"] is None
        assert by_id[startup.operation_id]["slowest_phase"] in ("load", "validation", "apply")

        threshold = 100.0
        found = svc.reloader.get_slow_operations(threshold)
        assert slow["operation_id"] in {op.operation_id for op in found}
        assert all(op.total_duration_ms > threshold for op in found)
        # Exactly those above it: every operation under the threshold is left out.
        assert {op.operation_id for op in found} == {
            op.operation_id for op in history if op.total_duration_ms > threshold
        }
        [sleepy_op] = [op for op in found if op.operation_id == slow["operation_id"]]
        assert sleepy_op.slowest_service == "sleepy"
        assert sleepy_op.slowest_phase == "apply"
        over_http = svc.client.get(f"{PREFIX}/stats", params={"slow_ms": threshold}, headers=READ_HEADERS)
        assert [e["operation_id"] for e in over_http.json()["slow_operations"]] == [
            op.operation_id for op in found
        ]
        assert "slow_operations" not in svc.client.get(f"{PREFIX}/stats", headers=READ_HEADERS).json()


def test_histograms_reach_every_reader_once_at_collection(workdir: Path) -> None:
    # Appends only queue histogram values; the first collection after them records them, into every
    # reader's storage at once. A second reader must see the same counts, and collecting again must not
    # count anything twice.
    second = InMemoryMetricReader()
    with running(workdir, extra_readers=[second]) as svc:
        for _ in range(3):
            svc.reload(force=True)
        assert svc.reader is not None
        counts = [
            series(collect_metrics(reader), "config_operation_duration_seconds", "operation", "status")
            for reader in (svc.reader, second, svc.reader)
        ]

    # The start-up load and three forced reloads, seen alike by both readers and by a second scrape.
    assert counts[0] == {("reload", "success"): 4}
    assert counts[1] == counts[0]
    assert counts[2] == counts[0]
