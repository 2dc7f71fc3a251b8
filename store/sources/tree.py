"""The rules every parsed body must pass, whatever its format: one iterative walk."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import date, datetime
from datetime import time as dt_time
from typing import Any

from confledger.store.sources.limits import (
    INT_LIMIT,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    SAFE_NAME,
    Refusal,
    json_kind,
)

__all__ = ["check_tree"]

# (container, depth, parent frame or None, slot in the parent): paths are only spelled out on refusal, so
# the walk allocates nothing per value on the happy path.
_Frame = tuple[Any, int, Any, Any]


def _where(path: str) -> str:
    # Paths to deep values get long; the tail is the part an operator needs to find it.
    return path if len(path) <= 80 else "..." + path[-77:]


def _segment(slot: object) -> str:
    if isinstance(slot, int):
        return f"[{slot}]"
    return f".{slot}" if isinstance(slot, str) and SAFE_NAME.fullmatch(slot) else ".?"


def _frame_path(frame: _Frame, slot: object = None) -> str:
    segments = [] if slot is None else [_segment(slot)]
    current: _Frame | None = frame
    while current is not None and current[2] is not None:
        segments.append(_segment(current[3]))
        current = current[2]
    return _where("$" + "".join(reversed(segments)))


def check_tree(body: dict[str, Any]) -> None:
    """Refuse what no format may carry into a config body, and turn dates and times into ISO strings.

    String keys, finite numbers, integers within MAX_INT_DIGITS, at most MAX_DEPTH nested containers,
    JSON scalars only. Iterative on purpose: the body may be as deep as MAX_DEPTH + 1 before we know it
    is too deep, and for TOML (nested tables via dotted keys) this is the only depth check.
    """
    stack: list[_Frame] = [(body, 1, None, None)]
    while stack:
        frame = stack.pop()
        container, depth = frame[0], frame[1]
        if depth > MAX_DEPTH:
            raise Refusal(
                "too_deep", f"config nests deeper than {MAX_DEPTH} levels (at {_frame_path(frame)})"
            )
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(container, dict):
            for key in container:
                if not isinstance(key, str):
                    where = _frame_path(frame)
                    kind = json_kind(key)
                    raise Refusal(
                        "non_string_key", f"mapping key at {where} is a {kind}; keys must be strings"
                    )
            pairs = container.items()
        else:
            pairs = enumerate(container)
        replacements: list[tuple[Any, object]] = []
        for slot, value in pairs:
            if value is None or isinstance(value, str | bool):
                continue
            if isinstance(value, dict | list):
                # An empty container can only break the depth rule.
                if value or depth >= MAX_DEPTH:
                    stack.append((value, depth + 1, frame, slot))
                continue
            replacement = _check_scalar(value, frame, slot)
            if replacement is not value:
                replacements.append((slot, replacement))
        for slot, replacement in replacements:
            container[slot] = replacement


def _check_scalar(value: object, frame: _Frame, slot: object) -> object:
    if isinstance(value, int):
        if abs(value) >= INT_LIMIT:
            where = _frame_path(frame, slot)
            raise Refusal("integer_too_long", f"integer at {where} has more than {MAX_INT_DIGITS} digits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            where = _frame_path(frame, slot)
            raise Refusal("non_finite_number", f"number at {where} is NaN or infinite; JSON has neither")
        return value
    if isinstance(value, datetime | date | dt_time):
        # A config body is JSON: ISO strings rather than a refusal (see the package docstring).
        return value.isoformat()
    where = _frame_path(frame, slot)
    raise Refusal("invalid_value", f"value at {where} is a {type(value).__name__}, which has no JSON form")
