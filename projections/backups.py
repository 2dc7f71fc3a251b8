"""The last N distinct applied configs: what an operator can roll back to at a glance.

Rollback itself can target any hash ever applied; this list is the short menu, as the seed's was.
"""

from __future__ import annotations

from typing import Any

from projections.base import Projection
from store.events import ConfigApplied, OperationCompleted, OperationStarted, RecordedEvent

__all__ = ["BackupsProjection"]

_MIN_KEPT = 100


class BackupsProjection(Projection):
    name = "backups"
    version = 1

    def __init__(self, backup_count: int = 5) -> None:
        if backup_count < 1:
            raise ValueError("backup_count must be at least 1")
        self.backup_count = backup_count
        # More than are shown, so a restart with a larger backup_count still finds them in the checkpoint.
        self._kept = max(backup_count + 1, _MIN_KEPT)
        super().__init__()

    def reset(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._triggers: dict[str, str] = {}

    def fold(self, event: RecordedEvent) -> None:
        payload = event.payload
        operation = None if event.operation_id is None else str(event.operation_id)
        if isinstance(payload, OperationStarted) and operation is not None:
            self._triggers[operation] = payload.trigger.value
        elif isinstance(payload, OperationCompleted) and operation is not None:
            self._triggers.pop(operation, None)
        elif isinstance(payload, ConfigApplied):
            entry = {
                "hash": payload.hash,
                "applied_at": event.occurred_at.isoformat(),
                "actor": event.actor,
                "trigger": self._triggers.get(operation or "", "unknown"),
                "operation_id": operation,
                "position": event.position,
            }
            # Re-applying a config moves it to the front instead of listing it twice.
            self.entries = [entry, *(e for e in self.entries if e["hash"] != payload.hash)][: self._kept]

    @property
    def backups(self) -> list[dict[str, Any]]:
        """Earlier configs, newest first, not counting the current one (the seed's backups)."""
        return list(self.entries[1 : self.backup_count + 1])

    def snapshot(self) -> dict[str, Any]:
        return {"entries": self.entries, "triggers": self._triggers}

    def restore(self, state: dict[str, Any]) -> None:
        self.entries = list(state.get("entries", []))
        self._triggers = dict(state.get("triggers", {}))
