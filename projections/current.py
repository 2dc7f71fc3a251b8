"""The current config: the typed object readers use, swapped in one assignment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confledger.projections.base import ConfigHashText, Handler, IsoTimeText, Projection, StateModel
from confledger.store.errors import ConfigRefusedHere
from confledger.store.events import ConfigApplied, EventPayload, RecordedEvent

__all__ = ["CurrentConfig", "CurrentProjection"]


@dataclass(frozen=True, slots=True)
class CurrentConfig:
    """One immutable snapshot: a reader holding it sees one config, never half of two."""

    hash: str
    config: Any
    applied_at: datetime
    position: int
    actor: str
    instance_id: str

    @property
    def short_hash(self) -> str:
        return self.hash[:16]


class _AppliedState(StateModel):
    hash: ConfigHashText
    applied_at: IsoTimeText
    position: int
    actor: str
    instance_id: str


class _State(StateModel):
    applied: _AppliedState | None


class CurrentProjection(Projection):
    """Folds ``config.applied``; ``value`` is the hot read path and takes no lock.

    Materialising a typed config needs its body from the log, so the fold only notes the newest applied
    hash and ``settle`` builds the object once per batch: replaying 10,000 applies builds one object.

    A config this instance's model refuses (``ConfigRefusedHere``: the fleet decided it elsewhere) is
    not published: the instance runs what it ran, and ``value`` says so. It is tried once per position,
    not at every batch the follower folds after it.
    """

    name = "current"
    version = 1
    state_model = _State

    def __init__(self, materialize: Callable[[str], Any]) -> None:
        self._materialize = materialize
        self.value: CurrentConfig | None = None
        # Called with each newly published value, on the folding thread (a facade mirrors it into a
        # plain attribute of its own, so its readers pay one attribute load, not a property call).
        self.listeners: list[Callable[[CurrentConfig | None], None]] = []
        super().__init__()

    def _publish(self, value: CurrentConfig | None) -> None:
        self.value = value
        for listener in self.listeners:
            listener(value)

    def reset(self) -> None:
        # The newest config.applied: as its event when folded here, as its checkpoint state when
        # restored (the state is only built from the event when a checkpoint or a reader asks).
        self._applied_event: RecordedEvent | None = None
        self._applied: dict[str, Any] | None = None
        self._refused_position = 0
        self._publish(None)

    def handlers(self) -> Mapping[type[EventPayload], Handler]:
        return {ConfigApplied: self._fold_applied}

    def _fold_applied(self, event: RecordedEvent) -> None:
        self._applied_event = event
        self._applied = None

    def _applied_state(self) -> dict[str, Any] | None:
        event = self._applied_event
        if event is None:
            return self._applied
        payload = event.payload
        assert isinstance(payload, ConfigApplied)
        return {
            "hash": payload.hash,
            "applied_at": event.occurred_at.isoformat(),
            "position": event.position,
            "actor": event.actor,
            "instance_id": event.instance_id,
        }

    def settle(self) -> None:
        event = self._applied_event
        if event is not None:
            payload = event.payload
            assert isinstance(payload, ConfigApplied)
            self._settle_on(payload.hash, event.occurred_at, event.position, event.actor, event.instance_id)
            return
        applied = self._applied
        if applied is None:
            self._publish(None)
            return
        self._settle_on(
            applied["hash"],
            datetime.fromisoformat(applied["applied_at"]),
            int(applied["position"]),
            applied["actor"],
            applied["instance_id"],
        )

    def _settle_on(
        self, config_hash: str, applied_at: datetime, position: int, actor: str, instance: str
    ) -> None:
        if self.value is not None and self.value.position == position:
            return
        if position == self._refused_position:
            return
        try:
            config = self._materialize(config_hash)
        except ConfigRefusedHere:
            self._refused_position = position
            return
        # Built completely before the single assignment that publishes it.
        self._publish(CurrentConfig(config_hash, config, applied_at, position, actor, instance))

    @property
    def hash(self) -> str | None:
        event = self._applied_event
        if event is not None:
            assert isinstance(event.payload, ConfigApplied)
            return event.payload.hash
        return None if self._applied is None else str(self._applied["hash"])

    def snapshot(self) -> dict[str, Any]:
        return {"applied": self._applied_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self._applied_event = None
        self._applied = state.get("applied")
        self._publish(None)
