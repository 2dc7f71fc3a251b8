"""``ConfigReloader``'s file watching: its own watcher, or under ``serve --workers`` its group's, through
worker 0.

A mixin of ``ConfigReloader`` rather than a collaborator, as ``store.following`` is of the runner: watching
starts and stops the reloader's watcher in its task group, records the toggles through its runner, reads
the group's last toggle from its fleet projection, and reloads through its coalescing ``request_reload``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from confledger.api.settings import Settings
from confledger.api.watcher import FileWatcher
from confledger.projections.fleet import FileWatchState, FleetProjection
from confledger.store import Trigger
from confledger.store.events import FileWatchDisabled, FileWatchEnabled
from confledger.store.operations import OperationRunner
from confledger.store.outcome import ReloadOperation

__all__ = ["FileWatching", "WatchGroup"]

# What it logs is the reloader's, under the reloader's logger as before it moved here.
logger = logging.getLogger("confledger.api.reloader")


@dataclass(frozen=True, slots=True)
class WatchGroup:
    """The workers of one ``serve --workers`` service (``projections.fleet.group_of`` of their ids): one
    file, watched by worker 0 (``owner``) whichever worker was asked to turn watching on or off."""

    root: str
    owner: bool
    # When the service started: a toggle recorded before it was an earlier run's (an instance id, and so
    # the group's name, is often the same from run to run), while one since it is this run's, even for a
    # worker 0 started again after it died.
    since: datetime


class FileWatching:
    """``ConfigReloader``'s file watching. The attributes are the reloader's (set in its ``__init__``);
    ``request_reload`` is the reloader's too."""

    settings: Settings
    runner: OperationRunner
    _fleet: FleetProjection
    _task_group: anyio.abc.TaskGroup | None
    _watcher: FileWatcher | None
    watch_group: WatchGroup | None
    _group_watch_scope: anyio.CancelScope | None

    if TYPE_CHECKING:

        @property
        def config_source(self) -> str | None: ...

        async def request_reload(
            self, trigger: Trigger, *, actor: str | None = None
        ) -> ReloadOperation | None: ...

    @property
    def file_watching_enabled(self) -> bool:
        """Whether the config file is watched: by this instance, or under ``--workers`` by its group."""
        wanted = self._group_watch()
        return wanted.enabled if wanted is not None else self._watcher is not None

    @property
    def file_watch_mode(self) -> str | None:
        wanted = self._group_watch()
        if wanted is not None:
            return wanted.mode
        return None if self._watcher is None else self._watcher.mode

    @property
    def poll_interval(self) -> float | None:
        wanted = self._group_watch()
        if wanted is not None:
            return wanted.poll_interval
        return None if self._watcher is None else self._watcher.poll_interval

    def _group_watch(self) -> FileWatchState | None:
        """Under ``--workers``: the group's last toggle in this run of the service (None: none, or not a
        worker)."""
        group = self.watch_group
        if group is None:
            return None
        state = self._fleet.file_watch_of(group.root)
        return state if state is not None and state.toggled_at >= group.since else None

    async def _watch_for_the_group(self) -> None:
        """Worker 0's: watch the file as its group's last toggle says, whichever worker was asked.

        The toggle is in the log (``file_watch.enabled``/``.disabled``); this instance's projections fold
        it within a follow interval. Started or stopped here without recording it again.
        """
        assert self._task_group is not None
        with anyio.CancelScope() as scope:
            self._group_watch_scope = scope
            while True:
                await anyio.sleep(self.settings.follow_poll_interval)
                wanted = self._group_watch()
                if wanted is None or self.config_source is None:
                    continue
                current = self._watcher
                if not wanted.enabled:
                    if current is not None:
                        current.stop()
                        self._watcher = None
                    continue
                if current is not None and (current.poll_interval, current.mode) == (
                    wanted.poll_interval,
                    wanted.mode,
                ):
                    continue
                # The toggle was answered (by whichever worker) before this watcher existed: unless
                # another watcher ran meanwhile, a change made in between is one nobody saw.
                watcher = self._new_watcher(
                    wanted.poll_interval or 1.0,
                    force_polling=wanted.mode == "polling",
                    changed_after=wanted.toggled_at if current is None else None,
                )
                if current is not None:
                    current.stop()
                self._watcher = watcher
                await self._task_group.start(watcher.run)

    async def _reload_for_the_group(self) -> None:
        """Worker 0's watcher saw the file change: reload, unless the group turned watching off.

        Worker 0 folds a toggle within a follow interval, so its watcher can outlive an answered "off"
        by that long: the log is read up to its head first, and a change seen after the toggle is left.
        """
        await self.runner.follow()
        wanted = self._group_watch()
        if wanted is not None and not wanted.enabled:
            logger.info("file change not reloaded: file watching was turned off (by another worker)")
            return
        await self.request_reload(Trigger.FILE_WATCH, actor="file_watch")

    def _new_watcher(
        self, poll_interval: float, *, force_polling: bool, changed_after: datetime | None = None
    ) -> FileWatcher:
        assert self.config_source is not None
        group = self.watch_group
        return FileWatcher(
            Path(self.config_source),
            self._reload_for_the_group
            if group is not None
            else lambda: self.request_reload(Trigger.FILE_WATCH, actor="file_watch"),
            poll_interval=poll_interval,
            force_polling=force_polling,
            changed_after=changed_after,
        )

    async def enable_file_watching(self, poll_interval: float = 1.0, *, force_polling: bool = False) -> None:
        """Reload (coalesced, trigger ``file_watch``) whenever the config source changes."""
        if not 0.1 <= poll_interval <= 60.0:
            raise ValueError("poll_interval must be between 0.1 and 60 seconds")
        if self.config_source is None:
            raise ValueError("no config source to watch")
        if self._task_group is None:
            raise RuntimeError(
                "file watching needs a running task group: use `async with reloader` or the lifecycle"
            )
        group = self.watch_group
        if group is None or group.owner:
            current = self._watcher
            if current is not None and (current.poll_interval, current.force_polling) == (
                poll_interval,
                force_polling,
            ):
                return
        watcher = self._new_watcher(poll_interval, force_polling=force_polling)
        # Recorded first: if the log refuses the event, nothing changes and the caller gets the error,
        # so the log never disagrees with what the instance actually does.
        await self.runner.record(
            FileWatchEnabled(source=self.config_source, poll_interval=poll_interval, mode=watcher.mode)
        )
        if group is not None and not group.owner:
            return  # worker 0 watches for the group: it follows the event just recorded
        if self._watcher is not None:
            self._watcher.stop()
        self._watcher = watcher
        await self._task_group.start(watcher.run)

    async def disable_file_watching(self) -> None:
        if self.watch_group is not None:
            # Turned on by another worker a moment ago, perhaps: this one may not have folded that yet.
            await self.runner.follow()
        if not self.file_watching_enabled:
            return
        await self.runner.record(FileWatchDisabled(source=self.config_source))
        if self._watcher is not None:  # elsewhere than worker 0 there is none: it follows the event
            self._watcher.stop()
            self._watcher = None
