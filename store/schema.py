"""The tables, in SQLAlchemy Core. Alembic revisions (``migrations/``) are the only thing that creates them."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "config_versions",
    "events",
    "fleet_instances",
    "integrity_records",
    "metadata",
    "projection_checkpoints",
]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Positions are assigned by the writer under the append lock, not by an identity column: a sequence
# hands out numbers at insert time, and two transactions can commit them out of order, so a reader
# tailing "position > N" could skip an event forever. Under the lock, commit order is position order.
events = sa.Table(
    "events",
    metadata,
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("operation_id", sa.String(36), nullable=True),
    sa.Column("instance_id", sa.String(255), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # How ``hash`` was made (store.integrity): 1 plain sha256 (rows written before 0002_integrity), 2 HMAC.
    sa.Column("link_version", sa.SmallInteger, nullable=False, server_default="1"),
    sa.UniqueConstraint("event_id"),
    sa.Index(None, "type", "position"),
    sa.Index(None, "operation_id", "position"),
    sa.Index(None, "occurred_at"),
)

# Bodies are content-addressed: the hash is over the plain canonical JSON (secrets revealed), while
# the stored body has its secret values replaced by Fernet tokens, so SELECT never shows a secret.
config_versions = sa.Table(
    "config_versions",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("first_position", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # 1: sha256 over secrets in the clear (bodies stored before 0002_integrity); 2: over keyed digests.
    sa.Column("hash_version", sa.SmallInteger, nullable=False, server_default="1"),
)

projection_checkpoints = sa.Table(
    "projection_checkpoints",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # HMAC under the log's record key (store.integrity); NULL on checkpoints written before the log was keyed.
    sa.Column("mac", sa.String(64), nullable=True),
)

# The log's integrity records: "key" (check value of the signing key, the position keyed links start at,
# the log's id), written once; "verified" (how far start-up has verified), each with its MAC.
integrity_records = sa.Table(
    "integrity",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Heartbeats (migration 0003_fleet): one row per instance, updated in place; not part of the log.
fleet_instances = sa.Table(
    "fleet_instances",
    metadata,
    sa.Column("instance_id", sa.String(255), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("followed_position", sa.BigInteger, nullable=False),
    sa.Column("interval_s", sa.Float, nullable=False),
)
