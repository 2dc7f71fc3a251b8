"""Overhead of tracing (and metrics) on one reload, against the same reload with telemetry off, same run.

    python tests/benchmarks/bench_telemetry.py [--blocks B] [--block-size N] [--warmup W] [--dir DIR] [--check]

``ConfigReloader``s run side by side in one event loop, each on its own SQLite file (WAL, synchronous=FULL,
so every commit is an fsync on a real disk) loading ``examples/config.yaml`` with the example model and
validators and three no-op sync service callbacks. Each reload is ``force=True``, so it does the whole
path: read, parse, validate, notify the three services, append and fold the projections.

- off:      the default tracer (the OpenTelemetry API's no-op; no global provider is set), nothing bound.
- tracing:  the SDK's own tracer from a ``TracerProvider`` with a ``BatchSpanProcessor`` in front of an
            ``InMemorySpanExporter`` (six spans a reload: the operation, two validators, three callbacks).
            Judged: its p50 may exceed off's by at most 0.5 ms.
- tracing + metrics (reference): as tracing, with a ``Telemetry`` (an ``InMemoryMetricReader``) bound, so
            histograms are recorded from every append.
- metrics only (reference): ``Telemetry(meter_provider=...)`` with no tracer provider and no trace exporter
            configured, which is what ``confledger serve`` runs by default: no spans are made.

Blocks of N reloads rotate over the sides (each takes every place in the order in turn) after a warm-up of
all, so every side shares the machine's noise. Between blocks, untimed, the exporter is flushed and cleared
and the metric reader collects once, as a scrape would.

Printed: p50/p99/mean wall time per reload per side, CPU per reload (whole process, and the event loop's
thread), the p50 deltas against off, and the median of paired block differences (each tracing block
against the off block of the same rotation, so slow drift cancels).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from confledger.api.reloader import ConfigReloader
from confledger.api.telemetry import Telemetry
from confledger.store import EventLog, SecretCipher, Trigger
from confledger.store.services import ServiceRegistry

if __package__ in (None, ""):  # run as a script: make the ``tests`` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import percentile

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
TARGET_DELTA_MS = 0.5
SPANS_PER_RELOAD = 6  # the reload, 2 custom validators, 3 service callbacks


def example_model() -> tuple[type[Any], list[Any]]:
    """``examples`` is not an installed package: import it from the repository this script lives in."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from confledger.examples.app_config import VALIDATORS, AppConfig

    return AppConfig, list(VALIDATORS)


def services() -> ServiceRegistry:
    registry = ServiceRegistry()
    for priority, name in enumerate(("search", "cache", "crawler")):
        registry.register(name, lambda _old, _new: True, priority=priority)
    return registry


@dataclass
class Side:
    name: str
    reloader: ConfigReloader
    exporter: InMemorySpanExporter | None = None
    reader: InMemoryMetricReader | None = None
    telemetry: Telemetry | None = None
    providers: list[Any] = field(default_factory=list)
    samples_ms: list[float] = field(default_factory=list)
    block_medians_ms: list[float] = field(default_factory=list)
    # Per block, per reload: CPU of the whole process, and of the event loop's thread (where spans live).
    cpu_ms: list[float] = field(default_factory=list)
    loop_cpu_ms: list[float] = field(default_factory=list)
    spans_seen: int = 0

    async def block(self, count: int, *, record: bool = True) -> None:
        cpu_started, loop_started = time.process_time(), time.thread_time()
        block: list[float] = []
        for _ in range(count):
            started = time.perf_counter()
            operation = await self.reloader.reload_config(Trigger.MANUAL, force=True)
            elapsed = (time.perf_counter() - started) * 1000
            if not operation.success:
                raise SystemExit(f"{self.name}: reload failed: {operation.message} {operation.error_message}")
            block.append(elapsed)
        if record:
            self.samples_ms.extend(block)
            self.block_medians_ms.append(statistics.median(block))
            self.cpu_ms.append((time.process_time() - cpu_started) * 1000 / count)
            self.loop_cpu_ms.append((time.thread_time() - loop_started) * 1000 / count)
        # Untimed: keep memory flat and read the metrics once, as a scrape would.
        if self.exporter is not None:
            self.providers[0].force_flush()  # the tracer provider: a batch processor exports late
            self.spans_seen += len(self.exporter.get_finished_spans())
            self.exporter.clear()
        if self.reader is not None:
            self.reader.get_metrics_data()


