"""One in-process reload of ``examples/config.yaml``, three no-op callbacks, SQLite with synchronous=FULL.

    .venv/bin/python tests/benchmarks/bench_reload.py [--reloads N] [--warmup W] [--dir DIR]
                                                      [--async-callbacks] [--check]

Every reload is ``force=True`` and alternates between two valid files (``examples/config.yaml`` and a
copy with one value changed), so each one is a full operation: load, validate, notify three services,
apply, with the operation's events committed (``operation.started`` durable before the first callback,
the outcome in one transaction) and the projections folded. The log is a real file on disk, never
tmpfs: a commit there costs a real fsync.

Printed, all from the same run:

- reload latency p50 / p99 (target: p50 < 2 ms, p99 < 10 ms);
- the time to read the current config object (``reloader.current.config``, ``reloader.get_config()``)
  against a module-level global, median of several ``timeit`` repeats (target: within 3x);
- where a reload spends its time (a second, instrumented pass: the timed pass runs unwrapped), and
  the floor a raw sqlite3 commit with synchronous=FULL sets on this disk.

``--format json`` runs the same reloads from JSON copies of the two files (what the rest of the pipeline
costs without the YAML parser); ``--async-callbacks`` registers async no-op callbacks instead of sync
ones (run on the loop: the start and the outcome are then appended in hops of their own).
``--check`` exits non-zero when a target is missed. The machine's load average is printed with the
figures: on a busy machine every percentile moves.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(ROOT))

from confledger import store  # noqa: E402
from confledger.api.reloader import ConfigReloader  # noqa: E402
from confledger.examples.app_config import VALIDATORS, AppConfig  # noqa: E402
from confledger.store import EventLog, SecretCipher  # noqa: E402

EXAMPLE = ROOT / "examples" / "config.yaml"
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_READ_RATIO = 3.0

# The hot-read baseline: a module-level global holding the config object.
CONFIG: Any = None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def filesystem_of(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def work_dir(requested: str | None) -> Path:
    base = Path(requested) if requested else Path(tempfile.gettempdir())
    if filesystem_of(base.resolve()) in ("tmpfs", "ramfs") and not requested:
        base = ROOT  # /tmp in RAM would make an fsync free: use the repository's disk instead
    return Path(tempfile.mkdtemp(prefix="confledger-bench-reload-", dir=base))


def write_sources(directory: Path, source_format: str = "yaml") -> tuple[Path, Path]:
    """``examples/config.yaml`` and a copy with one value changed (``--format json``: both as JSON)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    changed = text.replace("max_retries: 3", "max_retries: 4")
    if changed == text:
        raise SystemExit("examples/config.yaml no longer has 'max_retries: 3' to vary")
    first = directory / f"config.{source_format}"
    second = directory / f"config-b.{source_format}"
    if source_format == "json":
        first.write_text(json.dumps(yaml.safe_load(text), indent=2), encoding="utf-8")
        second.write_text(json.dumps(yaml.safe_load(changed), indent=2), encoding="utf-8")
    else:
        shutil.copyfile(EXAMPLE, first)
        second.write_text(changed, encoding="utf-8")
    return first, second


def noop(_old: Any, _new: Any) -> None:
    return None


async def anoop(_old: Any, _new: Any) -> None:
    return None


async def open_reloader(directory: Path, source: Path, *, async_callbacks: bool) -> ConfigReloader:
    log = EventLog(
        f"sqlite:///{directory / 'bench.db'}",
        sqlite_synchronous="FULL",
        cipher=SecretCipher([SecretCipher.generate_key()]),
        instance_id="bench-reload",
    )
    reloader = ConfigReloader(log, config_model=AppConfig, validators=VALIDATORS, config_source=source)
    await reloader.start()
    for name, priority in (("cache", 30), ("search", 20), ("api", 10)):
        reloader.register_config_callback(
            name, anoop if async_callbacks else noop, priority=priority, async_callback=async_callbacks
        )
    return reloader


async def reload_times(reloader: ConfigReloader, sources: tuple[Path, Path], count: int) -> list[float]:
    timings: list[float] = []
    for index in range(count):
        source = sources[index % 2]
        started = time.perf_counter()
        operation = await reloader.reload_config(config_source=source, force=True)
        timings.append((time.perf_counter() - started) * 1000)
        if not operation.success or len(operation.services_notified) != 3:
            raise SystemExit(f"reload {index} did not succeed: {operation.status} {operation.error_message}")
    return timings


# --- the hot read path --------------------------------------------------------------------------------


