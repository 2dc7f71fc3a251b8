"""Append throughput of EventLog against a hand-written sqlite3 baseline, on the same disk, same run.

    python tests/benchmarks/bench_append.py [--events N] [--runs R] [--dir DIR] [--no-postgres] [--check]

Each run appends N single-event transactions to a fresh database. Runs alternate ours / raw so both
share the machine's noise (other processes, disk cache, CPU frequency). Both sides use the same
durability: WAL, synchronous=FULL (one fsync per commit), BEGIN IMMEDIATE, one transaction per event.

The raw baseline is the floor a hand-written hash-chained log could reach: sqlite3 directly, a table of
the same shape (its DDL copied from a migrated confledger database: same columns, key, unique constraint
and indexes), a sha256 link per row, and the head kept in a Python variable. EventLog additionally
validates the payload (pydantic), reads the head under the write lock (so several processes can share
the log), and goes through SQLAlchemy. The target: ours / raw >= 0.6 in events per second.

EventLog runs twice per round: keyless (DESIGN.md's sha256 links, what every log was before keyed
integrity) and keyed (an encryption key configured, as `serve` always has one: HMAC links, the key record,
the anchor file rewritten after each append). "keyed/keyless" is the cost of the integrity work, measured
in the same run against the same raw baseline.

If PostgreSQL is reachable (CONFLEDGER_TEST_PG_URL, default the local test server) the same comparison
runs there too, against raw psycopg inserts in a fresh schema each run.

The script uses only confledger's public API, so it measures another version of it just as well: run it
with that version first on the import path (a directory holding ``confledger/`` laid out as installed),
alternating with the current one, and compare the ratios (each against its own raw baseline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from confledger.store import EventLog, NewEvent, SecretCipher, ServiceOutcome
from confledger.store.events import ServiceNotified

if __package__ in (None, ""):  # run as a script: make the ``tests`` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import pg_base_url

TARGET_RATIO = 0.6
WARMUP_APPENDS = 20
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def payload(sequence: int) -> ServiceNotified:
    return ServiceNotified(
        service="cache",
        priority=10,
        outcome=ServiceOutcome.SUCCESS,
        duration_ms=1.25,
        config_hash=f"{sequence:064x}",
    )


@dataclass
class Series:
    """Timings of one engine across all its runs."""

    name: str
    rates: list[float] = field(default_factory=list)  # events/s, one per run
    latencies_ns: list[int] = field(default_factory=list)  # every timed append, all runs

    def add_run(self, latencies_ns: list[int], elapsed_ns: int) -> None:
        self.rates.append(len(latencies_ns) / (elapsed_ns / 1e9))
        self.latencies_ns.extend(latencies_ns)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


def timed(appends: int, append_one: Callable[[int], object]) -> tuple[list[int], int]:
    for sequence in range(WARMUP_APPENDS):
        append_one(-1 - sequence)
    latencies = []
    started = time.perf_counter_ns()
    for sequence in range(appends):
        before = time.perf_counter_ns()
        append_one(sequence)
        latencies.append(time.perf_counter_ns() - before)
    return latencies, time.perf_counter_ns() - started


# --- SQLite ---------------------------------------------------------------------------------------------


def events_table_ddl(workdir: Path) -> list[str]:
    """The CREATE statements of confledger's events table and its indexes, from a migrated database."""
    path = workdir / "ddl-source.db"
    EventLog(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND type IN ('table', 'index') "
            "AND sql IS NOT NULL ORDER BY type DESC"
        ).fetchall()
    connection.close()
    return [sql for (sql,) in rows]


def keys_if(keyed: bool) -> dict[str, Any]:
    """EventLog's options: keyed (an encryption key, which keys the links) or keyless (none)."""
    return {"cipher": SecretCipher([SecretCipher.generate_key()])} if keyed else {}


