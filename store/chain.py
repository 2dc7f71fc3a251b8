"""The hash chain: how one event's link is made, and the walk that checks every link of a log.

``link_message`` is the byte string a link covers: ``prev_hash`` followed by the canonical envelope
without its hash. Each event stores the scheme its link was made with (``link_version``): 1 is
``sha256(link_message)`` (DESIGN.md's first scheme, every event written before 0002_integrity), 2 is
``HMAC-SHA256(link key, link_message)`` (``store.integrity``). ``link_of`` is the one definition of a link
for both the append path and ``verify``; each event is checked under its own scheme, and from the log's
``keyed_from`` position on only scheme 2 is accepted, so a forger cannot downgrade a tail to the keyless
scheme and recompute it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from confledger.store.canonical import GENESIS_HASH, canonical_json, checked_as_stored, sha256_hex
from confledger.store.errors import ChainBroken
from confledger.store.integrity import LINK_HMAC, LINK_SHA256, IntegrityKeys
from confledger.store.queries import as_read
from confledger.store.schema import events

__all__ = [
    "HEAD",
    "VerifyReport",
    "chain_hash",
    "hashed_timestamp",
    "head_of",
    "link_message",
    "link_of",
    "verify_chain",
]

_VERIFY_BATCH = 2_000

# The newest event's position and hash (no row: an empty log).
HEAD = sa.select(events.c.position, events.c.hash).order_by(events.c.position.desc()).limit(1)


def hashed_timestamp(moment: datetime) -> str:
    """The one text form of ``occurred_at`` that links cover: UTC, microseconds, a ``Z``.

    Both backends keep microseconds; PostgreSQL hands a value back in the session's time zone and
    SQLite without a zone (it is stored in UTC), so every value is normalised to UTC first.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    if moment.year < 1000:
        # strftime leaves such a year unpadded, and links made that way must still verify.
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The text strftime("%Y-%m-%dT%H:%M:%S.%fZ") writes, made by isoformat: strftime parses its format
    # on every call, and every append and every verified event formats one.
    return moment.isoformat(timespec="microseconds") + "Z"


# In an envelope's canonical JSON the keys sort as ..., "operation_id", "payload", "position", ...: the
# payload's member goes right before this text. It occurs once: every "position" inside a string value
# has its quote marks escaped, and no other key begins with "position".
_AFTER_PAYLOAD = ',"position":'


def link_message(envelope: Mapping[str, Any], payload_text: str | None = None) -> bytes:
    """What a link covers: ``prev_hash`` followed by the canonical JSON of the envelope without its hash.

    ``envelope`` holds the event's fields as stored or about to be: ids as UUIDs or their text,
    ``occurred_at`` as a datetime, the payload as its JSON value. ``payload_text`` is the payload's
    canonical JSON when the caller has it already: an append stores that same text in the row, so each
    payload is encoded once. The message is the canonical JSON of the whole envelope either way: canonical
    JSON is the same text nested as alone, so the payload's member is set into the other members' text.
    """
    operation_id = envelope["operation_id"]
    fields = {
        "position": envelope["position"],
        "event_id": str(envelope["event_id"]),
        "occurred_at": hashed_timestamp(envelope["occurred_at"]),
        "type": envelope["type"],
        "schema_version": envelope["schema_version"],
        "operation_id": None if operation_id is None else str(operation_id),
        "instance_id": envelope["instance_id"],
        "actor": envelope["actor"],
        "prev_hash": envelope["prev_hash"],
    }
    prefix = str(envelope["prev_hash"]).encode("ascii")
    before, after_payload, after = canonical_json(fields).partition(_AFTER_PAYLOAD)
    if payload_text is None:
        payload_text = canonical_json(envelope["payload"])
    return prefix + f'{before},"payload":{payload_text}{after_payload}{after}'.encode()


