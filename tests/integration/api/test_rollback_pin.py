"""A rollback is not silently undone (issue 15, item 5), on both backends.

After a rollback away from H the file still holds H. A real SIGHUP (the lifecycle's own handler, in this
process), a CLI reload or an API reload must not apply H again without ``force``: each is a recorded
operation refused with ``rolled_back_hash``, and ``GET /status`` / ``confledger status`` say why the
source differs from the applied config. ``force`` re-applies H; new file content applies; the pin is a
fold of the log, so it holds after a restart.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from fastapi import FastAPI

from confledger.api.inspect import LogInspector
from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import SecretCipher, Trigger
from confledger.store.events import ConfigRolledBack, OperationCompleted
from confledger.store.outcome import ReloadOperation
from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    EXAMPLE_CONFIG,
    PREFIX,
    clear_confledger_environment,
    full_hash_of,
    is_postgres,
    variant,
    write_config,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX-only"),
]

T = TypeVar("T")
REFUSED = ["operation.started", "config.loaded", "validation.passed", "operation.completed"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture
def key() -> str:
    return SecretCipher.generate_key()


class Running:
    """One started lifecycle (SIGHUP handler installed) and an HTTP client on its app."""

    def __init__(self, app: FastAPI, lifecycle: ConfigLifecycle, http: httpx.AsyncClient) -> None:
        self.app, self.lifecycle, self.http = app, lifecycle, http

    @property
    def reloader(self) -> ConfigReloader:
        assert self.lifecycle.reloader is not None
        return self.lifecycle.reloader

    async def status(self) -> dict[str, Any]:
        response = await self.http.get(f"{PREFIX}/status")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def reload(self, **body: Any) -> dict[str, Any]:
        response = await self.http.post(f"{PREFIX}/reload", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def signalled(self) -> list[ReloadOperation]:
        return self.reloader.get_reload_history(limit=100, trigger="signal")

    async def sighup(self) -> ReloadOperation:
        """Send this process a real SIGHUP and wait for the reload the handler asks for."""
        assert self.lifecycle.signal_handler_enabled  # otherwise SIGHUP would end the test run
        before = len(self.signalled())
        os.kill(os.getpid(), signal.SIGHUP)

        def newest() -> ReloadOperation | None:
            operations = self.signalled()
            return operations[0] if len(operations) > before else None

        return await wait_for(newest)


async def wait_for(probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    with anyio.fail_after(timeout):
        while (found := probe()) is None:
            await anyio.sleep(0.02)
    return found


@asynccontextmanager
async def running(source: Path, database_url: str, key: str) -> AsyncIterator[Running]:
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=AppConfig,
        config_source=source,
        database_url=database_url,
        validators=VALIDATORS,
        admin_token=ADMIN_TOKEN,
        encryption_key=key if is_postgres(database_url) else None,
        enable_signal_handler=True,
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        lifecycle,
        httpx.AsyncClient(transport=transport, base_url="http://confledger", headers=headers) as http,
    ):
        yield Running(app, lifecycle, http)


def config_file(tmp_path: Path) -> Path:
    source = tmp_path / "conf" / "config.yaml"
    source.parent.mkdir()
    source.write_bytes(EXAMPLE_CONFIG.read_bytes())
    return source


async def apply_then_roll_back(service: Running, source: Path) -> tuple[str, str]:
    """Apply H (the file's new content), then roll back to G (what ran before). Returns (H, G)."""
    rolled_back_to = service.reloader.current_hash
    assert rolled_back_to is not None
    write_config(source, variant(database__pool_size=42))
    applied = await service.reloader.reload_config(Trigger.CLI, actor="cli:ops")
    assert applied.success
    rollback = await service.reloader.rollback_config(actor="token:admin")
    assert rollback.success
    assert service.reloader.current_hash == rolled_back_to
    return full_hash_of(variant(database__pool_size=42), service.reloader.log), rolled_back_to


def assert_refused(service: Running, operation: ReloadOperation, pinned: str) -> None:
    assert not operation.success
    assert operation.reason == "rolled_back_hash"
    assert f"{pinned[:16]} was rolled back at" in operation.message
    assert "by token:admin; change the file or use force" in operation.message
    events = service.reloader.log.read_operation(operation.operation_id)
    assert [e.type for e in events] == REFUSED
    completed = events[-1].payload
    assert isinstance(completed, OperationCompleted)
    assert completed.reason == "rolled_back_hash"


async def test_sighup_cli_and_api_reloads_after_a_rollback_are_refused_and_force_reapplies(
    tmp_path: Path, database_url: str, key: str
) -> None:
    source = config_file(tmp_path)
    async with running(source, database_url, key) as service:
        pinned, kept = await apply_then_roll_back(service, source)

        # The source holds H; status says it differs from the applied config, and why.
        state = (await service.status())["source_state"]
        assert state["hash"] == pinned[:16]
        assert state["differs_from_applied"] is True
        assert state["reason"] == "rolled_back_hash"
        assert state["rolled_back_by"] == "token:admin"

        # logrotate's postrotate: a real SIGHUP through the lifecycle's handler.
        assert_refused(service, await service.sighup(), pinned)
        # the CLI's reload and the API's reload say the same
        assert_refused(service, await service.reloader.reload_config(Trigger.CLI, actor="cli:ops"), pinned)
        answer = await service.reload()
        assert answer["success"] is False
        assert answer["reason"] == "rolled_back_hash"
        assert "change the file or use force" in answer["message"]
        assert service.reloader.current_hash == kept

        # force re-applies H, and with it applied the pin is gone
        forced = await service.reload(force=True)
        assert forced["success"] is True
        assert service.reloader.current_hash == pinned
        state = (await service.status())["source_state"]
        assert state["differs_from_applied"] is False
        assert state["reason"] is None
        assert not service.reloader.runner.pins.pins


async def test_new_content_after_a_rollback_applies_on_sighup(
    tmp_path: Path, database_url: str, key: str
) -> None:
    source = config_file(tmp_path)
    async with running(source, database_url, key) as service:
        pinned, _ = await apply_then_roll_back(service, source)
        fixed = variant(database__pool_size=43)
        write_config(source, fixed)

        result = await service.sighup()

        assert result.success, result
        assert service.reloader.current_hash == full_hash_of(fixed, service.reloader.log)
        assert (await service.status())["source_state"]["differs_from_applied"] is False
        # The pin on H stays: only an apply of H lifts it, so a revert of the file is refused too.
        write_config(source, variant(database__pool_size=42))
        assert_refused(service, await service.sighup(), pinned)


async def test_the_pin_holds_after_a_restart(tmp_path: Path, database_url: str, key: str) -> None:
    source = config_file(tmp_path)
    async with running(source, database_url, key) as service:
        pinned, kept = await apply_then_roll_back(service, source)

    async with running(source, database_url, key) as restarted:
        assert restarted.reloader.current_hash == kept
        state = (await restarted.status())["source_state"]
        assert (state["hash"], state["reason"]) == (pinned[:16], "rolled_back_hash")
        assert_refused(restarted, await restarted.sighup(), pinned)
        assert restarted.reloader.current_hash == kept
        rollbacks = [e for e in restarted.reloader.log.read() if isinstance(e.payload, ConfigRolledBack)]
        assert len(rollbacks) == 1  # nothing was rolled back again: the refusal changed nothing

    # confledger status, reading the log alone, tells the same story.
    with LogInspector.open(database_url) as inspector:
        state = inspector.status()["source_state"]
    assert state["source"] == str(source)
    assert (state["hash"], state["differs_from_applied"], state["reason"]) == (
        pinned[:16],
        True,
        "rolled_back_hash",
    )
    assert state["rolled_back_by"] == "token:admin"
