"""What a long log costs: rebuild, start-up, memory, a far rollback and the history/stats reads.

    .venv/bin/python -m tests.benchmarks.bench_large_log [--sizes 100000 1000000] [--quick]

For each size an SQLite log is built (``logbuilder.build_log``, realistic eight-event reloads; the first
config is applied by the first operation only, so it lies the whole log back) and then, in order:

- the first start folds everything and writes the checkpoints at its stop (not timed for the table);
- start-up with a checkpoint (``bench_startup.timed_start``: a fresh log and reloader until ``current``);
- rebuild of all projections from zero (``ProjectionSet.rebuild``: forget the state, fold the whole log),
  against reading the same rows with sqlite3 and ``json.loads`` (the floor of any fold);
- rollbacks to the first config (the whole log back) alternating with rollbacks to a recent one (the
  anchor), three no-op sync callbacks registered, synchronous=FULL, the reloader run as a service runs
  it (``async with``: checkpoints saved by its own task; start-up objects frozen, ``gc.freeze``);
- a ``confledger serve`` on that log (bench_http's ``Server``): GET /history?limit=20 and GET /stats
  interleaved with GET /healthz over one keep-alive connection, then the server's RSS. A serve on a fresh
  log, measured the same way, is the RSS anchor.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, SecretCipher
from tests.benchmarks.bench_http import Server
from tests.benchmarks.bench_startup import Series, timed_start
from tests.benchmarks.common import bench_dir, median, percentile, rss_mb
from tests.benchmarks.logbuilder import build_log

SERVED_READS = ("healthz", "history", "stats")


def raw_read_s(database: Path) -> float:
    """Seconds to read every event's payload with sqlite3 and decode it: the floor under a fold."""
    started = time.perf_counter()
    connection = sqlite3.connect(database)
    try:
        for _position, _type, payload in connection.execute(
            "SELECT position, type, payload FROM events ORDER BY position"
        ):
            json.loads(payload)
    finally:
        connection.close()
    return time.perf_counter() - started


async def in_process(
    url: str, cipher: SecretCipher, far: str, near: str, rebuilds: int, rollbacks: int
) -> dict[str, list[float]]:
    """Rebuild timings (s) and rollback timings (ms, far and near) on one started reloader."""
    log = EventLog(url, cipher=cipher, instance_id="bench-large", sqlite_synchronous="FULL")
    reloader = ConfigReloader(log, config_model=AppConfig, validators=VALIDATORS)
    found: dict[str, list[float]] = {"rebuild_s": [], "far_ms": [], "near_ms": []}
    # Run as a service runs it (``async with``): its own task saves the checkpoints, off the rollbacks.
    # A bare ``start()`` saved them on the operation's own thread, and at this size a save is the
    # encoding of every projection's state: most of what the rollbacks' p99 measured.
    running = contextlib.AsyncExitStack()
    try:
        await running.enter_async_context(reloader)
        for name, priority in (("cache", 30), ("search", 20), ("api", 10)):
            reloader.register_config_callback(name, lambda _old, _new: None, priority=priority)
        for _ in range(rebuilds):
            started = time.perf_counter()
            reloader.projections.rebuild()
            found["rebuild_s"].append(time.perf_counter() - started)
        # Frozen after the rebuilds (their row is the fold as a start runs it), as the lifecycle
        # freezes a started service (CONFLEDGER_GC_FREEZE).
        gc.freeze()
        warmup = 2
        for index in range(warmup + rollbacks):
            for label, target in (("far_ms", far), ("near_ms", near)):
                started = time.perf_counter()
                operation = await reloader.rollback_config(target)
                elapsed = (time.perf_counter() - started) * 1000
                if not operation.success:
                    raise RuntimeError(
                        f"rollback to {target[:12]} failed: {operation.status} {operation.message}"
                    )
                if index >= warmup:
                    found[label].append(elapsed)
    finally:
        await running.aclose()
        gc.unfreeze()
        log.close()
    return found


def serve_and_read(server: Server, rounds: int, seed: int) -> dict[str, Any]:
    """Start ``server``, time the reads in shuffled interleaved rounds, then read its RSS."""
    server.start()
    try:
        shuffle = random.Random(seed)
        for round_number in range(rounds + 20):
            for name in shuffle.sample(SERVED_READS, len(SERVED_READS)):
                server.measure(name)
            if round_number == 19:  # warm-up done
                server.latency_ms.clear()
        assert server.process is not None
        return {"rss_mb": rss_mb(server.process.pid), "latency_ms": dict(server.latency_ms)}
    finally:
        server.stop()


