"""Projection checkpoints: a fold's state saved at a position, so a restart folds only the tail.

A checkpoint is a cache of a fold, not part of the log: the log alone can always rebuild it. In a keyed
log each checkpoint carries an HMAC under the log's record key: an edited checkpoint (state, position or
version) is discarded on load (the fold starts from position 0) and reported by ``verify`` and start-up.
Checkpoints written before the log was keyed have no MAC; below the log's ``keyed_from`` position they
are dropped quietly, once, as a stale cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from confledger.store.canonical import canonical_json, checked_as_stored
from confledger.store.integrity import IntegrityKeys
from confledger.store.schema import projection_checkpoints
from confledger.store.upsert import upsert

__all__ = [
    "Checkpoint",
    "StoredCheckpoint",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoints",
    "sorted_checkpoints",
]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    version: int
    position: int
    # JSON as stored: a dict when a fold wrote it, anything when the row was damaged. Whoever restores
    # from it checks it first (projections.runner.restore_projections).
    state: Any
    # The state's canonical JSON, when the projection that made it kept the text of its parts
    # (``Projection.encoded_snapshot``); saved as given, else encoded from ``state``.
    encoded: str | None = field(default=None, compare=False, repr=False)


class _EncodedJSON(sa.types.TypeDecorator[str]):
    """A JSON column's value given as its canonical text, bound as it is: the column's own serializer
    (the engine's ``json_serializer``, canonical JSON) would encode the state a second time. SQLite stores
    the text; PostgreSQL reads it into its ``json`` type (psycopg sends a ``str`` untyped). The Core-statement
    form of ``DriverStatement``'s ``encoded`` binds, which the event insert uses at the driver."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> None:
        return None


def _mac_text(checkpoint: Checkpoint | StoredCheckpoint, state_text: str) -> str:
    """The canonical JSON of ``{name, position, state, version}``, with the state's canonical text set in.

    A save MACs the text it stores: the state is encoded once, and canonical JSON nests as it stands
    alone, so the text is set in among the other members' (sorted keys: ``state`` comes before
    ``version``, the last member).
    """
    head, separator, version = canonical_json(
        {"name": checkpoint.name, "position": checkpoint.position, "version": checkpoint.version}
    ).rpartition(',"version":')
    return f'{head},"state":{state_text}{separator}{version}'


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint row as the database holds it, its state still the text of the column."""

    name: str
    version: int
    position: int
    state_text: str
    mac: str | None

    def holds(self, keys: IntegrityKeys | None) -> bool:
        """Whether it may be used: always in a keyless log, else only when its MAC holds.

        The MAC is checked on the stored text (``checked_as_stored``): a save MACs the very text it
        stores, and PostgreSQL's ``json`` keeps the text it was given. Parsing and encoding a history
        window again for each check, twice per start, was most of a start-up.
        """
        if keys is None:
            return True
        return checked_as_stored(
            self.state_text,
            lambda text: keys.record_mac_of_text_holds("checkpoint", _mac_text(self, text), self.mac),
        )

    def decoded(self) -> Checkpoint:
        """The checkpoint with its state parsed; ``ValueError`` when the text is not JSON."""
        return Checkpoint(self.name, self.version, self.position, json.loads(self.state_text))

    def restorable(self, keys: IntegrityKeys | None) -> tuple[Checkpoint | None, str | None]:
        """The checkpoint with its state parsed, or None and why it may not be restored from: its MAC
        does not hold (``holds``), or its state is not JSON (a damaged row: a cache to fold again, not a
        reason to fail)."""
        if not self.holds(keys):
            return None, (
                "its MAC does not hold: changed outside confledger, or written before the log was keyed"
            )
        try:
            return self.decoded(), None
        except ValueError as exc:
            return None, f"its state is not JSON: {exc}"


# The state read as the text the column holds (``holds``): a CAST, because psycopg parses a ``json``
# value it is handed, and SQLite's text comes back as it is either way.
_STORED = sa.select(
    projection_checkpoints.c.name,
    projection_checkpoints.c.version,
    projection_checkpoints.c.position,
    sa.cast(projection_checkpoints.c.state, sa.Text).label("state_text"),
    projection_checkpoints.c.mac,
)


def _stored(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(str(row.name), int(row.version), int(row.position), str(row.state_text), row.mac)


def read_checkpoint(connection: Connection, name: str) -> StoredCheckpoint | None:
    """The checkpoint row ``name`` as stored, unchecked; None when there is none."""
    row = connection.execute(_STORED.where(projection_checkpoints.c.name == name)).first()
    return None if row is None else _stored(row)


def load_checkpoint(
    connection: Connection, name: str, keys: IntegrityKeys | None = None
) -> Checkpoint | None:
    """The checkpoint ``name``; None when there is none or it may not be restored from (``restorable``)."""
    stored = read_checkpoint(connection, name)
    return None if stored is None else stored.restorable(keys)[0]


def sorted_checkpoints(
    connection: Connection, keys: IntegrityKeys | None, keyed_from: int | None
) -> tuple[list[StoredCheckpoint], list[StoredCheckpoint]]:
    """Every checkpoint, sorted into those that may be used and those whose MAC does not hold (forged).

    One pass, one MAC per checkpoint, no state parsed: start-up asks both questions of every
    checkpoint. Checkpoints of before the log was keyed (no MAC, a position below ``keyed_from``) are in
    neither list: a stale cache, not a forgery, and not usable either."""
    usable: list[StoredCheckpoint] = []
    forged: list[StoredCheckpoint] = []
    for row in connection.execute(_STORED.order_by(projection_checkpoints.c.name)):
        stored = _stored(row)
        if stored.holds(keys):
            usable.append(stored)
        elif not (stored.mac is None and keyed_from is not None and stored.position < keyed_from):
            forged.append(stored)
    return usable, forged


def save_checkpoints(
    connection: Connection, *checkpoints: Checkpoint, keys: IntegrityKeys | None = None
) -> None:
    """Upsert ``checkpoints`` in the caller's transaction, as one statement (a set of projections is saved
    together: one statement per checkpoint was half a set's CPU); never moves a checkpoint backwards."""
    # One row per name: a statement may not upsert a row twice (PostgreSQL refuses it).
    latest = {checkpoint.name: checkpoint for checkpoint in checkpoints}
    if not latest:
        return
    now = datetime.now(UTC)
    rows = []
    for checkpoint in latest.values():
        # Encoded once: the text the MAC covers is the text the column stores.
        state_text = (
            checkpoint.encoded if checkpoint.encoded is not None else canonical_json(checkpoint.state)
        )
        rows.append(
            {
                "name": checkpoint.name,
                "version": checkpoint.version,
                "position": checkpoint.position,
                "state": sa.type_coerce(state_text, _EncodedJSON()),
                "updated_at": now,
                "mac": None
                if keys is None
                else keys.record_mac_of_text("checkpoint", _mac_text(checkpoint, state_text)),
            }
        )
    upsert(
        connection,
        projection_checkpoints,
        rows,
        key="name",
        # Two processes folding concurrently: the one that is behind must not overwrite newer work.
        where=lambda offered: projection_checkpoints.c.position <= offered.position,
    )
