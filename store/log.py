"""``EventLog``: the append-only, hash-chained event log on SQLite or PostgreSQL.

Every method is synchronous and may block on I/O (an fsync, a lock wait); async callers run it in a
worker thread, so the event loop never waits on the database. The chain's links are made and checked
in ``store.chain``; checkpoints are ``store.checkpoints``; stored config bodies ``store.configs``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from confledger.store import migrate
from confledger.store.canonical import GENESIS_HASH
from confledger.store.chain import HEAD, VerifyReport, chain_hash, head_of, truncation, verify_chain
from confledger.store.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from confledger.store.configs import (
    PreparedConfig,
    StoredConfig,
    count_configs,
    has_config,
    load_config,
    prepare_config,
    resolve_hash,
    store_config,
)
from confledger.store.database import (
    DEFAULT_DATABASE_URL,
    LogWriter,
    SqliteSynchronous,
    create_store_engine,
    describe_url,
    normalize_url,
    translate_errors,
)
from confledger.store.errors import ConcurrencyConflict, ConfledgerError
from confledger.store.events import DEFAULT_REGISTRY, ConfigApplied, EventRegistry, NewEvent, RecordedEvent
from confledger.store.ids import uuid7_texts
from confledger.store.schema import events
from confledger.store.secrets import ConfigPath, SecretCipher
from confledger.store.statements import DriverStatement

__all__ = [
    "Checkpoint",
    "EventLog",
    "PreparedConfig",
    "StoredConfig",
    "VerifyReport",
    "default_instance_id",
]

# The open-operations fold is checkpointed once the tail it had to read holds this many lifecycle events.
_OPEN_OPERATIONS = "store.open_operations"
_OPEN_OPERATIONS_VERSION = 1
_OPEN_OPERATIONS_REFOLD = 256
_LIFECYCLE = ("operation.started", "operation.completed")

# The append path's statements, built from the tables once. They run on the driver's cursor of the
# writer's connection (store/statements.py), compiled once with SQLAlchemy's own bind processing:
# through Connection.execute an SQLite append measured 0.49-0.50x raw sqlite3 in events/s (target 0.6),
# on the cursor 0.76-0.82x (median per append 0.66-0.73x); tests/benchmarks/bench_append.py, 2,000
# single-event appends x 3 runs, interleaved with raw sqlite3 on this machine.
_INSERT_EVENTS = events.insert()
_applied = events.alias("applied")
# The head, and the first config.applied after a position, in one statement (on PostgreSQL one round
# trip fewer per append that applies a config). An empty log has no row, and nothing in it can conflict.
_HEAD_AND_APPLIED_SINCE = (
    sa.select(
        events.c.position,
        events.c.hash,
        sa.select(_applied.c.position)
        .where(
            _applied.c.type == ConfigApplied.event_type,
            _applied.c.position > sa.bindparam("expected_head"),
        )
        .order_by(_applied.c.position)
        .limit(1)
        .scalar_subquery()
        .label("applied_since"),
    )
    .order_by(events.c.position.desc())
    .limit(1)
)


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _as_utc(moment: datetime) -> datetime:
    # occurred_at is stored in UTC, and SQLite keeps it as text without a zone, so a bound value in
    # another zone would be compared by its wall clock: every bound is normalised to UTC first
    # (a naive value is taken to be UTC already, as stored ones are).
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class EventLog:
    """Open (and migrate to head) the log at ``url``; one instance is shared by a whole process."""

    def __init__(
        self,
        url: str | URL = DEFAULT_DATABASE_URL,
        *,
        instance_id: str | None = None,
        registry: EventRegistry = DEFAULT_REGISTRY,
        cipher: SecretCipher | None = None,
        sqlite_synchronous: SqliteSynchronous = "FULL",
        busy_timeout_ms: int = 10_000,
        connect_timeout_s: int = 5,
        migrate_on_open: bool = True,
    ) -> None:
        self.url = normalize_url(url)
        self.instance_id = instance_id or default_instance_id()
        self.registry = registry
        self.cipher = cipher
        self.engine: Engine = create_store_engine(
            self.url,
            sqlite_synchronous=sqlite_synchronous,
            busy_timeout_ms=busy_timeout_ms,
            connect_timeout_s=connect_timeout_s,
            application_name=f"confledger {self.instance_id}",
        )
        self._listeners: list[Callable[[list[RecordedEvent]], None]] = []
        self._writer = LogWriter(self.engine)
        dialect = self.engine.dialect
        self._head_statement = DriverStatement(HEAD, dialect)
        self._head_and_applied_since = DriverStatement(_HEAD_AND_APPLIED_SINCE, dialect)
        self._insert_events = DriverStatement(_INSERT_EVENTS, dialect)
        try:
            if migrate_on_open:
                migrate.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return describe_url(self.url)

    def close(self) -> None:
        self._writer.close()
        self.engine.dispose()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        # One read transaction per call: SQLite and PostgreSQL both give it a consistent snapshot, so
        # verify() sees one state of the log even while writers append. Reads take no lock.
        with translate_errors(self.url), self.engine.connect() as connection:
            yield connection

    # --- writing --------------------------------------------------------------------------------------

    def append(
        self,
        new_events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Iterable[PreparedConfig] = (),
    ) -> list[int]:
        """Append ``new_events`` (and store ``configs``) in one transaction; return their positions.

        ``expected_head`` is the head the caller's operation started from: if the batch applies a config
        and another ``config.applied`` has landed since, nothing is written and ``ConcurrencyConflict``
        is raised, so a decision made on stale state never silently overwrites a newer one.
        """
        positions, _ = self._append(new_events, expected_head, configs, recorded=False)
        return positions

    def append_recorded(
        self,
        new_events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Iterable[PreparedConfig] = (),
    ) -> list[RecordedEvent]:
        """``append``, returning the events as recorded (what reading them back would give), so a caller
        can fold what it just wrote without a round trip to the database."""
        _, recorded = self._append(new_events, expected_head, configs, recorded=True)
        return recorded

    def _append(
        self,
        new_events: Sequence[NewEvent],
        expected_head: int | None,
        configs: Iterable[PreparedConfig],
        *,
        recorded: bool,
    ) -> tuple[list[int], list[RecordedEvent]]:
        """Write the batch; its positions, and the events as recorded when asked for or listened to
        (listeners hear of the batch after the commit)."""
        if not new_events:
            return [], []
        # Dumped before the lock is taken, so nothing of the payloads' own work is done while holding it.
        payloads = [event.payload.model_dump(mode="json") for event in new_events]
        applies = any(event.payload.event_type == ConfigApplied.event_type for event in new_events)
        event_ids = uuid7_texts(len(new_events))
        with self._writer.transaction() as connection:
            if expected_head is not None and applies:
                head_position, previous = self._head_unless_applied_since(connection, expected_head)
            else:
                head = self._head_statement.first(connection)
                head_position, previous = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
            # Taken under the lock, so occurred_at never decreases along positions on one clock; one
            # moment for the whole batch.
            now = datetime.now(UTC)
            rows: list[dict[str, Any]] = []
            for position, (event, payload, event_id) in enumerate(
                zip(new_events, payloads, event_ids, strict=True), start=head_position + 1
            ):
                row = {
                    "position": position,
                    "event_id": event_id,
                    "occurred_at": now,
                    "type": event.payload.event_type,
                    "schema_version": type(event.payload).schema_version,
                    "operation_id": None if event.operation_id is None else str(event.operation_id),
                    "instance_id": self.instance_id,
                    "actor": event.actor,
                    "payload": payload,
                    "prev_hash": previous,
                }
                row["hash"] = previous = chain_hash(row)
                rows.append(row)
            self._insert_events.run(connection, rows)
            for config in configs:
                store_config(connection, config, first_position=head_position + 1, created_at=now)
        positions = [row["position"] for row in rows]
        if not (recorded or self._listeners):
            return positions, []
        events_recorded = self._recorded(rows, new_events)
        for listener in list(self._listeners):
            listener(events_recorded)
        return positions, events_recorded

    def subscribe(self, listener: Callable[[list[RecordedEvent]], None]) -> Callable[[], None]:
        """Call ``listener`` with each batch this process appends, after it commits; returns an unsubscribe.

        Listeners run on the appending thread and may see batches out of position order when two threads
        append at once; a listener that needs order (a projection) catches up from the log on a gap.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    @staticmethod
    def _recorded(rows: Sequence[Mapping[str, Any]], new_events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """The events of an append as reading them back would give them, from its rows."""
        return [
            RecordedEvent.model_validate({**row, "payload": event.payload})
            for row, event in zip(rows, new_events, strict=True)
        ]

    def _head_unless_applied_since(self, connection: Connection, expected_head: int) -> tuple[int, str]:
        """The head, unless a ``config.applied`` landed after ``expected_head``: ConcurrencyConflict."""
        row = self._head_and_applied_since.first(connection, {"expected_head": expected_head})
        if row is None:
            return 0, GENESIS_HASH
        position, head_hash, applied_since = row
        if applied_since is not None:
            conflicting = int(applied_since)
            raise ConcurrencyConflict(
                f"another config was applied at position {conflicting} after this operation started "
                f"(at head {expected_head}); retry against the new current config",
                expected_head=expected_head,
                conflicting_position=conflicting,
            )
        return int(position), str(head_hash)

    def prepare_config(
        self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()
    ) -> PreparedConfig:
        """Hash ``body`` (secrets plain) and seal its secrets for storage."""
        return prepare_config(body, secret_paths, self.cipher)

    def put_config(self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()) -> str:
        """Store a config body by content; storing the same body twice is a no-op. Returns its hash."""
        prepared = self.prepare_config(body, secret_paths)
        with self._writer.transaction() as connection:
            store_config(connection, prepared, first_position=None, created_at=datetime.now(UTC))
        return prepared.hash

    # --- reading --------------------------------------------------------------------------------------

    def head(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        with self._read() as connection:
            return head_of(connection)[0]

    def read(
        self,
        after: int = 0,
        limit: int | None = None,
        *,
        types: Iterable[str] | None = None,
        until: int | None = None,
    ) -> list[RecordedEvent]:
        """Events with position > ``after`` (and <= ``until``), oldest first."""
        query = sa.select(events).where(events.c.position > after).order_by(events.c.position)
        if until is not None:
            query = query.where(events.c.position <= until)
        if types is not None:
            query = query.where(events.c.type.in_(list(types)))
        if limit is not None:
            query = query.limit(limit)
        return self._events(query)

    def read_reverse(
        self, before: int | None = None, limit: int = 100, *, types: Iterable[str] | None = None
    ) -> list[RecordedEvent]:
        """Events with position < ``before``, newest first."""
        query = sa.select(events).order_by(events.c.position.desc()).limit(limit)
        if before is not None:
            query = query.where(events.c.position < before)
        if types is not None:
            query = query.where(events.c.type.in_(list(types)))
        return self._events(query)

    def iter_events(
        self, after: int = 0, *, until: int | None = None, batch: int = 5_000
    ) -> Iterator[RecordedEvent]:
        """Stream events in position order without holding the whole log in memory."""
        position = after
        while True:
            chunk = self.read(position, batch, until=until)
            yield from chunk
            if len(chunk) < batch:
                return
            position = chunk[-1].position

    def read_operation(self, operation_id: uuid.UUID | str) -> list[RecordedEvent]:
        return self._events(
            sa.select(events)
            .where(events.c.operation_id == str(uuid.UUID(str(operation_id))))
            .order_by(events.c.position)
        )

    def read_between(self, since: datetime | None, until: datetime | None) -> list[RecordedEvent]:
        """Events whose ``occurred_at`` lies in [since, until], oldest first."""
        query = sa.select(events).order_by(events.c.position)
        if since is not None:
            query = query.where(events.c.occurred_at >= _as_utc(since))
        if until is not None:
            query = query.where(events.c.occurred_at <= _as_utc(until))
        return self._events(query)

    def position_at(self, moment: datetime) -> int:
        """The newest position whose event occurred at or before ``moment`` (0 if none)."""
        query = sa.select(sa.func.max(events.c.position)).where(events.c.occurred_at <= _as_utc(moment))
        with self._read() as connection:
            value = connection.execute(query).scalar()
        return int(value or 0)

    def last_of_type(self, event_type: str) -> RecordedEvent | None:
        found = self.read_reverse(limit=1, types=[event_type])
        return found[0] if found else None

    def was_applied(self, full_hash: str) -> bool:
        """Whether any ``config.applied`` ever named ``full_hash`` (rollback may target only those)."""
        query = (
            sa.select(events.c.position)
            .where(
                events.c.type == ConfigApplied.event_type, events.c.payload["hash"].as_string() == full_hash
            )
            .limit(1)
        )
        with self._read() as connection:
            return connection.execute(query).first() is not None

    def open_operations(self) -> list[RecordedEvent]:
        """``operation.started`` events with no ``operation.completed``: running elsewhere, or interrupted.

        Start-up asks this, so it must not cost a pass over every operation ever run: the set of open
        operations is a fold of the log, cached like a projection's (checkpoint ``store.open_operations``:
        the operations open at its position), so only the started/completed events after it are read.
        Without a usable checkpoint (none, another version, a state it cannot read) the fold starts
        from position 0.
        """
        with self._read() as connection:
            after, open_at = _open_operations_at(load_checkpoint(connection, _OPEN_OPERATIONS))
            tail = connection.execute(
                sa.select(events.c.position, events.c.type, events.c.operation_id)
                .where(events.c.type.in_(_LIFECYCLE), events.c.position > after)
                .order_by(events.c.position)
            ).all()
            for position, event_type, operation_id in tail:
                if operation_id is None:
                    continue
                if event_type == "operation.started":
                    open_at[str(operation_id)] = int(position)
                else:
                    open_at.pop(str(operation_id), None)
            found = (
                [
                    self._decode(row)
                    for row in connection.execute(
                        sa.select(events)
                        .where(events.c.position.in_(sorted(open_at.values())))
                        .order_by(events.c.position)
                    )
                ]
                if open_at
                else []
            )
        if len(tail) >= _OPEN_OPERATIONS_REFOLD:
            # A cache, not the log: failing to write it (a read-only replica) only costs the next caller time.
            with contextlib.suppress(ConfledgerError):
                self.save_checkpoint(
                    Checkpoint(
                        name=_OPEN_OPERATIONS,
                        version=_OPEN_OPERATIONS_VERSION,
                        position=int(tail[-1].position),
                        state={"open": open_at},
                    )
                )
        return found

    def _events(self, query: sa.Select[Any]) -> list[RecordedEvent]:
        with self._read() as connection:
            return [self._decode(row) for row in connection.execute(query)]

    def _decode(self, row: Any) -> RecordedEvent:
        occurred_at = row.occurred_at
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        return RecordedEvent(
            position=int(row.position),
            event_id=uuid.UUID(row.event_id),
            occurred_at=occurred_at.astimezone(UTC),
            type=row.type,
            schema_version=int(row.schema_version),
            operation_id=None if row.operation_id is None else uuid.UUID(row.operation_id),
            instance_id=row.instance_id,
            actor=row.actor,
            payload=self.registry.decode(row.type, int(row.schema_version), row.payload),
            prev_hash=row.prev_hash,
            hash=row.hash,
        )

    # --- configs --------------------------------------------------------------------------------------

    def resolve_hash(self, reference: str) -> str:
        """The full hash for a full hash or a unique prefix of at least 7 hex digits."""
        with self._read() as connection:
            return resolve_hash(connection, reference)

    def get_config(self, reference: str, *, reveal: bool = True) -> StoredConfig:
        """The stored config for a hash or unique prefix, secrets decrypted (``reveal=False``: left sealed,
        which needs no key and is what a display path wants before redacting)."""
        with self._read() as connection:
            return load_config(connection, resolve_hash(connection, reference), self.cipher, reveal=reveal)

    def has_config(self, full_hash: str) -> bool:
        with self._read() as connection:
            return has_config(connection, full_hash)

    def config_count(self) -> int:
        with self._read() as connection:
            return count_configs(connection)

    # --- checkpoints ----------------------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        with self._read() as connection:
            return load_checkpoint(connection, name)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Upsert a projection checkpoint. Not part of the log: a checkpoint is a cache of a fold."""
        with translate_errors(self.url), self.engine.begin() as connection:
            save_checkpoint(connection, checkpoint)

    # --- integrity ------------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute every link of the chain; report the first position that does not hold, or a log that
        ends before a checkpoint once reached (its newest events were deleted)."""
        with self._read() as connection:
            report = verify_chain(connection)
        if not report.ok:
            return report
        with self._read() as connection:
            return truncation(connection, report)


def _open_operations_at(checkpoint: Checkpoint | None) -> tuple[int, dict[str, int]]:
    """The position the open-operations checkpoint was folded to, and the operations open there (by id,
    with the position of each one's start); ``(0, {})`` when there is none it can read."""
    if checkpoint is None or checkpoint.version != _OPEN_OPERATIONS_VERSION:
        return 0, {}
    state = checkpoint.state
    opened = state.get("open") if isinstance(state, dict) else None
    if not isinstance(opened, dict) or not all(type(value) is int for value in opened.values()):
        return 0, {}
    return checkpoint.position, {str(key): value for key, value in opened.items()}
