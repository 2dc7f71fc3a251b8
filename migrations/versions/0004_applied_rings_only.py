"""The doorbell rings only for an append that applied a config.

Until now every append rang, with an empty payload for the ones that applied nothing (answers, failed
operations), and every follower's listening thread woke for each and dropped it: at eight followers
about seventy wake-ups per change, each also a signal to a listening PostgreSQL backend, on the cores
the followers need to apply the change. Nobody acts on those rings (a follower reads them at its poll),
so they are no longer sent.

Revision ID: 0004_applied_rings_only
Revises: 0003_fleet
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_applied_rings_only"
down_revision: str | None = "0003_fleet"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RING_APPLIED_ONLY = """CREATE OR REPLACE FUNCTION confledger_ring_doorbell() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     IF EXISTS (SELECT 1 FROM appended WHERE type = 'config.applied') THEN
       PERFORM pg_notify(left('confledger.' || TG_TABLE_SCHEMA, 63), 'applied');
     END IF;
     RETURN NULL;
   END $$"""

# 0003_fleet's function, as it was.
_RING_EVERY_APPEND = """CREATE OR REPLACE FUNCTION confledger_ring_doorbell() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     PERFORM pg_notify(
       left('confledger.' || TG_TABLE_SCHEMA, 63),
       CASE WHEN EXISTS (SELECT 1 FROM appended WHERE type = 'config.applied') THEN 'applied' ELSE '' END
     );
     RETURN NULL;
   END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_RING_APPLIED_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_RING_EVERY_APPEND)
