"""The projection contract: a named fold over the log that can be checkpointed and rebuilt from zero."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from store.events import DEFAULT_REGISTRY, RecordedEvent

__all__ = ["Projection", "event_from_state", "event_to_state"]


class Projection(ABC):
    """Folds events in position order. ``version`` goes up whenever the state's shape or meaning
    changes, which makes an old checkpoint unusable: it is then ignored and the projection rebuilt."""

    name: ClassVar[str]
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.position = 0
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Return to the state of an empty log."""

    @abstractmethod
    def fold(self, event: RecordedEvent) -> None:
        """Apply one event; called once per event, in position order."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the state, for a checkpoint."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Load a state written by ``snapshot`` of the same version."""

    def settle(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called after a batch is folded: a place for work worth doing once per batch, not per event."""

    def apply(self, event: RecordedEvent) -> bool:
        if event.position <= self.position:
            return False
        self.fold(event)
        self.position = event.position
        return True


def event_to_state(event: RecordedEvent) -> dict[str, Any]:
    return {
        "position": event.position,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
        "type": event.type,
        "schema_version": type(event.payload).schema_version,
        "operation_id": None if event.operation_id is None else str(event.operation_id),
        "instance_id": event.instance_id,
        "actor": event.actor,
        "payload": event.payload.model_dump(mode="json"),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def event_from_state(state: dict[str, Any]) -> RecordedEvent:
    data = dict(state)
    data["payload"] = DEFAULT_REGISTRY.decode(data["type"], int(data["schema_version"]), data["payload"])
    return RecordedEvent.model_validate(data)
