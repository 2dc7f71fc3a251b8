"""The table's row groups: each runs its benchmark modules and turns their figures into ``Row``s.

One function per group (the names ``--only`` takes); ``quick`` shortens every run so the whole table
finishes in about three minutes on two cores. The measuring itself lives in the ``bench_*`` modules;
here are only the sizes of each run, the anchors chosen and the targets (issue 16's performance list,
issue 12's HTTP figures, issue 15's CLI start-up).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from tests.benchmarks.common import median, percentile, pg_base_url, pg_schema
from tests.benchmarks.table import Check, Row

__all__ = ["GROUPS", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """How long each group measures; ``Sizes.for_mode(quick)`` picks the table's two settings."""

    quick: bool
    reloads: int
    http_rounds: int
    wrk_seconds: float
    wrk_rounds: int
    zd_seconds: float
    zd_rounds: int
    appends: int
    append_runs: int
    log_sizes: tuple[int, int]
    startup_runs: int
    rebuilds: int
    rollbacks: int
    read_rounds: int
    watcher_changes: int
    fleet_changes: int
    cli_runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                quick=True, reloads=100, http_rounds=60, wrk_seconds=2.0, wrk_rounds=1, zd_seconds=5.0,
                zd_rounds=1, appends=500, append_runs=2, log_sizes=(10_000, 100_000), startup_runs=5,
                rebuilds=1, rollbacks=20, read_rounds=100, watcher_changes=8, fleet_changes=30, cli_runs=5,
            )  # fmt: skip
        return cls(
            quick=False, reloads=600, http_rounds=300, wrk_seconds=5.0, wrk_rounds=3, zd_seconds=20.0,
            zd_rounds=2, appends=2000, append_runs=3, log_sizes=(100_000, 1_000_000), startup_runs=7,
            rebuilds=2, rollbacks=50, read_rounds=300, watcher_changes=40, fleet_changes=200, cli_runs=5,
        )  # fmt: skip


def _ms(values: list[float]) -> str:
    return f"p50 {median(values):.2f} / p99 {percentile(values, 0.99):.2f} ms"


def _events(size: int) -> str:
    return f"{size / 1_000_000:g}M" if size >= 1_000_000 else f"{size / 1000:g}k"


# --- reload in-process --------------------------------------------------------------------------------


def reload_rows(sizes: Sizes) -> list[Row]:
    from tests.benchmarks.bench_reload import durability_cost
    from tests.benchmarks.common import bench_dir

    rows = []
    targets = {"p50": 3.0, "p99": 10.0}
    for backend in ("SQLite FULL", "PostgreSQL"):
        label = f"reload in-process, {backend}"
        directory = bench_dir("confledger-table-reload-")
        try:
            if backend == "PostgreSQL":
                base = pg_base_url()
                if base is None:
                    rows.append(Row("reload", label, skipped="skipped: PostgreSQL not reachable"))
                    continue
                with pg_schema(base) as url:
                    found = anyio.run(durability_cost, url, directory, sizes.reloads, 20)
            else:
                found = anyio.run(
                    durability_cost, f"sqlite:///{directory / 'log.db'}", directory, sizes.reloads, 20
                )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        ours, bare = found["ours"], found["bare"]
        rows.append(
            Row(
                "reload",
                label,
                ours=_ms(ours),
                anchor="read, validate, swap (no log)",
                anchor_figure=_ms(bare),
                ratio=median(ours) / median(bare),
                ratio_of="p50: the cost of durability",
                checks=(
                    Check("p50", median(ours), "<", targets["p50"], " ms"),
                    Check("p99", percentile(ours, 0.99), "<", targets["p99"], " ms"),
                ),
                figures={
                    "p50_ms": median(ours),
                    "p99_ms": percentile(ours, 0.99),
                    "anchor_p50_ms": median(bare),
                },
            )
        )
    rows.append(_large_config_row(sizes))
    return rows


LARGE_CONFIG_FLAGS = 1_000


