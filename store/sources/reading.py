"""``load_source``: one capped read of the file's bytes, then the parser its name implies.

A file a client named (the HTTP route's ``config_source``) is read under a :class:`SourceGuard`: the file is
opened first and what was opened is checked, by the descriptor's own path (``/proc/self/fd/N`` on Linux,
``F_GETPATH`` on macOS), so a symlink or directory swapped in between a check of the name and the read
can never make the read land outside the allowed directories. The check and the read use one descriptor.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import PurePath
from typing import Any

from confledger.store.durations import elapsed_ms
from confledger.store.errors import SourceError, SourceNotAllowed
from confledger.store.sources.env_source import parse_env
from confledger.store.sources.json_source import parse_json
from confledger.store.sources.limits import (
    DEFAULT_MAX_BYTES,
    MAX_DEPTH,
    SAFE_NAME,
    Refusal,
    json_kind,
    short_repr,
)
from confledger.store.sources.toml_source import parse_toml
from confledger.store.sources.tree import check_tree
from confledger.store.sources.yaml_source import parse_yaml

__all__ = ["GuardedSource", "LoadedSource", "SourceGuard", "detect_format", "load_source", "quiet_remaining"]

_BOM = b"\xef\xbb\xbf"
_READ_CHUNK = 1 << 20
_SUFFIX_FORMATS = {"json": "json", "yaml": "yaml", "yml": "yaml", "toml": "toml"}
_PARSERS: dict[str, Callable[[str], object]] = {
    "json": parse_json,
    "yaml": parse_yaml,
    "toml": parse_toml,
    "env": parse_env,
}


@dataclass(frozen=True, slots=True)
class LoadedSource:
    """One successful read: the parsed body and the facts ``config.loaded`` records."""

    path: str
    format: str
    body: dict[str, Any]
    raw_sha256: str
    size_bytes: int
    load_ms: float


@dataclass(frozen=True, slots=True)
class SourceGuard:
    """The directories an opened file must lie in, as real paths (symlinks resolved when the guard is made)."""

    roots: tuple[str, ...]

    @classmethod
    def of(cls, directories: Iterable[str | os.PathLike[str]]) -> SourceGuard:
        """A guard over ``directories``; ``os.path.realpath`` may raise ``OSError`` (a directory being swapped)."""
        return cls(tuple(os.path.realpath(directory) for directory in directories))

    def admits(self, real_path: str) -> bool:
        """Whether ``real_path`` lies inside a root, compared by path components, never by string prefix."""
        if not os.path.isabs(real_path):
            return False  # an anonymous inode or a path from another mount namespace: nowhere we know
        path = PurePath(real_path)
        return any(path.is_relative_to(root) for root in self.roots)


@dataclass(frozen=True, slots=True)
class GuardedSource:
    """A client-named source: its path as resolved, and the guard its opened file must pass."""

    path: str
    guard: SourceGuard

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def _opened_path(fd: int) -> str | None:
    """Where the open file ``fd`` lies, as the kernel names it (None where the platform cannot say)."""
    if sys.platform.startswith("linux"):
        # The magic link names the file the descriptor refers to, wherever it was reached through.
        return os.readlink(f"/proc/self/fd/{fd}")
    if sys.platform == "darwin":
        import fcntl

        get_path = getattr(fcntl, "F_GETPATH", None)
        if get_path is not None:
            buffer = fcntl.fcntl(fd, get_path, bytes(1024))  # MAXPATHLEN
            return os.fsdecode(buffer.split(b"\0", 1)[0])
    return None


def _check_opened(fd: int, guard: SourceGuard, shown: str) -> None:
    try:
        opened = _opened_path(fd)
    except OSError:
        opened = None
    if opened is None:
        # Fail closed: a file whose place cannot be told is not read for a client.
        raise SourceNotAllowed(f"config source {shown} is not allowed: where the opened file lies is unknown")
    if not guard.admits(opened):
        raise SourceNotAllowed(f"config source {shown} is not allowed: the opened file lies outside")


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """The format a file name implies, or None. ``.env``, ``app.env`` and ``prod.env`` are all env."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".env"):
        return "env"
    stem, _, suffix = name.rpartition(".")
    if not stem.strip("."):
        return None  # no suffix, as os.path.splitext says of "yaml" or ".yaml"
    return _SUFFIX_FORMATS.get(suffix)


