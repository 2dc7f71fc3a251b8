"""The fleet's shared pieces on both backends: the operation lock, heartbeats, and the doorbell."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from confledger.store import EventLog
from confledger.store.errors import FleetLockBusy, StoreUnavailable
from confledger.store.events import ConfigApplied, InstanceStopped, NewEvent
from confledger.store.fleet import (
    DOORBELL_CHANNEL_SQL,
    Doorbell,
    Heartbeat,
    fleet_lock_for,
    read_heartbeats,
    record_heartbeat,
)

HOLDER = "0190e0e0-0000-7000-8000-00000000000a@host-a:1"


def assert_held_by(log: EventLog, holder: str) -> FleetLockBusy:
    """Another lock on the log is refused within its wait, naming ``holder``."""
    with pytest.raises(FleetLockBusy) as busy:
        fleet_lock_for(log.engine).acquire("second@host-b:2", 0.1)
    assert busy.value.holder == holder
    return busy.value


def test_a_held_lock_answers_busy_naming_its_holder_then_passes_when_released(log: EventLog) -> None:
    lock = fleet_lock_for(log.engine)
    lease = lock.acquire(HOLDER, 1.0)
    try:
        assert assert_held_by(log, HOLDER).code == "fleet_lock_busy"
    finally:
        lease.release()
    fleet_lock_for(log.engine).acquire("second@host-b:2", 0.1).release()


def test_a_waiter_gets_the_lock_as_soon_as_the_holder_lets_go(log: EventLog) -> None:
    lease = fleet_lock_for(log.engine).acquire(HOLDER, 1.0)
    releaser = threading.Timer(0.2, lease.release)
    releaser.start()
    started = time.monotonic()
    fleet_lock_for(log.engine).acquire("second@host-b:2", 5.0).release()
    releaser.join()
    # Well within the budget: granted on release, not at its end.
    assert time.monotonic() - started < 4.0


def test_threads_sharing_one_lock_take_turns(log: EventLog) -> None:
    # One lock object, as a runner keeps it: a second thread waits for the first, whatever the backend
    # (one open lock file, or one lock connection, is shared by every thread that uses it).
    lock = fleet_lock_for(log.engine)
    lease = lock.acquire(HOLDER, 1.0)
    refused: list[FleetLockBusy] = []

    def second() -> None:
        try:
            lock.acquire("second@host-a:1", 0.2).release()
        except FleetLockBusy as busy:
            refused.append(busy)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join()
    lease.release()
    assert [busy.holder for busy in refused] == [HOLDER]
    lock.acquire("third@host-a:1", 0.2).release()
    lock.close()


def test_a_holder_is_named_as_it_wrote_itself_after_a_longer_name(log: EventLog) -> None:
    lock = fleet_lock_for(log.engine)
    lock.acquire("a-much-longer-holder-name@" + "x" * 100, 1.0).release()
    lease = lock.acquire(HOLDER, 1.0)
    try:
        assert_held_by(log, HOLDER)
    finally:
        lease.release()
        lock.close()


def test_a_lock_file_removed_meanwhile_is_given_up_for_the_new_one(log: EventLog) -> None:
    # A lock keeps its file open between operations. Once the file is removed, another instance locks
    # the new one at the path: the kept file must not let this one in beside it.
    if log.dialect != "sqlite":
        pytest.skip("the lock file is SQLite's")
    kept = fleet_lock_for(log.engine)
    kept.acquire("first@host-a:1", 1.0).release()
    path = kept.path  # type: ignore[attr-defined]
    path.unlink()
    other = fleet_lock_for(log.engine)
    lease = other.acquire(HOLDER, 1.0)
    try:
        with pytest.raises(FleetLockBusy) as busy:
            kept.acquire("first@host-a:1", 0.2)
        assert busy.value.holder == HOLDER
    finally:
        lease.release()
        other.close()
    kept.acquire("first@host-a:1", 1.0).release()  # and takes the new file once it is free
    kept.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_does_not_share_its_parents_lock_file(log: EventLog) -> None:
    # The child inherits the parent's lock object, open file and all: it must still wait its turn.
    # (SQLite only: a child must not touch its parent's PostgreSQL connection at all.)
    if log.dialect != "sqlite":
        pytest.skip("the lock file is SQLite's")
    lock = fleet_lock_for(log.engine)
    lease = lock.acquire(HOLDER, 1.0)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports by its exit code
            try:
                lock.acquire("child@host-a:2", 0.2).release()
                os._exit(1)  # granted while the parent holds it
            except FleetLockBusy:
                os._exit(0)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        lease.release()
        lock.close()


def test_a_killed_holder_never_blocks_the_fleet(log: EventLog, database_url: str) -> None:
    # Another process takes the lock and is killed with it held: its session (PostgreSQL) or file
    # descriptor (SQLite) dies with it, and so does the lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from confledger.store import EventLog
                from confledger.store.fleet import fleet_lock_for
                log = EventLog({database_url!r}, instance_id="doomed")
                fleet_lock_for(log.engine).acquire("doomed@elsewhere", 5.0)
                print("held", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(FleetLockBusy):
            fleet_lock_for(log.engine).acquire("second@host-b:2", 0.1)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    fleet_lock_for(log.engine).acquire("second@host-b:2", 5.0).release()


def test_heartbeats_are_rewritten_in_place(log: EventLog) -> None:
    first = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    beat = Heartbeat("a", "host", 1, "0.1", first, first, 3, 30.0)
    record_heartbeat(log.engine, beat)
    later = first + timedelta(seconds=30)
    record_heartbeat(log.engine, Heartbeat("a", "host", 1, "0.1", first, later, 9, 30.0))
    record_heartbeat(log.engine, Heartbeat("b", "host", 2, "0.1", first, first, 0, 30.0))
    beats = read_heartbeats(log.engine)
    assert sorted(beats) == ["a", "b"]
    assert beats["a"].last_seen == later
    assert beats["a"].followed_position == 9
    # Not events: the log is unchanged by a heartbeat.
    assert log.head() == 0


def ring(log: EventLog, payload: str) -> None:
    """A notification on the log's channel, as a trigger of an older revision sent it."""
    with log.engine.begin() as connection:
        connection.execute(
            sa.text(f"SELECT pg_notify({DOORBELL_CHANNEL_SQL}, :payload)"), {"payload": payload}
        )


