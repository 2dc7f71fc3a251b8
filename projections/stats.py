"""Statistics folded from the log: totals, rates, percentiles, per trigger and per service."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import StringConstraints

from confledger.projections.base import Handler, Projection, StateModel, UuidText
from confledger.projections.sketch import QuantileSketch, SketchState
from confledger.store.events import (
    ConfigApplied,
    ConfigRolledBack,
    EventPayload,
    OperationCompleted,
    OperationRejected,
    OperationStarted,
    OperationStatus,
    RecordedEvent,
    ServiceNotified,
)
from confledger.store.outcome import reported_status

__all__ = ["StatsProjection"]


# What an operation whose start was never folded counts as (the start predates a lost checkpoint).
_UNKNOWN_START = {"kind": "reload", "trigger": "manual"}


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


# Counter keys that are read back by splitting them: "trigger|status".
_TriggerStatus = Annotated[str, StringConstraints(pattern=r"^[^|]*[|][^|]*$")]


class _Start(StateModel):
    kind: str
    trigger: str


class _State(StateModel):
    total: int
    successful: int
    failed_by_trigger: dict[str, int]
    by_status: dict[str, int]
    by_kind: dict[str, int]
    by_trigger_status: dict[_TriggerStatus, int]
    by_kind_trigger_status: dict[str, int]
    errors: dict[str, int]
    rollbacks: dict[str, int]
    services: dict[str, dict[str, int]]
    service_durations: dict[str, SketchState]
    service_hashes: dict[str, str]
    durations: SketchState
    validation_durations: SketchState
    apply_durations: SketchState
    current_hash: str | None = None
    rejected: int
    rejected_by_reason: dict[str, int]
    rejected_by_trigger: dict[str, int]
    open: dict[UuidText, _Start]


class StatsProjection(Projection):
    """Statuses as history reports them (``store.outcome.reported_status``): a manual rollback is
    ``rolled_back`` and a success.

    A rejected request (``operation.rejected``: another operation was running, the source was not
    allowed) never ran, so it is not an operation here, as in the SQL ``operations`` view and the
    operation metrics: it is counted apart, as ``rejected_requests``. History lists it (as failed, with
    its reason), so ``count_matching``, which totals history pages, counts it too.
    """

    name = "stats"
    version = 5  # 5: a service that refused the first config it was offered runs none
    state_model = _State

    def reset(self) -> None:
        self.total = 0
        self.successful = 0
        # A rolled_back status is a success for a manual rollback, a failure for an automatic one.
        self.failed_by_trigger: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.by_kind: dict[str, int] = {}
        # "trigger|status" pairs, so a filtered history page can report its total without a scan.
        self.by_trigger_status: dict[str, int] = {}
        # "kind|trigger|status" and "kind|reason": the label sets of the operation metrics.
        self.by_kind_trigger_status: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.rollbacks: dict[str, int] = {}
        self.services: dict[str, dict[str, int]] = {}
        self.service_durations: dict[str, QuantileSketch] = {}
        self.service_hashes: dict[str, str] = {}
        self.durations = QuantileSketch()
        self.validation_durations = QuantileSketch()
        self.apply_durations = QuantileSketch()
        self.current_hash: str | None = None
        self.rejected = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.rejected_by_trigger: dict[str, int] = {}
        self._open: dict[int, dict[str, str]] = {}

    # The handlers read an enum's value as ``_value_``, a plain attribute: ``.value`` is a descriptor
    # call, four times slower, and they run for most events of every operation.
    def handlers(self) -> Mapping[type[EventPayload], Handler]:
        return {
            OperationStarted: self._started,
            OperationCompleted: self._completed,
            OperationRejected: self._rejected,
            ServiceNotified: self._notified,
            ConfigRolledBack: self._rolled_back,
            ConfigApplied: self._applied,
        }

    def _started(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, OperationStarted)
        if event.operation_id is not None:
            # Keyed by the id's integer: hashing it is far cheaper than formatting the id as text.
            self._open[event.operation_id.int] = {
                "kind": payload.kind._value_,
                "trigger": payload.trigger._value_,
            }

    def _completed(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, OperationCompleted)
        if event.operation_id is None:
            return
        started = self._open.pop(event.operation_id.int, _UNKNOWN_START)
        # The kind as the state keeps it, its value: reported_status takes either, and making the
        # member of it again (OperationKind(...)) cost more than the rest of the rule.
        status, success = reported_status(started["kind"], payload.status)
        self._count(started["kind"], started["trigger"], status._value_, success, payload.reason)
        if payload.status is not OperationStatus.INTERRUPTED:
            self.durations.add(payload.total_ms)
            self.validation_durations.add(payload.validation_ms)
            self.apply_durations.add(payload.apply_ms)

    def _rejected(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, OperationRejected)
        self.rejected += 1
        _bump(self.rejected_by_reason, payload.reason)
        _bump(self.rejected_by_trigger, payload.trigger._value_)

    def _notified(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, ServiceNotified)
        service = payload.service
        outcomes = self.services.get(service)
        if outcomes is None:
            outcomes = self.services[service] = {}
        outcome = payload.outcome._value_
        _bump(outcomes, f"{payload.direction}:{outcome}")
        if payload.direction == "forward":
            sketch = self.service_durations.get(service)
            if sketch is None:
                sketch = self.service_durations[service] = QuantileSketch()
            sketch.add(payload.duration_ms)
        if outcome == "success" and payload.config_hash is not None:
            self.service_hashes[service] = payload.config_hash
        elif payload.direction == "start" or service not in self.service_hashes:
            # Refused the restored config as its instance started, or refused the first config it was
            # ever offered (registered after start-up): it runs no config the log knows of.
            self.service_hashes[service] = ""

    def _rolled_back(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, ConfigRolledBack)
        _bump(self.rollbacks, payload.reason)

    def _applied(self, event: RecordedEvent) -> None:
        payload = event.payload
        assert isinstance(payload, ConfigApplied)
        self.current_hash = payload.hash

    def _count(self, kind: str, trigger: str, status: str, success: bool, reason: str | None) -> None:
        self.total += 1
        self.successful += success
        if not success:
            _bump(self.failed_by_trigger, trigger)
        _bump(self.by_status, status)
        _bump(self.by_kind, kind)
        _bump(self.by_trigger_status, f"{trigger}|{status}")
        _bump(self.by_kind_trigger_status, f"{kind}|{trigger}|{status}")
        if not success:
            _bump(self.errors, f"{kind}|{reason or status}")

    def operations_by_kind_trigger_status(self) -> dict[tuple[str, str, str], int]:
        return {
            (parts[0], parts[1], parts[2]): count
            for key, count in self.by_kind_trigger_status.items()
            if len(parts := key.split("|")) == 3
        }

    def errors_by_kind_reason(self) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = {}
        for key, count in self.errors.items():
            kind, _, reason = key.partition("|")
            result[(kind, reason)] = count
        return result

    # --- reading -------------------------------------------------------------------------------------

    @property
    def failed(self) -> int:
        return self.total - self.successful

    @property
    def success_rate(self) -> float:
        return self.successful / self.total if self.total else 0.0

    def count_matching(self, trigger: str | None = None, status: str | None = None) -> int:
        """How many entries history holds for these filters: operations, and rejected requests (which
        history shows as failed)."""
        operations = sum(
            count
            for pair, count in self.by_trigger_status.items()
            if (trigger is None or pair.split("|")[0] == trigger)
            and (status is None or pair.split("|")[1] == status)
        )
        if status not in (None, "failed"):
            return operations
        if trigger is None:
            return operations + self.rejected
        return operations + self.rejected_by_trigger.get(trigger, 0)

    def per_trigger(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for pair, count in self.by_trigger_status.items():
            trigger, _ = pair.split("|")
            entry = result.setdefault(trigger, {"total": 0, "failed": self.failed_by_trigger.get(trigger, 0)})
            entry["total"] += count
        for entry in result.values():
            entry["failure_rate"] = entry["failed"] / entry["total"] if entry["total"] else 0.0
        return dict(sorted(result.items()))

    def per_service(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for service, outcomes in sorted(self.services.items()):
            forward = {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("forward:")}
            total = sum(forward.values())
            sketch = self.service_durations.get(service, QuantileSketch())
            result[service] = {
                "notified": total,
                "outcomes": dict(sorted(forward.items())),
                "compensations": sum(v for k, v in outcomes.items() if k.startswith("compensate:")),
                "failure_rate": (total - forward.get("success", 0)) / total if total else 0.0,
                "p50_ms": sketch.quantile(0.5),
                "p99_ms": sketch.quantile(0.99),
                "running_hash": self.service_hashes.get(service),
            }
        return result

    def drift(self, current_hash: str | None) -> dict[str, str]:
        """Services whose last accepted config is not the current one, with the hash they run."""
        return {
            service: running
            for service, running in sorted(self.service_hashes.items())
            if current_hash is not None and running != current_hash
        }

    def summary(self) -> dict[str, Any]:
        return {
            "total_operations": self.total,
            "successful_operations": self.successful,
            "failed_operations": self.failed,
            "success_rate": round(self.success_rate, 6),
            "average_duration_ms": round(self.durations.mean, 3),
            "p50_duration_ms": round(self.durations.quantile(0.5), 3),
            "p95_duration_ms": round(self.durations.quantile(0.95), 3),
            "p99_duration_ms": round(self.durations.quantile(0.99), 3),
            "max_duration_ms": round(self.durations.max, 3),
            "operations_by_status": dict(sorted(self.by_status.items())),
            "operations_by_kind": dict(sorted(self.by_kind.items())),
            "rollbacks": dict(sorted(self.rollbacks.items())),
            "rejected_requests": self.rejected,
            "rejected_requests_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "triggers": self.per_trigger(),
            "services": self.per_service(),
        }

    # --- checkpoint ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "successful": self.successful,
            "failed_by_trigger": self.failed_by_trigger,
            "by_status": self.by_status,
            "by_kind": self.by_kind,
            "by_trigger_status": self.by_trigger_status,
            "by_kind_trigger_status": self.by_kind_trigger_status,
            "errors": self.errors,
            "rollbacks": self.rollbacks,
            "services": self.services,
            "service_durations": {k: v.to_state() for k, v in self.service_durations.items()},
            "service_hashes": self.service_hashes,
            "durations": self.durations.to_state(),
            "validation_durations": self.validation_durations.to_state(),
            "apply_durations": self.apply_durations.to_state(),
            "current_hash": self.current_hash,
            "rejected": self.rejected,
            "rejected_by_reason": self.rejected_by_reason,
            "rejected_by_trigger": self.rejected_by_trigger,
            "open": {str(uuid.UUID(int=key)): value for key, value in self._open.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        self.total = int(state["total"])
        self.successful = int(state["successful"])
        self.failed_by_trigger = dict(state["failed_by_trigger"])
        self.by_status = dict(state["by_status"])
        self.by_kind = dict(state["by_kind"])
        self.by_trigger_status = dict(state["by_trigger_status"])
        self.by_kind_trigger_status = dict(state["by_kind_trigger_status"])
        self.errors = dict(state["errors"])
        self.rollbacks = dict(state["rollbacks"])
        self.services = {k: dict(v) for k, v in state["services"].items()}
        self.service_durations = {
            k: QuantileSketch.from_state(v) for k, v in state["service_durations"].items()
        }
        self.service_hashes = dict(state["service_hashes"])
        self.durations = QuantileSketch.from_state(state["durations"])
        self.validation_durations = QuantileSketch.from_state(state["validation_durations"])
        self.apply_durations = QuantileSketch.from_state(state["apply_durations"])
        self.current_hash = state.get("current_hash")
        self.rejected = int(state["rejected"])
        self.rejected_by_reason = dict(state["rejected_by_reason"])
        self.rejected_by_trigger = dict(state["rejected_by_trigger"])
        self._open = {uuid.UUID(k).int: dict(v) for k, v in state["open"].items()}