class _TooLarge(Exception):
    """Internal signal carrying the size seen; converted to SourceError by load_source."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _os_refusal(exc: OSError, shown: str) -> Refusal:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return Refusal("not_found", f"config source {shown} does not exist")
    if isinstance(exc, IsADirectoryError):
        return Refusal("not_a_file", f"config source {shown} is a directory, not a file")
    if isinstance(exc, PermissionError):
        return Refusal("permission_denied", f"config source {shown} is not readable by this process")
    reason = exc.strerror or type(exc).__name__
    return Refusal("read_error", f"config source {shown} could not be read: {reason}")


def _read_capped(path: str, max_bytes: int, shown: str, guard: SourceGuard | None) -> bytes:
    # O_NONBLOCK: if the path is (or was swapped for) a FIFO, opening it must not hang the worker thread
    # waiting for a writer; the fstat below then refuses it. O_NOCTTY: if it is a terminal, opening it
    # must not make it the controlling terminal of a service that has none (a session leader under
    # systemd), whose hangup would then send that service SIGHUP (a reload), long after the refusal.
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    )
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_refusal(exc, shown) from exc
    try:
        if guard is not None:
            # Before anything else is learnt about the file: a refusal says nothing of what lies outside.
            _check_opened(fd, guard, shown)
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise _os_refusal(exc, shown) from exc
        if not stat.S_ISREG(info.st_mode):
            raise Refusal("not_a_file", f"config source {shown} is not a regular file")
        if info.st_size > max_bytes:
            # Known from the inode: refuse without reading a byte.
            raise _TooLarge(info.st_size)
        chunks: list[bytes] = []
        remaining = max_bytes + 1  # one byte more than allowed is enough to know it grew past the cap
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, _READ_CHUNK))
            except OSError as exc:
                raise _os_refusal(exc, shown) from exc
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise _TooLarge(max(len(data), info.st_size))
        return data
    finally:
        os.close(fd)


def quiet_remaining(path: str | os.PathLike[str], quiet_s: float) -> float:
    """How much longer the file (through any symlink) must stay unchanged to have been still ``quiet_s``.

    0 when it has been (or cannot be stat'ed: the read reports that). A file rewritten in place is
    half-written between its writer's chunks, and a half-written YAML or env file is often a valid
    config of its own (every line a complete key), so a reload that cannot know the write is done waits.
    """
    try:
        info = os.stat(path)
    except OSError:
        return 0.0
    age_s = (time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns)) / 1e9
    return max(0.0, quiet_s - age_s)


def _is_blank(data: bytes) -> bool:
    return not data.removeprefix(_BOM).strip()


def load_source(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_content: bool = False,
    empty_retry_s: float = 0.5,
    empty_retry_interval_s: float = 0.05,
    guard: SourceGuard | None = None,
) -> LoadedSource:
    """Read, hash and parse one config file; raise :class:`SourceError` with a reason code on refusal.

    With a ``guard`` (a client named the file), the opened file must lie inside the guard's directories,
    or :class:`~confledger.store.errors.SourceNotAllowed` is raised before a byte is read. Without one (the
    service's own configured source) symlinks are followed wherever they lead, as a Kubernetes ConfigMap's
    ``..data`` link needs.

    Synchronous and blocking (it may sleep while waiting for an empty file to fill): async callers run
    it in a worker thread. ``expect_content=True`` says the file had content before, so an empty file is
    most likely being rewritten in place: it is re-read every ``empty_retry_interval_s`` for up to
    ``empty_retry_s`` before failing with ``empty``. ``load_ms`` includes that wait.
    """
    started = time.perf_counter()
    if guard is None and isinstance(path, GuardedSource):
        guard = path.guard  # a client-named source never loses its guard on the way here
    path_str = os.fspath(path)
    shown = short_repr(path_str, 200)
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    fmt = detect_format(path_str)
    if fmt is None:
        suffix = os.path.splitext(os.path.basename(path_str))[1]
        shown_suffix = repr(suffix) if SAFE_NAME.fullmatch(suffix) else "(none)"
        raise SourceError(
            f"unsupported config format {shown_suffix}: expected .json, .yaml, .yml, .toml or .env",
            code="unsupported_format",
        )

    deadline = time.monotonic() + max(empty_retry_s, 0.0)
    while True:
        try:
            data = _read_capped(path_str, max_bytes, shown, guard)
        except Refusal as refusal:
            raise SourceError(refusal.message, code=refusal.code) from refusal
        except _TooLarge as too_large:
            raise SourceError(
                f"config source is larger than the {max_bytes}-byte cap ({too_large.size} bytes or more)",
                code="too_large",
                size_bytes=too_large.size,
            ) from None
        if not _is_blank(data):
            break
        remaining = deadline - time.monotonic()
        if not expect_content or remaining <= 0:
            waited = f" after waiting {empty_retry_s:g} s for content" if expect_content else ""
            raise SourceError(
                f"config source is empty{waited}",
                code="empty",
                input_sha256=sha256(data).hexdigest(),
                size_bytes=len(data),
            )
        time.sleep(min(max(empty_retry_interval_s, 0.001), remaining))

    digest = sha256(data).hexdigest()
    try:
        body = _parse(data, fmt)
    except Refusal as refusal:
        raise SourceError(
            refusal.message, code=refusal.code, input_sha256=digest, size_bytes=len(data)
        ) from refusal
    return LoadedSource(
        path=path_str,
        format=fmt,
        body=body,
        raw_sha256=digest,
        size_bytes=len(data),
        load_ms=elapsed_ms(started),
    )


def _parse(data: bytes, fmt: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal("invalid_utf8", f"config source is not valid UTF-8 (byte offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    try:
        body = _PARSERS[fmt](text)
    except RecursionError:
        # json and tomllib recurse once per nested container: a document nested past their recursion
        # limit (hundreds of levels, far past MAX_DEPTH) ends here; anything shallower is check_tree's.
        raise Refusal("too_deep", f"{fmt.upper()} document nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        kind = "empty (null)" if body is None else f"a {json_kind(body)}"
        raise Refusal("not_a_mapping", f"the top level of the config is {kind}; expected a mapping")
    check_tree(body)
    return body
