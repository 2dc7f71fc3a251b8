"""Propagation through a fleet: from the deciding commit to the last of N followers having applied it.

    .venv/bin/python tests/benchmarks/bench_fleet.py [--changes 200] [--followers 2,4,8]
                                                     [--backends postgres,sqlite] [--sqlite-poll 0.01]
                                                     [--spacing 0] [--anchor REV [--rounds 3]]

One decider (an in-process ``ConfigReloader`` that does not follow) makes ``--changes`` reloads, each once
every follower's service had the one before (a closed loop: what is measured is propagation, not a queue
behind it); N ``confledger serve`` processes follow the log, each with one no-op service callback that
says when it was called (``tests/benchmarks/fleet_noop.py``: a datagram to a socket the harness blocks on).
Per change, from the ``config.applied`` event's ``occurred_at`` (stamped under the append lock, before
its commit, by a process on this host: one clock) to the last follower's service having the config
(p50 / p99 / max), and to the last follower's ``instance.applied`` recorded (``rec.``: the answers of N
followers are N appends in a row under the log's one write lock). It covers the doorbell or the poll,
the follower's read, its validation with its own model, and the callback.

The anchor, in the same run: the bare wake-up mechanism with nothing done on waking, for N listeners in
threads of one process. PostgreSQL: NOTIFY on a connection, LISTEN on N others (send to the last
receipt). SQLite: a commit, and N connections polling ``PRAGMA data_version`` at the followers' interval
(commit to the last one that saw it). Printed as one table: p50 / p99 / max per backend and N, with the
anchor's p50 / p99, the ratio of the p99s, and ``CPU/chg``: the CPU one follower process spent per change
(the median follower; /proc). N followers share the machine's cores: N x that / cores (``floor``) is
about as soon as the last of them can be done, whatever the code does between them. Beside it, from /proc
over the same window: ``busy``, the cores busy on average (every process on the machine), and the CPU per
change of the PostgreSQL server's processes and of the decider with this harness, which share those
cores. With ``busy`` near the core count the row measures CPU, not waiting. Target: PostgreSQL, N = 8,
p99 < 10 ms.

A second anchor on PostgreSQL, ``bare``: the fleet's work itself with nothing of confledger's. N
processes of ``fleet_bare.py`` (psycopg and pydantic) each wake on a NOTIFY, read the change, validate it,
hand it to the same kind of service and record an answer under a table lock, as a follower must; the
harness decides each change under that lock and times it as it times ours. It says how soon this machine
lets N processes do that work at all: what is left between it and ours is ours to cut, not the cores'.

``--spacing S``: S seconds between a change reaching every follower and the next, as a fleet in
production sees a change now and then, with the followers' polls between (the closed loop's changes
come back to back: the connections they use are always warm).

``--anchor REV``: each row is run for this tree and for commit REV (exported with ``git archive``, its
decider and followers importing it first), in turns, ``--rounds`` times, which goes first alternating;
printed as the medians over the rounds of each side and their ratios (this / REV).

``measure(backend, followers, ...)`` runs one row; another benchmark's table can call it.
PostgreSQL: ``CONFLEDGER_TEST_PG_URL`` (default the test database), in a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import select
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import sqlalchemy as sa
from pydantic import BaseModel

if __package__ in (None, ""):  # run as a script: make the ``tests`` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import free_ports, percentile, unwind_on_sigterm

ROOT = Path(__file__).resolve().parents[2]
CONFLEDGER = Path(sys.executable).parent / "confledger"
# Copied into the work directory as a top-level module: an ``--anchor`` side's followers load it too.
SERVICE = Path(__file__).with_name("fleet_noop.py")
BARE_FOLLOWER = Path(__file__).with_name("fleet_bare.py")
MODEL = "bench_fleet_noop:FleetConfig"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_PG_N8_P99_MS = 10.0


@dataclass(frozen=True)
class Result:
    backend: str
    followers: int
    changes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    recorded_p50_ms: float
    recorded_p99_ms: float
    anchor_p50_ms: float
    anchor_p99_ms: float
    poll_interval_s: float
    # CPU (user + system) one follower process spent per change while the changes ran (the median
    # follower): N of them share the machine's cores, which bounds how soon the last can be done.
    follower_cpu_ms: float = float("nan")
    # While the changes ran: how many of the machine's cores were busy on average (anything running), and
    # the CPU per change of the PostgreSQL server's processes and of this process (the decider and the
    # harness waiting for the stamps). With the cores near full, the p50 is about what the CPU allows.
    busy_cores: float = float("nan")
    postgres_cpu_ms: float = float("nan")
    decider_cpu_ms: float = float("nan")
    # PostgreSQL: the same work done bare (``fleet_bare.py``: psycopg and pydantic, nothing of ours), N
    # processes in the same run: how soon the last of them has a change, and one's CPU per change.
    work_p50_ms: float = float("nan")
    work_p99_ms: float = float("nan")
    work_cpu_ms: float = float("nan")

    @property
    def cpu_floor_ms(self) -> float:
        """N followers' CPU for one change spread over every core: the soonest the last could be done
        if they shared the cores perfectly and nothing else ran."""
        return self.followers * self.follower_cpu_ms / (os.cpu_count() or 1)

    @property
    def ratio_p99(self) -> float:
        return self.p99_ms / self.anchor_p99_ms if self.anchor_p99_ms else float("inf")


def _pg_base() -> str:
    return os.environ.get("CONFLEDGER_TEST_PG_URL", DEFAULT_PG_URL)


@contextmanager
def _database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'fleet.db'}"
        return
    schema = f"bench_fleet_{uuid.uuid4().hex[:10]}"
    base = sa.make_url(_pg_base())
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class _Level(BaseModel):
    """The decider's model: the followers' (``fleet_noop.FleetConfig``) without its service."""

    level: int
    name: str = "fleet"


def _write_level(path: Path, level: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"level": level}), encoding="utf-8")
    temporary.replace(path)


def _environment(
    database_url: str, key: str, instance_id: str, poll_interval: float, workdir: Path
) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CONFLEDGER_")}
    environment.update(
        {
            "CONFLEDGER_ADMIN_TOKEN": "bench-admin-token-0123456789abcdef",
            "CONFLEDGER_DATABASE_URL": database_url,
            "CONFLEDGER_ENCRYPTION_KEY": key,
            "CONFLEDGER_INSTANCE_ID": instance_id,
            "CONFLEDGER_FOLLOW_POLL_INTERVAL": str(poll_interval),
            "CONFLEDGER_LOG_LEVEL": os.environ.get("BENCH_FLEET_LOG_LEVEL", "warning"),
            "FLEET_STAMPS": str(workdir / _Stamps.SOCKET),
            # The service module first; then the caller's path: an anchor's tree (--anchor) is imported
            # before this one.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(workdir), os.environ.get("PYTHONPATH"), str(ROOT)])
            ),
        }
    )
    return environment


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc; NaN where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds the whole machine spent not idle so far, over all cores (/proc/stat)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_s() -> dict[int, float]:
    """User + system CPU seconds so far of each process named ``postgres`` on this machine (the server
    the followers use runs here: its backends do their statements' work on the same cores)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        try:
            named = entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres"
        except OSError:
            continue  # gone meanwhile
        if named:
            found[int(entry.name)] = _cpu_s(int(entry.name))
    return found


def _start_followers(
    stack: ExitStack, workdir: Path, config: Path, database_url: str, key: str, count: int, poll: float
) -> tuple[list[str], list[int]]:
    names, waiting = [], []
    for index, port in enumerate(free_ports(count)):
        name = f"bench-follower-{index}"
        sink = (workdir / f"{name}.log").open("wb")
        stack.callback(sink.close)
        process = subprocess.Popen(
            [
                str(CONFLEDGER),
                "serve",
                "--config",
                str(config),
                "--model",
                MODEL,
                "--port",
                str(port),
            ],
            cwd=workdir,
            env=_environment(database_url, key, name, poll, workdir),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )

        def stop(process: subprocess.Popen[bytes] = process) -> None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

        stack.callback(stop)
        names.append(name)
        waiting.append((process, port))
    deadline = time.monotonic() + 120
    for (process, port), name in zip(waiting, names, strict=True):
        while True:
            if process.poll() is not None:
                # The work directory goes with the run: its log's tail is the only trace left.
                tail = (workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{name} exited at start:\n" + "\n".join(tail))
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("followers did not become ready")
            time.sleep(0.1)
    return names, [process.pid for process, _port in waiting]


class _Stamps:
    """When each follower's no-op service was handed each level: the datagrams ``fleet_noop.py`` sends
    to a socket bound in the work directory (bound before the followers start: none is lost while the
    harness is busy, the socket queues them)."""

    SOCKET = "stamps.sock"

    def __init__(self, workdir: Path, name: str = SOCKET) -> None:
        self.names: set[str] = set()
        self.seen: dict[int, dict[str, float]] = {}
        self.path = workdir / name
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.path))
        self.socket.setblocking(False)

    def close(self) -> None:
        self.socket.close()

    def read(self) -> None:
        while True:
            try:
                datagram = self.socket.recv(256)
            except BlockingIOError:
                return
            name, level, moment = datagram.decode().split()
            self.seen.setdefault(int(level), {})[name] = float(moment)

    def all_have(self, level: int) -> bool:
        self.read()
        return self.names <= self.seen.get(level, {}).keys()

    async def wait_for(self, level: int) -> None:
        while not self.all_have(level):
            await anyio.wait_readable(self.socket)

    def block_for(self, level: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.all_have(level):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"level {level} did not reach every bare follower")
            select.select([self.socket], [], [], remaining)