def test_the_doorbell_rings_for_an_append_that_applies_a_config_and_for_nothing_else(
    pg_schema_url: str,
) -> None:
    with EventLog(pg_schema_url, instance_id="writer") as log:
        doorbell = Doorbell(log.engine)
        doorbell.open()
        try:
            assert doorbell.wait(0.05) is None
            # Other appends (answers, failed operations) change no config: no ring at all.
            threading.Timer(0.1, lambda: log.append([NewEvent(InstanceStopped())])).start()
            assert doorbell.wait(0.5) is None
            # A database still at 0003_fleet rang for those too: such a ring does not end the wait.
            threading.Timer(0.1, lambda: ring(log, "")).start()
            assert doorbell.wait(0.5) == "other"
            # An applied config ends it at once, even behind other rings: well before this long wait.
            applied = NewEvent(ConfigApplied(hash="a" * 64, previous_hash=None))
            threading.Timer(0.1, lambda: log.append([NewEvent(InstanceStopped())])).start()
            threading.Timer(0.2, lambda: log.append([NewEvent(InstanceStopped()), applied])).start()
            assert doorbell.wait(60.0) == "applied"
        finally:
            doorbell.close()


def test_the_doorbell_does_not_ring_for_a_config_its_own_instance_applied(pg_schema_url: str) -> None:
    # Its own reloads hold nothing for an instance to follow: each woke it for a read of the log, and
    # the follow turn after it held the apply lock that the instance's next operation waited for.
    with (
        EventLog(pg_schema_url, instance_id="own") as log,
        EventLog(pg_schema_url, instance_id="other") as other,
    ):
        assert log.writer_session() is None  # no append yet: no connection that commits them
        log.append([NewEvent(InstanceStopped())])
        session = log.writer_session()
        assert isinstance(session, int)
        assert session != other.writer_session()
        doorbell = Doorbell(log.engine, own_session=log.writer_session)
        doorbell.open()
        try:
            threading.Timer(
                0.1, lambda: log.append([NewEvent(ConfigApplied(hash="c" * 64, previous_hash=None))])
            ).start()
            assert doorbell.wait(0.5) is None
            # Another instance's ring behind one of its own is still heard, at once.
            log.append([NewEvent(ConfigApplied(hash="d" * 64, previous_hash="c" * 64))])
            threading.Timer(
                0.1, lambda: other.append([NewEvent(ConfigApplied(hash="e" * 64, previous_hash="d" * 64))])
            ).start()
            assert doorbell.wait(60.0) == "applied"
        finally:
            doorbell.close()
        # A doorbell that knows no own session hears every ring, as before.
        everyone = Doorbell(log.engine)
        everyone.open()
        try:
            log.append([NewEvent(ConfigApplied(hash="f" * 64, previous_hash="e" * 64))])
            assert everyone.wait(60.0) == "applied"
        finally:
            everyone.close()


