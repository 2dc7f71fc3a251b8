"""``EventLog``: the append-only, hash-chained event log on SQLite or PostgreSQL.

Every method is synchronous and may block on I/O (an fsync, a lock wait); async callers run it in a
worker thread, so the event loop never waits on the database. The chain's links are made and checked
in ``store.chain``; checkpoints are ``store.checkpoints``; stored config bodies ``store.configs``; keys,
MACs and the anchor file ``store.integrity``; the statements on the events table and the decoding of
their rows ``store.queries``; the audit and replay reads (by position, operation, time, type)
``store.log_reads``, a base of ``EventLog``; the open-operations fold ``store.open_operations``; the key
state and the checks ``verify`` runs beyond the links ``store.verification``.

A log with a key (``signing_key``, or else the ``cipher``'s encryption key) is keyed: its links are
HMACs, its checkpoints MACed, its config hashes take secrets only as keyed digests, and an anchor file
outside the database remembers a position and its hash. A log with neither (plain Python use with no
secrets) keeps DESIGN.md's keyless sha256 chain, which shows accidents but not a forger who can write the
database. Once a log is keyed it stays keyed: appending to it without the key is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, Connection, Engine

from confledger.store import migrate
from confledger.store.canonical import GENESIS_HASH, canonical_json, config_hash
from confledger.store.chain import HEAD, VerifyReport, link_of
from confledger.store.checkpoints import Checkpoint, read_checkpoint, save_checkpoints
from confledger.store.configs import (
    CONFIG_ROW,
    ConfigWrites,
    PreparedConfig,
    StoredConfig,
    count_configs,
    has_config,
    is_full_hash,
    load_config,
    prepare_config,
    resolve_hash,
    store_config,
    stored_config,
)
from confledger.store.database import (
    DEFAULT_DATABASE_URL,
    LogWriter,
    SqliteSynchronous,
    create_store_engine,
    describe_url,
    normalize_url,
    sqlite_path,
    translate_errors,
)
from confledger.store.errors import (
    ConfigLookupError,
    ConfledgerError,
    EventSchemaError,
    HashSchemeTooNew,
    IntegrityFailed,
    IntegrityKeyError,
    SecretKeyError,
)
from confledger.store.events import (
    DEFAULT_REGISTRY,
    ConfigApplied,
    EventRegistry,
    IntegrityCheckFailed,
    NewEvent,
    RecordedEvent,
)
from confledger.store.ids import uuid7_texts
from confledger.store.integrity import (
    CONFIG_HASH_KEYED,
    LINK_HMAC,
    LINK_SHA256,
    Anchor,
    AnchorFile,
    IntegrityKeys,
    config_hash_as,
    load_key_record,
    save_key_record,
    save_verified,
    seal_anchor,
)
from confledger.store.log_reads import LogReads
from confledger.store.open_operations import read_open_operations
from confledger.store.queries import (
    APPLIED_TO_HEAD,
    EVENT_COLUMNS,
    HEAD_AND_APPLIED_SINCE,
    PAGE,
    PAGE_UNTIL,
    decode_event,
    head_unless_applied_since,
)
from confledger.store.schema import events
from confledger.store.secrets import ConfigPath, SecretCipher, digest_secrets
from confledger.store.statements import DriverStatement, InsertRows
from confledger.store.verification import (
    Integrity,
    check_log,
    event_link_holds,
    forget_verified,
    key_mismatch,
    read_integrity,
    start_check_from,
)

__all__ = [
    "Checkpoint",
    "EventLog",
    "Integrity",
    "PreparedConfig",
    "StoredConfig",
    "VerifyReport",
    "default_instance_id",
]

logger = logging.getLogger(__name__)

# The most events an append reads for its in-order listeners (``subscribe``): a fleet's answers to one
# change are two or three per instance. A listener further behind than this (back from an outage, after
# a bulk import elsewhere) reads the log itself, in pages.
GAP_ROWS = 256

# Where the config's columns start in a row of ``APPLIED_TO_HEAD`` (after the head and the event's).
_APPLIED_CONFIG = 1 + len(EVENT_COLUMNS)


def default_anchor_path(url: URL) -> Path | None:
    """Beside an SQLite database file (``<name>.anchor``); a PostgreSQL log's anchor is named by the caller."""
    database = sqlite_path(url.render_as_string(hide_password=False))
    return None if database is None else database.with_name(database.name + ".anchor")


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class EventLog(LogReads):
    """Open (and migrate to head) the log at ``url``; one instance is shared by a whole process."""

    def __init__(
        self,
        url: str | URL = DEFAULT_DATABASE_URL,
        *,
        instance_id: str | None = None,
        registry: EventRegistry = DEFAULT_REGISTRY,
        cipher: SecretCipher | None = None,
        signing_key: str | None = None,
        anchor_path: Path | None = None,
        sqlite_synchronous: SqliteSynchronous = "FULL",
        busy_timeout_ms: int = 10_000,
        connect_timeout_s: int = 5,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        migrate_on_open: bool = True,
    ) -> None:
        """``signing_key`` (else the ``cipher``'s key) keys the log; ``anchor_path`` is the anchor file
        (default: beside an SQLite database; none for PostgreSQL unless named). ``pool_size`` and
        ``max_overflow``: PostgreSQL's connection pool (None: SQLAlchemy's own, 5 and 10)."""
        self.url = normalize_url(url)
        self.instance_id = instance_id or default_instance_id()
        self.registry = registry
        self._cipher = cipher
        self._signing_key = signing_key
        self._integrity_state: Integrity | None = None
        self.anchor_path = anchor_path if anchor_path is not None else default_anchor_path(self.url)
        self._anchor_lock = threading.Lock()
        self._anchor_file: AnchorFile | None = None
        self._anchored = 0
        # Set when an integrity check failed: appends are refused from then on (IntegrityFailed).
        self.integrity_failure: VerifyReport | None = None
        self.engine: Engine = create_store_engine(
            self.url,
            sqlite_synchronous=sqlite_synchronous,
            busy_timeout_ms=busy_timeout_ms,
            connect_timeout_s=connect_timeout_s,
            application_name=f"confledger {self.instance_id}",
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        self._listeners: list[Callable[[list[RecordedEvent]], None]] = []
        # Where each listener that folds the log in order has folded it to (``subscribe``'s ``folded_to``).
        self._folded_to: dict[Callable[[list[RecordedEvent]], None], Callable[[], int]] = {}
        # Whether the last append found events others appended since its listeners' position.
        self._others_appending = False
        self._writer = LogWriter(self.engine, sqlite_synchronous)
        # The writer's data version before the last read of what was decided elsewhere, and the head
        # that read found (``decided_elsewhere``).
        self._quiet: tuple[tuple[int, int], int] | None = None
        dialect = self.engine.dialect
        self._head_statement = DriverStatement(HEAD, dialect)
        self._head_and_applied_since = DriverStatement(HEAD_AND_APPLIED_SINCE, dialect)
        self._applied_to_head = DriverStatement(APPLIED_TO_HEAD, dialect)
        self._config_row = DriverStatement(CONFIG_ROW, dialect)
        self._config_writes = ConfigWrites(dialect)
        # The payload is bound as its canonical JSON text, the text its link covers (encoded once).
        self._insert_events = InsertRows(events, dialect, encoded=("payload",))
        self._page = DriverStatement(PAGE, dialect)
        self._page_until = DriverStatement(PAGE_UNTIL, dialect)
        try:
            if migrate_on_open:
                migrate.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def cipher(self) -> SecretCipher | None:
        return self._cipher

    @cipher.setter
    def cipher(self, cipher: SecretCipher | None) -> None:
        # The integrity key may derive from it: resolved again on next use.
        self._cipher = cipher
        self._integrity_state = None

    @property
    def signing_key(self) -> str | None:
        return self._signing_key

    @signing_key.setter
    def signing_key(self, signing_key: str | None) -> None:
        self._signing_key = signing_key
        self._integrity_state = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def writer_session(self) -> int | None:
        """PostgreSQL: the server process this log's appends commit through (``LogWriter.session_pid``)."""
        return self._writer.session_pid()

    @property
    def display_url(self) -> str:
        return describe_url(self.url)

    def close(self) -> None:
        self._writer.close()
        self.engine.dispose()
        with self._anchor_lock:
            if self._anchor_file is not None:
                self._anchor_file.close()
                self._anchor_file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _read(self, *, snapshot: bool = True) -> Iterator[Connection]:
        # One read transaction per call: SQLite and PostgreSQL both give it a consistent snapshot, so
        # verify() sees one state of the log even while writers append. Reads take no lock.
        # ``snapshot=False``: a read of one statement (its own snapshot already), or of a stored config
        # (its body never changes once written). On PostgreSQL it runs outside a transaction, which
        # would cost two more round trips (BEGIN, and ROLLBACK on return to the pool) than the
        # statement itself; the head read before every operation is one of these.
        with translate_errors(self.url), self.engine.connect() as connection:
            if not snapshot and self.dialect == "postgresql":
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    # --- writing --------------------------------------------------------------------------------------

    def append(
        self,
        new_events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Iterable[PreparedConfig] = (),
        durable: bool = True,
    ) -> list[int]:
        """Append ``new_events`` (and store ``configs``) in one transaction; return their positions.

        ``expected_head`` is the head the caller's operation started from: if the batch applies a config
        and another ``config.applied`` has landed since, nothing is written and ``ConcurrencyConflict``
        is raised, so a decision made on stale state never silently overwrites a newer one.

        ``durable=False``: on SQLite, commit without waiting for the disk; the batch survives this
        process crashing and is made durable by the next durable append, which also moves the anchor
        file past it (a relaxed append leaves the anchor where it was). On PostgreSQL, a server that
        can crash on its own, it changes nothing (``LogWriter.transaction_reading``). For a batch that a
        later one of the same operation completes, and that answers nobody.
        """
        positions, _ = self._append(new_events, expected_head, configs, recorded=False, durable=durable)
        return positions

    def append_recorded(
        self,
        new_events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Iterable[PreparedConfig] = (),
        durable: bool = True,
    ) -> list[RecordedEvent]:
        """``append``, returning the events as recorded (what reading them back would give), so a caller
        can fold what it just wrote without a round trip to the database."""
        _, recorded = self._append(new_events, expected_head, configs, recorded=True, durable=durable)
        return recorded

    def _append(
        self,
        new_events: Sequence[NewEvent],
        expected_head: int | None,
        configs: Iterable[PreparedConfig],
        *,
        recorded: bool,
        durable: bool = True,
    ) -> tuple[list[int], list[RecordedEvent]]:
        """Write the batch; its positions, and the events as recorded when asked for or listened to
        (listeners hear of the batch after the commit)."""
        if not new_events:
            return [], []
        integrity = self.integrity()
        keys = self._writable(integrity)
        link_version = LINK_SHA256 if keys is None else LINK_HMAC
        # Dumped and encoded before the lock is taken, so nothing of the payloads' own work is done while
        # holding it: by the model's own serializer (model_dump(mode="json") without its keyword layer),
        # then to the canonical text that the row stores and its link covers.
        payloads = [
            canonical_json(type(event.payload).__pydantic_serializer__.to_python(event.payload, mode="json"))
            for event in new_events
        ]
        applies = any(event.payload.event_type == ConfigApplied.event_type for event in new_events)
        event_ids = uuid7_texts(len(new_events))
        # The head is read as the write lock is taken (on PostgreSQL in the same round trip).
        checks_applies = expected_head is not None and applies
        first, values = (
            (self._head_and_applied_since, {"expected_head": expected_head})
            if checks_applies
            else (self._head_statement, {})
        )
        # What the in-order listeners lack before this batch is read under the lock too (``subscribe``):
        # once the head shows it is there, or, on PostgreSQL while other writers are appending (the last
        # batch found some of theirs), in the BEGIN's round trip. Not always there: a simple query is
        # planned at every run, and the read cost a lone instance 0.2-0.3 ms per append for nothing.
        # (A copy first: another thread may subscribe or unsubscribe meanwhile.)
        since = min((folded_to() for folded_to in list(self._folded_to.values())), default=None)
        then = None
        if since is not None:
            values = {**values, "after": since, "batch": GAP_ROWS}
            then = self._page if self.dialect == "postgresql" and self._others_appending else None
        with self._writer.transaction_reading(first, values, then=then, durable=durable) as (
            connection,
            head,
            gap_rows,
        ):
            if expected_head is not None and checks_applies:
                head_position, previous = head_unless_applied_since(head, expected_head)
            else:
                head_position, previous = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
            if since is not None:
                self._others_appending = head_position > since
                if gap_rows is None and self._others_appending:
                    gap_rows = self._page.all(connection, values)
            if keys is not None and integrity.record is None:
                integrity = self._key_the_log(connection, keys, head_position)
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
                    "link_version": link_version,
                }
                link = link_of(row, link_version, keys, payload)
                if link is None:  # pragma: no cover - keys is set whenever link_version is LINK_HMAC
                    raise IntegrityKeyError("no key to make a keyed link with")
                row["hash"] = previous = link
                rows.append(row)
            # The anchor's slot is sealed now, while the link's encoder and MAC are warm in the cache; it
            # is written only once the batch has committed (it must never name an event the log lacks),
            # and only by a durable commit: a relaxed one may be lost with the machine while the anchor's
            # write survives it, and the durable append that follows (an operation's outcome) anchors
            # past it anyway.
            sealed = None
            if durable and keys is not None and integrity.record is not None and self.anchor_path is not None:
                sealed = seal_anchor(Anchor(integrity.record.log_id, rows[-1]["position"], previous), keys)
            with self._writer.last_writes(connection):
                self._insert_events.run(connection, rows)
                for config in configs:
                    store_config(
                        connection,
                        config,
                        first_position=head_position + 1,
                        created_at=now,
                        writes=self._config_writes,
                    )
        positions = [row["position"] for row in rows]
        if keys is not None and integrity.record is not None:
            # Published once committed: a batch rolled back leaves the key record to the next append.
            self._integrity_state = integrity
            if sealed is not None:
                self._anchor(positions[-1], sealed, keys)
        if not (recorded or self._listeners):
            return positions, []
        events_recorded = self._recorded(rows, new_events)
        gap = self._gap(gap_rows, head_position) if since is not None else []
        for listener in list(self._listeners):
            listener([*gap, *events_recorded] if gap and listener in self._folded_to else events_recorded)
        return positions, events_recorded

    def _gap(self, rows: Sequence[Sequence[Any]] | None, head_position: int) -> list[RecordedEvent]:
        """The events other processes appended before a batch, from ``rows`` read under its lock: all of
        them up to ``head_position``, or none (more than ``GAP_ROWS``, or one that does not decode: the
        listener then reads the log itself, and meets the error there, where a read reports it)."""
        if not rows or int(rows[-1][0]) != head_position:
            return []
        try:
            return [decode_event(self.registry, row) for row in rows]
        except EventSchemaError:
            return []

    def record_integrity_failure(self, report: VerifyReport) -> None:
        """Record a failed check as ``integrity.check_failed``, when it is one the chain itself survived
        (a stored body that does not match its hash: the links verified). Nothing is chained onto a
        broken, cut or rewritten chain, nor for a newer release's body (``hash_scheme_too_new``)."""
        if report.code != "config_body_mismatch":
            return
        event = IntegrityCheckFailed(
            reason=report.code,
            message=report.reason or report.code,
            config_hash=report.config_hash,
            position=report.first_broken_position,
        )
        failure, self.integrity_failure = self.integrity_failure, None
        try:
            self._append([NewEvent(event)], None, (), recorded=False)
        finally:
            self.integrity_failure = failure if failure is not None else report

    def _writable(self, integrity: Integrity) -> IntegrityKeys | None:
        """The key appends sign with; raises when this log may not be appended to by this process."""
        if self.integrity_failure is not None:
            raise IntegrityFailed(
                f"the log failed its integrity check ({self.integrity_failure.reason}); nothing is "
                f"appended: {IntegrityFailed.recovery_for(self.integrity_failure.code)}",
                reason=self.integrity_failure.code or "integrity_failed",
            )
        if integrity.record is not None and integrity.keys is None:
            raise IntegrityKeyError(
                "this log is keyed (its links are HMACs) but no key is configured: set "
                "CONFLEDGER_ENCRYPTION_KEY or CONFLEDGER_SIGNING_KEY to the key it was written with"
            )
        return integrity.keys

    def _key_the_log(self, connection: Connection, keys: IntegrityKeys, head_position: int) -> Integrity:
        """Under the write lock: the log's key record, written now if this is its first keyed append."""
        record = load_key_record(connection)
        if record is None:
            record = save_key_record(connection, keys, keyed_from=head_position + 1)
        elif record.check_value != keys.check_value:
            raise key_mismatch(keys)
        return Integrity(keys, record, keys.record_mac_holds("integrity.key", record.value(), record.mac))

    def _anchor(self, position: int, sealed: bytes, keys: IntegrityKeys) -> None:
        """Move the anchor file to ``position``, whose slot ``sealed`` is (never back); a failure to write
        it fails no append.

        No fsync of its own: the anchor is a lower bound on the log, and a slot written in place after each
        commit costs a few microseconds where a synced one would cost about what the commit does. A power
        cut can lose its last writes (it then names an older position, still a true bound); it cannot make
        the anchor name an event the log lacks, since the slot is written only after the commit that made
        the event durable (a synced commit: SQLite's synchronous FULL, as serve runs it, or PostgreSQL).
        """
        if self.anchor_path is None:
            return
        with self._anchor_lock:
            if position <= self._anchored:
                return
            try:
                if self._anchor_file is None or self._anchor_file.path != self.anchor_path:
                    self._anchor_file = AnchorFile(self.anchor_path)
                self._anchor_file.write_sealed(sealed, keys)
            except OSError as exc:
                logger.warning("cannot write the anchor file %s: %s", self.anchor_path, type(exc).__name__)
                return
            self._anchored = position

    def subscribe(
        self,
        listener: Callable[[list[RecordedEvent]], None],
        *,
        folded_to: Callable[[], int] | None = None,
    ) -> Callable[[], None]:
        """Call ``listener`` with each batch this process appends, after it commits; returns an unsubscribe.

        Listeners run on the appending thread and may see batches out of position order when two threads
        append at once; a listener that needs order (a projection) catches up from the log on a gap.

        ``folded_to``: where such a listener has folded the log to. Its batches then start with the
        events other processes appended since that position (up to ``GAP_ROWS`` of them), read in the
        append's transaction once its lock is held: in a fleet every batch follows others' answers, and
        a catch-up read of its own (a pooled connection and a round trip) after each append was a fifth of
        a follower's CPU. It may still get events it has folded meanwhile, and a gap when more than
        ``GAP_ROWS`` were appended since.
        """
        self._listeners.append(listener)
        if folded_to is not None:
            self._folded_to[listener] = folded_to

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
            self._folded_to.pop(listener, None)

        return unsubscribe

    @staticmethod
    def _recorded(rows: Sequence[Mapping[str, Any]], new_events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """The events of an append as reading them back would give them, from its rows."""
        return [
            RecordedEvent.model_validate({**row, "payload": event.payload})
            for row, event in zip(rows, new_events, strict=True)
        ]

    def prepare_config(
        self,
        body: Mapping[str, Any],
        secret_paths: Iterable[ConfigPath] = (),
        *,
        hashed: str | None = None,
        digested: Iterable[ConfigPath] | None = None,
        text: str | None = None,
    ) -> PreparedConfig:
        """Hash ``body`` (secrets plain) and seal its secrets for storage; ``digested``: those the hash
        takes as keyed digests (default: all); ``hashed``: its hash from ``hash_config``, and ``text``
        its canonical text, when the caller has them already."""
        keys = self.integrity().keys
        return prepare_config(
            body, secret_paths, self.cipher, keys, hashed=hashed, digested=digested, text=text
        )

    def hash_config(self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()) -> str:
        """The hash ``body`` (secrets plain) is stored under by this log: the secrets at ``secret_paths``
        (those the hash digests: ``store.secrets.digested_paths``) as keyed digests.

        Without a key a body with secrets cannot be stored at all (nothing can seal them); its hash, which
        still names it in the refused operation's events, then takes every secret as one fixed text, so
        even that hash tells nothing of a secret.
        """
        keys = self.integrity().keys
        paths = list(secret_paths)
        if keys is None and paths:
            return config_hash(digest_secrets(body, paths, lambda _value: "no key to digest with"))
        return config_hash_as(body, paths, CONFIG_HASH_KEYED, keys)

    def hash_config_as(
        self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath], version: int
    ) -> str:
        """The hash of ``body`` under hash scheme ``version`` (a stored config's own)."""
        return config_hash_as(body, secret_paths, version, self.integrity().keys)

    def put_config(self, body: Mapping[str, Any], secret_paths: Iterable[ConfigPath] = ()) -> str:
        """Store a config body by content; storing the same body twice is a no-op. Returns its hash."""
        prepared = self.prepare_config(body, secret_paths)
        now, writes = datetime.now(UTC), self._config_writes
        with self._writer.transaction() as connection:
            store_config(connection, prepared, first_position=None, created_at=now, writes=writes)
        return prepared.hash

    # --- reading --------------------------------------------------------------------------------------

    def head(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        with self._read(snapshot=False) as connection:
            row = self._head_statement.first(connection)
        return 0 if row is None else int(row[0])

    def decided_elsewhere(
        self, after: int
    ) -> tuple[int, list[tuple[RecordedEvent, StoredConfig | ConfledgerError | None]]]:
        """The head, and each ``config.applied`` after ``after`` up to it (one statement: one snapshot),
        each with its stored config (secrets decrypted) when another instance decided it, or the error
        that kept it from being read; None for this instance's own.

        What a follower reads, in one statement: the events with the bodies they name (a body is written
        in the transaction of the event that first names it, and never changes).

        On SQLite the log is not read when no other connection has committed since a read that found a
        head at or before ``after`` (``LogWriter.data_version``): then every event after ``after`` is
        this log's own, none decided elsewhere, and ``after`` is given back as the head (a position the
        head is at or past). Before every operation and at every poll of a follower, that read was a
        pooled connection's checkout, a statement and the connection's reset.
        """
        version = self._writer.data_version()
        quiet = self._quiet
        if version is not None and quiet is not None and quiet[0] == version and after >= quiet[1]:
            return after, []
        keys = self.integrity().keys
        with self._read(snapshot=False) as connection:
            rows = self._applied_to_head.all(connection, {"after": after})
            head = int(rows[0][0] or 0) if rows else 0
            # Taken before the read: whatever was committed elsewhere after it changes the version.
            self._quiet = None if version is None else (version, head)
            found: list[tuple[RecordedEvent, StoredConfig | ConfledgerError | None]] = []
            for row in rows:
                if row[1] is None:
                    continue  # nothing applied after ``after``: the head alone
                event = decode_event(self.registry, row[1:_APPLIED_CONFIG])
                payload = event.payload
                if event.instance_id == self.instance_id or not isinstance(payload, ConfigApplied):
                    found.append((event, None))
                    continue
                try:
                    columns = row[_APPLIED_CONFIG:]
                    stored = (
                        stored_config(payload.hash, columns, self.cipher, reveal=True, keys=keys)
                        if columns[0] is not None
                        # No stored config by that hash: the lookup of its own says so, as for any hash.
                        else load_config(
                            connection,
                            payload.hash,
                            self.cipher,
                            reveal=True,
                            keys=keys,
                            statement=self._config_row,
                        )
                    )
                # A body of a newer release: answered ``invalid`` (upgrade), this instance drifted.
                except (SecretKeyError, ConfigLookupError, HashSchemeTooNew) as exc:
                    found.append((event, exc))
                else:
                    found.append((event, stored))
        return head, found

    def open_operations(self) -> list[RecordedEvent]:
        """``operation.started`` events with no ``operation.completed``: running elsewhere, or interrupted.

        Start-up asks this, so it must not cost a pass over every operation ever run: the set of open
        operations is a fold of the log, cached like a projection's (checkpoint ``store.open_operations``:
        the operations open at its position), so only the started/completed events after it are read.
        Without a usable checkpoint (none, another version, a state it cannot read) the fold starts
        from position 0.
        """
        with self._read() as connection:
            found, refolded = read_open_operations(connection, self.registry)
        if refolded is not None:
            # A cache, not the log: failing to write it (a read-only replica) only costs the next caller time.
            with contextlib.suppress(ConfledgerError):
                self.save_checkpoint(refolded)
        return found

    # --- configs --------------------------------------------------------------------------------------

    def resolve_hash(self, reference: str) -> str:
        """The full hash for a full hash or a unique prefix of at least 7 hex digits."""
        with self._read() as connection:
            return resolve_hash(connection, reference)

    def get_config(self, reference: str, *, reveal: bool = True) -> StoredConfig:
        """The stored config for a hash or unique prefix, secrets decrypted (``reveal=False``: left sealed,
        which needs no key and is what a display path wants before redacting)."""
        keys = self.integrity().keys if reveal else None
        with self._read(snapshot=False) as connection:
            # Following the fleet and rolling back name configs by their whole hash: one statement then.
            full_hash = reference if is_full_hash(reference) else resolve_hash(connection, reference)
            return load_config(
                connection,
                full_hash,
                self.cipher,
                reveal=reveal,
                keys=keys,
                statement=self._config_row,
            )

    def has_config(self, full_hash: str) -> bool:
        with self._read() as connection:
            return has_config(connection, full_hash)

    def config_count(self) -> int:
        with self._read() as connection:
            return count_configs(connection)

    # --- checkpoints ----------------------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        """The checkpoint ``name``; None also when (in a keyed log) its MAC does not hold or its state is
        not JSON: the fold then starts from position 0 rather than from an edited or damaged state."""
        keys = self.integrity().keys
        with self._read() as connection:
            stored = read_checkpoint(connection, name)
        if stored is None:
            return None
        checkpoint, why_not = stored.restorable(keys)
        if why_not is not None:
            # Said like the runner's own discards, so an operator sees every one alike.
            logger.warning(
                "checkpoint %r at position %d cannot be read (%s): discarded, folding from position 0",
                name,
                stored.position,
                why_not,
            )
        return checkpoint

    def save_checkpoint(self, *checkpoints: Checkpoint) -> None:
        """Upsert projection checkpoints, all in one transaction. Not part of the log: a checkpoint is a
        cache of a fold."""
        keys = self.integrity().keys
        # One commit for a runner's whole set: on SQLite with synchronous=FULL each commit is an fsync.
        with translate_errors(self.url), self.engine.begin() as connection:
            save_checkpoints(connection, *checkpoints, keys=keys)

    # --- integrity ------------------------------------------------------------------------------------

    def integrity(self) -> Integrity:
        """The key this process signs with and the log's key record (read once, then kept).

        With a key record, the configured key must be the one it names (any of the encryption keys, so a
        rotated key list still finds the old one): otherwise ``IntegrityKeyError`` names the setting.
        """
        state = self._integrity_state
        if state is not None:
            return state
        state = read_integrity(self._read, self._signing_key, self._cipher, self.url)
        self._integrity_state = state
        return state

    def verify(self) -> VerifyReport:
        """Everything that can be checked: every link under its own scheme, every stored body re-hashed,
        the checkpoints' MACs and reach (a log that ends before a checkpoint once reached was cut off),
        and the anchor file. Reports the first failure."""
        return self._check(after=None)

    def check_integrity(self) -> VerifyReport:
        """Start-up's check: the links after the position last verified (kept in a MACed record), the
        bodies first named there, the checkpoints and the anchor file; on success the verified position
        and the anchor move to the head. A failure is kept in ``integrity_failure`` and refuses appends."""
        integrity = self.integrity()
        if integrity.keys is None and integrity.record is None:
            return VerifyReport(True, 0, self.head())  # keyless: nothing a forger could not recompute
        report = self._check(after=self._start_check_from(integrity))
        if not report.ok and integrity.record is None:
            # A fleet's first start: another instance committed its key record, its first keyed events
            # and its anchor between this check's read of the record (none yet) and its reads of the
            # chain and the anchor file. Read them all again; a record that is really missing fails the
            # same way a second time.
            report = self._check(after=self._start_check_from(self.integrity()))
        if not report.ok:
            self.integrity_failure = report
        return report

    def event_link_holds(self, event: RecordedEvent) -> bool:
        """Whether ``event``'s own link holds, whatever the events before it hold."""
        return event_link_holds(self._read, self.integrity(), event)

    def forget_verified(self) -> None:
        """Start-up's verified position back to 0 (``verification.forget_verified``)."""
        forget_verified(self.engine, self.integrity())

    def _start_check_from(self, integrity: Integrity) -> tuple[int, str]:
        return start_check_from(self._read, integrity, self.last_of_type(ConfigApplied.event_type))

    def _check(self, *, after: tuple[int, str] | None) -> VerifyReport:
        self._integrity_state = None  # the key record as the database holds it now, not as first read
        integrity = self.integrity()
        report, head, head_hash = check_log(self._read, integrity, self.cipher, self.anchor_path, after=after)
        keys, record = integrity.keys, integrity.record
        if report.ok and after is not None and keys is not None and record is not None:
            with translate_errors(self.url), self.engine.begin() as connection:
                save_verified(connection, keys, head, head_hash)
            if head:
                self._anchor(head, seal_anchor(Anchor(record.log_id, head, head_hash), keys), keys)
        return report