def _large_config_row(sizes: Sizes) -> Row:
    """The same reload with a large config: what a reload costs as the config grows (no target)."""
    from tests.benchmarks.bench_reload import durability_cost
    from tests.benchmarks.common import bench_dir

    directory = bench_dir("confledger-table-reload-flags-")
    try:
        found = anyio.run(
            durability_cost,
            f"sqlite:///{directory / 'log.db'}",
            directory,
            max(sizes.reloads // 2, 20),
            10,
            LARGE_CONFIG_FLAGS,
        )
        size_kib = (directory / "flags.json").stat().st_size / 1024
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ours, bare = found["ours"], found["bare"]
    return Row(
        "reload",
        f"reload in-process, SQLite FULL, {LARGE_CONFIG_FLAGS:,} flags in JSON ({size_kib:.0f} KiB)",
        ours=_ms(ours),
        anchor="read, validate, swap (no log)",
        anchor_figure=_ms(bare),
        ratio=median(ours) / median(bare),
        ratio_of="p50: the cost of durability",
        figures={"p50_ms": median(ours), "p99_ms": percentile(ours, 0.99), "anchor_p50_ms": median(bare)},
    )


# --- HTTP, one confledger serve -----------------------------------------------------------------------


def http_rows(sizes: Sizes) -> list[Row]:
    import tempfile

    from tests.benchmarks.bench_http import (
        READ_RATIO_TARGET,
        READS,
        RELOAD,
        RELOAD_EXTRA_TARGET_MS,
        THROUGHPUT_RATIO_TARGET,
        TOTAL_SHARE_TARGET,
        WRK_PATHS,
        WRK_TARGETS,
        latency_rounds,
        servers,
        throughput_rounds,
    )

    if shutil.which("wrk") is None:
        return [Row("http", "HTTP reads and reload vs /healthz", skipped="skipped: wrk not installed")]
    with (
        tempfile.TemporaryDirectory(prefix="table-http-") as tmp,
        servers([("this", sys.executable, {})], Path(tmp)) as group,
    ):
        latency_rounds(group, sizes.http_rounds, warmup=max(5, sizes.http_rounds // 20), seed=12)
        throughput_rounds(group, sizes.wrk_rounds, sizes.wrk_seconds, seed=12)
    server = group[0]
    floor = server.latency_ms["healthz"]
    rows = []
    for name, path in READS.items():
        if name == "healthz":
            continue
        ours = server.latency_ms[name]
        ratio = median(ours) / median(floor)
        rows.append(
            Row(
                "http",
                f"GET {path.replace('/api/v1/config', '')}",
                ours=_ms(ours),
                anchor="GET /healthz",
                anchor_figure=_ms(floor),
                ratio=ratio,
                ratio_of="p50",
                checks=(Check("p50 ratio", ratio, "<=", READ_RATIO_TARGET, "x"),),
                figures={
                    "p50_ms": median(ours),
                    "p99_ms": percentile(ours, 0.99),
                    "anchor_p50_ms": median(floor),
                },
            )
        )
    reload = server.latency_ms[RELOAD]
    extra = median(reload) - median(floor)
    # What the reply's own total_duration_ms accounts for of the client's wait beyond /healthz.
    share = median(server.total_duration_ms) / extra if extra > 0 else math.inf
    rows.append(
        Row(
            "http",
            "POST /reload (a changed file)",
            ours=_ms(reload) + f"; total_duration_ms p50 {median(server.total_duration_ms):.2f}",
            anchor="GET /healthz",
            anchor_figure=_ms(floor),
            ratio=median(reload) / median(floor),
            ratio_of="p50",
            checks=(
                Check("p50 - healthz", extra, "<=", RELOAD_EXTRA_TARGET_MS, " ms"),
                Check("total_duration_ms share of that", share, ">=", TOTAL_SHARE_TARGET),
            ),
            figures={"p50_ms": median(reload), "extra_ms": extra, "total_duration_share": share},
        )
    )
    base = median(server.requests_per_s["healthz"])
    for name, path in WRK_PATHS.items():
        if name == "healthz":
            continue
        rps = median(server.requests_per_s[name])
        rows.append(
            Row(
                "http",
                f"wrk -t2 -c32 GET {path.replace('/api/v1/config', '')}",
                ours=f"{rps:,.0f} req/s",
                anchor="wrk GET /healthz",
                anchor_figure=f"{base:,.0f} req/s",
                ratio=rps / base,
                ratio_of="throughput",
                # /history under wrk is a dashboard polling between changes: shown, not judged.
                checks=(Check("throughput ratio", rps / base, ">=", THROUGHPUT_RATIO_TARGET, "x"),)
                if name in WRK_TARGETS
                else (),
                figures={"requests_per_s": rps, "anchor_requests_per_s": base},
            )
        )
    return rows


# --- zero downtime under load -------------------------------------------------------------------------


def zero_downtime_rows(sizes: Sizes) -> list[Row]:
    from tests.benchmarks.bench_zero_downtime import P99_RATIO_TARGET, measure

    label = "zero downtime: wrk -t2 -c32 while the config changes 20/s"
    if shutil.which("wrk") is None:
        return [Row("zero-downtime", label, skipped="skipped: wrk not installed")]
    found = measure(sizes.zd_seconds, sizes.zd_rounds, rate=20.0)
    changing, quiet = found["changing"], found["quiet"]
    return [
        Row(
            "zero-downtime",
            label + f" ({sizes.zd_seconds:g} s x {sizes.zd_rounds})",
            ours=(
                f"{changing['checked']:,} responses checked ({found['versions_matched']} versions' hashes "
                "compared with their reload's), "
                f"p99 {changing['p99_ms']:.1f} ms, "
                f"{found['reloads']} changes ({found['changes_per_s']:.1f}/s, reload p50 "
                f"{found['reload_p50_ms']:.1f} ms)"
            ),
            anchor="the same load, no changes",
            anchor_figure=f"p99 {quiet['p99_ms']:.1f} ms",
            ratio=found["p99_ratio"],
            ratio_of="p99",
            checks=(
                Check("failed", changing["failed"] + quiet["failed"], "==", 0),
                Check("mixed", changing["mixed"] + quiet["mixed"], "==", 0),
                Check("p99 ratio", found["p99_ratio"], "<", P99_RATIO_TARGET, "x"),
                Check("changes/s", found["changes_per_s"], ">=", 19.0),
            ),
            figures={
                "changing_p99_ms": changing["p99_ms"],
                "quiet_p99_ms": quiet["p99_ms"],
                "checked": changing["checked"] + quiet["checked"],
                "failed": changing["failed"] + quiet["failed"],
                "mixed": changing["mixed"] + quiet["mixed"],
                "changes_per_s": found["changes_per_s"],
                "reload_failures": found["reload_failures"],
                "versions_matched": found["versions_matched"],
            },
        )
    ]


# --- log append ---------------------------------------------------------------------------------------


def append_rows(sizes: Sizes) -> list[Row]:
    from tests.benchmarks.bench_append import (
        TARGET_RATIO,
        Series,
        events_table_ddl,
        run_eventsourcing_sqlite,
        run_ours_sqlite,
        run_raw_sqlite,
    )
    from tests.benchmarks.common import bench_dir

    try:
        importlib.import_module("eventsourcing")
        have_eventsourcing = True
    except ImportError:
        have_eventsourcing = False
    directory = bench_dir("confledger-table-append-")
    ours, raw, library = Series("EventLog"), Series("raw sqlite3"), Series("eventsourcing")
    synchronous = -1
    try:
        ddl = events_table_ddl(directory)
        for _ in range(sizes.append_runs):
            # Keyed, as serve always runs it (an encryption key keys the links and the anchor).
            ours.add_run(*run_ours_sqlite(directory, sizes.appends, keyed=True))
            raw.add_run(*run_raw_sqlite(directory, sizes.appends, ddl))
            if have_eventsourcing:
                latencies, elapsed, synchronous = run_eventsourcing_sqlite(directory, sizes.appends)
                library.add_run(latencies, elapsed)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def figure(series: Series) -> str:
        return f"{series.rate:,.0f} ev/s (p99 {series.percentile_ms(0.99):.2f} ms)"

    rows = [
        Row(
            "append",
            "log append (keyed, as serve runs), SQLite FULL, 1 event/transaction",
            ours=figure(ours),
            anchor="raw sqlite3, same pragmas and table",
            anchor_figure=figure(raw),
            ratio=ours.rate / raw.rate,
            ratio_of="events/s",
            checks=(Check("ratio", ours.rate / raw.rate, ">=", TARGET_RATIO, "x"),),
            figures={"events_per_s": ours.rate, "anchor_events_per_s": raw.rate},
        )
    ]
    label = "log append vs the eventsourcing library"
    if not have_eventsourcing:
        rows.append(Row("append", label, skipped="skipped: pip install -e .[bench]"))
    else:
        rows.append(
            Row(
                "append",
                label,
                ours=figure(ours),
                anchor=f"eventsourcing SQLiteApplicationRecorder (synchronous={synchronous})",
                anchor_figure=figure(library),
                ratio=ours.rate / library.rate,
                ratio_of="events/s",
                checks=(Check("ratio", ours.rate / library.rate, ">", 1.0, "x"),),
                figures={"events_per_s": ours.rate, "anchor_events_per_s": library.rate},
            )
        )
    return rows


# --- a long log -----------------------------------------------------------------------------------------

FLAT_STARTUP = 1.5  # start-up with a checkpoint at the large size over the small: "flat"
FLAT_RSS = 1.2


def large_log_rows(sizes: Sizes) -> list[Row]:
    from tests.benchmarks.bench_large_log import measure

    found = measure(
        sizes.log_sizes,
        startup_runs=sizes.startup_runs,
        rebuilds=sizes.rebuilds,
        rollbacks=sizes.rollbacks,
        read_rounds=sizes.read_rounds,
    )
    small, large = found["sizes"][0], found["sizes"][-1]
    fresh_rss = found["fresh"]["rss_mb"]
    rows = []
    for result in found["sizes"]:
        events = result["size"]
        rate = events / median(result["rebuild_s"])
        raw_rate = events / median(result["raw_read_s"])
        rows.append(
            Row(
                "large-log",
                f"rebuild all projections from zero, {_events(events)} events",
                ours=f"{rate:,.0f} ev/s",
                anchor="sqlite3 read + json.loads of every event",
                anchor_figure=f"{raw_rate:,.0f} ev/s",
                ratio=rate / raw_rate,
                ratio_of="events/s",
                checks=(Check("ev/s", rate, ">=", 100_000),),
                figures={"events": events, "events_per_s": rate, "anchor_events_per_s": raw_rate},
            )
        )
    for result in found["sizes"]:
        startup = result["startup_ms"]
        checks = [Check("p99", percentile(startup, 0.99), "<", 100, " ms")]
        flat = median(large["startup_ms"]) / median(small["startup_ms"])
        if result is large:
            checks.append(Check(f"x {_events(small['size'])}", flat, "<=", FLAT_STARTUP))
        rows.append(
            Row(
                "large-log",
                f"start-up with a checkpoint, {_events(result['size'])} events",
                ours=_ms(startup)
                + (f"; {flat:.2f}x the {_events(small['size'])} log" if result is large else ""),
                anchor="the first start (folds the whole log)",
                anchor_figure=f"{result['first_start_ms']:.0f} ms",
                ratio=median(startup) / result["first_start_ms"],
                ratio_of="p50",
                checks=tuple(checks),
                figures={"p50_ms": median(startup), "p99_ms": percentile(startup, 0.99), "flat_ratio": flat},
            )
        )
    for result in found["sizes"]:
        checks = [Check("RSS", result["rss_mb"], "<", 150, " MB")]
        flat = large["rss_mb"] / small["rss_mb"]
        if result is large:
            checks.append(Check(f"x {_events(small['size'])}", flat, "<=", FLAT_RSS))
        rows.append(
            Row(
                "large-log",
                f"RSS of a serving instance, {_events(result['size'])} events",
                ours=f"{result['rss_mb']:.0f} MB"
                + (f"; {flat:.2f}x the {_events(small['size'])} log" if result is large else ""),
                anchor="a serve on a fresh log",
                anchor_figure=f"{fresh_rss:.0f} MB",
                ratio=result["rss_mb"] / fresh_rss,
                ratio_of="RSS",
                checks=tuple(checks),
                figures={"rss_mb": result["rss_mb"], "anchor_rss_mb": fresh_rss, "flat_ratio": flat},
            )
        )
    far, near = large["rollback_far_ms"], large["rollback_near_ms"]
    rows.append(
        Row(
            "large-log",
            f"rollback to a hash {_events(large['size'])} events back",
            ours=_ms(far),
            anchor="rollback to a recent hash",
            anchor_figure=_ms(near),
            ratio=percentile(far, 0.99) / percentile(near, 0.99),
            ratio_of="p99",
            checks=(Check("p99", percentile(far, 0.99), "<", 10, " ms"),),
            figures={
                "p50_ms": median(far),
                "p99_ms": percentile(far, 0.99),
                "anchor_p99_ms": percentile(near, 0.99),
            },
        )
    )
    floor = large["latency_ms"]["healthz"]
    for name, path in (("history", "GET /history?limit=20"), ("stats", "GET /stats")):
        ours = large["latency_ms"][name]
        rows.append(
            Row(
                "large-log",
                f"{path} at {_events(large['size'])} events",
                ours=_ms(ours),
                anchor="GET /healthz, same server",
                anchor_figure=_ms(floor),
                ratio=percentile(ours, 0.99) / percentile(floor, 0.99),
                ratio_of="p99",
                checks=(Check("p99", percentile(ours, 0.99), "<", 5, " ms"),),
                figures={
                    "p50_ms": median(ours),
                    "p99_ms": percentile(ours, 0.99),
                    "anchor_p99_ms": percentile(floor, 0.99),
                },
            )
        )
    return rows


# --- file watcher -------------------------------------------------------------------------------------


def watcher_rows(sizes: Sizes) -> list[Row]:
    from tests.benchmarks.bench_watcher import measure

    found = measure(sizes.watcher_changes)
    ours, seed = found["ours_ms"], found["seed_ms"]
    return [
        Row(
            "watcher",
            "file change to reload start, watcher",
            ours=_ms(ours),
            anchor="the seed's 1 s poll",
            anchor_figure=_ms(seed),
            ratio=percentile(ours, 0.99) / percentile(seed, 0.99),
            ratio_of="p99",
            checks=(Check("p99", percentile(ours, 0.99), "<", 20, " ms"),),
            figures={
                "p50_ms": median(ours),
                "p99_ms": percentile(ours, 0.99),
                "anchor_p99_ms": percentile(seed, 0.99),
            },
        )
    ]


# --- fleet propagation ----------------------------------------------------------------------------------


FLEET_LABEL = "fleet propagation, N=8 followers, PostgreSQL"
FLEET_OFFERED = {"instances": 8, "n": 8, "followers": 8, "backend": "postgres"}


def _figure(result: Any, name: str) -> float:
    value = result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)
    return float(value) if isinstance(value, int | float) else math.nan


def fleet_arguments(measure: Callable[..., Any], changes: int) -> dict[str, Any]:
    """What ``bench_fleet.measure`` is called with: those of instances/n/followers (8), backend and
    changes that its signature names."""
    parameters = inspect.signature(measure).parameters
    offered = {**FLEET_OFFERED, "changes": changes}
    return {name: value for name, value in offered.items() if name in parameters}


def fleet_row(result: Any) -> Row:
    """The row from what ``bench_fleet.measure`` returned: ``p50_ms``/``p99_ms`` and, when given,
    ``anchor_p50_ms``/``anchor_p99_ms`` (and ``anchor``, its name), as keys or attributes."""
    p50, p99 = _figure(result, "p50_ms"), _figure(result, "p99_ms")
    anchor_p50, anchor_p99 = _figure(result, "anchor_p50_ms"), _figure(result, "anchor_p99_ms")
    named = result.get("anchor") if isinstance(result, Mapping) else getattr(result, "anchor", None)
    has_anchor = not math.isnan(anchor_p99)
    ours = f"p50 {p50:.2f} / p99 {p99:.2f} ms"
    busy, floor = _figure(result, "busy_cores"), _figure(result, "cpu_floor_ms")
    if not (math.isnan(busy) or math.isnan(floor)):
        # Whether the row measured waiting or the cores: 8 followers share them with the server.
        ours += f"; {busy:.2f} of {os.cpu_count()} cores busy, followers' CPU floor {floor:.1f} ms"
    work_p99, work_cpu = _figure(result, "work_p99_ms"), _figure(result, "work_cpu_ms")
    follower_cpu = _figure(result, "follower_cpu_ms")
    if not (math.isnan(work_p99) or math.isnan(work_cpu) or math.isnan(follower_cpu)):
        # The work itself done bare on the same cores: how much of the row is ours to cut.
        ours += (
            f"; the same work bare (fleet_bare.py) p99 {work_p99:.2f} ms, "
            f"CPU per follower and change {follower_cpu:.2f} ms against {work_cpu:.2f} bare"
        )
    return Row(
        "fleet",
        FLEET_LABEL,
        ours=ours,
        anchor=str(named or "bench_fleet's anchor (the bare wake-up)") if has_anchor else "(none given)",
        anchor_figure=f"p50 {anchor_p50:.2f} / p99 {anchor_p99:.2f} ms" if has_anchor else "",
        ratio=p99 / anchor_p99 if has_anchor and anchor_p99 > 0 else None,
        ratio_of="p99" if has_anchor else "",
        checks=(Check("p99", p99, "<", 10, " ms"),),
        figures={"p50_ms": p50, "p99_ms": p99, "anchor_p99_ms": anchor_p99, "work_p99_ms": work_p99},
    )


def fleet_rows(sizes: Sizes) -> list[Row]:
    """Calls ``tests/benchmarks/bench_fleet.py``'s ``measure(...)`` (the fleet work) when it exists."""
    try:
        module = importlib.import_module("tests.benchmarks.bench_fleet")
    except ModuleNotFoundError:
        return [
            Row(
                "fleet", FLEET_LABEL, skipped="not available (tests/benchmarks/bench_fleet.py not merged yet)"
            )
        ]
    measure: Callable[..., Any] | None = getattr(module, "measure", None)
    if measure is None:
        return [Row("fleet", FLEET_LABEL, skipped="not available (bench_fleet.py has no measure())")]
    return [fleet_row(measure(**fleet_arguments(measure, sizes.fleet_changes)))]


# --- CLI start-up -----------------------------------------------------------------------------------------


def cli_rows(sizes: Sizes) -> list[Row]:
    from tests.benchmarks.bench_cli_startup import FLOOR, JUDGED, TARGET_SECONDS, measure

    times = measure(sizes.cli_runs)
    floor = median(times[FLOOR])
    return [
        Row(
            "cli",
            f"CLI start-up: {name}",
            ours=f"median {median(times[name]):.3f} s (max {max(times[name]):.3f})",
            anchor="python -c pass",
            anchor_figure=f"median {floor:.3f} s",
            ratio=median(times[name]) / floor,
            ratio_of=f"median of {sizes.cli_runs}",
            checks=(Check("median", median(times[name]), "<", TARGET_SECONDS, " s"),),
            figures={"median_s": median(times[name]), "anchor_median_s": floor},
        )
        for name in JUDGED
    ]


GROUPS: dict[str, Callable[[Sizes], list[Row]]] = {
    "reload": reload_rows,
    "http": http_rows,
    "zero-downtime": zero_downtime_rows,
    "append": append_rows,
    "large-log": large_log_rows,
    "watcher": watcher_rows,
    "fleet": fleet_rows,
    "cli": cli_rows,
}
