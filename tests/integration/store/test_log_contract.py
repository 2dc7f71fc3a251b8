"""The EventLog contract, run unchanged against SQLite and PostgreSQL (the ``log`` fixture)."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from confledger.store import (
    DEFAULT_REGISTRY,
    GENESIS_HASH,
    AmbiguousHashPrefix,
    CanonicalizationError,
    Checkpoint,
    ConcurrencyConflict,
    ConfigLookupError,
    ConfledgerError,
    EventLog,
    EventPayload,
    EventRegistry,
    EventSchemaError,
    InvalidHashPrefix,
    NewEvent,
    OperationKind,
    OperationStatus,
    RecordedEvent,
    SecretCipher,
    SecretKeyError,
    ServiceOutcome,
    StoredConfig,
    StoreUnavailable,
    Trigger,
    UnknownConfigHash,
    config_hash,
    database,
)
from confledger.store.canonical import canonical_bytes, canonical_json
from confledger.store.events import (
    ConfigApplied,
    InstanceStarted,
    OperationCompleted,
    OperationStarted,
    ServiceNotified,
    UnknownPayload,
)

# --- helpers -------------------------------------------------------------------------------------------


def started(pid: int = 1) -> NewEvent:
    return NewEvent(InstanceStarted(version="0.1.0", host="test-host", pid=pid))


def operation(
    operation_id: uuid.UUID, *, applies: str | None = None, previous: str | None = None
) -> list[NewEvent]:
    """One reload operation: started, (applied), completed."""
    events = [
        NewEvent(
            OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API, source="app.yaml"),
            actor="token:ops",
            operation_id=operation_id,
        )
    ]
    if applies is not None:
        events.append(
            NewEvent(ConfigApplied(hash=applies, previous_hash=previous), operation_id=operation_id)
        )
    events.append(
        NewEvent(OperationCompleted(status=OperationStatus.SUCCESS, total_ms=1.5), operation_id=operation_id)
    )
    return events


def applied(new_hash: str, previous: str | None = None) -> NewEvent:
    return NewEvent(ConfigApplied(hash=new_hash, previous_hash=previous))


@functools.cache
def bodies_sharing_a_seven_digit_prefix() -> tuple[dict[str, int], dict[str, int]]:
    """Two config bodies whose hashes start with the same 7 hex digits (a birthday search, ~15k hashes)."""
    seen: dict[str, int] = {}
    for n in range(2_000_000):
        prefix = config_hash({"n": n})[:7]
        if prefix in seen:
            return {"n": seen[prefix]}, {"n": n}
        seen[prefix] = n
    raise AssertionError("no shared prefix found")  # pragma: no cover - 16**7 is far below 2M**2 / 2


# --- appending and reading -----------------------------------------------------------------------------


def test_an_empty_log(log: EventLog) -> None:
    assert log.head() == 0
    assert log.read() == []
    assert log.read_reverse() == []
    assert list(log.iter_events()) == []
    report = log.verify()
    assert report.ok
    assert report.checked == 0


def test_appending_nothing_writes_nothing(log: EventLog) -> None:
    assert log.append([]) == []
    assert log.head() == 0


def test_positions_run_from_one_to_n_across_batches(log: EventLog) -> None:
    returned: list[int] = []
    # 64 rows to an INSERT (store.statements.InsertRows): batches of one statement, of one full
    # statement, and of three statements, the last one short.
    sizes = (1, 3, 1, 5, 2, 64, 150)
    for batch_size in sizes:
        returned += log.append([started(pid) for pid in range(batch_size)])
    assert returned == list(range(1, sum(sizes) + 1))
    assert [event.position for event in log.read()] == returned
    assert [event.payload.pid for event in log.read(after=76)] == list(range(150))  # type: ignore[attr-defined]
    assert log.head() == sum(sizes)
    assert log.verify().ok


def test_events_come_back_as_recorded_with_typed_frozen_payloads(log: EventLog) -> None:
    operation_id = uuid.uuid4()
    log.append(operation(operation_id, applies="a" * 64))
    log.append(
        [
            NewEvent(
                ServiceNotified(service="cache", priority=10, outcome=ServiceOutcome.SUCCESS, duration_ms=2.0)
            )
        ]
    )

    first, second, third, fourth = log.read()
    assert isinstance(first, RecordedEvent)
    assert isinstance(first.payload, OperationStarted)
    assert first.payload.kind is OperationKind.RELOAD
    assert first.payload.trigger is Trigger.API
    assert isinstance(second.payload, ConfigApplied)
    assert second.payload.hash == "a" * 64
    assert isinstance(third.payload, OperationCompleted)
    assert third.payload.status is OperationStatus.SUCCESS
    assert isinstance(fourth.payload, ServiceNotified)
    assert fourth.payload.outcome is ServiceOutcome.SUCCESS

    assert first.type == "operation.started"
    assert first.schema_version == OperationStarted.schema_version == 2
    assert first.operation_id == operation_id
    assert fourth.operation_id is None
    assert first.actor == "token:ops"
    assert second.actor == "system"
    assert {event.instance_id for event in (first, second, third, fourth)} == {log.instance_id}
    assert len({event.event_id for event in (first, second, third, fourth)}) == 4
    assert all(event.occurred_at.utcoffset() == timedelta(0) for event in (first, second, third, fourth))

    # The chain: each event names the hash of the one before it.
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert fourth.prev_hash == third.hash

    # Facts do not change: neither the payload nor the envelope can be assigned to.
    with pytest.raises(ValidationError):
        second.payload.hash = "b" * 64  # type: ignore[misc]
    with pytest.raises(ValidationError):
        first.position = 9  # type: ignore[misc]


def test_append_recorded_returns_what_reading_back_gives(log: EventLog) -> None:
    seen: list[list[RecordedEvent]] = []
    log.subscribe(seen.append)
    first, second = uuid.uuid4(), uuid.uuid4()
    batches = [
        [started(1)],
        [
            *operation(first, applies="a" * 64),
            NewEvent(InstanceStarted(version="0.1.0", host='a "quoted" höst', pid=2), actor='actor "ü"'),
            *operation(second),
        ],
        # An operation id given as text, not a UUID: stored as given, read back as a UUID.
        [
            NewEvent(
                OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.CLI),
                operation_id=str(first).upper(),
            )
        ],  # type: ignore[arg-type]
    ]
    recorded = [log.append_recorded(batch) for batch in batches]
    assert [event for batch in recorded for event in batch] == log.read()
    # iter_events reads its pages on the driver's cursor, not through Connection.execute: alike.
    assert list(log.iter_events()) == log.read()
    assert list(log.iter_events(after=1, until=3, batch=2)) == log.read(after=1, until=3)
    assert all(event.occurred_at.tzinfo is UTC for event in log.iter_events())
    assert seen == recorded
    assert recorded[2][0].operation_id == first
    assert len({event.event_id for event in log.read()}) == log.head()
    assert all(event.event_id.version == 7 for event in log.read())
    # Ids are time-ordered (store.ids): in one process they increase with the position.
    assert [str(e.event_id) for e in log.read()] == sorted(str(e.event_id) for e in log.read())
    assert log.verify().ok


def test_read_filters_by_after_until_limit_and_type(log: EventLog) -> None:
    operation_id = uuid.uuid4()
    log.append([started(1), started(2)])
    log.append(operation(operation_id, applies="a" * 64))
    log.append([started(3)])
    # positions: 1, 2 started; 3 op.started; 4 applied; 5 op.completed; 6 started

    assert [e.position for e in log.read(after=2)] == [3, 4, 5, 6]
    assert [e.position for e in log.read(after=2, limit=2)] == [3, 4]
    assert [e.position for e in log.read(until=3)] == [1, 2, 3]
    assert [e.position for e in log.read(after=1, until=4)] == [2, 3, 4]
    assert [e.position for e in log.read(types=["instance.started"])] == [1, 2, 6]
    assert [e.position for e in log.read(types=["config.applied", "operation.completed"])] == [4, 5]
    assert log.read(after=6) == []


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (0, [2, 5]),  # every config.applied up to the head
        (2, [5]),  # only those after the position given
        (5, []),  # the last one: nothing new, the head still comes back
        (7, []),  # at the head
    ],
)
def test_decided_elsewhere_is_the_head_and_the_applies_after_a_position(
    log: EventLog, after: int, expected: list[int]
) -> None:
    log.append([started(1), applied("a" * 64)])
    log.append([started(2), started(3), applied("b" * 64, "a" * 64)])
    log.append([started(4), started(5)])
    # positions: 1 started; 2 applied a; 3, 4 started; 5 applied b; 6, 7 started
    head, decided = log.decided_elsewhere(after)
    found = [event for event, stored in decided if stored is None]  # all decided here: no body read
    assert head == 7
    assert [event.position for event in found] == expected
    assert found == [event for event in log.read(after, types=["config.applied"])]


def test_decided_elsewhere_on_an_empty_log(log: EventLog) -> None:
    assert log.decided_elsewhere(0) == (0, [])


def test_decided_elsewhere_reads_the_configs_other_instances_applied(
    log: EventLog, database_url: str
) -> None:
    elsewhere = EventLog(database_url, instance_id="elsewhere")
    try:
        stored = elsewhere.put_config(BODY)
        elsewhere.append([applied(stored)])
        log.append([applied("a" * 64, stored)])
        elsewhere.append([started(2), applied("b" * 64, "a" * 64)])
        # positions: 1 applied by elsewhere; 2 applied here; 3 started; 4 applied elsewhere, no body
        looked_up: list[str] = []
        lookup = log._config_row

        class CountedLookup:
            def first(self, connection: Any, values: Any) -> Any:
                looked_up.append(values["config_hash"])
                return lookup.first(connection, values)

        log._config_row = CountedLookup()  # type: ignore[assignment]
        try:
            head, found = log.decided_elsewhere(0)
        finally:
            log._config_row = lookup
    finally:
        elsewhere.close()
    # The bodies come with the events; only a hash the log has no body for is looked up on its own.
    assert looked_up == ["b" * 64]
    assert head == 4
    assert [event.position for event, _ in found] == [1, 2, 4]
    (_, first), (_, own), (_, missing) = found
    assert isinstance(first, StoredConfig)
    assert (first.hash, first.body) == (stored, BODY)
    assert own is None  # decided here: nothing to read
    assert isinstance(missing, UnknownConfigHash)
    assert log.decided_elsewhere(4) == (4, [])


def test_decided_elsewhere_reads_the_log_again_only_after_a_commit_elsewhere(
    log: EventLog, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite skips the read while no other connection has committed since the last one that found a
    # head at or before ``after`` (PRAGMA data_version); PostgreSQL reads every time.
    reads: list[int] = []
    read = log._read

    def counted(**options: Any) -> Any:
        reads.append(1)
        return read(**options)

    def asked(after: int) -> tuple[int, list[int], bool]:
        """The head, the positions found, and whether the log was read."""
        before = len(reads)
        with monkeypatch.context() as patch:
            patch.setattr(log, "_read", counted)
            head, found = log.decided_elsewhere(after)
        return head, [event.position for event, _ in found], len(reads) > before

    skips = log.dialect == "sqlite"
    elsewhere = EventLog(database_url, instance_id="elsewhere")
    try:
        log.append([started(1)])
        assert asked(0) == (1, [], True)
        log.append([applied("a" * 64)])  # this log's own: it leaves the data version as it was
        assert asked(1) == ((1, [], False) if skips else (2, [2], True))
        elsewhere.append([started(2)])  # another connection commits: read again
        assert asked(2) == (3, [], True)
        # A caller behind the head the last read found is read for, whatever the version says.
        assert asked(1) == (3, [2], True)
        assert asked(3) == (3, [], not skips)
    finally:
        elsewhere.close()


# What an in-order listener (``subscribe(..., folded_to=...)``) is handed with a batch of this log's:
# the events appended elsewhere after the position it says it has folded to, then the batch.
@pytest.mark.parametrize(
    ("others", "behind", "expected"),
    [
        # others' events, how far behind the head the listener says it is, what it gets (offsets past
        # the head before the others appended; the batch is the last)
        (3, 0, [1, 2, 3, 4]),  # all the others appended, then the batch
        (0, 0, [1]),  # nothing elsewhere: the batch alone
        (2, 2, [-1, 0, 1, 2, 3]),  # behind already: from where it is
        (3, -3, [4]),  # says it has folded them (another thread's read did): the batch alone
    ],
)
def test_an_in_order_listener_gets_what_others_appended_before_its_batch(
    log: EventLog, open_log: Any, others: int, behind: int, expected: list[int]
) -> None:
    elsewhere = open_log()
    log.append([started(n) for n in range(4)])
    head = log.head()
    heard: list[list[int]] = []
    plain: list[list[int]] = []
    log.subscribe(
        lambda batch: heard.append([e.position - head for e in batch]), folded_to=lambda: head - behind
    )
    log.subscribe(lambda batch: plain.append([e.position - head for e in batch]))
    for n in range(others):
        elsewhere.append([started(10 + n)])
    reads: list[int] = []
    read = log._read
    log._read = lambda **options: (reads.append(1), read(**options))[1]  # type: ignore[method-assign]
    try:
        recorded = log.append_recorded([started(99)])
    finally:
        log._read = read  # type: ignore[method-assign]
    assert heard == [expected]
    assert plain == [[others + 1]]  # a listener without a position gets the batch alone
    assert [e.position for e in recorded] == [head + others + 1]  # and so does the caller
    assert reads == []  # read in the append's transaction, not by a read of its own
    # What the listener got is what reading the log gives.
    assert log.read(after=head + min(expected) - 1) == [
        e for e in log.read() if e.position - head in expected
    ]


def test_an_in_order_listener_gets_the_batch_alone_when_the_rest_is_not_all_there(
    open_log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Further behind than GAP_ROWS, or behind an event this code cannot decode: the listener gets its
    # batch alone (it reads the log itself on the gap, and meets the error there) and the append stands.
    import confledger.store.log as log_module

    monkeypatch.setattr(log_module, "GAP_ROWS", 2)
    listening = open_log(registry=registry_with(WidgetResizedV1))
    elsewhere = open_log(registry=registry_with(WidgetResizedV2))
    heard: list[list[int]] = []
    listening.subscribe(lambda batch: heard.append([e.position for e in batch]), folded_to=lambda: 0)
    elsewhere.append([started(1), started(2), started(3)])
    listening.append([started(4)])  # three behind: more than GAP_ROWS
    assert heard == [[4]]
    monkeypatch.setattr(log_module, "GAP_ROWS", 256)
    elsewhere.append([NewEvent(WidgetResizedV2(width=1, height=2))])  # newer than the listener's code
    listening.append([started(6)])
    assert heard[-1] == [6]
    assert listening.head() == 6


def test_read_reverse_is_newest_first(log: EventLog) -> None:
    log.append([started(pid) for pid in range(5)])
    log.append([applied("a" * 64)])
    assert [e.position for e in log.read_reverse()] == [6, 5, 4, 3, 2, 1]
    assert [e.position for e in log.read_reverse(before=4)] == [3, 2, 1]
    assert [e.position for e in log.read_reverse(limit=2)] == [6, 5]
    assert [e.position for e in log.read_reverse(before=6, limit=2)] == [5, 4]
    assert [e.position for e in log.read_reverse(types=["config.applied"])] == [6]


def test_iter_events_streams_in_batches_without_skipping(log: EventLog) -> None:
    log.append([started(pid) for pid in range(11)])
    # batch sizes that divide the log evenly, unevenly, and exceed it
    for batch in (1, 3, 11, 50):
        assert [e.position for e in log.iter_events(batch=batch)] == list(range(1, 12))
    assert [e.position for e in log.iter_events(after=4, until=8, batch=2)] == [5, 6, 7, 8]


def test_read_operation_returns_one_operation_in_order(log: EventLog) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    log.append(operation(first))
    log.append([started()])
    log.append(operation(second, applies="a" * 64))
    assert [e.type for e in log.read_operation(second)] == [
        "operation.started",
        "config.applied",
        "operation.completed",
    ]
    assert [e.position for e in log.read_operation(str(first))] == [1, 2]
    assert log.read_operation(uuid.uuid4()) == []


def test_read_between_and_position_at_follow_occurred_at(log: EventLog) -> None:
    for pid in range(6):
        log.append([started(pid)])
    recorded = log.read()
    times = [event.occurred_at for event in recorded]
    assert times == sorted(times), "occurred_at never decreases along positions"

    # Elsewhere on the planet the same instants have other wall clocks; the answers must not change.
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    for zone in zones:
        for index in range(len(recorded)):
            moment = times[index].astimezone(zone)
            expected_position = max(e.position for e in recorded if e.occurred_at <= times[index])
            assert log.position_at(moment) == expected_position
        since, until = times[1].astimezone(zone), times[4].astimezone(zone)
        expected = [e.position for e in recorded if times[1] <= e.occurred_at <= times[4]]
        assert [e.position for e in log.read_between(since, until)] == expected
        assert [e.position for e in log.read_between(since, None)] == [
            e.position for e in recorded if e.occurred_at >= times[1]
        ]

    assert log.position_at(times[0] - timedelta(seconds=1)) == 0
    assert log.read_between(None, times[0] - timedelta(seconds=1)) == []
    assert [e.position for e in log.read_between(None, None)] == [e.position for e in recorded]


def test_a_payload_with_no_canonical_form_is_refused_and_nothing_written(log: EventLog) -> None:
    not_a_number = NewEvent(
        ServiceNotified(service="cache", priority=1, outcome=ServiceOutcome.SUCCESS, duration_ms=float("nan"))
    )
    with pytest.raises(CanonicalizationError):
        log.append([started(), not_a_number])
    assert log.head() == 0


def test_appended_payloads_are_stored_as_their_canonical_text(log: EventLog) -> None:
    payloads = [
        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API, source='a "quoted" \u00e9 path'),
        OperationCompleted(status=OperationStatus.FAILED, message="ünïcode ✓", total_ms=1.25e-7),
    ]
    operation_id = uuid.uuid4()
    log.append([NewEvent(payload, actor='actor "x"', operation_id=operation_id) for payload in payloads])
    column = "payload::text" if log.dialect == "postgresql" else "payload"
    with log.engine.connect() as connection:
        stored = connection.execute(sa.text(f"SELECT {column} FROM events ORDER BY position")).scalars().all()
    assert stored == [canonical_json(payload.model_dump(mode="json")) for payload in payloads]
    assert [event.payload for event in log.read()] == payloads
    assert log.verify().ok


# --- config bodies ---------------------------------------------------------------------------------------

BODY = {"service": "billing", "limits": {"rps": 100, "burst": 20}, "regions": ["eu", "us"]}


def test_a_config_body_is_stored_as_the_canonical_text_it_was_hashed_by(log: EventLog) -> None:
    # The text a reload's model check hashed is the size and the stored row: the body is encoded once.
    text = canonical_json(BODY)
    prepared = log.prepare_config(BODY, text=text)
    assert prepared.sealed_text is text
    assert prepared.size_bytes == len(text.encode("utf-8"))
    assert prepared.hash == config_hash(BODY)
    log.append([started(), applied(prepared.hash)], configs=[prepared])
    assert raw_bodies(log) == [text]
    assert log.get_config(prepared.hash).body == BODY
    assert log.verify().ok


def test_put_config_is_content_addressed(log: EventLog) -> None:
    first = log.put_config(BODY)
    again = log.put_config(dict(reversed(BODY.items())))  # same content, other key order
    assert first == again == config_hash(BODY)
    assert log.config_count() == 1
    assert log.has_config(first)
    assert not log.has_config("f" * 64)

    other = log.put_config({**BODY, "regions": ["eu"]})
    assert other != first
    assert log.config_count() == 2


def test_get_config_by_full_hash_or_unique_prefix(log: EventLog) -> None:
    full = log.put_config(BODY)
    for reference in (full, full[:7], full[:16], full.upper()[:12], f"  {full[:10]} "):
        stored = log.get_config(reference)
        assert stored.hash == full
        assert stored.body == BODY
        assert stored.size_bytes == len(canonical_bytes(BODY))
        assert stored.first_position is None
        assert stored.created_at.utcoffset() == timedelta(0)


def test_an_ambiguous_prefix_names_its_candidates(log: EventLog) -> None:
    one, two = bodies_sharing_a_seven_digit_prefix()
    hash_one, hash_two = log.put_config(one), log.put_config(two)
    shared = hash_one[:7]
    assert hash_two[:7] == shared

    with pytest.raises(AmbiguousHashPrefix) as caught:
        log.get_config(shared)
    assert sorted(caught.value.candidates) == sorted([hash_one, hash_two])
    assert caught.value.code == "ambiguous_hash_prefix"

    # One more digit (where they differ) makes each unique again.
    distinguishing = next(i for i in range(64) if hash_one[i] != hash_two[i]) + 1
    assert log.get_config(hash_one[:distinguishing]).body == one
    assert log.get_config(hash_two[:distinguishing]).body == two


def test_an_unknown_hash_is_reported_as_unknown(log: EventLog) -> None:
    log.put_config(BODY)
    missing = "0" * 64 if not config_hash(BODY).startswith("0000000") else "1" * 64
    with pytest.raises(UnknownConfigHash):
        log.get_config(missing[:7])
    with pytest.raises(UnknownConfigHash):
        log.get_config(missing)


@pytest.mark.parametrize(
    "reference",
    [
        "",  # empty
        "abc12",  # hex, but shorter than 7 digits
        "abcdef",  # six digits: one short
        "xyz1234",  # seven characters, not hex
        "abc_123",  # an underscore: also a LIKE wildcard, must never reach SQL
        "abc%123",  # a percent sign: the other LIKE wildcard
        "a" * 65,  # longer than any sha256
    ],
)
def test_an_invalid_reference_is_refused_before_any_lookup(log: EventLog, reference: str) -> None:
    log.put_config(BODY)
    with pytest.raises(InvalidHashPrefix) as caught:
        log.get_config(reference)
    assert isinstance(caught.value, ConfigLookupError)


def test_configs_appended_with_events_record_their_first_position(log: EventLog) -> None:
    log.append([started()])
    prepared = log.prepare_config(BODY)
    positions = log.append([applied(prepared.hash)], configs=[prepared])
    assert positions == [2]
    assert log.get_config(prepared.hash).first_position == 2

    # Naming the same body again later keeps the first position.
    log.append([applied(prepared.hash, prepared.hash)], configs=[log.prepare_config(BODY)])
    assert log.get_config(prepared.hash).first_position == 2
    assert log.config_count() == 1


def test_a_config_put_ahead_gets_its_position_when_first_appended(log: EventLog) -> None:
    early = log.put_config(BODY)
    assert log.get_config(early).first_position is None
    log.append([started(), applied(early)], configs=[log.prepare_config(BODY)])
    # The body is written in the same transaction as the batch that names it: the batch's first position.
    assert log.get_config(early).first_position == 1


# --- optimistic concurrency ------------------------------------------------------------------------------


def test_a_stale_expected_head_cannot_apply_and_writes_nothing(log: EventLog) -> None:
    log.append([started()])
    head_when_both_started = log.head()

    winner = log.prepare_config({"v": 1})
    log.append([applied(winner.hash)], expected_head=head_when_both_started, configs=[winner])
    head_after_winner = log.head()

    loser = log.prepare_config({"v": 2})
    with pytest.raises(ConcurrencyConflict) as caught:
        log.append(
            [NewEvent(OperationCompleted(status=OperationStatus.SUCCESS)), applied(loser.hash, winner.hash)],
            expected_head=head_when_both_started,
            configs=[loser],
        )
    assert caught.value.expected_head == head_when_both_started
    assert caught.value.conflicting_position == head_after_winner
    assert caught.value.code == "concurrency_conflict"
    assert log.head() == head_after_winner
    assert not log.has_config(loser.hash)
    assert log.verify().ok


def test_an_expected_head_after_the_last_apply_is_not_a_conflict(log: EventLog) -> None:
    log.append([applied("a" * 64)])
    log.append([started()])
    assert log.append([applied("b" * 64, "a" * 64)], expected_head=1) == [3]
    assert log.append([applied("c" * 64, "b" * 64)], expected_head=log.head()) == [4]


def test_an_expected_head_on_an_empty_log_is_not_a_conflict(log: EventLog) -> None:
    recorded = log.append_recorded([applied("a" * 64)], expected_head=0)
    assert [(event.position, event.prev_hash) for event in recorded] == [(1, GENESIS_HASH)]
    assert log.verify().ok


def test_an_expected_head_is_not_checked_for_batches_that_apply_nothing(log: EventLog) -> None:
    log.append([applied("a" * 64)])
    log.append([applied("b" * 64, "a" * 64)])
    # An operation that started at head 0 may still record its failure or its service outcomes.
    stale = 0
    positions = log.append(
        [NewEvent(OperationCompleted(status=OperationStatus.FAILED, error_message="validation failed"))],
        expected_head=stale,
    )
    assert positions == [3]


# --- schema versions and upcasting ---------------------------------------------------------------------


class WidgetResizedV1(EventPayload):
    event_type: ClassVar[str] = "test.widget_resized"
    size: int


class WidgetResizedV2(EventPayload):
    event_type: ClassVar[str] = "test.widget_resized"
    schema_version: ClassVar[int] = 2
    width: int
    height: int


def square_to_rectangle(v1: dict[str, Any]) -> dict[str, Any]:
    return {"width": v1["size"], "height": v1["size"]}


def registry_with(*models: type[EventPayload]) -> EventRegistry:
    registry = DEFAULT_REGISTRY.copy()
    for model in models:
        registry.register(model)
    return registry


@pytest.fixture
def open_log(database_url: str) -> Iterator[Any]:
    """Open more logs on the fixture's database; all are closed at the end of the test."""
    opened: list[EventLog] = []

    def opener(**options: Any) -> EventLog:
        event_log = EventLog(database_url, instance_id="other-instance", **options)
        opened.append(event_log)
        return event_log

    yield opener
    for event_log in opened:
        event_log.close()


