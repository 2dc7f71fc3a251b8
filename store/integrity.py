"""Integrity keys and what they protect: keyed links, MACed records and checkpoints, keyed secret digests
in config hashes, and the anchor file kept outside the database.

A plain sha256 chain stops nobody who can write the database: the algorithm is public, so a rewritten tail
can be re-hashed. Everything here is keyed with a key that is not in the database. Three purpose keys are
derived with HKDF from one key material (the ``CONFLEDGER_SIGNING_KEY``, or else the encryption key the
log already needs for its secrets), so a link key can never double as a secret digest key:

- ``link``: event links of ``link_version`` 2 are ``HMAC-SHA256(link, link_message)``;
- ``record``: checkpoints, the log's integrity records and the anchor file carry an HMAC under it;
- ``secret``: a version-2 config hash takes each secret value only as ``HMAC(secret, value)``.

The database keeps a key check value (an HMAC of a fixed text, which reveals nothing of the key), so an
instance started with another key is refused at start-up instead of writing links nobody can check.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Connection

from confledger.store.canonical import canonical_bytes, sha256_hex
from confledger.store.errors import IntegrityKeyError
from confledger.store.schema import integrity_records
from confledger.store.secrets import ConfigPath, SecretCipher, digest_secrets

__all__ = [
    "CONFIG_HASH_KEYED",
    "CONFIG_HASH_PLAIN",
    "LINK_HMAC",
    "LINK_SHA256",
    "MIN_SIGNING_KEY_LENGTH",
    "Anchor",
    "IntegrityKeys",
    "KeyRecord",
    "candidate_keys",
    "config_hash_as",
    "load_key_record",
    "load_verified",
    "read_anchor",
    "save_key_record",
    "save_verified",
    "write_anchor",
]

# Link schemes (events.link_version): 1 is DESIGN.md's sha256 over link_message, 2 an HMAC under the link key.
LINK_SHA256 = 1
LINK_HMAC = 2
# Config hash schemes (config_versions.hash_version): 1 hashes secrets in the clear, 2 their keyed digests.
# A body without secrets has one hash under both.
CONFIG_HASH_PLAIN = 1
CONFIG_HASH_KEYED = 2

# A signing key is any text of at least this many characters (a Fernet key from ``confledger keygen`` is 44).
MIN_SIGNING_KEY_LENGTH = 32

_SALT = b"confledger integrity"
_CHECK_TEXT = b"confledger key check value"
_KEY_RECORD = "key"
_VERIFIED_RECORD = "verified"
_ANCHOR_FORMAT = 1


def _derive(material: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose.encode("ascii")).derive(
        material
    )


class IntegrityKeys:
    """The purpose keys derived from one key material; ``origin`` names the setting it came from."""

    __slots__ = ("_link", "_record", "_secret", "check_value", "origin")

    def __init__(self, material: bytes, *, origin: str) -> None:
        self._link = _derive(material, "confledger/link/v2")
        self._record = _derive(material, "confledger/record/v1")
        self._secret = _derive(material, "confledger/secret-digest/v1")
        check = _derive(material, "confledger/check/v1")
        self.check_value = hmac.new(check, _CHECK_TEXT, hashlib.sha256).hexdigest()[:32]
        self.origin = origin

    def link_mac(self, message: bytes) -> str:
        return hmac.new(self._link, message, hashlib.sha256).hexdigest()

    def record_mac(self, purpose: str, value: Any) -> str:
        # The purpose is MACed too: a checkpoint's MAC can never be passed off as the anchor's.
        message = purpose.encode("ascii") + b"\x00" + canonical_bytes(value)
        return hmac.new(self._record, message, hashlib.sha256).hexdigest()

    def record_mac_holds(self, purpose: str, value: Any, mac: str | None) -> bool:
        return mac is not None and hmac.compare_digest(self.record_mac(purpose, value), str(mac))

    def secret_digest(self, value: Any) -> str:
        return hmac.new(self._secret, canonical_bytes(value), hashlib.sha256).hexdigest()


def candidate_keys(signing_key: str | None, cipher: SecretCipher | None) -> list[IntegrityKeys]:
    """The keys a log may be signed with, in the order tried: the signing key alone when one is set,
    else each encryption key, newest first (after a rotation the older key still matches the log)."""
    if signing_key:
        if len(signing_key) < MIN_SIGNING_KEY_LENGTH:
            raise IntegrityKeyError(
                f"CONFLEDGER_SIGNING_KEY must be at least {MIN_SIGNING_KEY_LENGTH} characters "
                "(confledger keygen makes one)"
            )
        return [IntegrityKeys(signing_key.encode("utf-8"), origin="CONFLEDGER_SIGNING_KEY")]
    if cipher is None:
        return []
    origin = "CONFLEDGER_ENCRYPTION_KEY (or the key file beside an SQLite log)"
    return [IntegrityKeys(material, origin=origin) for material in cipher.key_materials()]


def config_hash_as(
    plain_body: Mapping[str, Any],
    secret_paths: Iterable[ConfigPath],
    version: int,
    keys: IntegrityKeys | None,
) -> str:
    """The hash of ``plain_body`` (secrets revealed) under hash scheme ``version``."""
    if version == CONFIG_HASH_PLAIN:
        return sha256_hex(canonical_bytes(dict(plain_body)))
    if version != CONFIG_HASH_KEYED:
        raise ValueError(f"unknown config hash version {version}")
    paths = list(secret_paths)
    if not paths:
        return sha256_hex(canonical_bytes(dict(plain_body)))
    if keys is None:
        raise IntegrityKeyError(
            "a config hash over secrets needs the log's key: set CONFLEDGER_ENCRYPTION_KEY "
            "or CONFLEDGER_SIGNING_KEY"
        )
    return sha256_hex(canonical_bytes(digest_secrets(plain_body, paths, keys.secret_digest)))


# --- records in the database -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """Which key signs the log (its check value), since which position, and the log's own id."""

    log_id: str
    check_value: str
    keyed_from: int
    mac: str | None

    def value(self) -> dict[str, Any]:
        return {"log_id": self.log_id, "check_value": self.check_value, "keyed_from": self.keyed_from}


