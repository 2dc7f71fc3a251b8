"""Keeping a set of projections up to date: checkpoint restore, tail catch-up, live folding."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter

from confledger.projections.base import Folder, Projection
from confledger.store.events import RecordedEvent
from confledger.store.log import Checkpoint, EventLog

__all__ = ["ProjectionSet"]

_by_position = attrgetter("position")


class ProjectionSet:
    """Folds ``log`` into ``projections``; start-up replays only the tail after each checkpoint.

    Live events arrive from ``EventLog.subscribe`` on whichever thread appended them, so folding is
    serialised by a lock; a batch that skips positions (another thread's or process's append landed
    first) triggers a catch-up read from the log, so every projection still sees every event once,
    in order. Readers never take the lock: each projection publishes immutable values. The set of
    projections is fixed at construction.
    """

    def __init__(
        self,
        log: EventLog,
        projections: Sequence[Projection],
        *,
        checkpoint_every: int = 1_000,
        checkpoint_min_interval_s: float = 5.0,
    ) -> None:
        self.log = log
        self.projections = list(projections)
        self._folder = Folder(self.projections)
        # Only projections that do something once per batch are called for it.
        self._settling = [p for p in self.projections if type(p).settle is not Projection.settle]
        self.checkpoint_every = checkpoint_every
        self.checkpoint_min_interval_s = checkpoint_min_interval_s
        self._lock = threading.RLock()
        self._last_checkpoint_position = 0
        self._last_checkpoint_time = 0.0
        self._unsubscribe: Callable[[], None] | None = None
        self.replayed_on_start = 0

    @property
    def position(self) -> int:
        positions = [p.position for p in self.projections]
        return min(positions) if positions else 0

    def get(self, name: str) -> Projection:
        for projection in self.projections:
            if projection.name == name:
                return projection
        raise KeyError(name)

    def start(self) -> None:
        """Restore checkpoints, fold the tail, then follow this process's appends."""
        with self._lock:
            for projection in self.projections:
                checkpoint = self.log.load_checkpoint(projection.name)
                projection.reset()
                projection.position = 0
                if checkpoint is not None and checkpoint.version == projection.version:
                    projection.restore(checkpoint.state)
                    projection.position = checkpoint.position
            self._last_checkpoint_position = self.position
            self.replayed_on_start = self._catch_up()
            self._last_checkpoint_time = time.monotonic()
        self._unsubscribe = self.log.subscribe(self.on_appended)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.checkpoint()

    def _catch_up(self) -> int:
        folded = self._folder.fold(self.log.iter_events(self.position))
        self._settle()
        return folded

    def catch_up(self) -> int:
        """Fold whatever other processes appended since (used by followers and before reads)."""
        with self._lock:
            return self._catch_up()

    def _settle(self) -> None:
        for projection in self._settling:
            projection.settle()

    def on_appended(self, batch: Iterable[RecordedEvent]) -> None:
        events = sorted(batch, key=_by_position)
        if not events:
            return
        with self._lock:
            if events[0].position > self.position + 1:
                self._catch_up()
            else:
                self._folder.fold(events)
                self._settle()
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        if self.position - self._last_checkpoint_position < self.checkpoint_every:
            return
        if time.monotonic() - self._last_checkpoint_time < self.checkpoint_min_interval_s:
            return
        self.checkpoint()

    def checkpoint(self) -> None:
        with self._lock:
            for projection in self.projections:
                self.log.save_checkpoint(
                    Checkpoint(
                        name=projection.name,
                        version=projection.version,
                        position=projection.position,
                        state=projection.snapshot(),
                    )
                )
            self._last_checkpoint_position = self.position
            self._last_checkpoint_time = time.monotonic()

    def rebuild(self) -> None:
        """Forget every checkpoint and fold the whole log again."""
        with self._lock:
            for projection in self.projections:
                projection.reset()
                projection.position = 0
            self._catch_up()
