"""The statements ``EventLog`` runs on the events table, built from the Core tables once at import.

Kept apart from ``store.log`` because they are data, not behaviour: the append path's insert and head
checks, and the read path's ``SELECT`` of an event's columns in the order ``EventLog._decode`` takes
them. Nothing here touches a connection; the log compiles the hot ones into ``DriverStatement``s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from confledger.store.events import ConfigApplied
from confledger.store.schema import events

__all__ = [
    "EVENT_COLUMNS",
    "HEAD_AND_APPLIED_SINCE",
    "INSERT_EVENTS",
    "PAGE",
    "PAGE_UNTIL",
    "forward",
    "select_events",
]

# The append path's statements, built from the tables once. They run on the driver's cursor of the
# writer's connection (store/statements.py), compiled once with SQLAlchemy's own bind processing:
# through Connection.execute an SQLite append measured 0.49-0.50x raw sqlite3 in events/s (target 0.6),
# on the cursor 0.76-0.82x (median per append 0.66-0.73x); tests/benchmarks/bench_append.py, 2,000
# single-event appends x 3 runs, interleaved with raw sqlite3 on this machine.
INSERT_EVENTS = events.insert()
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

# What an event is read back from, in the order ``EventLog._decode`` takes it. The payload comes as its
# stored JSON text, not through the JSON type's deserializer, so pydantic parses it into the payload's
# model in one step (``EventRegistry.decode_json``); the CAST is a no-op on SQLite, and on PostgreSQL it
# gives the ``json`` column's text as stored.
EVENT_COLUMNS = (
    events.c.position,
    events.c.event_id,
    events.c.occurred_at,
    events.c.type,
    events.c.schema_version,
    events.c.operation_id,
    events.c.instance_id,
    events.c.actor,
    sa.cast(events.c.payload, sa.Text).label("payload"),
    events.c.prev_hash,
    events.c.hash,
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


# A page of ``iter_events``, a fold's whole read, run on the driver's cursor (store/statements.py):
# through Connection.execute, building the statement, SQLAlchemy's per-execution work and its row
# objects were about a tenth of a rebuild of every projection.
PAGE = forward(sa.bindparam("after", type_=sa.BigInteger), sa.bindparam("batch", type_=sa.Integer))
PAGE_UNTIL = forward(
    sa.bindparam("after", type_=sa.BigInteger),
    sa.bindparam("batch", type_=sa.Integer),
    until=sa.bindparam("until", type_=sa.BigInteger),
)