def build_side(
    name: str,
    workdir: Path,
    *,
    telemetry: bool,
    span_processor: str = "batch",
    spans: bool = True,
    metrics: bool = True,
) -> Side:
    model, validators = example_model()
    side_dir = workdir / name
    side_dir.mkdir()
    source = side_dir / "config.yaml"
    shutil.copy(EXAMPLE_CONFIG, source)
    log = EventLog(
        f"sqlite:///{side_dir / 'confledger.db'}",
        instance_id=f"bench-{name}",
        cipher=SecretCipher([SecretCipher.generate_key()]),
        sqlite_synchronous="FULL",
    )
    if not telemetry:
        reloader = ConfigReloader(
            log, config_model=model, config_source=source, validators=validators, services=services()
        )
        return Side(name, reloader)
    reader = InMemoryMetricReader() if metrics else None
    meter_provider = MeterProvider(metric_readers=[reader] if reader is not None else [])
    exporter: InMemorySpanExporter | None = None
    tracer_provider: TracerProvider | None = None
    if spans:
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        # "batch" is what `Telemetry` installs for OTLP: spans are handed to a queue and exported off
        # the reload's path. "simple" exports each span synchronously as it ends.
        processor = (
            BatchSpanProcessor(exporter) if span_processor == "batch" else SimpleSpanProcessor(exporter)
        )
        tracer_provider.add_span_processor(processor)
    tel = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    reloader = ConfigReloader(
        log,
        config_model=model,
        config_source=source,
        validators=validators,
        services=services(),
        tracer=tel.tracer,
    )
    if metrics:
        tel.bind(reloader)
    providers = [meter_provider] if tracer_provider is None else [tracer_provider, meter_provider]
    return Side(name, reloader, exporter, reader, tel, providers)


async def run(args: argparse.Namespace, workdir: Path) -> bool:
    on = build_side("tracing", workdir, telemetry=True, span_processor=args.span_processor, metrics=False)
    off = build_side("off", workdir, telemetry=False)
    metrics_only = build_side("metrics", workdir, telemetry=True, spans=False)
    both = build_side("both", workdir, telemetry=True, span_processor=args.span_processor)
    sides = (on, off, metrics_only, both)
    try:
        for side in sides:
            await side.reloader.start()
        for side in sides:
            await side.block(args.warmup, record=False)
        for index in range(args.blocks):
            gc.collect()
            # Every side takes every place in the order in turn, so none always follows the same one.
            shift = index % len(sides)
            for side in sides[shift:] + sides[:shift]:
                await side.block(args.block_size)
    finally:
        for side in sides:
            await side.reloader.stop()
            if side.telemetry is not None and side.reader is not None:
                side.telemetry.unbind()
            for provider in side.providers:
                provider.shutdown()
            side.reloader.log.close()

    expected_spans = SPANS_PER_RELOAD * (args.warmup + args.blocks * args.block_size)
    for side in (on, both):
        if side.spans_seen < expected_spans:
            raise SystemExit(
                f"{side.name} exported {side.spans_seen} spans, expected at least {expected_spans}"
            )

    off_p50 = statistics.median(off.samples_ms)
    overhead_ms = statistics.median(on.samples_ms) - off_p50
    met = overhead_ms <= TARGET_DELTA_MS
    samples = len(on.samples_ms)
    print(
        f"one forced reload (examples/config.yaml, the model and 2 validators, 3 no-op sync services, "
        f"SQLite synchronous=FULL on {workdir}); {args.blocks} rotations of blocks of {args.block_size}, "
        f"{samples} reloads per side after {args.warmup} warm-up each"
    )
    print(
        f"  {'':18} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'cpu ms':>9} {'loop cpu':>9} {'p50 delta':>10}"
    )
    for label, side in (
        ("off", off),
        ("tracing", on),
        ("tracing + metrics", both),
        ("metrics only", metrics_only),
    ):
        p50 = statistics.median(side.samples_ms)
        print(
            f"  {label:18} {p50:9.3f} {percentile(side.samples_ms, 0.99):9.3f} "
            f"{statistics.fmean(side.samples_ms):9.3f} {statistics.median(side.cpu_ms):9.3f} "
            f"{statistics.median(side.loop_cpu_ms):9.3f} {p50 - off_p50:+10.3f}"
        )
    print("  (cpu ms: process CPU per reload, median of blocks; loop cpu: the event loop thread's share)")
    print(
        f"  spans exported (tracing): {on.spans_seen} ({on.spans_seen / (samples + args.warmup):.1f} per reload)"
    )
    paired = statistics.median(a - b for a, b in zip(on.block_medians_ms, off.block_medians_ms, strict=True))
    print(f"  paired blocks, median of (tracing - off) block medians: {paired:+.3f} ms")
    print(
        f"  tracing on vs off, p50: {overhead_ms:+.3f} ms ({overhead_ms / off_p50:+.1%}); "
        f"target <= {TARGET_DELTA_MS} ms: {'met' if met else 'MISSED'}"
    )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks per side (default 20)")
    parser.add_argument("--block-size", type=int, default=20, help="reloads per block (default 20)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed reloads per side first (default 20)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)"
    )
    parser.add_argument(
        "--span-processor",
        choices=("batch", "simple"),
        default="batch",
        help="how finished spans reach the in-memory exporter: batch (as in production) or simple",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    if args.blocks < 2 or args.block_size < 1:
        parser.error("at least 2 blocks of at least 1 reload")
    workdir = Path(tempfile.mkdtemp(prefix="bench-telemetry-", dir=args.dir))
    try:
        met = anyio.run(run, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
