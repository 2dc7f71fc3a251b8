"""The Alembic revisions on both backends: up, down, up again; no drift; refusing a newer schema."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from confledger.store import EventLog, NewEvent, SchemaTooNew
from confledger.store import migrate as store_migrate
from confledger.store.database import create_store_engine, normalize_url
from confledger.store.events import InstanceStarted

LOG_TABLES = {"events", "config_versions", "projection_checkpoints"}
AUDIT_VIEWS = {"operations", "config_history"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    store_engine = create_store_engine(normalize_url(database_url))
    try:
        yield store_engine
    finally:
        store_engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def views(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_view_names())


def test_upgrade_downgrade_and_upgrade_again(engine: Engine) -> None:
    head = store_migrate.head_revision()
    assert store_migrate.current_revision(engine) is None

    assert store_migrate.upgrade(engine) == head
    assert tables(engine) >= LOG_TABLES
    assert views(engine) >= AUDIT_VIEWS
    assert store_migrate.current_revision(engine) == head
    assert store_migrate.upgrade(engine) == head  # already there: a no-op

    assert store_migrate.downgrade(engine, "base") is None
    assert not LOG_TABLES & tables(engine)
    assert not AUDIT_VIEWS & views(engine)
    assert store_migrate.current_revision(engine) is None

    assert store_migrate.upgrade(engine) == head
    assert tables(engine) >= LOG_TABLES
    assert store_migrate.schema_drift(engine) == []


def test_an_upgraded_database_has_no_drift_from_the_models(log: EventLog) -> None:
    assert store_migrate.schema_drift(log.engine) == []


def test_the_guards_come_back_after_a_round_trip(engine: Engine, database_url: str) -> None:
    store_migrate.upgrade(engine)
    store_migrate.downgrade(engine, "base")
    with EventLog(database_url) as log:
        log.append([NewEvent(InstanceStarted(version="0.1.0", host="h", pid=1))])
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), log.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM events"))


def test_a_database_migrated_by_a_newer_release_is_refused(log: EventLog, database_url: str) -> None:
    with log.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaTooNew) as caught:
        EventLog(database_url)
    message = str(caught.value)
    assert "9999_from_the_future" in message
    assert store_migrate.head_revision() in message
    assert "newer release" in message
    assert "\n" not in message
    assert caught.value.code == "schema_too_new"
    # Downgrading with the older code is refused the same way.
    with pytest.raises(SchemaTooNew):
        store_migrate.downgrade(log.engine, "base")


@pytest.mark.parametrize("opener_count", [2, 4])  # the brief's pair, and more writers than cores
def test_concurrent_opens_of_a_fresh_database_all_succeed(database_url: str, opener_count: int) -> None:
    start = threading.Barrier(opener_count)
    failures: list[BaseException] = []
    heads: list[int] = []

    def open_and_append(pid: int) -> None:
        try:
            start.wait()
            with EventLog(database_url, instance_id=f"opener-{pid}") as log:
                log.append([NewEvent(InstanceStarted(version="0.1.0", host="h", pid=pid))])
                heads.append(log.head())
        except BaseException as exc:  # reported below, in the test's own thread
            failures.append(exc)

    threads = [threading.Thread(target=open_and_append, args=(pid,)) for pid in range(opener_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    with EventLog(database_url) as log:
        assert log.head() == opener_count
        assert log.verify().ok
        with log.engine.connect() as connection:
            versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [store_migrate.head_revision()]


def test_the_head_revision_named_in_code_is_the_scripts_head() -> None:
    # A new revision that forgets to move HEAD_REVISION would leave every open believing it is at head.
    assert store_migrate.script_head() == store_migrate.HEAD_REVISION


def test_opening_a_log_at_head_does_not_load_alembic(database_url: str) -> None:
    import subprocess
    import sys

    with EventLog(database_url):
        pass  # migrated here, so the child finds the schema at head
    probe = (
        "import sys; from confledger.store.log import EventLog; "
        f"log = EventLog({database_url!r}); log.head(); log.close(); "
        "print('alembic' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
