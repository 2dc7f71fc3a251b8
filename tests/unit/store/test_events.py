"""The catalogue reads back every payload shape it ever wrote."""

from __future__ import annotations

from datetime import UTC, datetime

from confledger.store.events import DEFAULT_REGISTRY, OperationStarted

V1_STARTED = {"kind": "reload", "trigger": "signal", "source": "/etc/app/config.yaml", "expected_head": 7}


def test_a_v1_operation_started_reads_back_without_its_own_start_time() -> None:
    # v1 payloads carry no started_at: readers then take the event's commit time (store/outcome.py).
    payload = DEFAULT_REGISTRY.decode("operation.started", 1, V1_STARTED)
    assert isinstance(payload, OperationStarted)
    assert payload.started_at is None
    assert payload.expected_head == 7


def test_a_v2_operation_started_keeps_its_start_time() -> None:
    moment = datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=UTC)
    stored = OperationStarted.model_validate({**V1_STARTED, "started_at": moment}).model_dump(mode="json")
    payload = DEFAULT_REGISTRY.decode("operation.started", 2, stored)
    assert isinstance(payload, OperationStarted)
    assert payload.started_at == moment
