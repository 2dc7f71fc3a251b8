"""The last N distinct applied configs: what an operator can roll back to at a glance.

Rollback itself can target any hash ever applied; this list is the short menu, as the seed's was.
"""

from __future__ import annotations

import uuid
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
        self.entries: list[dict[str, Any]] = []
        # The entries' hashes in the same order, to find a re-applied config without a Python loop.
        self._hashes: list[str] = []
        # Each running operation's trigger, keyed by the id's integer (cheaper to hash than its text).
        self._triggers: dict[int, str] = {}

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
        entry = {
            "hash": payload.hash,
            "applied_at": event.occurred_at.isoformat(),
            "actor": event.actor,
            "trigger": "unknown" if operation_id is None else self._triggers.get(operation_id.int, "unknown"),
            "operation_id": None if operation_id is None else str(operation_id),
            "position": event.position,
        }
        # Re-applying a config moves it to the front instead of listing it twice. New lists, not edits:
        # readers hold the old one without a lock.
        entries, hashes = self.entries, self._hashes
        if payload.hash in hashes:
            entries, hashes = list(entries), list(hashes)
            while payload.hash in hashes:
                index = hashes.index(payload.hash)
                del entries[index], hashes[index]
        self.entries = [entry, *entries[: self._kept - 1]]
        self._hashes = [payload.hash, *hashes[: self._kept - 1]]

    @property
    def backups(self) -> list[dict[str, Any]]:
        """Earlier configs, newest first, not counting the current one (the seed's backups)."""
        return list(self.entries[1 : self.backup_count + 1])

    def snapshot(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "triggers": {str(uuid.UUID(int=key)): trigger for key, trigger in self._triggers.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.entries = list(state.get("entries", []))
        self._hashes = [entry["hash"] for entry in self.entries]
        self._triggers = {uuid.UUID(key).int: trigger for key, trigger in state.get("triggers", {}).items()}
