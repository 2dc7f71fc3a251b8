"""JSON: the standard library's parser, with hooks that refuse what a config body may not hold."""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from confledger.store.sources.limits import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    Refusal,
    bracket_depth_exceeds,
    is_int_limit_error,
    safe_name,
)

__all__ = ["parse_json"]

# Strings are skipped whole so brackets inside them do not count. ``\\.?`` and ``\Z`` let an
# unterminated string or a trailing backslash still match, which keeps the scan linear.
_DEPTH_TOKEN = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)

# json's problems are fixed strings, except a few that quote the document (the pure-Python scanner's
# "Invalid \\escape: 'x'"); only these known ones are repeated, in our words.
_PROBLEMS = {
    "Expecting value": "expected a value",
    "Expecting property name enclosed in double quotes": "expected a key in double quotes",
    "Expecting ':' delimiter": "expected ':'",
    "Expecting ',' delimiter": "expected ','",
    "Unterminated string starting at": "unterminated string",
    "Invalid control character at": "control character inside a string",
    "Invalid \\escape": "invalid escape sequence",
    "Invalid \\uXXXX escape": "invalid \\u escape",
    "Extra data": "extra data after the document",
    "Illegal trailing comma before end of object": "trailing comma",
    "Illegal trailing comma before end of array": "trailing comma",
}


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Refusal("duplicate_key", f"duplicate key {safe_name(key)} in a JSON object")
        result[key] = value
    return result


def _constant(name: str) -> NoReturn:
    raise Refusal("non_finite_number", f"JSON contains {name}, which is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf without ever reaching parse_constant
        raise Refusal("non_finite_number", "JSON contains a number too large to be finite")
    return value


def _int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise Refusal("integer_too_long", f"JSON contains an integer with more than {MAX_INT_DIGITS} digits")
    return int(text)


def parse_json(text: str) -> object:
    if bracket_depth_exceeds(text, _DEPTH_TOKEN, base=0):
        raise Refusal("too_deep", f"JSON document nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(
            text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float, parse_int=_int
        )
    except json.JSONDecodeError as exc:
        detail = _PROBLEMS.get(exc.msg)
        suffix = f": {detail}" if detail else ""
        raise Refusal(
            "syntax_error", f"JSON syntax error at line {exc.lineno}, column {exc.colno}{suffix}"
        ) from None
    except ValueError as exc:
        if is_int_limit_error(exc):
            raise Refusal(
                "integer_too_long", "JSON contains an integer longer than this interpreter converts"
            ) from None
        raise Refusal("syntax_error", "JSON could not be parsed") from None
