"""The append path's shortcuts give exactly what the general forms give: the chain hash is part of the
on-disk format, so a byte of difference would make every later event fail verification."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confledger import store
from confledger.store.canonical import GENESIS_HASH, canonical_json
from confledger.store.errors import CanonicalizationError
from confledger.store.log import _chain_hash_of_text, _timestamp, chain_hash

# --- the chain hash of an envelope whose payload is already text -----------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
# Every character, surrogates included: a quote, a backslash, a control character or a lone surrogate in
# any text field must come out as canonical_json writes (or refuses) it.
any_text = st.text(st.characters(exclude_categories=()), max_size=12) | st.text(
    st.sampled_from(
        ['"', "\\", "/", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "\ud800", "\U0001f600", "a"]
    ),
    max_size=6,
)


class _Int(int):
    pass


class _Text(str):
    pass


def _envelopes(
    position: st.SearchStrategy[Any],
    event_type: st.SearchStrategy[Any],
    schema_version: st.SearchStrategy[Any],
    instance_id: st.SearchStrategy[Any],
    actor: st.SearchStrategy[Any],
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "position": position,
            "event_id": st.uuids() | st.uuids().map(str) | any_text,
            "occurred_at": st.datetimes(timezones=st.just(UTC) | st.none()),
            "type": event_type,
            "schema_version": schema_version,
            "operation_id": st.none() | st.uuids() | st.uuids().map(lambda u: str(u).upper()) | any_text,
            "instance_id": instance_id,
            "actor": actor,
            "payload": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
            "prev_hash": st.just(GENESIS_HASH) | st.text("0123456789abcdef", min_size=64, max_size=64),
        }
    )


# What the append path hands over: ints and strs, with any text in the strs.
plain_envelopes = _envelopes(
    position=st.integers(min_value=1, max_value=2**62),
    event_type=st.sampled_from(["config.applied", "operation.started"]) | any_text,
    schema_version=st.integers(min_value=1, max_value=9),
    instance_id=any_text,
    actor=any_text,
)
# Anything else a caller could put in a NewEvent or an envelope: the general path's business.
odd_envelopes = _envelopes(
    position=st.integers(min_value=1, max_value=99) | st.builds(_Int, st.integers(1, 99)),
    event_type=any_text | st.builds(_Text, any_text) | st.none(),
    schema_version=st.integers(min_value=1, max_value=9) | st.booleans() | st.builds(_Int, st.integers(1, 9)),
    instance_id=any_text | st.builds(_Text, any_text),
    actor=any_text | st.none() | st.integers() | st.builds(_Text, any_text),
)


def _outcome(function: Any, *args: Any) -> str:
    try:
        return "hash:" + function(*args)
    except CanonicalizationError as exc:
        return "refused:" + str(exc)


def _same_hash_or_refusal(envelope: dict[str, Any]) -> None:
    try:
        payload_text = canonical_json(envelope["payload"])
    except CanonicalizationError:
        return  # refused before anything is hashed
    assert _outcome(_chain_hash_of_text, envelope, payload_text) == _outcome(chain_hash, envelope)


@given(envelope=plain_envelopes)
def test_the_written_out_envelope_hashes_as_chain_hash_does(envelope: dict[str, Any]) -> None:
    _same_hash_or_refusal(envelope)


@given(envelope=odd_envelopes)
def test_envelope_fields_of_other_types_hash_as_chain_hash_does(envelope: dict[str, Any]) -> None:
    _same_hash_or_refusal(envelope)


def _envelope(**changes: Any) -> dict[str, Any]:
    """A plain envelope with ``changes`` applied."""
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


def test_a_lone_surrogate_in_an_envelope_field_is_refused_as_chain_hash_refuses_it() -> None:
    envelope = _envelope(actor="x\ud800")
    with pytest.raises(CanonicalizationError, match="lone surrogate"):
        _chain_hash_of_text(envelope, "{}")
    with pytest.raises(CanonicalizationError, match="lone surrogate"):
        chain_hash(envelope)


def test_a_prev_hash_with_no_ascii_form_fails_as_chain_hash_fails() -> None:
    envelope = _envelope(prev_hash="é" * 64)
    with pytest.raises(UnicodeEncodeError):
        _chain_hash_of_text(envelope, "{}")
    with pytest.raises(UnicodeEncodeError):
        chain_hash(envelope)


# --- the timestamp that is hashed --------------------------------------------------------------------------


@given(
    moment=st.datetimes(timezones=st.none() | st.just(UTC)),
    offset_minutes=st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_the_hashed_timestamp_is_the_strftime_form_at_every_date(
    moment: datetime, offset_minutes: int
) -> None:
    if moment.tzinfo is not None:
        # On the first or last day of the calendar another zone may not exist: kept in UTC then.
        with contextlib.suppress(OverflowError):
            moment = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    assert _timestamp(moment) == utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@given(moment=st.datetimes(timezones=st.just(UTC)))
def test_the_stored_sqlite_timestamp_is_the_strftime_form_at_every_date(moment: datetime) -> None:
    log = object.__new__(store.log.EventLog)
    log._raw = store.log._RAW_SQLITE
    assert log._stored_timestamp(moment) == moment.strftime("%Y-%m-%d %H:%M:%S.%f")
