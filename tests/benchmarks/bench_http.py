"""What a caller waits for over HTTP: one real ``confledger serve``, measured from the client's side.

    .venv/bin/python tests/benchmarks/bench_http.py [--quick] [--rounds N] [--wrk-seconds S]
                                                    [--anchor-python PATH] [--no-wrk]

A ``confledger serve`` process is started on a free port (SQLite with synchronous=FULL, a copy of
``examples/config.yaml`` in a temporary directory, the model ``confledger.examples.app_config:AppConfig``,
the admin token from the environment, default logging: uvicorn's access log goes to a file). About 30
reloads are recorded first, so ``/history?limit=20`` has a full page to show. Then:

1. Latency, in interleaved rounds over one keep-alive connection (``http.client``): each round sends
   GET /healthz, /api/v1/config/current, /status, /stats, /history?limit=20 and POST /reload in a
   shuffled order; the reload follows a rewrite of the config file between two contents, so every
   reload applies a change. Reported: p50 and p99 per request, the ratio to /healthz, and for the
   reload the reply's own ``total_duration_ms`` beside what the client waited beyond /healthz.
2. Throughput under ``wrk -t2 -c32`` (``apt-get install -y wrk``; the token is sent as a header) for
   /healthz, /current, /status and /history?limit=20 (a dashboard polling between changes), in
   interleaved runs: median requests per second, ratio to /healthz, and wrk's p50 latency.

With ``--anchor REV`` a second server runs commit REV (exported with ``git archive``, imported first
through ``PYTHONPATH``, on this venv's packages), or with ``--anchor-python`` the interpreter of another
checkout's venv; every round and wrk run alternates between the two, so the before/after comparison is
made under the same machine load. The table states each target and whether
it holds: each read p50 <= 1.5x /healthz; reload p50 <= /healthz + 2.5 ms; ``total_duration_ms`` >= half
of what the client waited beyond /healthz; /current and /status throughput >= 0.7x /healthz.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``tests`` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import ROOT, TOKEN, free_port, percentile, run_wrk, unwind_on_sigterm

EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
MODEL = "confledger.examples.app_config:AppConfig"
PREFIX = "/api/v1/config"
SEED_OPERATIONS = 30

READS = {
    "healthz": "/healthz",
    "current": f"{PREFIX}/current",
    "status": f"{PREFIX}/status",
    "stats": f"{PREFIX}/stats",
    "history": f"{PREFIX}/history?limit=20",
}
RELOAD = "reload"
# /history under wrk is a dashboard polling it between changes: served as rendered (no target of its own).
WRK_PATHS = {name: READS[name] for name in ("healthz", "current", "status", "history")}
WRK_TARGETS = ("current", "status")

READ_RATIO_TARGET = 1.5
RELOAD_EXTRA_TARGET_MS = 2.5
TOTAL_SHARE_TARGET = 0.5
THROUGHPUT_RATIO_TARGET = 0.7


@dataclass
class Server:
    """One ``confledger serve`` process, its config file and one keep-alive connection to it."""

    name: str
    python: str
    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    connection: http.client.HTTPConnection | None = None
    contents: tuple[str, str] = ("", "")
    reloads: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    total_duration_ms: list[float] = field(default_factory=list)
    beyond_total_ms: list[float] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)  # CONFLEDGER_* the server also gets
    requests_per_s: dict[str, list[float]] = field(default_factory=dict)
    wrk_p50_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)  # may hold a prebuilt log.db
        base = EXAMPLE_CONFIG.read_text(encoding="utf-8")
        # Two contents that differ in one value: every reload applies a change.
        self.contents = (base, base.replace("ttl_seconds: 3600", "ttl_seconds: 3601"))
        assert self.contents[0] != self.contents[1]
        self.config.write_text(self.contents[0], encoding="utf-8")
        self.port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CONFLEDGER_")}
        environment.update(CONFLEDGER_ADMIN_TOKEN=TOKEN, CONFLEDGER_SQLITE_SYNCHRONOUS="FULL")
        environment.update(self.environment)
        command = [
            str(Path(self.python).parent / "confledger"),  # the console script beside the interpreter
            "serve",
            "--config",
            str(self.config),
            "--model",
            MODEL,
            "--database",
            f"sqlite:///{self.directory / 'log.db'}",
            "--port",
            str(self.port),
        ]
        with (self.directory / "serve.log").open("wb") as output:
            self.process = subprocess.Popen(
                command, env=environment, stdout=output, stderr=subprocess.STDOUT, cwd=self.directory
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.connect()
                if self.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "serve.log").read_text(errors="replace")
                raise RuntimeError(f"{self.name}: confledger serve did not start:\n{log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def connect(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        assert self.connection is not None
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def reload(self) -> tuple[float, dict[str, object]]:
        """Rewrite the config (untimed), then POST /reload: the client's wait in ms and the reply."""
        self.reloads += 1
        self.config.write_text(self.contents[self.reloads % 2], encoding="utf-8")
        started = time.perf_counter()
        status, body = self.request("POST", f"{PREFIX}/reload", b"{}")
        waited = (time.perf_counter() - started) * 1000
        reply = json.loads(body)
        if status != 200 or not reply.get("success"):
            raise RuntimeError(f"{self.name}: reload answered {status}: {body[:300]!r}")
        return waited, reply

    def measure(self, name: str) -> None:
        if name == RELOAD:
            waited, reply = self.reload()
            total = float(reply["total_duration_ms"])  # type: ignore[arg-type]
            self.total_duration_ms.append(total)
            self.beyond_total_ms.append(waited - total)
        else:
            started = time.perf_counter()
            status, body = self.request("GET", READS[name])
            waited = (time.perf_counter() - started) * 1000
            if status != 200:
                raise RuntimeError(f"{self.name}: GET {READS[name]} answered {status}: {body[:300]!r}")
        self.latency_ms.setdefault(name, []).append(waited)

    def p50(self, name: str) -> float:
        return statistics.median(self.latency_ms[name])

    def rps(self, name: str) -> float:
        return statistics.median(self.requests_per_s[name])


