"""The append path's transaction (``LogWriter.transaction``) when something fails inside it: driver errors
come out as ``ConfledgerError``s, anything else as itself, nothing of the batch is written, and the
writer's lock is free for the next append. Run against SQLite and PostgreSQL (the ``log`` fixture)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from confledger.store import ConfledgerError, EventLog, NewEvent, StoreUnavailable
from confledger.store import log as event_log
from confledger.store.events import ConfigApplied, InstanceStarted


def started(pid: int = 1) -> NewEvent:
    return NewEvent(InstanceStarted(version="0.1.0", host="test-host", pid=pid))


def driver_error(log: EventLog) -> Exception:
    """An error as the backend's driver raises it for a database that went away mid-transaction."""
    if log.dialect == "sqlite":
        return sqlite3.OperationalError("disk I/O error")
    return psycopg.OperationalError("server closed the connection unexpectedly")


def failing(error: BaseException) -> Any:
    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise error

    return fail


def assert_nothing_written_and_writer_free(log: EventLog, head: int) -> None:
    assert not log._writer._lock.locked()
    assert log.head() == head
    assert log.append([started(99)]) == [head + 1]
    assert log.verify().ok


@contextlib.contextmanager
def commits_failing(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every commit fails while inside, as the database would fail it."""
    if log.dialect == "sqlite":
        with monkeypatch.context() as patched:
            patched.setattr(log._writer, "commit", failing(driver_error(log)))
            yield
        return
    # On PostgreSQL an append's COMMIT travels in one pipeline with its INSERTs: the server itself is
    # made to refuse it, by a constraint trigger that runs at commit.
    with log.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
        )
        connection.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
        )
    try:
        yield
    finally:
        with log.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER refuse_at_commit ON events")
            connection.exec_driver_sql("DROP FUNCTION refuse_at_commit()")


def test_a_failed_commit_is_rolled_back_and_translated(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append([started()])
    prepared = log.prepare_config({"v": 1})
    with commits_failing(log, monkeypatch), pytest.raises(StoreUnavailable) as caught:
        log.append(
            [NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None)), started(3)], configs=[prepared]
        )
    assert isinstance(caught.value.__cause__, sqlite3.Error | psycopg.Error)
    assert not log.has_config(prepared.hash)
    assert_nothing_written_and_writer_free(log, head=1)


def _messages_sent_by_an_append(log: EventLog, tmp_path: Path) -> list[str]:
    """The protocol messages the writer's connection sends for an append of two events and a new config
    (from libpq's trace: one line per message, "F" for those sent); the append is checked as written."""
    log.append([started()])  # the writer's connection is kept from here on
    kept = log._writer._kept
    assert kept is not None
    pgconn = kept.connection.driver_connection.pgconn  # type: ignore[union-attr]
    prepared = log.prepare_config({"v": 2})
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as sink:
        pgconn.trace(sink.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            log.append(
                [NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None)), started(2)],
                configs=[prepared],
            )
        finally:
            pgconn.untrace()
    assert log.has_config(prepared.hash)
    assert log.head() == 3
    assert log.verify().ok
    return [line.split("\t")[2] for line in trace.read_text().splitlines() if line.startswith("F\t")]


def test_an_append_on_postgresql_is_two_round_trips(log: EventLog, tmp_path: Path) -> None:
    """BEGIN with the lock and the head in one; the events, the config and the COMMIT in the other."""
    if log.dialect != "postgresql":
        pytest.skip("SQLite has no round trips")
    sent = _messages_sent_by_an_append(log, tmp_path)
    # Each round trip ends with a Query (simple protocol) or a Sync (extended protocol, a pipeline's end).
    assert sent.count("Query") + sent.count("Sync") == 2, sent


def test_an_append_without_pipelines_commits_on_its_own(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg's C build on a libpq older than 14: the same transaction, its statements and its COMMIT
    each on their own."""
    if log.dialect != "postgresql":
        pytest.skip("SQLite has no round trips")
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda _cls: False))
    sent = _messages_sent_by_an_append(log, tmp_path)
    assert sent.count("Query") == 2, sent  # the BEGIN with the lock and the head, and the COMMIT


def test_a_driver_error_inside_the_transaction_is_rolled_back_and_translated(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append([started()])
    # The events are inserted by then; storing the config fails.
    monkeypatch.setattr(event_log, "store_config", failing(driver_error(log)))
    prepared = log.prepare_config({"v": 1})
    with pytest.raises(StoreUnavailable):
        log.append([NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None))], configs=[prepared])
    monkeypatch.undo()
    assert not log.has_config(prepared.hash)
    assert_nothing_written_and_writer_free(log, head=1)


@pytest.mark.parametrize(
    "error", [ValueError("not the driver's"), KeyboardInterrupt()], ids=["error", "interrupt"]
)
def test_any_other_exception_inside_the_transaction_comes_out_as_itself(
    log: EventLog, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    log.append([started()])
    monkeypatch.setattr(event_log, "store_config", failing(error))
    prepared = log.prepare_config({"v": 1})
    with pytest.raises(type(error)) as caught:
        log.append([NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None))], configs=[prepared])
    assert caught.value is error
    assert not isinstance(caught.value, ConfledgerError)
    monkeypatch.undo()
    assert_nothing_written_and_writer_free(log, head=1)


def test_a_failed_begin_is_translated_and_frees_the_writer(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append([started()])
    monkeypatch.setattr(log._writer, "_begin", failing(driver_error(log)))
    with pytest.raises(StoreUnavailable):
        log.append([started(2)])
    monkeypatch.undo()
    assert_nothing_written_and_writer_free(log, head=1)


def test_a_begin_failing_otherwise_comes_out_as_itself(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append([started()])
    error = RuntimeError("not the driver's")
    monkeypatch.setattr(log._writer, "_begin", failing(error))
    with pytest.raises(RuntimeError) as caught:
        log.append([started(2)])
    assert caught.value is error
    monkeypatch.undo()
    assert_nothing_written_and_writer_free(log, head=1)


@pytest.mark.parametrize("after_an_append", [False, True])
def test_every_write_transaction_holds_the_lock_and_rolls_back_whole(
    log: EventLog, after_an_append: bool
) -> None:
    # On PostgreSQL the kept writer connection runs in autocommit between transactions (an append sends
    # its own BEGIN with the lock and the head): a transaction without a head read, such as put_config's,
    # must still be one transaction under the lock, not statements committed one by one.
    if after_an_append:
        log.append([started()])
    head = log.head()
    held: list[int] = []

    def write_then_fail() -> None:
        with log._writer.transaction() as connection:
            event_log.store_config(
                connection,
                log.prepare_config({"level": 1}),
                first_position=None,
                created_at=datetime.now(UTC),
                writes=log._config_writes,
            )
            if log.dialect == "postgresql":
                held.append(
                    connection.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    ).scalar()
                )
            raise RuntimeError("after the insert, before the commit")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert held == ([1] if log.dialect == "postgresql" else [])
    assert log.config_count() == 0
    assert_nothing_written_and_writer_free(log, head)
