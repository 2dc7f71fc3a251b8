"""A keyed log against someone who can write the database but does not hold the key (issue 13, items 2
and 3): the guards dropped, rows rewritten with every hash recomputed, the tail deleted, checkpoints
lowered, edited or dropped, a body edited. Each is found by ``verify`` and by start-up's
``check_integrity`` (a fresh process opening the log), and a log that failed refuses appends."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from confledger.store import Checkpoint, EventLog, NewEvent, SecretCipher
from confledger.store.chain import chain_hash
from confledger.store.errors import (
    ConfigBodyMismatch,
    EventSchemaError,
    HashSchemeTooNew,
    IntegrityFailed,
    IntegrityKeyError,
)
from confledger.store.events import ConfigApplied, InstanceStarted
from confledger.store.integrity import (
    CONFIG_HASH_KEYED,
    CONFIG_HASH_NEWEST,
    CONFIG_HASH_SEALS_MORE,
    LINK_HMAC,
    IntegrityKeys,
    config_hash_as,
)
from confledger.store.schema import config_versions, events, integrity_records, projection_checkpoints
from confledger.store.secrets import SEALED_MARKER, classify_secrets, digested_paths

EVENTS_IN_LOG = 8
TAMPERED = 5  # after the first and before the head
SECRET_BODY = {"name": "shop", "database": {"host": "db", "password": "Summer2024!"}}
SECRET_PATHS = [("database", "password")]


def drop_guards(log: EventLog) -> None:
    if log.dialect == "sqlite":
        names = [
            "events_refuse_update",
            "events_refuse_delete",
            "config_versions_refuse_update",
            "config_versions_refuse_delete",
            "integrity_key_refuse_update",
            "integrity_key_refuse_delete",
        ]
        statements = [f"DROP TRIGGER {name}" for name in names]
    else:
        statements = [
            "DROP TRIGGER events_refuse_change ON events",
            "DROP TRIGGER config_versions_refuse_change ON config_versions",
            "DROP TRIGGER integrity_key_refuse_change ON integrity",
        ]
    with log.engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))


@pytest.fixture
def key() -> str:
    return SecretCipher.generate_key()


@pytest.fixture
def anchor(tmp_path: Path) -> Path:
    return tmp_path / "outside-the-database.anchor"


@pytest.fixture
def open_keyed(database_url: str, key: str, anchor: Path) -> Iterator[Callable[..., EventLog]]:
    """Opens the log as another process would: the same key and anchor file unless told otherwise."""
    opened: list[EventLog] = []

    def opener(**options: Any) -> EventLog:
        settings = {"cipher": SecretCipher([key]), "anchor_path": anchor, "instance_id": "test", **options}
        log = EventLog(database_url, **settings)
        opened.append(log)
        return log

    yield opener
    for log in opened:
        log.close()


@pytest.fixture
def keyed(open_keyed: Callable[..., EventLog]) -> EventLog:
    """A verified keyed log: a stored config with a secret, eight events, a checkpoint; guards dropped."""
    log = open_keyed()
    config = log.prepare_config(SECRET_BODY, SECRET_PATHS)
    log.append(
        [NewEvent(ConfigApplied(hash=config.hash, previous_hash=None))],
        configs=[config],
    )
    for pid in range(EVENTS_IN_LOG - 1):
        log.append([NewEvent(InstanceStarted(version="0.1.0", host="host", pid=pid))])
    log.save_checkpoint(Checkpoint("stats", 1, EVENTS_IN_LOG, {"count": EVENTS_IN_LOG}))
    assert log.verify().ok
    assert log.check_integrity().ok
    drop_guards(log)
    return log


def rows(log: EventLog) -> list[dict[str, Any]]:
    with log.engine.connect() as connection:
        return [row._asdict() for row in connection.execute(sa.select(events).order_by(events.c.position))]


def assert_found(open_keyed: Callable[..., EventLog], keyed: EventLog, code: str) -> None:
    """``verify`` names ``code``; a fresh process's start-up check does too and then refuses appends."""
    report = keyed.verify()
    assert not report.ok
    assert report.code == code, report.reason
    restarted = open_keyed()
    at_start = restarted.check_integrity()
    assert not at_start.ok
    assert at_start.code == code, at_start.reason
    with pytest.raises(IntegrityFailed) as refused:
        restarted.append([NewEvent(InstanceStarted(version="0.1.0", host="h", pid=1))])
    assert refused.value.code == "integrity_failed"
    assert refused.value.reason == code


