"""Keeping a set of projections up to date: checkpoint restore, tail catch-up, live folding."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter

from pydantic import ValidationError

from confledger.projections.base import Folder, Projection
from confledger.store.events import ConfigApplied, PayloadTable, RecordedEvent
from confledger.store.log import Checkpoint, EventLog

__all__ = ["ProjectionSet", "restore_projections"]

# With a listener, every folded event is asked whether it is a config.applied.
_APPLIES: PayloadTable[bool] = PayloadTable({ConfigApplied: True})

logger = logging.getLogger(__name__)

_by_position = attrgetter("position")


def restore_projections(log: EventLog, projections: Sequence[Projection]) -> int:
    """Restore each projection from its checkpoint where one can be used, else from position 0.

    The one way both the service (``ProjectionSet``) and the offline reader (``api.inspect``) start.
    Returns the log's head, read after the checkpoints, so no checkpoint can lie beyond it honestly.

    A checkpoint is a cache of a fold, never the record: one of another version is left for the fold
    from zero (a new release); one past the head (a log cut short, or another log's checkpoint) or
    with a state its projection cannot read is discarded with a warning, and the projection folds from
    position 0 instead. A projection left at 0 is reset, whatever ``restore`` managed before failing.
    """
    found = [(projection, log.load_checkpoint(projection.name)) for projection in projections]
    head = log.head()
    for projection, checkpoint in found:
        projection.reset()
        projection.position = 0
        if checkpoint is None:
            continue
        if checkpoint.version != projection.version:
            logger.info(
                "checkpoint %r is of version %d, the projection of version %d: folding from position 0",
                projection.name,
                checkpoint.version,
                projection.version,
            )
            continue
        if checkpoint.position > head:
            logger.warning(
                "checkpoint %r is at position %d, past the log's head %d: not trusted, folding from position 0",
                projection.name,
                checkpoint.position,
                head,
            )
            continue
        problem = _restore(projection, checkpoint)
        if problem is not None:
            projection.reset()
            logger.warning(
                "checkpoint %r at position %d cannot be read (%s): discarded, folding from position 0",
                projection.name,
                checkpoint.position,
                problem,
            )
            continue
        projection.position = checkpoint.position
    return head


def _restore(projection: Projection, checkpoint: Checkpoint) -> str | None:
    """Restore ``projection`` from ``checkpoint``'s state; None, or what made the state unreadable."""
    state = checkpoint.state
    if not isinstance(state, dict):
        return f"the state is a JSON {type(state).__name__}, not an object"
    try:
        if projection.state_model is not None:
            projection.state_model.model_validate(state)
        projection.restore(state)
    except ValidationError as exc:
        return f"{exc.error_count()} field(s) not as written, first at {_location(exc)}"
    except Exception as exc:  # any failure to read a cache is a cache miss
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def _location(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return ".".join(str(part) for part in first["loc"]) or "the top level"


class ProjectionSet:
    """Folds ``log`` into ``projections``; start-up replays only the tail after each checkpoint.

    Live events arrive from ``EventLog.subscribe`` on whichever thread appended them, so folding is
    serialised by a lock; a batch that skips positions (another thread's or process's append landed
    first) triggers a catch-up read from the log, so every projection still sees every event once,
    in order. Readers never take the lock: each projection publishes immutable values. The set of
    projections is fixed at construction.

    ``applied_listeners`` hear of each ``config.applied`` once it is folded (and the projections have
    settled on it), in position order, under the lock, whichever path folded it: this instance's own
    append, a catch-up, or a follower reading what another instance decided. Once only: a rebuild folds
    the old applies again without telling them again. A listener must not block.
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
        # Whether the append that makes a checkpoint due saves it, on its own thread. Turned off while a
        # caller saves them off every append's path (``checkpoint_if_due``: the reloader's task).
        self.checkpoint_on_append = True
        self._unsubscribe: Callable[[], None] | None = None
        self.replayed_on_start = 0
        self.applied_listeners: list[Callable[[RecordedEvent], None]] = []
        # The newest position the applied-listeners have been told up to. A rebuild folds from 0 again:
        # holding every old apply of the log until the fold ends, to tell nobody (they were told), cost
        # a whole-log rebuild a fifth of its time, most of it the collector scanning them.
        self._told = 0

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
            restore_projections(self.log, self.projections)
            self._last_checkpoint_position = self.position
            self.replayed_on_start = self._catch_up()
            self._last_checkpoint_time = time.monotonic()
        self._unsubscribe = self.log.subscribe(self.on_appended, folded_to=lambda: self.position)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.checkpoint()

    def _catch_up(self) -> int:
        return self._fold(self.log.iter_events(self.position))

    def _fold(self, events: Iterable[RecordedEvent]) -> int:
        """Fold and settle ``events``; then tell the applied-listeners of the applies among them."""
        if not self.applied_listeners:
            try:
                folded = self._folder.fold(events)
                self._settle()
            finally:
                # Folded with nobody listening: a listener added later hears only of applies after it.
                self._told = max(self._told, self.position)
            return folded
        before = max(self.position, self._told)
        applied: list[RecordedEvent] = []

        def noting_applies() -> Iterator[RecordedEvent]:
            for event in events:
                if event.position > before and _APPLIES[type(event.payload)]:
                    applied.append(event)
                yield event

        try:
            folded = self._folder.fold(noting_applies())
            self._settle()
        finally:
            # Also after a failed fold: what was folded is never folded again, so it is told now or never.
            reached = self.position
            for event in applied:
                if before < event.position <= reached:
                    self._tell_applied(event)
            self._told = max(before, reached)
        return folded

    def _tell_applied(self, event: RecordedEvent) -> None:
        for listener in list(self.applied_listeners):
            try:
                listener(event)
            except Exception:
                # A listener (a watch client's queue) never stops the projections from folding.
                logger.exception("an applied-listener failed at position %d", event.position)

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
            # A batch starts with what others appended since the position the log was told (subscribe's
            # folded_to), which another thread's append may have folded since.
            position = self.position
            if events[0].position <= position:
                events = [event for event in events if event.position > position]
                if not events:
                    return
            if events[0].position > position + 1:
                self._catch_up()
            else:
                self._fold(events)
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        if self.checkpoint_on_append and self.checkpoint_due():
            self.checkpoint()

    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every`` events were folded since the last checkpoint, and at least
        ``checkpoint_min_interval_s`` has passed."""
        if self.position - self._last_checkpoint_position < self.checkpoint_every:
            return False
        return time.monotonic() - self._last_checkpoint_time >= self.checkpoint_min_interval_s

    def checkpoint_if_due(self) -> bool:
        """Save the checkpoint if one is due (blocking); whether it was."""
        with self._lock:
            if not self.checkpoint_due():
                return False
        self.checkpoint()
        return True

    def checkpoint(self) -> None:
        with self._lock:
            checkpoints = []
            for projection in self.projections:
                state, encoded = projection.encoded_snapshot()
                checkpoints.append(
                    Checkpoint(projection.name, projection.version, projection.position, state, encoded)
                )
            position = self.position
        # Written once the lock is let go: the set was taken whole under it, and a save never moves a
        # checkpoint backwards, so an append folding meanwhile waits for the encoding alone, not for the
        # write and its fsync as well.
        self.log.save_checkpoint(*checkpoints)
        with self._lock:
            self._last_checkpoint_position = max(self._last_checkpoint_position, position)
            self._last_checkpoint_time = time.monotonic()

    def rebuild(self) -> None:
        """Forget every checkpoint and fold the whole log again."""
        with self._lock:
            for projection in self.projections:
                projection.reset()
                projection.position = 0
            self._catch_up()
