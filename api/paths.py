"""Client-supplied config paths: the allow-list check the HTTP reload route applies before any read."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote

from confledger.store.errors import SourceNotAllowed

__all__ = ["resolve_source"]


def _short_repr(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def resolve_source(
    requested: str,
    *,
    allowed_dirs: Sequence[str | Path],
    base_dir: Path | None = None,
) -> Path:
    """Turn a client-supplied ``config_source`` into a real path inside an allow-listed directory.

    The request is percent-decoded once; a request that still changes when decoded again (double
    encoding) is refused, as are NUL bytes, empty requests and any ``..`` component (even one that
    would resolve back inside: operators expect traversal syntax to be refused outright). Relative
    requests are taken from ``base_dir`` (default: the first allowed directory). Symlinks are followed
    (``os.path.realpath``) and the result must lie inside one of the real allowed directories, compared
    by path components, never by string prefix. The file need not exist; ``load_source`` says so.

    The returned path is checked at call time: a symlink swapped in between this call and the read is
    not caught here.
    """
    if isinstance(allowed_dirs, str | Path):
        # A bare string is a Sequence of characters: "allow '/', 'e', 't', 'c'" is never what was meant.
        raise TypeError("allowed_dirs must be a sequence of directories, not a single path")
    shown = _short_repr(requested)

    def refuse(reason: str) -> NoReturn:
        raise SourceNotAllowed(f"config source {shown} is not allowed: {reason}")

    if not isinstance(requested, str) or not requested.strip():
        refuse("it is empty")
    decoded = unquote(requested)
    if unquote(decoded) != decoded:
        refuse("it is percent-encoded more than once")
    if "\x00" in decoded:
        refuse("it contains a NUL byte")
    if not decoded.strip():
        refuse("it is empty")
    if ".." in re.split(r"[/\\]", decoded):
        refuse("it contains a '..' component")
    if not allowed_dirs:
        refuse("no config directory is allowed")

    roots = [Path(os.path.realpath(directory)) for directory in allowed_dirs]
    candidate = Path(decoded)
    if not candidate.is_absolute():
        candidate = (base_dir if base_dir is not None else Path(allowed_dirs[0])) / candidate
    resolved = Path(os.path.realpath(candidate))
    if not any(resolved.is_relative_to(root) for root in roots):
        refuse("it resolves outside the allowed directories")
    return resolved
