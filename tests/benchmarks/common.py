"""What every benchmark here shares: percentiles, a directory on a real disk, ports, wrk, PostgreSQL, RSS.

Kept in one place so each ``bench_*.py`` and the table (``python -m tests.benchmarks``) measure the same
way: the same percentile rule, the same wrk invocation and parsing, the same throwaway PostgreSQL schema.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = [
    "DEFAULT_PG_URL",
    "ROOT",
    "TOKEN",
    "WrkResult",
    "bench_dir",
    "filesystem_of",
    "free_port",
    "free_ports",
    "median",
    "percentile",
    "pg_base_url",
    "pg_schema",
    "rss_mb",
    "run_wrk",
    "unwind_on_sigterm",
]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOKEN = "bench-admin-token-0123456789abcdef"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile every benchmark here reports (0.5 is the median's upper neighbour)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def filesystem_of(path: Path) -> str:
    """The type of the file system ``path`` lives on, from /proc/mounts ('?' when unknown)."""
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


def bench_dir(prefix: str, requested: str | Path | None = None) -> Path:
    """A fresh directory for SQLite files on a real disk: on tmpfs an fsync costs nothing, so a
    synchronous=FULL commit there would measure no durability at all."""
    base = Path(requested) if requested else Path(tempfile.gettempdir())
    if filesystem_of(base.resolve()) in ("tmpfs", "ramfs") and not requested:
        base = ROOT
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports. Probed all at once, each probe held until the last is taken: ports
    picked one by one for servers that bind later can come back twice (the first server has not
    bound its port yet when the second is picked), and the second server then exits at start."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- wrk ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _latency_ms(output: str, label: str) -> float:
    found = re.search(rf"^\s+{label}%\s+([0-9.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {label}% line in wrk's output:\n{output}")
    return float(found.group(1)) * _UNIT_MS[found.group(2)]


def parse_wrk(output: str) -> WrkResult:
    requests, rps = _REQUESTS.search(output), _RPS.search(output)
    if requests is None or rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    errors = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        requests_per_s=float(rps.group(1)),
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(count) for count in errors.groups()) if errors else 0,
        output=output,
    )


def run_wrk(
    url: str,
    seconds: float,
    *,
    threads: int = 2,
    connections: int = 32,
    token: str | None = TOKEN,
    script: Path | None = None,
    environment: dict[str, str] | None = None,
) -> WrkResult:
    """``wrk -t2 -c32 --latency`` (the issue's load) against ``url``; the token goes in a header."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **(environment or {})}
    )
    return parse_wrk(done.stdout)


# --- PostgreSQL -----------------------------------------------------------------------------------------


def pg_base_url() -> str | None:
    """The test server's URL (``CONFLEDGER_TEST_PG_URL``) with the psycopg driver, or None if unreachable."""
    url = make_url(os.environ.get("CONFLEDGER_TEST_PG_URL", DEFAULT_PG_URL))
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return url.render_as_string(hide_password=False)


@contextmanager
def pg_schema(base_url: str) -> Iterator[str]:
    """A fresh schema (unique name: other benchmarks and tests share the server), dropped afterwards;
    yields a URL whose connections use it."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        try:
            yield (
                make_url(base_url)
                .update_query_dict({"options": f"-csearch_path={name}"})
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        admin.dispose()


def unwind_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``) unwind the benchmark as Ctrl-C does, so the ``finally`` blocks and
    exit stacks that stop its ``confledger serve`` processes and drop its schemas run. Left to the default
    action, the benchmark died at once and the servers it started ran on, orphaned, taking the cores
    that the next measurement shares."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
