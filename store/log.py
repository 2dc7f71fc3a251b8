"""``EventLog``: the append-only, hash-chained event log on SQLite or PostgreSQL.

Every method is synchronous and may block on I/O (an fsync, a lock wait); async callers run it in a
worker thread (``anyio.to_thread.run_sync``) so the event loop never waits on the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _json_string
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from confledger.store import migrate
from confledger.store.canonical import (
    GENESIS_HASH,
    canonical_bytes,
    canonical_json,
    canonical_json_of_dump,
    config_hash,
    sha256_hex,
)
from confledger.store.database import (
    DEFAULT_DATABASE_URL,
    SqliteSynchronous,
    WriterConnection,
    create_store_engine,
    describe_url,
    normalize_url,
    translate_errors,
)
from confledger.store.errors import (
    AmbiguousHashPrefix,
    ChainBroken,
    ConcurrencyConflict,
    ConfledgerError,
    InvalidHashPrefix,
    UnknownConfigHash,
)
from confledger.store.events import DEFAULT_REGISTRY, ConfigApplied, EventRegistry, NewEvent, RecordedEvent
from confledger.store.ids import uuid7_texts
from confledger.store.schema import config_versions, events, projection_checkpoints
from confledger.store.secrets import ConfigPath, SecretCipher, seal, sealed_paths, unseal

__all__ = [
    "Checkpoint",
    "EventLog",
    "PreparedConfig",
    "StoredConfig",
    "VerifyReport",
    "chain_hash",
    "default_instance_id",
]

MIN_PREFIX = 7
_VERIFY_BATCH = 2_000
# The open-operations fold is checkpointed once the tail it had to read holds this many lifecycle events.
_OPEN_OPERATIONS = "store.open_operations"
_OPEN_OPERATIONS_VERSION = 1
_OPEN_OPERATIONS_REFOLD = 256


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _as_utc(moment: datetime) -> datetime:
    # occurred_at is stored in UTC, and SQLite keeps it as text without a zone, so a bound value in
    # another zone would be compared by its wall clock: every bound is normalised to UTC first
    # (a naive value is taken to be UTC already, as stored ones are).
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _timestamp(moment: datetime) -> str:
    # One fixed text form for hashing: both backends keep microseconds, and PostgreSQL hands back the
    # session's time zone, so everything is normalised to UTC before formatting.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment.year >= 1000:
        # The same text strftime gives, for less: strftime's %Y is not padded below year 1000 (glibc),
        # isoformat's is, so only those years keep strftime's form (the hashed form of stored events).
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chain_fields(
    envelope: Mapping[str, Any], payload: Any, occurred_text: str | None = None
) -> dict[str, Any]:
    return {
        "position": envelope["position"],
        "event_id": str(envelope["event_id"]),
        "occurred_at": occurred_text if occurred_text is not None else _timestamp(envelope["occurred_at"]),
        "type": envelope["type"],
        "schema_version": envelope["schema_version"],
        "operation_id": None if envelope["operation_id"] is None else str(envelope["operation_id"]),
        "instance_id": envelope["instance_id"],
        "actor": envelope["actor"],
        "payload": payload,
        "prev_hash": envelope["prev_hash"],
    }


def chain_hash(envelope: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical(envelope without hash))`` as DESIGN.md defines it."""
    fields = _chain_fields(envelope, envelope["payload"])
    return sha256_hex(envelope["prev_hash"].encode("ascii") + canonical_bytes(fields))


def _chain_hash_of_text(
    envelope: Mapping[str, Any], payload_text: str, occurred_text: str | None = None
) -> str:
    """``chain_hash`` of an envelope whose payload is given as its canonical JSON text (so the payload is
    not serialised a second time)."""
    operation_id = envelope["operation_id"]
    return _link_hash(
        envelope["prev_hash"],
        envelope["position"],
        str(envelope["event_id"]),
        occurred_text if occurred_text is not None else _timestamp(envelope["occurred_at"]),
        envelope["type"],
        envelope["schema_version"],
        None if operation_id is None else str(operation_id),
        envelope["instance_id"],
        envelope["actor"],
        payload_text,
    )