async def _decide(
    database_url: str,
    key: str,
    config: Path,
    changes: int,
    stamps: _Stamps | None,
    spacing: float = 0.0,
    timeout: float = 60.0,
) -> None:
    """Make ``changes`` changes one at a time; with ``stamps``, each only once every follower's service
    had the one before (a closed loop: the time measured is propagation, not a queue behind it), and
    ``spacing`` seconds after that."""
    from confledger.api.reloader import ConfigReloader
    from confledger.api.settings import Settings

    settings = Settings(
        database_url=database_url, encryption_key=key, instance_id="bench-decider", follow=False
    )
    async with ConfigReloader(config_model=_Level, config_source=config, settings=settings) as decider:
        for index in range(changes):
            level = 10_000 + index
            _write_level(config, level)
            operation = await decider.reload_config()
            if not operation.success:
                raise RuntimeError(f"change {index} failed: {operation.message}")
            if stamps is not None:
                with anyio.fail_after(timeout):
                    await stamps.wait_for(level)
                await anyio.sleep(spacing)


def _latencies(database_url: str, stamps: _Stamps) -> tuple[list[float], list[float]]:
    """Per change: to the last follower's service having it, and to the last follower's answer recorded.

    The decider stops once the services had the last change; the followers' answers to it may still be
    on their way to the log, so the read is repeated for a few seconds until they are all there."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return _read_latencies(database_url, stamps)
        except _Incomplete:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Incomplete(RuntimeError):
    pass


def _read_latencies(database_url: str, stamps: _Stamps) -> tuple[list[float], list[float]]:
    from confledger.store import EventLog
    from confledger.store.events import ConfigApplied, InstanceApplied

    with EventLog(database_url, instance_id="bench-reader", migrate_on_open=False) as log:
        applied: dict[int, tuple[int, Any]] = {}
        for event in log.read(types=[ConfigApplied.event_type]):
            if event.instance_id == "bench-decider" and isinstance(event.payload, ConfigApplied):
                level = log.get_config(event.payload.hash).body["level"]
                applied[event.position] = (int(level), event.occurred_at)
        answers: dict[int, list[Any]] = {}
        for event in log.read(types=[InstanceApplied.event_type]):
            payload = event.payload
            if isinstance(payload, InstanceApplied) and payload.role == "followed" and payload.position:
                answers.setdefault(payload.position, []).append(event.occurred_at)
    stamps.read()
    to_service, to_answer = [], []
    # The first config was applied at the decider's start, before the followers existed.
    for position in sorted(applied)[1:]:
        level, decided = applied[position]
        handed = stamps.seen.get(level, {})
        if len(handed) != len(stamps.names) or len(answers.get(position, [])) != len(stamps.names):
            raise _Incomplete(f"level {level} did not reach every follower")
        to_service.append((max(handed.values()) - decided.timestamp()) * 1000)
        to_answer.append((max(answers[position]) - decided).total_seconds() * 1000)
    return to_service, to_answer


def _pg_anchor(database_url: str, listeners: int, changes: int, pause: float) -> list[float]:
    import psycopg

    conninfo = sa.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    channel = f"bench_anchor_{uuid.uuid4().hex[:8]}"
    received: list[list[float]] = [[] for _ in range(listeners)]
    ready = threading.Barrier(listeners + 1)
    stop = threading.Event()

    def listen(index: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f"LISTEN {channel}")
            ready.wait()
            while not stop.is_set():
                for _ in connection.notifies(timeout=0.2):
                    received[index].append(time.time())

    threads = [threading.Thread(target=listen, args=(index,), daemon=True) for index in range(listeners)]
    for thread in threads:
        thread.start()
    ready.wait()
    latencies = []
    with psycopg.connect(conninfo, autocommit=True) as sender:
        for index in range(changes):
            sent = time.time()
            sender.execute(f"NOTIFY {channel}")
            while any(len(times) <= index for times in received):
                time.sleep(0.0001)
            latencies.append((max(times[index] for times in received) - sent) * 1000)
            time.sleep(pause)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    return latencies


def _pg_work_anchor(
    database_url: str, workdir: Path, followers: int, changes: int
) -> tuple[list[float], float]:
    """The fleet's work with nothing of confledger's: N ``fleet_bare.py`` processes, each woken by a
    NOTIFY, reading the change, validating it, handing it to its service and recording its answer under
    the log's lock (see that file). Per change, from just before the decider's commit to the last
    follower's service having it; and the CPU one of them spent per change (the median follower)."""
    import psycopg

    conninfo = sa.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    stamps = _Stamps(workdir, "bare-stamps.sock")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with psycopg.connect(conninfo) as decider:
            decider.execute(
                "CREATE TABLE bare_events (position bigserial PRIMARY KEY, kind text NOT NULL, "
                "instance text, body text NOT NULL, occurred_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            decider.commit()
            for index in range(followers):
                name = f"bare-{index}"
                stamps.names.add(name)
                processes.append(
                    subprocess.Popen([sys.executable, str(BARE_FOLLOWER), conninfo, name, str(stamps.path)])
                )
            stamps.block_for(0)  # every follower is listening
            cpu_before = [_cpu_s(process.pid) for process in processes]
            latencies = []
            for index in range(changes + 1):
                level = 10_000 + index if index < changes else -1
                decider.execute("LOCK TABLE bare_events IN EXCLUSIVE MODE")
                decider.execute(
                    "INSERT INTO bare_events (kind, instance, body) VALUES ('applied', 'decider', %s)",
                    (json.dumps({"level": level}),),
                )
                decider.execute("NOTIFY bare_fleet")
                decided = time.time()
                decider.commit()
                if level < 0:
                    break
                stamps.block_for(level)
                latencies.append((max(stamps.seen[level].values()) - decided) * 1000)
            cpu_spent = [
                _cpu_s(process.pid) - before for process, before in zip(processes, cpu_before, strict=True)
            ]
        for process in processes:
            process.wait(timeout=15)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        stamps.close()
    return latencies, statistics.median(cpu_spent) * 1000 / max(1, changes)


def _sqlite_anchor(workdir: Path, listeners: int, changes: int, pause: float, poll: float) -> list[float]:
    path = workdir / "anchor.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE IF NOT EXISTS beats (n INTEGER)")
    seen: list[list[float]] = [[] for _ in range(listeners)]
    ready = threading.Barrier(listeners + 1)
    stop = threading.Event()

    def poll_loop(index: int) -> None:
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        version = reader.execute("PRAGMA data_version").fetchone()[0]
        ready.wait()
        while not stop.is_set():
            now = reader.execute("PRAGMA data_version").fetchone()[0]
            if now != version:
                version = now
                seen[index].append(time.time())
            time.sleep(poll)
        reader.close()

    threads = [threading.Thread(target=poll_loop, args=(index,), daemon=True) for index in range(listeners)]
    for thread in threads:
        thread.start()
    ready.wait()
    latencies = []
    for index in range(changes):
        committed_before = time.time()
        writer.execute("INSERT INTO beats VALUES (?)", (index,))
        while any(len(times) <= index for times in seen):
            time.sleep(0.0001)
        latencies.append((max(times[index] for times in seen) - committed_before) * 1000)
        time.sleep(pause)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    writer.close()
    return latencies


