"""SQLite's write-ahead log checkpointed off the appends' path (``store.database.checkpoint_wal``): what is
committed moves into the database file, the log reads and takes appends as before, and a running reloader
does it in its once-a-second task, so no reload's commit is the one that makes SQLite do it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from confledger.api.reloader import ConfigReloader
from confledger.api.settings import Settings
from confledger.store import EventLog, NewEvent, SecretCipher
from confledger.store.database import checkpoint_wal, sqlite_path
from confledger.store.events import InstanceStarted


def started(pid: int) -> NewEvent:
    return NewEvent(InstanceStarted(version="0.1.0", host="test-host", pid=pid))


def test_committed_pages_move_into_the_database_file_and_the_log_carries_on(sqlite_url: str) -> None:
    with EventLog(sqlite_url, instance_id="wal") as log:
        # Few enough appends that SQLite's own checkpoint (at 1,000 pages) never runs.
        for pid in range(30):
            log.append([started(pid)])
        database = sqlite_path(sqlite_url)
        assert database is not None
        before = database.stat().st_size
        checkpoint_wal(log.engine)
        assert database.stat().st_size > before
        log.append([started(30)])
        assert [event.payload.pid for event in log.read(types=[InstanceStarted.event_type])] == list(
            range(31)
        )  # type: ignore[attr-defined]


def test_elsewhere_there_is_nothing_to_do(log: EventLog) -> None:
    log.append([started(1)])
    checkpoint_wal(log.engine)  # PostgreSQL (and SQLite on a file, as above): no error
    with EventLog("sqlite://", instance_id="memory") as in_memory:
        checkpoint_wal(in_memory.engine)


class Level(BaseModel):
    level: int


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_running_reloader_checkpoints_the_wal_by_itself(tmp_path: Path, anyio_backend: str) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps({"level": 0}))
    database = tmp_path / "confledger.db"
    settings = Settings(
        database_url=f"sqlite:///{database}",
        encryption_key=SecretCipher.generate_key(),
        instance_id="wal",
    )
    async with ConfigReloader(config_model=Level, config_source=source, settings=settings) as reloader:
        for level in range(1, 11):
            source.write_text(json.dumps({"level": level}))
            assert (await reloader.reload_config()).success
        before = database.stat().st_size
        with anyio.fail_after(10):
            while database.stat().st_size == before:
                await anyio.sleep(0.1)
