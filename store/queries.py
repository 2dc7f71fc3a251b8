"""The statements ``EventLog`` runs on the events table, and the decoding of the rows it reads back.

Kept apart from ``store.log`` because they are SQL and a row's shape, not the log's behaviour: the
append path's insert and head checks, the read path's ``SELECT`` of an event's columns, and
``decode_event``, which takes a row of those columns in their order. The statements are built from the
Core tables once at import; nothing here touches a connection (the log compiles the hot ones into
``DriverStatement``s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from confledger.store.canonical import GENESIS_HASH
from confledger.store.configs import CONFIG_COLUMNS
from confledger.store.database import StoredTime
from confledger.store.errors import ConcurrencyConflict, EventSchemaError
from confledger.store.events import ConfigApplied, EventRegistry, RecordedEvent
from confledger.store.schema import config_versions, events

__all__ = [
    "APPLIED_TO_HEAD",
    "EVENT_COLUMNS",
    "HEAD_AND_APPLIED_SINCE",
    "PAGE",
    "PAGE_UNTIL",
    "as_read",
    "decode_event",
    "forward",
    "head_unless_applied_since",
    "select_events",
]

# The append path's statements, built from the tables once. They run on the driver's cursor of the
# writer's connection (store/statements.py), compiled once with SQLAlchemy's own bind processing:
# through Connection.execute an SQLite append measured 0.49-0.50x raw sqlite3 in events/s (target 0.6),
# on the cursor 0.76-0.82x (median per append 0.66-0.73x); tests/benchmarks/bench_append.py, 2,000
# single-event appends x 3 runs, interleaved with raw sqlite3 on this machine. (The insert of a batch's
# rows is ``store.statements.InsertRows``, compiled per row count.)
_applied = events.alias("applied")
# The head, and the first config.applied after a position, in one statement (on PostgreSQL one round
# trip fewer per append that applies a config). An empty log has no row, and nothing in it can conflict.
HEAD_AND_APPLIED_SINCE = (
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


def as_read(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """How a reader selects ``column`` of the events table (every reader: the reads, ``verify``).

    The payload comes as its stored JSON text, not through the JSON type's deserializer: pydantic parses
    it into the payload's model in one step (``EventRegistry.decode_json``), and ``verify`` checks the
    link on the text the append linked. The CAST is a no-op on SQLite; on PostgreSQL it gives the
    ``json`` column's text as stored. ``occurred_at`` comes through ``StoredTime``: a value that is no
    time (SQLite keeps any text in any column) is handed on as ``UnreadableTime``, for the reader to
    refuse with a reason code, rather than raised out of the whole batch of rows.
    """
    if column is events.c.payload:
        return sa.cast(column, sa.Text).label(column.name)
    if column is events.c.occurred_at:
        return sa.type_coerce(column, StoredTime()).label(column.name)
    return column


# What an event is read back from, in the order ``decode_event`` takes it.
EVENT_COLUMNS = tuple(
    as_read(column)
    for column in (
        events.c.position,
        events.c.event_id,
        events.c.occurred_at,
        events.c.type,
        events.c.schema_version,
        events.c.operation_id,
        events.c.instance_id,
        events.c.actor,
        events.c.payload,
        events.c.prev_hash,
        events.c.hash,
    )
)


def select_events() -> sa.Select[Any]:
    return sa.select(*EVENT_COLUMNS)


def forward(
    after: int | sa.BindParameter[int],
    limit: int | sa.BindParameter[int] | None,
    *,
    types: Iterable[str] | None = None,
    until: int | sa.BindParameter[int] | None = None,
) -> sa.Select[Any]:
    """Events with position > ``after`` (and <= ``until``), oldest first; each bound now or, given as a
    bind parameter, at every run of a statement compiled once."""
    query = select_events().where(events.c.position > after).order_by(events.c.position)
    if until is not None:
        query = query.where(events.c.position <= until)
    if types is not None:
        query = query.where(events.c.type.in_(list(types)))
    if limit is not None:
        query = query.limit(limit)
    return query


def head_unless_applied_since(row: Sequence[Any] | None, expected_head: int) -> tuple[int, str]:
    """The head's position and hash (``row`` of ``HEAD_AND_APPLIED_SINCE``), unless a ``config.applied``
    landed after ``expected_head``: ConcurrencyConflict."""
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


_head = sa.select(sa.func.max(events.c.position).label("head")).subquery("head")
# The head, and every config.applied after a position up to it with the config it names, in one
# statement: what a follower (and an operation taking its turn) looks at, one round trip where the head,
# the events and each body took one each. Always at least one row: an empty log's head is NULL, and with
# nothing new the event columns are; a config the log lacks leaves its columns NULL (the body is never).
APPLIED_TO_HEAD = (
    sa.select(_head.c.head, *EVENT_COLUMNS, *CONFIG_COLUMNS)
    .select_from(
        _head.outerjoin(
            events,
            sa.and_(
                events.c.type == ConfigApplied.event_type,
                events.c.position > sa.bindparam("after", type_=sa.BigInteger),
                events.c.position <= _head.c.head,
            ),
        ).outerjoin(config_versions, config_versions.c.hash == events.c.payload["hash"].as_string())
    )
    .order_by(events.c.position)
)


# A page of ``iter_events``, a fold's whole read, run on the driver's cursor (store/statements.py):
# through Connection.execute, building the statement, SQLAlchemy's per-execution work and its row
# objects were about a tenth of a rebuild of every projection.
PAGE = forward(sa.bindparam("after", type_=sa.BigInteger), sa.bindparam("batch", type_=sa.Integer))
PAGE_UNTIL = forward(
    sa.bindparam("after", type_=sa.BigInteger),
    sa.bindparam("batch", type_=sa.Integer),
    until=sa.bindparam("until", type_=sa.BigInteger),
)


_validate_recorded: Callable[[dict[str, Any]], RecordedEvent] = (
    RecordedEvent.__pydantic_validator__.validate_python
)


_combine = datetime.combine


def decode_event(registry: EventRegistry, row: Sequence[Any]) -> RecordedEvent:
    """The event of a row of ``EVENT_COLUMNS`` (``registry`` decodes its payload).

    ``EventSchemaError`` (``invalid_event``) for a row whose values are not of their columns' types: SQLite
    keeps any text in any column (a time that is none, ``UnreadableTime``; an id that is no UUID), so such
    a row was written by hand, and its readers get a reason code rather than a driver's or pydantic's own
    error."""
    try:
        return _decoded(registry, row)
    except EventSchemaError:
        raise
    except (AttributeError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise EventSchemaError(
            f"stored event at position {row[0]} is not an event as written ({type(exc).__name__}): "
            "it was changed in the database",
            code="invalid_event",
        ) from exc


def _decoded(registry: EventRegistry, row: Sequence[Any]) -> RecordedEvent:
    (
        position,
        event_id,
        occurred_at,
        event_type,
        schema_version,
        operation_id,
        instance_id,
        actor,
        payload,
        prev_hash,
        link,
    ) = row
    # SQLite gives the UTC time it stored without its zone, PostgreSQL an aware time in the session's.
    # The zone is attached by combine(): replace(tzinfo=...) parses its keywords, five times the cost
    # (0.74 against 0.14 us), and the astimezone after it made a third datetime per row for nothing.
    tzinfo = occurred_at.tzinfo
    if tzinfo is None:
        occurred_at = _combine(occurred_at.date(), occurred_at.time(), UTC)
    elif tzinfo is not UTC:
        occurred_at = occurred_at.astimezone(UTC)
    # The ids go to the model as text: pydantic parses a UUID in a fraction of uuid.UUID's time.
    # Validated by the model's own validator, as model_validate does, without model_validate's
    # keyword handling or __init__'s copy of the keywords: each was a tenth of building an event.
    return _validate_recorded(
        {
            "position": position,
            "event_id": event_id,
            "occurred_at": occurred_at,
            "type": event_type,
            "schema_version": schema_version,
            "operation_id": operation_id,
            "instance_id": instance_id,
            "actor": actor,
            "payload": registry.decode_json(event_type, schema_version, payload),
            "prev_hash": prev_hash,
            "hash": link,
        }
    )
