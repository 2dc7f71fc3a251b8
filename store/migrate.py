"""Running the Alembic revisions in ``migrations/`` against an open engine.

Alembic is the only thing that creates or alters tables. Opening a log runs ``upgrade`` under the same
write lock appends take, so two processes opening a fresh database at once cannot both try to create it:
the second waits, then finds the schema already at head.

Alembic itself is imported only when there is migrating to do. Opening a log whose schema is already at
``HEAD_REVISION`` (every open but the first) reads the stamped revision with one plain query: loading
Alembic costs a read-only command such as ``confledger verify`` a tenth of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from confledger.store.database import describe_url, translate_errors, write_transaction
from confledger.store.errors import SchemaError, SchemaTooNew

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD_REVISION",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_known_revision",
    "schema_drift",
    "script_head",
    "upgrade",
]

# The newest revision in migrations/versions. A new revision must change it: the migration tests hold it
# equal to the head Alembic computes from the scripts (``script_head``).
HEAD_REVISION = "0005_audit_view_times"

_VERSION_TABLE = "alembic_version"


def _script_location() -> Path:
    # By location, never by package name: a user's own ``migrations`` package (every Alembic or Django
    # project has one) must not be mistaken for ours. The revisions sit beside this package in a checkout
    # (store/ and migrations/ at the root) and in the wheel (confledger/store, confledger/migrations).
    location = Path(__file__).resolve().parent.parent / "migrations"
    if not (location / "env.py").is_file():
        raise SchemaError(f"confledger's Alembic revisions are missing: no env.py in {location}")
    return location


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_head() -> str:
    """The head revision as Alembic computes it from the scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("no Alembic revisions found")
    return head


def head_revision() -> str:
    return HEAD_REVISION


def _current(connection: Connection) -> str | None:
    """The revision stamped in the database (None for a database confledger never migrated)."""
    if not sa.inspect(connection).has_table(_VERSION_TABLE):
        return None
    version = sa.table(_VERSION_TABLE, sa.column("version_num"))
    return connection.execute(sa.select(version.c.version_num)).scalar()


def current_revision(engine: Engine) -> str | None:
    with translate_errors(engine.url), engine.connect() as connection:
        return _current(connection)


def is_known_revision(revision: str) -> bool:
    """Whether this release's migrations include ``revision`` (an unknown one was written by a newer release)."""
    if revision == HEAD_REVISION:
        return True
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _refuse_unknown(connection: Connection, engine: Engine) -> None:
    revision = _current(connection)
    if revision is None:
        return
    if not is_known_revision(revision):
        raise SchemaTooNew(
            f"database {describe_url(engine.url)} is at schema revision {revision!r}, which this confledger "
            f"does not know (newest known: {HEAD_REVISION!r}); it was migrated by a newer "
            "release: upgrade confledger instead of using this one"
        )


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to ``revision`` (default: head) under the write lock; returns the revision reached."""
    if revision == "head" and current_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION  # nothing to migrate: no write lock, no Alembic
    from alembic import command
    from alembic.util import CommandError

    with write_transaction(engine) as connection:
        _refuse_unknown(connection, engine)
        if revision == "head" and _current(connection) == HEAD_REVISION:
            return HEAD_REVISION
        try:
            command.upgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise SchemaError(f"cannot upgrade to {revision!r}: {exc}") from exc
        return _current(connection)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Migrate down to ``revision`` ("base" removes every table; events go with them)."""
    from alembic import command
    from alembic.util import CommandError

    with write_transaction(engine) as connection:
        _refuse_unknown(connection, engine)
        try:
            command.downgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise SchemaError(f"cannot downgrade to {revision!r}: {exc}") from exc
        return _current(connection)


def downgrade_target(engine: Engine, revision: str) -> str | None:
    """The revision a downgrade to ``revision`` would end at (None: base, every table dropped).

    Relative steps (``-1``) are counted down from the database's own revision, so a caller can tell
    that one step down from the first revision drops the log as surely as ``base`` does.
    """
    if revision == "base":
        return None
    if not (revision.startswith("-") and revision[1:].isdigit()):
        return revision
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    reached = current_revision(engine)
    for _ in range(int(revision[1:])):
        if reached is None:
            break
        found = script.get_revision(reached)
        if found is None:
            raise SchemaError(f"cannot downgrade from {reached!r}: this confledger does not know it")
        down = found.down_revision
        if down is not None and not isinstance(down, str):
            raise SchemaError(
                f"cannot count steps down from the merge revision {reached!r}: name the revision"
            )
        reached = down
    return reached


def schema_drift(engine: Engine) -> list[str]:
    """Differences between the tables in ``store.schema`` and the migrated database (empty: no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from confledger.store.schema import metadata

    with translate_errors(engine.url), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [repr(diff) for diff in compare_metadata(context, metadata)]
