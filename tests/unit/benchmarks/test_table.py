"""The benchmark table's logic: targets judged from given numbers, and the three renderings.

No timing here: the figures are made up, so each verdict is known in advance.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import pytest

from tests.benchmarks.common import parse_wrk, percentile
from tests.benchmarks.rows import fleet_arguments, fleet_row
from tests.benchmarks.table import Check, Row, render_json, render_markdown, render_text


@pytest.mark.parametrize(
    ("measured", "op", "limit", "met"),
    [
        # strict and inclusive bounds on both sides of the limit
        (2.9, "<", 3.0, True),
        (3.0, "<", 3.0, False),
        (1.5, "<=", 1.5, True),
        (1.51, "<=", 1.5, False),
        (0.7, ">=", 0.7, True),
        (0.69, ">=", 0.7, False),
        (1.01, ">", 1.0, True),
        (1.0, ">", 1.0, False),
        # the zero-downtime counters: exactly zero
        (0, "==", 0, True),
        (1, "==", 0, False),
        # nothing measured never meets a target, whichever way it points
        (math.nan, "<", 3.0, False),
        (math.nan, ">=", 0.7, False),
    ],
)
def test_a_check_is_judged_from_its_numbers(measured: float, op: str, limit: float, met: bool) -> None:
    assert Check("p50", measured, op, limit).met is met


def test_an_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown comparison"):
        Check("p50", 1.0, "=<", 3.0)


@pytest.mark.parametrize(
    ("checks", "skipped", "met", "verdict"),
    [
        # every target holds
        ((Check("p50", 1.2, "<", 3, " ms"), Check("p99", 4.0, "<", 10, " ms")), "", True, "yes"),
        # one misses: the verdict names the figure that missed, not the one that held
        (
            (Check("p50", 1.2, "<", 3, " ms"), Check("p99", 12.5, "<", 10, " ms")),
            "",
            False,
            "NO (p99 12.5 ms)",
        ),
        # no target: measured for the record only
        ((), "", None, "-"),
        # skipped: not judged even though a target exists
        (
            (Check("ours/eventsourcing", math.nan, ">", 1.0),),
            "skipped: pip install -e .[bench]",
            None,
            "skipped",
        ),
    ],
)
def test_a_row_is_met_only_when_every_target_holds(
    checks: tuple[Check, ...], skipped: str, met: bool | None, verdict: str
) -> None:
    row = Row("reload", "reload, SQLite FULL", checks=checks, skipped=skipped)
    assert row.met is met
    assert row.verdict == verdict


def _rows() -> list[Row]:
    return [
        Row(
            "reload",
            "reload in-process, SQLite FULL",
            ours="p50 1.40 / p99 4.10 ms",
            anchor="read, validate, swap (no log)",
            anchor_figure="p50 0.35 / p99 0.90 ms",
            ratio=4.0,
            ratio_of="p50",
            checks=(Check("p50", 1.4, "<", 3, " ms"), Check("p99", 4.1, "<", 10, " ms")),
            figures={"p50_ms": 1.4},
        ),
        Row("fleet", "fleet propagation, N=8 PostgreSQL", skipped="not available (no bench_fleet.py)"),
    ]


def test_text_rendering_aligns_columns_and_shows_targets_and_verdicts() -> None:
    lines = render_text(_rows()).splitlines()
    assert lines[0].split()[:2] == ["row", "ours"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "p50 < 3 ms; p99 < 10 ms" in lines[2]
    assert lines[2].endswith("yes")
    assert "4.00x (p50)" in lines[2]
    assert "not available (no bench_fleet.py)" in lines[3]
    assert lines[3].endswith("skipped")
    # the "ours" column starts at the same place on every line
    column = lines[0].index("ours")
    assert lines[2][column:].startswith("p50 1.40")
    assert lines[3][column:].startswith("not available")


def test_markdown_rendering_is_one_table_row_per_row() -> None:
    lines = render_markdown(_rows()).splitlines()
    assert lines[0].startswith("| row | ours |")
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert len(lines) == 4
    assert all(line.count("|") == 8 for line in lines[2:])
    assert lines[2].endswith("| yes |")


@pytest.mark.parametrize(
    ("ratio", "shown"),
    [
        # two decimals from 0.1 up; below, two significant digits, so a tiny ratio is not "0.00x"
        (4.0, "4.00x (p50)"),
        (0.57, "0.57x (p50)"),
        (0.0046, "0.0046x (p50)"),
    ],
)
def test_a_ratio_keeps_its_significant_digits(ratio: float, shown: str) -> None:
    assert Row("x", "x", ratio=ratio, ratio_of="p50").ratio_shown == shown


def test_markdown_escapes_a_pipe_inside_a_cell() -> None:
    row = Row("x", "a | b", ours="1")
    assert "a \\| b" in render_markdown([row])


def test_json_keeps_raw_figures_targets_and_verdicts() -> None:
    document = json.loads(render_json(_rows(), {"quick": True}))
    assert document["context"] == {"quick": True}
    first, second = document["rows"]
    assert first["figures"] == {"p50_ms": 1.4}
    assert first["met"] is True
    assert [check["target"] for check in first["checks"]] == ["p50 < 3 ms", "p99 < 10 ms"]
    assert second["met"] is None
    assert second["skipped"].startswith("not available")


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        # nearest rank over 1..100: the median's upper neighbour, the 99th and the maximum
        (0.5, 51),
        (0.99, 100),
        (1.0, 100),
        (0.0, 1),
    ],
)
def test_percentile_is_the_nearest_rank(fraction: float, expected: float) -> None:
    assert percentile([float(value) for value in range(100, 0, -1)], fraction) == expected


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/healthz
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    13.50ms    2.10ms  40.00ms   90.00%
    Req/Sec     1.20k   100.00     1.40k    70.00%
  Latency Distribution
     50%   12.80ms
     75%   14.00ms
     90%   16.00ms
     99%  850.00us
  4800 requests in 2.00s, 700.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2400.50
Transfer/sec:    350.00KB
"""


