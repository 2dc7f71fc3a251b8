"""Watching the config file: its directory, so renames and symlink swaps are seen too.

Editors and deploy tools rarely write a file in place: they write a temp file and rename it over the
old one, or swap a symlink (Kubernetes ConfigMaps). Watching the file's inode misses both, so the
directory is watched and every change is judged by the file's own fingerprint (what ``stat`` says
through any symlink). A change is reloaded only once it is finished, so a half-written file is never read.

On Linux the kernel says when that is: inotify reports a writer closing the file (``IN_CLOSE_WRITE``)
and a rename or symlink swap landing (``IN_MOVED_TO``), which watchfiles sees but does not pass on. So
there the directory is watched through ``inotify_simple``, and a finished change is judged
``closed_quiet_s`` after its last event (5 ms, so a script's ``echo >`` then ``echo >>`` is one change);
a file still open for writing is waited for until its writer closes it (at most ``max_settle_s``),
however long it pauses between writes. Elsewhere, and for polling (network filesystems), watchfiles
reports changes and each one waits ``settle_s`` for the file to be still.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from watchfiles import awatch

if TYPE_CHECKING:
    from inotify_simple import Event, INotify

__all__ = ["FileWatcher", "Fingerprint", "changed_since", "fingerprint"]

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


# The kernel stamps a file's change time from a clock that ticks every few milliseconds, so a change
# made just after a moment can carry a time just before it.
_FILE_CLOCK_SLACK = timedelta(milliseconds=50)


def changed_since(path: Path, moment: datetime) -> bool:
    """Whether the file, or the link that names it, changed at or after ``moment`` (same host's clock).

    Wrong only the safe way: a change made in the few milliseconds before ``moment`` counts as one
    after it (a reload that may find nothing to do). A symlink swapped further up the path (Kubernetes
    swaps ``..data``) is seen through the file it now points at, made for that swap.
    """
    found = fingerprint(path)
    if found is None:
        return False
    try:
        link_changed_ns = os.lstat(path).st_ctime_ns
    except OSError:
        link_changed_ns = 0
    changed = datetime.fromtimestamp(max(found[4], link_changed_ns) / 1e9, UTC)
    return changed >= moment - _FILE_CLOCK_SLACK


@dataclass
class FileWatcher:
    path: Path
    on_change: Callable[[], Awaitable[object]]
    poll_interval: float = 1.0
    force_polling: bool = False
    settle_s: float = 0.1
    max_settle_s: float = 3.0
    closed_quiet_s: float = 0.005
    # Watch from this moment, not from the start: a change made since then, before this watcher existed,
    # is reloaded as it starts (``changed_since``), and retried as any failed reload is.
    changed_after: datetime | None = None

    def __post_init__(self) -> None:
        self._stop = anyio.Event()
        self._waiting: anyio.CancelScope | None = None
        self.running = False
        # inotify's own events on Linux; watchfiles where there is no inotify, or when asked to poll.
        self.kernel_events = sys.platform == "linux" and not self.force_polling

    @property
    def mode(self) -> str:
        return "polling" if self.force_polling else "inotify"

    def stop(self) -> None:
        self._stop.set()
        if self._waiting is not None:  # waiting on inotify: wake it now rather than at its timeout
            self._waiting.cancel()

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
            if self.changed_after is not None and changed_since(self.path, self.changed_after):
                last = await self._judge(None)
            while not self._stop.is_set():
                directory = Path(os.path.realpath(self.path.parent))
                watched = _identity(directory)
                if watched is None:
                    # The directory is gone (a deploy that deletes and recreates it): wait for it.
                    with anyio.move_on_after(self.recheck_s):
                        await self._stop.wait()
                    continue
                if self.kernel_events:
                    last = await self._watch_kernel(directory, watched, last)
                else:
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
                    if self._replaced(directory, watched):
                        break
                    if fingerprint(self.path) == last:
                        continue
                await self._settled()
                last = await self._judge(last)
        except OSError as exc:
            # The directory vanished between the check and the watch being armed: look again shortly.
            logger.debug("watching %s failed (%s); retrying", directory, exc)
            with anyio.move_on_after(self.recheck_s):
                await self._stop.wait()
        current = fingerprint(self.path)
        if current != last and current is not None and not self._stop.is_set():
            # Changed while the old directory was being replaced: that is a change like any other.
            await self._settled()
            last = await self._judge(last)
        return last

    async def _watch_kernel(
        self, directory: Path, watched: tuple[int, int], last: Fingerprint
    ) -> Fingerprint:
        """``_watch`` with inotify's own events: a change is judged ``closed_quiet_s`` after the last
        event, once nothing it touched is still open for writing (or ``max_settle_s`` after it began).
        Returns when the directory is replaced or removed, or the watcher stops."""
        from inotify_simple import INotify, flags

        # What changes the directory's entries; opens and reads (IN_OPEN, IN_ACCESS) are left out.
        mask = (
            flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVED_FROM | flags.MOVED_TO | flags.CREATE
        ) | (flags.DELETE | flags.DELETE_SELF | flags.MOVE_SELF)
        try:
            inotify = INotify()
        except OSError as exc:  # no inotify instances left (fs.inotify.max_user_instances): poll instead
            logger.warning("inotify is unavailable (%s); watching %s by polling", exc, self.path)
            self.kernel_events = False
            return last
        with inotify:
            try:
                inotify.add_watch(directory, mask)
            except OSError as exc:
                logger.debug("watching %s failed (%s); retrying", directory, exc)
                with anyio.move_on_after(self.recheck_s):
                    await self._stop.wait()
                return last
            # Compared once the watch is armed: a change made before it would otherwise go unseen.
            if fingerprint(self.path) != last:
                await self._settled()
                last = await self._judge(last)
            changed_at: float | None = None
            writing: set[str] = set()
            while not self._stop.is_set():
                waited = 0.0 if changed_at is None else anyio.current_time() - changed_at
                if changed_at is None:
                    wait = self.recheck_s
                elif writing and waited < self.max_settle_s:
                    # Open for writing: its writer's close says when it is whole (a writer that never
                    # closes it is given max_settle_s, as the settle check gives a file that never stops).
                    wait = self.max_settle_s - waited
                else:
                    wait = self.closed_quiet_s
                events = await self._events(inotify, wait)
                if events is None:
                    break
                if events:
                    relevant = _names_on_the_way(self.path, directory)
                    gone = _note(events, relevant, writing, directory)
                    if gone:
                        break
                    if any(event.name in relevant or not event.name for event in events):
                        changed_at = changed_at if changed_at is not None else anyio.current_time()
                    continue
                if changed_at is not None:  # quiet long enough: judge the change
                    if fingerprint(self.path) is None and waited < self.settle_s:
                        # Gone for the moment: a writer that removes the file (an editor moving it
                        # to its backup name) mostly puts the new one there at once; it has settle_s.
                        continue
                    changed_at = None
                    writing.clear()
                    last = await self._judge(last)
                    continue
                if self._replaced(directory, watched):
                    break
                if fingerprint(self.path) != last:
                    # Changed where no event of this directory reaches (the far end of a symlink, written
                    # in place): nothing says when its writer is done but the file staying still.
                    await self._settled()
                    last = await self._judge(last)
        return last

    async def _events(self, inotify: INotify, wait: float) -> list[Event] | None:
        """The events that arrive within ``wait`` seconds ([] if none), or None once the watcher stops."""
        with anyio.CancelScope() as self._waiting:
            with anyio.move_on_after(wait):
                await anyio.wait_readable(inotify.fileno())
        self._waiting = None
        if self._stop.is_set():
            return None
        events: list[Event] = inotify.read(timeout=0)
        return events

    def _replaced(self, directory: Path, watched: tuple[int, int]) -> bool:
        """Whether the watched directory is gone or another now stands at the file's parent path."""
        return _identity(directory) != watched or os.path.realpath(self.path.parent) != str(directory)

    async def _judge(self, last: Fingerprint) -> Fingerprint:
        """Reload if the file is not what was last reloaded; the fingerprint now counted as reloaded."""
        current = fingerprint(self.path)
        if current == last:
            return last
        if current is None:
            logger.warning("config file %s disappeared; keeping the current config", self.path)
            return current
        if not await self._notify():
            return last  # not reloaded: the next recheck sees the change again and retries
        return current

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


def _names_on_the_way(path: Path, directory: Path) -> set[str]:
    """The entries of ``directory`` that ``path`` is read through: its own name and, for a symlink into
    the same directory (a ConfigMap's ``config.yaml -> ..data/config.yaml``), the first step of its target."""
    names = {path.name}
    with contextlib.suppress(OSError):
        target = Path(os.readlink(path))
        if not target.is_absolute() and target.parts:
            names.add(target.parts[0])
    return names


def _note(events: list[Event], relevant: set[str], writing: set[str], directory: Path) -> bool:
    """Keep ``writing`` (the relevant entries open for writing) up to date with ``events``; True when
    the directory itself went away (deleted, moved, or its filesystem unmounted)."""
    from inotify_simple import flags

    for event in events:
        if event.mask & (flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT):
            return True
        if event.name not in relevant:
            continue
        if event.mask & (flags.CLOSE_WRITE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO):
            writing.discard(event.name)  # finished: closed, gone, or renamed in whole
        elif event.mask & flags.MODIFY or (event.mask & flags.CREATE and _is_regular(directory / event.name)):
            writing.add(event.name)  # a file created is written next; a symlink or directory is whole
    return False


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
