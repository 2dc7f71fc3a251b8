"""Zero downtime under load: wrk on an app that reads the config on every request while it changes.

    .venv/bin/python -m tests.benchmarks.bench_zero_downtime [--seconds 20] [--rounds 2] [--rate 20]
                                                              [--anchor REV]

``tests/benchmarks/zero_downtime_app.py`` runs under uvicorn (the embedded lifecycle, SQLite with
synchronous=FULL, access log off). ``wrk -t2 -c32`` drives ``GET /work`` with
``tests/benchmarks/zero_downtime.lua``, which checks every response: its derived sum matches its version
(else the request saw two versions mixed) and each version always shows one hash (which must be the hash
the reload announced for it). Runs alternate between "changing" (the app rewrites its config file and
reloads it ``--rate`` times a second, each a new version: see the app's docstring for why in-process)
and "quiet" (the same load, no change).
Judged: failed requests 0, mixed responses 0, p99 changing / quiet < 1.2.

``--anchor REV``: a second app runs commit REV's confledger (exported with ``git archive``, imported first
through ``PYTHONPATH``: ``bench_reload.anchor_tree``), and each round's changing/quiet pair runs on one app
then the other (which goes first alternating), so both sides share the machine's noise. Printed: each
side's figures and the ratio of their p99s under changes (this / anchor). The ratio changing / quiet is
the noisiest figure of the table on a shared VM: most of its swing is the quiet run's p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tests.benchmarks.common import (
    ROOT,
    TOKEN,
    WrkResult,
    bench_dir,
    free_port,
    median,
    percentile,
    run_wrk,
    unwind_on_sigterm,
)

VALUES = 64


class BenchConfig(BaseModel):
    """The app's config: a version and 64 values that all move with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    values: dict[str, int]


def body_of(version: int) -> dict[str, Any]:
    """Version ``version`` of the config. A response that read it whole sums its values to
    ``version * 1000 * VALUES + VALUES * (VALUES - 1) / 2`` (the Lua script's check)."""
    return {
        "version": version,
        "values": {f"v{index:02d}": version * 1000 + index for index in range(VALUES)},
    }


LUA = Path(__file__).resolve().parent / "zero_downtime.lua"
CHANGES = "/bench/changes"
P99_RATIO_TARGET = 1.2
_ZD_TOTALS = re.compile(r"^ZD checked (\d+) mixed (\d+) conflicts (\d+)$", re.MULTILINE)
_ZD_VERSION = re.compile(r"^ZD version (\d+) ([0-9a-f]+)$", re.MULTILINE)


@dataclass
class Run:
    changing: bool
    wrk: WrkResult
    checked: int
    mixed: int
    reloads: int = 0
    reload_failures: int = 0
    reload_ms: list[float] = field(default_factory=list)
    versions_matched: int = 0  # versions wrk saw whose hash was compared with the reload's


