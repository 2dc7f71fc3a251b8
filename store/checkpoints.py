"""Projection checkpoints: a fold's state saved at a position, so a restart folds only the tail.

A checkpoint is a cache of a fold, not part of the log: the log alone can always rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from confledger.store.schema import projection_checkpoints

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    version: int
    position: int
    # JSON as stored: a dict when a fold wrote it, anything when the row was damaged. Whoever restores
    # from it checks it first (projections.runner.restore_projections).
    state: Any


def load_checkpoint(connection: Connection, name: str) -> Checkpoint | None:
    row = connection.execute(
        sa.select(projection_checkpoints).where(projection_checkpoints.c.name == name)
    ).first()
    if row is None:
        return None
    return Checkpoint(name=name, version=int(row.version), position=int(row.position), state=row.state)


def save_checkpoint(connection: Connection, checkpoint: Checkpoint) -> None:
    """Upsert ``checkpoint`` in the caller's transaction; never moves a checkpoint backwards."""
    values = {
        "version": checkpoint.version,
        "position": checkpoint.position,
        "state": checkpoint.state,
        "updated_at": datetime.now(UTC),
    }
    updated = connection.execute(
        projection_checkpoints.update()
        .where(
            projection_checkpoints.c.name == checkpoint.name,
            # Two processes folding concurrently: the one that is behind must not overwrite newer work.
            projection_checkpoints.c.position <= checkpoint.position,
        )
        .values(**values)
    ).rowcount
    if updated:
        return
    exists = connection.execute(
        sa.select(projection_checkpoints.c.name).where(projection_checkpoints.c.name == checkpoint.name)
    ).first()
    if exists is None:
        connection.execute(projection_checkpoints.insert().values(name=checkpoint.name, **values))
