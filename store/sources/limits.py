"""What every format shares: the limits, the reason codes, the refusal signal and the safe naming rules."""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_MAX_BYTES",
    "INT_LIMIT",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_YAML_ALIASES",
    "REASON_CODES",
    "SAFE_NAME",
    "SUPPORTED_FORMATS",
    "YAML_EXPANSION_FACTOR",
    "YAML_EXPANSION_FLOOR",
    "Refusal",
    "is_int_limit_error",
    "json_kind",
    "safe_name",
    "short_repr",
]

DEFAULT_MAX_BYTES = 1_048_576
# Containers, counting the top-level mapping as 1. Deep enough for any real config, shallow enough that
# no recursive consumer downstream (json, pydantic, canonicalisation) gets near the recursion limit.
MAX_DEPTH = 64
# CPython's default int/str conversion limit: canonical JSON could not serialise a longer integer.
MAX_INT_DIGITS = 4300
# The expansion check is what stops billion-laughs; this cap only bounds the work of a document that is
# all aliases. Real configs that use ``<<: *defaults`` stay far below it.
MAX_YAML_ALIASES = 1000
# A YAML document may expand (through aliases) to at most FACTOR times its distinct node count, or FLOOR
# nodes, whichever is larger: the floor keeps small documents with a few shared blocks legal.
YAML_EXPANSION_FACTOR = 10
YAML_EXPANSION_FLOOR = 10_000

SUPPORTED_FORMATS = ("json", "yaml", "toml", "env")

REASON_CODES = frozenset(
    {
        "unsupported_format",
        "not_found",
        "not_a_file",
        "permission_denied",
        "read_error",
        "too_large",
        "empty",
        "invalid_utf8",
        "syntax_error",
        "duplicate_key",
        "non_finite_number",
        "too_deep",
        "integer_too_long",
        "yaml_tag_refused",
        "alias_bomb",
        "not_a_mapping",
        "non_string_key",
        "invalid_value",
    }
)

INT_LIMIT = 10**MAX_INT_DIGITS
# Names (keys, tags, suffixes) are echoed in messages only when they look like identifiers, so a value
# pasted where a key belongs can never leak through a "duplicate key" message.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class Refusal(Exception):
    """Raised inside parsers and hooks; not a ValueError, so no parser's ``except ValueError`` eats it.

    ``load_source`` turns it into a :class:`~confledger.store.errors.SourceError` with the same code and
    message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def safe_name(value: object) -> str:
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return repr(value)
    return "(name not shown)"


def short_repr(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def json_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def is_int_limit_error(exc: ValueError) -> bool:
    # CPython's wording for sys.int_info.str_digits_check_threshold; the limit itself may be set lower
    # than ours (-X int_max_str_digits), so a parser can hit it before our own check does.
    return "Exceeds the limit" in str(exc) and "digits" in str(exc)