def read_costs(reloader: ConfigReloader, *, number: int, repeat: int) -> dict[str, float]:
    """Nanoseconds per read, median of ``repeat`` timeit runs of ``number`` reads each."""
    global CONFIG
    CONFIG = reloader.get_config()
    namespace = {"reloader": reloader, "CONFIG": CONFIG}
    statements = {
        "module global (CONFIG)": "CONFIG",
        "reloader.current.config": "reloader.current.config",
        "reloader.get_config()": "reloader.get_config()",
        "empty loop (timeit overhead)": "pass",
    }
    results: dict[str, list[float]] = defaultdict(list)
    # Interleaved, so a noisy moment hits every statement alike.
    for _ in range(repeat):
        for label, statement in statements.items():
            seconds = timeit.timeit(statement, globals=namespace, number=number)
            results[label].append(seconds / number * 1e9)
    return {label: statistics.median(values) for label, values in results.items()}


# --- breakdown ------------------------------------------------------------------------------------------


class Breakdown:
    """Wall-clock time per phase, summed over an instrumented pass of reloads."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.order: list[str] = []
        self._undo: list[Callable[[], None]] = []

    def _add(self, label: str, seconds: float) -> None:
        self.total[label] += seconds
        self.calls[label] += 1

    def wrap(self, owner: Any, name: str, label: str) -> None:
        self.order.append(label)
        original = getattr(owner, name)
        had_own = name in vars(owner) if hasattr(owner, "__dict__") else False
        add = self._add
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    add(label, time.perf_counter() - started)

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    add(label, time.perf_counter() - started)

            setattr(owner, name, timed)

        def undo() -> None:
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)

        self._undo.append(undo)

    def wrap_listeners(self, log: EventLog, label: str) -> None:
        self.order.append(label)
        listeners = log._listeners  # the projections' subscription (and any other)
        originals = list(listeners)
        add = self._add

        def timed_listener(listener: Callable[[Any], None]) -> Callable[[Any], None]:
            def call(batch: Any) -> None:
                started = time.perf_counter()
                try:
                    listener(batch)
                finally:
                    add(label, time.perf_counter() - started)

            return call

        listeners[:] = [timed_listener(listener) for listener in originals]

        def undo() -> None:
            listeners[:] = originals

        self._undo.append(undo)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


async def breakdown(
    reloader: ConfigReloader, sources: tuple[Path, Path], count: int
) -> tuple[float, list[tuple[str, float, float]]]:
    """Per-reload ms by phase. Worker-thread phases are timed inside the thread; the remainder is the
    event loop's own work (building events, diffing, tracing) plus the hops to and from worker threads."""
    probe = Breakdown()
    log = reloader.log
    runner = reloader.runner
    # Phases that overlap are indented under the one that contains them; only top-level rows add up.
    probe.wrap(reloader.pipeline, "validate", "hop 1: load, model, 2 validators (loop -> worker -> loop)")
    probe.wrap(store.operations, "load_source", "  of which load + parse source")
    probe.wrap(reloader.services, "notify_all", "hop 2: start, 3 services, outcome (loop -> worker -> loop)")
    appender = "append_recorded" if hasattr(log, "append_recorded") else "append"
    probe.wrap(log, appender, "  of which the 2 appends")
    probe.wrap(log._writer, "commit", "  of which COMMIT (fsync)")
    probe.wrap_listeners(log, "  of which projections fold")
    probe.wrap(store.batch._Batch, "run", "  worker batches (hops), time inside the worker")
    if hasattr(runner, "_operation_result"):
        probe.wrap(runner, "_operation_result", "build the ReloadOperation answer")
    try:
        started = time.perf_counter()
        await reload_times(reloader, sources, count)
        elapsed = time.perf_counter() - started
    finally:
        probe.restore()
    per_reload = elapsed * 1000 / count
    rows = [
        (label, probe.total[label] * 1000 / count, probe.calls[label] / count)
        for label in probe.order
        if label in probe.total
    ]
    return per_reload, rows


async def hop_cost(rounds: int = 1000) -> float:
    """p50 ms of one worker-thread round trip under a timeout (``store.batch``), as each hop of a reload makes."""

    def nothing() -> None:
        return None

    timings = []
    for index in range(rounds + 100):
        started = time.perf_counter()
        await store.batch.run_in_worker([store.batch.SyncCall(nothing, timeout=30)])
        if index >= 100:
            timings.append((time.perf_counter() - started) * 1000)
    return percentile(timings, 0.5)


def raw_commit_floor(directory: Path, commits: int = 200) -> tuple[float, float]:
    """p50/p99 ms of a bare sqlite3 WAL commit with synchronous=FULL (a few small rows) on this disk."""
    path = directory / "floor.db"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        timings = []
        for _ in range(commits):
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 400,)] * 5)
            connection.execute("COMMIT")
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    return percentile(timings, 0.5), percentile(timings, 0.99)


