"""File watching under ``serve --workers``, in one process: the workers of one service are reloaders of one
group (``WatchGroup``), and worker 0 watches the file for all of them, whichever worker was asked.

Worker 0 learns of a toggle another worker answered by following the log, up to a follow interval later.
These tests make that interval long (half a second) and change the file at once, inside it.
(The same under real ``serve --workers`` and gunicorn processes: test_serve_workers.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from confledger.api.reloader import ConfigReloader, WatchGroup
from confledger.api.settings import Settings
from confledger.store import EventLog, SecretCipher
from confledger.store.events import OperationStarted, Trigger
from tests.integration.api.test_fleet_reloaders import Small, write

pytestmark = pytest.mark.anyio

KEY = SecretCipher.generate_key()
FOLLOW_INTERVAL = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def worker(database_url: str, source: Path, index: int, since: datetime) -> ConfigReloader:
    settings = Settings(
        database_url=database_url,
        encryption_key=KEY,
        instance_id=f"svc/w{index}",
        follow_poll_interval=FOLLOW_INTERVAL,
        heartbeat_interval=5.0,
    )
    reloader = ConfigReloader(config_model=Small, config_source=source, settings=settings)
    reloader.watch_group = WatchGroup("svc", owner=index == 0, since=since)  # as the lifecycle sets it
    return reloader


@asynccontextmanager
async def workers(
    database_url: str, source: Path, since: datetime, count: int = 2
) -> AsyncIterator[list[ConfigReloader]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(worker(database_url, source, index, since))
            for index in range(count)
        ]


def file_watch_reloads(log: EventLog) -> list[str]:
    """The instance of every reload the file watcher started, in log order."""
    found = []
    for event in log.read(types=[OperationStarted.event_type]):
        payload = event.payload
        assert isinstance(payload, OperationStarted)
        if payload.trigger is Trigger.FILE_WATCH:
            found.append(event.instance_id)
    return found


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_change_made_as_another_worker_turns_watching_on_is_reloaded_by_worker_0(
    tmp_path: Path, database_url: str
) -> None:
    source = write(tmp_path / "config.json", 1)
    async with workers(database_url, source, datetime.now(UTC)) as (w0, w1):
        await w1.enable_file_watching(0.2)
        write(source, 2)  # before worker 0 has followed the toggle, let alone started its watcher
        await eventually(lambda: w0.current is not None and w0.current.config.level == 2)
        await eventually(lambda: w1.current is not None and w1.current.config.level == 2)
        assert file_watch_reloads(w0.log) == ["svc/w0"]


async def test_a_change_made_as_another_worker_turns_watching_off_is_not_reloaded(
    tmp_path: Path, database_url: str
) -> None:
    source = write(tmp_path / "config.json", 1)
    async with workers(database_url, source, datetime.now(UTC)) as (w0, w1):
        await w0.enable_file_watching(0.2)
        await w1.disable_file_watching()
        write(source, 2)  # worker 0's watcher still runs until it follows the toggle
        await anyio.sleep(3 * FOLLOW_INTERVAL)
        assert file_watch_reloads(w0.log) == []
        assert w0.current is not None
        assert w0.current.config.level == 1
        assert not w0.file_watching_enabled
        assert not w1.file_watching_enabled


async def test_worker_0_started_again_keeps_watching_as_this_run_of_the_service_asked(
    tmp_path: Path, database_url: str
) -> None:
    source = write(tmp_path / "config.json", 1)
    since = datetime.now(UTC)
    async with workers(database_url, source, since, count=2) as (_, w1):
        await w1.enable_file_watching(0.2)
        await anyio.sleep(2 * FOLLOW_INTERVAL)
    # The service's worker 0 dies and is started again (same id, same run): the toggle still holds.
    async with workers(database_url, source, since, count=1) as (w0,):
        await eventually(lambda: w0.file_watching_enabled)
        write(source, 3)
        await eventually(lambda: w0.current is not None and w0.current.config.level == 3)
    # The next run of the service (a later start) does not inherit the last run's toggle.
    async with workers(database_url, source, datetime.now(UTC), count=1) as (w0,):
        write(source, 4)
        await anyio.sleep(3 * FOLLOW_INTERVAL)
        assert not w0.file_watching_enabled
        assert w0.current is not None
        assert w0.current.config.level == 3
        assert file_watch_reloads(w0.log) == ["svc/w0"]
