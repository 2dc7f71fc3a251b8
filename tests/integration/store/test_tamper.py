"""verify() against someone with DDL rights: the guards are dropped, then rows are edited by hand."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from confledger.store import ChainBroken, Checkpoint, EventLog, NewEvent, VerifyReport
from confledger.store.chain import chain_hash
from confledger.store.events import InstanceStarted
from confledger.store.schema import events

EVENTS_IN_LOG = 6
TAMPERED = 3  # a middle position: neither the first link nor the head


def drop_append_only_guards(log: EventLog) -> None:
    if log.dialect == "sqlite":
        statements = ["DROP TRIGGER events_refuse_update", "DROP TRIGGER events_refuse_delete"]
    else:
        statements = ["DROP TRIGGER events_refuse_change ON events"]
    with log.engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))


@pytest.fixture
def unguarded_log(log: EventLog) -> EventLog:
    """A verified log of six events whose append-only triggers have been dropped."""
    for pid in range(EVENTS_IN_LOG):
        log.append([NewEvent(InstanceStarted(version="0.1.0", host="host", pid=pid))])
    assert log.verify().ok
    drop_append_only_guards(log)
    return log


def test_a_changed_payload_is_reported_at_its_own_position(unguarded_log: EventLog) -> None:
    with unguarded_log.engine.begin() as connection:
        connection.execute(
            events.update()
            .where(events.c.position == TAMPERED)
            .values(payload={"version": "0.1.0", "host": "host", "pid": 666, "current_hash": None})
        )
    report = unguarded_log.verify()
    assert not report.ok
    assert report.first_broken_position == TAMPERED
    assert report.checked == TAMPERED - 1
    assert report.head == EVENTS_IN_LOG
    assert "does not match the event's contents" in (report.reason or "")


def test_a_deleted_row_is_named_as_missing(unguarded_log: EventLog) -> None:
    with unguarded_log.engine.begin() as connection:
        connection.execute(events.delete().where(events.c.position == TAMPERED))
    report = unguarded_log.verify()
    assert not report.ok
    assert report.first_broken_position == TAMPERED
    assert f"event {TAMPERED} is missing" in (report.reason or "")


def test_deleting_the_newest_events_is_caught_by_the_checkpoints(unguarded_log: EventLog) -> None:
    # The chain alone cannot see a cut-off tail; a projection checkpoint remembers how far the log reached.
    unguarded_log.save_checkpoint(Checkpoint("stats", 1, EVENTS_IN_LOG, {}))
    assert unguarded_log.verify().ok
    with unguarded_log.engine.begin() as connection:
        connection.execute(events.delete().where(events.c.position > EVENTS_IN_LOG - 2))
    report = unguarded_log.verify()
    assert not report.ok
    assert report.first_broken_position == EVENTS_IN_LOG - 1
    assert "newest events were deleted" in (report.reason or "")


def test_a_row_rehashed_to_match_its_new_contents_breaks_the_next_link(unguarded_log: EventLog) -> None:
    # The forger edits row 3 and recomputes its hash, so row 3 checks out on its own;
    # row 4 still names the old hash of row 3.
    with unguarded_log.engine.begin() as connection:
        row = connection.execute(sa.select(events).where(events.c.position == TAMPERED)).one()
        forged = {**row._asdict(), "actor": "mallory"}
        connection.execute(
            events.update()
            .where(events.c.position == TAMPERED)
            .values(actor="mallory", hash=chain_hash(forged))
        )
    report = unguarded_log.verify()
    assert not report.ok
    assert report.first_broken_position == TAMPERED + 1
    assert "prev_hash" in (report.reason or "")


def test_a_relinked_row_is_reported_at_its_own_position(unguarded_log: EventLog) -> None:
    # prev_hash and hash changed together on one row: it points at a chain that never existed.
    with unguarded_log.engine.begin() as connection:
        row = connection.execute(sa.select(events).where(events.c.position == TAMPERED)).one()
        relinked = {**row._asdict(), "prev_hash": "f" * 64}
        connection.execute(
            events.update()
            .where(events.c.position == TAMPERED)
            .values(prev_hash=relinked["prev_hash"], hash=chain_hash(relinked))
        )
    report = unguarded_log.verify()
    assert report.first_broken_position == TAMPERED
    assert "prev_hash" in (report.reason or "")


def test_raise_for_break_raises_chain_broken_with_the_position(unguarded_log: EventLog) -> None:
    with unguarded_log.engine.begin() as connection:
        connection.execute(events.delete().where(events.c.position == EVENTS_IN_LOG - 1))
    with pytest.raises(ChainBroken, match=f"position {EVENTS_IN_LOG - 1}") as caught:
        unguarded_log.verify().raise_for_break()
    assert caught.value.position == EVENTS_IN_LOG - 1
    assert caught.value.code == "chain_broken"


def test_raise_for_break_is_silent_for_an_intact_log() -> None:
    VerifyReport(ok=True, checked=3, head=3).raise_for_break()