def chain_hash(envelope: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical(envelope without hash))``: link scheme 1, as DESIGN.md defines it."""
    return sha256_hex(link_message(envelope))


def link_of(
    envelope: Mapping[str, Any], version: int, keys: IntegrityKeys | None, payload_text: str | None = None
) -> str | None:
    """The link of ``envelope`` under scheme ``version``; None when it cannot be made (no key, unknown).
    ``payload_text``: the payload's canonical JSON, when the caller has it (``link_message``)."""
    if version == LINK_SHA256:
        return sha256_hex(link_message(envelope, payload_text))
    if version == LINK_HMAC and keys is not None:
        return keys.link_mac(link_message(envelope, payload_text))
    return None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    head: int
    first_broken_position: int | None = None
    reason: str | None = None
    # A stable reason code for a failed check: event_missing, prev_hash_mismatch, link_mismatch,
    # link_downgraded, config_body_mismatch, hash_scheme_too_new, checkpoint_mac, truncated,
    # anchor_mismatch, key_record.
    code: str | None = None
    config_hash: str | None = None
    # The anchor file the log's end was checked against; None when none was (a keyless log has none,
    # and a keyed one's may be on another machine: its newest events could then be cut off unseen).
    anchor_checked: str | None = None

    @property
    def failed_on_a_body(self) -> bool:
        """Whether what failed is a stored config body (edited, deleted, or of a newer release), every
        link of the chain having held."""
        return self.code in ("config_body_mismatch", "hash_scheme_too_new")

    def raise_for_break(self) -> None:
        if not self.ok and self.first_broken_position is not None:
            raise ChainBroken(
                f"chain broken at position {self.first_broken_position}: {self.reason}",
                position=self.first_broken_position,
            )


# Every column, each as readers select it (``queries.as_read``): the payload as its stored text, a time
# that is none as ``UnreadableTime`` (its link then cannot hold, and is reported at its position).
_STORED_ROWS = sa.select(*(as_read(column) for column in events.columns))


def _link_holds(row: Mapping[str, Any], version: int, keys: IntegrityKeys | None) -> bool:
    """Whether the stored hash is the link of the row, its payload given as the text the column holds.

    An append stores the very text its link covers (``link_message``'s ``payload_text``), so the link is
    checked on the stored text (``checked_as_stored``): no payload of the log is parsed and encoded again.
    """
    expected: str = row["hash"]
    try:
        return checked_as_stored(row["payload"], lambda text: link_of(row, version, keys, text) == expected)
    except (AttributeError, TypeError, ValueError):
        # Not JSON, or a value not of its column's type (SQLite keeps any text): the row was edited.
        return False


def head_of(connection: Connection) -> tuple[int, str]:
    """The newest position and its hash; ``(0, GENESIS_HASH)`` for an empty log."""
    row = connection.execute(HEAD).first()
    return (0, GENESIS_HASH) if row is None else (int(row.position), str(row.hash))


def verify_chain(
    connection: Connection,
    keys: IntegrityKeys | None = None,
    keyed_from: int | None = None,
    *,
    after: int = 0,
    previous: str = GENESIS_HASH,
) -> VerifyReport:
    """Recompute every link after position ``after`` (whose hash is ``previous``) read through
    ``connection`` (one read transaction: one state of the log).

    ``keyed_from``: the position from which every link must be keyed (None: the log has no key record,
    so no keyed link may appear). A keyed link needs ``keys``; the caller makes sure it has them.
    """
    expected_position = after + 1
    checked = 0
    head = head_of(connection)[0]
    while True:
        rows = connection.execute(
            _STORED_ROWS.where(events.c.position > after).order_by(events.c.position).limit(_VERIFY_BATCH)
        ).all()
        for row in rows:
            position = int(row.position)
            failure: tuple[str, str] | None = None
            try:
                version = int(row.link_version)
            except (TypeError, ValueError):
                version = -1  # not a scheme at all (SQLite keeps any text): no link can hold
            if position != expected_position:
                reason = f"event {expected_position} is missing (next stored position is {position})"
                return VerifyReport(False, checked, head, expected_position, reason, "event_missing")
            if row.prev_hash != previous:
                failure = ("prev_hash_mismatch", "prev_hash does not match the previous event's hash")
            elif version != LINK_HMAC and keyed_from is not None and position >= keyed_from:
                failure = (
                    "link_downgraded",
                    f"a link of scheme {version} where the log is keyed (from position {keyed_from})",
                )
            elif version == LINK_HMAC and keyed_from is None:
                failure = ("link_downgraded", "a keyed link in a log that has no key record")
            elif not _link_holds(row._asdict(), version, keys):
                failure = ("link_mismatch", "stored hash does not match the event's contents")
            if failure is not None:
                return VerifyReport(False, checked, head, position, failure[1], failure[0])
            previous = row.hash
            expected_position += 1
            checked += 1
        if len(rows) < _VERIFY_BATCH:
            return VerifyReport(True, checked, head)
        after = int(rows[-1].position)
