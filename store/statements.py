"""Core statements compiled once and run on the driver's cursor, for the log's hottest statements.

A statement is built from the Core tables (``store/schema.py``) like any other, compiled once for the
engine's dialect, and its parameters go through the bind processors SQLAlchemy itself would apply (the
JSON serializer, SQLite's datetime text, psycopg's JSON wrapper), the columns of its rows through the
result processors (SQLite's datetime text read back): only SQLAlchemy's per-execution work and its row
objects are left out. The connection stays SQLAlchemy's (and so does its transaction, but for the
SQLite log writer's, begun and ended on the driver: ``store.database._SqliteTransaction``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import ReturnsRows

__all__ = ["DriverStatement", "InsertRows"]

_NO_VALUES: Mapping[str, Any] = MappingProxyType({})


class DriverStatement:
    """``statement`` compiled for ``dialect``, executed on a ``Connection``'s DBAPI cursor."""

    __slots__ = ("_fixed", "_names", "_order", "_processors", "_result_processors", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect, *, encoded: Collection[str] = ()) -> None:
        """``encoded``: binds whose values the caller gives as the driver takes them, their processor not
        applied (a JSON column's value given as its text: what SQLite stores, what PostgreSQL's cast reads)."""
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler):  # pragma: no cover - DDL is not run this way
            raise TypeError(f"{type(statement).__name__} does not compile to a SQL statement")
        self.sql = str(compiled)
        # Values the statement carries itself (a literal compared with, a LIMIT); the rest come per call.
        self._fixed = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }
        # Positional drivers (sqlite3's "?") take a tuple in the statement's order, the others a dict.
        self._names: Sequence[str] | None = compiled.positiontup if compiled.positional else None
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None and name not in encoded:
                self._processors[name] = processor
        # A positional statement with nothing fixed (an INSERT of a row's values) builds its tuple in
        # one pass over the names, each with its processor: no merged dict, no second pass.
        self._order: Sequence[tuple[str, Callable[[Any], Any] | None]] | None = (
            None
            if self._names is None or self._fixed
            else [(name, self._processors.get(name)) for name in self._names]
        )
        # What SQLAlchemy would make of each column the driver returns (SQLite's datetime text), by
        # position in the row; none for a statement that returns no rows.
        self._result_processors: list[tuple[int, Callable[[Any], Any]]] = []
        columns = statement.exported_columns if isinstance(statement, ReturnsRows) else ()
        for index, column in enumerate(columns):
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if processor is not None:
                self._result_processors.append((index, processor))

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values`` (keyed by bind name; literal binds fill themselves)."""
        if self._order is not None:
            return tuple(
                [values[name] if process is None else process(values[name]) for name, process in self._order]
            )
        params = {**self._fixed, **values}
        for name, processor in self._processors.items():
            params[name] = processor(params[name])
        if self._names is None:
            return params
        return tuple(params[name] for name in self._names)

    def first(self, connection: Connection, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        """The first row the statement returns, or None."""
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self.sql, self.parameters(values))
            row = cursor.fetchone()
        except BaseException:
            _invalidate_if_broken(connection)
            raise
        finally:
            cursor.close()
        return None if row is None else self._processed(row)

    def all(self, connection: Connection, values: Mapping[str, Any] = _NO_VALUES) -> Sequence[Sequence[Any]]:
        """Every row the statement returns."""
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self.sql, self.parameters(values))
            rows: Sequence[Sequence[Any]] = cursor.fetchall()
        except BaseException:
            _invalidate_if_broken(connection)
            raise
        finally:
            cursor.close()
        if not self._result_processors:
            return rows
        return [self._processed(row) for row in rows]

    def processed(self, row: Sequence[Any]) -> Sequence[Any]:
        """A row of this statement that the driver returned elsewhere (a query of several statements)."""
        return self._processed(row)

    def _processed(self, row: Sequence[Any]) -> Sequence[Any]:
        """``row`` (the driver's tuple), each column as SQLAlchemy would have given it."""
        if not self._result_processors:
            return row
        columns = list(row)
        for index, processor in self._result_processors:
            columns[index] = processor(columns[index])
        return columns

    def run(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute the statement once per row of values (one row: a plain execute)."""
        cursor = connection.connection.cursor()
        try:
            if len(rows) == 1:
                cursor.execute(self.sql, self.parameters(rows[0]))
            else:
                cursor.executemany(self.sql, [self.parameters(row) for row in rows])
        except BaseException:
            _invalidate_if_broken(connection)
            raise
        finally:
            cursor.close()


def _invalidate_if_broken(connection: Connection) -> None:
    """Tell the pool that a connection the server dropped is gone, as SQLAlchemy's own execute does.

    A statement run here bypasses SQLAlchemy's look at a driver error for a disconnect: the pool then
    took the dead connection back, tried to reset it, and logged that failure at ERROR with a traceback
    ("Exception during reset or similar") whenever PostgreSQL restarted or a backend was terminated
    under a follower's read, though nothing was wrong that the next connection did not mend. psycopg
    marks a connection whose link broke (``broken``); sqlite3's have no such state."""
    if getattr(connection.connection.driver_connection, "broken", False):
        connection.invalidate()


class InsertRows:
    """Rows of ``table`` inserted in one round trip of few driver calls, as each driver does that best.

    SQLite: one ``INSERT … VALUES (…), (…)`` per batch of up to ``ROWS`` rows, rather than
    ``executemany``, which runs and resets the statement once per row, each call letting go of the GIL.
    A worker thread that lets go while the event loop's thread is busy waits up to a switch interval
    (5 ms) to have it back, so under load an append paid that per row (``bench_reload_busy.py``).
    PostgreSQL: ``executemany`` of the one-row statement, which psycopg sends as one pipeline (one round
    trip, one wait on the socket); a statement of many rows is longer than psycopg caches the conversion
    and the preparation of, and cost more CPU than the pipeline (a reload's two appends, py-spy).
    """

    # 64 rows of the events table's 12 columns stay under 999 parameters, SQLite's oldest limit; the
    # statements compiled (one per row count) stay few.
    ROWS = 64

    __slots__ = ("_columns", "_dialect", "_encoded", "_one_row", "_statements", "_table")

    def __init__(self, table: sa.Table, dialect: Dialect, *, encoded: Collection[str] = ()) -> None:
        """``encoded``: columns whose values the caller gives as the driver takes them (``DriverStatement``)."""
        self._table = table
        self._dialect = dialect
        self._columns = [column.name for column in table.columns]
        self._encoded = frozenset(encoded)
        self._statements: dict[int, DriverStatement] = {}
        self._one_row = DriverStatement(table.insert(), dialect, encoded=encoded)

    def run(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (each keyed by column name, every column given)."""
        if len(rows) == 1 or self._dialect.name != "sqlite":
            self._one_row.run(connection, rows)
            return
        for start in range(0, len(rows), self.ROWS):
            batch = rows[start : start + self.ROWS]
            values = {
                f"{name}_{index}": row[name] for index, row in enumerate(batch) for name in self._columns
            }
            self._statement(len(batch)).run(connection, [values])

    def _statement(self, count: int) -> DriverStatement:
        statement = self._statements.get(count)
        if statement is None:
            columns = self._table.columns
            rows = [
                {name: sa.bindparam(f"{name}_{index}", type_=columns[name].type) for name in self._columns}
                for index in range(count)
            ]
            encoded = [f"{name}_{index}" for name in self._encoded for index in range(count)]
            statement = DriverStatement(self._table.insert().values(rows), self._dialect, encoded=encoded)
            self._statements[count] = statement
        return statement
