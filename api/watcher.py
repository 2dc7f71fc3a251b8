"""Watching the config file: watchfiles on its directory, so renames and symlink swaps are seen too.

Editors and deploy tools rarely write a file in place: they write a temp file and rename it over the
old one, or swap a symlink (Kubernetes ConfigMaps). Watching the file's inode misses both, so the
directory is watched and every batch of changes is judged by the file's own fingerprint (what
``stat`` says through any symlink). A change is reloaded only once the file has stopped changing, so a
half-written file is never read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from watchfiles import awatch

__all__ = ["FileWatcher", "Fingerprint", "fingerprint"]

logger = logging.getLogger(__name__)

Fingerprint = tuple[str, int, int, int, int] | None


def fingerprint(path: Path) -> Fingerprint:
    """What identifies one version of the file: its real path, inode, size and change times."""
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    return (real, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass
class FileWatcher:
    path: Path
    on_change: Callable[[], Awaitable[object]]
    poll_interval: float = 1.0
    force_polling: bool = False
    settle_s: float = 0.1
    max_settle_s: float = 3.0

    def __post_init__(self) -> None:
        self._stop = anyio.Event()
        self.running = False

    @property
    def mode(self) -> str:
        return "polling" if self.force_polling else "inotify"

    def stop(self) -> None:
        self._stop.set()

    async def _settled(self) -> Fingerprint:
        # A writer that truncates and then writes in pieces produces several batches; waiting until
        # two looks settle_s apart agree means the reload reads the finished file.
        current = fingerprint(self.path)
        waited = 0.0
        while waited < self.max_settle_s:
            await anyio.sleep(self.settle_s)
            waited += self.settle_s
            again = fingerprint(self.path)
            if again == current:
                return again
            current = again
        return current

    @property
    def recheck_s(self) -> float:
        """How often, with no event at all, the watcher checks its directory and the file by ``stat``."""
        return max(0.5, min(self.poll_interval, 5.0))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        last = fingerprint(self.path)
        self.running = True
        task_status.started()
        try:
            while not self._stop.is_set():
                directory = Path(os.path.realpath(self.path.parent))
                watched = _identity(directory)
                if watched is None:
                    # The directory is gone (a deploy that deletes and recreates it): wait for it.
                    with anyio.move_on_after(self.recheck_s):
                        await self._stop.wait()
                    continue
                last = await self._watch(directory, watched, last)
        finally:
            self.running = False

    async def _watch(self, directory: Path, watched: tuple[int, int], last: Fingerprint) -> Fingerprint:
        """Watch ``directory`` until it is replaced, removed or the watcher stops; return the last fingerprint.

        An inotify watch follows the directory's inode, so a directory deleted and recreated under the
        same name would never report again. Every ``recheck_s`` without events, the directory's identity
        is checked (a new one is watched afresh) and the file's fingerprint compared, which also catches
        a change made while no watch was armed.
        """
        try:
            async for changes in awatch(
                directory,
                watch_filter=None,
                stop_event=self._stop,
                force_polling=self.force_polling,
                poll_delay_ms=int(self.poll_interval * 1000),
                debounce=400,
                step=50,
                rust_timeout=int(self.recheck_s * 1000),
                yield_on_timeout=True,
                recursive=False,
            ):
                if not changes:
                    if _identity(directory) != watched or os.path.realpath(self.path.parent) != str(
                        directory
                    ):
                        break
                    if fingerprint(self.path) == last:
                        continue
                current = await self._settled()
                if current == last:
                    continue
                previous, last = last, current
                if current is None:
                    logger.warning("config file %s disappeared; keeping the current config", self.path)
                    continue
                if not await self._notify():
                    last = previous  # not reloaded: the next recheck sees the change again and retries
        except OSError as exc:
            # The directory vanished between the check and the watch being armed: look again shortly.
            logger.debug("watching %s failed (%s); retrying", directory, exc)
            with anyio.move_on_after(self.recheck_s):
                await self._stop.wait()
        current = fingerprint(self.path)
        if current != last and current is not None and not self._stop.is_set():
            # Changed while the old directory was being replaced: that is a change like any other.
            current = await self._settled()
            if current != last and current is not None and await self._notify():
                last = current
        return last

    async def _notify(self) -> bool:
        """Ask for the reload; if it fails (the log unreachable), keep watching instead of taking the
        service down with it, and report whether it went through."""
        try:
            await self.on_change()
        except Exception as exc:
            logger.error(
                "reload after a change to %s failed (%s); retrying at the next check", self.path, exc
            )
            return False
        return True


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(directory)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)
