"""Projection checkpoints: a fold's state saved at a position, so a restart folds only the tail.

A checkpoint is a cache of a fold, not part of the log: the log alone can always rebuild it. In a keyed
log each checkpoint carries an HMAC under the log's record key: an edited checkpoint (state, position or
version) is discarded on load (the fold starts from position 0) and reported by ``verify`` and start-up.
Checkpoints written before the log was keyed have no MAC; below the log's ``keyed_from`` position they
are dropped quietly, once, as a stale cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from confledger.store.canonical import canonical_json
from confledger.store.integrity import IntegrityKeys
from confledger.store.schema import projection_checkpoints
from confledger.store.upsert import upsert

__all__ = ["Checkpoint", "checkpoint_holds", "load_checkpoint", "save_checkpoint", "sorted_checkpoints"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    version: int
    position: int
    # JSON as stored: a dict when a fold wrote it, anything when the row was damaged. Whoever restores
    # from it checks it first (projections.runner.restore_projections).
    state: Any


class _EncodedJSON(sa.types.TypeDecorator[str]):
    """A JSON column's value given as its canonical text, bound as it is: the column's own serializer
    (the engine's ``json_serializer``, canonical JSON) would encode the state a second time. SQLite stores
    the text; PostgreSQL reads it into its ``json`` type (psycopg sends a ``str`` untyped). The Core-statement
    form of ``DriverStatement``'s ``encoded`` binds, which the event insert uses at the driver."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> None:
        return None


def _mac_text(checkpoint: Checkpoint, state_text: str) -> str:
    """The canonical JSON of ``{name, position, state, version}``, with the state's canonical text set in.

    The MAC covers the state as the JSON column gives it back, so one made at save time holds for the
    state read back. The column stores the state's canonical JSON (the engine's serializer), and canonical
    JSON parsed and encoded again is the same text: so the saved state's own canonical text is the text
    of the state as read back (a tuple is a list in both), and a save encodes the state once for its
    MAC, where a JSON round trip and a second encoding cost three passes over a history window of
    hundreds of operations. Canonical JSON nests as it stands alone, so the text is set in among the
    other members' (sorted keys: ``state`` comes before ``version``, the last member).
    """
    head, separator, version = canonical_json(
        {"name": checkpoint.name, "position": checkpoint.position, "version": checkpoint.version}
    ).rpartition(',"version":')
    return f'{head},"state":{state_text}{separator}{version}'


def checkpoint_holds(checkpoint: Checkpoint, mac: str | None, keys: IntegrityKeys | None) -> bool:
    """Whether ``checkpoint``, as read from the database, may be used: always in a keyless log, else
    only when its MAC holds."""
    if keys is None:
        return True
    return keys.record_mac_of_text_holds(
        "checkpoint", _mac_text(checkpoint, canonical_json(checkpoint.state)), mac
    )


def _checkpoint(name: str, row: Any) -> Checkpoint:
    return Checkpoint(name=name, version=int(row.version), position=int(row.position), state=row.state)


def load_checkpoint(
    connection: Connection, name: str, keys: IntegrityKeys | None = None
) -> Checkpoint | None:
    """The checkpoint ``name``; None when there is none or (in a keyed log) its MAC does not hold."""
    row = connection.execute(
        sa.select(projection_checkpoints).where(projection_checkpoints.c.name == name)
    ).first()
    if row is None:
        return None
    checkpoint = _checkpoint(name, row)
    return checkpoint if checkpoint_holds(checkpoint, row.mac, keys) else None


def sorted_checkpoints(
    connection: Connection, keys: IntegrityKeys | None, keyed_from: int | None
) -> tuple[list[Checkpoint], list[Checkpoint]]:
    """Every checkpoint, sorted into those that may be used and those whose MAC does not hold (forged).

    One pass, one MAC per checkpoint: start-up asks both questions of every checkpoint. Checkpoints of
    before the log was keyed (no MAC, a position below ``keyed_from``) are in neither list: a stale
    cache, not a forgery, and not usable either."""
    usable: list[Checkpoint] = []
    forged: list[Checkpoint] = []
    for row in connection.execute(sa.select(projection_checkpoints).order_by(projection_checkpoints.c.name)):
        checkpoint = _checkpoint(str(row.name), row)
        if checkpoint_holds(checkpoint, row.mac, keys):
            usable.append(checkpoint)
        elif not (row.mac is None and keyed_from is not None and checkpoint.position < keyed_from):
            forged.append(checkpoint)
    return usable, forged


def save_checkpoint(
    connection: Connection, checkpoint: Checkpoint, keys: IntegrityKeys | None = None
) -> None:
    """Upsert ``checkpoint`` in the caller's transaction; never moves a checkpoint backwards."""
    # Encoded once: the text the MAC covers is the text the column stores.
    state_text = canonical_json(checkpoint.state)
    values = {
        "version": checkpoint.version,
        "position": checkpoint.position,
        "state": sa.type_coerce(state_text, _EncodedJSON()),
        "updated_at": datetime.now(UTC),
        "mac": None
        if keys is None
        else keys.record_mac_of_text("checkpoint", _mac_text(checkpoint, state_text)),
    }
    upsert(
        connection,
        projection_checkpoints,
        {"name": checkpoint.name, **values},
        key="name",
        # Two processes folding concurrently: the one that is behind must not overwrite newer work.
        where=lambda offered: projection_checkpoints.c.position <= offered.position,
    )
