"""One bad file cannot make the log, or a history page, megabytes long (issue 13, item 6), on both backends.

The issue's file: an 888 KB ``.env`` of 100,000 keys the model does not know. Each dry run of it recorded
a 4 MB ``validation.failed``; six made the SQLite file 25.7 MB and ``/history?limit=20`` 24.6 MB. Now an
event keeps the first ``CONFLEDGER_MAX_RECORDED_ITEMS`` (50) errors and counts the rest, and history
answers at most as many per operation, also for events a version before the cap recorded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from confledger.store import NewEvent, OperationKind, Trigger
from confledger.store.events import (
    EventPayload,
    OperationCompleted,
    OperationStarted,
    OperationStatus,
    ValidationFailed,
)
from tests.integration.api.service_harness import Service, clear_confledger_environment, serving

KEYS = 100_000
LISTED = 50
RUNS = 6


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[Service]:
    with serving(tmp_path, database_url) as running:
        yield running


def bad_env(directory: Path) -> Path:
    """100,000 lines ``K00000=1``: 900,000 bytes, under the 1 MiB source cap."""
    path = directory / "bad.env"
    path.write_text("".join(f"K{n:05d}=1\n" for n in range(KEYS)), encoding="utf-8")
    return path


def payload_bytes(payload: EventPayload) -> int:
    return len(json.dumps(payload.model_dump(mode="json")))


def test_an_env_file_of_100000_unknown_keys_records_small_events_and_answers_a_small_history(
    service: Service,
) -> None:
    source = bad_env(service.source.parent)
    assert 850_000 < source.stat().st_size < 1_048_576
    head = service.log.head()

    for _ in range(RUNS):
        response = service.post("/reload", json={"config_source": "bad.env", "dry_run": True})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["success"] is False
        assert result["reason"] == "validation_failed"
        assert result["error_message"] == f"validation failed: {KEYS} error(s)"
        assert len(result["validation_errors"]) == LISTED + 1
        assert result["validation_errors"][0] == "K00000: Extra inputs are not permitted"
        assert result["validation_errors"][-1] == f"(and {KEYS - LISTED} more errors)"
        assert len(response.content) < 20_000

    recorded = service.log.read(head)
    failed = [e.payload for e in recorded if isinstance(e.payload, ValidationFailed)]
    assert len(failed) == RUNS
    for payload in failed:
        assert (len(payload.errors), payload.errors_omitted) == (LISTED, KEYS - LISTED)
        assert payload_bytes(payload) < 10_000  # was 4 MB
    assert sum(payload_bytes(e.payload) for e in recorded) < RUNS * 12_000

    history = service.get("/history", params={"limit": 20})
    assert history.status_code == 200
    assert len(history.content) < 150_000  # was 24.6 MB
    shown = history.json()["operations"]
    assert len([op for op in shown if op["reason"] == "validation_failed"]) == RUNS


def test_history_caps_what_a_log_recorded_before_the_cap(service: Service) -> None:
    # As a version before the cap wrote it: all 100,000 errors in one event.
    operation_id = uuid.uuid4()
    errors = tuple(f"K{n:05d}: Extra inputs are not permitted" for n in range(KEYS))
    old: list[EventPayload] = [
        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API, source="bad.env", dry_run=True),
        ValidationFailed(errors=errors, duration_ms=1.0),
        OperationCompleted(status=OperationStatus.FAILED, reason="validation_failed"),
    ]
    service.log.append([NewEvent(payload, operation_id=operation_id) for payload in old])
    service.post("/reload", json={"force": True})  # this instance folds what the log holds by now

    history = service.get("/history", params={"limit": 20})
    assert history.status_code == 200
    assert len(history.content) < 50_000
    (answer,) = [op for op in history.json()["operations"] if op["operation_id"] == str(operation_id)]
    assert len(answer["validation_errors"]) == LISTED + 1
    assert answer["validation_errors"][-1] == f"(and {KEYS - LISTED} more errors)"
    # The operation's own page still shows the event as recorded: the log is never rewritten.
    detail = service.get(f"/operations/{operation_id}")
    assert detail.status_code == 200
    assert len(detail.json()["operation"]["validation_errors"]) == LISTED + 1