def _link_hash(
    prev_hash: Any,
    position: Any,
    event_id: str,
    occurred_text: str,
    event_type: Any,
    schema_version: Any,
    operation_id: str | None,
    instance_id: Any,
    actor: Any,
    payload_text: str,
) -> str:
    """``chain_hash`` of one event, its payload given as canonical JSON text and its id, time and
    operation as the text forms ``chain_hash`` hashes.

    The canonical JSON of the envelope is written out directly (keys in sorted order, strings through
    the string encoder json itself uses, ints as json writes them): on the append path, serialising a
    dict through json costs several times more than the hash. Fields of any other type, and strings
    with no UTF-8 form, go through canonical_json, which formats or refuses them as it always did.
    """
    if (
        type(position) is int
        and type(schema_version) is int
        and type(event_type) is str
        and type(instance_id) is str
        and type(actor) is str
        and type(prev_hash) is str
    ):
        text = (
            f'{{"actor":{_json_string(actor)},"event_id":{_json_string(event_id)},'
            f'"instance_id":{_json_string(instance_id)},"occurred_at":{_json_string(occurred_text)},'
            f'"operation_id":{"null" if operation_id is None else _json_string(operation_id)},'
            f'"payload":{payload_text},"position":{position},"prev_hash":{_json_string(prev_hash)},'
            f'"schema_version":{schema_version},"type":{_json_string(event_type)}}}'
        )
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: canonical_json refuses it below, naming it
        else:
            return hashlib.sha256(prev_hash.encode("ascii") + data).hexdigest()
    return _spliced_link_hash(
        {
            "position": position,
            "event_id": event_id,
            "occurred_at": occurred_text,
            "type": event_type,
            "schema_version": schema_version,
            "operation_id": operation_id,
            "instance_id": instance_id,
            "actor": actor,
            "prev_hash": prev_hash,
        },
        payload_text,
        occurred_text,
    )


_PAYLOAD_SLOT = '"payload":null'


def _spliced_link_hash(envelope: Mapping[str, Any], payload_text: str, occurred_text: str) -> str:
    # The general form: the other fields are serialised around a null payload and the text is spliced
    # into that slot. Keys are sorted and every quote inside a JSON string is escaped, so the slot
    # occurs exactly once, and the bytes are the ones ``chain_hash`` hashes.
    text = canonical_json(_chain_fields(envelope, None, occurred_text))
    start = text.index(_PAYLOAD_SLOT)
    whole = f'{text[:start]}"payload":{payload_text}{text[start + len(_PAYLOAD_SLOT) :]}'
    return sha256_hex(envelope["prev_hash"].encode("ascii") + whole.encode("utf-8"))


# "No operation seen yet" in a batch, distinct from an event's operation_id of None.
_NO_OPERATION = object()

# The statements on the append path, built once: constructing a Core statement costs more than running
# one of these on SQLite (the compiled form is cached either way).
_HEAD = sa.select(events.c.position, events.c.hash).order_by(events.c.position.desc()).limit(1)
_RAW_HEAD = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
_EVENT_COLUMNS = "position, event_id, occurred_at, type, schema_version, operation_id, instance_id, actor, payload, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class _RawStatements:
    """The append path's statements in the driver's own parameter style."""

    insert_events: str
    head_and_applied_since: str
    config_first_position: str
    insert_config: str
    set_first_position: str


def _raw_statements(mark: str, json_value: str) -> _RawStatements:
    return _RawStatements(
        insert_events=(
            f"INSERT INTO events ({_EVENT_COLUMNS}) "
            f"VALUES ({', '.join([mark] * 8)}, {json_value}, {mark}, {mark})"
        ),
        # The head, and the first config.applied after a position, in one statement: on PostgreSQL
        # that is one round trip fewer per append that applies a config. An empty log has no row,
        # and nothing in it can conflict.
        head_and_applied_since=(
            "SELECT latest.position, latest.hash, (SELECT applied.position FROM events AS applied "
            f"WHERE applied.type = {mark} AND applied.position > {mark} "
            "ORDER BY applied.position LIMIT 1) AS applied_since "
            "FROM events AS latest ORDER BY latest.position DESC LIMIT 1"
        ),
        config_first_position=f"SELECT first_position FROM config_versions WHERE hash = {mark}",
        insert_config=(
            "INSERT INTO config_versions (hash, body, size_bytes, first_position, created_at) "
            f"VALUES ({mark}, {json_value}, {mark}, {mark}, {mark})"
        ),
        set_first_position=f"UPDATE config_versions SET first_position = {mark} WHERE hash = {mark}",
    )


