"""How long the operator's command line takes to start, side by side with a bare interpreter.

    .venv/bin/python tests/benchmarks/bench_cli_startup.py [--runs 5]

Each command runs as a fresh process (what an operator types), interleaved with `python -c pass` (the
floor no command can go under) in every round, after a warm-up run of each that writes the `.pyc` files
(as an operator's first run would, whatever `PYTHONDONTWRITEBYTECODE` says here). A log of 1,000 events
is built first so `verify` does real work. Printed: the median and the max per command, and the median
above the floor. Target: `history --help` and `verify` each under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 0.5


def _build_log(url: str, events: int) -> None:
    from confledger.store.events import InstanceStarted, NewEvent
    from confledger.store.log import EventLog

    with EventLog(url, instance_id="bench") as log:
        batch = [NewEvent(InstanceStarted(version="0", host="bench", pid=n)) for n in range(100)]
        for _ in range(events // len(batch)):
            log.append(batch)


def _timed(command: list[str], environment: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    return time.perf_counter() - started


def _writing_bytecode() -> dict[str, str]:
    """This environment, with Python allowed to write ``.pyc`` files: as an operator's first run does
    (or ``pip install``, for a package that is not editable). Without it, under a
    ``PYTHONDONTWRITEBYTECODE`` that CI or a container sets, every measured run would compile
    confledger's modules from source again (about 0.1 s of a command's start-up here)."""
    environment = dict(os.environ)
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    return environment


FLOOR = "python -c pass (floor)"
JUDGED = ("confledger history --help", "confledger verify")


def measure(runs: int = 5) -> dict[str, list[float]]:
    """Seconds per command, ``runs`` interleaved rounds after one warm-up, keyed by the command's name."""
    executable = Path(sys.executable)
    confledger = shutil.which("confledger", path=str(executable.parent)) or "confledger"
    workdir = Path(tempfile.mkdtemp(prefix="confledger-cli-bench-"))
    try:
        url = f"sqlite:///{workdir / 'bench.db'}"
        _build_log(url, 1_000)
        commands = {
            FLOOR: [str(executable), "-c", "pass"],
            "confledger --help": [confledger, "--help"],
            "confledger history --help": [confledger, "history", "--help"],
            "confledger verify": [confledger, "verify", "--database", url],
            "confledger history": [confledger, "history", "--database", url],
        }
        for command in commands.values():  # warm the page cache, and write the .pyc files
            _timed(command, _writing_bytecode())
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                times[name].append(_timed(command))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times = measure(args.runs)
    floor = statistics.median(times[FLOOR])
    print(f"{'command':<28} {'median s':>9} {'max s':>7} {'above floor':>12}  target")
    for name, samples in times.items():
        median = statistics.median(samples)
        target = ""
        if name in JUDGED:
            target = f"< {TARGET_SECONDS} s: {'met' if median < TARGET_SECONDS else 'MISSED'}"
        print(f"{name:<28} {median:>9.3f} {max(samples):>7.3f} {median - floor:>12.3f}  {target}")


if __name__ == "__main__":
    main()
