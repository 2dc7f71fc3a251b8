"""Config bodies stored by content: ``config_versions``, one row per distinct body.

The hash is over the plain body (secrets revealed); the stored body has its secrets sealed. A body is
written in the same transaction as the append that first names it, and never changed after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from confledger.store.canonical import canonical_bytes, config_hash
from confledger.store.errors import AmbiguousHashPrefix, InvalidHashPrefix, UnknownConfigHash
from confledger.store.schema import config_versions
from confledger.store.secrets import ConfigPath, SecretCipher, seal, sealed_paths, unseal

__all__ = [
    "MIN_PREFIX",
    "PreparedConfig",
    "StoredConfig",
    "count_configs",
    "has_config",
    "load_config",
    "prepare_config",
    "resolve_hash",
    "store_config",
]

MIN_PREFIX = 7

# Bound names differ from the column names: an UPDATE reserves those for its SET clause.
_FIRST_POSITION = sa.select(config_versions.c.first_position).where(
    config_versions.c.hash == sa.bindparam("config_hash")
)
_SET_FIRST_POSITION = (
    config_versions.update()
    .where(config_versions.c.hash == sa.bindparam("config_hash"))
    .values(first_position=sa.bindparam("position"))
)


@dataclass(frozen=True, slots=True)
class PreparedConfig:
    """A config body ready to store: hash over the plain body, secrets already sealed."""

    hash: str
    sealed_body: dict[str, Any]
    size_bytes: int


@dataclass(frozen=True, slots=True)
class StoredConfig:
    hash: str
    body: dict[str, Any]
    size_bytes: int
    first_position: int | None
    created_at: datetime
    secret_paths: frozenset[ConfigPath] = frozenset()


def prepare_config(
    body: Mapping[str, Any], secret_paths: Iterable[ConfigPath], cipher: SecretCipher | None
) -> PreparedConfig:
    """Hash ``body`` (secrets plain) and seal its secrets for storage."""
    plain = dict(body)
    return PreparedConfig(
        hash=config_hash(plain),
        sealed_body=seal(plain, secret_paths, cipher),
        size_bytes=len(canonical_bytes(plain)),
    )


def store_config(
    connection: Connection, config: PreparedConfig, *, first_position: int | None, created_at: datetime
) -> None:
    """Store a body by content (once); ``first_position`` is the append that first names it."""
    existing = connection.execute(_FIRST_POSITION, {"config_hash": config.hash}).first()
    if existing is None:
        connection.execute(
            config_versions.insert(),
            {
                "hash": config.hash,
                "body": config.sealed_body,
                "size_bytes": config.size_bytes,
                "first_position": first_position,
                "created_at": created_at,
            },
        )
    elif existing.first_position is None and first_position is not None:
        connection.execute(_SET_FIRST_POSITION, {"config_hash": config.hash, "position": first_position})


def resolve_hash(connection: Connection, reference: str) -> str:
    """The full hash for a full hash or a unique prefix of at least 7 hex digits."""
    prefix = reference.strip().lower()
    if len(prefix) < MIN_PREFIX or len(prefix) > 64 or any(c not in "0123456789abcdef" for c in prefix):
        raise InvalidHashPrefix(
            f"{reference[:80]!r} is not a config hash: give at least {MIN_PREFIX} hex digits"
        )
    # Hex digits cannot contain LIKE wildcards, so the prefix is safe to pattern-match as is.
    query = (
        sa.select(config_versions.c.hash)
        .where(config_versions.c.hash.like(f"{prefix}%"))
        .order_by(config_versions.c.hash)
        .limit(5)
    )
    matches = [str(value) for value in connection.execute(query).scalars()]
    if not matches:
        raise UnknownConfigHash(f"no stored config has a hash starting with {prefix}")
    if len(matches) > 1:
        raise AmbiguousHashPrefix(
            f"{prefix} matches more than one config ({', '.join(m[:16] for m in matches)}); give more digits",
            candidates=matches,
        )
    return matches[0]


def load_config(
    connection: Connection, full_hash: str, cipher: SecretCipher | None, *, reveal: bool
) -> StoredConfig:
    """The stored config ``full_hash``, secrets decrypted (``reveal=False``: left sealed)."""
    row = connection.execute(sa.select(config_versions).where(config_versions.c.hash == full_hash)).one()
    created_at = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return StoredConfig(
        hash=full_hash,
        body=unseal(row.body, cipher) if reveal else dict(row.body),
        size_bytes=int(row.size_bytes),
        first_position=None if row.first_position is None else int(row.first_position),
        created_at=created_at,
        secret_paths=frozenset(sealed_paths(row.body)),
    )


def has_config(connection: Connection, full_hash: str) -> bool:
    query = sa.select(config_versions.c.hash).where(config_versions.c.hash == full_hash)
    return connection.execute(query).first() is not None


def count_configs(connection: Connection) -> int:
    query = sa.select(sa.func.count()).select_from(config_versions)
    return int(connection.execute(query).scalar() or 0)
