"""``load_source`` now against ``load_source`` before the one-loader-per-format change, same run.

    python tests/benchmarks/bench_sources.py [--anchor REF] [--rounds R] [--loads N] [--warmup W]

The anchor is ``store/sources.py`` as git holds it at REF (default: the parent of the commit that
replaced that file with the ``store/sources/`` package, i.e. the line reader, the event builder and the
composer loader), loaded as a module of its own beside the installed package. Both read the same files:

- ``examples/config.yaml`` (under 1 KB, the example service's config);
- a generated YAML config of about 100 KB (block style: services with nested mappings, lists, quoted and
  plain scalars, numbers, booleans, dates, comments, and a ``<<: *defaults`` merge in each service);
- the same body as JSON (printed for reference: JSON's parser did not change, its body is now walked by
  the shared tree check).

Rounds alternate which side goes first; each round times N loads per side per file, call by call
(``time.perf_counter_ns`` for wall time, ``time.thread_time_ns`` for CPU), with the garbage collector off
while timing. Printed per file: p50 and p99 per load for both sides, wall and CPU, and the ratios of the
medians (now / anchor). No target beyond "a reload stays
well inside 3 ms"; the figures are for the record.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confledger.store.sources import load_source  # noqa: E402

EXAMPLE = ROOT / "examples" / "config.yaml"
ANCHOR_PATH = "store/sources.py"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def default_anchor() -> str:
    replaced = _git("log", "-1", "--diff-filter=D", "--format=%H", "--", ANCHOR_PATH)
    return f"{replaced}^" if replaced else "HEAD"


def load_anchor(ref: str, directory: Path) -> ModuleType:
    source = _git("show", f"{ref}:{ANCHOR_PATH}")
    path = directory / "anchor_sources.py"
    path.write_text(source + "\n", encoding="utf-8")
    spec = importlib.util.spec_from_file_location("confledger_bench_anchor_sources", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def generated_yaml(target_bytes: int = 100_000) -> str:
    lines = [
        "# generated for bench_sources: a large service catalogue",
        "defaults: &defaults",
        "  replicas: 2",
        "  timeout_seconds: 30",
        "  retry: {attempts: 3, backoff: 0.5}",
        "services:",
    ]
    index = 0
    while sum(len(line) + 1 for line in lines) < target_bytes:
        lines += [
            f"  service_{index}:",
            "    <<: *defaults",
            f"    name: billing-{index}",
            f"    url: 'https://svc-{index}.internal:8443/api/v1'",
            f"    port: {8000 + index % 1000}",
            f"    enabled: {'true' if index % 3 else 'false'}",
            f"    ratio: {index % 100 / 100}",
            f"    released: 2024-{index % 12 + 1:02d}-{index % 28 + 1:02d}",
            "    owner: ~",
            f'    description: "service number {index}, # not a comment"',
            "    tags:",
            "      - payments",
            f"      - tier-{index % 4}",
            "    limits:",
            f"      cpu: {index % 8 + 1}",
            "      memory: 512Mi  # per replica",
            f"      burst: [{index % 5}, {index % 7}, {index % 11}]",
        ]
        index += 1
    return "\n".join(lines) + "\n"


def timed_loads(load: Callable[[Path], Any], path: Path, count: int) -> list[tuple[float, float]]:
    """(wall ms, CPU ms of this thread) per load: a busy machine stretches the first, hardly the second."""
    times: list[tuple[float, float]] = []
    gc.disable()
    try:
        for _ in range(count):
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            load(path)
            times.append(((time.perf_counter_ns() - wall) / 1e6, (time.thread_time_ns() - cpu) / 1e6))
    finally:
        gc.enable()
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--anchor", default=None, help="git ref whose store/sources.py is the anchor")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--loads", type=int, default=None, help="loads per side per round (default by file)")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    ref = args.anchor or default_anchor()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        anchor = load_anchor(ref, directory)
        large_yaml = directory / "large.yaml"
        large_yaml.write_text(generated_yaml(), encoding="utf-8")
        large_json = directory / "large.json"
        large_json.write_text(json.dumps(load_source(large_yaml).body), encoding="utf-8")
        files = [(EXAMPLE, 200), (large_yaml, 3), (large_json, 20)]
        sizes = {path.name: path.stat().st_size for path, _count in files}
        sides: dict[str, Callable[[Path], Any]] = {"now": load_source, "anchor": anchor.load_source}

        for path, _count in files:
            # Both sides must read the same body, or the comparison means nothing.
            assert sides["now"](path).body == sides["anchor"](path).body, path
            for load in sides.values():
                timed_loads(load, path, args.warmup)

        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for path, count in files:
                for side in order:
                    loads = args.loads or count
                    results.setdefault((path.name, side), []).extend(timed_loads(sides[side], path, loads))

    print(f"load_source, now against {ref} ({args.rounds} interleaved rounds)")
    for path, _count in files:
        label = f"{path.name} ({sizes[path.name] / 1000:.1f} KB)"
        print(f"  {label}, {len(results[(path.name, 'now')])} loads per side")
        for index, kind in ((0, "wall"), (1, "CPU ")):
            medians = {}
            for side in sides:
                values = [sample[index] for sample in results[(path.name, side)]]
                medians[side] = statistics.median(values)
                print(
                    f"    {kind} {side:<7} p50 {medians[side]:8.3f} ms   p99 {percentile(values, 0.99):8.3f} ms"
                )
            print(f"    {kind} ratio of medians (now / anchor): {medians['now'] / medians['anchor']:.2f}")


if __name__ == "__main__":
    main()