def measure(
    backend: str,
    followers: int,
    *,
    changes: int = 200,
    pause: float = 0.03,
    sqlite_poll: float = 0.01,
    postgres_poll: float = 0.5,
    spacing: float = 0.0,
) -> Result:
    """One row: ``followers`` serve processes following ``changes`` changes on ``backend``, and the anchor.

    ``spacing``: seconds between a change reaching every follower and the next (0: at once). A fleet in
    production sees a change now and then, with the followers' polls in between; back to back, what is
    warm stays warm."""
    from confledger.store import SecretCipher

    poll = sqlite_poll if backend == "sqlite" else postgres_poll
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory, ExitStack() as stack:
        # BENCH_FLEET_DIR keeps the followers' logs (and the SQLite file) for a look afterwards.
        workdir = Path(os.environ.get("BENCH_FLEET_DIR") or directory)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "config.json"
        _write_level(config, 1)
        key = SecretCipher.generate_key()
        database_url = stack.enter_context(_database(backend, workdir))
        # The decider starts first: it applies the initial config the followers then restore.
        anyio.run(_decide, database_url, key, config, 0, None)
        shutil.copyfile(SERVICE, workdir / "bench_fleet_noop.py")
        stamps = _Stamps(workdir)
        stack.callback(stamps.close)
        names, pids = _start_followers(stack, workdir, config, database_url, key, followers, poll)
        stamps.names.update(names)
        time.sleep(1.0)  # let their start-up settle (first heartbeats, projections)
        cpu_before = [_cpu_s(pid) for pid in pids]
        postgres_before, own_before = _postgres_cpu_s(), time.process_time()
        busy_before, started = _busy_s(), time.monotonic()
        anyio.run(_decide, database_url, key, config, changes, stamps, spacing)
        busy, elapsed = _busy_s() - busy_before, time.monotonic() - started
        own = time.process_time() - own_before
        postgres_after = _postgres_cpu_s()
        cpu_spent = [_cpu_s(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        spent_by_postgres = (
            postgres_after[pid] - postgres_before[pid] for pid in postgres_after.keys() & postgres_before
        )
        postgres = sum(spent for spent in spent_by_postgres if not math.isnan(spent))  # NaN: gone
        latencies, recorded = _latencies(database_url, stamps)
        work: list[float] = []
        work_cpu = math.nan
        if backend == "sqlite":
            anchor = _sqlite_anchor(workdir, followers, changes, pause, poll)
        else:
            anchor = _pg_anchor(database_url, followers, changes, pause)
            work, work_cpu = _pg_work_anchor(database_url, workdir, followers, changes)
    return Result(
        backend=backend,
        followers=followers,
        changes=len(latencies),
        p50_ms=statistics.median(latencies),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies),
        recorded_p50_ms=statistics.median(recorded),
        recorded_p99_ms=percentile(recorded, 0.99),
        anchor_p50_ms=statistics.median(anchor),
        anchor_p99_ms=percentile(anchor, 0.99),
        poll_interval_s=poll,
        follower_cpu_ms=statistics.median(cpu_spent) * 1000 / max(1, changes),
        busy_cores=busy / elapsed if elapsed > 0 else float("nan"),
        postgres_cpu_ms=postgres * 1000 / max(1, changes) if backend == "postgres" else float("nan"),
        decider_cpu_ms=own * 1000 / max(1, changes),
        work_p50_ms=statistics.median(work) if work else math.nan,
        work_p99_ms=percentile(work, 0.99) if work else math.nan,
        work_cpu_ms=work_cpu,
    )


def print_table(results: list[Result]) -> None:
    header = (
        f"{'backend':<10} {'N':>3} {'changes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'rec. p50':>8} {'rec. p99':>8} {'anchor p50':>10} {'anchor p99':>10} {'p99/anchor':>10} "
        f"{'CPU/chg':>8} {'floor':>6} {'busy':>5} {'PG/chg':>7} {'dec/chg':>7} "
        f"{'bare p50':>8} {'bare p99':>8} {'bare CPU':>8}  wake-up"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        wake = (
            "LISTEN/NOTIFY" if result.backend == "postgres" else f"poll {result.poll_interval_s * 1000:g} ms"
        )
        print(
            f"{result.backend:<10} {result.followers:>3} {result.changes:>7} {result.p50_ms:>8.2f} "
            f"{result.p99_ms:>8.2f} {result.max_ms:>8.2f} {result.recorded_p50_ms:>8.2f} "
            f"{result.recorded_p99_ms:>8.2f} {result.anchor_p50_ms:>10.2f} "
            f"{result.anchor_p99_ms:>10.2f} {result.ratio_p99:>10.1f} {result.follower_cpu_ms:>8.2f} "
            f"{result.cpu_floor_ms:>6.1f} {result.busy_cores:>5.2f} {result.postgres_cpu_ms:>7.2f} "
            f"{result.decider_cpu_ms:>7.2f} {result.work_p50_ms:>8.2f} {result.work_p99_ms:>8.2f} "
            f"{result.work_cpu_ms:>8.2f}  {wake}"
        )
    print(
        "CPU/chg: one follower's CPU per change (the median follower); floor: N x that / the machine's "
        f"{os.cpu_count()} cores; busy: cores busy on average while the changes ran (all processes); "
        "PG/chg and dec/chg: the CPU per change of the PostgreSQL server's processes and of the decider "
        "with this harness. bare: the same work by N fleet_bare.py processes (psycopg and pydantic, "
        "nothing of confledger's), in the same run: p50, p99, and one's CPU per change."
    )


def _run_side(importable: Path | None, backend: str, followers: int, arguments: argparse.Namespace) -> Result:
    """One row in a process of its own, importing ``importable``'s tree first when given."""
    environment = dict(os.environ)
    if importable is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(importable), os.environ.get("PYTHONPATH")])
        )
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--json",
        "--backends",
        backend,
        "--followers",
        str(followers),
        "--changes",
        str(arguments.changes),
        "--pause",
        str(arguments.pause),
        "--sqlite-poll",
        str(arguments.sqlite_poll),
        "--spacing",
        str(arguments.spacing),
    ]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"a side failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return Result(**json.loads(done.stdout.strip().splitlines()[-1]))


