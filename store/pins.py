"""Configs an operator rolled back away from: a reload does not quietly apply them again.

After a manual rollback away from hash H the file still holds H, so the next SIGHUP (logrotate's
postrotate sends one), file change or CLI reload would re-apply what was just rolled back. H is pinned
from that rollback until a later ``config.applied`` names H again (a forced reload, or a rollback to H):
a reload that would apply H without ``force`` is refused with reason ``rolled_back_hash``. A rollback by
the fleet threshold pins H the same way: re-applied, it would reach every instance again, and most of
the fleet has just refused it. An automatic rollback by the service threshold pins nothing: H never
applied, its services refused it in this instance alone, and the next reload may find them ready.

The pins are a fold of the log (``config.rolled_back`` and ``config.applied``), so they survive a
restart. Like ``EventLog.open_operations``, the fold keeps a checkpoint (``store.rollback_pins``) so a
start reads only the tail after it; the checkpoint is a cache, never the truth.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confledger.store.errors import ConfledgerError
from confledger.store.events import ConfigApplied, ConfigRolledBack, RecordedEvent
from confledger.store.log import Checkpoint, EventLog
from confledger.store.times import utc_text

__all__ = ["PINNED_REASON", "Pin", "RollbackPins"]

logger = logging.getLogger(__name__)

PINNED_REASON = "rolled_back_hash"
_CHECKPOINT = "store.rollback_pins"
_VERSION = 1
# A start that folded at least this many events saves the checkpoint, so the next start reads less.
_REFOLD = 256
_TYPES = (ConfigRolledBack.event_type, ConfigApplied.event_type)
_PINNING = frozenset({"manual", "fleet_threshold"})


@dataclass(frozen=True, slots=True)
class Pin:
    """A rollback away from ``hash`` (manual, or by the fleet threshold): when, by whom, in which operation."""

    hash: str
    at: datetime
    actor: str
    operation_id: str | None
    position: int

    def refusal(self) -> str:
        return (
            f"Configuration {self.hash[:16]} was rolled back at {utc_text(self.at, 'seconds')} "
            f"by {self.actor}; change the file or use force"
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "actor": self.actor,
            "operation_id": self.operation_id,
            "position": self.position,
        }

    @classmethod
    def from_state(cls, full_hash: str, state: dict[str, Any]) -> Pin:
        operation_id = state.get("operation_id")
        return cls(
            hash=str(full_hash),
            at=datetime.fromisoformat(str(state["at"])),
            actor=str(state["actor"]),
            operation_id=None if operation_id is None else str(operation_id),
            position=int(state["position"]),
        )


class RollbackPins:
    """The pinned hashes, folded from the log up to ``position`` (every event up to it is folded).

    ``catch_up`` reads what lies after ``position`` (a look at the head first: when nothing was
    appended, that is all it costs). ``appended`` takes the events this instance has just written, so its
    own rollback pins at once; they advance ``position`` when they follow it directly, and otherwise
    wait for the next ``catch_up`` to fold them again in order with what others wrote between: folding
    an event twice, in log order, ends where one fold of the log ends. Events at or before ``position``
    are never folded again, so the order of the two never matters. Safe across threads.
    """

    def __init__(self) -> None:
        self.pins: dict[str, Pin] = {}
        self.position = 0
        self._loaded = False
        # Held only to fold (never across a database read): appending threads fold their events under it.
        self._lock = threading.Lock()

    def get(self, full_hash: str | None) -> Pin | None:
        return None if full_hash is None else self.pins.get(full_hash)

    def appended(self, events: Sequence[RecordedEvent]) -> None:
        """Fold events this instance just appended (in position order)."""
        if not events:
            return
        with self._lock:
            follows = events[0].position == self.position + 1
            self._fold(events)
            if follows:
                self.position = max(self.position, events[-1].position)

    def catch_up(self, log: EventLog, *, head: int | None = None, save: bool = True) -> None:
        """Fold what the log holds after ``position`` (from the checkpoint on the first call) up to
        ``head``, or else up to the head it reads.

        A caller that has just read the head under the fleet lock passes it: pins move only by what an
        operation records, which takes that lock, so nothing after it can pin or unpin a config, and
        with nothing to fold the catch-up costs no read at all.

        Blocking (database reads): async callers run it in a worker thread. ``save=False`` for a
        read-only log (the CLI).
        """
        if not self._loaded:
            self._restore(log)
        head, after = (log.head() if head is None else head), self.position
        if head <= after:
            return
        tail = log.read(after, types=_TYPES, until=head)
        with self._lock:
            self._fold(tail)
            self.position = max(self.position, head)
        if save and len(tail) >= _REFOLD:
            # A cache, not the log: failing to write it only costs the next start time.
            with self._lock:
                state = {"pins": {full_hash: pin.to_state() for full_hash, pin in self.pins.items()}}
                checkpoint = Checkpoint(_CHECKPOINT, _VERSION, self.position, state)
            with contextlib.suppress(ConfledgerError):
                log.save_checkpoint(checkpoint)

    def _fold(self, events: Iterable[RecordedEvent]) -> None:
        for event in events:
            if event.position <= self.position:
                continue  # folded already
            payload = event.payload
            if isinstance(payload, ConfigApplied):
                self.pins.pop(payload.hash, None)
            elif (
                isinstance(payload, ConfigRolledBack)
                and payload.reason in _PINNING
                and payload.from_hash is not None
            ):
                self.pins[payload.from_hash] = Pin(
                    hash=payload.from_hash,
                    at=event.occurred_at,
                    actor=event.actor,
                    operation_id=None if event.operation_id is None else str(event.operation_id),
                    position=event.position,
                )

    def _restore(self, log: EventLog) -> None:
        self._loaded = True
        checkpoint = log.load_checkpoint(_CHECKPOINT)
        if checkpoint is None or checkpoint.version != _VERSION:
            return
        if checkpoint.position > log.head():
            return  # a checkpoint from another log's history: fold from the start
        try:
            pins = {
                str(full_hash): Pin.from_state(full_hash, dict(state))
                for full_hash, state in dict(checkpoint.state["pins"]).items()
            }
        except (KeyError, TypeError, ValueError):
            logger.warning("the rollback pins checkpoint is unreadable; folding them from the log")
            return
        with self._lock:
            self.pins, self.position = pins, checkpoint.position
