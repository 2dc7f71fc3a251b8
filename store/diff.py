"""Differences between two config bodies as dotted paths, with secret values kept out of sight."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from store.secrets import REDACTED, ConfigPath, dotted

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
    if old is _MISSING or new is _MISSING or old != new or type(old) is not type(new):
        out.append((path, old, new))


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
