"""store.pins.RollbackPins: which configs a reload may not quietly apply again, folded from a real log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confledger.store import EventLog, NewEvent
from confledger.store.events import ConfigApplied, ConfigRolledBack, EventPayload
from confledger.store.log import Checkpoint
from confledger.store.pins import RollbackPins

H, G, F = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    event_log = EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id="unit")
    try:
        yield event_log
    finally:
        event_log.close()


def applied(full_hash: str, previous: str | None = None) -> ConfigApplied:
    return ConfigApplied(hash=full_hash, previous_hash=previous)


def rolled_back(away_from: str, to: str, reason: str = "manual") -> list[EventPayload]:
    """A rollback as the runner records it: the rollback, then (not for the service threshold's) the
    target applied."""
    back = ConfigRolledBack(from_hash=away_from, to_hash=to, reason=reason)  # type: ignore[arg-type]
    return [back] if reason == "automatic" else [back, applied(to, away_from)]


def append(log: EventLog, payloads: list[EventPayload], actor: str = "token:admin") -> None:
    log.append([NewEvent(payload, actor=actor) for payload in payloads])


@pytest.mark.parametrize(
    ("history", "pinned"),
    [
        # a manual rollback away from H pins H
        ([applied(G), applied(H, G), *rolled_back(H, G)], {H}),
        # an automatic rollback pins nothing: the services refused H, a later reload may find them ready
        ([applied(G), *rolled_back(H, G, reason="automatic")], set()),
        # the fleet threshold's rollback pins H as a manual one does: most of the fleet refused it
        ([applied(G), applied(H, G), *rolled_back(H, G, reason="fleet_threshold")], {H}),
        # applying H again (a forced reload) lifts the pin
        ([applied(G), applied(H, G), *rolled_back(H, G), applied(H, G)], set()),
        # so does a rollback to H
        ([applied(G), applied(H, G), *rolled_back(H, G), *rolled_back(G, H)], {G}),
        # two rollbacks in a row pin both configs rolled back away from
        ([applied(F), applied(G, F), applied(H, G), *rolled_back(H, G), *rolled_back(G, F)], {H, G}),
        # another config applied since does not lift the pin on H: only an apply of H does
        ([applied(G), applied(H, G), *rolled_back(H, G), applied(F, G)], {H}),
    ],
)
def test_the_fold(log: EventLog, history: list[EventPayload], pinned: set[str]) -> None:
    append(log, history)
    pins = RollbackPins()
    pins.catch_up(log)
    assert set(pins.pins) == pinned
    for full_hash in pinned:
        pin = pins.get(full_hash)
        assert pin is not None
        assert pin.actor == "token:admin"
        assert f"{full_hash[:16]} was rolled back at" in pin.refusal()
        # the time as every answer writes one (UTC with a Z), not Python's +00:00
        assert re.search(r" at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ by ", pin.refusal()), pin.refusal()


def test_own_events_folded_early_end_as_the_log_says(log: EventLog) -> None:
    # An instance folds its own append at once; another instance's events that landed before it are
    # folded by the next catch-up, in order, so the end state is the log's.
    pins = RollbackPins()
    pins.catch_up(log)
    append(log, [applied(G), applied(H, G)])  # another instance
    mine = log.append_recorded([NewEvent(p, actor="token:admin") for p in rolled_back(H, G)])
    pins.appended(mine)
    assert set(pins.pins) == {H}
    append(log, [applied(H, G)])  # another instance re-applies H
    pins.catch_up(log)
    fresh = RollbackPins()
    fresh.catch_up(log)
    assert pins.pins == fresh.pins == {}


def test_own_appends_that_follow_the_fold_need_no_read(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(log, [applied(G), applied(H, G)])
    pins = RollbackPins()
    pins.catch_up(log)
    pins.appended(log.append_recorded([NewEvent(p) for p in rolled_back(H, G)]))
    assert (set(pins.pins), pins.position) == ({H}, log.head())
    reads = count_reads(log, monkeypatch)
    pins.catch_up(log)
    assert reads == []  # the head was already folded: one look at it, no read


def test_a_catch_up_to_a_head_already_read_folds_up_to_it_and_reads_no_head(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operation reads the head under the fleet lock and hands it over: the pins fold up to that head
    # and no further (a rollback after it is the next catch-up's), and nothing asks for the head again.
    append(log, [applied(G), applied(H, G), *rolled_back(H, G)])
    known = log.head()
    append(log, [*rolled_back(G, F)])  # after the head the caller read
    heads: list[int] = []
    head = log.head
    monkeypatch.setattr(log, "head", lambda: heads.append(1) or head())
    pins = RollbackPins()
    pins.catch_up(log, head=known)
    assert (set(pins.pins), pins.position, heads) == ({H}, known, [])
    reads = count_reads(log, monkeypatch)
    pins.catch_up(log, head=known)
    assert reads == []  # folded up to that head already: no read at all
    pins.catch_up(log)
    assert set(pins.pins) == {H, G}


@pytest.mark.parametrize("own_fold", ["during the catch-up's read", "after the catch-up"])
def test_own_appends_and_a_catch_up_in_either_order_end_as_the_log_says(
    log: EventLog, monkeypatch: pytest.MonkeyPatch, own_fold: str
) -> None:
    # The event loop folds this instance's rollback while a worker thread catches up with another
    # instance's apply of H that came right after it: H must end unpinned whichever folds first.
    append(log, [applied(G), applied(H, G)])
    pins = RollbackPins()
    pins.catch_up(log)
    mine = log.append_recorded([NewEvent(p) for p in rolled_back(H, G)])
    append(log, [applied(H, G)])  # another instance
    if own_fold == "during the catch-up's read":
        read = log.read

        def read_then_fold(*args: Any, **kwargs: Any) -> Any:
            found = read(*args, **kwargs)
            pins.appended(mine)
            return found

        monkeypatch.setattr(log, "read", read_then_fold)
        pins.catch_up(log)
    else:
        pins.catch_up(log)
        pins.appended(mine)
    assert pins.pins == {}
    assert pins.position == log.head()


def count_reads(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``after`` of each ``log.read`` call (how far back a catch-up reads)."""
    calls: list[int] = []
    read = log.read

    def counting(after: int = 0, *args: Any, **kwargs: Any) -> Any:
        calls.append(after)
        return read(after, *args, **kwargs)

    monkeypatch.setattr(log, "read", counting)
    return calls


def test_a_long_fold_is_checkpointed_and_the_next_start_reads_only_the_tail(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(log, [applied(f"{n:064x}") for n in range(300)])
    append(log, [applied(H), *rolled_back(H, G)])
    first = RollbackPins()
    first.catch_up(log)
    checkpoint = log.load_checkpoint("store.rollback_pins")
    assert checkpoint is not None
    assert checkpoint.position == log.head()
    append(log, [applied(F, G)])

    reads = count_reads(log, monkeypatch)
    restarted = RollbackPins()
    restarted.catch_up(log)
    assert reads == [checkpoint.position]  # the tail after the checkpoint, not the whole log
    assert set(restarted.pins) == {H}
    assert restarted.pins[H] == first.pins[H]


@pytest.mark.parametrize(
    "state",
    [
        {"pins": {H: {"at": "not a time", "actor": "x", "position": 1}}},  # unreadable
        {"pins": {H: {"actor": "x"}}},  # fields missing
        {"nothing": True},  # another shape altogether
    ],
)
def test_an_unreadable_checkpoint_is_refolded_from_the_log(log: EventLog, state: dict[str, Any]) -> None:
    append(log, [applied(G), applied(F, G), *rolled_back(F, G)])
    log.save_checkpoint(Checkpoint("store.rollback_pins", 1, 1, state))
    pins = RollbackPins()
    pins.catch_up(log)
    assert set(pins.pins) == {F}


def test_a_checkpoint_past_the_head_belongs_to_another_log(log: EventLog) -> None:
    append(log, [applied(G), applied(F, G), *rolled_back(F, G)])
    log.save_checkpoint(
        Checkpoint("store.rollback_pins", 1, 10_000, {"pins": {}})  # a history this log never had
    )
    pins = RollbackPins()
    pins.catch_up(log)
    assert set(pins.pins) == {F}