_RAW_SQLITE = _raw_statements("?", "?")
_RAW_POSTGRES = _raw_statements("%s", "CAST(%s AS json)")


@dataclass(frozen=True, slots=True)
class PreparedConfig:
    """A config body ready to store: hash over the plain body, secrets already sealed."""

    hash: str
    sealed_body: dict[str, Any]
    size_bytes: int


@dataclass(frozen=True, slots=True)
class StoredConfig:
    hash: str
    body: dict[str, Any]
    size_bytes: int
    first_position: int | None
    created_at: datetime
    secret_paths: frozenset[ConfigPath] = frozenset()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    version: int
    position: int
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    head: int
    first_broken_position: int | None = None
    reason: str | None = None

    def raise_for_break(self) -> None:
        if not self.ok and self.first_broken_position is not None:
            raise ChainBroken(
                f"chain broken at position {self.first_broken_position}: {self.reason}",
                position=self.first_broken_position,
            )


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
        )
        self._listeners: list[Callable[[list[RecordedEvent]], None]] = []
        self._raw = _RAW_SQLITE if self.url.get_backend_name() == "sqlite" else _RAW_POSTGRES
        self._writer = WriterConnection(self.engine)
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
        if not new_events:
            return [], []
        payload_texts = [self._payload_text(event) for event in new_events]
        applies = any(event.payload.event_type == ConfigApplied.event_type for event in new_events)
        event_ids = uuid7_texts(len(new_events))
        instance_id = self.instance_id
        # The hot path talks to the driver directly, on the writer's own connection: SQLAlchemy's
        # connection and statement machinery costs more per append than the commit itself does on a
        # fast disk. Same lock as every other writer.
        with self._writer.transaction() as cursor:
            if expected_head is not None and applies:
                head_position, head_hash = self._raw_head_if_no_apply_since(cursor, expected_head)
            else:
                head_position, head_hash = self._raw_head(cursor)
            # Taken under the lock so occurred_at never decreases along positions on one clock.
            now = datetime.now(UTC)
            # One moment for the whole batch: its two text forms (hashed, stored) are formatted once.
            occurred_text = _timestamp(now)
            stored_at = self._stored_timestamp(now)
            # Rows in the insert statement's column order (_EVENT_COLUMNS); the events of a batch
            # mostly share one operation, whose text form is made once.
            rows: list[tuple[Any, ...]] = []
            previous = head_hash
            position = head_position
            operation_id: object = _NO_OPERATION
            operation_text: str | None = None
            for event, payload_text, event_id in zip(new_events, payload_texts, event_ids, strict=True):
                position += 1
                if event.operation_id is not operation_id:
                    operation_id = event.operation_id
                    operation_text = None if operation_id is None else str(operation_id)
                event_type = event.payload.event_type
                schema_version = type(event.payload).schema_version
                digest = _link_hash(
                    previous,
                    position,
                    event_id,
                    occurred_text,
                    event_type,
                    schema_version,
                    operation_text,
                    instance_id,
                    event.actor,
                    payload_text,
                )
                rows.append(
                    (
                        position,
                        event_id,
                        stored_at,
                        event_type,
                        schema_version,
                        operation_text,
                        instance_id,
                        event.actor,
                        payload_text,
                        previous,
                        digest,
                    )
                )
                previous = digest
            cursor.executemany(self._raw.insert_events, rows)
            for config in configs:
                self._raw_store_config(cursor, config, first_position=head_position + 1, now=now)
        positions = [row[0] for row in rows]
        if not (recorded or self._listeners):
            return positions, []
        events_recorded = self._recorded(rows, new_events, now)
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
    def _recorded(
        rows: Sequence[tuple[Any, ...]], new_events: Sequence[NewEvent], occurred_at: datetime
    ) -> list[RecordedEvent]:
        """The events of an append as reading them back would give them, from its rows."""
        recorded: list[RecordedEvent] = []
        operation_id: object = _NO_OPERATION
        operation_uuid: uuid.UUID | None = None
        for row, event in zip(rows, new_events, strict=True):
            if event.operation_id is not operation_id:
                operation_id = event.operation_id
                # The caller's UUID itself when it is one (it is what the row's text says); anything
                # else is read back from that text, as the log would.
                operation_uuid = (
                    None
                    if row[5] is None
                    else operation_id
                    if type(operation_id) is uuid.UUID
                    else uuid.UUID(row[5])
                )
            # model_validate, not the constructor: the same validation, for about half the cost of
            # validating into an instance __init__ has already made. event_id goes in as its text:
            # pydantic makes the UUID from it for less than uuid.UUID does.
            recorded.append(
                RecordedEvent.model_validate(
                    {
                        "position": row[0],
                        "event_id": row[1],
                        "occurred_at": occurred_at,
                        "type": row[3],
                        "schema_version": row[4],
                        "operation_id": operation_uuid,
                        "instance_id": row[6],
                        "actor": row[7],
                        "payload": event.payload,
                        "prev_hash": row[9],
                        "hash": row[10],
                    }
                )
            )
        return recorded

    @staticmethod
    def _payload_text(event: NewEvent) -> str:
        # Serialised once, before taking the lock (NaN/Infinity are refused here): the chain hash and
        # the stored payload both use this text.
        return canonical_json_of_dump(event.payload.model_dump(mode="json"))

    @staticmethod
    def _head_row(connection: Connection) -> tuple[int, str]:
        row = connection.execute(_HEAD).first()
        return (0, GENESIS_HASH) if row is None else (int(row.position), str(row.hash))

    def _stored_timestamp(self, moment: datetime) -> Any:
        if self._raw is _RAW_SQLITE:
            # The text form SQLAlchemy's SQLite DateTime writes and reads (UTC, no zone, microseconds);
            # isoformat is the cheaper way to write it, for years strftime pads too (see _timestamp).
            moment = moment.astimezone(UTC)
            if moment.year >= 1000:
                return moment.replace(tzinfo=None).isoformat(" ", "microseconds")
            return moment.strftime("%Y-%m-%d %H:%M:%S.%f")
        return moment

    def _raw_head(self, cursor: Any) -> tuple[int, str]:
        cursor.execute(_RAW_HEAD)
        row = cursor.fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def _raw_head_if_no_apply_since(self, cursor: Any, expected_head: int) -> tuple[int, str]:
        """``_raw_head``, unless a ``config.applied`` landed after ``expected_head``: ConcurrencyConflict."""
        cursor.execute(self._raw.head_and_applied_since, (ConfigApplied.event_type, expected_head))
        row = cursor.fetchone()
        if row is None:
            return 0, GENESIS_HASH
        if row[2] is not None:
            conflicting = int(row[2])
            raise ConcurrencyConflict(
                f"another config was applied at position {conflicting} after this operation started "
                f"(at head {expected_head}); retry against the new current config",
                expected_head=expected_head,
                conflicting_position=conflicting,
            )
        return int(row[0]), str(row[1])

    def prepare_config(
        self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()
    ) -> PreparedConfig:
        """Hash ``body`` (secrets plain) and seal its secrets for storage."""
        plain = dict(body)
        return PreparedConfig(
            hash=config_hash(plain),
            sealed_body=seal(plain, secret_paths, self.cipher),
            size_bytes=len(canonical_bytes(plain)),
        )

    def put_config(self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()) -> str:
        """Store a config body by content; storing the same body twice is a no-op. Returns its hash."""
        prepared = self.prepare_config(body, secret_paths)
        with self._writer.transaction() as cursor:
            self._raw_store_config(cursor, prepared, first_position=None, now=datetime.now(UTC))
        return prepared.hash

    def _raw_store_config(
        self, cursor: Any, config: PreparedConfig, *, first_position: int | None, now: datetime
    ) -> None:
        """Store a body by content (once); ``first_position`` is the append that first names it."""
        cursor.execute(self._raw.config_first_position, (config.hash,))
        existing = cursor.fetchone()
        if existing is None:
            created_at = self._stored_timestamp(now)
            body = canonical_json(config.sealed_body)
            cursor.execute(
                self._raw.insert_config, (config.hash, body, config.size_bytes, first_position, created_at)
            )
        elif existing[0] is None and first_position is not None:
            cursor.execute(self._raw.set_first_position, (first_position, config.hash))

    # --- reading --------------------------------------------------------------------------------------

    def head(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        with self._read() as connection:
            return self._head_row(connection)[0]

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
        with self._read() as connection:
            return [self._decode(row) for row in connection.execute(query)]

    def read_reverse(
        self, before: int | None = None, limit: int = 100, *, types: Iterable[str] | None = None
    ) -> list[RecordedEvent]:
        """Events with position < ``before``, newest first."""
        query = sa.select(events).order_by(events.c.position.desc()).limit(limit)
        if before is not None:
            query = query.where(events.c.position < before)
        if types is not None:
            query = query.where(events.c.type.in_(list(types)))
        with self._read() as connection:
            return [self._decode(row) for row in connection.execute(query)]

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
        query = (
            sa.select(events)
            .where(events.c.operation_id == str(uuid.UUID(str(operation_id))))
            .order_by(events.c.position)
        )
        with self._read() as connection:
            return [self._decode(row) for row in connection.execute(query)]

    def read_between(self, since: datetime | None, until: datetime | None) -> list[RecordedEvent]:
        """Events whose ``occurred_at`` lies in [since, until], oldest first."""
        query = sa.select(events).order_by(events.c.position)
        if since is not None:
            query = query.where(events.c.occurred_at >= _as_utc(since))
        if until is not None:
            query = query.where(events.c.occurred_at <= _as_utc(until))
        with self._read() as connection:
            return [self._decode(row) for row in connection.execute(query)]

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
        Without the checkpoint (or with one of another version) the fold starts from position 0.
        """
        lifecycle = ("operation.started", "operation.completed")
        with self._read() as connection:
            row = connection.execute(
                sa.select(
                    projection_checkpoints.c.version,
                    projection_checkpoints.c.position,
                    projection_checkpoints.c.state,
                ).where(projection_checkpoints.c.name == _OPEN_OPERATIONS)
            ).first()
            after = 0
            open_at: dict[str, int] = {}
            if row is not None and int(row.version) == _OPEN_OPERATIONS_VERSION:
                after = int(row.position)
                open_at = {str(key): int(value) for key, value in dict(row.state).get("open", {}).items()}
            tail = connection.execute(
                sa.select(events.c.position, events.c.type, events.c.operation_id)
                .where(events.c.type.in_(lifecycle), events.c.position > after)
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
                    self._decode(event)
                    for event in connection.execute(
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
        prefix = reference.strip().lower()
        if len(prefix) < MIN_PREFIX or len(prefix) > 64 or any(c not in "0123456789abcdef" for c in prefix):
            raise InvalidHashPrefix(
                f"{reference[:80]!r} is not a config hash: give at least {MIN_PREFIX} hex digits"
            )
        # Hex digits cannot contain LIKE wildcards, so the prefix is safe to pattern-match as is.
        query = (
            sa.select(config_versions.c.hash)
            .where(config_versions.c.hash.like(f"{prefix}%"))
            .order_by(config_versions.c.hash)
            .limit(5)
        )
        with self._read() as connection:
            matches = [str(value) for value in connection.execute(query).scalars()]
        if not matches:
            raise UnknownConfigHash(f"no stored config has a hash starting with {prefix}")
        if len(matches) > 1:
            raise AmbiguousHashPrefix(
                f"{prefix} matches more than one config ({', '.join(m[:16] for m in matches)}); give more digits",
                candidates=matches,
            )
        return matches[0]

    def get_config(self, reference: str, *, reveal: bool = True) -> StoredConfig:
        """The stored config for a hash or unique prefix, secrets decrypted (``reveal=False``: left sealed,
        which needs no key and is what a display path wants before redacting)."""
        full = self.resolve_hash(reference)
        with self._read() as connection:
            row = connection.execute(sa.select(config_versions).where(config_versions.c.hash == full)).one()
        created_at = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        return StoredConfig(
            hash=full,
            body=unseal(row.body, self.cipher) if reveal else dict(row.body),
            size_bytes=int(row.size_bytes),
            first_position=None if row.first_position is None else int(row.first_position),
            created_at=created_at,
            secret_paths=frozenset(sealed_paths(row.body)),
        )

    def has_config(self, full_hash: str) -> bool:
        with self._read() as connection:
            return (
                connection.execute(
                    sa.select(config_versions.c.hash).where(config_versions.c.hash == full_hash)
                ).first()
                is not None
            )

    def config_count(self) -> int:
        with self._read() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(config_versions)).scalar() or 0
            )

    # --- checkpoints ----------------------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        with self._read() as connection:
            row = connection.execute(
                sa.select(projection_checkpoints).where(projection_checkpoints.c.name == name)
            ).first()
        if row is None:
            return None
        return Checkpoint(
            name=name, version=int(row.version), position=int(row.position), state=dict(row.state)
        )

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Upsert a projection checkpoint. Not part of the log: a checkpoint is a cache of a fold."""
        values = {
            "version": checkpoint.version,
            "position": checkpoint.position,
            "state": checkpoint.state,
            "updated_at": datetime.now(UTC),
        }
        with translate_errors(self.url), self.engine.begin() as connection:
            updated = connection.execute(
                projection_checkpoints.update()
                .where(
                    projection_checkpoints.c.name == checkpoint.name,
                    # Never move a checkpoint backwards when two processes fold concurrently.
                    projection_checkpoints.c.position <= checkpoint.position,
                )
                .values(**values)
            ).rowcount
            if not updated:
                exists = connection.execute(
                    sa.select(projection_checkpoints.c.name).where(
                        projection_checkpoints.c.name == checkpoint.name
                    )
                ).first()
                if exists is None:
                    connection.execute(projection_checkpoints.insert().values(name=checkpoint.name, **values))

    # --- integrity ------------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute every link of the chain; report the first position that does not hold."""
        expected_position = 1
        previous = GENESIS_HASH
        checked = 0
        columns = [c for c in events.c]
        with self._read() as connection:
            head = self._head_row(connection)[0]
            after = 0
            while True:
                rows = connection.execute(
                    sa.select(*columns)
                    .where(events.c.position > after)
                    .order_by(events.c.position)
                    .limit(_VERIFY_BATCH)
                ).all()
                for row in rows:
                    position = int(row.position)
                    if position != expected_position:
                        return VerifyReport(
                            False,
                            checked,
                            head,
                            expected_position,
                            f"event {expected_position} is missing (next stored position is {position})",
                        )
                    if row.prev_hash != previous:
                        return VerifyReport(
                            False,
                            checked,
                            head,
                            position,
                            "prev_hash does not match the previous event's hash",
                        )
                    envelope = row._asdict()
                    if chain_hash(envelope) != row.hash:
                        return VerifyReport(
                            False, checked, head, position, "stored hash does not match the event's contents"
                        )
                    previous = row.hash
                    expected_position += 1
                    checked += 1
                if len(rows) < _VERIFY_BATCH:
                    break
                after = int(rows[-1].position)
        # A chain cannot show that its newest events were cut off; checkpoints remember how far the log
        # once reached, so a log that now ends before a checkpoint was truncated.
        # Both read in one statement: a writer appending (and checkpointing) meanwhile moves both together.
        with self._read() as connection:
            reached, now_head = connection.execute(
                sa.select(
                    sa.select(sa.func.max(projection_checkpoints.c.position)).scalar_subquery(),
                    sa.select(sa.func.max(events.c.position)).scalar_subquery(),
                )
            ).one()
        if reached is not None and int(reached) > int(now_head or 0):
            return VerifyReport(
                False,
                checked,
                head,
                int(now_head or 0) + 1,
                f"the log ends at position {int(now_head or 0)} but a projection was checkpointed at "
                f"{int(reached)}: the newest events were deleted",
            )
        return VerifyReport(True, checked, head)
