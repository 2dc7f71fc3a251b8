"""OpenTelemetry set-up: traces and metrics for every configuration operation.

The code under ``store/`` only uses the OpenTelemetry API (a tracer); this module configures the SDK.
Counters are *observable* and read the stats projection, which is folded from the log: a restart
resumes them from what the log implies, and a scrape can never disagree with the log. Histograms are
fed from the events this process appends (a histogram of a past process's latencies is not meaningful):
the append only queues each value, and the queue is recorded into the histograms when a reader
collects (observable callbacks run first in every collection). Aggregating on the append path cost a
reload more than all its spans together; deferred, the reload pays a deque append per value and the
scrape does the arithmetic. The price: histogram exemplars carry no trace context.

Export: OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces/metrics variants) is set; a
Prometheus text endpoint at ``/metrics`` when asked for; nothing at all, and no error, otherwise.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, get_args

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracer, Tracer

from confledger.store.events import (
    ConfigRolledBack,
    OperationCompleted,
    OperationKind,
    OperationStarted,
    RecordedEvent,
    ServiceNotified,
    ValidationFailed,
    ValidationPassed,
)
from confledger.store.outcome import reported_status

# The reasons a config.rolled_back can give, read from its model: a reason added there is a series here.
ROLLBACK_REASONS: tuple[str, ...] = get_args(ConfigRolledBack.model_fields["reason"].annotation)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from confledger.api.reloader import ConfigReloader

__all__ = [
    "METRIC_NAMES",
    "Telemetry",
    "caller_trace_context",
    "otlp_configured",
]

logger = logging.getLogger(__name__)

_PENDING_MAX = 100_000

METRIC_NAMES = (
    "config_operations_total",
    "config_operation_errors_total",
    "config_operation_duration_seconds",
    "config_validation_duration_seconds",
    "config_services_detected",
    "config_service_callback_duration_seconds",
    "config_service_callback_outcomes_total",
    "config_rollbacks_total",
    "config_info",
    "config_database_connections",
)

# Reload latencies sit between a millisecond and a few seconds; the SDK's default buckets start at 5 s
# granularity in the low range, which would put every reload in the first bucket.
_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def _exports(signal: str) -> bool:
    """Whether the standard OTel variables ask for OTLP export of ``signal`` ("traces" or "metrics").

    Per signal: an endpoint for it (its own variable, or the shared one), its exporter not set to "none"
    (``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``), and the SDK not disabled. A metrics-only
    endpoint must not start a trace exporter that would post to the default localhost:4318.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").replace(" ", "").lower().split(",")
    if "none" in exporters:
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def otlp_configured() -> bool:
    """Whether OTLP export of traces or metrics is configured (see ``_exports``)."""
    return _exports("traces") or _exports("metrics")


def _resource(service_name: str | None) -> Resource:
    """The standard resource, named ``service_name``, else as the environment names it, else confledger.

    ``Resource.create`` reads ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``, but attributes passed
    to it win over both: a default passed there would rename a service the operator had named.
    """
    detected = Resource.create()
    if service_name:
        return detected.merge(Resource({"service.name": service_name}))
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        return detected.merge(Resource({"service.name": "confledger"}))
    return detected


@contextmanager
def caller_trace_context(headers: Any) -> Iterator[None]:
    """Continue the caller's trace (W3C ``traceparent``) for the duration of the block."""
    token = otel_context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def _copied(mapping: dict[str, Any]) -> list[tuple[str, Any]]:
    """The items of a projection dict, copied in one C call.

    The stats projection folds (and adds keys) on whichever thread appended, while a scrape reads on
    another; iterating the live dict could raise "dictionary changed size during iteration" and drop the
    family from that scrape. ``dict.copy`` runs no Python code, so it is atomic under the GIL.
    """
    return list(mapping.copy().items())


