"""Canonical JSON and the hashes built on it.

Two things are hashed in confledger: config bodies (content addressing) and events (the chain). Both
must give the same digest on every machine and after any number of store/load round trips, so the
byte form is fixed here once: sorted keys, no whitespace, UTF-8 (not ``\\u`` escapes), and no NaN or
Infinity, which JSON cannot represent and which would make two "equal" configs hash differently.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from store.errors import CanonicalizationError

__all__ = [
    "GENESIS_HASH",
    "canonical_bytes",
    "canonical_json",
    "config_hash",
    "sha256_hex",
]

# The first event's prev_hash: a fixed value rather than NULL so every link is checked the same way.
GENESIS_HASH = "0" * 64


def _reject_non_finite(value: Any) -> None:
    # json.dumps(allow_nan=False) also refuses these, but its message does not say where; walking first
    # lets the error name the path an operator has to fix.
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise CanonicalizationError(f"{item!r} at {path} has no JSON representation")
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CanonicalizationError(f"non-string key {key!r} at {path}")
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))


def canonical_json(value: Any) -> str:
    """The one text form of a JSON value: sorted keys, compact separators, no NaN/Infinity."""
    _reject_non_finite(value)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CanonicalizationError(f"value is not plain JSON: {exc}") from exc
    # json.loads accepts "\ud800", but a lone surrogate has no UTF-8 form: refuse it here, as a
    # CanonicalizationError, rather than let the later encode fail with a bare UnicodeEncodeError.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CanonicalizationError(
                f"string holds a lone surrogate {text[exc.start]!r}, which has no UTF-8 form"
            ) from exc
    return text


def canonical_bytes(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def config_hash(body: Mapping[str, Any]) -> str:
    """Content address of a config body (64 hex digits); callers pass secrets revealed."""
    return sha256_hex(canonical_bytes(body))
