""".env files: a flat ``dict[str, str]``, keys exactly as written, read one line at a time."""

from __future__ import annotations

import re

from confledger.store.sources.limits import Refusal

__all__ = ["parse_env"]

_ASSIGNMENT = re.compile(r"[ \t]*(?:export[ \t]+)?([^=\s]*)[ \t]*=(.*)")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_INLINE_COMMENT = re.compile(r"[ \t]#")


def _tail_ok(tail: str) -> bool:
    stripped = tail.strip()
    return not stripped or stripped.startswith("#")


def _value(raw: str, line_no: int) -> str:
    value = raw.lstrip(" \t")
    if value.startswith('"'):
        out: list[str] = []
        index = 1
        while index < len(value):
            char = value[index]
            if char == "\\" and index + 1 < len(value):
                following = value[index + 1]
                # Unknown escapes stay literal so Windows paths ("C:\dir") survive double quotes.
                out.append(_ESCAPES.get(following, "\\" + following))
                index += 2
                continue
            if char == '"':
                if not _tail_ok(value[index + 1 :]):
                    raise Refusal("syntax_error", f".env line {line_no}: text after the closing quote")
                return "".join(out)
            out.append(char)
            index += 1
        raise Refusal("syntax_error", f".env line {line_no}: unterminated double-quoted value")
    if value.startswith("'"):
        end = value.find("'", 1)
        if end < 0:
            raise Refusal("syntax_error", f".env line {line_no}: unterminated single-quoted value")
        if not _tail_ok(value[end + 1 :]):
            raise Refusal("syntax_error", f".env line {line_no}: text after the closing quote")
        return value[1:end]
    comment = _INLINE_COMMENT.search(raw)
    if comment is not None:
        raw = raw[: comment.start()]
    return raw.strip(" \t")


def parse_env(text: str) -> dict[str, str]:
    """Parse dotenv text into a flat ``dict[str, str]``, keys exactly as written.

    Accepted, one per line: blank lines; ``# comments``; ``KEY=VALUE`` or ``export KEY=VALUE`` with
    optional spaces or tabs around ``=``; KEY matching ``[A-Za-z_][A-Za-z0-9_]*``. VALUE is unquoted
    (trimmed; `` #`` after whitespace starts a comment), ``'single-quoted'`` (literal) or
    ``"double-quoted"`` (``\\n \\r \\t \\" \\\\`` escapes; other backslashes kept). A quoted value
    ends on its line (no multi-line values). Anything else is ``syntax_error`` naming the line; a
    variable set twice is ``duplicate_key``. No ``${VAR}`` interpolation: what is written is the value.
    """
    result: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            raise Refusal("syntax_error", f".env line {line_no} is not KEY=VALUE")
        key, raw = match.group(1), match.group(2)
        if not _KEY.fullmatch(key):
            raise Refusal(
                "syntax_error", f".env line {line_no}: variable names must match [A-Za-z_][A-Za-z0-9_]*"
            )
        if key in result:
            raise Refusal(
                "duplicate_key", f".env variable {key!r} set twice (lines {first_line[key]} and {line_no})"
            )
        result[key] = _value(raw, line_no)
        first_line[key] = line_no
    return result