def test_an_applied_config_rung_while_nobody_listened_is_seen_behind_later_rings(pg_schema_url: str) -> None:
    # A follower busy with one change misses nothing of the next: the rings wait in the socket, and
    # the one read that takes them all finds the "applied" even when other rings came after it.
    with EventLog(pg_schema_url, instance_id="writer") as log:
        doorbell = Doorbell(log.engine)
        doorbell.open()
        try:
            log.append([NewEvent(ConfigApplied(hash="b" * 64, previous_hash=None))])
            ring(log, "")
            ring(log, "")
            time.sleep(0.2)  # lets all three reach the listening connection before it reads once
            assert doorbell.wait(5.0) == "applied"
            assert doorbell.wait(0.05) is None
        finally:
            doorbell.close()


def test_a_doorbell_whose_session_the_server_ended_fails_its_wait_and_closes_without_an_error_logged(
    pg_schema_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As on every PostgreSQL restart: the follower reports the failed wait and opens a new doorbell.
    # Closing the dead one tried to roll it back first, and SQLAlchemy's pool logged that at ERROR
    # with a traceback, in every instance of the fleet, for a restart they all came through.
    caplog.set_level(logging.WARNING)
    with EventLog(pg_schema_url, instance_id="listener") as log:
        doorbell = Doorbell(log.engine)
        doorbell.open()
        with log.engine.connect() as admin:
            ended = admin.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND application_name = :name"
                ),
                {"name": "confledger listener"},
            ).scalar()
        assert ended == 1
        with pytest.raises(StoreUnavailable):
            doorbell.wait(5.0)
        doorbell.close()
        doorbell.open()
        try:
            assert doorbell.wait(0.05) is None
        finally:
            doorbell.close()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_the_lock_survives_its_kept_session_being_terminated(pg_schema_url: str) -> None:
    # The lock keeps one session between operations; a server restart or an operator's
    # pg_terminate_backend kills it, and the next operation must take the lock on a new one.
    with EventLog(pg_schema_url, instance_id="a") as log:
        lock = fleet_lock_for(log.engine)
        lease = lock.acquire(HOLDER, 1.0)
        with log.engine.connect() as admin:
            # The session that holds the fleet's advisory lock is the one the lock keeps.
            pid = admin.exec_driver_sql(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 6514284 "
                "AND objid::bigint = (hashtext(current_schema())::bigint & 4294967295)"
            ).scalar()
            lease.release()
            assert admin.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid}).scalar()
            admin.commit()
        lease = lock.acquire(HOLDER, 1.0)
        try:
            assert_held_by(log, HOLDER)
        finally:
            lease.release()
        lock.close()
