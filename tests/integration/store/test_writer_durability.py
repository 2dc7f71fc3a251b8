"""Appends that need not wait for the disk (``durable=False``): on SQLite the transaction commits at
``synchronous=NORMAL`` and the connection is back at the log's own level for the next transaction,
whether the relaxed one committed or failed; on PostgreSQL, a server that can lose a commit while this
process lives on, every commit stays synchronous. Run against SQLite (a real file) and PostgreSQL (the
``log`` fixture)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from confledger.store import EventLog, NewEvent, SecretCipher
from confledger.store.events import InstanceStarted
from confledger.store.integrity import read_anchor

SQLITE_LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def started(pid: int = 1) -> NewEvent:
    return NewEvent(InstanceStarted(version="0.1.0", host="test-host", pid=pid))


def level(connection: Connection) -> str:
    """How long this connection's commits wait for the disk, as its backend names it."""
    if connection.dialect.name == "sqlite":
        driver: Any = connection.connection.driver_connection
        return SQLITE_LEVELS[driver.execute("PRAGMA synchronous").fetchone()[0]]
    return str(connection.exec_driver_sql("SHOW synchronous_commit").scalar())


def relaxed(log: EventLog) -> str:
    return "NORMAL" if log.dialect == "sqlite" else "on"


def strict(log: EventLog) -> str:
    return "FULL" if log.dialect == "sqlite" else "on"


@pytest.mark.parametrize(
    ("durable", "fails"),
    [
        (False, False),  # relaxed, committed
        (False, True),  # relaxed, rolled back by an error of the body
        (True, False),  # the log's own level throughout
    ],
)
def test_a_transaction_commits_at_its_level_and_the_next_is_back_at_the_logs(
    log: EventLog, durable: bool, fails: bool
) -> None:
    log.append([started()])  # the writer's connection exists, and the log is set up
    seen: list[str] = []
    with (
        pytest.raises(RuntimeError) if fails else contextlib.nullcontext(),
        log._writer.transaction_reading(durable=durable) as (connection, *_),
    ):
        seen.append(level(connection))
        if fails:
            raise RuntimeError("the body failed")
    assert seen == [strict(log) if durable else relaxed(log)]
    with log._writer.transaction_reading() as (connection, *_):
        assert level(connection) == strict(log)
    assert log.head() == 1


def test_a_relaxed_batch_is_in_the_log_like_any_other(log: EventLog) -> None:
    assert log.append([started(1), started(2)], durable=False) == [1, 2]
    assert log.append([started(3)]) == [3]
    assert [event.payload.pid for event in log.read()] == [1, 2, 3]  # type: ignore[attr-defined]
    assert log.verify().ok


def test_a_log_that_never_waits_for_the_disk_is_left_as_configured(tmp_path: Any) -> None:
    with EventLog(f"sqlite:///{tmp_path / 'log.db'}", sqlite_synchronous="NORMAL") as log:
        log.append([started()])
        for durable in (False, True):
            with log._writer.transaction_reading(durable=durable) as (connection, *_):
                assert level(connection) == "NORMAL"


def test_only_a_durable_append_moves_the_anchor_file(tmp_path: Any) -> None:
    """The anchor must never name an event the log lacks: a relaxed commit can be lost with the machine
    while the anchor's own write survives, so only the durable append after it moves the anchor."""
    with EventLog(
        f"sqlite:///{tmp_path / 'log.db'}", cipher=SecretCipher([SecretCipher.generate_key()])
    ) as log:
        log.append([started(1)])
        keys = log.integrity().keys
        assert keys is not None
        anchored = read_anchor(tmp_path / "log.db.anchor", keys)
        assert anchored is not None
        assert anchored.position == 1
        log.append([started(2), started(3)], durable=False)
        still = read_anchor(tmp_path / "log.db.anchor", keys)
        assert still is not None
        assert still.position == 1
        log.append([started(4)])
        moved = read_anchor(tmp_path / "log.db.anchor", keys)
        assert moved is not None
        assert moved.position == 4
