"""Reads over HTTP are served from memory: no worker-thread hop, no database round trip per request.

The same real app as ``test_http_api.py`` (``serving()``: a real log, Starlette's TestClient). What a
read shows is what this instance has folded: its own appends at once, another instance's once this one
next appends. History pages beyond the in-memory window still read the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi import FastAPI

from confledger.api.deps import CurrentConfigDep
from confledger.api.routes import operations
from tests.integration.api.service_harness import (
    Service,
    clear_confledger_environment,
    full_hash_of,
    serving,
    variant,
    write_config,
)

# Every read the brief of issue 12 names, and a user's own route reading the config per request.
MEMORY_READS = [
    "/current",
    "/status",
    "/stats",
    "/history",
    "/backups",
    "/app-route",
]


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[Service]:
    with serving(tmp_path, database_url, history_window=3) as running:
        add_app_route(running.app)
        yield running


def add_app_route(app: FastAPI) -> None:
    @app.get("/app-route")
    async def app_route(config: CurrentConfigDep) -> dict[str, Any]:
        return {"pool_size": config.database.pool_size}


def get(service: Service, path: str, **params: Any) -> Any:
    response = (
        service.client.get(path, params=params) if path == "/app-route" else service.get(path, params=params)
    )
    assert response.status_code == 200, (path, response.text)
    return response.json()


def apply(service: Service, **changes: Any) -> str:
    body = variant(**changes)
    write_config(service.source, body)
    result = service.post("/reload", json={})
    assert result.status_code == 200, result.text
    assert result.json()["success"], result.text
    return full_hash_of(body, service.log)


@pytest.fixture
def worker_thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of each function sent to a worker thread through anyio (as FastAPI and Starlette do),
    leaving out the reloader's own background tasks (the follower's doorbell, polls and heartbeats, and
    the checkpoint saver's look once a second run whatever a request does)."""
    hops: list[str] = []
    original: Callable[..., Any] = anyio.to_thread.run_sync

    async def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        task = anyio.get_current_task().name
        background = ("ConfigReloader._follow", "LogFollower.", "ConfigReloader._save_checkpoints")
        if not any(part in task for part in background):
            hops.append(getattr(function, "__name__", repr(function)))
        return await original(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops


@pytest.mark.parametrize("path", MEMORY_READS)
def test_a_read_stays_on_the_event_loop(service: Service, worker_thread_hops: list[str], path: str) -> None:
    apply(service, database__pool_size=31)
    worker_thread_hops.clear()

    get(service, path)

    assert worker_thread_hops == []


def test_reads_keep_answering_from_memory_while_the_log_is_unreachable_but_deep_history_does_not(
    service: Service,
) -> None:
    for pool_size in (41, 42, 43, 44):
        apply(service, database__pool_size=pool_size)
    window = get(service, "/history", limit=3)["operations"]
    deep = get(service, "/history", limit=5)["operations"]  # two beyond the window of three
    with service.log.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
    try:
        for path in MEMORY_READS:
            get(service, path, **({"limit": 3} if path == "/history" else {}))
        assert get(service, "/history", limit=3)["operations"] == window
        refused = service.get("/history", params={"limit": 5})
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "store_unavailable"
    finally:
        with service.log.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events_away RENAME TO events")
    assert get(service, "/history", limit=5)["operations"] == deep


def test_current_follows_every_applied_config(service: Service) -> None:
    first = get(service, "/current")
    second_hash = apply(service, database__pool_size=51)
    second = get(service, "/current")
    assert second["full_hash"] == second_hash != first["full_hash"]
    assert second["config"]["database"]["pool_size"] == 51
    assert second["config"]["embedding"]["openai_api_key"] == "**********"
    assert get(service, "/app-route") == {"pool_size": 51}

    back = service.post("/rollback", json={"target_hash": first["full_hash"]})
    assert back.status_code == 200, back.text
    assert get(service, "/current") == {**first, "applied_at": get(service, "/current")["applied_at"]}
    assert get(service, "/app-route") == {"pool_size": first["config"]["database"]["pool_size"]}


def test_two_apps_in_one_process_each_show_their_own_current(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    with (
        serving(tmp_path / "one", f"sqlite:///{tmp_path / 'one.db'}") as one,
        serving(tmp_path / "two", f"sqlite:///{tmp_path / 'two.db'}") as two,
    ):
        one_hash = apply(one, database__pool_size=52)
        two_hash = apply(two, database__pool_size=53)
        for _ in range(2):
            assert get(one, "/current")["full_hash"] == one_hash
            assert get(two, "/current")["full_hash"] == two_hash


def test_status_stats_and_history_follow_what_another_instance_does(
    service: Service, tmp_path: Path, database_url: str
) -> None:
    key = service.lifecycle.encryption_key  # every instance sharing a log shares its key
    total = get(service, "/stats")["total_operations"]
    with serving(tmp_path, database_url, instance_id="other-instance", encryption_key=key) as other:
        other_hash = apply(other, database__pool_size=61)
        other_operation = get(other, "/history", limit=1)["operations"][0]["operation_id"]

        # This instance's follower applies the other's change and folds its events, with no request
        # of this instance's own to prompt it.
        deadline = time.monotonic() + 10
        while get(service, "/status")["current_config_hash"] != other_hash[:16]:
            assert time.monotonic() < deadline, "the other instance's change was never followed"
            time.sleep(0.02)
        operations = [op["operation_id"] for op in get(service, "/history")["operations"]]
        assert other_operation in operations
        assert get(service, "/stats")["total_operations"] > total
        assert get(service, "/current")["full_hash"] == other_hash


def test_status_shows_the_same_statistics_as_stats(service: Service) -> None:
    apply(service, database__pool_size=71)
    write_config(service.source, variant(database__pool_size=0))  # refused by the model
    refused = service.post("/reload", json={})
    assert refused.status_code == 200, refused.text
    assert refused.json()["success"] is False

    shown = get(service, "/status")["reload_statistics"]
    stats = get(service, "/stats")

    assert shown == {key: stats[key] for key in ("total_operations", "success_rate", "average_duration_ms")}
    assert 0 < shown["success_rate"] < 1


def test_a_history_page_is_rendered_once_until_the_projections_move(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(service, database__pool_size=81)
    built: list[int] = []
    original = operations.history_json

    def counting(found: Any, **page: Any) -> Any:
        built.append(1)
        return original(found, **page)

    monkeypatch.setattr(operations, "history_json", counting)
    first = service.get("/history", params={"limit": 2})
    again = service.get("/history", params={"limit": 2})
    assert again.content == first.content
    assert len(built) == 1
    # Another query is another page: a filter, or a page of the window further back.
    failed_only = get(service, "/history", limit=2, status="failed")
    assert failed_only["operations"] == []
    assert len(built) == 2

    # A reload moves the projections: the next read shows it, and counts it.
    write_config(service.source, variant(database__pool_size=0))  # refused by the model: a failed operation
    refused = service.post("/reload", json={})
    assert refused.json()["success"] is False
    after = get(service, "/history", limit=2)
    assert after["operations"][0]["operation_id"] == refused.json()["operation_id"]
    assert after["total_count"] == first.json()["total_count"] + 1
    assert get(service, "/history", limit=2, status="failed")["total_count"] == 1


@pytest.mark.parametrize("path", ["/current", "/history"])
def test_a_read_answers_304_while_what_it_shows_is_unchanged(service: Service, path: str) -> None:
    apply(service, database__pool_size=91)
    first = service.get(path)
    tag = first.headers["ETag"]

    unchanged = service.get(path, headers={"If-None-Match": tag})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["ETag"] == tag

    apply(service, database__pool_size=92)
    changed = service.get(path, headers={"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != tag
    assert changed.json() != first.json()


def test_each_history_page_has_its_own_tag(service: Service) -> None:
    apply(service, database__pool_size=93)
    tags = {
        service.get("/history", params=params).headers["ETag"]
        for params in ({}, {"limit": 1}, {"status": "failed"}, {"trigger": "api"})
    }
    assert len(tags) == 4


@pytest.mark.parametrize(
    "if_none_match",
    [
        # bytes no entity tag is made of, as a client may send them: compared, never matched, never a 5xx
        "\x80".encode("latin-1"),
        '"é", W/'.encode(),
        b"*,",
    ],
)
def test_an_if_none_match_of_any_bytes_is_answered(service: Service, if_none_match: bytes) -> None:
    answer = service.get("/current", headers={"If-None-Match": if_none_match})
    assert answer.status_code == 200
    assert answer.headers["ETag"]


@pytest.mark.parametrize("path", ["/current", "/history"])
def test_a_conditional_read_without_a_token_learns_nothing(service: Service, path: str) -> None:
    tag = service.get(path).headers["ETag"]
    # Without a token, or with a wrong one, the tag neither gets a 304 nor is sent back.
    for token in (None, "not-the-token-0123456789abcdefghij"):
        refused = service.get(path, token=token, headers={"If-None-Match": tag})
        assert refused.status_code == 401
        assert "etag" not in refused.headers


def test_two_instances_showing_the_same_config_give_it_the_same_tag(
    service: Service, tmp_path: Path, database_url: str
) -> None:
    key = service.lifecycle.encryption_key
    with serving(tmp_path, database_url, instance_id="other-instance", encryption_key=key) as other:
        other_hash = apply(other, database__pool_size=94)
        deadline = time.monotonic() + 10
        while get(service, "/current")["full_hash"] != other_hash:
            assert time.monotonic() < deadline, "the other instance's change was never followed"
            time.sleep(0.02)
        mine, theirs = service.get("/current"), other.get("/current")
        assert mine.content == theirs.content
        assert mine.headers["ETag"] == theirs.headers["ETag"]
        # So a poller sent to either by a load balancer keeps its 304.
        assert service.get("/current", headers={"If-None-Match": theirs.headers["ETag"]}).status_code == 304
