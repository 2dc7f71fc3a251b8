"""The suites' size knob, ``CONFLEDGER_TEST_SCALE``, read once and the same way for every suite.

CI runs at 1. The proof under faults runs at the issue's full size at 6.67 (200 kill loops per
backend), so the knob is a number, not a count: each suite rounds what it scales (``scaled``).
"""

from __future__ import annotations

import math
import os

__all__ = ["SCALE", "read_scale", "scaled"]


def read_scale(value: str | None) -> float:
    """``value`` as the scale: a positive number, 1 when unset or empty."""
    if value is None or not value.strip():
        return 1.0
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"CONFLEDGER_TEST_SCALE must be a number, not {value!r}") from None
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"CONFLEDGER_TEST_SCALE must be a positive number, not {value!r}")
    return scale


SCALE = read_scale(os.environ.get("CONFLEDGER_TEST_SCALE"))


def scaled(count: int, *, least: int = 1) -> int:
    """``count`` at this scale, rounded, and never fewer than ``least``."""
    return max(least, round(count * SCALE))