@contextmanager
def servers(pythons: list[tuple[str, str, dict[str, str]]], directory: Path) -> Iterator[list[Server]]:
    """A started server per (name, interpreter, extra environment), stopped on leaving."""
    with ExitStack() as stack:
        started: list[Server] = []
        for name, python, environment in pythons:
            server = Server(name, python, directory / name, environment=environment)
            stack.callback(server.stop)
            server.start()
            started.append(server)
        yield started


def latency_rounds(group: list[Server], rounds: int, warmup: int, seed: int) -> None:
    shuffle = random.Random(seed)
    names = [*READS, RELOAD]
    for server in group:
        for _ in range(SEED_OPERATIONS):
            server.reload()
    for round_number in range(warmup + rounds):
        for server in shuffle.sample(group, len(group)):
            order = shuffle.sample(names, len(names))
            for name in order:
                server.measure(name)
        if round_number + 1 == warmup:
            for server in group:
                server.latency_ms.clear()
                server.total_duration_ms.clear()
                server.beyond_total_ms.clear()


def wrk_run(server: Server, name: str, seconds: float) -> None:
    url = f"http://127.0.0.1:{server.port}{WRK_PATHS[name]}"
    result = run_wrk(url, seconds)
    if result.failed:
        raise RuntimeError(
            f"{server.name}: {result.failed} failed requests from wrk on {url}:\n{result.output}"
        )
    server.requests_per_s.setdefault(name, []).append(result.requests_per_s)
    server.wrk_p50_ms.setdefault(name, []).append(result.p50_ms)


def throughput_rounds(group: list[Server], rounds: int, seconds: float, seed: int) -> None:
    shuffle = random.Random(seed)
    for _ in range(rounds):
        runs = [(server, name) for server in group for name in WRK_PATHS]
        for server, name in shuffle.sample(runs, len(runs)):
            wrk_run(server, name, seconds)


def verdict(holds: bool) -> str:
    return "ok" if holds else "MISSED"


