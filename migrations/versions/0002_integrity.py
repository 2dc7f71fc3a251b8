"""Integrity: the link and config-hash scheme of each row, checkpoint MACs, and the integrity records.

Nothing already written is rewritten: existing events keep their sha256 links (``link_version`` 1) and
existing bodies their plain hashes (``hash_version`` 1); only rows written from now on use the keyed
schemes. The append-only triggers of 0001 are untouched (adding a column fires no row trigger).

Revision ID: 0002_integrity
Revises: 0001_initial
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_integrity"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The key record says which key signs the log: written once, never changed by code. The "verified"
# record moves forward with each start-up, so only the key row is guarded.
SQLITE_GUARDS = [
    """CREATE TRIGGER integrity_key_refuse_update BEFORE UPDATE ON integrity WHEN OLD.name = 'key'
       BEGIN SELECT RAISE(ABORT, 'confledger: the integrity key record is immutable'); END""",
    """CREATE TRIGGER integrity_key_refuse_delete BEFORE DELETE ON integrity WHEN OLD.name = 'key'
       BEGIN SELECT RAISE(ABORT, 'confledger: the integrity key record is immutable'); END""",
]
SQLITE_GUARD_NAMES = ["integrity_key_refuse_update", "integrity_key_refuse_delete"]

# confledger_refuse_change() is 0001's trigger function.
POSTGRES_GUARDS = [
    """CREATE TRIGGER integrity_key_refuse_change BEFORE UPDATE OR DELETE ON integrity
       FOR EACH ROW WHEN (OLD.name = 'key') EXECUTE FUNCTION confledger_refuse_change()""",
    """CREATE TRIGGER integrity_refuse_truncate BEFORE TRUNCATE ON integrity
       FOR EACH STATEMENT EXECUTE FUNCTION confledger_refuse_change()""",
]


def upgrade() -> None:
    op.add_column("events", sa.Column("link_version", sa.SmallInteger(), nullable=False, server_default="1"))
    op.add_column(
        "config_versions", sa.Column("hash_version", sa.SmallInteger(), nullable=False, server_default="1")
    )
    op.add_column("projection_checkpoints", sa.Column("mac", sa.String(length=64), nullable=True))
    op.create_table(
        "integrity",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_integrity"),
    )
    guards = SQLITE_GUARDS if op.get_bind().dialect.name == "sqlite" else POSTGRES_GUARDS
    for statement in guards:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_GUARD_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("integrity")  # PostgreSQL drops the table's triggers with it
    op.drop_column("projection_checkpoints", "mac")
    op.drop_column("config_versions", "hash_version")
    op.drop_column("events", "link_version")
