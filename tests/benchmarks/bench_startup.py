"""Start-up time of a ``ConfigReloader`` against the length of the log, with and without checkpoints.

    .venv/bin/python tests/benchmarks/bench_startup.py [--sizes 10000 100000] [--runs 7]
                                                       [--cold-runs 3] [--dir DIR] [--no-postgres]

For each size, a log is built quickly (``tests/benchmarks/logbuilder.py``: realistic eight-event reload
operations appended 500 events per transaction, SQLite opened with synchronous=OFF for the build only),
then opened normally and started and stopped once by a reloader, which writes the projections'
checkpoints (and the store's open-operations fold) at stop. Then, repeatedly:

- with checkpoint: a fresh ``EventLog`` and ``ConfigReloader`` on that log, timed from construction until
  ``reloader.current`` is available after ``await reloader.start()`` (the log's open, with its schema
  check, is timed separately and included in "total");
- without checkpoint: the same after deleting every row of ``projection_checkpoints`` (the log itself is
  untouched: only caches go), so start-up folds the whole log - what the checkpoint saves.

On PostgreSQL the tables are ANALYZEd after the build, as autovacuum would have done for a log that grew
over time (without statistics the planner reads the short tail after a checkpoint with a full scan).

Each timed start appends ``instance.started`` and its stop ``instance.stopped``, as in production, so the
log grows by two events per run. Printed: median and p90 per size and backend, the number of events
replayed on start, and the ratio large/small (target: well under a second, and a ratio near 1).
PostgreSQL runs in a fresh schema when reachable (``CONFLEDGER_TEST_PG_URL``, default the local test
server), dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make ``examples`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from confledger.api.reloader import ConfigReloader  # noqa: E402
from confledger.examples.app_config import VALIDATORS, AppConfig  # noqa: E402
from confledger.store import EventLog, SecretCipher  # noqa: E402
from confledger.store.schema import projection_checkpoints  # noqa: E402
from tests.benchmarks.common import bench_dir  # noqa: E402
from tests.benchmarks.logbuilder import build_log  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_S = 1.0


@dataclass
class Series:
    reloader_ms: list[float] = field(default_factory=list)  # ConfigReloader(...) + start()
    total_ms: list[float] = field(default_factory=list)  # EventLog open + the above
    replayed: list[int] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.reloader_ms)

    def p90(self) -> float:
        ordered = sorted(self.reloader_ms)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@dataclass
class Result:
    backend: str
    size: int
    build_s: float
    first_start_s: float
    warm: Series
    cold: Series


async def timed_start(url: str, cipher: SecretCipher, series: Series, expected_hash: str) -> None:
    opened = time.perf_counter()
    log = EventLog(url, cipher=cipher, instance_id="bench-startup")
    constructed = time.perf_counter()
    try:
        reloader = ConfigReloader(log, config_model=AppConfig, validators=VALIDATORS)
        await reloader.start()
        ready = time.perf_counter()
        current = reloader.current
        if current is None or current.hash != expected_hash:
            raise SystemExit(f"start-up restored {current!r}, expected {expected_hash[:16]}")
        series.reloader_ms.append((ready - constructed) * 1000)
        series.total_ms.append((ready - opened) * 1000)
        series.replayed.append(reloader.projections.replayed_on_start)
        await reloader.stop()
    finally:
        log.close()


def forget_checkpoints(url: str, cipher: SecretCipher) -> None:
    with EventLog(url, cipher=cipher) as log, log.engine.begin() as connection:
        connection.execute(sa.delete(projection_checkpoints))


async def measure(
    backend: str, url: str, size: int, cipher: SecretCipher, runs: int, cold_runs: int
) -> Result:
    started = time.perf_counter()
    with EventLog(url, cipher=cipher, instance_id="bench-builder", sqlite_synchronous="OFF") as log:
        built = build_log(log, size)
        if log.dialect == "postgresql":
            # A log that grew over weeks has planner statistics (autovacuum analyses every ~10% of new
            # rows); one built in seconds has none, and without them PostgreSQL estimates the tail read
            # "position > n ORDER BY position LIMIT k" at a third of the table and scans all of it.
            with log.engine.begin() as connection:
                connection.execute(sa.text("ANALYZE events, config_versions, projection_checkpoints"))
    build_s = time.perf_counter() - started

    # The first start folds everything and writes the checkpoints at stop.
    first = Series()
    started = time.perf_counter()
    await timed_start(url, cipher, first, built.last_applied_hash)
    first_start_s = time.perf_counter() - started

    warm = Series()
    for _ in range(runs):
        await timed_start(url, cipher, warm, built.last_applied_hash)
    cold = Series()
    for _ in range(cold_runs):
        forget_checkpoints(url, cipher)
        await timed_start(url, cipher, cold, built.last_applied_hash)
    return Result(backend, built.head, build_s, first_start_s, warm, cold)


def pg_available(url: str) -> str | None:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    finally:
        engine.dispose()


def pg_schema_url(base: str, schema: str) -> str:
    url = make_url(base)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def pg_admin(base: str) -> sa.Engine:
    url = make_url(base)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


async def run(args: argparse.Namespace) -> int:
    cipher = SecretCipher([SecretCipher.generate_key()])
    directory = bench_dir("confledger-bench-startup-", args.dir)
    results: list[Result] = []
    load_before = os.getloadavg()
    try:
        for size in args.sizes:
            url = f"sqlite:///{directory / f'log-{size}.db'}"
            print(f"sqlite: building {size:,} events and timing start-up ...", flush=True)
            results.append(await measure("sqlite", url, size, cipher, args.runs, args.cold_runs))
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    pg_base = os.environ.get("CONFLEDGER_TEST_PG_URL", DEFAULT_PG_URL)
    pg_note = "skipped (--no-postgres)"
    if not args.no_postgres:
        reason = pg_available(pg_base)
        if reason is not None:
            pg_note = f"skipped: not reachable ({reason})"
        else:
            pg_note = ""
            admin = pg_admin(pg_base)
            try:
                for size in args.sizes:
                    schema = f"bench_{uuid.uuid4().hex[:12]}"
                    with admin.connect() as connection:
                        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
                    try:
                        url = pg_schema_url(pg_base, schema)
                        print(f"postgres: building {size:,} events and timing start-up ...", flush=True)
                        results.append(
                            await measure("postgres", url, size, cipher, args.runs, args.cold_runs)
                        )
                    finally:
                        with admin.connect() as connection:
                            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            finally:
                admin.dispose()
    load_after = os.getloadavg()

    print()
    print("confledger start-up: fresh ConfigReloader(...) + await start() until reloader.current is set")
    print(f"  cpus={os.cpu_count()} load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"  runs: {args.runs} with checkpoint, {args.cold_runs} without; times in ms (median / p90)")
    print()
    header = (
        f"  {'backend':9s} {'events':>9s} | {'with checkpoint':>17s} {'replayed':>8s} {'+ log open':>11s} "
        f"| {'without checkpoint':>18s} {'replayed':>9s} | {'build':>7s} {'1st start':>9s}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for result in results:
        warm, cold = result.warm, result.cold
        print(
            f"  {result.backend:9s} {result.size:>9,} | {warm.median():7.1f} / {warm.p90():7.1f} "
            f"{statistics.median(warm.replayed):>8.0f} {statistics.median(warm.total_ms):9.1f}   "
            f"| {cold.median():8.1f} / {cold.p90():7.1f} {statistics.median(cold.replayed):>9,.0f} "
            f"| {result.build_s:6.1f}s {result.first_start_s:8.2f}s"
        )
    if pg_note:
        print(f"  postgres  {pg_note}")
    print()
    verdicts = []
    for backend in ("sqlite", "postgres"):
        mine = sorted((r for r in results if r.backend == backend), key=lambda r: r.size)
        if len(mine) < 2:
            continue
        small, large = mine[0], mine[-1]
        ratio = large.warm.median() / small.warm.median()
        cold_ratio = large.cold.median() / small.cold.median()
        saved = large.cold.median() / large.warm.median()
        print(
            f"  {backend}: with checkpoint {large.size:,} / {small.size:,} events = {ratio:.2f}x "
            f"(without: {cold_ratio:.2f}x); at {large.size:,} the checkpoint makes start-up {saved:,.0f}x faster"
        )
        slowest = max(large.warm.p90(), small.warm.p90())
        verdicts.append(slowest < TARGET_S * 1000 and ratio < 1.5)
    print()
    ok = all(verdicts) and bool(verdicts)
    print(
        "target (well under a second, not growing with the log): "
        + ("met" if ok else "NOT met" if verdicts else "not evaluated (need two sizes)")
    )
    return 0 if ok or not args.check else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=7, help="timed starts with a checkpoint, per size")
    parser.add_argument("--cold-runs", type=int, default=3, help="timed starts without a checkpoint")
    parser.add_argument("--dir", help="where the SQLite logs go (default: the temp dir unless it is tmpfs)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    return anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