# --- main -----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    directory = work_dir(args.dir)
    try:
        sources = write_sources(directory, args.format)
        load_before = os.getloadavg()
        reloader = await open_reloader(directory, sources[0], async_callbacks=args.async_callbacks)
        try:
            await reload_times(reloader, sources, args.warmup)
            cpu_started = time.process_time()
            timings = await reload_times(reloader, sources, args.reloads)
            cpu_ms = (time.process_time() - cpu_started) * 1000 / args.reloads
            reads = read_costs(reloader, number=args.read_number, repeat=args.read_repeat)
            per_reload, rows = await breakdown(reloader, sources, args.breakdown)
            hop_ms = await hop_cost()
        finally:
            await reloader.stop()
            reloader.log.close()
        floor_p50, floor_p99 = raw_commit_floor(directory)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
    kind = "async" if args.async_callbacks else "sync (worker thread)"
    shown = EXAMPLE.relative_to(ROOT) if args.format == "yaml" else f"{EXAMPLE.relative_to(ROOT)} as JSON"
    print(f"confledger reload benchmark: {shown}, 3 no-op {kind} callbacks")
    print(f"  SQLite WAL, synchronous=FULL, in {directory.parent} ({filesystem_of(directory.parent)})")
    print(f"  cpus={os.cpu_count()} load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print()
    print(f"reloads (force=True, alternating two files): {args.reloads} timed after {args.warmup} warm-up")
    print(f"  p50  {p50:7.3f} ms   (target < {TARGET_P50_MS} ms)")
    print(f"  p90  {percentile(timings, 0.9):7.3f} ms")
    print(f"  p99  {p99:7.3f} ms   (target < {TARGET_P99_MS} ms)")
    print(f"  max  {max(timings):7.3f} ms   mean {statistics.fmean(timings):.3f} ms")
    print(f"  CPU  {cpu_ms:7.3f} ms per reload, all threads (steadier than wall time on a busy machine)")
    print()
    global_ns = reads["module global (CONFIG)"]
    print(f"reading the current config: median of {args.read_repeat} x {args.read_number:,} reads")
    for label, nanoseconds in reads.items():
        print(f"  {label:30s} {nanoseconds:7.1f} ns   {nanoseconds / global_ns:5.2f}x global")
    ratio = reads["reloader.current.config"] / global_ns
    print(f"  ratio reloader.current.config / global = {ratio:.2f} (target <= {TARGET_READ_RATIO})")
    print()
    print(
        f"where a reload spends its time (instrumented pass of {args.breakdown} reloads, {per_reload:.3f} ms each)"
    )
    accounted = 0.0
    for label, milliseconds, calls in rows:
        if not label.startswith("  "):
            accounted += milliseconds
        print(f"  {label:62s} {milliseconds:7.3f} ms  ({calls:.0f} call(s))")
    print(f"  {'event loop work between the hops (the rest)':62s} {per_reload - accounted:7.3f} ms")
    print(
        f"  raw sqlite3 COMMIT floor on this disk (synchronous=FULL): p50 {floor_p50:.3f} ms, p99 {floor_p99:.3f} ms"
    )
    # Consecutive sync calls share a worker hop (store.batch): the load, the model and the validators
    # make one; the durable start, the sync callbacks and the outcome make another. Async callbacks run
    # on the loop, so the start and the outcome then take a hop each. The hops and the two commits are
    # the floor no code on the event loop can remove, before any work is done.
    hops = 2 if not args.async_callbacks else 3
    print(
        f"  worker-thread round trip on this machine: p50 {hop_ms * 1000:.0f} us; this reload makes {hops} "
        f"= {hops * hop_ms:.2f} ms, plus 2 commits = {hops * hop_ms + 2 * floor_p50:.2f} ms floor"
    )

    missed = []
    if p50 >= TARGET_P50_MS:
        missed.append(f"p50 {p50:.3f} ms >= {TARGET_P50_MS} ms")
    if p99 >= TARGET_P99_MS:
        missed.append(f"p99 {p99:.3f} ms >= {TARGET_P99_MS} ms")
    if ratio > TARGET_READ_RATIO:
        missed.append(f"read ratio {ratio:.2f} > {TARGET_READ_RATIO}")
    print()
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if (missed and args.check) else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reloads", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--breakdown", type=int, default=200, help="reloads in the instrumented pass")
    parser.add_argument("--read-number", type=int, default=1_000_000)
    parser.add_argument("--read-repeat", type=int, default=7)
    parser.add_argument("--dir", help="where the log goes (default: the temp dir unless it is tmpfs)")
    parser.add_argument("--async-callbacks", action="store_true", help="register async no-op callbacks")
    parser.add_argument(
        "--format", choices=["yaml", "json"], default="yaml", help="the source files' format (default yaml)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.reloads < 200:
        parser.error("--reloads must be at least 200")
    return anyio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