def run_ours_sqlite(workdir: Path, appends: int, keyed: bool = False) -> tuple[list[int], int]:
    path = workdir / f"ours-{uuid.uuid4().hex[:8]}.db"
    log = EventLog(f"sqlite:///{path}", instance_id="bench", sqlite_synchronous="FULL", **keys_if(keyed))
    try:
        return timed(appends, lambda sequence: log.append([NewEvent(payload(sequence))]))
    finally:
        log.close()
        for suffix in ("", "-wal", "-shm", ".anchor"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def run_raw_sqlite(workdir: Path, appends: int, ddl: list[str]) -> tuple[list[int], int]:
    path = workdir / f"raw-{uuid.uuid4().hex[:8]}.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    for statement in ddl:
        connection.execute(statement)
    head = {"position": 0, "hash": "0" * 64}

    def append_one(sequence: int) -> None:
        data = payload(sequence).model_dump(mode="json")
        body = json.dumps(data, sort_keys=True, separators=(",", ":"))
        position = head["position"] + 1
        digest = hashlib.sha256((head["hash"] + str(position) + body).encode()).hexdigest()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO events (position, event_id, occurred_at, type, schema_version, operation_id, "
            "instance_id, actor, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                position,
                str(uuid.uuid4()),
                datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "service.notified",
                1,
                None,
                "bench",
                "system",
                body,
                head["hash"],
                digest,
            ),
        )
        connection.execute("COMMIT")
        head["position"], head["hash"] = position, digest

    try:
        return timed(appends, append_one)
    finally:
        connection.close()
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def run_eventsourcing_sqlite(workdir: Path, appends: int) -> tuple[list[int], int, int]:
    """The ``eventsourcing`` library's SQLite application recorder (a totally ordered log, as ours is):
    one event per ``insert_events`` call (one transaction each), the same JSON body as state. Returns the
    timings and the ``PRAGMA synchronous`` the library's connections use (2 is FULL), so the row can say
    whether both sides paid the same fsyncs. Needs ``pip install -e .[bench]``."""
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    path = workdir / f"eventsourcing-{uuid.uuid4().hex[:8]}.db"
    datastore = SQLiteDatastore(str(path))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA synchronous")
        synchronous = int(cursor.fetchone()[0])
    originator = uuid.uuid4()
    version = {"next": 1}

    def append_one(sequence: int) -> None:
        body = json.dumps(payload(sequence).model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        recorder.insert_events(
            [
                StoredEvent(
                    originator_id=originator,
                    originator_version=version["next"],
                    topic="confledger:service.notified",
                    state=body.encode(),
                )
            ]
        )
        version["next"] += 1

    try:
        return (*timed(appends, append_one), synchronous)
    finally:
        datastore.close()
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


# --- PostgreSQL (optional) ------------------------------------------------------------------------------


class PgSchema:
    """A fresh schema for one run, dropped afterwards."""

    def __init__(self, base_url: str) -> None:
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{self.name}"'))
        self.url = make_url(base_url).update_query_dict({"options": f"-csearch_path={self.name}"})

    def drop(self) -> None:
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self.admin.dispose()


def run_ours_postgres(
    base_url: str, appends: int, workdir: Path, keyed: bool = False
) -> tuple[list[int], int]:
    schema = PgSchema(base_url)
    anchor = workdir / f"pg-{uuid.uuid4().hex[:8]}.anchor"
    log = EventLog(schema.url, instance_id="bench", anchor_path=anchor, **keys_if(keyed))
    try:
        return timed(appends, lambda sequence: log.append([NewEvent(payload(sequence))]))
    finally:
        log.close()
        schema.drop()
        anchor.unlink(missing_ok=True)


def run_raw_postgres(base_url: str, appends: int) -> tuple[list[int], int]:
    import psycopg  # the driver confledger ships with

    schema = PgSchema(base_url)
    EventLog(schema.url).close()  # the same events table, created by the migrations
    url = schema.url
    connection = psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database,
        options=f"-csearch_path={schema.name}",
    )  # fmt: skip
    head = {"position": 0, "hash": "0" * 64}

    def append_one(sequence: int) -> None:
        data = payload(sequence).model_dump(mode="json")
        body = json.dumps(data, sort_keys=True, separators=(",", ":"))
        position = head["position"] + 1
        digest = hashlib.sha256((head["hash"] + str(position) + body).encode()).hexdigest()
        with connection.transaction():
            connection.execute(
                "INSERT INTO events (position, event_id, occurred_at, type, schema_version, operation_id, "
                "instance_id, actor, payload, prev_hash, hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    position, str(uuid.uuid4()), datetime.now(UTC), "service.notified", 1, None,
                    "bench", "system", body, head["hash"], digest,
                ),
            )  # fmt: skip
        head["position"], head["hash"] = position, digest

    try:
        return timed(appends, append_one)
    finally:
        connection.close()
        schema.drop()


