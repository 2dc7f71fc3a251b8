"""Callbacks after a restart (issue 15, item 6), on both backends.

A service's callback builds state from the config it is handed: on the first start (``old=None``) and on
each change. A restart restores the config from the log; with ``notify_on_start`` (on unless
``CONFLEDGER_NOTIFY_ON_START=false`` or the callback opts out) the callback is handed that config too,
recorded as ``service.notified`` (direction ``start``, outside any operation) without changing the
current config. A callback that refuses it is logged, recorded and shown as drifted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from confledger.api.lifecycle import register_config_callback
from confledger.store import SecretCipher
from confledger.store.events import ServiceNotified
from confledger.store.services import ServiceRegistry
from tests.integration.api.service_harness import clear_confledger_environment, serving, variant, write_config


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


KEY = SecretCipher.generate_key()  # one key across restarts (a PostgreSQL log's key is a setting)


def recorder(calls: list[tuple[Any, Any]], *, refuse_at_start: bool = False) -> Callable[[Any, Any], bool]:
    def callback(old: Any, new: Any) -> bool:
        calls.append((old, new))
        return not (refuse_at_start and old is None)

    return callback


def start_events(events: list[Any]) -> list[ServiceNotified]:
    return [
        e.payload for e in events if isinstance(e.payload, ServiceNotified) and e.payload.direction == "start"
    ]


def test_a_restart_hands_each_callback_the_restored_config(tmp_path: Path, database_url: str) -> None:
    services = ServiceRegistry()
    cache: list[tuple[Any, Any]] = []
    services.register("cache", recorder(cache))
    with serving(tmp_path, database_url, services=services, encryption_key=KEY) as first:
        assert [old for old, _ in cache] == [None]  # the first start: the initial load
        write_config(first.source, variant(database__pool_size=33))
        assert first.post("/reload", json={}).json()["success"] is True
        applied = first.current_full_hash()
        operations = first.get("/history").json()["total_count"]
    cache.clear()

    with serving(tmp_path, database_url, services=services, encryption_key=KEY) as restarted:
        assert restarted.current_full_hash() == applied
        ((old, new),) = cache
        assert old is None
        assert new.database.pool_size == 33
        assert new is restarted.reloader.get_config()  # the restored object itself
        (event,) = start_events(restarted.log.read())
        assert (event.service, event.outcome.value, event.config_hash) == ("cache", "success", applied)
        # no operation: history and the stats' totals are as before, the config unchanged
        assert restarted.get("/history").json()["total_count"] == operations
        assert restarted.get("/status").json()["service_drift"] == {}


def test_a_callback_that_refuses_at_start_is_recorded_and_shown_drifted(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    services = ServiceRegistry()
    with serving(tmp_path, database_url, services=services, encryption_key=KEY):
        # the lifecycle's own function, while a lifecycle runs: registers on its services
        register_config_callback("search", recorder([], refuse_at_start=True), notify_on_start=True)
    assert "search" in services

    with serving(tmp_path, database_url, services=services, encryption_key=KEY) as restarted:
        (event,) = start_events(restarted.log.read())
        assert (event.service, event.outcome.value) == ("search", "failed")
        assert "service search did not accept the restored config" in caplog.text
        status = restarted.get("/status").json()
        assert status["service_drift"] == {"search": ""}  # it runs no config the log knows of
        assert status["current_config_hash"] == restarted.current_full_hash()[:16]  # type: ignore[index]
        # the next change it accepts ends the drift
        write_config(restarted.source, variant(database__pool_size=34))
        assert restarted.post("/reload", json={}).json()["success"] is True
        assert restarted.get("/status").json()["service_drift"] == {}


@pytest.mark.parametrize(
    ("setting", "own", "called"),
    [
        ("false", None, False),  # CONFLEDGER_NOTIFY_ON_START=false
        ("false", True, True),  # a callback that asks for it anyway
        ("true", False, False),  # a callback that opts out
    ],
)
def test_the_setting_and_the_callbacks_own_choice(
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    own: bool | None,
    called: bool,
) -> None:
    with serving(tmp_path, database_url, encryption_key=KEY):
        pass
    monkeypatch.setenv("CONFLEDGER_NOTIFY_ON_START", setting)
    calls: list[tuple[Any, Any]] = []
    services = ServiceRegistry()
    services.register("cache", recorder(calls), notify_on_start=own)
    with serving(tmp_path, database_url, services=services, encryption_key=KEY) as restarted:
        assert len(start_events(restarted.log.read())) == int(called)
    assert len(calls) == int(called)
