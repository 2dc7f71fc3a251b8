"""Every performance goal in one table: ``python -m tests.benchmarks``.

    .venv/bin/python -m tests.benchmarks [--quick] [--only GROUP ...] [--json FILE] [--markdown]

Each row is measured beside its anchor in the same run (the machine's noise falls on both) and judged
against its target; the groups and their anchors are in ``tests/benchmarks/rows.py``. ``--quick``
shortens every run (about three minutes on two cores; the long-log rows then use 10k and 100k events
instead of 100k and 1M). ``--markdown`` prints the table again as Markdown, for the README; ``--json``
writes every row's raw figures. Needs ``wrk`` for the HTTP rows and ``pip install -e .[bench]`` for the
eventsourcing comparison; a row whose prerequisite is missing says so instead of failing the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from tests.benchmarks.common import bench_dir, unwind_on_sigterm
from tests.benchmarks.rows import GROUPS, Sizes
from tests.benchmarks.table import Row, render_json, render_markdown, render_text


def fsync_cost() -> float:
    """The disk's fdatasync cost where the SQLite logs go: the context for every commit-bound figure."""
    import shutil

    from tests.benchmarks.bench_append import fsync_cost_ms

    directory = bench_dir("confledger-table-fsync-")
    try:
        return fsync_cost_ms(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs: about 3 minutes on 2 cores")
    parser.add_argument(
        "--only", action="append", choices=list(GROUPS), metavar="GROUP", help=f"one of {', '.join(GROUPS)}"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every row's figures to FILE")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    sizes = Sizes.for_mode(args.quick)
    chosen = args.only or list(GROUPS)
    load_before = os.getloadavg()
    fsync_ms = fsync_cost()
    started = time.monotonic()
    rows: list[Row] = []
    failed = False
    for name in chosen:
        print(f"[{time.monotonic() - started:6.1f} s] {name} ...", file=sys.stderr, flush=True)
        try:
            rows += GROUPS[name](sizes)
        except Exception as exc:
            # One broken group must not hide the others' figures: the row says what broke.
            traceback.print_exc()
            rows.append(Row(name, name, skipped=f"error: {type(exc).__name__}: {str(exc)[:120]}"))
            failed = True
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    context = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "groups": chosen,
        "seconds": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "load_before": round(load_before[0], 2),
        "load_after": round(load_after[0], 2),
        "python": platform.python_version(),
        "fdatasync_ms": round(fsync_ms, 3),
    }
    print(
        f"confledger benchmarks ({context['mode']}), {context['when']}: {elapsed:.0f} s on {context['cpus']} "
        f"cpus, load {load_before[0]:.2f} -> {load_after[0]:.2f}, fdatasync of 4 KiB {fsync_ms:.2f} ms "
        "(every durable commit pays at least that). Each anchor ran in the same run."
    )
    print(render_text(rows))
    if args.markdown:
        print()
        print(render_markdown(rows))
    if args.json is not None:
        args.json.write_text(render_json(rows, context) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
