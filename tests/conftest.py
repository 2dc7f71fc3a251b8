"""Fixtures shared by every test: a real SQLite file and a real PostgreSQL schema per test.

PostgreSQL comes from ``CONFLEDGER_TEST_PG_URL`` (default: the local server at 127.0.0.1:5432/test).
Locally, an unreachable server skips the postgres half of each parametrized test with one line of
reason; under ``CI=true`` it fails instead, so CI can never pass by skipping a backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import settings
from sqlalchemy.engine import make_url

from confledger.store import EventLog

# pytest-xdist hands its workers the controller's terminal size as COLUMNS/LINES. The CLI's Rich consoles
# are made at import, and a COLUMNS seen then pins their width for the whole process, past the width each
# CLI test asks for; without these a worker would lay tables out as the controller's terminal does.
for _size in ("COLUMNS", "LINES"):
    os.environ.pop(_size, None)

# Hypothesis's deadline (200 ms by default) fails a test whose example took longer on the wall clock:
# on a loaded two-core machine (CI, or the suite's three workers beside the servers it starts) one
# example of test_chain's hashing, no I/O in it, took past it and failed a run that found nothing
# wrong. The suite asserts behaviour, never wall-clock time (the benchmarks measure that); without a
# deadline the too_slow health check still gives input generation 30 s. Loaded here, before any test
# module makes its own settings, so that those inherit it.
settings.register_profile("confledger", deadline=None)
settings.load_profile("confledger")

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgres"]


def _pg_base_url() -> str:
    return os.environ.get("CONFLEDGER_TEST_PG_URL", DEFAULT_PG_URL)


_pg_state: dict[str, str | None] = {}


def _pg_unavailable_reason() -> str | None:
    if "reason" not in _pg_state:
        engine = sa.create_engine(_pg_base_url(), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            _pg_state["reason"] = None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _pg_state["reason"] = (
                f"PostgreSQL not reachable at {make_url(_pg_base_url()).render_as_string(hide_password=True)}: {first}"
            )
        finally:
            engine.dispose()
    return _pg_state["reason"]


def require_postgres() -> None:
    reason = _pg_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def make_pg_schema_url(schema: str) -> str:
    url = make_url(_pg_base_url())
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def _pg_admin_engine() -> sa.Engine:
    url = make_url(_pg_base_url())
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_pg_schema_url(schema)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'confledger.db'}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The URL of an empty log on each backend in turn (the contract suite runs against both)."""
    if backend == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def log(database_url: str) -> Iterator[EventLog]:
    # Unique per test: PostgreSQL sessions are named after it, and a test that ends its log's sessions
    # by that name must not end those of a test running beside it in another worker.
    event_log = EventLog(database_url, instance_id=f"test-instance-{uuid.uuid4().hex[:8]}")
    try:
        yield event_log
    finally:
        event_log.close()