def test_old_payloads_are_upcast_on_read(open_log: Any) -> None:
    old_code = open_log(registry=registry_with(WidgetResizedV1))
    old_code.append([NewEvent(WidgetResizedV1(size=3))])
    assert old_code.read()[0].payload == WidgetResizedV1(size=3)

    new_registry = registry_with(WidgetResizedV2)
    new_registry.register_upcaster("test.widget_resized", 1, square_to_rectangle)
    new_code = open_log(registry=new_registry)
    new_code.append([NewEvent(WidgetResizedV2(width=4, height=5))])

    old_event, new_event = new_code.read()
    assert old_event.payload == WidgetResizedV2(width=3, height=3)
    assert old_event.schema_version == 1  # the stored fact is unchanged; only its reading is translated
    assert new_event.payload == WidgetResizedV2(width=4, height=5)
    assert new_event.schema_version == 2
    assert new_code.verify().ok  # upcasting never rewrites the log


def test_a_payload_newer_than_the_code_is_refused(open_log: Any) -> None:
    newer = open_log(registry=registry_with(WidgetResizedV2))
    newer.append([NewEvent(WidgetResizedV2(width=1, height=2))])
    older = open_log(registry=registry_with(WidgetResizedV1))
    with pytest.raises(EventSchemaError, match="newer") as caught:
        older.read()
    assert caught.value.code == "event_version_too_new"


