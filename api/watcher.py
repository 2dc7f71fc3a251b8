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

logger = logging.getLogger("api.watcher")

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

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        directory = Path(os.path.realpath(self.path.parent))
        last = fingerprint(self.path)
        self.running = True
        task_status.started()
        try:
            async for _changes in awatch(
                directory,
                watch_filter=None,
                stop_event=self._stop,
                force_polling=self.force_polling,
                poll_delay_ms=int(self.poll_interval * 1000),
                debounce=400,
                step=50,
                recursive=False,
            ):
                current = await self._settled()
                if current == last:
                    continue
                last = current
                if current is None:
                    logger.warning("config file %s disappeared; keeping the current config", self.path)
                    continue
                await self.on_change()
        finally:
            self.running = False
