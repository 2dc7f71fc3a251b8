"""TOML: the standard library's ``tomllib``, with its errors in our words.

Depth, NaN and infinities are ``check_tree``'s after the parse, as for every format; tomllib recurses per
nested array or inline table, and ``reading._parse`` turns an absurd depth's ``RecursionError`` into
``too_deep``.
"""

from __future__ import annotations

import re
import tomllib

from confledger.store.sources.limits import MAX_INT_DIGITS, Refusal, is_int_limit_error

__all__ = ["parse_toml"]

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


def parse_toml(text: str) -> object:
    try:
        return tomllib.loads(text)
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