def test_wrk_output_is_parsed_with_units_and_failures() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 4800
    assert result.requests_per_s == 2400.5
    assert result.p50_ms == 12.8
    assert result.p99_ms == pytest.approx(0.85)
    assert (result.non_2xx, result.socket_errors, result.failed) == (4, 3, 7)


@dataclass(frozen=True)
class FleetResult:
    """Shaped as bench_fleet's result: figures as attributes, no anchor name."""

    p50_ms: float
    p99_ms: float
    anchor_p50_ms: float
    anchor_p99_ms: float


@pytest.mark.parametrize(
    ("result", "met", "ratio", "anchor"),
    [
        # attributes, inside the target, with the anchor's figures but not its name
        (FleetResult(3.0, 8.0, 1.0, 2.0), True, 4.0, "bench_fleet's anchor (the bare wake-up)"),
        # a mapping that names its anchor, p99 over the target
        (
            {"p50_ms": 5, "p99_ms": 12.5, "anchor_p50_ms": 1, "anchor_p99_ms": 5, "anchor": "LISTEN"},
            False,
            2.5,
            "LISTEN",
        ),
        # no anchor figures: no ratio, still judged
        ({"p50_ms": 2.0, "p99_ms": 4.0}, True, None, "(none given)"),
        # no p99 at all: nothing measured never meets the target
        ({"p50_ms": 2.0}, False, None, "(none given)"),
    ],
)
def test_the_fleet_row_reads_what_bench_fleet_returns(
    result: object, met: bool, ratio: float | None, anchor: str
) -> None:
    row = fleet_row(result)
    assert row.met is met
    assert row.ratio == ratio
    assert row.anchor == anchor


def test_bench_fleet_gets_the_arguments_its_signature_names() -> None:
    def measure(backend: str, followers: int, *, changes: int = 200, pause: float = 0.03) -> None:
        raise AssertionError("only its signature is read")

    assert fleet_arguments(measure, 50) == {"backend": "postgres", "followers": 8, "changes": 50}


def _fleet_result(**measured: float) -> object:
    """bench_fleet's own result for an N=8 PostgreSQL row, with ``measured`` over its latencies."""
    from tests.benchmarks.bench_fleet import Result

    return Result(
        backend="postgres",
        followers=8,
        changes=200,
        p50_ms=15.0,
        p99_ms=25.0,
        max_ms=30.0,
        recorded_p50_ms=30.0,
        recorded_p99_ms=50.0,
        anchor_p50_ms=1.2,
        anchor_p99_ms=1.8,
        poll_interval_s=0.5,
        **measured,
    )


@pytest.mark.parametrize(
    ("busy", "follower_cpu_ms", "shown"),
    [
        # the cores near full: the row says so, with the floor N followers' CPU puts under the p50
        (1.87, 4.0, True),
        # an older result without the machine's figures: the row shows the latencies alone
        (float("nan"), 4.0, False),
    ],
)
def test_the_fleet_row_says_how_busy_the_cores_were(busy: float, follower_cpu_ms: float, shown: bool) -> None:
    result = _fleet_result(follower_cpu_ms=follower_cpu_ms, busy_cores=busy)
    row = fleet_row(result)
    assert row.ours.startswith("p50 15.00 / p99 25.00 ms")
    floor = 8 * follower_cpu_ms / (os.cpu_count() or 1)
    assert result.cpu_floor_ms == pytest.approx(floor)
    assert (
        f"{busy:.2f} of {os.cpu_count()} cores busy, followers' CPU floor {floor:.1f} ms" in row.ours
    ) is shown


@pytest.mark.parametrize(
    ("work_p99_ms", "work_cpu_ms", "shown"),
    [
        # PostgreSQL: the bare work ran beside ours, so the row says what of it is ours to cut
        (4.4, 0.45, True),
        # SQLite, or a result from before the bare anchor: nothing to show
        (float("nan"), float("nan"), False),
    ],
)
def test_the_fleet_row_sets_the_bare_work_beside_ours(
    work_p99_ms: float, work_cpu_ms: float, shown: bool
) -> None:
    result = _fleet_result(
        follower_cpu_ms=3.3, busy_cores=1.7, work_p50_ms=2.5, work_p99_ms=work_p99_ms, work_cpu_ms=work_cpu_ms
    )
    row = fleet_row(result)
    bare = f"the same work bare (fleet_bare.py) p99 {work_p99_ms:.2f} ms"
    assert (bare in row.ours) is shown
    assert ("CPU per follower and change 3.30 ms against 0.45 bare" in row.ours) is shown
    assert row.ratio == pytest.approx(25.0 / 1.8)  # the ratio stays against the wake-up anchor