def test_a_missing_upcaster_is_refused(open_log: Any) -> None:
    open_log(registry=registry_with(WidgetResizedV1)).append([NewEvent(WidgetResizedV1(size=3))])
    without_upcaster = open_log(registry=registry_with(WidgetResizedV2))
    with pytest.raises(EventSchemaError) as caught:
        without_upcaster.read()
    assert caught.value.code == "missing_upcaster"


def test_an_unknown_type_is_kept_not_dropped(log: EventLog, open_log: Any) -> None:
    open_log(registry=registry_with(WidgetResizedV1)).append([NewEvent(WidgetResizedV1(size=3))])
    (event,) = log.read()  # the default catalogue has no test.widget_resized
    assert event.type == "test.widget_resized"
    assert isinstance(event.payload, UnknownPayload)
    assert event.payload.model_dump() == {"size": 3}


# --- secrets at rest -----------------------------------------------------------------------------------

SECRET_BODY = {"database": {"host": "db", "password": "correct-horse-battery"}, "api_key": "sk-live-42"}
SECRET_PATHS = {("database", "password"), ("api_key",)}


def raw_bodies(event_log: EventLog) -> list[str]:
    with event_log.engine.connect() as connection:
        return [
            str(text)
            for text in connection.execute(
                sa.text("SELECT CAST(body AS TEXT) FROM config_versions")
            ).scalars()
        ]


