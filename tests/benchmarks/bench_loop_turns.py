"""How many turns of a busy event loop one reload waits for.

    .venv/bin/python tests/benchmarks/bench_loop_turns.py [--reloads 40] [--turn-ms 2]

Under load (the zero-downtime row: wrk's 32 connections on the service's one loop) a reload's wall time
is set less by its own work than by the loop: every time it yields (a checkpoint, a thread hop's
start and its result), it waits behind every request ready to run, one loop turn each. This counts
those turns without wrk: a task on the same loop that holds it for ``--turn-ms`` each time it runs and
counts its runs, so it runs once per loop turn (see ``BusyLoop``); the reloads run beside it one after another, and each
is charged the turns that passed while it ran. The anchor is one bare ``anyio.to_thread.run_sync`` of
a no-op function, measured the same way.

Printed per shape (median and range of the turns, median wall time):
- a reload of ``examples/config.yaml`` with its two validators and three no-op sync callbacks, as
  ``bench_reload.py`` runs it;
- the same with no validator and no callback, as the zero-downtime app reloads.
SQLite with synchronous=FULL on a real disk. The count is nearly independent of the machine's speed:
compare it between commits to see whether a change added or removed a wait for the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: ``tests`` importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_reload import example_files, example_log
from tests.benchmarks.common import bench_dir


class BusyLoop:
    """A task that holds the loop for ``turn_ms`` every time it runs, and counts how often that was.

    It sleeps rather than spins: a sleeping thread lets go of the GIL, so the reload's worker threads
    run as they would beside a loop busy with sockets. A spinning one would charge the reload the GIL's
    switch interval too, which says more about the interpreter than about the reload."""

    def __init__(self, turn_ms: float) -> None:
        self.turn_s = turn_ms / 1000
        self.turns = 0
        self._stopped = False

    async def run(self) -> None:
        while not self._stopped:
            self.turns += 1
            time.sleep(self.turn_s)  # blocks the loop, as a batch of ready requests does
            await asyncio.sleep(0)  # back of the ready queue: exactly one run per loop turn

    def stop(self) -> None:
        self._stopped = True


async def count(
    action: Callable[[int], Awaitable[object]], times: int, turn_ms: float
) -> tuple[list[int], list[float]]:
    """Each of ``times`` calls of ``action``: the loop turns it spanned and its wall time in ms."""
    busy = BusyLoop(turn_ms)
    task = asyncio.get_running_loop().create_task(busy.run())
    turns: list[int] = []
    wall: list[float] = []
    try:
        for index in range(times):
            before, started = busy.turns, time.perf_counter()
            await action(index)
            turns.append(busy.turns - before)
            wall.append((time.perf_counter() - started) * 1000)
    finally:
        busy.stop()
        await task
    return turns, wall


async def reload_shape(directory: Path, with_user_code: bool, reloads: int, turn_ms: float) -> dict[str, Any]:
    from confledger.api.reloader import ConfigReloader
    from confledger.examples.app_config import VALIDATORS, AppConfig

    first, second = example_files(directory)
    log = example_log(f"sqlite:///{directory / 'turns.db'}", "bench-turns")
    reloader = ConfigReloader(
        log, config_model=AppConfig, validators=VALIDATORS if with_user_code else [], config_source=first
    )
    await reloader.start()
    if with_user_code:
        for name, priority in (("cache", 30), ("search", 20), ("api", 10)):
            reloader.register_config_callback(name, lambda _old, _new: None, priority=priority)

    async def one(index: int) -> None:
        operation = await reloader.reload_config(config_source=(first, second)[index % 2], force=True)
        if not operation.success:
            raise SystemExit(f"reload {index} failed: {operation.status} {operation.error_message}")

    try:
        for index in range(5):  # warm-up, without the busy loop
            await one(index)
        turns, wall = await count(one, reloads, turn_ms)
    finally:
        await reloader.stop()
        log.close()
    return {"turns": turns, "wall_ms": wall}


async def bare_hop(reloads: int, turn_ms: float) -> dict[str, Any]:
    import anyio

    async def one(_index: int) -> None:
        await anyio.to_thread.run_sync(lambda: None)

    turns, wall = await count(one, reloads, turn_ms)
    return {"turns": turns, "wall_ms": wall}


def line(label: str, result: dict[str, Any]) -> str:
    turns = result["turns"]
    return (
        f"  {label:<52} turns median {statistics.median(turns):>4.0f} (min {min(turns)}, max {max(turns)})"
        f"   wall median {statistics.median(result['wall_ms']):6.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=40)
    parser.add_argument(
        "--turn-ms", type=float, default=2.0, help="how long each loop turn holds the loop (default 2)"
    )
    parser.add_argument("--dir", default=None, help="where the logs go (a real disk; default a temp dir)")
    args = parser.parse_args()
    directory = bench_dir("confledger-bench-turns-", args.dir)
    (directory / "full").mkdir(exist_ok=True)
    (directory / "bare").mkdir(exist_ok=True)

    async def measure() -> list[str]:
        return [
            line("one anyio.to_thread.run_sync (the anchor)", await bare_hop(args.reloads, args.turn_ms)),
            line(
                "reload: 2 validators, 3 sync callbacks",
                await reload_shape(directory / "full", True, args.reloads, args.turn_ms),
            ),
            line(
                "reload: no validator, no callback",
                await reload_shape(directory / "bare", False, args.reloads, args.turn_ms),
            ),
        ]

    import confledger.store

    print(
        f"loop turns per operation, each turn holding the loop {args.turn_ms:g} ms ({confledger.store.__file__})"
    )
    for text in asyncio.run(measure()):
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