def test_new_events_are_linked_with_an_hmac_under_the_link_key(keyed: EventLog, key: str) -> None:
    stored = rows(keyed)
    assert {row["link_version"] for row in stored} == {LINK_HMAC}
    assert all(row["hash"] != chain_hash(row) for row in stored)  # not the public sha256


# The forger rewrites the tail from TAMPERED on, recomputing every link with the public algorithm:
# once under the old scheme's number (a downgrade), once still claiming the keyed scheme.
@pytest.mark.parametrize(("claimed_version", "code"), [(1, "link_downgraded"), (LINK_HMAC, "link_mismatch")])
def test_a_rewritten_tail_with_recomputed_keyless_hashes_is_found(
    open_keyed: Callable[..., EventLog], keyed: EventLog, claimed_version: int, code: str
) -> None:
    stored = rows(keyed)
    previous = stored[TAMPERED - 2]["hash"]
    with keyed.engine.begin() as connection:
        for row in stored[TAMPERED - 1 :]:
            forged = {**row, "actor": "mallory", "prev_hash": previous, "link_version": claimed_version}
            forged["hash"] = previous = chain_hash(forged)
            connection.execute(
                events.update()
                .where(events.c.position == row["position"])
                .values(
                    actor="mallory",
                    prev_hash=forged["prev_hash"],
                    hash=forged["hash"],
                    link_version=claimed_version,
                )
            )
    report = keyed.verify()
    assert report.first_broken_position == TAMPERED
    assert_found(open_keyed, keyed, code)


def test_an_event_payload_that_is_not_json_is_found_where_it_is(keyed: EventLog) -> None:
    if keyed.dialect == "postgresql":
        pytest.skip("PostgreSQL's json type refuses text that is not JSON")
    with keyed.engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE events SET payload = '{{\"pid\": 1' WHERE position = {TAMPERED}"))
    report = keyed.verify()  # a broken link at that event, not a JSONDecodeError out of the row
    assert (report.code, report.first_broken_position) == ("link_mismatch", TAMPERED)
    with pytest.raises(EventSchemaError) as refused:  # and reading it is refused with a reason code
        keyed.read(TAMPERED - 1, limit=1)
    assert refused.value.code == "invalid_payload"


# (column, stored value, verify's code, a read's code or None when the read does not take that column).
# SQLite keeps any text in any column; each such row is reported at its position with a reason code.
NOT_OF_ITS_TYPE = [
    ("occurred_at", "'noon'", "link_mismatch", "invalid_event"),  # a time that is none
    ("schema_version", "'two'", "link_mismatch", "invalid_event"),  # a version that is no number
    ("event_id", "'zzz'", "link_mismatch", "invalid_event"),  # an id that is no UUID
    ("operation_id", "'not-a-uuid'", "link_mismatch", "invalid_event"),
    ("link_version", "'x'", "link_downgraded", None),  # a link scheme that is none
]


@pytest.mark.parametrize(("column", "value", "verify_code", "read_code"), NOT_OF_ITS_TYPE)
def test_a_value_not_of_its_columns_type_is_reported_where_it_is(
    keyed: EventLog, column: str, value: str, verify_code: str, read_code: str | None
) -> None:
    if keyed.dialect == "postgresql":
        pytest.skip("PostgreSQL's columns refuse a value of another type")
    with keyed.engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE events SET {column} = {value} WHERE position = {TAMPERED}"))
    report = keyed.verify()  # a report, not a ValueError out of the rows
    assert (report.code, report.first_broken_position) == (verify_code, TAMPERED)
    if read_code is None:
        assert len(keyed.read(0)) == EVENTS_IN_LOG
        return
    with pytest.raises(EventSchemaError) as refused:
        keyed.read(TAMPERED - 1, limit=1)
    assert refused.value.code == read_code


