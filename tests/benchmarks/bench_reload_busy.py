"""A reload while another thread of the process keeps the GIL busy, against the same reload in a quiet process.

    .venv/bin/python -m tests.benchmarks.bench_reload_busy [--rounds R] [--reloads N] [--anchor REV]

What a service saturating its event loop does to a reload: the reload's blocking work runs in a worker
thread, and every call in it that lets go of the GIL (an fsync, a statement's step, a write to a file)
hands the GIL to the busy thread, which keeps it up to ``sys.getswitchinterval()`` (5 ms) before the
worker has it back. So the busy figure is about the quiet one plus 5 ms per such call that lost the GIL;
fewer of them is the only way down short of lowering the switch interval.

The reload has no validator and no service (one thread hop, as in the zero-downtime row), on SQLite with
synchronous=FULL on a real disk. Rounds alternate quiet and busy in one process. Printed: p50 and p99 of
each, the ratio, and the equivalent number of switch intervals lost per reload. ``--anchor REV`` runs the
same in a subprocess on a ``git archive`` of REV too (``bench_reload.anchor_tree``), interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: ``tests`` importable, after whichever confledger is first
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import bench_dir, percentile


def body(version: int) -> dict[str, Any]:
    return {"version": version, "values": {f"k{index}": index + version for index in range(64)}}


async def measure(directory: Path, rounds: int, reloads: int) -> dict[str, list[float]]:
    from pydantic import BaseModel

    from confledger.api.reloader import ConfigReloader
    from confledger.store import EventLog, SecretCipher, Trigger

    class Config(BaseModel):
        version: int
        values: dict[str, int]

    source = directory / "config.json"
    source.write_text(json.dumps(body(0)), encoding="utf-8")
    log = EventLog(
        f"sqlite:///{directory / 'log.db'}",
        sqlite_synchronous="FULL",
        cipher=SecretCipher([SecretCipher.generate_key()]),
        instance_id="bench-busy",
    )
    reloader = ConfigReloader(log, config_model=Config, config_source=source)
    await reloader.start()
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    timings: dict[str, list[float]] = {"quiet": [], "busy": []}
    version = 0
    try:
        for _ in range(rounds):
            for mode in ("quiet", "busy"):
                spinner = threading.Thread(target=spin, daemon=True) if mode == "busy" else None
                if spinner is not None:
                    stop.clear()
                    spinner.start()
                try:
                    for _ in range(reloads):
                        version += 1
                        source.write_text(json.dumps(body(version)), encoding="utf-8")
                        started = time.perf_counter()
                        operation = await reloader.reload_config(Trigger.API)
                        timings[mode].append((time.perf_counter() - started) * 1000)
                        if not operation.success:
                            raise SystemExit(f"reload failed: {operation.error_message}")
                finally:
                    stop.set()
                    if spinner is not None:
                        spinner.join()
    finally:
        await reloader.stop()
        log.close()
    return timings


def worker(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="confledger-bench-busy-", dir=args.dir))
    try:
        print(json.dumps(asyncio.run(measure(directory, args.rounds, args.reloads))))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def summary(name: str, timings: dict[str, list[float]]) -> str:
    quiet, busy = statistics.median(timings["quiet"]), statistics.median(timings["busy"])
    lost = (busy - quiet) / (sys.getswitchinterval() * 1000)
    return (
        f"{name:<8} quiet p50 {quiet:6.2f} / p99 {percentile(timings['quiet'], 0.99):6.2f} ms   "
        f"busy p50 {busy:6.2f} / p99 {percentile(timings['busy'], 0.99):6.2f} ms   "
        f"{busy / quiet:5.1f}x   ~{lost:.1f} switch intervals lost per reload"
    )


def parent(args: argparse.Namespace) -> int:
    from tests.benchmarks.bench_reload import anchor_tree

    directory = bench_dir("confledger-bench-busy-", args.dir)
    # Each side runs this file in a process of its own; the anchor's confledger comes first on its path.
    paths: dict[str, Path | None] = {"this": None}
    if args.anchor:
        (directory / "anchor").mkdir()
        paths[args.anchor] = anchor_tree(args.anchor, directory / "anchor")
    results: dict[str, dict[str, list[float]]] = {name: {"quiet": [], "busy": []} for name in paths}
    try:
        for round_index in range(args.rounds):
            order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
            for name in order:
                environment = dict(os.environ)
                if paths[name] is not None:
                    environment["PYTHONPATH"] = str(paths[name])
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rounds", "1"]
                command += ["--reloads", str(args.reloads), "--dir", str(directory)]
                done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"a benchmark process failed:\n{done.stderr[-3000:]}")
                for mode, values in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    results[name][mode] += values
        for name, timings in results.items():
            print(summary(name, timings))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="quiet/busy pairs (default 4)")
    parser.add_argument("--reloads", type=int, default=40, help="reloads per side and round (default 40)")
    parser.add_argument("--anchor", help="a commit to run side by side (a git archive of it)")
    parser.add_argument("--dir", help="where the logs go (default: a directory on a real disk)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return worker(args) if args.worker else parent(args)


if __name__ == "__main__":
    sys.exit(main())
