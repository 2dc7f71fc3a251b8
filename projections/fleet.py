"""The fleet: the desired config (the newest ``config.applied``) and what each instance did with it.

Folded from the log alone (``instance.applied``, ``instance.started``, ``instance.stopped``, and for the
desired change who decided it, whether it was a rollback and whether the fleet threshold kept it); liveness
comes from the heartbeat rows (``store.fleet.read_heartbeats``) when the view is built, since a heartbeat
is not an event. ``fleet_view`` combines the two:

- ``in_sync``: the instance's services run the desired config;
- ``lagging``: it has not answered the desired config yet (``lag_positions``: how far in the log the
  config it last applied lies behind the desired one);
- ``drifted``: it answered the desired config and a service refused it, or its own model did;
- ``gone``: it stopped, or has not been seen for three heartbeat intervals.

An instance gone longer than the view's ``gone_shown_for`` is left out and counted (``gone_hidden``):
instances are named ``host:pid`` by default, so every restart and every replaced pod is a new one, and
after a few deploys the gone would bury the live.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from confledger.projections.base import Handler, IsoTimeText, Projection, StateModel
from confledger.store.decision import FleetVerdict
from confledger.store.events import (
    ConfigApplied,
    ConfigRolledBack,
    EventPayload,
    FileWatchDisabled,
    FileWatchEnabled,
    FleetChangeKept,
    InstanceApplied,
    InstanceStarted,
    InstanceStopped,
    RecordedEvent,
)
from confledger.store.fleet import Heartbeat

__all__ = [
    "GONE_AFTER_INTERVALS",
    "MAX_INSTANCES",
    "DesiredChange",
    "FileWatchState",
    "FleetProjection",
    "fleet_view",
    "group_of",
    "is_silent",
]

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


class _Kept(StateModel):
    applied: int
    failed: int
    waiting: int
    threshold: float


class _Watching(StateModel):
    enabled: bool
    poll_interval: float | None
    mode: str | None
    position: int
    toggled_at: IsoTimeText


class _Decided(StateModel):
    previous_hash: str | None
    kind: Literal["reload", "rollback"]
    decided_by: str
    decided_at: IsoTimeText
    kept: _Kept | None


class _State(StateModel):
    desired_hash: str | None
    desired_position: int
    desired_operation_id: str | None
    desired_decided: _Decided | None  # the rest of the desired change (``DesiredChange``)
    rollback_operation_id: str | None
    instances: dict[str, _Instance]
    watching: dict[str, _Watching]


# The suffix ``confledger serve --workers`` gives each worker's instance id (``api.workers``).
_WORKER_SUFFIX = re.compile(r"/w\d+$")


def group_of(instance_id: str) -> str:
    """The instance id without a ``--workers`` suffix (``web-1/w3`` -> ``web-1``): the workers of one
    service, which watch one file."""
    return _WORKER_SUFFIX.sub("", instance_id)


@dataclass(frozen=True, slots=True)
class FileWatchState:
    """A group's last file-watch toggle (``file_watch.enabled`` or ``.disabled`` by any of its workers)."""

    enabled: bool
    poll_interval: float | None
    mode: str | None
    position: int
    toggled_at: datetime  # when it was recorded: a change of the file since then is one to reload

    def state(self) -> dict[str, Any]:
        return {**asdict(self), "toggled_at": self.toggled_at.isoformat()}

    @classmethod
    def of_state(cls, state: Mapping[str, Any]) -> FileWatchState:
        return cls(**{**state, "toggled_at": datetime.fromisoformat(state["toggled_at"])})


