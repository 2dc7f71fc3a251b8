"""Opening a database by URL, and translating driver errors into ``ConfledgerError``s where they enter."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Dialect, Engine, Transaction, make_url
from sqlalchemy.pool import StaticPool

from confledger.store.canonical import canonical_json
from confledger.store.errors import ConfledgerError, InvalidDatabaseURL, ReadOnlyStore, StoreUnavailable
from confledger.store.statements import DriverStatement

__all__ = [
    "DEFAULT_DATABASE_URL",
    "LogWriter",
    "SqliteSynchronous",
    "StoredTime",
    "UnreadableJSON",
    "UnreadableTime",
    "as_utc",
    "checkpoint_wal",
    "connection_lost",
    "create_store_engine",
    "describe_url",
    "normalize_url",
    "sqlite_path",
    "translate_errors",
    "write_transaction",
]

DEFAULT_DATABASE_URL = "sqlite:///./confledger.db"

SqliteSynchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# Any 64-bit constant works as long as every writer uses the same one; this one spells "confled".
_PG_APPEND_LOCK = sa.select(sa.func.pg_advisory_xact_lock(0x636F6E666C6564))


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` means psycopg 3, the driver confledger ships with."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise InvalidDatabaseURL(
            f"cannot parse database URL {_redact_url_text(str(url))!r}: expected "
            "sqlite:///path/to/file.db or postgresql+psycopg://user@host:port/dbname"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername != "postgresql+psycopg":
            raise InvalidDatabaseURL(
                f"unsupported PostgreSQL driver {parsed.drivername!r}; use postgresql+psycopg"
            )
        if not parsed.database:
            raise InvalidDatabaseURL(
                "PostgreSQL URL names no database (postgresql+psycopg://host:port/DBNAME)"
            )
    elif backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise InvalidDatabaseURL(f"unsupported SQLite driver {parsed.drivername!r}; use sqlite:///path")
    else:
        raise InvalidDatabaseURL(
            f"unsupported database {backend!r} in {describe_url(parsed)!r}: confledger runs on sqlite or postgresql"
        )
    return parsed


def describe_url(url: URL) -> str:
    """The URL as it may appear in messages and logs: never with its password."""
    return _redact_url_text(url.render_as_string(hide_password=True))


def _redact_url_text(text: str) -> str:
    text = re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", text)
    # libpq takes a password from the query as well (postgresql://app@db/x?password=...): the driver
    # hands query parameters on as connection keywords.
    return re.sub(r"([?&](?:ssl)?password=)[^&\s'\"]*", r"\1***", text, flags=re.IGNORECASE)


class UnreadableJSON(str):
    """A JSON column's stored text that is not JSON (a row edited by hand, or torn), handed on as that
    text instead of raised from the row's decoding.

    Every reader of a JSON column checks what it got (a MAC, a hash, an object where one belongs) and
    reports a row that does not hold, with its reason code, like any other edited row: ``verify`` and
    start-up's check say ``config_body_mismatch`` or ``key_record`` rather than stopping at a bare
    ``JSONDecodeError``. Only SQLite can hold such text: PostgreSQL's ``json`` refuses it.
    """

    __slots__ = ()


class UnreadableTime(str):
    """A timestamp column's stored value that is not a time (SQLite keeps any text in a ``DATETIME``
    column), handed on as its text instead of raised from the row's decoding: the reader refuses the
    event with a reason code (``verify``: ``link_mismatch`` at its position; a read: ``invalid_event``)."""

    __slots__ = ()


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, as the log stores every time; a naive one is taken to be UTC already.

    SQLite keeps times as text without a zone, so a bound in another zone would be compared by its wall
    clock: every time bound to a statement or read from a row without a zone goes through here."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class StoredTime(sa.types.TypeDecorator[datetime]):
    """``occurred_at`` as the readers select it: the column's own type, but a value it cannot parse comes
    back as ``UnreadableTime`` rather than a ``ValueError`` out of the whole batch of rows."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        process = self.impl_instance.dialect_impl(dialect).result_processor(dialect, coltype)
        if process is None:
            return None

        def leniently(value: Any) -> Any:
            try:
                return process(value)
            except (ValueError, TypeError):
                return UnreadableTime(value)

        return leniently


