"""From a config file's change to the start of its reload, with the file watcher, against the seed's poll.

    .venv/bin/python -m tests.benchmarks.bench_watcher [--changes 50]

Two watchers run side by side in one event loop, each on a file in its own directory: confledger's
``FileWatcher`` (inotify through watchfiles, with its settle check that a file has stopped changing) and
the anchor, the seed's loop that ``stat``s the file once a second. Each change rewrites both files the way
deploy tools do (write aside, rename over) at the same moment; the time from the rename to each watcher's
``on_change`` call (where the reload starts) is recorded. Changes are spaced by a random 1.0-1.5 s, so a
poll's phase is not always the same.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from confledger.api.watcher import FileWatcher, fingerprint
from tests.benchmarks.common import bench_dir, median, percentile

SEED_POLL_S = 1.0


class Seen:
    """When each side last saw a change."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.event = anyio.Event()

    async def on_change(self) -> None:
        self.at = time.perf_counter()
        self.event.set()

    def reset(self) -> None:
        self.at = None
        self.event = anyio.Event()


async def seed_poll(path: Path, seen: Seen) -> None:
    last = fingerprint(path)
    while True:
        await anyio.sleep(SEED_POLL_S)
        current = fingerprint(path)
        if current != last:
            last = current
            await seen.on_change()


def rewrite(path: Path, number: int) -> None:
    spare = path.with_name(path.name + ".new")
    spare.write_text(f"version: {number}\n", encoding="utf-8")
    spare.replace(path)


async def run(changes: int, seed: int) -> dict[str, list[float]]:
    directory = bench_dir("confledger-bench-watcher-")
    ours_file, seed_file = directory / "ours" / "config.yaml", directory / "seed" / "config.yaml"
    for path in (ours_file, seed_file):
        path.parent.mkdir()
        rewrite(path, 0)
    ours, anchor = Seen(), Seen()
    watcher = FileWatcher(ours_file, ours.on_change)
    timings: dict[str, list[float]] = {"ours_ms": [], "seed_ms": []}
    shuffle = random.Random(seed)
    try:
        async with anyio.create_task_group() as group:
            await group.start(watcher.run)
            group.start_soon(seed_poll, seed_file, anchor)
            await anyio.sleep(0.5)
            for number in range(1, changes + 1):
                ours.reset()
                anchor.reset()
                started = time.perf_counter()
                rewrite(ours_file, number)
                rewrite(seed_file, number)
                with anyio.fail_after(10):
                    await ours.event.wait()
                    await anchor.event.wait()
                assert ours.at is not None
                assert anchor.at is not None
                timings["ours_ms"].append((ours.at - started) * 1000)
                timings["seed_ms"].append((anchor.at - started) * 1000)
                await anyio.sleep(shuffle.uniform(1.0, 1.5))
            watcher.stop()
            group.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return timings


def measure(changes: int = 50, seed: int = 5) -> dict[str, Any]:
    return anyio.run(run, changes, seed)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    found = measure(args.changes)
    for name, values in found.items():
        print(f"{name}: p50 {median(values):.1f} ms, p99 {percentile(values, 0.99):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