@dataclass(frozen=True, slots=True)
class DesiredChange:
    """The change that made the desired config (the newest ``config.applied``): what the fleet threshold
    judges, from any instance. Replaced whole as it is folded, so a reader on another thread never sees
    one change's decider with another's verdict."""

    hash: str
    position: int
    operation_id: str | None  # None only for a config.applied recorded outside an operation
    previous_hash: str | None
    kind: Literal["reload", "rollback"]
    decided_by: str  # the instance that recorded it
    decided_at: datetime
    kept: FleetVerdict | None  # judged and kept; a change judged and refused is no longer desired

    def decided_state(self) -> dict[str, Any]:
        """The checkpoint's ``desired_decided``: all but the hash, position and operation, which the
        checkpoint keeps as fields of their own."""
        return {
            "previous_hash": self.previous_hash,
            "kind": self.kind,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat(),
            "kept": None
            if self.kept is None
            else {
                "applied": self.kept.applied,
                "failed": self.kept.failed,
                "waiting": self.kept.waiting,
                "threshold": self.kept.threshold,
            },
        }

    @classmethod
    def of_state(cls, state: Mapping[str, Any]) -> DesiredChange | None:
        decided = state["desired_decided"]
        if state["desired_hash"] is None or decided is None:
            return None
        kept = decided["kept"]
        return cls(
            hash=state["desired_hash"],
            position=int(state["desired_position"]),
            operation_id=state["desired_operation_id"],
            previous_hash=decided["previous_hash"],
            kind=decided["kind"],
            decided_by=decided["decided_by"],
            decided_at=datetime.fromisoformat(decided["decided_at"]),
            kept=None
            if kept is None
            else FleetVerdict(state["desired_hash"], **kept, operation_id=state["desired_operation_id"]),
        )


