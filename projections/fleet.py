"""The fleet: the desired config (the newest ``config.applied``) and what each instance did with it.

Folded from the log alone (``instance.applied``, ``instance.started``, ``instance.stopped``); liveness
comes from the heartbeat rows (``store.fleet.read_heartbeats``) when the view is built, since a heartbeat
is not an event. ``fleet_view`` combines the two:

- ``in_sync``: the instance's services run the desired config;
- ``lagging``: it has not answered the desired config yet (``lag_positions``: how far in the log the
  config it last applied lies behind the desired one);
- ``drifted``: it answered the desired config and a service refused it, or its own model did;
- ``gone``: it stopped, or has not been seen for three heartbeat intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from confledger.projections.base import Handler, IsoTimeText, Projection, StateModel
from confledger.store.events import (
    ConfigApplied,
    EventPayload,
    InstanceApplied,
    InstanceStarted,
    InstanceStopped,
    RecordedEvent,
)
from confledger.store.fleet import Heartbeat

__all__ = ["GONE_AFTER_INTERVALS", "MAX_INSTANCES", "FleetProjection", "fleet_view"]

GONE_AFTER_INTERVALS = 3
# Instances are named host:pid by default, so a long-lived log meets a new one at every restart: the
# fold keeps the most recently heard-of ones, enough for any fleet and a history of restarts.
MAX_INSTANCES = 256


class _Failure(StateModel):
    service: str
    outcome: str
    error: str | None


class _Instance(StateModel):
    applied_hash: str | None
    applied_position: int
    outcome: str | None
    role: str | None
    failures: list[_Failure]
    errors: list[str]
    answered_at: IsoTimeText | None
    last_event_at: IsoTimeText
    started_at: IsoTimeText | None
    stopped: bool


class _State(StateModel):
    desired_hash: str | None
    desired_position: int
    desired_operation_id: str | None
    instances: dict[str, _Instance]


def _new_instance(at: datetime) -> dict[str, Any]:
    return {
        "applied_hash": None,
        "applied_position": 0,
        "outcome": None,
        "role": None,
        "failures": [],
        "errors": [],
        "answered_at": None,
        "last_event_at": at.isoformat(),
        "started_at": None,
        "stopped": False,
    }


class FleetProjection(Projection):
    name = "fleet"
    version = 1
    state_model = _State

    def reset(self) -> None:
        self.desired_hash: str | None = None
        self.desired_position = 0
        self.desired_operation_id: str | None = None
        self.instances: dict[str, dict[str, Any]] = {}

    def handlers(self) -> Mapping[type[EventPayload], Handler]:
        return {
            ConfigApplied: self._applied,
            InstanceApplied: self._answered,
            InstanceStarted: self._started,
            InstanceStopped: self._stopped,
        }

    def _instance(self, event: RecordedEvent) -> dict[str, Any]:
        instance = self.instances.pop(event.instance_id, None)
        if instance is None:
            instance = _new_instance(event.occurred_at)
            if len(self.instances) >= MAX_INSTANCES:
                oldest = min(self.instances, key=lambda name: self.instances[name]["last_event_at"])
                del self.instances[oldest]
        instance["last_event_at"] = event.occurred_at.isoformat()
        # Re-inserted: the dict's order is the order instances were last heard of.
        self.instances[event.instance_id] = instance
        return instance

    def _applied(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, ConfigApplied)
        self.desired_hash = payload.hash
        self.desired_position = event.position
        self.desired_operation_id = None if event.operation_id is None else str(event.operation_id)

    def _answered(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, InstanceApplied)
        instance = self._instance(event)
        position = payload.position
        if position is None:
            # decided: its config.applied is the one just folded, of the same operation.
            position = self.desired_position if payload.operation_id == self.desired_operation_id else 0
        instance.update(
            applied_hash=payload.hash,
            applied_position=position,
            outcome=payload.outcome,
            role=payload.role,
            failures=[failure.model_dump(mode="json") for failure in payload.failures],
            errors=list(payload.errors),
            answered_at=event.occurred_at.isoformat(),
        )

    def _started(self, event: RecordedEvent) -> None:
        instance = self._instance(event)
        instance.update(started_at=event.occurred_at.isoformat(), stopped=False)

    def _stopped(self, event: RecordedEvent) -> None:
        self._instance(event)["stopped"] = True

    def snapshot(self) -> dict[str, Any]:
        return {
            "desired_hash": self.desired_hash,
            "desired_position": self.desired_position,
            "desired_operation_id": self.desired_operation_id,
            "instances": {name: dict(instance) for name, instance in self.instances.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.desired_hash = state["desired_hash"]
        self.desired_position = int(state["desired_position"])
        self.desired_operation_id = state["desired_operation_id"]
        self.instances = {name: dict(instance) for name, instance in state["instances"].items()}


def _state_of(instance: Mapping[str, Any], desired_hash: str | None, desired_position: int) -> str:
    if desired_hash is None:
        return "in_sync"
    if instance["applied_position"] == desired_position and instance["outcome"] != "applied":
        return "drifted"
    if instance["applied_hash"] == desired_hash and instance["outcome"] == "applied":
        return "in_sync"
    return "lagging"


def fleet_view(
    projection: FleetProjection,
    heartbeats: Mapping[str, Heartbeat],
    *,
    now: datetime,
    default_interval_s: float,
    head: int,
) -> dict[str, Any]:
    """The fleet as ``GET /fleet`` and ``confledger fleet`` show it (full hashes; callers shorten them)."""
    names: Iterable[str] = dict.fromkeys([*projection.instances, *heartbeats])
    instances: list[dict[str, Any]] = []
    for name in names:
        folded = projection.instances.get(name)
        beat = heartbeats.get(name)
        instance = folded if folded is not None else _new_instance(beat.started_at if beat else now)
        seen = [datetime.fromisoformat(instance["last_event_at"])]
        if beat is not None:
            seen.append(beat.last_seen)
        last_seen = max(seen)
        interval = beat.interval_s if beat is not None else default_interval_s
        stopped = bool(instance["stopped"]) and (beat is None or beat.last_seen <= last_seen)
        silent = now - last_seen > timedelta(seconds=GONE_AFTER_INTERVALS * interval)
        state = (
            "gone"
            if stopped or silent
            else _state_of(instance, projection.desired_hash, projection.desired_position)
        )
        in_sync = instance["applied_hash"] == projection.desired_hash and instance["outcome"] == "applied"
        lag = 0 if in_sync else max(0, projection.desired_position - int(instance["applied_position"]))
        instances.append(
            {
                "instance_id": name,
                "applied_hash": instance["applied_hash"],
                "state": state,
                "outcome": instance["outcome"],
                "role": instance["role"],
                "lag_positions": lag,
                "last_seen": last_seen,
                "followed_position": None if beat is None else beat.followed_position,
                "host": None if beat is None else beat.host,
                "pid": None if beat is None else beat.pid,
                "version": None if beat is None else beat.version,
                "failures": list(instance["failures"]),
                "errors": list(instance["errors"]),
            }
        )
    instances.sort(key=lambda item: (item["state"] == "gone", item["instance_id"]))
    return {
        "desired_hash": projection.desired_hash,
        "desired_position": projection.desired_position,
        "log_head": head,
        "instances": instances,
    }