def test_an_event_payload_stored_with_other_spacing_still_verifies(keyed: EventLog) -> None:
    # The same payload spaced as another serializer writes it (an older release's rows): the link is
    # checked on the stored text first, then on its canonical encoding, which is what it covers.
    with keyed.engine.connect() as connection:
        stored = connection.execute(
            sa.select(sa.cast(events.c.payload, sa.Text)).where(events.c.position == TAMPERED)
        ).scalar_one()
    respaced = json.dumps(json.loads(stored), indent=1)
    assert respaced != stored
    with keyed.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE events SET payload = :text WHERE position = :position"),
            {"text": respaced, "position": TAMPERED},
        )
    assert keyed.verify().ok
    # A changed value under the same spacing is still a broken link.
    edited = respaced.replace(f'"pid": {TAMPERED - 2}', '"pid": 99')
    assert edited != respaced
    with keyed.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE events SET payload = :text WHERE position = :position"),
            {"text": edited, "position": TAMPERED},
        )
    report = keyed.verify()
    assert (report.code, report.first_broken_position) == ("link_mismatch", TAMPERED)


def test_a_deleted_tail_with_its_checkpoints_dropped_is_found_by_the_anchor(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    with keyed.engine.begin() as connection:
        connection.execute(events.delete().where(events.c.position > EVENTS_IN_LOG - 3))
        connection.execute(projection_checkpoints.delete())
    assert_found(open_keyed, keyed, "truncated")


def test_a_deleted_tail_with_lowered_checkpoints_is_found(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    cut = EVENTS_IN_LOG - 3
    with keyed.engine.begin() as connection:
        connection.execute(events.delete().where(events.c.position > cut))
        connection.execute(projection_checkpoints.update().values(position=cut))
    # The lowered checkpoint's MAC no longer holds: that is found first, before the anchor.
    assert_found(open_keyed, keyed, "checkpoint_mac")


def test_an_edited_checkpoint_is_found_and_never_restored(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    with keyed.engine.begin() as connection:
        connection.execute(
            projection_checkpoints.update()
            .where(projection_checkpoints.c.name == "stats")
            .values(state={"count": 1_000_000})
        )
    assert keyed.load_checkpoint("stats") is None  # the fold starts from 0 rather than from this
    assert_found(open_keyed, keyed, "checkpoint_mac")


def stored_state(log: EventLog, name: str) -> str:
    with log.engine.connect() as connection:
        return str(
            connection.execute(
                sa.select(sa.cast(projection_checkpoints.c.state, sa.Text)).where(
                    projection_checkpoints.c.name == name
                )
            ).scalar_one()
        )


def set_stored_state(log: EventLog, name: str, text: str) -> None:
    # As text, past the column's serializer: what is in the row is exactly ``text``.
    with log.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE projection_checkpoints SET state = :text WHERE name = :name"),
            {"text": text, "name": name},
        )


def test_a_checkpoint_whose_state_is_not_json_is_found_and_never_restored(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    if keyed.dialect == "postgresql":
        pytest.skip("PostgreSQL's json type refuses text that is not JSON")
    set_stored_state(keyed, "stats", '{"count": 8')  # cut short, as a torn write leaves it
    assert keyed.load_checkpoint("stats") is None
    assert_found(open_keyed, keyed, "checkpoint_mac")


def test_a_checkpoint_stored_with_other_spacing_still_holds(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    # The same state, spaced as another serializer writes it (an older release let the column's own
    # serializer write the text): its MAC holds for its canonical encoding, and it is restored.
    canonical = stored_state(keyed, "stats")
    set_stored_state(keyed, "stats", canonical.replace(":", ": ").replace(",", ", "))
    assert stored_state(keyed, "stats") != canonical
    assert keyed.load_checkpoint("stats") == Checkpoint("stats", 1, EVENTS_IN_LOG, {"count": EVENTS_IN_LOG})
    reopened = open_keyed()
    assert reopened.check_integrity().ok


def test_a_lowered_anchor_file_is_found(
    open_keyed: Callable[..., EventLog], keyed: EventLog, anchor: Path
) -> None:
    # Both slots lowered (without the key their MACs cannot be redone): the file holds no intact anchor.
    text = anchor.read_text()
    anchor.write_text(
        text.replace(f'"position":{EVENTS_IN_LOG}', '"position":2').replace(
            f'"position":{EVENTS_IN_LOG - 1}', '"position":1'
        )
    )
    assert anchor.read_text() != text
    assert_found(open_keyed, keyed, "anchor_mismatch")


def test_an_edited_body_is_found_and_never_handed_out(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    with keyed.engine.connect() as connection:
        (full_hash,) = connection.execute(sa.select(config_versions.c.hash)).one()
        sealed = connection.execute(sa.select(config_versions.c.body)).scalar_one()
    with keyed.engine.begin() as connection:
        connection.execute(config_versions.update().values(body={**sealed, "name": "evil"}))
    with pytest.raises(ConfigBodyMismatch) as refused:
        keyed.get_config(full_hash)
    assert refused.value.code == "config_body_mismatch"
    # Nor to another instance following the log (the body read with the event that applied it): its
    # read fails as the lookup does, and it stays on the config it has.
    with pytest.raises(ConfigBodyMismatch):
        open_keyed(instance_id="follower").decided_elsewhere(0)
    report = keyed.verify()
    assert report.config_hash == full_hash
    assert report.first_broken_position == 1
    assert report.code == "config_body_mismatch"
    # Start-up verified past position 1 already, but its check always takes in the newest config.applied
    # (the config it would restore) and the bodies named from there: it finds the edit too.
    at_start = open_keyed().check_integrity()
    assert (at_start.ok, at_start.code, at_start.config_hash) == (False, "config_body_mismatch", full_hash)


def test_a_deleted_body_of_an_applied_config_is_found(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    # The row of a config the log applied is gone: nothing can restore or roll back to it, and `show`
    # says no such config. The chain itself holds, so only the bodies' check can see it.
    with keyed.engine.connect() as connection:
        (full_hash,) = connection.execute(sa.select(config_versions.c.hash)).one()
    with keyed.engine.begin() as connection:
        connection.execute(config_versions.delete())
    report = keyed.verify()
    assert (report.ok, report.code, report.config_hash) == (False, "config_body_mismatch", full_hash)
    assert report.first_broken_position == 1  # the config.applied that names it
    assert "deleted" in (report.reason or "")
    at_start = open_keyed().check_integrity()
    assert (at_start.ok, at_start.code, at_start.config_hash) == (False, "config_body_mismatch", full_hash)


def test_a_stored_body_that_is_not_json_is_found_and_never_handed_out(keyed: EventLog) -> None:
    if keyed.dialect == "postgresql":
        pytest.skip("PostgreSQL's json type refuses text that is not JSON")
    with keyed.engine.connect() as connection:
        (full_hash,) = connection.execute(sa.select(config_versions.c.hash)).one()
    with keyed.engine.begin() as connection:
        connection.execute(sa.text('UPDATE config_versions SET body = \'{"name": "sh\''))
    for reveal in (True, False):  # applying it, and showing it sealed
        with pytest.raises(ConfigBodyMismatch) as refused:
            keyed.get_config(full_hash, reveal=reveal)
        assert refused.value.code == "config_body_mismatch"
    report = keyed.verify()  # a report naming the body, not a JSONDecodeError
    assert (report.ok, report.code, report.config_hash) == (False, "config_body_mismatch", full_hash)


def test_an_edited_key_record_is_found(open_keyed: Callable[..., EventLog], keyed: EventLog) -> None:
    # Moving keyed_from past the head would let a forger write keyless links; its MAC stops that.
    with keyed.engine.begin() as connection:
        value = connection.execute(
            sa.select(integrity_records.c.value).where(integrity_records.c.name == "key")
        ).scalar_one()
        connection.execute(
            integrity_records.update()
            .where(integrity_records.c.name == "key")
            .values(value={**value, "keyed_from": 10_000})
        )
    assert_found(open_keyed, keyed, "key_record")


def test_another_key_is_a_clear_error_naming_the_setting(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    other = open_keyed(cipher=SecretCipher([SecretCipher.generate_key()]))
    with pytest.raises(IntegrityKeyError, match="CONFLEDGER_ENCRYPTION_KEY") as wrong:
        other.check_integrity()
    assert "same key" in str(wrong.value)
    with pytest.raises(IntegrityKeyError, match="CONFLEDGER_SIGNING_KEY"):
        open_keyed(signing_key="s" * 40).append([NewEvent(InstanceStarted(version="0", host="h", pid=1))])


def test_a_rotated_key_list_still_finds_the_key_the_log_was_signed_with(
    open_keyed: Callable[..., EventLog], keyed: EventLog, key: str
) -> None:
    rotated = open_keyed(cipher=SecretCipher([SecretCipher.generate_key(), key]))
    rotated.append([NewEvent(InstanceStarted(version="0.2.0", host="h", pid=2))])
    assert rotated.verify().ok


def test_a_keyed_log_is_not_appended_to_without_its_key(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    keyless = open_keyed(cipher=None)
    with pytest.raises(IntegrityKeyError, match="CONFLEDGER_ENCRYPTION_KEY or CONFLEDGER_SIGNING_KEY"):
        keyless.append([NewEvent(InstanceStarted(version="0", host="h", pid=1))])
    with pytest.raises(IntegrityKeyError):
        keyless.verify()
    assert keyless.head() == EVENTS_IN_LOG  # reading needs no key


def test_start_up_verifies_only_the_tail_since_the_last_verified_position(
    open_keyed: Callable[..., EventLog], keyed: EventLog
) -> None:
    keyed.append([NewEvent(InstanceStarted(version="0.1.0", host="host", pid=99))])
    applied = keyed.last_of_type("config.applied")
    assert applied is not None
    report = open_keyed().check_integrity()
    assert report.ok
    # Positions 1-8 were verified by the fixture's check: what is checked again is the newest
    # config.applied (the config a start restores) and what follows it, not the whole log.
    assert report.checked == keyed.head() - applied.position + 1


def test_the_config_hash_takes_secrets_only_as_keyed_digests(keyed: EventLog, key: str) -> None:
    stored = keyed.get_config(keyed.read(limit=1)[0].payload.hash)  # type: ignore[attr-defined]
    assert stored.body == SECRET_BODY
    assert stored.hash == config_hash_as(SECRET_BODY, SECRET_PATHS, 2, keyed.integrity().keys)
    other_key = IntegrityKeys(b"x" * 32, origin="guess")
    assert stored.hash != config_hash_as(SECRET_BODY, SECRET_PATHS, 2, other_key)


# --- secrets only the sealing rules know (hash scheme 3) -----------------------------------------------

WIDER_BODY = {
    "name": "shop",
    "database": {"password": "Summer2024!"},
    "smtp_pass": "Winter2024!",
    "replica_url": "postgresql://app:Autumn2024!@replica/shop",
}


def test_a_secret_only_the_sealing_rules_know_is_sealed_and_its_hash_is_unchanged(
    open_keyed: Callable[..., EventLog],
) -> None:
    log = open_keyed()
    secrets_found = classify_secrets(WIDER_BODY)
    prepared = log.prepare_config(WIDER_BODY, secrets_found, digested=digested_paths(secrets_found))
    # The hash the release before the sealing rules gave this body: only the password as a digest, so
    # rollback pins, old instances of a fleet and hashes in tickets still name the same config.
    assert prepared.hash == log.hash_config(WIDER_BODY, [("database", "password")])
    assert prepared.hash_version == CONFIG_HASH_SEALS_MORE
    log.append([NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None))], configs=[prepared])

    with log.engine.connect() as connection:
        stored_text = connection.execute(sa.select(sa.cast(config_versions.c.body, sa.Text))).scalar_one()
    for plain in ("Summer2024!", "Winter2024!", "Autumn2024!"):
        assert plain not in stored_text
    assert log.get_config(prepared.hash).body == WIDER_BODY  # re-hashed and accepted
    assert log.get_config(prepared.hash, reveal=False).secret_paths == set(secrets_found)
    assert log.verify().ok


def test_a_body_with_no_such_secret_keeps_scheme_2(open_keyed: Callable[..., EventLog]) -> None:
    log = open_keyed()
    secrets_found = classify_secrets(SECRET_BODY)
    prepared = log.prepare_config(SECRET_BODY, secrets_found, digested=digested_paths(secrets_found))
    assert prepared.hash_version == CONFIG_HASH_KEYED


def test_a_sealed_value_moved_between_digested_and_clear_is_an_edited_body(
    open_keyed: Callable[..., EventLog],
) -> None:
    log = open_keyed()
    secrets_found = classify_secrets(WIDER_BODY)
    prepared = log.prepare_config(WIDER_BODY, secrets_found, digested=digested_paths(secrets_found))
    log.append([NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None))], configs=[prepared])
    drop_guards(log)
    sealed = dict(prepared.sealed_body)
    (token,) = sealed["smtp_pass"].values()
    with log.engine.begin() as connection:
        connection.execute(
            config_versions.update().values(body={**sealed, "smtp_pass": {SEALED_MARKER: token}})
        )
    with pytest.raises(ConfigBodyMismatch):
        log.get_config(prepared.hash)
    assert log.verify().code == "config_body_mismatch"


def test_a_body_of_a_newer_hash_scheme_is_refused_as_such_and_never_reported_as_edited(
    open_keyed: Callable[..., EventLog],
) -> None:
    # An instance left behind in a rolling upgrade meets a body a newer release stored under a scheme it
    # does not know. It cannot re-hash it, so it refuses it wherever it would refuse an edited body, but
    # says why (upgrade), and writes no integrity.check_failed into the log the newer instances share.
    newer = open_keyed(instance_id="newer")
    prepared = newer.prepare_config(SECRET_BODY, SECRET_PATHS)
    from_the_future = dataclasses.replace(prepared, hash_version=CONFIG_HASH_NEWEST + 1)
    newer.append([NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=None))], configs=[from_the_future])

    older = open_keyed(instance_id="older")
    with pytest.raises(HashSchemeTooNew) as refused:
        older.get_config(prepared.hash)
    assert isinstance(refused.value, ConfigBodyMismatch)
    assert refused.value.code == "hash_scheme_too_new"
    assert refused.value.scheme == CONFIG_HASH_NEWEST + 1
    assert "upgrade" in refused.value.message
    assert "changed in the database" not in refused.value.message

    report = older.verify()
    assert not report.ok
    assert report.code == "hash_scheme_too_new"
    assert report.failed_on_a_body
    assert report.config_hash == prepared.hash
    head = older.head()
    older.record_integrity_failure(report)
    assert older.head() == head  # nothing recorded: it is no edit

    # A follower answers the change as one it cannot take (drifted) instead of stopping at it.
    _head, decided = older.decided_elsewhere(0)
    [(event, found)] = decided
    assert event.payload == ConfigApplied(hash=prepared.hash, previous_hash=None)
    assert isinstance(found, HashSchemeTooNew)
