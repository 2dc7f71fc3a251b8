"""Running the Alembic revisions in ``migrations/`` against an open engine.

Alembic is the only thing that creates or alters tables. Opening a log runs ``upgrade_to_head`` under
the same write lock appends take, so two processes opening a fresh database at once cannot both try to
create it: the second waits, then finds the schema already at head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from confledger.store.database import describe_url, translate_errors, write_transaction
from confledger.store.errors import SchemaError, SchemaTooNew
from confledger.store.schema import metadata

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_known_revision",
    "schema_drift",
    "upgrade",
]


def _script_location() -> Path:
    # By location, never by package name: a user's own ``migrations`` package (every Alembic or Django
    # project has one) must not be mistaken for ours. The revisions sit beside this package in a checkout
    # (store/ and migrations/ at the root) and in the wheel (confledger/store, confledger/migrations).
    location = Path(__file__).resolve().parent.parent / "migrations"
    if not (location / "env.py").is_file():
        raise SchemaError(f"confledger's Alembic revisions are missing: no env.py in {location}")
    return location


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("no Alembic revisions found")
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    with translate_errors(engine.url), engine.connect() as connection:
        return _current(connection)


def is_known_revision(revision: str) -> bool:
    """Whether this release's migrations include ``revision`` (an unknown one was written by a newer release)."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _refuse_unknown(connection: Connection, engine: Engine) -> None:
    revision = _current(connection)
    if revision is None:
        return
    if not is_known_revision(revision):
        script = ScriptDirectory.from_config(alembic_config())
        raise SchemaTooNew(
            f"database {describe_url(engine.url)} is at schema revision {revision!r}, which this confledger "
            f"does not know (newest known: {script.get_current_head()!r}); it was migrated by a newer "
            "release: upgrade confledger instead of using this one"
        )


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to ``revision`` (default: head) under the write lock; returns the revision reached."""
    with write_transaction(engine) as connection:
        _refuse_unknown(connection, engine)
        if revision == "head" and _current(connection) == head_revision():
            return _current(connection)
        try:
            command.upgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise SchemaError(f"cannot upgrade to {revision!r}: {exc}") from exc
        return _current(connection)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Migrate down to ``revision`` ("base" removes every table; events go with them)."""
    with write_transaction(engine) as connection:
        _refuse_unknown(connection, engine)
        try:
            command.downgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise SchemaError(f"cannot downgrade to {revision!r}: {exc}") from exc
        return _current(connection)


def schema_drift(engine: Engine) -> list[str]:
    """Differences between the tables in ``store.schema`` and the migrated database (empty: no drift)."""
    with translate_errors(engine.url), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [repr(diff) for diff in compare_metadata(context, metadata)]
