"""A log written before keyed integrity (fd1e311, schema 0001_initial) upgrades to 0002_integrity without
a row rewritten, verifies under its old schemes, rolls back to its old (plain) hashes, and goes on with
keyed links and keyed hashes; on both backends.

``fixtures/log_before_integrity.json`` holds every row fd1e311's ConfigReloader wrote to SQLite (two
applied configs with a password, checkpoints) and the fixture's own key; ``write_log_before_integrity.py``
beside it wrote it. The rows are copied into a database migrated only to 0001_initial, as they were.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from pydantic import BaseModel, SecretStr

from confledger.api.reloader import ConfigReloader
from confledger.store import EventLog, NewEvent, SecretCipher
from confledger.store import migrate as store_migrate
from confledger.store.canonical import config_hash
from confledger.store.database import create_store_engine, normalize_url
from confledger.store.events import InstanceStarted
from confledger.store.integrity import CONFIG_HASH_PLAIN, LINK_HMAC, LINK_SHA256

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "log_before_integrity.json").read_text("utf-8"))
KEY: str = FIXTURE["encryption_key"]
OLD_PASSWORD, NEW_PASSWORD = FIXTURE["passwords"]
OLD_EVENTS = len(FIXTURE["events"])


class Database(BaseModel):
    host: str
    port: int
    password: SecretStr


class AppConfig(BaseModel):
    name: str
    database: Database


def shop(password: str) -> dict[str, Any]:
    return {"name": "shop", "database": {"host": "db", "port": 5432, "password": password}}


def at_utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# The tables as 0001_initial made them: nothing of 0002 may take part in writing the old rows.
_old = sa.MetaData()
OLD_TABLES = {
    "events": sa.Table(
        "events",
        _old,
        *(sa.Column(name) for name in ("position", "event_id", "type", "schema_version", "operation_id")),
        *(sa.Column(name) for name in ("instance_id", "actor", "prev_hash", "hash")),
        sa.Column("occurred_at", sa.DateTime(timezone=True)),
        sa.Column("payload", sa.JSON),
    ),
    "config_versions": sa.Table(
        "config_versions",
        _old,
        *(sa.Column(name) for name in ("hash", "size_bytes", "first_position")),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("body", sa.JSON),
    ),
    "projection_checkpoints": sa.Table(
        "projection_checkpoints",
        _old,
        *(sa.Column(name) for name in ("name", "version", "position")),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.Column("state", sa.JSON),
    ),
}
TIMES = {"occurred_at", "created_at", "updated_at"}
JSON_TEXT = {"payload", "body", "state"}


@pytest.fixture
def old_log(database_url: str) -> str:
    """The fixture's rows in a database at 0001_initial; yields its URL."""
    engine = create_store_engine(normalize_url(database_url))
    try:
        store_migrate.upgrade(engine, "0001_initial")
        with engine.begin() as connection:
            for name, table in OLD_TABLES.items():
                rows = [
                    {
                        key: at_utc(value)
                        if key in TIMES
                        else json.loads(value)
                        if key in JSON_TEXT
                        else value
                        for key, value in row.items()
                    }
                    for row in FIXTURE[name]
                ]
                connection.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return database_url


def test_the_old_hash_is_the_oracle_the_issue_describes() -> None:
    # What made the upgrade necessary: the old applied hash is sha256 over the password in the clear.
    old_hash = FIXTURE["config_versions"][0]["hash"]
    assert {row["hash"] for row in FIXTURE["config_versions"]} >= {old_hash}
    candidates = [
        f"{season}{year}!"
        for season in ("Spring", "Summer", "Autumn", "Winter")
        for year in range(2000, 2030)
    ]
    found = [
        guess
        for guess in candidates
        if config_hash(shop(guess)) in {r["hash"] for r in FIXTURE["config_versions"]}
    ]
    assert sorted(found) == sorted([OLD_PASSWORD, NEW_PASSWORD])


def test_the_upgrade_rewrites_nothing_and_the_old_log_verifies(old_log: str, tmp_path: Path) -> None:
    with EventLog(old_log, cipher=SecretCipher([KEY]), anchor_path=tmp_path / "anchor") as log:
        assert store_migrate.current_revision(log.engine) == store_migrate.HEAD_REVISION
        stored = log.read()
        assert [(event.position, event.hash) for event in stored] == [
            (row["position"], row["hash"]) for row in FIXTURE["events"]
        ]
        with log.engine.connect() as connection:
            versions = connection.execute(sa.text("SELECT DISTINCT link_version FROM events")).scalars().all()
            hash_versions = (
                connection.execute(sa.text("SELECT DISTINCT hash_version FROM config_versions"))
                .scalars()
                .all()
            )
        assert versions == [LINK_SHA256]
        assert hash_versions == [CONFIG_HASH_PLAIN]
        report = log.verify()  # every body re-hashed under scheme 1, every link under sha256
        assert report.ok, report.reason
        assert report.checked == OLD_EVENTS
        for row in FIXTURE["config_versions"]:
            assert log.get_config(row["hash"]).body["database"]["password"] in (OLD_PASSWORD, NEW_PASSWORD)
        assert log.check_integrity().ok

        # New events are keyed from here on; the old ones keep their links and still verify.
        log.append([NewEvent(InstanceStarted(version="0.2.0", host="h", pid=1))])
        with log.engine.connect() as connection:
            newest = connection.execute(
                sa.text("SELECT link_version FROM events ORDER BY position DESC LIMIT 1")
            ).scalar()
        assert newest == LINK_HMAC
        report = log.verify()
        assert report.ok, report.reason
        assert report.checked == OLD_EVENTS + 1


def test_an_upgraded_log_rolls_back_to_its_old_hashes_and_reloads_with_keyed_ones(
    old_log: str, tmp_path: Path
) -> None:
    old_hash, newer_hash = (
        row["hash"] for row in sorted(FIXTURE["config_versions"], key=lambda r: r["first_position"])
    )
    source = tmp_path / "config.json"
    source.write_text(json.dumps(shop(NEW_PASSWORD)))
    log = EventLog(old_log, cipher=SecretCipher([KEY]), anchor_path=tmp_path / "anchor", instance_id="new:1")

    async def scenario() -> None:
        async with ConfigReloader(log, config_model=AppConfig, config_source=source) as reloader:
            assert reloader.current_hash == newer_hash  # restored under its old hash, body re-hashed
            back = await reloader.rollback_config(old_hash[:12])
            assert back.success, back.error_message
            assert reloader.current_hash == old_hash  # the old plain hash, not a new one for the same body
            assert reloader.current is not None
            assert reloader.current.config.database.password.get_secret_value() == OLD_PASSWORD
            # The same file read again now hashes under the keyed scheme: another hash, one no guess finds.
            source.write_text(json.dumps(shop(OLD_PASSWORD)))
            reloaded = await reloader.reload_config(force=True)
            assert reloaded.success
            assert reloaded.new_config_hash not in (old_hash, newer_hash)
            assert reloaded.new_config_hash != config_hash(shop(OLD_PASSWORD))

    try:
        anyio.run(scenario)
        report = log.verify()
        assert report.ok, report.reason
    finally:
        log.close()