def report(group: list[Server], with_wrk: bool) -> None:
    for server in group:
        floor = server.p50("healthz")
        print(
            f"\n== {server.name} ({server.python}); latency over one keep-alive connection, "
            f"{len(server.latency_ms['healthz'])} rounds"
        )
        print(f"{'request':<34}{'p50 ms':>9}{'p99 ms':>9}{'x healthz':>11}   target")
        for name, path in [*READS.items(), (RELOAD, f"POST {PREFIX}/reload")]:
            p50, p99 = server.p50(name), percentile(server.latency_ms[name], 0.99)
            if name == "healthz":
                target = "(the floor)"
            elif name == RELOAD:
                extra = p50 - floor
                target = f"<= healthz + {RELOAD_EXTRA_TARGET_MS} ms: +{extra:.2f} ms {verdict(extra <= RELOAD_EXTRA_TARGET_MS)}"
            else:
                target = f"<= {READ_RATIO_TARGET}x: {verdict(p50 / floor <= READ_RATIO_TARGET)}"
            print(f"{path:<34}{p50:>9.2f}{p99:>9.2f}{p50 / floor:>10.2f}x   {target}")
        total = statistics.median(server.total_duration_ms)
        beyond = server.p50(RELOAD) - floor
        beyond_total = statistics.median(server.beyond_total_ms) - floor
        share = total / beyond if beyond > 0 else float("inf")
        print(
            f"reload reply total_duration_ms p50 {total:.2f} ms; client waited {beyond:.2f} ms beyond "
            f"/healthz (share in total_duration_ms {share:.2f}, target >= {TOTAL_SHARE_TARGET}: "
            f"{verdict(share >= TOTAL_SHARE_TARGET)}); outside total_duration_ms and beyond /healthz: "
            f"p50 {beyond_total:.2f} ms"
        )
        if not with_wrk:
            continue
        base = server.rps("healthz")
        print(f"wrk -t2 -c32, {len(server.requests_per_s['healthz'])} run(s) each, median")
        print(f"{'request':<34}{'req/s':>9}{'x healthz':>11}{'p50 ms':>9}   target")
        for name, path in WRK_PATHS.items():
            rps = server.rps(name)
            p50 = statistics.median(server.wrk_p50_ms[name])
            if name == "healthz":
                target = "(the floor)"
            elif name in WRK_TARGETS:
                target = f">= {THROUGHPUT_RATIO_TARGET}x: {verdict(rps / base >= THROUGHPUT_RATIO_TARGET)}"
            else:
                target = "(no target: polled between changes)"
            print(f"{path:<34}{rps:>9.0f}{rps / base:>10.2f}x{p50:>9.2f}   {target}")


def main() -> None:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter wrk runs")
    parser.add_argument("--rounds", type=int, default=None, help="latency rounds (default 300, quick 60)")
    parser.add_argument("--wrk-seconds", type=float, default=None, help="per wrk run (default 5, quick 2)")
    parser.add_argument("--wrk-rounds", type=int, default=None, help="wrk runs per path (default 3, quick 1)")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter (of a venv) whose confledger serves"
    )
    parser.add_argument("--anchor-python", default=None, help="a second checkout's interpreter, interleaved")
    parser.add_argument("--anchor", default=None, metavar="REV", help="a commit served beside this tree")
    parser.add_argument("--no-wrk", action="store_true", help="latency only")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    rounds = args.rounds or (60 if args.quick else 300)
    wrk_seconds = args.wrk_seconds or (2.0 if args.quick else 5.0)
    wrk_rounds = args.wrk_rounds or (1 if args.quick else 3)
    with_wrk = not args.no_wrk
    if with_wrk and shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk), or pass --no-wrk")
    if args.anchor and args.anchor_python:
        sys.exit("--anchor and --anchor-python: one anchor at a time")
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        pythons: list[tuple[str, str, dict[str, str]]] = [("this", args.python, {})]
        if args.anchor_python:
            pythons.append(("anchor", args.anchor_python, {}))
        if args.anchor:
            from tests.benchmarks.bench_reload import anchor_tree

            (Path(tmp) / "anchor-tree").mkdir()
            importable = anchor_tree(args.anchor, Path(tmp) / "anchor-tree")
            pythons.append((f"anchor {args.anchor}", args.python, {"PYTHONPATH": str(importable)}))
        with servers(pythons, Path(tmp)) as group:
            latency_rounds(group, rounds, warmup=max(5, rounds // 20), seed=args.seed)
            if with_wrk:
                throughput_rounds(group, wrk_rounds, wrk_seconds, seed=args.seed)
            report(group, with_wrk)


if __name__ == "__main__":
    main()