def compare(arguments: argparse.Namespace) -> None:
    """Every row for this tree and for ``--anchor``, interleaved; medians over the rounds, and ratios."""
    from tests.benchmarks.bench_reload import anchor_tree

    anchor = arguments.anchor
    with tempfile.TemporaryDirectory(prefix="bench-fleet-anchor-") as directory:
        importable = anchor_tree(anchor, Path(directory))
        header = (
            f"{'backend':<10} {'N':>3} {'side':<10} {'p50 ms':>8} {'p99 ms':>8} {'rec. p50':>8} "
            f"{'CPU/chg':>8}   per round p99"
        )
        print(header)
        print("-" * len(header))
        for backend in arguments.backends.split(","):
            for count in (int(n) for n in arguments.followers.split(",")):
                sides: dict[str, list[Result]] = {"this": [], anchor: []}
                for round_index in range(arguments.rounds):
                    order = ("this", anchor) if round_index % 2 == 0 else (anchor, "this")
                    for side in order:
                        path = None if side == "this" else importable
                        sides[side].append(_run_side(path, backend, count, arguments))
                medians = {}
                for side, results in sides.items():
                    medians[side] = [
                        statistics.median(getattr(r, name) for r in results)
                        for name in ("p50_ms", "p99_ms", "recorded_p50_ms", "follower_cpu_ms")
                    ]
                    rounds = " ".join(f"{r.p99_ms:.1f}" for r in results)
                    p50, p99, recorded, cpu = medians[side]
                    print(
                        f"{backend:<10} {count:>3} {side:<10} {p50:>8.2f} {p99:>8.2f} {recorded:>8.2f} "
                        f"{cpu:>8.2f}   {rounds}"
                    )
                ratios = [this / other for this, other in zip(medians["this"], medians[anchor], strict=True)]
                print(
                    f"{backend:<10} {count:>3} {'ratio':<10} "
                    + " ".join(f"{ratio:>8.2f}" for ratio in ratios)
                    + f"   (this / {anchor})"
                )
    print(f"load average at the end (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} CPUs")


