"""The event log: events, config_versions, projection_checkpoints, append-only guards and audit views.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The guards make "append-only" a property of the database, not only of this code: an UPDATE or DELETE
# issued by hand is refused. Someone with DDL rights can still drop them, which is what verify() is for.
SQLITE_GUARDS = [
    """CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'confledger: events are append-only'); END""",
    """CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'confledger: events are append-only'); END""",
    """CREATE TRIGGER config_versions_refuse_update BEFORE UPDATE OF hash, body ON config_versions
       BEGIN SELECT RAISE(ABORT, 'confledger: stored configs are immutable'); END""",
    """CREATE TRIGGER config_versions_refuse_delete BEFORE DELETE ON config_versions
       BEGIN SELECT RAISE(ABORT, 'confledger: stored configs are immutable'); END""",
]
SQLITE_GUARD_NAMES = [
    "events_refuse_update",
    "events_refuse_delete",
    "config_versions_refuse_update",
    "config_versions_refuse_delete",
]

POSTGRES_GUARDS = [
    """CREATE FUNCTION confledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION 'confledger: % on % is refused: the log is append-only', TG_OP, TG_TABLE_NAME;
       END $$""",
    """CREATE TRIGGER events_refuse_change BEFORE UPDATE OR DELETE ON events
       FOR EACH ROW EXECUTE FUNCTION confledger_refuse_change()""",
    """CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
       FOR EACH STATEMENT EXECUTE FUNCTION confledger_refuse_change()""",
    """CREATE TRIGGER config_versions_refuse_change BEFORE UPDATE OF hash, body OR DELETE ON config_versions
       FOR EACH ROW EXECUTE FUNCTION confledger_refuse_change()""",
]


def _views(j: str, num: str) -> list[str]:
    """The audit views; ``j`` renders a JSON text field, ``num`` a JSON number, per dialect."""

    def field(alias: str, name: str) -> str:
        return j.format(alias=alias, name=name)

    def number(alias: str, name: str) -> str:
        return num.format(alias=alias, name=name)

    operations = f"""
CREATE VIEW operations AS
SELECT
  s.operation_id AS operation_id,
  {field("s", "kind")} AS kind,
  {field("s", "trigger")} AS "trigger",
  s.actor AS actor,
  {field("s", "client")} AS client,
  s.instance_id AS instance_id,
  COALESCE({field("c", "status")}, 'in_progress') AS status,
  s.occurred_at AS started_at,
  c.occurred_at AS completed_at,
  {field("s", "previous_hash")} AS previous_hash,
  COALESCE(
    {field("s", "target_hash")},
    (SELECT {field("l", "hash")} FROM events l
      WHERE l.operation_id = s.operation_id AND l.type = 'config.loaded')
  ) AS new_hash,
  (SELECT {field("a", "hash")} FROM events a
    WHERE a.operation_id = s.operation_id AND a.type = 'config.applied') AS applied_hash,
  {number("c", "total_ms")} AS total_ms,
  {number("c", "validation_ms")} AS validation_ms,
  {number("c", "apply_ms")} AS apply_ms,
  {field("c", "error_message")} AS error_message,
  {field("s", "trace_id")} AS trace_id,
  s.position AS started_position,
  c.position AS completed_position
FROM events s
LEFT JOIN events c ON c.operation_id = s.operation_id AND c.type = 'operation.completed'
WHERE s.type = 'operation.started'"""

    history = f"""
CREATE VIEW config_history AS
SELECT
  e.position AS position,
  e.occurred_at AS occurred_at,
  'applied' AS event,
  {field("e", "hash")} AS hash,
  {field("e", "previous_hash")} AS from_hash,
  e.actor AS actor,
  e.instance_id AS instance_id,
  e.operation_id AS operation_id,
  {field("s", "trigger")} AS "trigger",
  CASE WHEN {field("s", "kind")} = 'rollback' THEN 'manual rollback' ELSE 'reload' END AS reason
FROM events e
LEFT JOIN events s ON s.operation_id = e.operation_id AND s.type = 'operation.started'
WHERE e.type = 'config.applied'
UNION ALL
SELECT
  e.position,
  e.occurred_at,
  'rolled_back',
  {field("e", "to_hash")},
  {field("e", "from_hash")},
  e.actor,
  e.instance_id,
  e.operation_id,
  {field("s", "trigger")},
  'automatic rollback'
FROM events e
LEFT JOIN events s ON s.operation_id = e.operation_id AND s.type = 'operation.started'
WHERE e.type = 'config.rolled_back' AND {field("e", "reason")} = 'automatic'"""
    return [operations, history]


SQLITE_VIEWS = _views(
    "json_extract({alias}.payload, '$.{name}')", "json_extract({alias}.payload, '$.{name}')"
)
POSTGRES_VIEWS = _views(
    "({alias}.payload ->> '{name}')", "(({alias}.payload ->> '{name}')::double precision)"
)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("operation_id", sa.String(length=36), nullable=True),
        sa.Column("instance_id", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_type_position", "events", ["type", "position"])
    op.create_index("ix_events_operation_id_position", "events", ["operation_id", "position"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])
    op.create_table(
        "config_versions",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("first_position", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_config_versions"),
    )
    op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projection_checkpoints"),
    )
    dialect = op.get_bind().dialect.name
    statements = SQLITE_GUARDS + SQLITE_VIEWS if dialect == "sqlite" else POSTGRES_GUARDS + POSTGRES_VIEWS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS config_history")
    op.execute("DROP VIEW IF EXISTS operations")
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_GUARD_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_refuse_change ON events")
        op.execute("DROP TRIGGER IF EXISTS events_refuse_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS config_versions_refuse_change ON config_versions")
        op.execute("DROP FUNCTION IF EXISTS confledger_refuse_change()")
    op.drop_table("projection_checkpoints")
    op.drop_table("config_versions")
    op.drop_index("ix_events_occurred_at", table_name="events")
    op.drop_index("ix_events_operation_id_position", table_name="events")
    op.drop_index("ix_events_type_position", table_name="events")
    op.drop_table("events")
