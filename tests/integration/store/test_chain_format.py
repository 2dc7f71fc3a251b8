"""The chain's byte format does not move: a log written by an earlier release still verifies, on both
backends, and appending continues its chain.

``fixtures/log_written_by_c06ff0c.json`` holds the rows of a log that c06ff0c's ``EventLog.append`` wrote
to SQLite (two reload operations from ``tests/benchmarks/logbuilder.py``, then events with quotes,
non-ASCII text, control characters, an operation id given as upper-case text, floats at the edges of
their range), exactly as stored. They are copied into a fresh log here with the links they had.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from confledger.store import EventLog, NewEvent
from confledger.store.events import InstanceStarted
from confledger.store.schema import events

FIXTURE = Path(__file__).parent / "fixtures" / "log_written_by_c06ff0c.json"
WRITTEN = json.loads(FIXTURE.read_text(encoding="utf-8"))["events"]


def as_inserted(row: dict[str, Any]) -> dict[str, Any]:
    """A fixture row as the events table takes it: the stored UTC text as a time, the payload as JSON."""
    return {
        **row,
        "occurred_at": datetime.fromisoformat(row["occurred_at"]).replace(tzinfo=UTC),
        "payload": json.loads(row["payload"]),
    }


def copy_into(log: EventLog, rows: list[dict[str, Any]]) -> None:
    with log.engine.begin() as connection:
        connection.execute(events.insert(), [as_inserted(row) for row in rows])


def test_a_log_written_by_c06ff0c_verifies_and_reads_back(log: EventLog) -> None:
    copy_into(log, WRITTEN)
    report = log.verify()
    assert report.ok, report.reason
    assert report.checked == report.head == len(WRITTEN)
    recorded = log.read()
    assert [(e.position, e.hash) for e in recorded] == [(r["position"], r["hash"]) for r in WRITTEN]


def test_appending_to_a_log_written_by_c06ff0c_continues_its_chain(log: EventLog) -> None:
    copy_into(log, WRITTEN)
    (appended,) = log.append_recorded([NewEvent(InstanceStarted(version="0.2.0", host="h", pid=1))])
    assert (appended.position, appended.prev_hash) == (len(WRITTEN) + 1, WRITTEN[-1]["hash"])
    assert log.verify().ok


def one_microsecond_later(text: str) -> str:
    return (datetime.fromisoformat(text) + timedelta(microseconds=1)).isoformat(" ")


# One row changed in one field, as someone with DDL rights could: the changed position is named.
@pytest.mark.parametrize(
    ("position", "field", "change"),
    [
        (1, "actor", lambda _: "mallory"),  # the first link
        (9, "payload", lambda text: text.replace('"trigger":"', '"trigger":"x')),  # a payload's text
        (18, "occurred_at", one_microsecond_later),  # the time, by the least it can move
        (22, "operation_id", str.lower),  # the same operation, its id written the usual way
        (23, "hash", lambda _: "0" * 64),  # the head's own hash
    ],
)
def test_a_changed_row_of_that_log_is_named(
    log: EventLog, position: int, field: str, change: Callable[[Any], Any]
) -> None:
    rows = [
        dict(row, **{field: change(row[field])}) if row["position"] == position else row for row in WRITTEN
    ]
    copy_into(log, rows)
    report = log.verify()
    assert not report.ok
    assert report.first_broken_position == position
    assert report.checked == position - 1
