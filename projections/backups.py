"""The last N distinct applied configs: what an operator can roll back to at a glance.

Rollback itself can target any hash ever applied; this list is the short menu, as the seed's was.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from confledger.projections.base import Handler, IsoTimeText, Projection, StateModel, UuidText
from confledger.store.events import (
    ConfigApplied,
    EventPayload,
    OperationCompleted,
    OperationStarted,
    RecordedEvent,
)

__all__ = ["BackupsProjection"]

_MIN_KEPT = 100


class _Entry(StateModel):
    hash: str
    applied_at: IsoTimeText
    actor: str
    trigger: str
    operation_id: UuidText | None
    position: int


class _State(StateModel):
    entries: list[_Entry]
    triggers: dict[UuidText, str]


# A config.applied folded since the last settle, with its operation's trigger.
_Applied = tuple[RecordedEvent, str]


def _entry(event: RecordedEvent, trigger: str) -> dict[str, Any]:
    payload = event.payload
    assert isinstance(payload, ConfigApplied)
    operation_id = event.operation_id
    return {
        "hash": payload.hash,
        "applied_at": event.occurred_at.isoformat(),
        "actor": event.actor,
        "trigger": trigger,
        "operation_id": None if operation_id is None else str(operation_id),
        "position": event.position,
    }


class BackupsProjection(Projection):
    name = "backups"
    version = 1
    state_model = _State

    def __init__(self, backup_count: int) -> None:
        if backup_count < 1:
            raise ValueError("backup_count must be at least 1")
        self.backup_count = backup_count
        # More than are shown, so a restart with a larger backup_count still finds them in the checkpoint.
        self._kept = max(backup_count + 1, _MIN_KEPT)
        super().__init__()

    def reset(self) -> None:
        self._entries: list[dict[str, Any]] = []
        # Each running operation's trigger, keyed by the id's integer (cheaper to hash than its text).
        self._triggers: dict[int, str] = {}
        # Configs applied since the last ``settle``, the newest last, each at its latest apply: the
        # entries are made and merged in front of the others at ``settle``, once per batch. A rebuild
        # folds the whole log as one batch, and making an entry and two new lists for every apply of
        # the log, to keep the last hundred, was most of this projection's share of it. Readers see
        # them meanwhile (``entries``). Beyond ``_kept`` of them the oldest falls off: that many
        # configs applied after it push it out of the list anyway.
        self._pending: OrderedDict[str, _Applied] = OrderedDict()

    def handlers(self) -> Mapping[type[EventPayload], Handler]:
        return {
            OperationStarted: self._started,
            OperationCompleted: self._completed,
            ConfigApplied: self._applied,
        }

    def _started(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, OperationStarted)
        if event.operation_id is not None:
            # ``_value_``: a plain attribute, where ``.value`` is a descriptor call four times slower.
            self._triggers[event.operation_id.int] = payload.trigger._value_

    def _completed(self, event: RecordedEvent) -> None:
        if event.operation_id is not None:
            self._triggers.pop(event.operation_id.int, None)

    def _applied(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, ConfigApplied)
        operation_id = event.operation_id
        # The trigger now: its operation's start is forgotten when the operation completes.
        trigger = "unknown" if operation_id is None else self._triggers.get(operation_id.int, "unknown")
        pending = self._pending
        # Re-applying a config moves it to the front instead of listing it twice.
        pending.pop(payload.hash, None)
        pending[payload.hash] = (event, trigger)
        if len(pending) > self._kept:
            pending.popitem(last=False)

    def settle(self) -> None:
        if not self._pending:
            return
        # A new list and a new dict, not edits: readers hold the old ones without a lock.
        self._entries = self._merged(self._pending, self._entries)
        self._pending = OrderedDict()

    def _merged(
        self, pending: OrderedDict[str, _Applied], entries: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``entries`` with the configs of ``pending`` in front, newest first, as folding each apply
        in turn would leave them."""
        applied = list(pending.values())  # one step: a fold on another thread cannot change it midway
        fresh = [_entry(event, trigger) for event, trigger in reversed(applied)]
        moved = {entry["hash"] for entry in fresh}
        kept = (entry for entry in entries if entry["hash"] not in moved)
        return [*fresh, *kept][: self._kept]

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The configs applied, newest first (the current one first), each once, at most ``_kept``."""
        # Pending first: if a settle comes between the two reads, the merge still lists each once.
        pending = self._pending
        entries = self._entries
        if not pending:
            return entries
        return self._merged(pending, entries)

    @property
    def backups(self) -> list[dict[str, Any]]:
        """Earlier configs, newest first, not counting the current one (the seed's backups)."""
        return list(self.entries[1 : self.backup_count + 1])

    def snapshot(self) -> dict[str, Any]:
        # The checkpoint's position is past the pending applies: they go into the list first.
        self.settle()
        return {
            "entries": self._entries,
            "triggers": {str(uuid.UUID(int=key)): trigger for key, trigger in self._triggers.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        self._entries = list(state.get("entries", []))
        self._triggers = {uuid.UUID(key).int: trigger for key, trigger in state.get("triggers", {}).items()}
