"""Client-supplied config paths: the allow-list check the HTTP reload route applies before any read.

The check of the name here refuses early and says why; it is not what keeps the read inside. The
answer carries the allowed directories (a ``SourceGuard``) into the load, which checks the file it
actually opened: a symlink or directory swapped in after this check is refused there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote

from confledger.store.errors import SourceNotAllowed
from confledger.store.sources.reading import GuardedSource, SourceGuard

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
) -> GuardedSource:
    """Turn a client-supplied ``config_source`` into a real path inside an allow-listed directory.

    The request is percent-decoded once; a request that still changes when decoded again (double
    encoding) is refused, as are NUL bytes, empty requests and any ``..`` component (even one that
    would resolve back inside: operators expect traversal syntax to be refused outright). Relative
    requests are taken from ``base_dir`` (default: the first allowed directory). Symlinks are followed
    (``os.path.realpath``) and the result must lie inside one of the real allowed directories, compared
    by path components, never by string prefix. The file need not exist; ``load_source`` says so.
    A path that cannot be resolved (a directory being swapped under it) is refused like one outside.

    The answer is the path and a guard over the real allowed directories: ``load_source`` checks the
    file it opened against the guard, so a symlink swapped in between this call and the read is refused
    there, by the descriptor it reads.
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

    candidate = Path(decoded)
    if not candidate.is_absolute():
        candidate = (base_dir if base_dir is not None else Path(allowed_dirs[0])) / candidate
    try:
        guard = SourceGuard.of(allowed_dirs)
        resolved = os.path.realpath(candidate)
    except OSError:
        # realpath read a link that was replaced while it looked (EINVAL), or a loop: never a 500.
        refuse("it could not be resolved")
    if not guard.admits(resolved):
        refuse("it resolves outside the allowed directories")
    return GuardedSource(resolved, guard)
