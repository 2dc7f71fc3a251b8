"""What a fleet of instances on one log shares besides the log: the operation lock, the doorbell, heartbeats.

- ``FleetLock``: one operation at a time across every instance on the log. PostgreSQL: a session-level
  advisory lock on a connection of its own, keyed by the log's schema (two logs in one database do not
  block each other); SQLite: ``flock`` on a file beside the database (every process on the host that
  opens the log sees it). The holder names itself (``<operation id>@<instance id>``) where the others can
  read it: the lock connection's ``application_name`` / the lock file's content. A crashed holder's lock
  dies with its session or file descriptor, so it never blocks the fleet.
- ``Doorbell``: PostgreSQL ``LISTEN`` on the channel the events table's trigger (migrations
  ``0003_fleet``, ``0004_applied_rings_only``) notifies in every append transaction that applies a
  config. It only says "look": a follower always reads the log by position, and polls when the bell is
  silent, so a lost notification loses no event.
- Heartbeats: ``fleet_instances`` rows rewritten in place (not events: see the migration's docstring).

Every function here blocks on I/O; async callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from confledger.store.database import as_utc, connection_lost, sqlite_path, translate_errors
from confledger.store.errors import FleetLockBusy, StoreUnavailable
from confledger.store.schema import fleet_instances
from confledger.store.statements import DriverStatement
from confledger.store.upsert import upsert

__all__ = [
    "DOORBELL_CHANNEL_SQL",
    "Doorbell",
    "FleetLease",
    "FleetLock",
    "Heartbeat",
    "fleet_lock_for",
    "read_heartbeats",
    "record_heartbeat",
]

# The first key of the advisory lock (the second is the schema's hashtext): "cfl" + "fleet" in ASCII
# would overflow an int4, so a fixed small number that no other confledger lock uses.
_PG_FLEET_CLASS = 0x63666C
_PG_SCHEMA_KEY = "hashtext(current_schema())"
# The channel the events trigger rings; the same expression on both sides, so they always agree.
DOORBELL_CHANNEL_SQL = "left('confledger.' || current_schema(), 63)"
_APPLICATION_NAME = "confledger"
# The lock's two statements of every operation, taking it when free (naming the holder) and letting go
# (the session's own name back). Run on the driver's cursor, as the log's write lock is: through
# ``Connection.exec_driver_sql`` the pair took 0.24 ms of CPU (0.41 ms wall) against 0.16 (0.33) on the
# cursor, 4,000 of each interleaved on this machine.
_TAKE_FREE = sa.text(
    f"SELECT CASE WHEN pg_try_advisory_lock({_PG_FLEET_CLASS}, {_PG_SCHEMA_KEY}) "
    "THEN set_config('application_name', :name, false) END"
)
_LET_GO = sa.text(
    f"SELECT pg_advisory_unlock({_PG_FLEET_CLASS}, {_PG_SCHEMA_KEY}), "
    "set_config('application_name', :name, false)"
)


class FleetLease(Protocol):
    # Released by the operation's worker thread, at the end of its straight line (``store.steps``).
    def release(self) -> None: ...


class FleetLock(Protocol):
    def acquire(self, holder: str, wait_s: float) -> FleetLease:
        """Take the lock for ``holder`` within ``wait_s`` seconds, else ``FleetLockBusy`` naming the holder."""
        ...

    def close(self) -> None:
        """Let go of what the lock keeps between operations (its connection); a later acquire reopens it."""
        ...


def fleet_lock_for(engine: Engine) -> FleetLock:
    """The fleet lock of the log on ``engine``: advisory (PostgreSQL), a lock file (SQLite), or, for an
    in-memory SQLite log that no other process can open, a lock of this process."""
    if engine.dialect.name == "postgresql":
        return _AdvisoryLock(engine)
    database = sqlite_path(engine.url.render_as_string(hide_password=False))
    if database is None:
        return _ProcessLock()
    return _FileLock(database.with_name(database.name + ".fleet-lock"))


def _busy(holder: str | None, wait_s: float) -> FleetLockBusy:
    named = f"operation {holder}" if holder else "another operation"
    return FleetLockBusy(
        f"{named} held the fleet's operation lock for the whole wait ({wait_s:g} s); retry when it is done",
        holder=holder,
    )


class _AdvisoryLease:
    def __init__(self, lock: _AdvisoryLock, connection: Connection) -> None:
        self._lock: _AdvisoryLock | None = lock
        self._connection = connection

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release(self._connection)


class _AdvisoryLock:
    """A session advisory lock on a connection kept for it between operations.

    Kept, like the log's writer connection, because the lock is taken once per operation and a pool
    checkout (its pre-ping) plus the statements around the lock cost more round trips than the lock
    itself. Taking it is one statement when it is free (``pg_try_advisory_lock``, naming the holder in
    the same statement); only a busy lock is waited for by the server (``lock_timeout``), so the next
    holder is granted it the moment the last one lets go, without polling. Letting go is one statement.
    A connection the server dropped is replaced once, before the lock is taken: a session that died took
    its lock with it.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._take_free_statement = DriverStatement(_TAKE_FREE, engine.dialect)
        self._let_go_statement = DriverStatement(_LET_GO, engine.dialect)
        self._connection: Connection | None = None
        # The session's own name (the instance's), put back when the lock is let go.
        self._own_name = _APPLICATION_NAME
        self._guard = threading.Lock()
        self._holder_here: str | None = None

    def acquire(self, holder: str, wait_s: float) -> FleetLease:
        name = f"{_APPLICATION_NAME}:{holder}"[:63]
        # One holder at a time per process: a second thread would otherwise share the session, and a
        # session-level lock is re-entrant for its own session.
        started = time.monotonic()
        if not self._guard.acquire(timeout=wait_s):
            raise _busy(self._holder_here, wait_s)
        try:
            connection = self._take_free(name)
            if connection is None:
                left = max(0.001, wait_s - (time.monotonic() - started))
                connection = self._wait_for(name, left, wait_s)
        except BaseException:
            self._guard.release()
            raise
        self._holder_here = holder
        return _AdvisoryLease(self, connection)

    def release(self, connection: Connection) -> None:
        try:
            with translate_errors(self.engine.url):
                self._let_go_statement.first(connection, {"name": self._own_name})
        except Exception:
            # Closing the session releases the lock on the server whatever state it was left in.
            self._drop()
        finally:
            self._holder_here = None
            self._guard.release()

    def close(self) -> None:
        with self._guard:
            self._drop()

    def _take_free(self, name: str) -> Connection | None:
        """The lock if it is free now (one statement), else None; a dropped session is replaced once."""
        for attempt in (1, 2):
            connection = self._kept()
            try:
                row = self._take_free_statement.first(connection, {"name": name})
            except Exception as exc:
                self._drop()
                if attempt == 1 and connection_lost(exc):
                    continue
                with translate_errors(self.engine.url):
                    raise
            return None if row is None or row[0] is None else connection
        raise AssertionError("unreachable")  # pragma: no cover - the second attempt returns or raises

    def _wait_for(self, name: str, left_s: float, wait_s: float) -> Connection:
        connection = self._kept()
        try:
            connection.exec_driver_sql(
                "SELECT set_config('lock_timeout', %(wait)s, false)",
                {"wait": f"{max(1, int(left_s * 1000))}ms"},
            )
            try:
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_FLEET_CLASS}, {_PG_SCHEMA_KEY})")
            except sa_exc.OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                    raise
                connection.exec_driver_sql("SELECT set_config('lock_timeout', '0', false)")
                raise _busy(self._holder(connection), wait_s) from None
            # application_name is how the others learn who holds it (pg_stat_activity beside pg_locks).
            connection.exec_driver_sql(
                "SELECT set_config('lock_timeout', '0', false), set_config('application_name', %(name)s, false)",
                {"name": name},
            )
        except FleetLockBusy:
            raise
        except Exception:
            self._drop()
            with translate_errors(self.engine.url):
                raise
        return connection

    def _kept(self) -> Connection:
        if self._connection is None:
            with translate_errors(self.engine.url):
                connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                try:
                    self._own_name = str(connection.exec_driver_sql("SHOW application_name").scalar())
                except BaseException:
                    connection.close()
                    raise
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
            with contextlib.suppress(Exception):
                connection.close()

    @staticmethod
    def _holder(connection: Connection) -> str | None:
        row = connection.exec_driver_sql(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = {_PG_FLEET_CLASS} "
            f"AND l.objid::bigint = ({_PG_SCHEMA_KEY}::bigint & 4294967295) LIMIT 1"
        ).first()
        if row is None or not row[0]:
            return None
        name = str(row[0])
        prefix = f"{_APPLICATION_NAME}:"
        return name[len(prefix) :] if name.startswith(prefix) else None