@dataclass
class App:
    directory: Path
    importable: Path | None = None  # another tree's confledger, imported first (``--anchor``)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    announced: dict[int, str] = field(default_factory=dict)  # version -> hash from the reload reply

    @property
    def config(self) -> Path:
        return self.directory / "config.json"

    def write(self, version: int) -> None:
        # Written aside and renamed over, as deploy tools do: a reload never reads half a file.
        spare = self.directory / "config.json.new"
        spare.write_text(json.dumps(body_of(version)), encoding="utf-8")
        spare.replace(self.config)

    def start(self) -> None:
        self.write(0)
        self.port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CONFLEDGER_")}
        environment.update(
            BENCH_ZD_CONFIG=str(self.config), BENCH_ZD_DATABASE=f"sqlite:///{self.directory / 'log.db'}"
        )
        # Run from ROOT, ``confledger`` would be this tree's folder there, ahead of any PYTHONPATH.
        working = ROOT
        if self.importable is not None:
            environment["PYTHONPATH"] = os.pathsep.join([str(self.importable), str(ROOT)])
            working = self.directory
        command = [
            sys.executable, "-m", "uvicorn", "tests.benchmarks.zero_downtime_app:app",
            "--port", str(self.port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        with (self.directory / "app.log").open("wb") as output:
            self.process = subprocess.Popen(
                command, env=environment, stdout=output, stderr=subprocess.STDOUT, cwd=working
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get("/work")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start:\n{(self.directory / 'app.log').read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(
                "POST", path, body=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )  # fmt: skip
            response = connection.getresponse()
            reply: dict[str, Any] = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"POST {path} answered {response.status}: {reply}")
            return reply
        finally:
            connection.close()


def one_run(app: App, seconds: float, changing: bool, rate: float) -> Run:
    if changing:
        app.post(CHANGES, {"rate": rate})
    try:
        result = run_wrk(
            f"http://127.0.0.1:{app.port}/work",
            seconds,
            script=LUA,
            environment={"BENCH_ZD_VALUES": str(VALUES)},
        )
    finally:
        done = (
            app.post(CHANGES, {"rate": 0})
            if changing
            else {"reloads": 0, "failures": 0, "announced": {}, "reload_ms": []}
        )
    totals = _ZD_TOTALS.search(result.output)
    if totals is None:
        raise RuntimeError(f"the wrk script printed no totals:\n{result.output}")
    checked, mixed, conflicts = (int(value) for value in totals.groups())
    app.announced.update({int(version): shown for version, shown in done["announced"].items()})
    # A version shown with another hash than the reload announced for it is a mix too.
    compared = [
        (app.announced[int(version)], shown)
        for version, shown in _ZD_VERSION.findall(result.output)
        if int(version) in app.announced
    ]
    unannounced = sum(1 for announced, shown in compared if announced != shown)
    mixed_total = mixed + conflicts + unannounced
    return Run(
        changing,
        result,
        checked,
        mixed_total,
        done["reloads"],
        done["failures"],
        done["reload_ms"],
        len(compared),
    )


def measure(seconds: float = 20.0, rounds: int = 2, rate: float = 20.0) -> dict[str, Any]:
    """Alternating changing/quiet runs (changing first in odd rounds) on one app; the figures of both."""
    directory = bench_dir("confledger-bench-zd-")
    app = App(directory)
    runs: list[Run] = []
    try:
        app.start()
        one_run(app, min(2.0, seconds), changing=False, rate=rate)  # warm-up, not counted
        for index in range(rounds):
            runs.extend(one_pair(app, seconds, rate, changing_first=index % 2 == 0))
    finally:
        app.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return figures(runs, seconds, rounds)


def one_pair(app: App, seconds: float, rate: float, *, changing_first: bool) -> list[Run]:
    return [
        one_run(app, seconds, changing, rate)
        for changing in ((True, False) if changing_first else (False, True))
    ]


def measure_against(
    anchor: str, seconds: float = 20.0, rounds: int = 2, rate: float = 20.0
) -> dict[str, Any]:
    """``measure`` for this tree and for commit ``anchor``, their pairs of runs taking turns."""
    from tests.benchmarks.bench_reload import anchor_tree

    directory = bench_dir("confledger-bench-zd-")
    (directory / "anchor-tree").mkdir()
    importable = anchor_tree(anchor, directory / "anchor-tree")
    apps = {"this": App(directory / "this"), f"anchor {anchor}": App(directory / "anchor", importable)}
    runs: dict[str, list[Run]] = {name: [] for name in apps}
    try:
        for app in apps.values():
            app.directory.mkdir()
            app.start()
            one_run(app, min(2.0, seconds), changing=False, rate=rate)  # warm-up, not counted
        for index in range(rounds):
            order = list(apps) if index % 2 == 0 else list(reversed(apps))
            for name in order:
                runs[name].extend(one_pair(apps[name], seconds, rate, changing_first=index % 2 == 0))
    finally:
        for app in apps.values():
            app.stop()
        shutil.rmtree(directory, ignore_errors=True)
    found: dict[str, Any] = {name: figures(side, seconds, rounds) for name, side in runs.items()}
    this, other = (found[name]["changing"]["p99_ms"] for name in apps)
    found["changing_p99_this_over_anchor"] = this / other
    return found


def figures(runs: list[Run], seconds: float, rounds: int) -> dict[str, Any]:
    """The figures of one app's runs: each side's, the reloads', and the ratio of the p99s."""
    changing_runs = [run for run in runs if run.changing]
    quiet_runs = [run for run in runs if not run.changing]

    def side(group: list[Run]) -> dict[str, float]:
        return {
            "requests": sum(run.wrk.requests for run in group),
            "checked": sum(run.checked for run in group),
            "failed": sum(run.wrk.failed for run in group),
            "mixed": sum(run.mixed for run in group),
            "requests_per_s": median([run.wrk.requests_per_s for run in group]),
            "p50_ms": median([run.wrk.p50_ms for run in group]),
            "p99_ms": median([run.wrk.p99_ms for run in group]),
        }

    changing, quiet = side(changing_runs), side(quiet_runs)
    return {
        "changing": changing,
        "quiet": quiet,
        "reloads": sum(run.reloads for run in changing_runs),
        "reload_failures": sum(run.reload_failures for run in changing_runs),
        "versions_matched": sum(run.versions_matched for run in changing_runs),
        "reload_p50_ms": median([ms for run in changing_runs for ms in run.reload_ms]),
        "reload_p99_ms": percentile([ms for run in changing_runs for ms in run.reload_ms], 0.99),
        "changes_per_s": sum(run.reloads for run in changing_runs) / (seconds * len(changing_runs)),
        "p99_ratio": changing["p99_ms"] / quiet["p99_ms"],
        "seconds": seconds,
        "rounds": rounds,
    }


def main() -> int:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per wrk run (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="changing/quiet pairs (default 2)")
    parser.add_argument("--rate", type=float, default=20.0, help="config changes per second (default 20)")
    parser.add_argument("--anchor", default=None, metavar="REV", help="a commit run beside this tree")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    if args.anchor:
        found = measure_against(args.anchor, args.seconds, args.rounds, args.rate)
    else:
        found = measure(args.seconds, args.rounds, args.rate)
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
