"""``api.lifecycle``: what the FastAPI integration owns in the process (the SIGHUP handler), for apps
that embed it, started through their real lifespans on a real SQLite log."""

from __future__ import annotations

import gc
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI

from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.examples.app_config import AppConfig
from tests.integration.api.service_harness import ADMIN_TOKEN, EXAMPLE_CONFIG, clear_confledger_environment

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX-only"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@asynccontextmanager
async def serving(directory: Path) -> AsyncIterator[ConfigLifecycle]:
    directory.mkdir()
    shutil.copy(EXAMPLE_CONFIG, directory / "config.yaml")
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=AppConfig,
        config_source=directory / "config.yaml",
        admin_token=ADMIN_TOKEN,
        enable_signal_handler=True,
    )
    async with app.router.lifespan_context(app):
        yield lifecycle


def signalled(lifecycle: ConfigLifecycle) -> int:
    assert lifecycle.reloader is not None
    return len(lifecycle.reloader.get_reload_history(limit=100, trigger="signal"))


async def sighup_reaches(*lifecycles: ConfigLifecycle) -> None:
    assert all(lifecycle.signal_handler_enabled for lifecycle in lifecycles)  # else SIGHUP ends the run
    before = [signalled(lifecycle) for lifecycle in lifecycles]
    os.kill(os.getpid(), signal.SIGHUP)
    with anyio.fail_after(10):
        while [signalled(lifecycle) for lifecycle in lifecycles] != [count + 1 for count in before]:
            await anyio.sleep(0.02)


async def test_sighup_reloads_every_running_app_and_outlives_the_one_that_stops(tmp_path: Path) -> None:
    # A loop keeps one handler per signal: the second app's replaced the first's, and its removal at
    # stop left the first app with none, so SIGHUP (systemctl reload) reloaded nothing from then on.
    previous = signal.getsignal(signal.SIGHUP)
    async with serving(tmp_path / "a") as first:
        async with serving(tmp_path / "b") as second:
            await sighup_reaches(first, second)
        await sighup_reaches(first)
    assert signal.getsignal(signal.SIGHUP) == previous


async def test_an_app_stopping_leaves_another_running_app_frozen(tmp_path: Path) -> None:
    # gc.freeze is process-wide: the first app to stop unfroze the other's start-up objects too.
    async with serving(tmp_path / "a"):
        async with serving(tmp_path / "b"):
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


async def test_the_source_and_model_come_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The seed's set-up, `setup_configuration_lifecycle(app)`, configured by CONFLEDGER_* as serve is:
    # the source and the model were not taken from them, and the service started with no config.
    shutil.copy(EXAMPLE_CONFIG, tmp_path / "config.yaml")
    monkeypatch.setenv("CONFLEDGER_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("CONFLEDGER_MODEL", "confledger.examples.app_config:AppConfig")
    monkeypatch.setenv("CONFLEDGER_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("CONFLEDGER_SIGNAL_HANDLER", "false")
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(app)
    async with app.router.lifespan_context(app):
        reloader = lifecycle.reloader
        assert reloader is not None
        assert isinstance(reloader.get_config(), AppConfig)
        assert reloader.get_config().database.pool_size == 20
        operation = await reloader.reload_config(force=True)
        assert operation.success, operation.error_message
    assert (tmp_path / "confledger.db").is_file()  # the log beside the config, as serve keeps it
