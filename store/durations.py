"""Durations as the log records them: milliseconds, to the microsecond.

``perf_counter`` differences carry float noise far below its resolution (``2.77078300001676``); kept,
that noise reaches the SQL views and every answer. Rounding once, where a duration is measured, keeps
what is stored equal to what can honestly be claimed, and keeps old events' stored values untouched
(nothing is rounded on read, which would change a payload the chain already covers).
"""

from __future__ import annotations

import time

__all__ = ["elapsed_ms"]


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading), rounded to the microsecond."""
    return round((time.perf_counter() - started) * 1000, 3)
