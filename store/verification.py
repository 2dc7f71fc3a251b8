"""The log's integrity state (``Integrity``) and the checks ``EventLog.verify`` runs beyond the links.

``EventLog`` keeps the orchestration (``integrity``, ``verify``, ``check_integrity``) and what appends
need; here is how the key state is resolved and what each check looks at besides the chain
(``store.chain.verify_chain``): the checkpoints, the stored bodies and the anchor file. Each check reads
in a transaction of its own, opened through the log's ``read`` it is handed. Kept apart from
``store.log`` so the log's module holds reading and writing, and the checks can be read in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from confledger.store.canonical import GENESIS_HASH
from confledger.store.chain import VerifyReport, head_of, verify_chain
from confledger.store.checkpoints import sorted_checkpoints
from confledger.store.configs import body_mismatches
from confledger.store.database import sqlite_path, translate_errors
from confledger.store.errors import ConfledgerError, IntegrityKeyError
from confledger.store.events import ConfigApplied, RecordedEvent
from confledger.store.integrity import (
    AnchorUnreadable,
    IntegrityKeys,
    KeyRecord,
    candidate_keys,
    load_key_record,
    load_verified,
    read_anchor,
    save_verified,
)
from confledger.store.schema import config_versions, events
from confledger.store.secrets import SecretCipher

__all__ = [
    "Integrity",
    "anchor_check",
    "body_failure",
    "check_log",
    "checkpoint_failure",
    "event_link_holds",
    "forget_verified",
    "has_integrity_table",
    "key_file_keys",
    "key_mismatch",
    "needs_key",
    "read_integrity",
    "start_check_from",
    "verified_position",
]

# The log's read transaction (``EventLog._read()``): one consistent snapshot per call.
Read = Callable[[], AbstractContextManager[Connection]]


@dataclass(frozen=True, slots=True)
class Integrity:
    """The key this process signs with (None: keyless) and the log's key record (None: not keyed yet).

    ``record_intact``: the record's MAC holds under ``keys`` (an edited record is reported, not trusted).
    """

    keys: IntegrityKeys | None
    record: KeyRecord | None
    record_intact: bool = True

    @property
    def keyed_from(self) -> int | None:
        return None if self.record is None else self.record.keyed_from


def read_integrity(read: Read, signing_key: str | None, cipher: SecretCipher | None, url: URL) -> Integrity:
    """The key this process signs with and the log's key record (``EventLog.integrity`` keeps it).

    With a key record, the configured key must be the one it names (any of the encryption keys, so a
    rotated key list still finds the old one): otherwise ``IntegrityKeyError`` names the setting.
    """
    candidates = candidate_keys(signing_key, cipher) or key_file_keys(url)
    with read() as connection:
        record = load_key_record(connection) if has_integrity_table(connection) else None
    if record is None:
        return Integrity(candidates[0] if candidates else None, None)
    if not candidates:
        return Integrity(None, record, record_intact=False)
    matching = [keys for keys in candidates if keys.check_value == record.check_value]
    if not matching:
        raise key_mismatch(candidates[0])
    keys = matching[0]
    return Integrity(keys, record, keys.record_mac_holds("integrity.key", record.value(), record.mac))


def key_mismatch(keys: IntegrityKeys) -> IntegrityKeyError:
    return IntegrityKeyError(
        f"the key from {keys.origin} is not the key this log was written with (its key check value "
        "differs): every instance sharing a log needs the same key"
    )


def key_file_keys(url: URL) -> list[IntegrityKeys]:
    """With no key given, an SQLite log's links are checked with the key file ``serve`` keeps beside it
    (``<db>.key``), read only: a plain ``EventLog(url)`` verifies what the service wrote."""
    database = sqlite_path(url.render_as_string(hide_password=False))
    key_file = None if database is None else database.with_name(database.name + ".key")
    if key_file is None or not key_file.is_file():
        return []
    try:
        return candidate_keys(None, SecretCipher.from_key_file(key_file, create=False))
    except ConfledgerError:
        return []  # unreadable or not a key: as if there were none (verify then asks for the key)


def has_integrity_table(connection: Connection) -> bool:
    # A read-only inspector may open a log migrated only to 0001: it has no integrity records.
    return connection.dialect.has_table(connection, "integrity")


def needs_key(integrity: Integrity) -> IntegrityKeys | None:
    if integrity.record is not None and integrity.keys is None:
        raise IntegrityKeyError(
            "this log is keyed: checking it needs the key it was written with "
            "(CONFLEDGER_ENCRYPTION_KEY, the key file beside an SQLite log, or CONFLEDGER_SIGNING_KEY)"
        )
    return integrity.keys


def verified_position(read: Read, integrity: Integrity) -> tuple[int, str]:
    """The position (and its hash) start-up's check last verified up to, from the MACed record."""
    keys = needs_key(integrity)
    if keys is None:
        return 0, GENESIS_HASH
    with read() as connection:
        if not has_integrity_table(connection):
            return 0, GENESIS_HASH
        return load_verified(connection, keys) or (0, GENESIS_HASH)