class _FileLease:
    def __init__(self, lock: _FileLock, turn: FleetLease) -> None:
        self._lock = lock
        self._turn = turn

    def release(self) -> None:
        try:
            self._lock.unlock()
        finally:
            self._turn.release()


class _FileLock:
    """``flock`` on a file beside the SQLite database: the kernel drops it with a crashed holder's fd.

    The file stays open between operations, and each holder writes its name over the last one's in a
    fixed width: taking and giving back the lock is two ``flock`` calls, a ``stat`` (the path must still
    name the open file: one removed or replaced is let go of and the new one taken) and one write, where
    opening, truncating, writing, truncating and closing the file each time took seven system calls.
    Each lets go of the GIL, and a worker thread that lets go while the event loop's thread is busy
    waits up to a switch interval (5 ms) to have it back. Threads of this process first take their turn
    on a ``_ProcessLock``: every thread using the one open file would share its ``flock``.
    """

    NAME_BYTES = 256

    def __init__(self, path: Path) -> None:
        self.path = path
        self._turns = _ProcessLock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # the open file's device and inode
        self._pid = os.getpid()

    def acquire(self, holder: str, wait_s: float) -> FleetLease:
        if self._pid != os.getpid():
            # A forked child shares its parent's open file, and with it the parent's flock: it takes
            # its own file (closing its copy releases nothing while the parent keeps the original).
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd, self._pid, self._turns = None, os.getpid(), _ProcessLock()
        deadline = time.monotonic() + wait_s
        turn = self._turns.acquire(holder, wait_s)
        try:
            fd = self._file()
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if self._still_the_file():
                        break
                    # The file was removed or replaced since it was opened: the others lock the one at
                    # the path now, so this one is let go of and that one taken.
                    self._close_file()
                    fd = self._file()
                    continue
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise _busy(self._holder(), wait_s) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
            # The holder's name only tells a waiting instance who it waits for: a full disk must not
            # turn taking the lock into an error (the log's own write then says what is wrong, a 503).
            with contextlib.suppress(OSError):
                os.pwrite(fd, holder.encode("utf-8")[: self.NAME_BYTES].ljust(self.NAME_BYTES), 0)
        except BaseException:
            turn.release()
            raise
        return _FileLease(self, turn)

    def unlock(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                # Closing the file lets go of the lock whatever went wrong; the next turn reopens it.
                self._close_file()

    def _file(self) -> int:
        if self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot open the fleet lock file {self.path}: {exc.strerror}"
                ) from None
            opened = os.fstat(fd)
            self._fd, self._identity = fd, (opened.st_dev, opened.st_ino)
        return self._fd

    def _still_the_file(self) -> bool:
        """Whether the path still names the file this lock holds open (one ``stat``)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == self._identity

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _holder(self) -> str | None:
        with contextlib.suppress(OSError):
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
            return text[:255] or None
        return None

    def close(self) -> None:
        """Close the file (the next acquire opens it again)."""
        if self._pid == os.getpid():
            self._close_file()


class _ProcessLease:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def release(self) -> None:
        self._lock.release()


class _ProcessLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: str | None = None

    def acquire(self, holder: str, wait_s: float) -> FleetLease:
        if not self._lock.acquire(timeout=wait_s):
            raise _busy(self._holder, wait_s)
        self._holder = holder
        return _ProcessLease(self._lock)

    def close(self) -> None:
        """Nothing is kept: the lock lives as long as the process."""


class Doorbell:
    """``LISTEN`` on the log's channel, on a connection of its own (PostgreSQL only).

    ``own_session``: the server process this instance's own appends commit through (``None`` when it
    has none yet). A ring sent from it is this instance's own config, which it has no need to follow:
    it is not rung for. Every instance heard its own reloads, and a lone instance on PostgreSQL read the
    log once more after each of them and, holding its apply lock for that turn, made its next operation
    wait. A ring is named by its sender when it is read, so one sent by a writer connection since
    replaced counts as another's: a read that finds nothing, as before.
    """

    def __init__(self, engine: Engine, own_session: Callable[[], int | None] | None = None) -> None:
        self.engine = engine
        self._own_session = own_session
        self._raw: Any = None
        self._connection: Any = None  # the psycopg connection (typed Any: psycopg is loaded lazily)

    def open(self) -> None:
        with translate_errors(self.engine.url):
            raw = self.engine.raw_connection()
            connection: Any = raw.driver_connection
            # Out of the pool for good: it sits in LISTEN, and closing it must really close it.
            raw.detach()
            try:
                connection.autocommit = True
                row = connection.execute(f"SELECT {DOORBELL_CHANNEL_SQL}").fetchone()
                channel = str(row[0]).replace('"', '""')
                connection.execute(f'LISTEN "{channel}"')
            except BaseException:
                raw.close()
                raise
        self._raw, self._connection = raw, connection

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    def wait(self, timeout: float) -> str | None:
        """Until a ring says an append applied a config (``"applied"``, at once) or ``timeout`` seconds
        are up: then ``"other"`` when only other rings came, None when nothing did. Every ring so far
        is consumed.

        Since ``0004_applied_rings_only`` the log rings for nothing else; a database still at
        ``0003_fleet`` (an instance of the previous release migrated it, and this one has not yet) rings
        for every append, and those rings are taken and dropped here, in the waiting thread.
        """
        connection = self._connection
        if connection is None:
            raise StoreUnavailable("the doorbell is not open")
        rang: str | None = None
        own = None if self._own_session is None else self._own_session()
        with translate_errors(self.engine.url):
            # Each notification of every packet is looked at: an "applied" that arrives behind an
            # "other" in one read is not overlooked. The generator holds the connection's lock until
            # it is closed, so it is closed before the rest is drained.
            notifications = connection.notifies(timeout=timeout)
            try:
                for notification in notifications:
                    if notification.pid == own:
                        continue
                    if notification.payload == "applied":
                        rang = "applied"
                        break
                    rang = "other"
            finally:
                notifications.close()
            if rang == "applied":
                # Several appends while the follower was busy: one read of the log covers them all.
                for _ in connection.notifies(timeout=0):
                    pass
        return rang

    def close(self) -> None:
        raw, connection = self._raw, self._connection
        self._raw, self._connection = None, None
        if raw is None:
            return
        with contextlib.suppress(Exception):
            if connection is not None and connection.broken:
                # The server dropped it (a restart, a terminated backend): closing it would first try
                # to roll it back, which SQLAlchemy's pool logs at ERROR with a traceback on every
                # restart, though the next turn's new connection is all that is needed.
                raw.invalidate()
            else:
                raw.close()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    instance_id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    followed_position: int
    interval_s: float


def record_heartbeat(engine: Engine, beat: Heartbeat) -> tuple[str, int] | None:
    """Write ``beat`` over the instance's row (or add it): one short transaction, not under the append lock.

    Returns who wrote the row before, ``(host, pid)``, or None for a new row: an instance that finds
    another process's beat between two of its own shares its id with that process.
    """
    values = {
        "host": beat.host[:255],
        "pid": beat.pid,
        "version": beat.version[:64],
        "started_at": beat.started_at,
        "last_seen": beat.last_seen,
        "followed_position": beat.followed_position,
        "interval_s": beat.interval_s,
    }
    with translate_errors(engine.url), engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # A write transaction from its first statement: waits for SQLite's write lock (busy timeout)
            # rather than failing on the upgrade from a read.
            connection.execution_options(confledger_sqlite_begin="IMMEDIATE")
        with connection.begin():
            previous = connection.execute(
                sa.select(fleet_instances.c.host, fleet_instances.c.pid).where(
                    fleet_instances.c.instance_id == beat.instance_id
                )
            ).first()
            upsert(
                connection, fleet_instances, {"instance_id": beat.instance_id, **values}, key="instance_id"
            )
    return None if previous is None else (str(previous.host), int(previous.pid))


def read_heartbeats(engine: Engine) -> dict[str, Heartbeat]:
    with translate_errors(engine.url), engine.connect() as connection:
        rows = connection.execute(sa.select(fleet_instances)).mappings().all()
    return {
        row["instance_id"]: Heartbeat(
            instance_id=row["instance_id"],
            host=row["host"],
            pid=int(row["pid"]),
            version=row["version"],
            started_at=as_utc(row["started_at"]),
            last_seen=as_utc(row["last_seen"]),
            followed_position=int(row["followed_position"]),
            interval_s=float(row["interval_s"]),
        )
        for row in rows
    }