def test_secrets_are_sealed_at_rest_and_plain_to_the_key_holder(log: EventLog, open_log: Any) -> None:
    keyed = open_log(cipher=SecretCipher([SecretCipher.generate_key()]))
    full = keyed.put_config(SECRET_BODY, SECRET_PATHS)
    # The hash covers the secrets only through keyed digests (hash scheme 2): not the plain sha256.
    assert full == keyed.hash_config(SECRET_BODY, SECRET_PATHS)
    assert full != config_hash(SECRET_BODY)

    (stored_text,) = raw_bodies(keyed)
    assert "correct-horse-battery" not in stored_text
    assert "sk-live-42" not in stored_text
    assert '"host":"db"' in stored_text.replace(" ", "")  # only the secrets are sealed

    assert keyed.get_config(full[:8]).body == SECRET_BODY
    # A second put (new Fernet tokens) is still the same content: one row.
    assert keyed.put_config(SECRET_BODY, SECRET_PATHS) == full
    assert keyed.config_count() == 1

    # Without the key the log refuses to guess.
    with pytest.raises(SecretKeyError):
        log.get_config(full)


def test_a_secret_is_never_stored_plain_when_no_key_is_configured(log: EventLog) -> None:
    with pytest.raises(SecretKeyError, match="no encryption key"):
        log.put_config(SECRET_BODY, SECRET_PATHS)
    assert log.config_count() == 0


