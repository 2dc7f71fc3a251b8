"""One link scheme, pinned: ``chain_hash`` gives the digests earlier releases wrote (envelopes hashed by
c06ff0c, at the edges of the timestamp range and with every kind of awkward text), covers every envelope
field, and depends on the instant an event occurred, not on the zone it is written in."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confledger.store.canonical import GENESIS_HASH, canonical_json
from confledger.store.chain import chain_hash, link_message
from confledger.store.errors import CanonicalizationError
from tests.unit.store.test_canonical import json_objects, reinserted

FIXTURE = Path(__file__).parents[2] / "integration" / "store" / "fixtures" / "log_written_by_c06ff0c.json"
HASHED_BY_C06FF0C = json.loads(FIXTURE.read_text(encoding="utf-8"))["envelopes"]


@pytest.mark.parametrize(
    "written",
    HASHED_BY_C06FF0C,
    # Years 1, 999 (whose text strftime leaves unpadded), 1000, 9999; a +05:30 offset; a naive time.
    ids=[entry["occurred_at"] for entry in HASHED_BY_C06FF0C],
)
def test_envelopes_hash_as_c06ff0c_hashed_them(written: dict[str, Any]) -> None:
    envelope = {**written, "occurred_at": datetime.fromisoformat(written["occurred_at"])}
    assert chain_hash(envelope) == written["hash"]


def test_a_link_covers_prev_hash_then_the_canonical_envelope() -> None:
    envelope = _envelope(payload={"b": 1, "a": "é"})
    message = link_message(envelope)
    assert message.startswith(GENESIS_HASH.encode("ascii") + b'{"actor":"system","event_id":')
    assert b'"occurred_at":"2026-01-01T00:00:00.000000Z"' in message
    assert b'"payload":{"a":"\xc3\xa9","b":1}' in message


envelopes = st.fixed_dictionaries(
    {
        "position": st.integers(min_value=1, max_value=2**53),
        "event_id": st.uuids(),
        "occurred_at": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        "type": st.sampled_from(["config.applied", "operation.started", "instance.started"]),
        "schema_version": st.integers(min_value=1, max_value=9),
        "operation_id": st.none() | st.uuids(),
        "instance_id": st.text(min_size=1, max_size=20),
        "actor": st.text(min_size=1, max_size=20),
        "payload": json_objects,
        "prev_hash": st.just(GENESIS_HASH) | st.text("0123456789abcdef", min_size=64, max_size=64),
    }
)


@given(envelope=envelopes)
def test_chain_hash_is_deterministic(envelope: dict[str, Any]) -> None:
    again = dict(envelope)
    again["payload"] = json.loads(canonical_json(envelope["payload"]))
    assert chain_hash(envelope) == chain_hash(again) == chain_hash(reinserted(envelope, random.Random(7)))
    assert len(chain_hash(envelope)) == 64


@given(
    envelope=envelopes,
    # Text that looks like the members around the payload's place, quotes and all.
    actor=st.text(min_size=1, max_size=20)
    | st.sampled_from([',"position":1', '","payload":{}', '"position"']),
)
def test_the_message_is_prev_hash_then_the_canonical_json_of_the_whole_envelope(
    envelope: dict[str, Any], actor: str
) -> None:
    envelope = {**envelope, "actor": actor, "instance_id": actor}
    fields = {
        **{key: envelope[key] for key in ("position", "type", "schema_version", "instance_id", "actor")},
        "event_id": str(envelope["event_id"]),
        "occurred_at": envelope["occurred_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "operation_id": None if envelope["operation_id"] is None else str(envelope["operation_id"]),
        "payload": envelope["payload"],
        "prev_hash": envelope["prev_hash"],
    }
    whole = envelope["prev_hash"].encode("ascii") + canonical_json(fields).encode("utf-8")
    assert link_message(envelope) == whole
    # The append hands over the payload's text it stores: the same message.
    assert link_message(envelope, canonical_json(envelope["payload"])) == whole


@given(envelope=envelopes, offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_chain_hash_depends_on_the_instant_not_the_time_zone_it_is_written_in(
    envelope: dict[str, Any], offset_minutes: int
) -> None:
    elsewhere = dict(envelope)
    elsewhere["occurred_at"] = envelope["occurred_at"].astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert chain_hash(elsewhere) == chain_hash(envelope)
    # A stored value that came back without a zone (SQLite) is UTC.
    naive = dict(envelope)
    naive["occurred_at"] = envelope["occurred_at"].replace(tzinfo=None)
    assert chain_hash(naive) == chain_hash(envelope)


@pytest.mark.parametrize(
    ("field", "other_value"),
    [
        ("position", 999_999),  # a moved event
        ("event_id", uuid.UUID(int=1)),  # a substituted event
        ("occurred_at", datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),  # a back-dated event
        ("type", "config.rolled_back"),  # a relabelled event
        ("schema_version", 99),  # a re-versioned payload
        ("operation_id", uuid.UUID(int=2)),  # an event moved to another operation
        ("instance_id", "another-host:1"),  # a different writer
        ("actor", "mallory"),  # a different actor
        ("payload", {"hash": "f" * 64}),  # a changed payload
        ("prev_hash", "1" * 64),  # a relinked chain
    ],
)
def test_chain_hash_covers_every_envelope_field(field: str, other_value: Any) -> None:
    envelope = {
        "position": 1,
        "event_id": uuid.UUID(int=0),
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "type": "config.applied",
        "schema_version": 1,
        "operation_id": None,
        "instance_id": "host:1",
        "actor": "system",
        "payload": {"hash": "a" * 64, "previous_hash": None},
        "prev_hash": GENESIS_HASH,
    }
    changed = {**envelope, field: other_value}
    assert chain_hash(changed) != chain_hash(envelope)


def _envelope(**changes: Any) -> dict[str, Any]:
    return {
        "position": 1,
        "event_id": uuid.UUID(int=0),
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "type": "config.applied",
        "schema_version": 1,
        "operation_id": None,
        "instance_id": "host:1",
        "actor": "system",
        "payload": {},
        "prev_hash": GENESIS_HASH,
        **changes,
    }


def test_a_lone_surrogate_in_an_envelope_field_is_refused() -> None:
    with pytest.raises(CanonicalizationError, match="lone surrogate"):
        chain_hash(_envelope(actor="x\ud800"))


def test_a_prev_hash_with_no_ascii_form_is_refused() -> None:
    with pytest.raises(UnicodeEncodeError):
        chain_hash(_envelope(prev_hash="é" * 64))
