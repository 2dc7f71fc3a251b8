"""The audit views (``operations``, ``config_history``) agree with the API on both backends, read with SQL
as an auditor would, through a plain connection."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from confledger.api.reloader import ConfigReloader
from confledger.store import EventLog
from confledger.store.database import as_utc

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def slow_refusal(config: Any) -> dict[str, list[str]]:
    """A validator that takes its time and then refuses: the operation ends before any callback runs."""
    await anyio.sleep(0.3)
    return {"errors": ["refused after a while"]}


def view_times(log: EventLog, operation_id: str) -> tuple[datetime, datetime]:
    with log.engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT started_at, completed_at FROM operations WHERE operation_id = :id"),
            {"id": operation_id},
        ).one()
    return tuple(as_utc(_as_time(value)) for value in row)  # type: ignore[return-value]


def _as_time(value: Any) -> datetime:
    # SQLite hands a view's column back as the text it holds; PostgreSQL as a time.
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def test_started_at_is_when_the_operation_was_asked_for_as_the_api_says(
    log: EventLog, tmp_path: Path
) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps({"level": 1}), encoding="utf-8")
    reloader = ConfigReloader(log, validators=[slow_refusal])
    await reloader.start()
    try:
        refused = await reloader.reload_config(config_source=source)
    finally:
        await reloader.stop()
    assert not refused.success
    assert refused.started_at is not None
    started, completed = view_times(log, str(refused.operation_id))
    # A refused config ends in the commit that records its start: the view used to give that commit's
    # time for both.
    assert (completed - started).total_seconds() >= 0.25
    assert started == refused.started_at.astimezone(UTC)