def start_check_from(read: Read, integrity: Integrity, applied: RecordedEvent | None) -> tuple[int, str]:
    """Where start-up's check begins: after the position last verified, or before ``applied`` (the
    newest ``config.applied``) if that lies earlier. The instance restores the config that event names,
    so an edit of it (pointing the service at another stored config) must be found before it is served,
    whenever it was made; the events before it are left to ``verify``. The event's own ``prev_hash`` is
    where the chain is taken up: its link covers that field, so an edit there is found too."""
    verified = verified_position(read, integrity)
    if applied is None or applied.position > verified[0]:
        return verified
    return applied.position - 1, applied.prev_hash


def event_link_holds(read: Read, integrity: Integrity, event: RecordedEvent) -> bool:
    """Whether ``event``'s own link holds, taken up at its stored ``prev_hash`` (which the link covers):
    an edit of that one event is found whatever the events before it hold."""
    with read() as connection:
        report = verify_chain(
            connection,
            integrity.keys,
            integrity.keyed_from,
            after=event.position - 1,
            previous=event.prev_hash,
        )
    return report.first_broken_position != event.position


def forget_verified(engine: Engine, integrity: Integrity) -> None:
    """Move start-up's verified position back to the start of the log: a break ``verify`` found below it
    is then found again by every instance's next start-up, which refuses writes (a restart must not lift
    what a full check found). No-op on a keyless log."""
    if integrity.keys is None:
        return
    with translate_errors(engine.url), engine.begin() as connection:
        save_verified(connection, integrity.keys, 0, GENESIS_HASH)


def checkpoint_failure(read: Read, integrity: Integrity, report: VerifyReport) -> VerifyReport | None:
    """A checkpoint whose MAC does not hold, or one beyond the log's end (its tail was deleted).

    Checkpoints are read before the head: a writer appending and checkpointing meanwhile can only
    make the head read after them larger, never a false "cut off"."""
    keys = integrity.keys
    with read() as connection:
        usable, forged = sorted_checkpoints(connection, keys, integrity.keyed_from)
        if keys is not None and integrity.keyed_from is not None and forged:
            names = ", ".join(checkpoint.name for checkpoint in forged[:5])
            reason = f"checkpoint(s) {names} were changed in the database (their MAC does not hold)"
            return VerifyReport(False, report.checked, report.head, None, reason, "checkpoint_mac")
        end = head_of(connection)[0]
    reached = max((checkpoint.position for checkpoint in usable), default=None)
    if reached is None or reached <= end:
        return None
    reason = (
        f"the log ends at position {end} but a projection was checkpointed at {reached}: "
        "the newest events were deleted"
    )
    return VerifyReport(False, report.checked, report.head, end + 1, reason, "truncated")


def body_failure(
    read: Read,
    cipher: SecretCipher | None,
    keys: IntegrityKeys | None,
    report: VerifyReport,
    *,
    since: int | None,
    keyed_from: int | None = None,
) -> VerifyReport | None:
    """The first config applied on the keyed log (from ``keyed_from``) whose body is gone, else the first
    stored body that does not hash to its hash (``since``: only configs applied, and bodies first named,
    after that position, and bodies no event names yet)."""
    with read() as connection:
        missing = None if keyed_from is None else _first_missing_body(connection, keyed_from, since=since)
        if missing is not None:
            full_hash, position = missing
            reason = (
                f"config {full_hash[:16]}, applied at position {position}, has no stored body: its row "
                "was deleted in the database; it cannot be restored or rolled back to"
            )
            return VerifyReport(
                False, report.checked, report.head, position, reason, "config_body_mismatch", full_hash
            )
        for full_hash, first, why, code in body_mismatches(connection, cipher, keys, since=since):
            reason = f"config {full_hash[:16]}: {why}"
            return VerifyReport(False, report.checked, report.head, first, reason, code, full_hash)
    return None