def _change_of(event: RecordedEvent, rollback: bool) -> DesiredChange:
    """The change a folded ``config.applied`` made desired (``rollback``: a rollback's operation made it)."""
    payload = event.payload
    assert isinstance(payload, ConfigApplied)
    return DesiredChange(
        hash=payload.hash,
        position=event.position,
        operation_id=None if event.operation_id is None else str(event.operation_id),
        previous_hash=payload.previous_hash,
        kind="rollback" if rollback else "reload",
        decided_by=event.instance_id,
        decided_at=event.occurred_at,
        kept=None,
    )


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
    version = 3  # 2: the desired change's decider, kind and kept verdict; 3: when watching was toggled
    state_model = _State

    def reset(self) -> None:
        self._desired: DesiredChange | None = None
        # The newest config.applied folded since the last ``settle``, with whether a rollback made it:
        # its ``DesiredChange`` is made when asked for (a reader, a threshold verdict) or once per batch,
        # not at every apply. A rebuild folds the whole log as one batch, and a change made for every
        # apply of the log, each replaced by the next, was a thirtieth of the rebuild.
        self._applied: tuple[RecordedEvent, bool] | None = None
        # A rollback records config.rolled_back before its config.applied, in the same operation.
        self.rollback_operation_id: str | None = None
        self.instances: dict[str, dict[str, Any]] = {}
        # By group (``group_of``): under --workers, what worker 0 watches for all of them.
        self.watching: dict[str, FileWatchState] = {}

    @property
    def desired(self) -> DesiredChange | None:
        """The change that made the desired config (safe to read from any thread: a folded apply not
        yet settled is read first, and ``settle`` publishes its change before letting go of it)."""
        applied = self._applied
        if applied is not None:
            return _change_of(*applied)
        return self._desired

    @property
    def desired_hash(self) -> str | None:
        desired = self.desired
        return None if desired is None else desired.hash

    @property
    def desired_position(self) -> int:
        desired = self.desired
        return 0 if desired is None else desired.position

    def settle(self) -> None:
        applied = self._applied
        if applied is not None:
            self._desired = _change_of(*applied)
            self._applied = None

    def handlers(self) -> Mapping[type[EventPayload], Handler]:
        return {
            ConfigApplied: self._folded_applied,
            ConfigRolledBack: self._rolled_back,
            FleetChangeKept: self._kept,
            FileWatchEnabled: self._watch_toggled,
            FileWatchDisabled: self._watch_toggled,
            InstanceApplied: self._answered,
            InstanceStarted: self._started,
            InstanceStopped: self._stopped,
        }

    def file_watch_of(self, group: str) -> FileWatchState | None:
        """``group``'s last file-watch toggle, if it made one (a value replaced whole, safe to read from
        any thread)."""
        return self.watching.get(group)

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

    def _folded_applied(self, event: RecordedEvent) -> None:
        rollback = self.rollback_operation_id
        self._applied = (
            event,
            rollback is not None and event.operation_id is not None and str(event.operation_id) == rollback,
        )

    def _watch_toggled(self, event: RecordedEvent) -> None:
        payload = event.payload
        enabled = isinstance(payload, FileWatchEnabled)
        group = group_of(event.instance_id)
        self.watching.pop(group, None)
        if len(self.watching) >= MAX_INSTANCES:
            del self.watching[min(self.watching, key=lambda name: self.watching[name].position)]
        self.watching[group] = FileWatchState(
            enabled=enabled,
            poll_interval=payload.poll_interval if isinstance(payload, FileWatchEnabled) else None,
            mode=payload.mode if isinstance(payload, FileWatchEnabled) else None,
            position=event.position,
            toggled_at=event.occurred_at,
        )

    def _rolled_back(self, event: RecordedEvent) -> None:
        self.rollback_operation_id = None if event.operation_id is None else str(event.operation_id)

    def _kept(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, FleetChangeKept)
        self.settle()  # the verdict replaces the change as made
        desired = self._desired
        if desired is not None and payload.operation_id == desired.operation_id:
            kept = FleetVerdict(
                payload.hash,
                payload.applied,
                payload.failed,
                payload.waiting,
                payload.threshold,
                operation_id=payload.operation_id,
            )
            self._desired = replace(desired, kept=kept)

    def _answered(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, InstanceApplied)
        instance = self._instance(event)
        position = payload.position
        if position is None:
            # decided: its config.applied is the one just folded, of the same operation.
            self.settle()
            desired = self._desired
            position = (
                desired.position
                if desired is not None and payload.operation_id == desired.operation_id
                else 0
            )
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
        # The checkpoint's position is past the pending apply: its change is made first.
        self.settle()
        return {
            "desired_hash": self.desired_hash,
            "desired_position": self.desired_position,
            "desired_operation_id": None if self._desired is None else self._desired.operation_id,
            "desired_decided": None if self._desired is None else self._desired.decided_state(),
            "rollback_operation_id": self.rollback_operation_id,
            "instances": {name: dict(instance) for name, instance in self.instances.items()},
            "watching": {group: state.state() for group, state in self.watching.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._applied = None
        self._desired = DesiredChange.of_state(state)
        self.rollback_operation_id = state["rollback_operation_id"]
        self.instances = {name: dict(instance) for name, instance in state["instances"].items()}
        self.watching = {group: FileWatchState.of_state(value) for group, value in state["watching"].items()}


def _state_of(instance: Mapping[str, Any], desired_hash: str | None, desired_position: int) -> str:
    if desired_hash is None:
        return "in_sync"
    if instance["applied_position"] == desired_position and instance["outcome"] != "applied":
        return "drifted"
    if instance["applied_hash"] == desired_hash and instance["outcome"] == "applied":
        return "in_sync"
    return "lagging"


def is_silent(last_seen: datetime, interval_s: float, now: datetime) -> bool:
    """Not seen for ``GONE_AFTER_INTERVALS`` heartbeat intervals: gone (killed, or its host lost)."""
    return now - last_seen > timedelta(seconds=GONE_AFTER_INTERVALS * interval_s)


def fleet_view(
    projection: FleetProjection,
    heartbeats: Mapping[str, Heartbeat],
    *,
    now: datetime,
    default_interval_s: float,
    head: int,
    gone_shown_for: timedelta | None = None,
) -> dict[str, Any]:
    """The fleet as ``GET /fleet`` and ``confledger fleet`` show it (full hashes; callers shorten them).

    An instance gone and last seen more than ``gone_shown_for`` ago is not listed, only counted
    (``gone_hidden``); None lists every instance the log and the heartbeat rows know."""
    names: Iterable[str] = dict.fromkeys([*projection.instances, *heartbeats])
    instances: list[dict[str, Any]] = []
    gone_hidden = 0
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
        silent = is_silent(last_seen, interval, now)
        state = (
            "gone"
            if stopped or silent
            else _state_of(instance, projection.desired_hash, projection.desired_position)
        )
        if state == "gone" and gone_shown_for is not None and now - last_seen > gone_shown_for:
            gone_hidden += 1
            continue
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
        "desired_change": projection.desired,
        "log_head": head,
        "instances": instances,
        "gone_hidden": gone_hidden,
    }
