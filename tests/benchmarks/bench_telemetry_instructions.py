"""Instructions per reload with telemetry off, on (confledger's tracer) and on with the SDK's own tracer.

    python tests/benchmarks/bench_telemetry_instructions.py [--short 20] [--long 220]

Wall and CPU time on a shared VM swing by more than the overhead being measured (``bench_telemetry.py``
compares them side by side for that reason, and still sees +6% to +15% from run to run). This counts
instructions instead, under valgrind's callgrind, which does not depend on what else the machine is
doing: each mode runs ``--short`` and ``--long`` forced reloads in a fresh process (PYTHONHASHSEED=0),
and the difference divided by ``--long - --short`` is one reload's instructions, start-up cancelled.
It needs ``valgrind`` (``apt-get install valgrind``) and takes a few minutes: valgrind runs Python
about fifty times slower.

The modes are those of ``bench_telemetry.py``: the example config, model and validators, three no-op
services, a batch span processor in front of an in-memory exporter, and spans also made by a fake
tracer whose spans do nothing (what the store's span plumbing costs without any tracer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_telemetry import build_side
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from confledger.api.tracing import LeanTracer
from confledger.store import Trigger

MODES = ("off", "plumbing", "ours", "sdk")


class FakeSpan(trace.Span):
    """A recording span that records nothing: what remains is the store's own work around spans."""

    def __init__(self) -> None:
        self._ended = False

    def end(self, end_time: int | None = None) -> None:
        self._ended = True

    def get_span_context(self) -> SpanContext:
        return FAKE_CONTEXT

    def set_attributes(self, attributes: Any) -> None:
        pass

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def is_recording(self) -> bool:
        return not self._ended

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record_exception(self, *args: Any, **kwargs: Any) -> None:
        pass


class FakeTracer(trace.Tracer):
    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        return FakeSpan()

    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return trace.use_span(FakeSpan(), end_on_exit=True)


FAKE_CONTEXT = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))


def drive(mode: str, reloads: int) -> None:
    """Inside valgrind: one reloader, ``reloads`` forced reloads with the given tracer."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    tracers: dict[str, trace.Tracer] = {
        "off": trace.NoOpTracer(),
        "plumbing": FakeTracer(),
        "ours": LeanTracer(provider, "confledger"),
        "sdk": provider.get_tracer("confledger"),
    }

    async def run(workdir: Path) -> None:
        side = build_side("x", workdir, telemetry=False)
        side.reloader.runner.tracer = tracers[mode]
        await side.reloader.start()
        try:
            for _ in range(reloads):
                await side.reloader.reload_config(Trigger.MANUAL, force=True)
        finally:
            await side.reloader.stop()
            side.reloader.log.close()

    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    try:
        asyncio.run(run(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        provider.shutdown()


def instructions(mode: str, reloads: int) -> int:
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    finished = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--drive",
            mode,
            str(reloads),
        ],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", finished.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{finished.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", type=int, default=20, help="reloads in the short run (default 20)")
    parser.add_argument("--long", type=int, default=220, help="reloads in the long run (default 220)")
    parser.add_argument("--drive", nargs=2, metavar=("MODE", "RELOADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive[0], int(args.drive[1]))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if args.long <= args.short:
        parser.error("--long must be more than --short")
    per_reload: dict[str, float] = {}
    for mode in MODES:
        short, long = instructions(mode, args.short), instructions(mode, args.long)
        per_reload[mode] = (long - short) / (args.long - args.short)
    off = per_reload["off"]
    print(f"instructions per forced reload ({args.long - args.short} reloads counted, valgrind callgrind)")
    for mode in MODES:
        print(f"  {mode:9} {per_reload[mode] / 1e6:7.3f} M  {(per_reload[mode] - off) / off:+7.1%}")
    print("  (plumbing: spans that do nothing; ours: LeanTracer; sdk: the SDK's own tracer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