def fsync_cost_ms(workdir: Path, samples: int = 200) -> float:
    """Median cost of writing 4 KiB and fdatasync-ing it here: the floor under every durable commit."""
    path = workdir / "fsync-probe"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        costs = []
        for _ in range(samples):
            os.pwrite(descriptor, b"x" * 4096, 0)
            before = time.perf_counter_ns()
            os.fdatasync(descriptor)
            costs.append(time.perf_counter_ns() - before)
    finally:
        os.close(descriptor)
        path.unlink()
    return statistics.median(costs) / 1e6


# --- report ---------------------------------------------------------------------------------------------


def report(backend: str, ours: Series, raw: Series) -> float:
    """Print both series and ours/raw as speed ratios (raw's time over ours: 1.0 is as fast as raw)."""
    ratio = ours.rate / raw.rate
    for series in (ours, raw):
        print(
            f"{backend:<10} {series.name:<12} {series.rate:>10.0f} ev/s   "
            f"p50 {series.percentile_ms(0.50):7.3f} ms   p99 {series.percentile_ms(0.99):7.3f} ms   "
            f"runs {', '.join(f'{rate:.0f}' for rate in series.rates)}"
        )
    median = raw.percentile_ms(0.50) / ours.percentile_ms(0.50)
    p99 = raw.percentile_ms(0.99) / ours.percentile_ms(0.99)
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"{backend:<10} ours/raw speed: events/s {ratio:.2f} ({verdict} the target >= {TARGET_RATIO}), "
        f"per append median {median:.2f}, p99 {p99:.2f}\n"
    )
    return ratio


def report_keyed(backend: str, keyed: Series, keyless: Series) -> None:
    """The integrity work's cost: keyed against keyless EventLog, same run (1.0: no cost)."""
    print(
        f"{backend:<10} keyed/keyless speed: events/s {keyed.rate / keyless.rate:.2f}, per append median "
        f"{keyless.percentile_ms(0.50) / keyed.percentile_ms(0.50):.2f}, "
        f"p99 {keyless.percentile_ms(0.99) / keyed.percentile_ms(0.99):.2f}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="timed appends per run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per engine, interleaved (default 3)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)"
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL comparison")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses the target")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="confledger-bench-", dir=args.dir))
    print(
        f"confledger append benchmark: {args.events} single-event transactions per run, "
        f"{args.runs} runs per engine, interleaved; SQLite files in {workdir}\n"
    )
    ratios = []
    try:
        print(
            f"fdatasync of 4 KiB here: {fsync_cost_ms(workdir):.3f} ms (median). When this is far below the "
            "per-append latency, the comparison measures CPU overhead rather than durability cost.\n"
        )
        ddl = events_table_ddl(workdir)
        ours, keyed, raw = Series("EventLog"), Series("keyed"), Series("raw sqlite3")
        for _ in range(args.runs):
            ours.add_run(*run_ours_sqlite(workdir, args.events))
            keyed.add_run(*run_ours_sqlite(workdir, args.events, keyed=True))
            raw.add_run(*run_raw_sqlite(workdir, args.events, ddl))
        ratios.append(report("sqlite", ours, raw))
        ratios.append(report("sqlite", keyed, raw))
        report_keyed("sqlite", keyed, ours)

        base_url = None if args.no_postgres else pg_base_url()
        if base_url is None:
            print("postgresql skipped (not reachable or --no-postgres)")
        else:
            ours, keyed, raw = Series("EventLog"), Series("keyed"), Series("raw psycopg")
            for _ in range(args.runs):
                ours.add_run(*run_ours_postgres(base_url, args.events, workdir))
                keyed.add_run(*run_ours_postgres(base_url, args.events, workdir, keyed=True))
                raw.add_run(*run_raw_postgres(base_url, args.events))
            ratios.append(report("postgresql", ours, raw))
            ratios.append(report("postgresql", keyed, raw))
            report_keyed("postgresql", keyed, ours)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if args.check and min(ratios) < TARGET_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
