"""What a flood of large request bodies costs a ``confledger serve`` process (issue 13, item 1).

    .venv/bin/python tests/benchmarks/bench_flood.py [--rounds N] [--seconds S] [--red-team]
                                                     [--anchor-python PATH]

A ``confledger serve`` process runs on a copy of ``examples/config.yaml``. Each round floods it for S
seconds with ``tests/integration/api/flood_client.py`` (a separate process: 3 unauthenticated 48 MB
reloads, 2 authenticated ones, an endless chunked one and a 30 MB body on GET /current, each thread
reconnecting as soon as it is answered; ``--red-team`` sends only the 3 unauthenticated reloads, as
the red-team run did) while this process sends GET /current back to back on one keep-alive
connection. Reported per server, as medians over the rounds: the growth of the server's peak RSS
(VmHWM, reset before each flood) over its RSS before it, GET /current p50 / p99 / max during the flood
and p99 when quiet, and how many flood requests were answered.

With ``--anchor-python`` (the interpreter of another checkout's venv, e.g. main's) that checkout's
server runs beside this one and the rounds alternate between them, so both are measured under the
same machine load. Targets (this checkout): peak RSS growth < 16 MB, GET /current p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``tests`` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import ROOT, free_port, unwind_on_sigterm

EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
FLOOD_CLIENT = ROOT / "tests" / "integration" / "api" / "flood_client.py"
MODEL = "confledger.examples.app_config:AppConfig"
TOKEN = "bench-admin-token-0123456789abcdef"
CURRENT = "/api/v1/config/current"
RED_TEAM = ["unauthenticated 48 MB reload"]
MB = 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


@dataclass
class Server:
    name: str
    python: str
    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)

    def start(self) -> None:
        self.directory.mkdir(parents=True)
        (self.directory / "config.yaml").write_bytes(EXAMPLE_CONFIG.read_bytes())
        self.port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CONFLEDGER_")}
        environment.update(CONFLEDGER_ADMIN_TOKEN=TOKEN, CONFLEDGER_SIGNAL_HANDLER="false")
        command = [
            str(Path(self.python).parent / "confledger"),
            "serve",
            "--config",
            str(self.directory / "config.yaml"),
            "--model",
            MODEL,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with (self.directory / "serve.log").open("wb") as output:
            self.process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.get_current(self.connect())[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not start:\n{(self.directory / 'serve.log').read_text()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # still working through a flood it had taken in
                self.process.kill()
                self.process.wait()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    @staticmethod
    def get_current(connection: http.client.HTTPConnection) -> tuple[int, float]:
        started = time.perf_counter()
        try:
            connection.request("GET", CURRENT, headers={"Authorization": f"Bearer {TOKEN}"})
            response = connection.getresponse()
            response.read()
        except OSError:
            connection.close()
            return 0, time.perf_counter() - started
        return response.status, time.perf_counter() - started

    def probe(self, connection: http.client.HTTPConnection, until: float) -> list[float]:
        latencies = []
        while time.monotonic() < until:
            status, waited = self.get_current(connection)
            if status == 200:
                latencies.append(waited)
        return latencies

    def flood_round(self, seconds: float, red_team: bool) -> None:
        assert self.process is not None
        pid = self.process.pid
        connection = self.connect()
        quiet = self.probe(connection, time.monotonic() + 1.0)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        before = memory(pid)["VmRSS"]
        command = [sys.executable, str(FLOOD_CLIENT), str(self.port), str(seconds), TOKEN]
        flooding = subprocess.Popen(command + (RED_TEAM if red_team else []), stdout=subprocess.PIPE)
        self.probe(connection, time.monotonic() + 0.5)  # while the flood starts
        loaded = self.probe(connection, time.monotonic() + seconds - 0.5)
        printed, _ = flooding.communicate(timeout=600)
        peak = memory(pid)["VmHWM"]
        answered = sum(sum(statuses.values()) for statuses in json.loads(printed).values())
        connection.close()
        self.rounds.append(
            {
                "growth_mb": (peak - before) / MB,
                "p50_ms": statistics.median(loaded) * 1000 if loaded else float("nan"),
                "p99_ms": p99(loaded) * 1000 if loaded else float("nan"),
                "max_ms": max(loaded) * 1000 if loaded else float("nan"),
                "quiet_p99_ms": p99(quiet) * 1000,
                "probes": len(loaded),
                "answered": answered,
            }
        )

    def summary(self) -> dict[str, float]:
        return {key: statistics.median(r[key] for r in self.rounds) for key in self.rounds[0]}


def main() -> None:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--red-team", action="store_true", help="only the 3 unauthenticated 48 MB reloads")
    parser.add_argument("--anchor-python", help="another checkout's interpreter, measured alternately")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        servers = [Server("this checkout", sys.executable, Path(scratch) / "this")]
        if arguments.anchor_python:
            servers.append(Server("anchor", arguments.anchor_python, Path(scratch) / "anchor"))
        for server in servers:
            server.start()
            stack.callback(server.stop)
        for index in range(arguments.rounds):
            for server in servers if index % 2 == 0 else servers[::-1]:
                server.flood_round(arguments.seconds, arguments.red_team)
                time.sleep(1.0)
        print(
            f"flood: {'red-team (3 unauthenticated 48 MB reloads)' if arguments.red_team else 'all'}, "
            f"{arguments.seconds:g} s x {arguments.rounds} rounds; medians over rounds"
        )
        print(
            f"{'server':<14} {'peak RSS +MB':>12} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>9} "
            f"{'quiet p99':>9} {'probes':>7} {'answered':>8}"
        )
        for server in servers:
            s = server.summary()
            print(
                f"{server.name:<14} {s['growth_mb']:>12.1f} {s['p50_ms']:>8.2f} {s['p99_ms']:>9.2f} "
                f"{s['max_ms']:>9.2f} {s['quiet_p99_ms']:>9.2f} {s['probes']:>7.0f} {s['answered']:>8.0f}"
            )


if __name__ == "__main__":
    main()