class Telemetry:
    """Tracer and meter for one service; owns the SDK providers it creates (and shuts them down)."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        metric_readers: Iterable[MetricReader] = (),
        prometheus: bool = False,
        service_name: str | None = None,
    ) -> None:
        resource = _resource(service_name)
        self._owned: list[Any] = []
        self.prometheus_registry: CollectorRegistry | None = None
        self.tracer_provider: TracerProvider | None = tracer_provider
        if tracer_provider is None and _exports("traces"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.tracer_provider = TracerProvider(resource=resource)
            self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self._owned.append(self.tracer_provider)
        # With no provider given and no trace exporter configured, no span would reach anyone; an SDK
        # tracer would still build each one. The API's no-op tracer makes none, yet continues the
        # caller's span context, so an operation started under a traceparent still records that trace
        # id in its events.
        self.tracer: Tracer = (
            self.tracer_provider.get_tracer("confledger")
            if self.tracer_provider is not None
            else NoOpTracer()
        )
        if meter_provider is None:
            readers = list(metric_readers)
            if prometheus:
                from opentelemetry.exporter.prometheus import PrometheusMetricReader
                from prometheus_client import CollectorRegistry

                self.prometheus_registry = CollectorRegistry(auto_describe=True)
                readers.append(PrometheusMetricReader(registry=self.prometheus_registry))
            if _exports("metrics"):
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
                from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

                readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
            meter_provider = MeterProvider(metric_readers=readers, resource=resource)
            self._owned.append(meter_provider)
        self.meter_provider = meter_provider
        self.meter: Meter = meter_provider.get_meter("confledger")
        self._reloader: ConfigReloader | None = None
        self._unsubscribe: Any = None
        # Bounded so a process nobody scrapes cannot grow without limit; one reload queues 5 values.
        self._pending: deque[tuple[Histogram, float, dict[str, str]]] = deque(maxlen=_PENDING_MAX)
        self._create_instruments()

    # --- instruments ---------------------------------------------------------------------------------

    def _create_instruments(self) -> None:
        meter = self.meter
        meter.create_observable_counter(
            "config_operations_total",
            callbacks=[self._observe_operations],
            description="Configuration operations by operation, trigger and status (from the log)",
        )
        meter.create_observable_counter(
            "config_operation_errors_total",
            callbacks=[self._observe_errors],
            description="Operations that did not succeed, by operation and reason code (from the log)",
        )
        meter.create_observable_counter(
            "config_service_callback_outcomes_total",
            callbacks=[self._observe_service_outcomes],
            description="Service callback outcomes by service, outcome and direction (from the log)",
        )
        meter.create_observable_counter(
            "config_rollbacks_total",
            callbacks=[self._observe_rollbacks],
            description="Rollbacks by reason: manual, automatic or fleet_threshold (from the log)",
        )
        meter.create_observable_gauge(
            "config_services_detected",
            callbacks=[self._observe_services],
            description="Service callbacks registered with this instance",
        )
        meter.create_observable_gauge(
            "config_info",
            callbacks=[self._observe_info],
            description="1, labelled with the current config hash (first 16 hex digits)",
        )
        meter.create_observable_gauge(
            "config_database_connections",
            callbacks=[self._observe_connections],
            description="Connections of the log's pool, in use (the log's writer and the fleet lock keep "
            "theirs) and idle; PostgreSQL's LISTEN is not one of them",
        )
        self._operation_duration = meter.create_histogram(
            "config_operation_duration_seconds",
            unit="s",
            description="Total duration of configuration operations",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._validation_duration = meter.create_histogram(
            "config_validation_duration_seconds",
            unit="s",
            description="Validation duration of configuration operations",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._callback_duration = meter.create_histogram(
            "config_service_callback_duration_seconds",
            unit="s",
            description="Duration of each service callback",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    def _stats(self) -> Any:
        return None if self._reloader is None else self._reloader.stats_projection

    def _observe_operations(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        stats = self._stats()
        if stats is None:
            return []
        observations = []
        for key, count in _copied(stats.by_kind_trigger_status):
            parts = key.split("|")
            if len(parts) == 3:
                observations.append(
                    Observation(count, {"operation": parts[0], "trigger": parts[1], "status": parts[2]})
                )
        return observations

    def _observe_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        stats = self._stats()
        if stats is None:
            return []
        observations = []
        for key, count in _copied(stats.errors):
            kind, _, reason = key.partition("|")
            observations.append(Observation(count, {"operation": kind, "reason": reason}))
        return observations

    def _observe_service_outcomes(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        stats = self._stats()
        if stats is None:
            return []
        observations = []
        for service, outcomes in _copied(stats.services):
            for key, count in _copied(outcomes):
                direction, outcome = key.split(":", 1)
                observations.append(
                    Observation(count, {"service": service, "outcome": outcome, "direction": direction})
                )
        return observations

    def _observe_rollbacks(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        stats = self._stats()
        if stats is None:
            return []
        # Every reason is always reported (0 until the first), so dashboards and alerts see the series.
        counts = {**dict.fromkeys(ROLLBACK_REASONS, 0), **stats.rollbacks}
        return [Observation(count, {"reason": reason}) for reason, count in counts.items()]

    def _observe_services(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        return [Observation(0 if self._reloader is None else len(self._reloader.services))]

    def _observe_info(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        current = None if self._reloader is None else self._reloader.current_hash
        return [] if current is None else [Observation(1, {"hash": current[:16]})]

    def _observe_connections(self, _options: CallbackOptions) -> Iterable[Observation]:
        pool = None if self._reloader is None else self._reloader.log.engine.pool
        # Only a pool that counts its connections (SQLAlchemy's QueuePool, for every database but an
        # in-memory SQLite one, whose single connection is not pooled).
        in_use, idle = getattr(pool, "checkedout", None), getattr(pool, "checkedin", None)
        if in_use is None or idle is None:
            return []
        return [Observation(in_use(), {"state": "in_use"}), Observation(idle(), {"state": "idle"})]

    # --- live events ---------------------------------------------------------------------------------

    def bind(self, reloader: ConfigReloader) -> None:
        """Read counters from ``reloader``'s projections and record histograms from its appends."""
        self._reloader = reloader
        self._kinds: dict[str, str] = {}
        self._unsubscribe = reloader.log.subscribe(self._on_appended)

    def unbind(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._unsubscribe = None
        self._reloader = None
        self._drain()  # what was appended is recorded: a final export still sees it

    def _on_appended(self, batch: list[RecordedEvent]) -> None:
        queue = self._pending.append
        for event in batch:
            payload = event.payload
            key = str(event.operation_id)
            if isinstance(payload, OperationStarted):
                self._kinds[key] = payload.kind.value
            elif isinstance(payload, ValidationPassed | ValidationFailed):
                queue(
                    (
                        self._validation_duration,
                        payload.duration_ms / 1000,
                        {"operation": self._kinds.get(key, "reload")},
                    )
                )
            elif isinstance(payload, ServiceNotified):
                attributes = {
                    "service": payload.service,
                    "outcome": payload.outcome.value,
                    "direction": payload.direction,
                }
                queue((self._callback_duration, payload.duration_ms / 1000, attributes))
            elif isinstance(payload, OperationCompleted):
                kind = self._kinds.pop(key, "reload")
                status, _ = reported_status(OperationKind(kind), payload.status)
                attributes = {"operation": kind, "status": status.value}
                queue((self._operation_duration, payload.total_ms / 1000, attributes))

    def _drain(self) -> None:
        """Record the queued histogram values; runs inside a collection, before the storage is read."""
        while True:
            try:
                histogram, value, attributes = self._pending.popleft()
            except IndexError:  # empty: popleft is atomic, so draining from two readers at once is safe
                return
            histogram.record(value, attributes)

    def render_prometheus(self) -> bytes:
        if self.prometheus_registry is None:
            raise RuntimeError("the Prometheus exporter is not enabled")
        from prometheus_client import generate_latest

        return generate_latest(self.prometheus_registry)

    def shutdown(self) -> None:
        # The providers first, while still bound: shutting down runs the periodic reader's last
        # collection and export (all a short-lived process may ever send), and unbound, the observable
        # counters would have nothing to read.
        for provider in self._owned:
            try:
                provider.shutdown()
            except Exception:  # an exporter that cannot flush must not stop the process from exiting
                logger.warning("telemetry provider %s did not shut down cleanly", type(provider).__name__)
        self.unbind()
