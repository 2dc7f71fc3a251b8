"""store.source_state: what the configured source held when last read, and why it is not what runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from confledger.store import EventLog, NewEvent, OperationKind, Trigger
from confledger.store.events import (
    ConfigLoaded,
    EventPayload,
    OperationCompleted,
    OperationStarted,
    OperationStatus,
)
from confledger.store.outcome import ReloadOperation, ReloadStatus
from confledger.store.pins import Pin, RollbackPins
from confledger.store.source_state import describe_source, last_read

H, G = "a" * 64, "b" * 64
SOURCE = "/etc/app/config.yaml"
WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def read(
    new_hash: str | None, *, success: bool = True, reason: str | None = None, **extra: Any
) -> ReloadOperation:
    return ReloadOperation(
        operation_id=str(uuid.uuid4()),
        status=ReloadStatus.SUCCESS if success else ReloadStatus.FAILED,
        success=success,
        reason=reason,
        new_config_hash=new_hash,
        started_at=WHEN,
        **extra,
    )


def pinned(*hashes: str) -> RollbackPins:
    pins = RollbackPins()
    pins.pins = {h: Pin(h, WHEN, "token:admin", None, 7) for h in hashes}
    return pins


@pytest.mark.parametrize(
    ("last", "pins", "differs", "reason"),
    [
        # read and applied: nothing to say
        (read(G), pinned(), False, None),
        # the source holds a config rolled back away from
        (read(H), pinned(H), True, "rolled_back_hash"),
        # the reload that read it was refused by the pin itself
        (read(H, success=False, reason="rolled_back_hash"), pinned(H), True, "rolled_back_hash"),
        # a validator refused it
        (read(H, success=False, reason="validation_failed"), pinned(), True, "validation_failed"),
        # it could not be loaded at all: no hash, the load's reason
        (read(None, success=False, reason="syntax_error"), pinned(), True, "syntax_error"),
        # only validated, never applied
        (read(H, dry_run=True), pinned(), True, "dry_run"),
        # applied when read; something else applied since (a client's file, an automatic rollback's …)
        (read(H), pinned(), True, "superseded"),
    ],
)
def test_why_the_source_differs(
    last: ReloadOperation, pins: RollbackPins, differs: bool, reason: str | None
) -> None:
    state = describe_source(SOURCE, last, G, pins)
    assert state is not None
    assert (state.differs_from_applied, state.reason) == (differs, reason)
    assert state.hash == last.new_config_hash
    assert state.operation_id == last.operation_id
    if reason == "rolled_back_hash":
        assert (state.rolled_back_at, state.rolled_back_by) == (WHEN, "token:admin")
    else:
        assert state.rolled_back_by is None


def test_nothing_is_said_without_a_source_or_a_read() -> None:
    assert describe_source(None, read(H), G, pinned()) is None
    assert describe_source(SOURCE, None, G, pinned()) is None


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    event_log = EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id="unit")
    try:
        yield event_log
    finally:
        event_log.close()


def reload_of(log: EventLog, source: str, loaded: str) -> str:
    operation_id = uuid.uuid4()
    payloads: list[EventPayload] = [
        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.SIGNAL, source=source),
        ConfigLoaded(hash=loaded, source=source, size_bytes=10, load_ms=0.1),
        OperationCompleted(status=OperationStatus.SUCCESS),
    ]
    log.append([NewEvent(p, operation_id=operation_id) for p in payloads])
    return str(operation_id)


def test_last_read_is_the_newest_reload_of_that_source(log: EventLog) -> None:
    reload_of(log, SOURCE, G)
    newest = reload_of(log, SOURCE, H)
    for n in range(5):
        reload_of(log, f"/etc/app/client-{n}.yaml", G)  # files a client named are skipped
    found = last_read(log, SOURCE)
    assert found is not None
    assert (found.operation_id, found.new_config_hash) == (newest, H)
    assert last_read(log, "/elsewhere.yaml") is None
    assert last_read(log, None) is None


def test_last_read_looks_back_a_bounded_number_of_operations(log: EventLog) -> None:
    reload_of(log, SOURCE, H)
    for n in range(60):  # more than one batch of starts
        reload_of(log, f"/etc/app/client-{n}.yaml", G)
    assert last_read(log, SOURCE, scan=60) is None
    found = last_read(log, SOURCE, scan=61)
    assert found is not None
    assert found.new_config_hash == H
