"""One statement that inserts a row or updates the one already there (``INSERT … ON CONFLICT``).

Two instances writing the same named row for the first time (two fresh starts on one new log, each
recording how far it verified, or checkpointing a projection) must not race: "update, and insert if
nothing was updated" lets both find nothing and both insert, and on PostgreSQL the second then fails on
the primary key. The database settles an upsert itself: the second waits for the first and updates.
SQLite (3.24 and later) and PostgreSQL spell it alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

__all__ = ["insert_for", "upsert"]


def upsert(
    connection: Connection,
    table: sa.Table,
    values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    key: str,
    where: Callable[[Any], sa.ColumnElement[bool]] | None = None,
) -> None:
    """Insert ``values`` (a row, or rows with the same columns and distinct ``key``s, in one statement)
    into ``table``, or, where a row with the same ``key`` exists, set its other columns to them; with
    ``where``, only if ``where(excluded)`` holds (``excluded``: the row offered)."""
    rows = [values] if isinstance(values, Mapping) else list(values)
    statement = insert_for(connection.dialect, table, rows)
    changed = {name: statement.excluded[name] for name in rows[0] if name != key}
    condition = None if where is None else where(statement.excluded)
    connection.execute(statement.on_conflict_do_update(index_elements=[key], set_=changed, where=condition))


def insert_for(
    dialect: Dialect, table: sa.Table, values: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> PostgresqlInsert | SqliteInsert:
    """``INSERT`` of ``values`` (a row, or rows) into ``table`` in ``dialect``, which can say ``ON CONFLICT``."""
    rows = dict(values) if isinstance(values, Mapping) else list(values)
    # Imported here: the engine has loaded its own dialect's module already, and the other is never needed.
    if dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).values(rows)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table).values(rows)