def measure_size(
    size: int, startup_runs: int, rebuilds: int, rollbacks: int, read_rounds: int
) -> dict[str, Any]:
    directory = bench_dir(f"confledger-bench-large-{size}-")
    key = SecretCipher.generate_key()
    cipher = SecretCipher.from_env_value(key)
    database = directory / "serve" / "log.db"
    database.parent.mkdir()
    url = f"sqlite:///{database}"
    try:
        started = time.perf_counter()
        with EventLog(url, cipher=cipher, instance_id="bench-builder", sqlite_synchronous="OFF") as log:
            built = build_log(log, size, first_config_once=True)
        build_s = time.perf_counter() - started

        async def starts() -> tuple[Series, Series]:
            first = Series()
            await timed_start(url, cipher, first, built.last_applied_hash)  # folds, writes checkpoints
            series = Series()
            for _ in range(startup_runs):
                await timed_start(url, cipher, series, built.last_applied_hash)
            return first, series

        first, series = anyio.run(starts)
        raw = [raw_read_s(database) for _ in range(rebuilds)]
        near = next(h for h in built.config_hashes[1:] if h != built.last_applied_hash)
        timings = anyio.run(in_process, url, cipher, built.config_hashes[0], near, rebuilds, rollbacks)
        served = serve_and_read(
            Server("large", sys.executable, database.parent, environment={"CONFLEDGER_ENCRYPTION_KEY": key}),
            read_rounds,
            seed=size,
        )
        return {
            "size": built.head,
            "build_s": build_s,
            "first_start_ms": first.reloader_ms[0],
            "startup_ms": series.reloader_ms,
            "replayed_on_start": series.replayed,
            "rebuild_s": timings["rebuild_s"],
            "raw_read_s": raw,
            "rollback_far_ms": timings["far_ms"],
            "rollback_near_ms": timings["near_ms"],
            **served,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_fresh(read_rounds: int) -> dict[str, Any]:
    """The anchor serve: a fresh log (one start-up operation), measured as the large ones are."""
    directory = bench_dir("confledger-bench-fresh-")
    try:
        return serve_and_read(Server("fresh", sys.executable, directory / "serve"), read_rounds, seed=0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    startup_runs: int = 7,
    rebuilds: int = 2,
    rollbacks: int = 50,
    read_rounds: int = 300,
) -> dict[str, Any]:
    return {
        "fresh": measure_fresh(read_rounds),
        "sizes": [measure_size(size, startup_runs, rebuilds, rollbacks, read_rounds) for size in sizes],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--rollbacks", type=int, default=None)
    parser.add_argument("--read-rounds", type=int, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="the table's --quick settings (10k and 100k events)"
    )
    args = parser.parse_args()
    from tests.benchmarks.rows import Sizes

    # The table's own settings for its mode; a flag given overrides its part.
    sizes = Sizes.for_mode(args.quick)
    found = measure(
        tuple(args.sizes) if args.sizes else sizes.log_sizes,
        startup_runs=sizes.startup_runs,
        rebuilds=sizes.rebuilds,
        rollbacks=args.rollbacks if args.rollbacks is not None else sizes.rollbacks,
        read_rounds=args.read_rounds if args.read_rounds is not None else sizes.read_rounds,
    )
    for result in found["sizes"]:
        events = result["size"]
        print(
            f"{events:>9,} events: built in {result['build_s']:.1f} s; start-up with checkpoint p50 "
            f"{median(result['startup_ms']):.1f} ms; rebuild {events / median(result['rebuild_s']):,.0f} ev/s "
            f"(raw read {events / median(result['raw_read_s']):,.0f} ev/s); rollback far p99 "
            f"{percentile(result['rollback_far_ms'], 0.99):.2f} ms, near p99 "
            f"{percentile(result['rollback_near_ms'], 0.99):.2f} ms; RSS {result['rss_mb']:.0f} MB; "
            + ", ".join(
                f"{name} p99 {percentile(values, 0.99):.2f} ms"
                for name, values in result["latency_ms"].items()
            )
        )
    print(f"fresh serve RSS {found['fresh']['rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
