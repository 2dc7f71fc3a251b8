"""The catalogue reads back every payload shape it ever wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from confledger.store.errors import EventSchemaError
from confledger.store.events import (
    DEFAULT_REGISTRY,
    ConfigApplied,
    EventPayload,
    OperationStarted,
    PayloadTable,
    UnknownPayload,
)

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


def test_stored_json_text_reads_back_as_the_dict_does() -> None:
    # The log hands payloads over as their stored text; each version must read as decode() reads it.
    moment = datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=UTC)
    v2 = OperationStarted.model_validate({**V1_STARTED, "started_at": moment}).model_dump(mode="json")
    for version, stored in ((1, V1_STARTED), (2, v2)):
        text = json.dumps(stored, separators=(",", ":"), sort_keys=True)
        expected = DEFAULT_REGISTRY.decode("operation.started", version, stored)
        assert DEFAULT_REGISTRY.decode_json("operation.started", version, text) == expected


def test_stored_json_text_keeps_the_version_rules() -> None:
    with pytest.raises(EventSchemaError) as newer:
        DEFAULT_REGISTRY.decode_json("operation.started", 3, json.dumps(V1_STARTED))
    assert newer.value.code == "event_version_too_new"
    with pytest.raises(EventSchemaError) as invalid:
        DEFAULT_REGISTRY.decode_json("operation.started", 2, json.dumps({"kind": "explode"}))
    assert invalid.value.code == "invalid_payload"
    unknown = DEFAULT_REGISTRY.decode_json("test.unknown", 1, '{"size":3}')
    assert isinstance(unknown, UnknownPayload)
    assert unknown.model_dump() == {"size": 3}


def test_a_payload_table_answers_as_isinstance_would_by_subscript_and_by_get() -> None:
    class LateApplied(ConfigApplied):
        pass

    table = PayloadTable({ConfigApplied: "applied", EventPayload: "any"})
    # get() before any subscript: a type not looked up yet still gets its base's entry, not None.
    assert table.get(LateApplied) == "applied"
    assert table[ConfigApplied] == "applied"
    assert table[OperationStarted] == "any"
    assert PayloadTable({ConfigApplied: 1})[OperationStarted] is None