# --- append-only guards --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET actor = 'mallory' WHERE position = 1",  # rewrite one event
        "UPDATE events SET position = position + 100",  # renumber the log
        "DELETE FROM events WHERE position = 2",  # remove one event
        "DELETE FROM events",  # remove all
        "UPDATE config_versions SET body = (SELECT body FROM config_versions LIMIT 1)",  # swap a body
        "DELETE FROM config_versions",  # forget the bodies
    ],
)
def test_the_database_refuses_updates_and_deletes(log: EventLog, statement: str) -> None:
    prepared = log.prepare_config(BODY)
    log.append([started(), applied(prepared.hash), started(2)], configs=[prepared])
    with pytest.raises(sa.exc.DBAPIError, match=r"append-only|immutable"), log.engine.begin() as connection:
        connection.execute(sa.text(statement))
    assert log.head() == 3
    assert log.config_count() == 1
    assert log.verify().ok


def test_postgres_refuses_truncate(log: EventLog) -> None:
    if log.dialect != "postgresql":
        pytest.skip("SQLite has no TRUNCATE; DELETE FROM events is covered above")
    log.append([started()])
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), log.engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE events"))
    assert log.head() == 1


def _writer_session_after_one_append(log: EventLog) -> int:
    """One event appended, and the server process of the writer's kept connection. PostgreSQL only."""
    if log.dialect != "postgresql":
        pytest.skip("only a server can drop a connection")
    log.append([started(1)])
    kept = log._writer._kept
    assert kept is not None
    return int(kept.connection.dbapi_connection.info.backend_pid)  # type: ignore[union-attr]


