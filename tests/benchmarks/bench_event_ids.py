"""Commit cost of one reload's events with random (v4) against time-ordered (v7) event and operation ids.

    python tests/benchmarks/bench_event_ids.py [--reloads N] [--prefill N] [--runs R] [--dir DIR]

A reload appends two transactions (``operation.started``, then the outcome: six more events) to the
events table. Every id is a key of a B-tree index (``event_id`` is unique, ``operation_id`` indexed):
a random id lands on a random leaf page, a time-ordered one on the rightmost leaf, so the number of
pages each commit writes to the WAL (and syncs, with synchronous=FULL) differs. This measures just
that, with sqlite3 directly on confledger's own DDL (from a migrated database), each side on a fresh
file prefilled with the same number of events, the sides alternating run by run.

Printed: median and mean ms per commit for each kind of id, and their ratio (v7 / v4).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confledger.store.ids import uuid7  # noqa: E402
from tests.benchmarks.bench_append import events_table_ddl  # noqa: E402

RELOAD = (
    ("operation.started",),
    (
        "config.loaded",
        "validation.passed",
        "service.notified",
        "service.notified",
        "service.notified",
        "config.applied",
        "operation.completed",
    ),
)
INSERT = (
    "INSERT INTO events (position, event_id, occurred_at, type, schema_version, operation_id, "
    "instance_id, actor, payload, prev_hash, hash) VALUES (?, ?, ?, ?, 1, ?, 'bench', 'system', ?, ?, ?)"
)


def commit_times(
    path: Path, ddl: list[str], new_id: Callable[[], str], reloads: int, prefill: int
) -> list[float]:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        for statement in ddl:
            connection.execute(statement)
        position = 0

        def rows(types: tuple[str, ...], operation: str) -> list[tuple[object, ...]]:
            nonlocal position
            made = []
            for event_type in types:
                position += 1
                stamp = f"2026-12-01 00:00:00.{position:06d}"
                made.append(
                    (position, new_id(), stamp, event_type, operation, "{}" * 150, "0" * 64, "f" * 64)
                )
            return made

        connection.execute("BEGIN")
        while position < prefill:
            operation = new_id()
            for types in RELOAD:
                connection.executemany(INSERT, rows(types, operation))
        connection.execute("COMMIT")
        timings = []
        for _ in range(reloads):
            operation = new_id()
            for types in RELOAD:
                started = time.perf_counter()
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(INSERT, rows(types, operation))
                connection.execute("COMMIT")
                timings.append((time.perf_counter() - started) * 1000)
        return timings
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=500, help="timed reloads per run (two commits each)")
    parser.add_argument("--prefill", type=int, default=20_000, help="events in the table before timing")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per kind of id")
    parser.add_argument("--dir", default=None, help="where the files go (default: a temp dir; not tmpfs)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ids-", dir=args.dir or "/var/tmp"))
    kinds: dict[str, Callable[[], str]] = {
        "v4 (random)": lambda: str(uuid.uuid4()),
        "v7 (ordered)": lambda: str(uuid7()),
    }
    found: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        ddl = events_table_ddl(workdir)
        for run in range(args.runs):
            for name, new_id in kinds.items():
                path = workdir / f"run{run}-{name[:2]}.db"
                found[name] += commit_times(path, ddl, new_id, args.reloads, args.prefill)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"one reload's two commits, SQLite WAL synchronous=FULL, {args.prefill:,} events prefilled, "
        f"{args.runs} alternating runs of {args.reloads} reloads per kind"
    )
    for name, timings in found.items():
        print(
            f"  {name:14} median {statistics.median(timings):.3f} ms   mean {statistics.fmean(timings):.3f} ms per commit"
        )
    v4, v7 = found["v4 (random)"], found["v7 (ordered)"]
    print(
        f"  v7 / v4: median {statistics.median(v7) / statistics.median(v4):.2f}, "
        f"mean {statistics.fmean(v7) / statistics.fmean(v4):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
