"""The benchmark table's rows: each figure beside its anchor from the same run, judged against its target.

Pure logic (no timing here), so the default suite can check how targets are judged and how the table
is rendered (``tests/unit/benchmarks/test_table.py``); ``python -m tests.benchmarks`` fills it.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Check", "Row", "render_json", "render_markdown", "render_text"]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}
_SHOWN = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "="}


def _number(value: float) -> str:
    if value == 0 or math.isinf(value) or math.isnan(value):
        return f"{value:g}"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Check:
    """One target: ``measured <op> limit``; NaN (nothing measured) never meets it."""

    what: str
    measured: float
    op: str
    limit: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.op not in _COMPARE:
            raise ValueError(f"unknown comparison {self.op!r}")

    @property
    def met(self) -> bool:
        return not math.isnan(self.measured) and _COMPARE[self.op](self.measured, self.limit)

    @property
    def target(self) -> str:
        return f"{self.what} {_SHOWN[self.op]} {self.limit:,g}{self.unit}"

    @property
    def shown(self) -> str:
        return f"{self.what} {_number(self.measured)}{self.unit}"


@dataclass(frozen=True)
class Row:
    """One line of the table. ``key`` is the group ``--only`` selects; ``skipped`` says why nothing
    was measured (a missing extra, an unreachable server, a module not yet written)."""

    key: str
    label: str
    ours: str = ""
    anchor: str = ""
    anchor_figure: str = ""
    ratio: float | None = None
    ratio_of: str = ""
    checks: tuple[Check, ...] = ()
    skipped: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """True when every target holds, False when one misses, None when nothing was judged."""
        if self.skipped or not self.checks:
            return None
        return all(check.met for check in self.checks)

    @property
    def verdict(self) -> str:
        met = self.met
        if self.skipped:
            return "skipped"
        if met is None:
            return "-"
        if met:
            return "yes"
        return "NO (" + "; ".join(check.shown for check in self.checks if not check.met) + ")"

    @property
    def ratio_shown(self) -> str:
        if self.ratio is None:
            return ""
        shown = f"{self.ratio:.2f}x" if self.ratio >= 0.1 else f"{self.ratio:.2g}x"
        return shown + (f" ({self.ratio_of})" if self.ratio_of else "")

    @property
    def target(self) -> str:
        return "; ".join(check.target for check in self.checks)

    def cells(self) -> list[str]:
        if self.skipped:
            return [self.label, self.skipped, "", "", "", self.target, self.verdict]
        return [
            self.label,
            self.ours,
            self.anchor,
            self.anchor_figure,
            self.ratio_shown,
            self.target,
            self.verdict,
        ]


HEADER = ["row", "ours", "anchor (same run)", "anchor figure", "ratio", "target", "met"]


def render_text(rows: Sequence[Row]) -> str:
    table = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(HEADER))]
    lines = []
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def row_document(row: Row) -> dict[str, Any]:
    document = asdict(row)
    document["checks"] = [{**asdict(check), "target": check.target, "met": check.met} for check in row.checks]
    document["met"] = row.met
    return document


def render_json(rows: Sequence[Row], context: dict[str, Any]) -> str:
    """Every row with its raw figures, beside the run's context (machine load, mode)."""
    return json.dumps(
        {"context": context, "rows": [row_document(row) for row in rows]}, indent=2, allow_nan=True
    )
