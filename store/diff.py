"""Differences between two config bodies as dotted paths, with secret values kept out of sight."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confledger.store.canonical import canonical_json
from confledger.store.errors import CanonicalizationError
from confledger.store.secrets import REDACTED, ConfigPath, dotted, get_path, redact, replace_path

__all__ = ["Change", "changed_paths", "diff_bodies"]

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    old: Any
    new: Any
    kind: str  # "added" | "removed" | "changed"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "old": self.old, "new": self.new}


# Types that are certainly not a Mapping: config leaves are these, and an ABC isinstance check on each
# one cost more than the rest of the walk.
_NOT_MAPPINGS = frozenset({str, int, float, bool, type(None), list, tuple})


def _is_mapping(value: Any) -> bool:
    kind = type(value)
    return kind is dict or (kind not in _NOT_MAPPINGS and isinstance(value, Mapping))


def _walk(old: Any, new: Any, path: ConfigPath, out: list[tuple[ConfigPath, Any, Any]]) -> None:
    if _is_mapping(old) and _is_mapping(new):
        for key in sorted(set(old) | set(new)):
            _walk(old.get(key, _MISSING), new.get(key, _MISSING), (*path, str(key)), out)
        return
    # Lists are compared whole: element-wise paths ("servers[3]") mislead when an item is inserted.
    if old is _MISSING or new is _MISSING or not _same(old, new):
        out.append((path, old, new))


def _same(old: Any, new: Any) -> bool:
    # Compared as the config hash sees them: 1 and 1.0, True and 1, 0.0 and -0.0 (also inside a list
    # compared whole) are equal in Python but hash differently, and a new hash must name a changed path.
    # _compare gives that answer without serialising anything; what it cannot settle is left to the
    # comparison of canonical texts, so the answer is always the one that comparison gives.
    verdict = _compare(old, new, 0)
    if verdict is _SAME:
        return True
    if verdict is _DIFFERENT:
        # The texts differ, if both values have one. Without one, _same_texts falls back on Python's
        # equality; where that says True, the walk stopped before an oddity the texts trip on: ask them.
        try:
            equal = type(old) is type(new) and bool(old == new)
        except Exception:
            equal = True  # an __eq__ that raises: let the texts decide, as they always did
        if not equal:
            return False
    return _same_texts(old, new)


def _same_texts(old: Any, new: Any) -> bool:
    try:
        return canonical_json(old) == canonical_json(new)
    except CanonicalizationError:
        return bool(old == new) and type(old) is type(new)


class _Verdict:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# _SAME: _same_texts would say True. _DIFFERENT: the texts differ if both values have one. _UNSURE: a
# value that is not plain JSON, or list against tuple (one text, yet unequal to Python): ask the texts.
_SAME = _Verdict("SAME")
_DIFFERENT = _Verdict("DIFFERENT")
_UNSURE = _Verdict("UNSURE")
_ABSENT: Any = object()
_SEQUENCES = frozenset({list, tuple})
_PLAIN = frozenset({dict, list, tuple, str, int, float, bool, type(None)})
# Bodies nest at most 64 deep; a deeper (or circular) value is left to the texts.
_MAX_NESTING = 100


def _compare(old: Any, new: Any, depth: int) -> _Verdict:
    kind = type(old)
    if kind is not type(new):
        if kind in _SEQUENCES and type(new) in _SEQUENCES:
            verdict = _compare_items(old, new, depth)
            return _UNSURE if verdict is _SAME else verdict
        # Each plain type has its own text shape ("1", "1.0", "true", "null", '"1"', [...], {...}).
        return _DIFFERENT if kind in _PLAIN and type(new) in _PLAIN else _UNSURE
    if kind is str or kind is int or kind is bool or old is None:
        return _SAME if old == new else _DIFFERENT
    if kind is float:
        if old != new:  # NaN included: refused by canonical JSON, and unequal to Python too
            return _DIFFERENT
        # 0.0 == -0.0, but their texts are "0.0" and "-0.0".
        return _SAME if old or math.copysign(1.0, old) == math.copysign(1.0, new) else _DIFFERENT
    if kind is dict:
        if len(old) != len(new):
            return _DIFFERENT
        return _compare_pairs(((value, new.get(key, _ABSENT)) for key, value in old.items()), depth)
    if kind is list or kind is tuple:
        return _compare_items(old, new, depth)
    return _UNSURE


def _compare_items(old: Any, new: Any, depth: int) -> _Verdict:
    if len(old) != len(new):
        return _DIFFERENT
    return _compare_pairs(zip(old, new, strict=True), depth)


def _compare_pairs(pairs: Iterable[tuple[Any, Any]], depth: int) -> _Verdict:
    """Children side by side: DIFFERENT at the first that differs, else UNSURE if any was unsure."""
    if depth >= _MAX_NESTING:
        return _UNSURE
    verdict = _SAME
    for value, other in pairs:
        if other is _ABSENT:
            return _DIFFERENT
        child = _compare(value, other, depth + 1)
        if child is _DIFFERENT:
            return _DIFFERENT
        if child is _UNSURE:
            verdict = _UNSURE
    return verdict


def diff_bodies(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    secret_paths: Iterable[ConfigPath] = (),
) -> list[Change]:
    """Every leaf that differs; values under a secret path are shown as ``**********``, and a secret
    list or mapping is one leaf (its keys are never paths)."""
    secrets = set(secret_paths)
    raw: list[tuple[ConfigPath, Any, Any]] = []
    _walk(_secrets_whole(old if old is not None else {}, secrets), _secrets_whole(new, secrets), (), raw)

    def shown(path: ConfigPath, value: Any) -> Any:
        if value is _MISSING:
            return None
        if any(path[: len(secret)] == secret for secret in secrets):
            return REDACTED
        # A section or list that changed whole can hold a secret further down: redact it in place.
        inner = [
            secret[len(path) :]
            for secret in secrets
            if len(secret) > len(path) and secret[: len(path)] == path
        ]
        if inner:
            return redact({"value": value}, [("value", *rest) for rest in inner])["value"]
        return value

    changes = []
    for path, before, after in raw:
        kind = "added" if before is _MISSING else "removed" if after is _MISSING else "changed"
        changes.append(Change(dotted(path), shown(path, before), shown(path, after), kind))
    return changes


def changed_paths(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()
) -> list[str]:
    """Dotted paths of what changed: what ``changes_applied`` lists (never a value, nor a key inside a
    secret list or mapping: a secret changed is its own path)."""
    secrets = set(secret_paths)
    out: list[str] = []
    _changed(_secrets_whole(old if old is not None else {}, secrets), _secrets_whole(new, secrets), "", out)
    return out


def _secrets_whole(body: Mapping[str, Any], secret_paths: set[ConfigPath]) -> Mapping[str, Any]:
    """``body`` with each secret list or mapping made one leaf (its canonical text), so a walk compares
    it whole and names its path, not the keys inside it (an API key used as a key is a secret too)."""
    result: Mapping[str, Any] = body
    for path in secret_paths:
        present, value = get_path(result, path)
        if present and isinstance(value, Mapping | list):
            result = replace_path(result, path, "secret:" + _text_of(value))
    return result


def _text_of(value: Any) -> str:
    try:
        return canonical_json(value)
    except CanonicalizationError:
        return repr(value)


# Exactly these types: two of one type have one text exactly when they are equal (floats differ in that).
_EQUAL_MEANS_SAME = frozenset({str, int, bool, type(None)})


def _changed(old: Any, new: Any, prefix: str, out: list[str]) -> None:
    """``_walk`` giving dotted paths, with plain dicts and leaves compared in place.

    Called once per reload on two bodies that mostly agree: most of the work is leaves that are equal,
    settled here by type and ``==`` without a path, a call or a canonical text.
    """
    if type(old) is not dict or type(new) is not dict:
        raw: list[tuple[ConfigPath, Any, Any]] = []
        _walk(old, new, (), raw)
        out += [_extend(prefix, path) for path, _, _ in raw]
        return
    if old.keys() != new.keys():
        for key in sorted(set(old) | set(new)):
            _changed_at(key, old.get(key, _MISSING), new.get(key, _MISSING), prefix, out)
        return
    # The same keys (the common case): no union to build, and no .get with a default for each key.
    for key in sorted(old):
        before = old[key]
        after = new[key]
        kind = type(before)
        # A float other than zero has one text per value too (0.0 and -0.0 are equal, yet two texts).
        if kind is type(after) and (kind in _EQUAL_MEANS_SAME or (kind is float and before)):
            if before != after:
                out.append(f"{prefix}.{key!s}" if prefix else str(key))
        elif kind is dict and type(after) is dict:
            _changed(before, after, f"{prefix}.{key!s}" if prefix else str(key), out)
        else:
            _changed_at(key, before, after, prefix, out)


def _changed_at(key: Any, before: Any, after: Any, prefix: str, out: list[str]) -> None:
    """One key of ``_walk``'s loop."""
    kind = type(before)
    if kind is type(after) and kind in _EQUAL_MEANS_SAME:
        if before != after:
            out.append(f"{prefix}.{key!s}" if prefix else str(key))
    elif _is_mapping(before) and _is_mapping(after):
        _changed(before, after, f"{prefix}.{key!s}" if prefix else str(key), out)
    elif before is _MISSING or after is _MISSING or not _same(before, after):
        out.append(f"{prefix}.{key!s}" if prefix else str(key))


def _extend(prefix: str, path: ConfigPath) -> str:
    """``dotted((*prefix_parts, *path))``: a walk's paths hold keys only, never list indexes."""
    for part in path:
        prefix = f"{prefix}.{part}" if prefix else str(part)
    return prefix
