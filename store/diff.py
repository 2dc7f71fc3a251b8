"""Differences between two config bodies as dotted paths, with secret values kept out of sight."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from store.canonical import canonical_json
from store.errors import CanonicalizationError
from store.secrets import REDACTED, ConfigPath, dotted, redact

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


def _walk(old: Any, new: Any, path: ConfigPath, out: list[tuple[ConfigPath, Any, Any]]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            _walk(old.get(key, _MISSING), new.get(key, _MISSING), (*path, str(key)), out)
        return
    # Lists are compared whole: element-wise paths ("servers[3]") mislead when an item is inserted.
    if old is _MISSING or new is _MISSING or not _same(old, new):
        out.append((path, old, new))


def _same(old: Any, new: Any) -> bool:
    # Compared as the config hash sees them: 1 and 1.0, True and 1, 0.0 and -0.0 (also inside a list
    # compared whole) are equal in Python but hash differently, and a new hash must name a changed path.
    try:
        return canonical_json(old) == canonical_json(new)
    except CanonicalizationError:
        return bool(old == new) and type(old) is type(new)


def diff_bodies(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    secret_paths: Iterable[ConfigPath] = (),
) -> list[Change]:
    """Every leaf that differs; values under a secret path are shown as ``**********``."""
    raw: list[tuple[ConfigPath, Any, Any]] = []
    _walk(old if old is not None else {}, new, (), raw)
    secrets = set(secret_paths)

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


def changed_paths(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Dotted paths of what changed: what ``changes_applied`` lists (never a value)."""
    raw: list[tuple[ConfigPath, Any, Any]] = []
    _walk(old if old is not None else {}, new, (), raw)
    return [dotted(path) for path, _, _ in raw]
