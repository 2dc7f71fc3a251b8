"""The fleet's heartbeats: one row per instance, rewritten in place at each beat.

Kept out of the event log on purpose: a heartbeat every 30 s from each of 8 instances is 23,000 events
a day that say nothing but "still here", each chained, checkpointed past and replayed by every fold.
The row is a liveness signal, not a fact to audit; what an instance applied is in the log
(``instance.applied``). A lost row costs nothing but a "gone" until the next beat.

Revision ID: 0003_fleet
Revises: 0001_initial
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_fleet"
down_revision: str | None = "0002_integrity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The doorbell (PostgreSQL): every statement that appends events notifies the log's channel, delivered
# when the append commits. In the database rather than in the append code, so it costs the writer no
# round trip and rings for whatever writes the log. The payload says whether the batch applied a config
# ("applied"), the one kind of append a follower acts on at once: the others (answers, failed operations)
# wait for its next poll, so N followers' answers to a change do not wake every follower N times.
# A doorbell only: followers read by position, and poll.
POSTGRES_DOORBELL = [
    """CREATE FUNCTION confledger_ring_doorbell() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         PERFORM pg_notify(
           left('confledger.' || TG_TABLE_SCHEMA, 63),
           CASE WHEN EXISTS (SELECT 1 FROM appended WHERE type = 'config.applied') THEN 'applied' ELSE '' END
         );
         RETURN NULL;
       END $$""",
    """CREATE TRIGGER events_ring_doorbell AFTER INSERT ON events REFERENCING NEW TABLE AS appended
       FOR EACH STATEMENT EXECUTE FUNCTION confledger_ring_doorbell()""",
]


def upgrade() -> None:
    op.create_table(
        "fleet_instances",
        sa.Column("instance_id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("followed_position", sa.BigInteger(), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name="pk_fleet_instances"),
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRES_DOORBELL:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_ring_doorbell ON events")
        op.execute("DROP FUNCTION IF EXISTS confledger_ring_doorbell()")
    op.drop_table("fleet_instances")
