"""Config bodies stored by content: ``config_versions``, one row per distinct body.

The stored body has its secrets sealed. Its hash is over the plain body, under the scheme stored with it
(``hash_version``, ``store.integrity``): 1, secrets in the clear (bodies stored before 0002_integrity); 2,
each secret as its keyed digest, so a hash tells nothing of a secret; 3, as 2, the body also sealing
values the hash takes in the clear (``$confledger_sealed_undigested``: secrets only the sealing rules of
``store.secrets`` recognise, which came after the hash rules and must not change hashes). A body is written in the same
transaction as the append that first names it, and never changed after; whoever reads it to apply it
(``load_config`` with ``reveal``) recomputes its hash and refuses a body that does not match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from confledger.store.canonical import canonical_json
from confledger.store.errors import (
    AmbiguousHashPrefix,
    ConfigBodyMismatch,
    HashSchemeTooNew,
    InvalidHashPrefix,
    SecretKeyError,
    UnknownConfigHash,
)
from confledger.store.integrity import (
    CONFIG_HASH_KEYED,
    CONFIG_HASH_NEWEST,
    CONFIG_HASH_PLAIN,
    CONFIG_HASH_SEALS_MORE,
    IntegrityKeys,
    config_hash_as,
)
from confledger.store.schema import config_versions
from confledger.store.secrets import ConfigPath, SecretCipher, get_path, seal, sealed_paths, unseal
from confledger.store.statements import DriverStatement
from confledger.store.upsert import insert_for

__all__ = [
    "CONFIG_COLUMNS",
    "CONFIG_ROW",
    "MIN_PREFIX",
    "ConfigWrites",
    "PreparedConfig",
    "StoredConfig",
    "body_mismatches",
    "check_body",
    "count_configs",
    "has_config",
    "is_full_hash",
    "load_config",
    "prepare_config",
    "resolve_hash",
    "store_config",
    "stored_config",
]

MIN_PREFIX = 7

# What a stored config is read back from, in the order ``stored_config`` takes it. ``CONFIG_ROW`` is
# built once: the log runs it on the driver's cursor (store/statements.py), where SQLAlchemy's
# per-execution work was most of a follower's read of the config it is about to apply.
CONFIG_COLUMNS = (
    config_versions.c.body,
    config_versions.c.size_bytes,
    config_versions.c.first_position,
    config_versions.c.created_at,
    config_versions.c.hash_version,
)
CONFIG_ROW = sa.select(*CONFIG_COLUMNS).where(
    config_versions.c.hash == sa.bindparam("config_hash", type_=sa.String)
)


@dataclass(frozen=True, slots=True)
class PreparedConfig:
    """A config body ready to store: hash over the plain body, secrets already sealed, and the
    canonical text of the sealed body that the row stores (``sealed_text``)."""

    hash: str
    sealed_body: dict[str, Any]
    size_bytes: int
    sealed_text: str
    hash_version: int = CONFIG_HASH_PLAIN


@dataclass(frozen=True, slots=True)
class StoredConfig:
    hash: str
    body: dict[str, Any]
    size_bytes: int
    first_position: int | None
    created_at: datetime
    secret_paths: frozenset[ConfigPath] = frozenset()
    hash_version: int = CONFIG_HASH_PLAIN


def prepare_config(
    body: Mapping[str, Any],
    secret_paths: Iterable[ConfigPath],
    cipher: SecretCipher | None,
    keys: IntegrityKeys | None = None,
    *,
    hashed: str | None = None,
    digested: Iterable[ConfigPath] | None = None,
    text: str | None = None,
) -> PreparedConfig:
    """Hash ``body`` (secrets plain) under the current scheme and seal its secrets for storage.

    ``digested``: those of ``secret_paths`` the hash takes as keyed digests (default: all of them); the
    others are sealed and hashed in the clear (scheme 3). ``hashed``: the hash the caller already has
    for this body under this scheme and these keys (a reload's model check computes it with
    ``EventLog.hash_config``), so it is not computed twice; ``text``: the body's canonical text, when
    the caller made it (the check did, to hash a body with nothing digested).

    The body is encoded once where it can be: its text gives its size, and, with no secrets to seal,
    is the text the row stores. A reload of a 1,000-flag file encoded it three times (the hash, the
    size, the column's JSON), about a fifth of the reload.
    """
    plain = dict(body)
    paths = list(secret_paths)
    hashed_as_digests = paths if digested is None else list(digested)
    chosen = set(hashed_as_digests)
    in_clear = [path for path in paths if path not in chosen]
    # First: a secret with no key to seal it is refused as it was.
    sealed = seal(plain, paths, cipher, undigested=in_clear)
    seals_more = cipher is not None and any(get_path(plain, path)[1] is not None for path in in_clear)
    plain_text = canonical_json(plain) if text is None else text
    return PreparedConfig(
        hash=hashed
        if hashed is not None
        else config_hash_as(plain, hashed_as_digests, CONFIG_HASH_KEYED, keys, plain_text=plain_text),
        sealed_body=sealed,
        size_bytes=len(plain_text.encode("utf-8")),
        hash_version=CONFIG_HASH_SEALS_MORE if seals_more else CONFIG_HASH_KEYED,
        sealed_text=canonical_json(sealed) if paths else plain_text,
    )


class ConfigWrites:
    """``store_config``'s two statements, built and compiled once for ``dialect``, run on the driver's
    cursor: built per call, SQLAlchemy's construction of an ``INSERT … ON CONFLICT`` cost ten times the
    look-up it replaced (200 against 18 us for a body already stored, SQLite)."""

    __slots__ = ("if_new", "naming")

    def __init__(self, dialect: Dialect) -> None:
        # Bound names differ from the column names: an INSERT reserves those for its VALUES clause.
        values = {
            name: sa.bindparam(f"config_{name}", type_=config_versions.c[name].type)
            for name in ("hash", "body", "size_bytes", "first_position", "created_at", "hash_version")
        }
        insert = insert_for(dialect, config_versions, values)
        # The body is bound as its canonical text (``PreparedConfig.sealed_text``), made once.
        self.if_new = DriverStatement(
            insert.on_conflict_do_nothing(index_elements=["hash"]), dialect, encoded=("config_body",)
        )
        self.naming = DriverStatement(
            insert.on_conflict_do_update(
                index_elements=["hash"],
                set_={"first_position": insert.excluded.first_position},
                where=config_versions.c.first_position.is_(None),
            ),
            dialect,
            encoded=("config_body",),
        )


def store_config(
    connection: Connection,
    config: PreparedConfig,
    *,
    first_position: int | None,
    created_at: datetime,
    writes: ConfigWrites,
) -> None:
    """Store a body by content (once); ``first_position`` is the append that first names it.

    One statement (``INSERT … ON CONFLICT``): a body already stored keeps its row, and gets its first
    position if it had none (put ahead of the append that names it). On PostgreSQL that is one round trip
    where a look for the row and then the insert took two for every new config.
    """
    values = {
        "config_hash": config.hash,
        "config_body": config.sealed_text,
        "config_size_bytes": config.size_bytes,
        "config_first_position": first_position,
        "config_created_at": created_at,
        "config_hash_version": config.hash_version,
    }
    (writes.if_new if first_position is None else writes.naming).run(connection, [values])


def is_full_hash(reference: str) -> bool:
    """Whether ``reference`` is a whole hash (64 lowercase hex digits), which needs no lookup to resolve."""
    return len(reference) == 64 and all(c in "0123456789abcdef" for c in reference)


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
    connection: Connection,
    full_hash: str,
    cipher: SecretCipher | None,
    *,
    reveal: bool,
    keys: IntegrityKeys | None = None,
    statement: DriverStatement | None = None,
) -> StoredConfig:
    """The stored config ``full_hash``, secrets decrypted (``reveal=False``: left sealed, for display).

    A revealed body is re-hashed under its own scheme first: ``ConfigBodyMismatch`` when it is not the
    body the hash names (edited in the database), so nothing applies or hands out a forged body.
    ``statement``: ``CONFIG_ROW`` compiled for the connection's dialect, run on its driver's cursor.
    """
    values = {"config_hash": full_hash}
    row = (
        connection.execute(CONFIG_ROW, values).first()
        if statement is None
        else statement.first(connection, values)
    )
    if row is None:
        raise UnknownConfigHash(f"no stored config has the hash {full_hash[:64]}")
    return stored_config(full_hash, row, cipher, reveal=reveal, keys=keys)


def stored_config(
    full_hash: str,
    row: Sequence[Any],
    cipher: SecretCipher | None,
    *,
    reveal: bool,
    keys: IntegrityKeys | None = None,
) -> StoredConfig:
    """The stored config ``full_hash`` of ``row`` (``CONFIG_COLUMNS``, as read by a statement of its own
    or beside the event that names it), checked and revealed as ``load_config`` says."""
    stored_body, size_bytes, first_position, created_at, hash_version = row
    if not isinstance(stored_body, dict):
        # A body is always stored as an object: anything else (other JSON, or text that is not JSON,
        # ``UnreadableJSON``) was written into the row by hand.
        raise ConfigBodyMismatch(
            f"the stored body of config {full_hash[:16]} is not a JSON object: it was changed in the "
            "database; it is not applied",
            config_hash=full_hash,
        )
    created_at = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    paths = frozenset(sealed_paths(stored_body))
    version = int(hash_version)
    if reveal:
        refuse_newer_scheme(full_hash, version)  # before unsealing: its seals may be of its own kind
        body = unseal(stored_body, cipher)
        # Only a scheme-3 body seals values its hash takes in the clear: in any other, a value marked so
        # was put there by hand, and re-hashing it as a digest refuses the body.
        digested = (
            frozenset(sealed_paths(stored_body, digested_only=True))
            if version == CONFIG_HASH_SEALS_MORE
            else paths
        )
        check_body(full_hash, body, digested, version, keys)
    else:
        body = dict(stored_body)
    return StoredConfig(
        hash=full_hash,
        body=body,
        size_bytes=int(size_bytes),
        first_position=None if first_position is None else int(first_position),
        created_at=created_at,
        secret_paths=paths,
        hash_version=version,
    )


def refuse_newer_scheme(full_hash: str, version: int) -> None:
    """``HashSchemeTooNew`` when ``version`` is a hash scheme of a newer release than this one.

    Without it, this release took such a body for an edited one ("it was changed in the database"): an
    instance left behind in a rolling upgrade reported its fleet's newest configs as tampered with."""
    if version > CONFIG_HASH_NEWEST:
        raise HashSchemeTooNew(
            f"config {full_hash[:16]} is stored under hash scheme {version}, which this release does not "
            f"know (it knows 1 to {CONFIG_HASH_NEWEST}): a newer confledger wrote it; upgrade this instance",
            config_hash=full_hash,
            scheme=version,
        )


def check_body(
    full_hash: str,
    plain_body: Mapping[str, Any],
    secret_paths: Iterable[ConfigPath],
    version: int,
    keys: IntegrityKeys | None,
) -> None:
    """Raise ``ConfigBodyMismatch`` unless ``plain_body`` hashes to ``full_hash`` under scheme ``version``
    (``HashSchemeTooNew`` for a scheme of a newer release, which this one cannot recompute)."""
    refuse_newer_scheme(full_hash, version)
    try:
        recomputed = config_hash_as(plain_body, secret_paths, version, keys)
    except (ValueError, TypeError):
        recomputed = None  # an unknown scheme number or a body that is no mapping: the row was edited
    if recomputed != full_hash:
        raise ConfigBodyMismatch(
            f"the stored body of config {full_hash[:16]} does not hash to {full_hash[:16]}: it was changed "
            "in the database; it is not applied",
            config_hash=full_hash,
        )


def body_mismatches(
    connection: Connection,
    cipher: SecretCipher | None,
    keys: IntegrityKeys | None,
    *,
    since: int | None = None,
    batch: int = 200,
) -> Iterable[tuple[str, int | None, str, str]]:
    """Every stored body that does not hash to its hash: (hash, first position, why, reason code), by hash
    order.

    ``since``: only bodies first named after that position, and those no event names yet."""
    after = ""
    while True:
        query = sa.select(config_versions).where(config_versions.c.hash > after)
        if since is not None:
            query = query.where(
                sa.or_(config_versions.c.first_position > since, config_versions.c.first_position.is_(None))
            )
        rows = connection.execute(query.order_by(config_versions.c.hash).limit(batch)).all()
        for row in rows:
            first = None if row.first_position is None else int(row.first_position)
            try:
                load_config(connection, str(row.hash), cipher, reveal=True, keys=keys)
            except ConfigBodyMismatch as exc:
                yield str(row.hash), first, exc.message, exc.code
            except SecretKeyError as exc:
                why = f"its secrets cannot be read to re-hash it: {exc.message}"
                yield str(row.hash), first, why, ConfigBodyMismatch.code
        if len(rows) < batch:
            return
        after = str(rows[-1].hash)


def has_config(connection: Connection, full_hash: str) -> bool:
    query = sa.select(config_versions.c.hash).where(config_versions.c.hash == full_hash)
    return connection.execute(query).first() is not None


def count_configs(connection: Connection) -> int:
    query = sa.select(sa.func.count()).select_from(config_versions)
    return int(connection.execute(query).scalar() or 0)
