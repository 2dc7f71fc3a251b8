"""The HTTP API against the real app: a real SQLite file, then the same suite on PostgreSQL.

Every endpoint under ``/api/v1/config`` and every status code issue 4 names, with httpx (Starlette's
TestClient, which runs the app's lifespan) and no mocked reloader. Each mutating call is also checked
against the events it left in the log, read back through ``lifecycle.reloader.log``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from confledger.api.lifecycle import setup_configuration_lifecycle
from confledger.api.routes import audit as audit_routes
from confledger.api.schemas import OperationOut
from confledger.examples.app_config import AppConfig
from confledger.store.outcome import build_operation
from confledger.store.schema import config_versions
from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    FIRECRAWL_KEY,
    OPENAI_KEY,
    SEED_RELOAD_KEYS,
    Service,
    clear_confledger_environment,
    full_hash_of,
    serving,
    variant,
    write_config,
)

HISTORY_WINDOW = 10  # small, so history pages beyond it are folded from the log, not memory

RELOAD_APPLIED = [
    "operation.started",
    "config.loaded",
    "validation.passed",
    "config.applied",
    "operation.completed",
]
RELOAD_APPLIED_WITH_SERVICE = [
    "operation.started",
    "config.loaded",
    "validation.passed",
    "service.notified",
    "config.applied",
    "operation.completed",
]
RELOAD_UNCHANGED = ["operation.started", "config.loaded", "config.unchanged", "operation.completed"]
RELOAD_INVALID = ["operation.started", "config.loaded", "validation.failed", "operation.completed"]
RELOAD_DRY_RUN = ["operation.started", "config.loaded", "validation.passed", "operation.completed"]
ROLLBACK_APPLIED = [
    "operation.started",
    "validation.passed",
    "config.rolled_back",
    "config.applied",
    "operation.completed",
]
ROLLBACK_REFUSED = ["operation.started", "operation.completed"]
REJECTED = ["operation.rejected"]


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[Service]:
    with serving(tmp_path, database_url, history_window=HISTORY_WINDOW) as running:
        yield running


def short(full_hash: str | None) -> str | None:
    return None if full_hash is None else full_hash[:16]


def reload(service: Service, **body: Any) -> dict[str, Any]:
    response = service.post("/reload", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def apply(service: Service, body: dict[str, Any]) -> str:
    """Write ``body`` to the config file and reload it; return the full hash now current."""
    write_config(service.source, body)
    result = reload(service)
    assert result["success"], result
    current = service.current_full_hash()
    assert current == full_hash_of(body, service.log)
    return current


def head(service: Service) -> int:
    return service.log.head()


def insert_config_version(service: Service, full_hash: str) -> None:
    """A crafted stored config (config_versions refuses only UPDATE and DELETE, not INSERT)."""
    with service.log.engine.begin() as connection:
        connection.execute(
            config_versions.insert().values(
                hash=full_hash,
                body={"note": "crafted to share a prefix"},
                size_bytes=30,
                first_position=None,
                created_at=datetime.now(UTC),
            )
        )


# --- POST /reload ----------------------------------------------------------------------------------


def test_reload_applies_a_changed_file_and_records_each_step(service: Service) -> None:
    seen: list[int] = []
    service.services.register("cache", lambda old, new: seen.append(new.database.pool_size), priority=10)
    before = service.current_full_hash()
    body = variant(database__pool_size=21)
    write_config(service.source, body)

    result = reload(service)

    assert set(result) >= SEED_RELOAD_KEYS
    assert result["success"] is True
    assert result["status"] == "success"
    assert result["trigger"] == "api"
    assert result["actor"] == "token:admin"
    assert result["changes_applied"] == ["database.pool_size"]
    assert result["services_notified"] == ["cache:success"]
    assert result["previous_config_hash"] == short(before)
    assert result["new_config_hash"] == short(full_hash_of(body, service.log))
    assert result["validation_errors"] == []
    assert seen == [21]
    assert service.current_full_hash() == full_hash_of(body, service.log)
    events = service.log.read_operation(result["operation_id"])
    assert [e.type for e in events] == RELOAD_APPLIED_WITH_SERVICE
    assert {e.actor for e in events} == {"token:admin"}  # the role, never the token
    assert events[0].payload.client == "testclient"  # type: ignore[attr-defined]
    assert events[0].payload.source == str(service.source)  # type: ignore[attr-defined]

    unchanged = reload(service)
    assert unchanged["success"] is True
    assert unchanged["message"] == "No configuration changes detected"
    assert unchanged["services_notified"] == []
    assert service.events_of(unchanged["operation_id"]) == RELOAD_UNCHANGED

    forced = reload(service, force=True)
    assert forced["success"] is True
    assert forced["services_notified"] == ["cache:success"]
    assert service.events_of(forced["operation_id"]) == RELOAD_APPLIED_WITH_SERVICE
    assert service.current_full_hash() == full_hash_of(body, service.log)


def test_a_reloads_reply_is_the_operation_as_the_model_and_the_history_show_it(service: Service) -> None:
    write_config(service.source, variant(database__pool_size=23))
    response = service.post("/reload", json={})
    assert response.headers["content-type"] == "application/json"
    reply = response.json()
    recorded = build_operation(service.log.read_operation(reply["operation_id"]))
    assert reply == OperationOut.of(recorded).model_dump(mode="json")
    assert service.get("/history", params={"limit": 1}).json()["operations"] == [reply]
    rolled_back = service.post("/rollback", json={}).json()
    assert service.get("/history", params={"limit": 1}).json()["operations"] == [rolled_back]


def test_an_operation_over_http_counts_from_the_request_in_hand(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real runner, watched: when it is asked, and from when the route says the request was there.
    runner = service.reloader.runner
    asked: list[tuple[float | None, float]] = []

    def watched(real: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            asked.append((kwargs.get("received"), time.perf_counter()))
            return await real(*args, **kwargs)

        return call

    monkeypatch.setattr(runner, "reload", watched(runner.reload))
    monkeypatch.setattr(runner, "rollback", watched(runner.rollback))
    write_config(service.source, variant(database__pool_size=22))
    sent = time.perf_counter()  # TestClient runs the app in this process: one clock

    assert reload(service)["success"] is True
    assert service.post("/rollback", json={}).json()["success"] is True

    # Received after the client sent it and before the runner was asked: the token check, the body's
    # parse and the route's own work are inside total_duration_ms.
    assert len(asked) == 2
    for received, runner_asked in asked:
        assert received is not None
        assert sent <= received <= runner_asked


# Bodies that fail validation, and a fragment each failure must name (never the value itself).
INVALID_BODIES = [
    # a custom validator's error: openai selected without its key; also trips a performance warning
    (
        variant(embedding__openai_api_key=None, performance__max_concurrent_requests=80),
        "embedding.openai_api_key: required when embedding.provider is 'openai'",
    ),
    # the pydantic model's own error
    (variant(database__pool_size=0), "database.pool_size"),
    # an unknown section: the model forbids extra keys
    ({**variant(), "unexpected": {"a": 1}}, "unexpected"),
]


@pytest.mark.parametrize(("body", "expected_error"), INVALID_BODIES)
def test_reload_with_validation_errors_answers_200_with_success_false(
    service: Service, body: dict[str, Any], expected_error: str
) -> None:
    before = service.current_full_hash()
    write_config(service.source, body)

    response = service.post("/reload", json={"force": True})

    assert response.status_code == 200
    result = response.json()
    assert set(result) >= SEED_RELOAD_KEYS
    assert result["success"] is False
    assert result["status"] == "failed"
    assert result["reason"] == "validation_failed"
    assert any(expected_error in error for error in result["validation_errors"]), result["validation_errors"]
    assert service.events_of(result["operation_id"]) == RELOAD_INVALID
    assert service.current_full_hash() == before
    if body["performance"]["max_concurrent_requests"] > 50:
        assert any("max_concurrent_requests" in w for w in result["validation_warnings"])


def test_reload_of_a_missing_file_fails_with_the_load_recorded(service: Service) -> None:
    before = service.current_full_hash()
    service.source.unlink()

    result = reload(service)

    assert result["success"] is False
    assert result["status"] == "failed"
    assert service.events_of(result["operation_id"]) == [
        "operation.started",
        "config.load_failed",
        "operation.completed",
    ]
    assert service.current_full_hash() == before


def test_dry_run_validates_and_reports_without_applying(service: Service) -> None:
    notified: list[str] = []
    service.services.register("search", lambda old, new: notified.append("called"))
    before = service.current_full_hash()
    body = variant(cache__ttl_seconds=60)
    write_config(service.source, body)

    result = reload(service, dry_run=True)

    assert result["success"] is True
    assert result["dry_run"] is True
    assert result["message"].startswith("Dry run")
    assert "cache.ttl_seconds" in result["message"]
    assert result["services_notified"] == []
    assert notified == []
    assert service.events_of(result["operation_id"]) == RELOAD_DRY_RUN
    assert service.current_full_hash() == before
    # The dry-run config is stored (so it can be shown) but was never applied.
    version = service.get(f"/versions/{full_hash_of(body, service.log)}").json()
    assert version["applied"] is False


def test_reload_while_another_operation_runs_is_409_naming_it(service: Service) -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow_service(old: Any, new: Any) -> bool:
        entered.set()
        return release.wait(timeout=30)

    service.services.register("slow", slow_service, timeout=60)
    first: dict[str, Any] = {}

    def first_request() -> None:
        first["response"] = service.post("/reload", json={"force": True})

    worker = threading.Thread(target=first_request)
    worker.start()
    try:
        assert entered.wait(timeout=30), "the first reload never reached its service"
        running = service.reloader.running_operation_id
        assert running is not None
        head_before = head(service)

        second = service.post("/reload", json={"force": True})
        rollback = service.post("/rollback", json={})
        status = service.get("/status").json()
    finally:
        release.set()
        worker.join(timeout=30)

    assert second.status_code == 409
    assert second.json()["running_operation_id"] == running
    assert running in second.json()["detail"]
    assert second.json()["code"] == "operation_in_progress"
    assert service.events_of(second.json()["operation_id"]) == REJECTED
    assert rollback.status_code == 409
    assert rollback.json()["running_operation_id"] == running
    assert status["running_operation_id"] == running
    # Each refusal is one operation.rejected event naming the running operation.
    rejections = [e for e in service.log.read(head_before) if e.type == "operation.rejected"]
    assert len(rejections) == 2
    assert {e.payload.running_operation_id for e in rejections} == {running}  # type: ignore[attr-defined]
    assert {e.payload.kind.value for e in rejections} == {"reload", "rollback"}  # type: ignore[attr-defined]
    assert {e.actor for e in rejections} == {"token:admin"}
    finished = first["response"]
    assert finished.status_code == 200
    assert finished.json()["operation_id"] == running
    assert finished.json()["services_notified"] == ["slow:success"]


def test_changes_through_two_instances_in_sequence_both_apply_in_order(
    service: Service, tmp_path: Path, database_url: str
) -> None:
    # Issue 14: a second instance on the same log applies a config; a change through the first one,
    # made afterwards, is decided on top of it (under the fleet lock, after catching up), not refused.
    key = service.lifecycle.encryption_key  # every instance sharing a log shares its key
    with serving(tmp_path, database_url, instance_id="other-instance", encryption_key=key) as other:
        newer = apply(other, variant(database__pool_size=61))

        write_config(service.source, variant(database__pool_size=62))
        applied = reload(service)
        assert applied["success"] is True
        assert applied["previous_config_hash"] == short(newer)

        # And back through the other one: a rollback to the previous config, which is the other's.
        rollback = other.post("/rollback", json={})
        assert rollback.status_code == 200, rollback.text
        assert rollback.json()["new_config_hash"] == short(newer)
        assert "config.applied" in other.events_of(rollback.json()["operation_id"])


def test_reload_from_a_source_outside_the_allowed_dirs_is_403_and_recorded(service: Service) -> None:
    before, head_before = service.current_full_hash(), head(service)

    response = service.post("/reload", json={"config_source": "/etc/passwd"})

    assert response.status_code == 403
    assert "not allowed" in response.json()["detail"]
    new_events = service.log.read(head_before)
    assert [e.type for e in new_events] == REJECTED
    assert new_events[0].payload.reason == "source_not_allowed"  # type: ignore[attr-defined]
    assert new_events[0].actor == "token:admin"
    assert service.current_full_hash() == before


def test_reload_from_another_file_in_the_config_dir_is_allowed(service: Service) -> None:
    other = service.source.with_name("staging.yaml")
    body = variant(environment="staging")
    write_config(other, body)

    result = reload(service, config_source="staging.yaml")

    assert result["success"] is True
    assert service.current_full_hash() == full_hash_of(body, service.log)
    started = service.log.read_operation(result["operation_id"])[0]
    assert started.payload.source == str(other.resolve())  # type: ignore[attr-defined]


# Request bodies the schema refuses before anything runs: 422, and not one event.
INVALID_RELOAD_REQUESTS = [
    {"force": "sometimes"},  # not a boolean
    {"force": "yes"},  # a word pydantic's lax mode would read as true: the schema says boolean
    {"force": 1},  # nor a number for one
    {"dry_run": "false"},  # a string that reads as false is still not a boolean
    {"config_source": 7},  # a path is a string
    {"unknown": True},  # extra keys are forbidden
    {"config_source": "x" * 5000},  # longer than any path
]


@pytest.mark.parametrize("body", INVALID_RELOAD_REQUESTS)
def test_malformed_reload_request_is_422_and_records_nothing(service: Service, body: dict[str, Any]) -> None:
    head_before = head(service)
    response = service.post("/reload", json=body)
    assert response.status_code == 422
    assert head(service) == head_before


def test_a_post_with_no_body_is_a_plain_reload_and_a_rollback_to_the_previous_config(
    service: Service,
) -> None:
    """``curl -X POST …/reload``: what an operator types first, read as ``{}``."""
    first = service.current_full_hash()
    write_config(service.source, variant(database__pool_size=29))
    reloaded = service.post("/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["success"] is True
    assert service.current_full_hash() != first
    back = service.post("/rollback")
    assert back.status_code == 200, back.text
    assert service.current_full_hash() == first


# --- POST /rollback --------------------------------------------------------------------------------


def test_rollback_to_previous_and_to_a_prefix(service: Service) -> None:
    first = service.current_full_hash()
    assert first is not None
    second = apply(service, variant(database__pool_size=30))

    back = service.post("/rollback", json={})

    assert back.status_code == 200
    result = back.json()
    assert set(result) >= SEED_RELOAD_KEYS
    assert result["success"] is True
    assert result["kind"] == "rollback"
    assert result["previous_config_hash"] == short(second)
    assert result["new_config_hash"] == short(first)
    assert service.events_of(result["operation_id"]) == ROLLBACK_APPLIED
    assert service.current_full_hash() == first
    assert service.get("/current").json()["full_hash"] == first

    forward = service.post("/rollback", json={"target_hash": second[:7]})
    assert forward.status_code == 200
    assert forward.json()["new_config_hash"] == short(second)
    assert service.current_full_hash() == second

    again = service.post("/rollback", json={"target_hash": second})
    assert again.status_code == 200
    assert again.json()["message"].startswith("Configuration is already")
    assert service.events_of(again.json()["operation_id"]) == [
        "operation.started",
        "config.unchanged",
        "operation.completed",
    ]


def test_rollback_errors_404_400_and_nothing_changes(service: Service) -> None:
    current = service.current_full_hash()
    assert current is not None
    dry = variant(cache__ttl_seconds=61)
    write_config(service.source, dry)
    reload(service, dry_run=True)  # stored but never applied
    ambiguous = "abcdef1"
    insert_config_version(service, ambiguous + "0" * 57)
    insert_config_version(service, ambiguous + "1" * 57)

    # (target_hash, status code, reason code): what each refusal answers
    refusals = [
        ("0000000", 404, "unknown_config_hash"),  # no stored config has this prefix
        (full_hash_of(dry, service.log)[:12], 404, "unknown_config_hash"),  # stored, but never applied
        (ambiguous, 400, "ambiguous_hash_prefix"),  # two stored configs share the prefix
        ("xyz", 400, "invalid_hash_prefix"),  # not hex
        ("abc12", 400, "invalid_hash_prefix"),  # fewer than 7 digits
    ]
    for target, code, reason in refusals:
        response = service.post("/rollback", json={"target_hash": target})
        assert response.status_code == code, (target, response.text)
        result = response.json()
        assert result["success"] is False
        assert result["reason"] == reason
        assert result["status"] == "failed"
        # An error answer like any other as well: detail and code beside the recorded operation.
        assert result["code"] == reason
        assert result["detail"] == result["error_message"]
        assert service.events_of(result["operation_id"]) == ROLLBACK_REFUSED
        assert service.current_full_hash() == current

    assert service.post("/rollback", json={"target_hash": "a" * 65}).status_code == 422
    assert service.post("/rollback", json={"target": "abc"}).status_code == 422


def test_rollback_with_no_previous_config_is_400(service: Service) -> None:
    response = service.post("/rollback", json={})
    assert response.status_code == 400
    assert response.json()["reason"] == response.json()["code"] == "no_previous_config"
    assert service.events_of(response.json()["operation_id"]) == ROLLBACK_REFUSED


# --- GET /history ----------------------------------------------------------------------------------


def all_operations(service: Service) -> list[Any]:
    """Every operation in the log, newest first, folded from its events (the ground truth)."""
    grouped: dict[str, list[Any]] = {}
    for event in service.log.read():
        if event.operation_id is not None:
            grouped.setdefault(str(event.operation_id), []).append(event)
    operations = [build_operation(events) for events in grouped.values()]
    return sorted(operations, key=lambda op: op.first_position, reverse=True)


def read_all_pages(service: Service, limit: int, **filters: str) -> tuple[list[dict[str, Any]], set[int]]:
    operations: list[dict[str, Any]] = []
    totals: set[int] = set()
    before: int | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit, **filters}
        if before is not None:
            params["before"] = before
        page = service.get("/history", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["limit"] == limit
        assert len(body["operations"]) <= limit
        operations += body["operations"]
        totals.add(body["total_count"])
        before = body["next_before"]
        if before is None:
            return operations, totals
    raise AssertionError("history paging did not end")


def test_history_pages_beyond_the_in_memory_window_with_filters_and_totals(service: Service) -> None:
    write_config(service.source, variant(database__pool_size=0))
    for _ in range(4):
        reload(service, force=True)  # api, failed (validation)
    write_config(service.source, variant())
    for _ in range(106):
        reload(service)  # api, success (unchanged)
    service.post("/reload", json={"config_source": "/etc/hosts"})  # api, failed (rejected)
    truth = all_operations(service)
    assert len(truth) == 1 + 4 + 106 + 1 > 100 + HISTORY_WINDOW

    for limit in (0, 101):
        assert service.get("/history", params={"limit": limit}).status_code == 422
    assert service.get("/history", params={"before": 0}).status_code == 422
    assert service.get("/history", params={"trigger": "telepathy"}).status_code == 422
    assert service.get("/history", params={"status": "maybe"}).status_code == 422

    default = service.get("/history").json()
    assert default["limit"] == 20
    assert [op["operation_id"] for op in default["operations"]] == [op.operation_id for op in truth[:20]]
    assert default["total_count"] == len(truth)

    # (limit, filters, which operations must come back): unfiltered pages, then each filter alone and together
    cases: list[tuple[int, dict[str, str], list[Any]]] = [
        (100, {}, truth),
        (7, {}, truth),
        (100, {"trigger": "api"}, [op for op in truth if op.trigger.value == "api"]),
        (100, {"trigger": "startup"}, [op for op in truth if op.trigger.value == "startup"]),
        (3, {"status": "failed"}, [op for op in truth if op.status.value == "failed"]),
        (
            50,
            {"trigger": "api", "status": "success"},
            [op for op in truth if op.trigger.value == "api" and op.status.value == "success"],
        ),
        (100, {"trigger": "signal"}, []),
    ]
    for limit, filters, expected in cases:
        operations, totals = read_all_pages(service, limit, **filters)
        assert [op["operation_id"] for op in operations] == [op.operation_id for op in expected], filters
        assert totals == {len(expected)}, filters
        for op in operations:
            assert set(op) >= SEED_RELOAD_KEYS


# --- GET /stats, /status, /backups -----------------------------------------------------------------

SEED_STATS_KEYS = {
    "total_operations",
    "successful_operations",
    "failed_operations",
    "success_rate",
    "average_duration_ms",
    "listeners_registered",
    "backups_available",
    "current_config_hash",
}
SEED_STATUS_KEYS = {
    "config_reloader_enabled",
    "current_config_hash",
    "registered_listeners",
    "available_backups",
    "file_watching_enabled",
    "signal_handler_enabled",
    "reload_statistics",
}


def test_stats_totals_and_slow_operations(service: Service) -> None:
    service.services.register("db", lambda old, new: True)
    apply(service, variant(database__pool_size=22))
    write_config(service.source, variant(database__pool_size=0))
    reload(service)

    stats = service.get("/stats").json()

    assert set(stats) >= SEED_STATS_KEYS
    assert stats["total_operations"] == 3
    assert stats["successful_operations"] == 2
    assert stats["failed_operations"] == 1
    assert stats["success_rate"] == pytest.approx(2 / 3)
    assert stats["listeners_registered"] == 1
    assert stats["backups_available"] == 1
    assert stats["current_config_hash"] == short(service.current_full_hash())
    assert "slow_operations" not in stats

    slow = service.get("/stats", params={"slow_ms": 0}).json()["slow_operations"]
    assert len(slow) == 3
    for entry in slow:
        assert entry["slowest_phase"] in {"load", "validation", "apply"}
        assert entry["total_duration_ms"] > 0  # every operation read a file and wrote the log
    durations = [entry["total_duration_ms"] for entry in slow]
    assert durations == sorted(durations, reverse=True)
    assert service.get("/stats", params={"slow_ms": 10**9}).json()["slow_operations"] == []
    assert service.get("/stats", params={"slow_ms": -1}).status_code == 422


def test_status_shows_the_seed_keys_instance_head_and_service_drift(service: Service) -> None:
    service.services.register("steady", lambda old, new: True, priority=2)
    service.services.register("flaky", lambda old, new: new.database.pool_size != 33, priority=1)
    accepted = apply(service, variant(database__pool_size=32))
    # One of two services refuses: 1/2 is not below the 0.5 threshold, so the config is applied anyway
    # and "flaky" is left running the previous one.
    write_config(service.source, variant(database__pool_size=33))
    partial = reload(service)
    assert partial["success"] is True
    assert partial["services_notified"] == ["steady:success", "flaky:failed"]

    status = service.get("/status").json()

    assert set(status) >= SEED_STATUS_KEYS
    assert status["config_reloader_enabled"] is True
    assert status["current_config_hash"] == short(service.current_full_hash())
    assert status["registered_listeners"] == 2
    assert status["listeners"] == ["steady", "flaky"]
    assert status["available_backups"] == 2
    assert status["file_watching_enabled"] is False
    assert status["signal_handler_enabled"] is False
    assert set(status["reload_statistics"]) == {"total_operations", "success_rate", "average_duration_ms"}
    assert status["reload_statistics"]["total_operations"] == 3
    assert status["instance_id"] == service.log.instance_id
    assert status["log_head"] == head(service)
    assert status["running_operation_id"] is None
    assert status["service_drift"] == {"flaky": short(accepted)}


def test_backups_list_earlier_configs_newest_first(service: Service) -> None:
    first = service.current_full_hash()
    second = apply(service, variant(database__pool_size=41))
    third = apply(service, variant(database__pool_size=42))

    response = service.get("/backups")

    assert response.status_code == 200
    body = response.json()
    assert body["max_backups"] == 5
    assert body["backup_count"] == 2  # what is listed, not the limit
    assert body["current_config_hash"] == short(third)
    assert [entry["full_hash"] for entry in body["backups"]] == [second, first]
    for entry in body["backups"]:
        assert entry["hash"] == entry["full_hash"][:16]
        assert datetime.fromisoformat(entry["created_at"]).tzinfo is not None
        assert entry["operation_id"]
    assert [entry["trigger"] for entry in body["backups"]] == ["api", "startup"]
    newest = service.get("/backups", params={"count": 1}).json()
    assert [entry["full_hash"] for entry in newest["backups"]] == [second]
    assert newest["backup_count"] == 1
    assert service.get("/backups", params={"count": 0}).status_code == 422


# --- POST /file-watch/enable and /disable ----------------------------------------------------------


def test_file_watch_enable_and_disable_answer_the_seed_bodies_and_record_events(service: Service) -> None:
    # poll_interval outside 0.1..60 (or not a number) is refused before anything happens
    for bad in ("0.05", "60.5", "-1", "soon"):
        head_before = head(service)
        response = service.post("/file-watch/enable", params={"poll_interval": bad})
        assert response.status_code == 422, bad
        assert head(service) == head_before

    head_before = head(service)
    enabled = service.post("/file-watch/enable", params={"poll_interval": 0.5})

    assert enabled.status_code == 200
    assert {
        key: enabled.json()[key]
        for key in ("file_watching_enabled", "poll_interval_seconds", "config_source")
    } == {
        "file_watching_enabled": True,
        "poll_interval_seconds": 0.5,
        "config_source": str(service.source),
    }
    assert enabled.json()["message"]
    assert service.get("/status").json()["file_watching_enabled"] is True
    new_events = service.log.read(head_before)
    assert [e.type for e in new_events] == ["file_watch.enabled"]
    assert new_events[0].payload.poll_interval == 0.5  # type: ignore[attr-defined]

    head_before = head(service)
    disabled = service.post("/file-watch/disable")
    assert disabled.status_code == 200
    assert disabled.json() == {"file_watching_enabled": False, "message": "File watching disabled"}
    assert [e.type for e in service.log.read(head_before)] == ["file_watch.disabled"]
    assert service.get("/status").json()["file_watching_enabled"] is False

    head_before = head(service)
    again = service.post("/file-watch/disable")
    assert again.status_code == 200
    assert again.json()["file_watching_enabled"] is False
    assert head(service) == head_before  # nothing to stop, nothing recorded


# --- GET /current, /versions/{hash}, /diff ---------------------------------------------------------


def test_current_version_and_diff_show_configs_with_secrets_redacted(service: Service) -> None:
    first = service.current_full_hash()
    assert first is not None
    rotated = "sk-rotated-4444-not-a-real-key-5555"
    second = apply(service, variant(embedding__openai_api_key=rotated, database__pool_size=25))

    current = service.get("/current").json()
    assert current["hash"] == short(second)
    assert current["full_hash"] == second
    assert datetime.fromisoformat(current["applied_at"]).tzinfo is not None
    assert current["config"]["database"]["pool_size"] == 25
    assert current["config"]["embedding"]["openai_api_key"] == "**********"
    assert current["config"]["crawl"]["firecrawl_api_key"] == "**********"

    for reference in (second, second[:16], second[:7], second[:7].upper()):
        version = service.get(f"/versions/{reference}")
        assert version.status_code == 200, reference
        body = version.json()
        assert body["full_hash"] == second
        assert body["hash"] == short(second)
        assert body["applied"] is True
        assert body["size_bytes"] > 0
        assert body["config"]["embedding"]["openai_api_key"] == "**********"
    insert_config_version(service, "fedcba9" + "0" * 57)
    insert_config_version(service, "fedcba9" + "1" * 57)
    # (reference, status code): what each lookup answers
    lookups = [
        ("0000000000", 404),  # a valid prefix of no stored config
        ("fedcba9", 400),  # ambiguous
        ("xyz", 400),  # not a hash
        ("abc", 400),  # too short
    ]
    for reference, code in lookups:
        assert service.get(f"/versions/{reference}").status_code == code, reference

    diff = service.get("/diff", params={"from": first[:10], "to": second})
    assert diff.status_code == 200
    body = diff.json()
    assert body["from_hash"] == short(first)
    assert body["to_hash"] == short(second)
    changes = {change["path"]: change for change in body["changes"]}
    assert set(changes) == {"database.pool_size", "embedding.openai_api_key"}
    assert (changes["database.pool_size"]["old"], changes["database.pool_size"]["new"]) == (20, 25)
    assert changes["embedding.openai_api_key"]["old"] == "**********"
    assert changes["embedding.openai_api_key"]["new"] == "**********"
    assert service.get("/diff", params={"from": first, "to": first}).json()["changes"] == []
    assert service.get("/diff", params={"from": first}).status_code == 422
    assert service.get("/diff", params={"from": first, "to": "0000000000"}).status_code == 404
    assert service.get("/diff", params={"from": "fedcba9", "to": first}).status_code == 400
    assert service.get("/diff", params={"from": "nothex!", "to": first}).status_code == 400
    for text in (OPENAI_KEY, FIRECRAWL_KEY, rotated):
        assert text not in diff.text


# --- GET /operations/{id}, /events -----------------------------------------------------------------


def test_operation_detail_lists_every_event_of_one_operation(service: Service) -> None:
    result = reload(service, force=True)

    detail = service.get(f"/operations/{result['operation_id']}")

    assert detail.status_code == 200
    body = detail.json()
    assert body["operation"]["operation_id"] == result["operation_id"]
    assert body["operation"]["status"] == "success"
    logged = service.log.read_operation(result["operation_id"])
    assert [e["position"] for e in body["events"]] == [e.position for e in logged]
    assert [e["type"] for e in body["events"]] == RELOAD_APPLIED
    assert [e["hash"] for e in body["events"]] == [e.hash for e in logged]
    assert service.get(f"/operations/{uuid.uuid4()}").status_code == 404
    assert service.get(f"/operations/{uuid.uuid4().hex}").status_code == 404
    assert service.get("/operations/not-an-operation").status_code == 422


def test_events_page_through_the_whole_audit_stream(service: Service) -> None:
    apply(service, variant(database__pool_size=26))
    reload(service, force=True)
    logged = service.log.read()

    seen: list[dict[str, Any]] = []
    after = 0
    for _ in range(100):
        page = service.get("/events", params={"after": after, "limit": 4})
        assert page.status_code == 200
        body = page.json()
        assert body["head"] >= len(logged)
        if not body["events"]:
            assert body["next_after"] == after
            break
        seen += body["events"]
        after = body["next_after"]
        assert after == body["events"][-1]["position"]
    assert [e["position"] for e in seen[: len(logged)]] == [e.position for e in logged]
    assert [e["type"] for e in seen[: len(logged)]] == [e.type for e in logged]
    for bad in ({"after": -1}, {"limit": 0}, {"limit": 1001}, {"after": "x"}):
        assert service.get("/events", params=bad).status_code == 422, bad


# --- GET /verify, /timeline ------------------------------------------------------------------------


def test_verify_checks_the_whole_chain(service: Service) -> None:
    apply(service, variant(database__pool_size=27))

    body = service.get("/verify").json()

    assert body == {
        "ok": True,
        "checked": head(service),
        "head": head(service),
        "first_broken_position": None,
        "reason": None,
        "code": None,
        "config_hash": None,
        "anchor_checked": True,  # beside the SQLite log, beside the config for PostgreSQL
    }


def test_timeline_replays_operations_in_a_window(service: Service) -> None:
    first = reload(service, force=True)
    middle_hash = apply(service, variant(database__pool_size=28))
    middle = service.get("/history", params={"limit": 1}).json()["operations"][0]
    last = reload(service, force=True)

    everything = service.get("/timeline")
    assert everything.status_code == 200
    ids = [op["operation_id"] for op in everything.json()["operations"]]
    assert {first["operation_id"], middle["operation_id"], last["operation_id"]} <= set(ids)
    assert any(entry["type"] == "instance.started" for entry in everything.json()["lifecycle"])

    window = service.get("/timeline", params={"since": middle["started_at"], "until": middle["completed_at"]})
    assert window.status_code == 200
    body = window.json()
    assert [op["operation_id"] for op in body["operations"]] == [middle["operation_id"]]
    assert [change["hash"] for change in body["config_changes"]] == [middle_hash]
    assert body["config_changes"][0]["changes"] == ["database.pool_size"]

    later = datetime.fromisoformat(middle["completed_at"]) + timedelta(days=1)
    assert service.get("/timeline", params={"since": later.isoformat()}).json()["operations"] == []
    inverted = service.get("/timeline", params={"since": later.isoformat(), "until": middle["started_at"]})
    assert inverted.status_code == 400
    assert service.get("/timeline", params={"since": "yesterday"}).status_code == 422
    assert everything.json()["truncated"] is False


def test_a_timeline_too_long_for_one_answer_gives_its_newest_part_and_says_so(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = reload(service, force=True)
    last = reload(service, force=True)
    monkeypatch.setattr(audit_routes, "MAX_TIMELINE_EVENTS", 3)  # fewer than one reload's events
    body = service.get("/timeline").json()
    ids = [op["operation_id"] for op in body["operations"]]
    assert body["truncated"] is True
    assert last["operation_id"] in ids
    assert first["operation_id"] not in ids


# --- /healthz, /readyz -----------------------------------------------------------------------------


def test_health_and_readiness_need_no_token(service: Service) -> None:
    assert service.get("/healthz", token=None).json() == {"status": "ok"}
    ready = service.get("/readyz", token=None)
    assert ready.status_code == 200
    # Which config runs is for token holders: /readyz is public and shows no hash.
    assert ready.json() == {"status": "ready"}


def test_not_ready_until_a_config_is_applied(tmp_path: Path, database_url: str) -> None:
    source = tmp_path / "conf" / "config.yaml"
    source.parent.mkdir()
    with serving(tmp_path, database_url, source=source) as service:
        assert service.get("/healthz", token=None).status_code == 200
        assert service.get("/readyz", token=None).status_code == 503
        assert service.get("/current").status_code == 404

        write_config(source, variant())
        assert reload(service)["success"] is True

        assert service.get("/readyz", token=None).status_code == 200
        assert service.get("/current").json()["full_hash"] == full_hash_of(variant(), service.log)


# --- inputs schemathesis found answering 500 (now refused or handled) ------------------------------

# (path, query, status code): cursors beyond BIGINT, and time bounds that mix or overflow time zones
EDGE_INPUTS = [
    ("/events", {"after": 2**63}, 422),  # beyond BIGINT: refused, not an overflow in the driver
    ("/events", {"after": 2**70}, 422),
    ("/events", {"after": 2**63 - 1}, 200),  # the largest position is a valid (empty) cursor
    ("/history", {"before": 2**63}, 422),
    ("/history", {"before": 2**63 - 1}, 200),
    ("/timeline", {"since": "2020-01-01T00:00:00", "until": "2020-01-02T00:00:00Z"}, 200),  # naive + aware
    ("/timeline", {"since": "2020-01-01T00:00:00+01:00"}, 200),
    ("/timeline", {"until": "0001-01-01T00:00:00+14:00"}, 400),  # before year 1 once in UTC
    ("/timeline", {"since": "9999-12-31T23:59:59-14:00"}, 400),  # after year 9999 once in UTC
]


@pytest.mark.parametrize(("path", "query", "code"), EDGE_INPUTS)
def test_edge_inputs_get_a_clear_answer_never_a_500(
    service: Service, path: str, query: dict[str, Any], code: int
) -> None:
    response = service.get(path, params=query)
    assert response.status_code == code, response.text
    if path == "/events" and code == 200:
        assert response.json()["events"] == []
    if path == "/timeline" and code == 200:
        for bound in ("since", "until"):
            if response.json()[bound] is not None:
                assert datetime.fromisoformat(response.json()[bound]).utcoffset() == timedelta(0)


@pytest.mark.parametrize("path", ["/reload", "/rollback"])
def test_an_undecodable_body_is_a_documented_400_and_records_nothing(service: Service, path: str) -> None:
    head_before = head(service)
    response = service.client.post(
        f"/api/v1/config{path}",
        content=b"\xff{",  # not UTF-8: refused with 400 before any validation, not 422
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert set(response.json()) == {"detail", "code"}
    assert response.json()["code"] == "invalid_json"
    documented = service.app.openapi()["paths"][f"/api/v1/config{path}"]["post"]["responses"]["400"]
    assert "ErrorResponse" in str(documented)  # the schema says a 400 may be this error shape
    assert head(service) == head_before


def test_a_symlinked_config_is_read_through_its_link_with_the_log_beside_the_link(tmp_path: Path) -> None:
    # config.yaml -> releases/v1/config.yaml, as a deploy (or a Kubernetes ConfigMap) lays it out. The
    # link is what is read and watched, and the default log sits beside it, so swapping the link to
    # releases/v2 later neither strands the log in releases/v1 nor leaves the reloader on the old file.
    target = tmp_path / "releases" / "v1" / "config.yaml"
    target.parent.mkdir(parents=True)
    write_config(target, variant())
    link = tmp_path / "conf" / "config.yaml"
    link.parent.mkdir()
    link.symlink_to(target)
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(
        app, config_model=AppConfig, config_source=link, admin_token=ADMIN_TOKEN, enable_signal_handler=False
    )
    assert lifecycle.config_source == str(link)
    assert lifecycle.database_url == f"sqlite:///{link.parent / 'confledger.db'}"

    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        newer = tmp_path / "releases" / "v2" / "config.yaml"
        newer.parent.mkdir()
        write_config(newer, variant(database__pool_size=71))
        swap = link.with_name(".config.yaml.new")
        swap.symlink_to(newer)
        os.replace(swap, link)
        result = client.post("/api/v1/config/reload", headers=headers, json={}).json()
        assert result["success"] is True
        assert result["changes_applied"] == ["database.pool_size"]
    assert (link.parent / "confledger.db").exists()
    assert not (target.parent / "confledger.db").exists()


# (method, path, body) of each endpoint that reads or writes the log when called
LOG_BACKED = [
    ("GET", "/events", None),
    ("GET", "/verify", None),
    ("GET", "/timeline", None),
    ("GET", "/versions/{current}", None),  # found in config_versions, then checked against events
    ("GET", f"/operations/{uuid.UUID(int=7)}", None),
    ("POST", "/reload", {}),
    ("POST", "/rollback", {}),
]
# Reads served from the in-memory projections: no database round trip per request, so they keep
# answering (as of the last position this instance folded) while the log is unreachable.
MEMORY_SERVED = ["/current", "/history", "/status", "/stats", "/backups"]


def test_an_unreachable_log_is_a_json_503_with_a_stable_detail(service: Service) -> None:
    current = service.current_full_hash()
    with service.log.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
    try:
        for method, path, body in LOG_BACKED:
            path = path.format(current=current)
            response = service.post(path, json=body) if method == "POST" else service.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["detail"] == "the event log is unavailable; retry later", path
            assert "events" not in response.text  # the driver's message stays in the service's log
            assert service.database_url.split("://")[0] not in response.text
        assert service.get("/readyz", token=None).status_code == 503
        for path in MEMORY_SERVED:
            assert service.get(path).status_code == 200, path
    finally:
        with service.log.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events_away RENAME TO events")
    assert service.get("/history").status_code == 200
    assert reload(service)["success"] is True


def wait_until(what: str, probe: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None or found is False:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def test_file_watching_survives_its_directory_being_deleted_and_recreated(
    tmp_path: Path, sqlite_url: str
) -> None:
    # A deploy that does `rm -rf conf && cp -r release conf`: an inotify watch on the old directory's
    # inode would never report again, while /status kept saying file watching was enabled.
    with serving(tmp_path, sqlite_url) as service:
        assert service.post("/file-watch/enable", params={"poll_interval": 0.5}).status_code == 200
        directory = service.source.parent
        shutil.rmtree(directory)
        directory.mkdir()
        body = variant(database__pool_size=81)
        write_config(service.source, body)

        wait_until(
            "the recreated file's reload",
            lambda: service.current_full_hash() == full_hash_of(body, service.log),
        )
        watched = service.get("/history", params={"trigger": "file_watch"}).json()
        assert watched["total_count"] == 1
        assert watched["operations"][0]["success"] is True

        # ... and the fresh directory is watched from then on.
        newer = variant(database__pool_size=82)
        write_config(service.source, newer)
        wait_until("the next reload", lambda: service.current_full_hash() == full_hash_of(newer, service.log))
        assert service.get("/history", params={"trigger": "file_watch"}).json()["total_count"] == 2


def test_file_watching_outlives_an_unreachable_log_and_retries_the_change(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A file change while the log is unreachable fails that reload; it must not take the service (the
    # watcher's task group, and with it the app's lifespan) down, and the change must not be lost.
    with serving(tmp_path, sqlite_url) as service:
        assert service.post("/file-watch/enable", params={"poll_interval": 0.5}).status_code == 200
        with service.log.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
        body = variant(database__pool_size=91)
        try:
            write_config(service.source, body)
            wait_until(
                "the failed reload to be logged",
                lambda: any("reload after a change" in r.getMessage() for r in caplog.records),
            )
            assert service.get("/healthz", token=None).status_code == 200
        finally:
            with service.log.engine.begin() as connection:
                connection.exec_driver_sql("ALTER TABLE events_away RENAME TO events")

        wait_until(
            "the retried reload", lambda: service.current_full_hash() == full_hash_of(body, service.log)
        )
        assert service.get("/status").json()["file_watching_enabled"] is True
        watched = service.get("/history", params={"trigger": "file_watch"}).json()
        assert [op["status"] for op in watched["operations"]] == ["success"]
