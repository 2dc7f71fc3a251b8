"""TOML: the standard library's ``tomllib``, with a depth scan ahead of it and its errors in our words."""

from __future__ import annotations

import math
import re
import tomllib

from confledger.store.sources.limits import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    Refusal,
    bracket_depth_exceeds,
    is_int_limit_error,
)

__all__ = ["parse_toml"]

# Comments and all four string kinds are skipped so only real array/inline-table brackets count. Table
# headers ([a], [[a]]) count briefly too, which only makes the guard a little stricter.
_DEPTH_TOKEN = re.compile(
    r"""
      \#[^\n]*+
    | \"\"\"(?:[^"\\]++|\\.?|"(?!""))*+(?:\"\"\"|\Z)
    | '''(?:[^']++|'(?!''))*+(?:'''|\Z)
    | "(?:[^"\\\n]++|\\.?)*+(?:"|\Z|(?=\n))
    | '[^'\n]*+(?:'|\Z|(?=\n))
    | [\[\]{}]
    """,
    re.VERBOSE | re.DOTALL,
)
_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$| \(at end of document\)$")
_DUPLICATE_MARKERS = ("twice", "Cannot overwrite", "Cannot mutate", "Cannot redefine", "Duplicate")
# tomllib's problems, only these known ones repeated, in our words (some of its messages quote the
# document).
_PROBLEMS = {
    "Invalid statement": "invalid statement",
    "Expected '=' after a key in a key/value pair": "expected '=' after a key",
    "Unclosed array": "unclosed array",
    "Unclosed inline table": "unclosed inline table",
    "Invalid value": "invalid value",
    "Unterminated string": "unterminated string",
    "Invalid initial character for a key part": "invalid character in a key",
    "Expected ']' at the end of a table declaration": "expected ']' after a table name",
    "Expected ']]' at the end of an array declaration": "expected ']]' after an array-of-tables name",
    "Invalid date or datetime": "invalid date or datetime",
    "Invalid hex value": "invalid hex escape",
    "Unescaped '\\' in a string": "unescaped backslash in a string",
}


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refusal("non_finite_number", "TOML contains nan or inf, which JSON cannot represent")
    return value


def parse_toml(text: str) -> object:
    # tomllib (3.11) recurses per nested array/inline table and has no depth limit of its own. Tables
    # nested through dotted keys are left to check_tree, which walks without recursing.
    if bracket_depth_exceeds(text, _DEPTH_TOKEN, base=1):
        raise Refusal("too_deep", f"TOML document nests deeper than {MAX_DEPTH} levels")
    try:
        return tomllib.loads(text, parse_float=_float)
    except tomllib.TOMLDecodeError as exc:
        raw = str(exc)
        position = _POSITION.search(raw)
        problem = raw[: position.start()] if position else raw
        where = ""
        if position and position.group(1):
            where = f" at line {position.group(1)}, column {position.group(2)}"
        elif position:
            where = " at the end of the document"
        if any(marker in problem for marker in _DUPLICATE_MARKERS):
            raise Refusal("duplicate_key", f"TOML defines a key or table twice{where}") from None
        detail = _PROBLEMS.get(problem)
        suffix = f": {detail}" if detail else ""
        raise Refusal("syntax_error", f"TOML syntax error{where}{suffix}") from None
    except ValueError as exc:
        # tomllib lets int()'s own limit error through unwrapped.
        if is_int_limit_error(exc):
            raise Refusal(
                "integer_too_long", f"TOML contains an integer with more than {MAX_INT_DIGITS} digits"
            ) from None
        raise Refusal("syntax_error", "TOML could not be parsed") from None
