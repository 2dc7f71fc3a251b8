"""One in-process reload, this tree against an anchor commit, interleaved in one run.

    .venv/bin/python tests/benchmarks/bench_reload.py [--anchor c06ff0c] [--rounds R] [--reloads N]
                                                      [--async-callbacks] [--unforced] [--flags N]
                                                      [--postgres] [--dir DIR] [--check]

Each reload loads ``examples/config.yaml`` (alternating with a copy with one value changed, ``force=True``, so
every one is a full operation: load, validate with the example model and validators, notify three no-op sync
callbacks, apply, commit; ``--unforced`` drops ``force``, so each reload also reads the rollback pins up to
the log's head before it applies, as a reload of a changed file does; ``--flags N``: a JSON file of N flags
with ``FlagsConfig`` instead, no validators, to see what a large config costs, with no target) on SQLite
with synchronous=FULL on a real disk (never tmpfs: a commit there would cost no fsync; ``--postgres``: on
PostgreSQL, each process in a schema of its own), the reloader run as a service runs it (``async with``:
its own task saves the projections' and the WAL's checkpoints, off the reloads) and its start-up objects
frozen out of the collector's full passes, as the lifecycle does (``gc.freeze``). Each side runs in a
subprocess of its own, ``--rounds`` times, the two sides taking turns (which goes first alternates),
so both share the machine's noise. The anchor is exported with ``git archive`` and made importable as
``confledger`` through a temporary directory holding its ``confledger/__init__.py`` and symlinks to its
``store``, ``projections``, ``api``, ``migrations`` and ``examples`` (as ``tests/unit/test_code_quality.py``
shows mypy the installed shape).

Printed: p50 / p99 / mean per side over all rounds, the ratio of the medians (this tree / anchor), CPU per
reload, and the cost of reading the current config (``reloader.current.config``) against a module global.
Targets for this tree: p50 < 3 ms, p99 < 10 ms. ``--check`` exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from pydantic import BaseModel

if __package__ in (None, ""):  # run as a script: ``tests`` importable, after whichever confledger is first
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import ROOT, bench_dir, filesystem_of, percentile, pg_base_url, pg_schema

EXAMPLE = ROOT / "examples" / "config.yaml"
LAYERS = ("store", "projections", "api", "migrations", "examples")
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0

CONFIG: Any = None  # the hot-read baseline: a module global holding the config object


def work_dir(requested: str | None) -> Path:
    return bench_dir("confledger-bench-reload-", requested)


def example_files(directory: Path) -> tuple[Path, Path]:
    """``examples/config.yaml`` and a copy with one value changed, in ``directory``: reloading them in
    turn changes the config every time."""
    text = EXAMPLE.read_text(encoding="utf-8")
    first, second = directory / "config.yaml", directory / "config-b.yaml"
    first.write_text(text, encoding="utf-8")
    second.write_text(text.replace("max_retries: 3", "max_retries: 4"), encoding="utf-8")
    return first, second


def example_log(url: str, instance_id: str) -> Any:
    """A keyed log at ``url`` with synchronous=FULL, as ``serve`` opens one."""
    from confledger.store import EventLog, SecretCipher

    return EventLog(
        url,
        sqlite_synchronous="FULL",
        cipher=SecretCipher([SecretCipher.generate_key()]),
        instance_id=instance_id,
    )


# --- one side, in its own process ---------------------------------------------------------------------


async def measure(
    directory: Path,
    reloads: int,
    warmup: int,
    async_callbacks: bool,
    force: bool = True,
    flags: int = 0,
    url: str | None = None,
) -> dict[str, Any]:
    from confledger.api.reloader import ConfigReloader

    model, validators, (first, second) = reload_inputs(directory, flags)
    log = example_log(url or f"sqlite:///{directory / 'bench.db'}", "bench-reload")

    def noop(_old: Any, _new: Any) -> None:
        return None

    async def anoop(_old: Any, _new: Any) -> None:
        return None

    reloader = ConfigReloader(log, config_model=model, validators=validators, config_source=first)
    # Run as a service runs it (``async with``): its own task saves the checkpoints, off the reloads.
    running = contextlib.AsyncExitStack()
    await running.enter_async_context(reloader)
    gc.freeze()  # as the lifecycle does once started (CONFLEDGER_GC_FREEZE)
    for name, priority in (("cache", 30), ("search", 20), ("api", 10)):
        reloader.register_config_callback(
            name, anoop if async_callbacks else noop, priority=priority, async_callback=async_callbacks
        )
    timings: list[float] = []
    cpu_started = 0.0
    # Unforced, the first reload must change something: the start loaded ``first``.
    sources = (first, second) if force else (second, first)
    try:
        for index in range(warmup + reloads):
            if index == warmup:
                cpu_started = time.process_time()
            started = time.perf_counter()
            operation = await reloader.reload_config(config_source=sources[index % 2], force=force)
            elapsed = (time.perf_counter() - started) * 1000
            if not operation.success or len(operation.services_notified) != 3:
                raise SystemExit(f"reload {index} failed: {operation.status} {operation.error_message}")
            if index >= warmup:
                timings.append(elapsed)
        cpu_ms = (time.process_time() - cpu_started) * 1000 / reloads
        reads = read_costs(reloader)
    finally:
        await running.aclose()
        gc.unfreeze()
        log.close()
    import confledger.store

    return {"timings": timings, "cpu_ms": cpu_ms, "reads": reads, "tree": confledger.store.__file__}


class FlagsConfig(BaseModel):
    """A feature-flag file: the shape of the large configs people keep (``flag_files``)."""

    flags: dict[str, dict[str, int | str | bool]]


def flag_files(directory: Path, flags: int) -> tuple[Path, Path]:
    """Two JSON files of ``flags`` flags (three fields each, 58 KiB per 1,000), every flag's switch
    flipped between them: reloading them in turn changes the config every time."""
    paths = directory / "flags.json", directory / "flags-b.json"
    for flip, path in enumerate(paths):
        body = {
            "flags": {
                f"flag_{index}": {
                    "on": (index + flip) % 2 == 0,
                    "rollout": index % 100,
                    "owner": f"team{index % 17}",
                }
                for index in range(flags)
            }
        }
        path.write_text(json.dumps(body), encoding="utf-8")
    return paths


def reload_inputs(directory: Path, flags: int) -> tuple[type[BaseModel], list[Any], tuple[Path, Path]]:
    """The model, the validators and the two files a reload benchmark alternates between: the example's,
    or with ``flags`` that many flags in JSON (``FlagsConfig``, no validators)."""
    from confledger.examples.app_config import VALIDATORS, AppConfig

    if flags:
        return FlagsConfig, [], flag_files(directory, flags)
    return AppConfig, list(VALIDATORS), example_files(directory)


async def durability_cost(
    url: str, directory: Path, reloads: int, warmup: int, flags: int = 0
) -> dict[str, list[float]]:
    """The table's reload row: a full forced reload on the log at ``url`` against a bare "read, validate,
    swap" of the same files with no log (the guarded loader, the model, the two validators, the three no-op
    callbacks called in line, a module global swapped), interleaved one for one in this process, so the
    ratio is the cost of durability (the log's commit, its events and the thread hops around user code).
    ``flags``: reload ``flag_files`` of that many flags with ``FlagsConfig`` (no validators) instead of
    the example. Returns the wall times in ms of both."""
    from confledger.api.reloader import ConfigReloader
    from confledger.store.sources import load_source

    global CONFIG
    model, validators, (first, second) = reload_inputs(directory, flags)
    log = example_log(url, "bench-durability")

    def noop(_old: Any, _new: Any) -> None:
        return None

    def bare(path: Path) -> None:
        global CONFIG
        config = model.model_validate(load_source(path).body)
        for validator in validators:
            validator(config)
        for _ in range(3):
            noop(CONFIG, config)
        CONFIG = config

    reloader = ConfigReloader(log, config_model=model, validators=validators, config_source=first)
    timings: dict[str, list[float]] = {"ours": [], "bare": []}
    # Run as a service runs it (``async with``): its own task saves the checkpoints, off the reloads.
    running = contextlib.AsyncExitStack()
    await running.enter_async_context(reloader)
    gc.freeze()  # as the lifecycle does once started (CONFLEDGER_GC_FREEZE)
    for name, priority in (("cache", 30), ("search", 20), ("api", 10)):
        reloader.register_config_callback(name, noop, priority=priority)
    CONFIG = reloader.current.config if reloader.current is not None else None
    try:
        for index in range(warmup + reloads):
            source = (first, second)[index % 2]
            # Which side goes first alternates, so neither always follows the other's fsync.
            if index % 2:
                started = time.perf_counter()
                bare(source)
                bare_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            operation = await reloader.reload_config(config_source=source, force=True)
            ours_ms = (time.perf_counter() - started) * 1000
            if not index % 2:
                started = time.perf_counter()
                bare(source)
                bare_ms = (time.perf_counter() - started) * 1000
            if not operation.success or len(operation.services_notified) != 3:
                raise RuntimeError(f"reload {index} failed: {operation.status} {operation.error_message}")
            if index >= warmup:
                timings["ours"].append(ours_ms)
                timings["bare"].append(bare_ms)
    finally:
        await running.aclose()
        gc.unfreeze()
        log.close()
    return timings


def read_costs(reloader: Any, number: int = 500_000, repeat: int = 5) -> dict[str, float]:
    """Nanoseconds per read, median of ``repeat`` interleaved timeit runs."""
    global CONFIG
    CONFIG = reloader.current.config
    namespace = {"reloader": reloader, "CONFIG": CONFIG}
    statements = {"global": "CONFIG", "current": "reloader.current.config", "empty": "pass"}
    found: dict[str, list[float]] = {label: [] for label in statements}
    for _ in range(repeat):
        for label, statement in statements.items():
            found[label].append(timeit.timeit(statement, globals=namespace, number=number) / number * 1e9)
    return {label: statistics.median(values) for label, values in found.items()}


def worker(args: argparse.Namespace) -> int:
    import anyio

    directory = Path(args.dir)
    run = functools.partial(
        measure, directory, args.reloads, args.warmup, args.async_callbacks, not args.unforced, args.flags
    )
    if args.postgres:
        base = pg_base_url()
        if base is None:
            raise SystemExit("PostgreSQL is not reachable (CONFLEDGER_TEST_PG_URL, else the test database)")
        with pg_schema(base) as url:
            result = anyio.run(functools.partial(run, url=url))
    else:
        result = anyio.run(run)
    print(json.dumps(result))
    return 0


# --- the parent: two trees, interleaved ---------------------------------------------------------------


def anchor_tree(commit: str, into: Path) -> Path:
    """``commit`` exported under ``into``, importable as ``confledger`` from the returned directory."""
    exported = into / "tree"
    exported.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(exported)], input=archive.stdout, check=True)
    importable = into / "importable"
    package = importable / "confledger"
    package.mkdir(parents=True)
    shutil.copy(exported / "confledger" / "__init__.py", package / "__init__.py")
    for layer in LAYERS:
        (package / layer).symlink_to(exported / layer, target_is_directory=True)
    return importable


def run_side(path: Path | None, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    environment = dict(os.environ)
    if path is not None:
        environment["PYTHONPATH"] = str(path)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--dir",
        str(directory),
        "--reloads",
        str(args.reloads),
        "--warmup",
        str(args.warmup),
    ]
    if args.async_callbacks:
        command.append("--async-callbacks")
    if args.unforced:
        command.append("--unforced")
    if args.flags:
        command += ["--flags", str(args.flags)]
    if args.postgres:
        command.append("--postgres")
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a benchmark process failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summary(timings: list[float]) -> str:
    return (
        f"p50 {percentile(timings, 0.5):6.3f} ms   p99 {percentile(timings, 0.99):6.3f} ms   "
        f"mean {statistics.fmean(timings):6.3f} ms"
    )


def parent(args: argparse.Namespace) -> int:
    base = work_dir(args.dir)
    sides: dict[str, dict[str, list[Any]]] = {
        name: {"timings": [], "cpu": [], "reads": []} for name in ("this", "anchor")
    }
    try:
        anchor_path = anchor_tree(args.anchor, base)
        load_before = os.getloadavg()
        for round_index in range(args.rounds):
            order = ("this", "anchor") if round_index % 2 == 0 else ("anchor", "this")
            for name in order:
                directory = base / f"{name}-{round_index}"
                directory.mkdir()
                result = run_side(None if name == "this" else anchor_path, directory, args)
                sides[name]["timings"] += result["timings"]
                sides[name]["cpu"].append(result["cpu_ms"])
                sides[name]["reads"].append(result["reads"])
                sides[name]["tree"] = [result["tree"]]
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    kind = "async" if args.async_callbacks else "sync (worker threads)"
    forced = "without force" if args.unforced else "force=True"
    loaded = f"{args.flags:,} flags in JSON (FlagsConfig)" if args.flags else str(EXAMPLE.relative_to(ROOT))
    backend = "PostgreSQL (a schema of its own per process)" if args.postgres else "SQLite synchronous=FULL"
    print(f"confledger reload ({forced}): {loaded}, 3 no-op {kind} callbacks, {backend}")
    print(
        f"  on {filesystem_of(base.parent)}; cpus={os.cpu_count()}; load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print(
        f"  {args.rounds} rounds per side, interleaved, {args.reloads} timed reloads each after {args.warmup} warm-up"
    )
    print()
    print(f"  this tree: {sides['this']['tree'][0]}\n  anchor:    {sides['anchor']['tree'][0]}")
    this, anchor = sides["this"]["timings"], sides["anchor"]["timings"]
    print(f"  this tree      {summary(this)}   CPU {statistics.median(sides['this']['cpu']):.3f} ms")
    print(f"  {args.anchor:14s} {summary(anchor)}   CPU {statistics.median(sides['anchor']['cpu']):.3f} ms")
    ratio = percentile(this, 0.5) / percentile(anchor, 0.5)
    print(
        f"  ratio of the medians (this / {args.anchor}): {ratio:.2f}; of the p99s: "
        f"{percentile(this, 0.99) / percentile(anchor, 0.99):.2f}"
    )
    print()
    reads = sides["this"]["reads"]
    current = statistics.median(r["current"] for r in reads)
    global_ns = statistics.median(r["global"] for r in reads)
    empty = statistics.median(r["empty"] for r in reads)
    print(f"reading the current config (this tree, median of {args.rounds} processes):")
    print(
        f"  reloader.current.config {current:5.1f} ns   module global {global_ns:5.1f} ns   "
        f"(timeit's empty loop {empty:4.1f} ns): {current / global_ns:.2f}x"
    )
    missed = []
    if args.flags:
        print("\ntargets: none for a large config (the targets are the example's)")
        return 0
    if percentile(this, 0.5) >= TARGET_P50_MS:
        missed.append(f"p50 >= {TARGET_P50_MS} ms")
    if percentile(this, 0.99) >= TARGET_P99_MS:
        missed.append(f"p99 >= {TARGET_P99_MS} ms")
    print()
    print("targets (p50 < 3 ms, p99 < 10 ms): " + ("met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed and args.check else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--anchor", default="c06ff0c", help="the commit to compare with (default c06ff0c)")
    parser.add_argument("--rounds", type=int, default=6, help="processes per side, interleaved")
    parser.add_argument("--reloads", type=int, default=200, help="timed reloads per process")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--dir", help="where the logs go (default: the temp dir unless it is tmpfs)")
    parser.add_argument("--async-callbacks", action="store_true", help="register async no-op callbacks")
    parser.add_argument(
        "--unforced", action="store_true", help="reload without force (reads the rollback pins)"
    )
    parser.add_argument(
        "--flags", type=int, default=0, help="reload a JSON file of this many flags (no target) instead"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="on PostgreSQL (CONFLEDGER_TEST_PG_URL) instead of SQLite"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return worker(args) if args.worker else parent(args)


if __name__ == "__main__":
    sys.exit(main())