def _json_or_unreadable(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return UnreadableJSON(text if isinstance(text, str) else text.decode("utf-8", "replace"))


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_store_engine(
    url: URL,
    *,
    sqlite_synchronous: SqliteSynchronous = "FULL",
    busy_timeout_ms: int = 10_000,
    connect_timeout_s: int = 5,
    application_name: str = "confledger",
    pool_size: int | None = None,
    max_overflow: int | None = None,
) -> Engine:
    common: dict[str, Any] = {
        "json_serializer": canonical_json,
        "json_deserializer": _json_or_unreadable,
    }
    if url.get_backend_name() == "sqlite":
        connect_args: dict[str, Any] = {"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
        if _is_memory(url):
            engine = sa.create_engine(url, connect_args=connect_args, poolclass=StaticPool, **common)
        else:
            engine = sa.create_engine(url, connect_args=connect_args, **common)
        _install_sqlite_hooks(engine, sqlite_synchronous, busy_timeout_ms, memory=_is_memory(url))
        return engine
    # None leaves SQLAlchemy's own (5 kept, 10 more in a burst); the log's writer and the fleet lock each
    # hold one of them for the instance's life.
    limits = {"pool_size": pool_size, "max_overflow": max_overflow}
    engine = sa.create_engine(
        url,
        # Named per instance, so an operator (or a test) can tell the fleet's sessions apart in
        # pg_stat_activity.
        connect_args={"connect_timeout": connect_timeout_s, "application_name": application_name[:63]},
        # The connection returned last is the one checked out next. The pool's default hands them out
        # in turn, so with three in the pool a follower polling every 0.5 s met each one idle 1.5 s,
        # past IDLE_PING_AFTER_S, and every poll (and the first read of a change in a quiet fleet) was
        # a ping and then the read: two round trips for one.
        pool_use_lifo=True,
        **{name: value for name, value in limits.items() if value is not None},
        **common,
    )
    _ping_when_idle(engine)
    return engine


def checkpoint_wal(engine: Engine) -> None:
    """SQLite: copy the write-ahead log's committed pages into the database file (a PASSIVE checkpoint,
    which waits for no reader or writer); nothing on PostgreSQL or in memory. Blocking.

    Left to SQLite, the commit that takes the WAL past 1,000 pages does this itself, and its caller waits
    for the copy and the database file's fsync: a reload writes some 28 pages, so one reload in 36 took
    about 1 ms longer (median 4.0 against 3.1 ms, reloads back to back on a quiet two-core machine).
    Called off every append's path (the reloader's once-a-second task), the WAL starts over before it
    grows that far while a service reloads less than some 35 times a second; SQLite's own stays as the
    backstop for a log written faster than that, or by a process that runs no such task. On a pooled
    connection, not the writer's: an append need not wait for it.
    """
    if engine.dialect.name != "sqlite" or _is_memory(engine.url):
        return
    with translate_errors(engine.url), engine.connect() as connection:
        # On the driver: through SQLAlchemy the statement would open a transaction first, and SQLite
        # refuses a checkpoint from a connection inside one.
        driver: Any = connection.connection.driver_connection
        driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


# A pooled PostgreSQL connection is pinged before use only after it has lain idle this long.
IDLE_PING_AFTER_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it has been idle ``IDLE_PING_AFTER_S``.

    ``pool_pre_ping`` pings at every checkout: a round trip before each read, a third of what an
    operation's head read or a follower's page of events costs. A connection used a moment ago is
    alive but for a server that went away within that moment; the read then fails once, the failure
    invalidates every connection of the pool (SQLAlchemy recycles the lot on a disconnect), and the
    caller's retry (a follower's next turn, a client's next request) gets a fresh one. A connection
    that lay idle, as every one does across a restart's downtime, is pinged as before, and a dead one is
    replaced before anyone sees it: raising DisconnectionError makes the pool connect afresh.
    """

    @sa_event.listens_for(engine, "connect")
    @sa_event.listens_for(engine, "checkin")
    def _note_idle(_dbapi_connection: Any, record: Any) -> None:
        record.info["confledger_idle_since"] = time.monotonic()

    @sa_event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("confledger_idle_since")
        if idle_since is not None and time.monotonic() - idle_since < IDLE_PING_AFTER_S:
            return
        try:
            # The dialect's own ping (the statement pool_pre_ping sends).
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa_exc.DisconnectionError(f"a pooled connection is gone: {type(exc).__name__}") from exc
        if not alive:
            raise sa_exc.DisconnectionError("a pooled connection did not answer its ping")


def _enable_wal(cursor: Any, busy_timeout_ms: int) -> None:
    # Switching a file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY at once, without
    # calling its busy handler, while another connection is opening the same new file. Wait for it as
    # every other lock wait does: retry until the busy timeout.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc):
                # A read-only database keeps whatever journal mode it has; reading it (the CLI's
                # inspection commands) must still work, and any write reports ReadOnlyStore.
                return
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _install_sqlite_hooks(engine: Engine, synchronous: str, busy_timeout_ms: int, *, memory: bool) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite opens transactions lazily and always DEFERRED; a deferred writer that later needs the
        # write lock can fail with SQLITE_BUSY without waiting. Taking control of BEGIN lets writers ask
        # for IMMEDIATE, which waits (busy_timeout) for the lock up front and then cannot be refused.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                _enable_wal(cursor, busy_timeout_ms)
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        finally:
            cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        driver: Any = connection.connection.driver_connection
        if driver.in_transaction:
            # The log's writer began this transaction on the driver (``_SqliteTransaction``): a statement
            # run through Connection.execute inside it joins it, and the writer's commit ends both.
            return
        mode = connection.get_execution_options().get("confledger_sqlite_begin", "DEFERRED")
        # On the driver's cursor rather than through exec_driver_sql: that machinery cost the append path
        # about 20 us per transaction, a fifth of its CPU time (BEGIN has no parameters or result).
        cursor = connection.connection.cursor()
        try:
            cursor.execute(f"BEGIN {mode}")
        finally:
            cursor.close()


def _write_lock(dialect: Dialect) -> DriverStatement | None:
    """The statement that takes the log's write lock in a transaction; None on SQLite, where the
    transaction's own ``BEGIN IMMEDIATE`` takes it.

    Run on the driver's cursor: through ``Connection.execute`` it made a PostgreSQL append ~0.15 ms
    slower (median 0.91-0.95 ms against 0.62-0.70 ms on the cursor, bench_append.py on this machine).
    """
    return DriverStatement(_PG_APPEND_LOCK, dialect) if dialect.name == "postgresql" else None


def _lock_for_writing(connection: Connection, lock: DriverStatement | None) -> Transaction:
    """Begin a transaction on ``connection`` that holds the log's single write lock until it ends.

    SQLite: ``BEGIN IMMEDIATE`` takes the database's one RESERVED lock (waiting up to the busy timeout).
    PostgreSQL: a transaction-scoped advisory lock (``lock``), released by commit or rollback, so a
    crashed writer can never leave it held. Either way, whoever holds it appends next: position order is
    commit order.
    """
    if connection.dialect.name == "sqlite" and not connection.get_execution_options().get(
        "confledger_sqlite_begin"
    ):
        connection.execution_options(confledger_sqlite_begin="IMMEDIATE")
    transaction = connection.begin()
    try:
        if lock is not None:
            lock.first(connection)
    except BaseException:
        # The lock statement's error is the one to report (a dropped connection cannot roll back).
        with contextlib.suppress(Exception):
            transaction.rollback()
        raise
    return transaction


def connection_lost(exc: Exception) -> bool:
    """Whether ``exc``, raised by a statement on a kept connection, means the server dropped it."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated)
    # The lock runs on the driver's cursor: psycopg reports a closed or broken connection as an
    # OperationalError (a server refusing a fresh one reports the same, and the retry then fails too).
    psycopg = _psycopg()
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction on a pooled connection that holds the log's write lock from its start to commit."""
    lock = _write_lock(engine.dialect)
    with translate_errors(engine.url), engine.connect() as connection, _lock_for_writing(connection, lock):
        yield connection


def _begin_locked_reading(
    connection: Connection,
    lock: DriverStatement,
    first: DriverStatement | None,
    then: DriverStatement | None,
    values: Mapping[str, Any],
) -> tuple[Sequence[Any] | None, Sequence[Sequence[Any]] | None]:
    """PostgreSQL: BEGIN, the write lock and ``first``'s and ``then``'s reads as one simple query, one
    round trip where psycopg's own BEGIN and the statements took one each; ``first``'s first row (None
    without one) and ``then``'s rows (None without it).

    The driver connection is in autocommit mode so that psycopg sends no BEGIN of its own: the BEGIN in
    the query opens the transaction, and psycopg's commit() and rollback() end it (they act whenever the
    server is inside one). Each statement of the query takes its own snapshot (READ COMMITTED), so
    ``first`` reads what was committed before the lock was granted to this writer, as it did when it ran
    as a statement of its own. The parameters are bound client-side (a ClientCursor): the extended
    protocol carries one statement per message.
    """
    psycopg = _psycopg()
    driver = connection.connection.driver_connection
    assert psycopg is not None
    assert driver is not None
    if not driver.autocommit:
        driver.autocommit = True  # only between transactions, which is when a transaction begins
    statements = ["BEGIN ISOLATION LEVEL READ COMMITTED", lock.sql]
    parameters = dict(lock.parameters({}))
    reads = [statement for statement in (first, then) if statement is not None]
    for statement in reads:
        statements.append(statement.sql)
        parameters.update(statement.parameters(values))
    row: Sequence[Any] | None = None
    rows: Sequence[Sequence[Any]] | None = None
    with psycopg.ClientCursor(driver) as cursor:
        cursor.execute("; ".join(statements), parameters)
        if not reads:
            return None, None
        cursor.nextset()  # past BEGIN's and the lock's results
        if first is not None:
            cursor.nextset()
            found = cursor.fetchone()
            row = None if found is None else first.processed(found)
        if then is not None:
            cursor.nextset()
            rows = [then.processed(found) for found in cursor.fetchall()]
    return row, rows


class _Transaction(Protocol):
    """What the writer ends a transaction with: SQLAlchemy's ``Transaction``, or ``_SqliteTransaction``."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class _SqliteTransaction:
    """An SQLite write transaction begun and ended on the driver connection (``BEGIN IMMEDIATE``, then
    the driver's commit or rollback), under a ``Connection`` that stays SQLAlchemy's for the statements.

    Begun this way, not by ``Connection.begin``: SQLAlchemy's transaction object, its ``begin`` event and
    the commit through the dialect cost about 7 us of CPU per transaction on a warm machine (more when
    every append waits on an fsync and starts with cold caches, as bench_append.py's do), where the
    transaction itself needs two driver calls. A statement of the body that still goes through ``Connection.execute`` (the
    key record, written once per log) makes SQLAlchemy begin a transaction of its own on this one: the
    begin hook sees the driver inside a transaction and sends nothing, and ending it here ends that too.
    """

    __slots__ = ("_connection", "_driver", "_restore")

    def __init__(self, connection: Connection, relaxed_from: str | None = None) -> None:
        """``relaxed_from``: the connection's synchronous level, when this transaction is to commit
        without waiting for the disk (``NORMAL``) and the level is put back after it. SQLite refuses to
        change the level inside a transaction, so it is set before the BEGIN."""
        driver: Any = connection.connection.driver_connection
        if relaxed_from is not None:
            driver.execute("PRAGMA synchronous=NORMAL")
        self._connection = connection
        self._driver = driver
        self._restore = relaxed_from
        try:
            driver.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restored()
            raise

    def commit(self) -> None:
        try:
            self._ending().commit()
        finally:
            self._restored()

    def rollback(self) -> None:
        try:
            self._ending().rollback()
        finally:
            self._restored()

    def _ending(self) -> Any:
        """What ends the transaction: SQLAlchemy's, when a statement of the body began one on this one
        (see above), else the driver's."""
        return self._connection if self._connection.in_transaction() else self._driver

    def _restored(self) -> None:
        # A connection whose level could not be put back is discarded by the writer (its _end), so no
        # later transaction on it commits at the relaxed level by mistake.
        if self._restore is not None:
            level, self._restore = self._restore, None
            self._driver.execute(f"PRAGMA synchronous={level}")


class LogWriter:
    """The log's write path: transactions under the write lock on one connection kept for them.

    Kept, rather than checked out of the pool per append: appends are serialised by the database's
    write lock anyway, and a checkout (with its reset on return) costs more than a small append's
    statements: an SQLite append on tmpfs, its statements through Connection.execute, took a median 147 us
    of CPU through the pool against 101 us on a kept connection (raw sqlite3: 20 us). On PostgreSQL a
    checkout also adds the pool's pre-ping round trip. Threads of this process take turns on it behind
    a lock.

    A connection the server dropped (PostgreSQL restarted, or the session terminated) fails on the lock
    statement, before anything is written: it is replaced and the transaction begun again, once. In-memory
    SQLite has one connection that everyone shares (StaticPool), so there each transaction checks it
    out and back in instead of keeping it.
    """

    def __init__(self, engine: Engine, sqlite_synchronous: SqliteSynchronous = "FULL") -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        # What a transaction that need not wait for the disk relaxes from (None: it waits for nothing
        # already, or it is not SQLite).
        self._sqlite_relaxed_from: str | None = (
            sqlite_synchronous if self._sqlite and sqlite_synchronous in ("FULL", "EXTRA") else None
        )
        self._write_lock = _write_lock(engine.dialect)
        self._keep = not isinstance(engine.pool, StaticPool)
        self._lock = threading.Lock()
        self._kept: Connection | None = None
        self._kept_serial = 0  # which kept connection this is: a data version belongs to one

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside a transaction that holds the log's write lock; commits on success."""
        with self.transaction_reading() as (connection, *_):
            yield connection

    @contextlib.contextmanager
    def transaction_reading(
        self,
        first: DriverStatement | None = None,
        values: Mapping[str, Any] | None = None,
        *,
        then: DriverStatement | None = None,
        durable: bool = True,
    ) -> Iterator[tuple[Connection, Sequence[Any] | None, Sequence[Sequence[Any]] | None]]:
        """``transaction``, the first row of ``first`` read in it once the lock is held (None when it
        returns no row, or no statement was given), and every row of ``then`` read after it (None without
        one; both take their binds from ``values``). On PostgreSQL the reads travel with the BEGIN and the
        lock (``_begin_locked_reading``).

        ``durable=False``: the commit need not wait for the disk where losing it would mean losing this
        process with it. On SQLite, a file of this machine, it commits at ``synchronous=NORMAL``: it
        survives a crash of this process, not of the machine, until the next durable commit, which makes
        it durable too (the WAL is one sequence, synced up to that later commit). PostgreSQL is a server
        that can crash while this process lives on, so there every commit waits for its disk.
        """
        with self._lock:
            # translate_errors, inline: every append passes here, and a second generator-based context
            # manager around each one cost more than the translation's own check.
            try:
                connection, transaction, row, rows = self._begin(first, then, values or {}, durable)
                try:
                    yield connection, row, rows
                except BaseException:
                    # The body's exception is the one to report, even when the rollback fails too.
                    with contextlib.suppress(Exception):
                        self._end(connection, transaction.rollback)
                    raise
                self._end(connection, partial(self.commit, transaction))
            except Exception as exc:
                if not isinstance(exc, _driver_errors()):
                    raise
                raise _translated(self.engine.url, exc) from exc

    def commit(self, transaction: _Transaction) -> None:
        transaction.commit()

    @contextlib.contextmanager
    def last_writes(self, connection: Connection) -> Iterator[None]:
        """Around a transaction's last statements (their results unread): on PostgreSQL they and the
        COMMIT travel as one pipeline, one round trip where each statement and the COMMIT took one; the
        transaction's own commit then finds nothing left to do. Elsewhere the statements run as given and
        the transaction commits as before, as it does on a psycopg whose libpq is older than pipelines
        (14): ``psycopg[binary]`` brings its own, but psycopg's C build links the system's.

        A statement that fails is reported as the block ends (the server skips what follows it, COMMIT
        included), and the transaction is rolled back as for any error of its body. Nothing in the
        block may read a result: in a pipeline it is not there until the round trip.
        """
        psycopg = None if self._sqlite else _psycopg()
        if (
            psycopg is None
            or self._write_lock is None
            or not self._keep
            or not psycopg.Pipeline.is_supported()
        ):
            yield
            return
        driver: Any = connection.connection.driver_connection
        with driver.pipeline():
            yield
            with driver.cursor() as cursor:
                # The BEGIN was a statement of ours (``_begin_locked_reading``), so the COMMIT is one too.
                cursor.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._kept is not None:
                kept, self._kept = self._kept, None
                with contextlib.suppress(Exception):
                    # Back to the pool as the pool handed it out: readers rely on psycopg's own BEGIN.
                    driver = kept.connection.driver_connection
                    if self.engine.dialect.name == "postgresql" and driver is not None:
                        driver.autocommit = False
                with contextlib.suppress(Exception):
                    kept.close()

    def _begin(
        self,
        first: DriverStatement | None,
        then: DriverStatement | None,
        values: Mapping[str, Any],
        durable: bool = True,
    ) -> tuple[Connection, _Transaction, Sequence[Any] | None, Sequence[Sequence[Any]] | None]:
        for attempt in (1, 2):
            connection = self._connection()
            try:
                if self._sqlite:
                    # BEGIN IMMEDIATE takes the database's one RESERVED lock, waiting up to the busy
                    # timeout: whoever holds it appends next.
                    sqlite = _SqliteTransaction(connection, None if durable else self._sqlite_relaxed_from)
                    try:
                        row = None if first is None else first.first(connection, values)
                        rows = None if then is None else then.all(connection, values)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            sqlite.rollback()
                        raise
                    return connection, sqlite, row, rows
                if self._write_lock is not None and self._keep:
                    # Only on the kept connection: it never goes back to the pool in autocommit mode.
                    # Every transaction on it begins this way: psycopg, in autocommit, would send no BEGIN.
                    begun = connection.begin()
                    try:
                        row, rows = _begin_locked_reading(connection, self._write_lock, first, then, values)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            begun.rollback()
                        raise
                    return connection, begun, row, rows
                locked = _lock_for_writing(connection, self._write_lock)
                return (
                    connection,
                    locked,
                    None if first is None else first.first(connection, values),
                    None if then is None else then.all(connection, values),
                )
            except Exception as exc:
                self._discard(connection)
                if attempt == 1 and connection_lost(exc):
                    continue
                raise
            except BaseException:
                self._discard(connection)
                raise
        raise AssertionError("unreachable")  # pragma: no cover - the second attempt returns or raises

    def _end(self, connection: Connection, finish: Callable[[], None]) -> None:
        try:
            finish()
        except BaseException:
            # A connection that could not commit or roll back is not trusted with the next transaction
            # (discarding it closes its driver connection, which rolls back whatever it still held).
            self._discard(connection)
            raise
        if not self._keep:
            connection.close()

    def _connection(self) -> Connection:
        if not self._keep:
            return self.engine.connect()
        if self._kept is None:
            self._kept = self.engine.connect()
            self._kept_serial += 1
        return self._kept

    def session_pid(self) -> int | None:
        """PostgreSQL: the server process of the connection this writer appends on (what a notification
        its commit sends names as its sender); None before its first transaction, and on SQLite."""
        kept = self._kept
        if kept is None or self._sqlite:
            return None
        with contextlib.suppress(Exception):  # a connection being replaced meanwhile: not ours to name
            driver: Any = kept.connection.driver_connection
            return int(driver.info.backend_pid)
        return None

    def data_version(self) -> tuple[int, int] | None:
        """SQLite: a token that stays the same until a connection other than this writer's commits to
        the database (``PRAGMA data_version`` on the writer's connection, with which connection it is);
        None on PostgreSQL and for in-memory SQLite. The writer's own commits leave it as it was."""
        if not (self._sqlite and self._keep):
            return None
        with self._lock:
            try:
                connection = self._connection()
                driver: Any = connection.connection.driver_connection
                version = int(driver.execute("PRAGMA data_version").fetchone()[0])
            except Exception as exc:
                if self._kept is not None:
                    self._discard(self._kept)
                if not isinstance(exc, _driver_errors()):
                    raise
                raise _translated(self.engine.url, exc) from exc
            return self._kept_serial, version

    def _discard(self, connection: Connection) -> None:
        with contextlib.suppress(Exception):
            connection.invalidate()
        with contextlib.suppress(Exception):
            connection.close()
        if connection is self._kept:
            self._kept = None


def _psycopg() -> Any:
    """psycopg if it is loaded, else None.

    Not imported here: SQLAlchemy loads it for a PostgreSQL URL, and a process that never opened one
    (the CLI on an SQLite log) cannot have a psycopg error to translate, nor should it pay 0.1 s to load it.
    """
    return sys.modules.get("psycopg")


def _driver_errors() -> tuple[type[BaseException], ...]:
    psycopg = _psycopg()
    errors: tuple[type[BaseException], ...] = (sa_exc.SQLAlchemyError, sqlite3.Error)
    return errors if psycopg is None else (*errors, psycopg.Error)


@contextlib.contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn driver exceptions into ``ConfledgerError``s with one-line messages that never show a password."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, _driver_errors()):
            raise
        raise _translated(url, exc) from exc


def _translated(url: URL, exc: Exception) -> ConfledgerError:
    """The ``ConfledgerError`` that a SQLAlchemy or driver exception stands for."""
    if isinstance(exc, sa_exc.DBAPIError):
        return _translate(url, exc)
    if isinstance(exc, sa_exc.TimeoutError):
        # Every connection of the pool stayed in use for its whole timeout: the database is there but
        # busier than the pool allows, which a retry may find otherwise (503, not an internal error).
        return StoreUnavailable(
            f"no connection to {describe_url(url)} came free within the pool's timeout: every one was in "
            "use (CONFLEDGER_DATABASE_POOL_SIZE and CONFLEDGER_DATABASE_MAX_OVERFLOW size the pool)"
        )
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return ConfledgerError(f"database error on {describe_url(url)}: {type(exc).__name__}")
    # A driver error that reached us unwrapped (raised by a driver call outside SQLAlchemy's execute)
    # gets the translation SQLAlchemy's wrapper would have had.
    base = sqlite3.Error if isinstance(exc, sqlite3.Error) else _psycopg().Error
    wrapped = sa_exc.DBAPIError.instance(None, None, exc, base)
    if not isinstance(wrapped, sa_exc.DBAPIError):  # pragma: no cover - instance() wraps driver errors
        return StoreUnavailable(f"database error on {describe_url(url)}: {type(exc).__name__}")
    return _translate(url, wrapped)


def _first_line(exc: sa_exc.DBAPIError) -> str:
    original = exc.orig if exc.orig is not None else exc
    text = str(original).strip().splitlines()
    return _redact_url_text(text[0]) if text else type(original).__name__


def _translate(url: URL, exc: sa_exc.DBAPIError) -> ConfledgerError:
    detail = _first_line(exc)
    lowered = detail.lower()
    where = describe_url(url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ":memory:"
        if "readonly" in lowered or "read-only" in lowered:
            return ReadOnlyStore(f"SQLite database {path} is read-only: {detail}")
        if "unable to open" in lowered:
            return StoreUnavailable(
                f"cannot open SQLite database {path}: the file or its directory is missing or not accessible"
            )
        if "locked" in lowered or "busy" in lowered:
            return StoreUnavailable(f"SQLite database {path} stayed locked past the busy timeout: {detail}")
        if "not a database" in lowered or "malformed" in lowered:
            return StoreUnavailable(f"{path} is not a usable SQLite database: {detail}")
        if "disk" in lowered and ("full" in lowered or "i/o" in lowered):
            return StoreUnavailable(f"SQLite database {path} cannot be written: {detail}")
    else:
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and (
            "connect" in lowered or "connection" in lowered or "timeout" in lowered or "resolve" in lowered
        ):
            return StoreUnavailable(f"cannot reach PostgreSQL at {where}: {detail}")
        if "read-only transaction" in lowered:
            return ReadOnlyStore(f"PostgreSQL at {where} refuses writes: {detail}")
        if "does not exist" in lowered and "database" in lowered:
            return StoreUnavailable(f"PostgreSQL database named in {where} does not exist: {detail}")
    if isinstance(exc, sa_exc.IntegrityError):
        return ConfledgerError(f"integrity error on {where}: {detail}", code="integrity_error")
    return StoreUnavailable(f"database error on {where}: {detail}")


def sqlite_path(database_url: str) -> Path | None:
    """The file behind an SQLite URL (None for PostgreSQL or in-memory)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    database = url.database
    if database.startswith("file:"):
        database = database[len("file:") :]
    return Path(database)