def _first_missing_body(
    connection: Connection, keyed_from: int, *, since: int | None
) -> tuple[str, int] | None:
    """The first ``config.applied`` (from ``keyed_from``, after ``since``) naming a hash with no row in
    ``config_versions``.

    The re-hash of the stored bodies cannot see a row that is not there. Only the keyed part of a log is
    looked at: ``EventLog.append`` lets a caller of its own append a ``config.applied`` with no body, and
    a keyless chain shows accidents, not a forger; a keyed log is written by a service, which stores the
    body in the append that names it, and the table refuses deletes, so only a hand that dropped the
    guard leaves an applied config there without one."""
    named = events.c.payload["hash"].as_string()
    query = (
        sa.select(named, events.c.position)
        .select_from(events.outerjoin(config_versions, config_versions.c.hash == named))
        .where(
            events.c.type == ConfigApplied.event_type,
            events.c.position >= keyed_from,
            config_versions.c.hash.is_(None),
        )
        .order_by(events.c.position)
        .limit(1)
    )
    if since is not None:
        query = query.where(events.c.position > since)
    row = connection.execute(query).first()
    return None if row is None else (str(row[0]), int(row[1]))


def anchor_check(
    read: Read, anchor_path: Path | None, integrity: Integrity, report: VerifyReport
) -> VerifyReport:
    """The anchor file outside the database names an event the log must still hold, unchanged: the
    failure if it does not, else ``report``, naming the anchor file when there was one to check."""
    keys, record = integrity.keys, integrity.record
    if keys is None or anchor_path is None:
        return report
    try:
        anchor = read_anchor(anchor_path, keys)
    except AnchorUnreadable as exc:
        return VerifyReport(False, report.checked, report.head, None, str(exc), "anchor_mismatch")
    if anchor is None:
        return report
    if record is None or anchor.log_id != record.log_id:
        reason = (
            f"the anchor file {anchor_path} belongs to another log, or this log's key record was "
            "removed (if this database was replaced on purpose, move the anchor file away)"
        )
        return VerifyReport(False, report.checked, report.head, None, reason, "anchor_mismatch")
    with read() as connection:
        stored = connection.execute(
            sa.select(events.c.hash).where(events.c.position == anchor.position)
        ).scalar()
    if stored is None:
        reason = (
            f"the anchor file says the log reached position {anchor.position}, but it ends at "
            f"{report.head}: the newest events were deleted"
        )
        return VerifyReport(False, report.checked, report.head, report.head + 1, reason, "truncated")
    if stored != anchor.hash:
        reason = f"event {anchor.position} is not the one the anchor file recorded: the tail was rewritten"
        return VerifyReport(False, report.checked, report.head, anchor.position, reason, "anchor_mismatch")
    return replace(report, anchor_checked=str(anchor_path))


def check_log(
    read: Read,
    integrity: Integrity,
    cipher: SecretCipher | None,
    anchor_path: Path | None,
    *,
    after: tuple[int, str] | None,
) -> tuple[VerifyReport, int, str]:
    """What ``EventLog.verify`` (``after`` None) and its start-up check (``after``: the position last
    verified and its hash) check, in order: the key record, the links, the checkpoints, the stored
    bodies, the anchor file. The first failure, or the chain's report; with the head read and its hash."""
    keys = needs_key(integrity)
    start, previous = after if after is not None else (0, GENESIS_HASH)
    with read() as connection:
        head, head_hash = head_of(connection)
        if integrity.record is not None and not integrity.record_intact:
            reason = "the log's key record was changed (its MAC does not hold)"
            return VerifyReport(False, 0, head, None, reason, "key_record"), head, head_hash
        if start:
            stored = connection.execute(sa.select(events.c.hash).where(events.c.position == start)).scalar()
            if stored != previous:
                # Changed since it was verified: the whole chain is checked, to name where.
                start, previous = 0, GENESIS_HASH
        report = verify_chain(connection, keys, integrity.keyed_from, after=start, previous=previous)
    if not report.ok:
        return report, head, head_hash
    for failure in (
        checkpoint_failure(read, integrity, report),
        body_failure(
            read,
            cipher,
            keys,
            report,
            since=start if after is not None else None,
            keyed_from=None if keys is None else integrity.keyed_from,
        ),
    ):
        if failure is not None:
            return failure, head, head_hash
    return anchor_check(read, anchor_path, integrity, report), head, head_hash
