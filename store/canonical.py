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
from collections.abc import Callable, Mapping
from typing import Any

from confledger.store.errors import CanonicalizationError

__all__ = [
    "GENESIS_HASH",
    "canonical_bytes",
    "canonical_json",
    "checked_as_stored",
    "config_hash",
    "sha256_hex",
]

# The first event's prev_hash: a fixed value rather than NULL so every link is checked the same way.
GENESIS_HASH = "0" * 64


# Far deeper than any config (bodies are refused past 64 levels) or event payload.
_MAX_WALK_DEPTH = 1_000


def _reject_non_finite(value: Any) -> None:
    # json's own errors do not say where; this walk names the path an operator has to fix. It runs only
    # once something looks wrong, so its ABC checks stay off the common path.
    stack: list[tuple[str, int, Any]] = [("$", 0, value)]
    while stack:
        path, depth, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise CanonicalizationError(f"{item!r} at {path} has no JSON representation")
        if isinstance(item, Mapping | list | tuple) and depth >= _MAX_WALK_DEPTH:
            # json refused a value that refers to itself ("Circular reference detected"): without a
            # bound this walk would follow the cycle for ever.
            raise CanonicalizationError(
                f"value nests deeper than {_MAX_WALK_DEPTH} levels or contains itself, at {path[:120]}…"
            )
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CanonicalizationError(f"non-string key {key!r} at {path}")
                stack.append((f"{path}.{key}", depth + 1, child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{index}]", depth + 1, child) for index, child in enumerate(item))


# One encoder, made once; its encode() is safe to share between threads (each call makes its own state).
# Reaching past it for json's C encoder saved about 0.2 us a call (3.0 against 3.2 us for an event's
# payload): nothing a reload would notice, for a private name of json's to depend on.
_encode: Callable[[Any], str] = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode

_CONTAINERS = frozenset({dict, list, tuple})
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _keys_are_plain(value: Any) -> bool:
    """True when every mapping key is exactly a ``str``. False means "look closer", not "refuse".

    Needed because json turns int, float, bool and None keys into strings without a word: ``{1: x}``
    and ``{"1": x}`` would get one hash. Called only after json accepted the value, so every container
    is a dict, list or tuple (or a subclass) and nothing can be circular; anything but the exact types
    (a subclass could override iteration) is left to the full walk.
    """
    if type(value) not in _CONTAINERS:
        return type(value) in _SCALARS
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            for key in item:
                if type(key) is not str:
                    return False
            item = item.values()
        for child in item:
            kind = type(child)
            if kind in _CONTAINERS:
                stack.append(child)
            elif kind not in _SCALARS:
                return False
    return True


def canonical_json(value: Any) -> str:
    """The one text form of a JSON value: sorted keys, compact separators, no NaN/Infinity."""
    text = _encoded(value)
    if not _keys_are_plain(value):
        # Refuses a key json quietly stringified; a str subclass key or a dict subclass passes, as it
        # always did, and json's text for it stands.
        _reject_non_finite(value)
    return text if text.isascii() else _utf8_checked(text)


def _encoded(value: Any) -> str:
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        # NaN, a non-string key or a deeper problem: the walk names the first two with their path.
        _reject_non_finite(value)
        raise CanonicalizationError(f"value is not plain JSON: {exc}") from exc
    except RecursionError:
        _reject_non_finite(value)
        raise


def _utf8_checked(text: str) -> str:
    # json.loads accepts "\ud800", but a lone surrogate has no UTF-8 form: refuse it here, as a
    # CanonicalizationError, rather than let the later encode fail with a bare UnicodeEncodeError.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(
            f"string holds a lone surrogate {text[exc.start]!r}, which has no UTF-8 form"
        ) from exc
    return text


def checked_as_stored(text: str, check: Callable[[str], bool]) -> bool:
    """Whether ``check`` accepts the stored JSON ``text`` as it is, or else its canonical encoding.

    What confledger stores is canonical JSON, and a MAC or a link covers that very text, so a value is
    checked as stored, neither parsed nor encoded again (a checkpoint's state can be half a megabyte,
    and ``verify`` checks every payload of the log). Text that is not canonical (spaced by hand, or
    written by a release whose serializer spaced it) is checked as its canonical encoding, which is what
    was covered; an edited value fails both ways, and text that is not JSON fails.
    """
    if check(text):
        return True
    try:
        canonical = canonical_json(json.loads(text))
    except ValueError:  # CanonicalizationError is one too (a NaN parsed from the text)
        return False
    return canonical != text and check(canonical)


def canonical_bytes(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def config_hash(body: Mapping[str, Any]) -> str:
    """Content address of a config body (64 hex digits); callers pass secrets revealed."""
    return sha256_hex(canonical_bytes(body))