def test_the_writer_connection_survives_the_server_dropping_it(log: EventLog) -> None:
    # The append path keeps its own connection: the server ends that session, as a restart or a failover
    # would. Only this log's writer: the database is shared with whatever else runs against it.
    writer_pid = _writer_session_after_one_append(log)
    with log.engine.connect() as connection:
        ended = connection.execute(sa.select(sa.func.pg_terminate_backend(writer_pid))).scalar()
    assert ended
    assert log.append([started(2)]) == [2]
    assert log.append([started(3)]) == [3]
    assert log.verify().ok


def test_a_session_dropped_before_the_commit_loses_the_batch_whole(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends the writer's session after the BEGIN, as the INSERTs and the COMMIT are about to
    go (one pipeline): the append fails with a clear error, nothing of it is written, and the next
    append gets a new connection."""
    writer_pid = _writer_session_after_one_append(log)
    insert = type(log._insert_events).run

    def dropped_first(statement: Any, connection: Any, rows: Any) -> None:
        with sa.create_engine(log.engine.url, poolclass=sa.pool.NullPool).connect() as admin:
            # The timeout: terminate waits until the session is gone.
            assert admin.execute(sa.select(sa.func.pg_terminate_backend(writer_pid, 5000))).scalar()
        insert(statement, connection, rows)

    monkeypatch.setattr(type(log._insert_events), "run", dropped_first)
    prepared = log.prepare_config({"dropped": True})
    with pytest.raises(StoreUnavailable):
        log.append([NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None))], configs=[prepared])
    monkeypatch.undo()
    assert not log._writer._lock.locked()
    assert log.head() == 1
    assert not log.has_config(prepared.hash)
    assert log.append([started(2)]) == [2]
    assert log.verify().ok


def _end_the_sessions_of(log: EventLog) -> int:
    """Terminate every server session of ``log`` (its writer's and its pooled readers'), as a restart
    would; returns how many there were."""
    with sa.create_engine(log.engine.url, poolclass=sa.pool.NullPool).connect() as admin:
        ended = admin.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": f"confledger {log.instance_id}"[:63]},
        ).scalar()
    return int(ended or 0)


def _drop_a_pooled_read_connection(log: EventLog) -> None:
    """One event, read back (a read connection then waits in the pool), and every session of ``log``
    ended by the server. PostgreSQL only."""
    if log.dialect != "postgresql":
        pytest.skip("only a server can drop a connection")
    log.append([started(1)])
    assert log.head() == 1
    assert _end_the_sessions_of(log) >= 1


def test_a_pooled_connection_that_lay_idle_is_pinged_and_replaced(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drop_a_pooled_read_connection(log)
    # Idle past the threshold (here: any idle time at all), the read connection is pinged first.
    monkeypatch.setattr(database, "IDLE_PING_AFTER_S", 0.0)
    assert log.head() == 1
    assert log.append([started(2)]) == [2]


def test_a_pooled_connection_used_a_moment_ago_fails_once_then_is_replaced(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drop_a_pooled_read_connection(log)
    # Used a moment ago: not pinged, so the read that finds it gone fails, with a clear error...
    monkeypatch.setattr(database, "IDLE_PING_AFTER_S", 3600.0)
    with pytest.raises(StoreUnavailable):
        log.head()
    # ...and the pool, invalidated by that failure, hands the next read a fresh connection.
    assert log.head() == 1
    assert log.append([started(2)]) == [2]


def test_a_follower_read_on_a_dropped_connection_fails_once_with_no_error_logged(
    log: EventLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The follower's read runs on the driver's cursor: SQLAlchemy did not see the connection drop, took
    # it back into the pool, tried to reset it, and logged that at ERROR with a traceback on every
    # PostgreSQL restart or terminated backend, while the follower itself said it would retry.
    caplog.set_level(logging.WARNING)
    _drop_a_pooled_read_connection(log)
    monkeypatch.setattr(database, "IDLE_PING_AFTER_S", 3600.0)
    with pytest.raises(StoreUnavailable):
        log.decided_elsewhere(0)
    assert log.decided_elsewhere(0)[0] == 1
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_a_reader_that_reads_more_often_than_the_idle_limit_is_never_pinged(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a follower polls: however many connections the pool grew to, the one read next is the one
    returned last, used a moment ago, so each read is its statement alone, never a ping before it."""
    if log.dialect != "postgresql":
        pytest.skip("only a PostgreSQL connection is pinged")
    log.append([started(1)])
    # Four readers at once (an HTTP read, the doorbell's read, a heartbeat, a checkpoint): four in the pool.
    held = [log.engine.connect() for _ in range(4)]
    for connection in held:
        connection.close()
    pings = 0
    ping = log.engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        nonlocal pings
        pings += 1
        return ping(dbapi_connection)

    monkeypatch.setattr(log.engine.dialect, "do_ping", counted)
    # Handed out in turn, each of the four would lie idle 4 x 0.3 s between its reads, past the limit.
    monkeypatch.setattr(database, "IDLE_PING_AFTER_S", 0.8)
    for _ in range(6):
        assert log.head() == 1
        time.sleep(0.3)
    assert pings == 0


def test_a_failed_append_leaves_the_writer_usable(log: EventLog) -> None:
    first = config_hash({"n": 1})
    log.append([applied(first)])
    with pytest.raises(ConcurrencyConflict):
        log.append([applied(config_hash({"n": 2}), first)], expected_head=0)
    assert log.append([started()]) == [2]
    assert log.verify().ok


# --- checkpoints ---------------------------------------------------------------------------------------


def test_checkpoints_round_trip_and_never_move_backwards(log: EventLog) -> None:
    assert log.load_checkpoint("stats") is None

    log.save_checkpoint(Checkpoint("stats", version=1, position=10, state={"total": 3, "rates": [0.5]}))
    assert log.load_checkpoint("stats") == Checkpoint("stats", 1, 10, {"total": 3, "rates": [0.5]})

    # A slower folder that is behind must not overwrite newer work.
    log.save_checkpoint(Checkpoint("stats", version=1, position=7, state={"total": 2}))
    assert log.load_checkpoint("stats") == Checkpoint("stats", 1, 10, {"total": 3, "rates": [0.5]})

    log.save_checkpoint(Checkpoint("stats", version=2, position=12, state={"total": 4}))
    assert log.load_checkpoint("stats") == Checkpoint("stats", 2, 12, {"total": 4})

    # Saving the same position again is allowed (a rebuilt state at the same point).
    log.save_checkpoint(Checkpoint("stats", version=3, position=12, state={"total": 4, "rebuilt": True}))
    assert log.load_checkpoint("stats") == Checkpoint("stats", 3, 12, {"total": 4, "rebuilt": True})

    # Checkpoints are per projection.
    log.save_checkpoint(Checkpoint("history", version=1, position=1, state={}))
    assert log.load_checkpoint("history") == Checkpoint("history", 1, 1, {})
    assert log.load_checkpoint("stats") == Checkpoint("stats", 3, 12, {"total": 4, "rebuilt": True})


def test_a_set_saved_in_one_statement_moves_each_checkpoint_by_its_own_position(log: EventLog) -> None:
    log.save_checkpoint(Checkpoint("stats", 1, 10, {"total": 3}), Checkpoint("history", 1, 10, {"n": 1}))
    log.save_checkpoint(
        Checkpoint("stats", 1, 7, {"total": 2}),  # behind: stays at 10
        Checkpoint("history", 1, 12, {"n": 2}),  # ahead: moves
        Checkpoint("fleet", 1, 12, {}),  # new
        Checkpoint("fleet", 1, 13, {"last": True}),  # the same name twice: the last one given
    )
    assert log.load_checkpoint("stats") == Checkpoint("stats", 1, 10, {"total": 3})
    assert log.load_checkpoint("history") == Checkpoint("history", 1, 12, {"n": 2})
    assert log.load_checkpoint("fleet") == Checkpoint("fleet", 1, 13, {"last": True})


def test_checkpoints_saved_together_commit_together(log: EventLog) -> None:
    # A runner saves its whole set in one call: one transaction (one fsync on SQLite FULL), so a set
    # that fails part way leaves every checkpoint as it was.
    log.save_checkpoint(Checkpoint("stats", 1, 5, {"total": 1}), Checkpoint("history", 1, 5, {"ops": []}))
    assert log.load_checkpoint("stats") == Checkpoint("stats", 1, 5, {"total": 1})
    assert log.load_checkpoint("history") == Checkpoint("history", 1, 5, {"ops": []})

    unstorable = Checkpoint("current", 1, 9, {"at": object()})  # no JSON for it: its MAC or upsert fails
    with pytest.raises(ConfledgerError):
        log.save_checkpoint(Checkpoint("stats", 1, 9, {"total": 2}), unstorable)
    assert log.load_checkpoint("stats") == Checkpoint("stats", 1, 5, {"total": 1})
    assert log.load_checkpoint("current") is None