def main() -> int:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--followers", default="2,4,8")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--sqlite-poll", type=float, default=0.01)
    parser.add_argument("--pause", type=float, default=0.03, help="seconds between two rings of the anchor")
    parser.add_argument(
        "--spacing", type=float, default=0.0, help="seconds between one change reaching all and the next"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when PostgreSQL N=8 misses the target")
    parser.add_argument("--anchor", help="a commit to compare with, row by row, in turns")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each side per row (--anchor)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one side of --anchor
    arguments = parser.parse_args()
    if str(ROOT) not in sys.path:
        # After the caller's path: an anchor's tree (--anchor) is imported before this one.
        sys.path.append(str(ROOT))
    if arguments.anchor:
        compare(arguments)
        return 0
    results = [
        measure(
            backend,
            int(count),
            changes=arguments.changes,
            pause=arguments.pause,
            sqlite_poll=arguments.sqlite_poll,
            spacing=arguments.spacing,
        )
        for backend in arguments.backends.split(",")
        for count in arguments.followers.split(",")
    ]
    if arguments.json:
        for result in results:
            print(json.dumps(dataclasses.asdict(result)))
        return 0
    print_table(results)
    target_rows = [r for r in results if r.backend == "postgres" and r.followers == 8]
    missed = [r for r in target_rows if r.p99_ms >= TARGET_PG_N8_P99_MS]
    verdict = "not measured" if not target_rows else "missed" if missed else "met"
    print(f"target: PostgreSQL N=8 p99 < {TARGET_PG_N8_P99_MS:g} ms: {verdict}")
    print(f"load average while measuring (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} CPUs")
    return 1 if arguments.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