def _record(connection: Connection, name: str) -> tuple[Any, str | None] | None:
    row = connection.execute(
        sa.select(integrity_records.c.value, integrity_records.c.mac).where(integrity_records.c.name == name)
    ).first()
    return None if row is None else (row.value, None if row.mac is None else str(row.mac))


def load_key_record(connection: Connection) -> KeyRecord | None:
    found = _record(connection, _KEY_RECORD)
    if found is None:
        return None
    value, mac = found
    if not isinstance(value, dict):
        return KeyRecord("", "", 0, None)  # damaged: its MAC cannot hold
    return KeyRecord(
        log_id=str(value.get("log_id", "")),
        check_value=str(value.get("check_value", "")),
        keyed_from=int(value.get("keyed_from", 0) or 0),
        mac=mac,
    )


def save_key_record(connection: Connection, keys: IntegrityKeys, keyed_from: int) -> KeyRecord:
    """Write the log's key record (once; the caller holds the write lock and found none)."""
    record = KeyRecord(str(uuid.uuid4()), keys.check_value, keyed_from, None)
    mac = keys.record_mac("integrity.key", record.value())
    connection.execute(
        integrity_records.insert().values(
            name=_KEY_RECORD, value=record.value(), mac=mac, updated_at=datetime.now(UTC)
        )
    )
    return KeyRecord(record.log_id, record.check_value, keyed_from, mac)


def load_verified(connection: Connection, keys: IntegrityKeys) -> tuple[int, str] | None:
    """The position (and its hash) start-up last verified up to, if its MAC holds."""
    found = _record(connection, _VERIFIED_RECORD)
    if found is None:
        return None
    value, mac = found
    if not keys.record_mac_holds("integrity.verified", value, mac) or not isinstance(value, dict):
        return None  # an edited record only costs a longer check: verification starts from 0
    return int(value["position"]), str(value["hash"])


def save_verified(connection: Connection, keys: IntegrityKeys, position: int, head_hash: str) -> None:
    value = {"position": position, "hash": head_hash}
    values = {
        "value": value,
        "mac": keys.record_mac("integrity.verified", value),
        "updated_at": datetime.now(UTC),
    }
    updated = connection.execute(
        integrity_records.update().where(integrity_records.c.name == _VERIFIED_RECORD).values(**values)
    ).rowcount
    if not updated:
        connection.execute(integrity_records.insert().values(name=_VERIFIED_RECORD, **values))


# --- the anchor file ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    """A position of the log and its event's hash, MACed, kept outside the database: the log must still
    hold exactly that event (a truncated or rewritten tail does not)."""

    log_id: str
    position: int
    hash: str

    def value(self) -> dict[str, Any]:
        return {"format": _ANCHOR_FORMAT, "log_id": self.log_id, "position": self.position, "hash": self.hash}


class AnchorUnreadable(Exception):
    """The anchor file exists but is not one this key wrote (edited, damaged or from another key)."""


def read_anchor(path: Path, keys: IntegrityKeys) -> Anchor | None:
    """The anchor in ``path`` (None: no file); ``AnchorUnreadable`` when it is not intact."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AnchorUnreadable(f"cannot read the anchor file {path}: {type(exc).__name__}") from exc
    try:
        stored = json.loads(text)
        value = {key: stored[key] for key in ("format", "log_id", "position", "hash")}
        anchor = Anchor(str(value["log_id"]), int(value["position"]), str(value["hash"]))
        mac = stored["mac"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AnchorUnreadable(f"the anchor file {path} is damaged") from exc
    if not keys.record_mac_holds("integrity.anchor", value, mac):
        raise AnchorUnreadable(
            f"the anchor file {path} was not written with this key (its MAC does not hold)"
        )
    return anchor


def write_anchor(path: Path, anchor: Anchor, keys: IntegrityKeys) -> None:
    """Replace the anchor file at once (a temporary file renamed over it), mode 0600.

    No fsync: after a power cut the file may hold an older position, which is still a true lower bound
    (the database committed before the anchor was written), and an anchor never runs ahead of the log.
    """
    value = anchor.value()
    text = json.dumps({**value, "mac": keys.record_mac("integrity.anchor", value)})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
