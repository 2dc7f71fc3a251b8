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
from sqlalchemy.engine import Connection

from confledger.store.canonical import canonical_bytes, canonical_json, sha256_hex
from confledger.store.errors import IntegrityKeyError
from confledger.store.schema import integrity_records
from confledger.store.secrets import ConfigPath, SecretCipher, digest_secrets
from confledger.store.upsert import upsert

__all__ = [
    "CONFIG_HASH_KEYED",
    "CONFIG_HASH_PLAIN",
    "CONFIG_HASH_SEALS_MORE",
    "LINK_HMAC",
    "LINK_SHA256",
    "MIN_SIGNING_KEY_LENGTH",
    "Anchor",
    "AnchorFile",
    "AnchorUnreadable",
    "IntegrityKeys",
    "KeyRecord",
    "candidate_keys",
    "config_hash_as",
    "load_key_record",
    "load_verified",
    "read_anchor",
    "save_key_record",
    "save_verified",
    "seal_anchor",
    "write_anchor",
]

# Link schemes (events.link_version): 1 is DESIGN.md's sha256 over link_message, 2 an HMAC under the link key.
LINK_SHA256 = 1
LINK_HMAC = 2
# Config hash schemes (config_versions.hash_version): 1 hashes secrets in the clear, 2 their keyed digests.
# A body without secrets has one hash under both.
CONFIG_HASH_PLAIN = 1
CONFIG_HASH_KEYED = 2
# 3 hashes as 2; its stored body also seals values the hash takes in the clear, each marked
# ``$confledger_sealed_undigested`` (names only the sealing rules of store/secrets.py know).
CONFIG_HASH_SEALS_MORE = 3
# The newest scheme this release knows: a body under a later one was written by a newer release.
CONFIG_HASH_NEWEST = CONFIG_HASH_SEALS_MORE

# A signing key is any text of at least this many characters (a Fernet key from ``confledger keygen`` is 44).
MIN_SIGNING_KEY_LENGTH = 32

_SALT = b"confledger integrity"
_CHECK_TEXT = b"confledger key check value"
_KEY_RECORD = "key"
_VERIFIED_RECORD = "verified"
_ANCHOR_FORMAT = 1


def _derive(material: bytes, purpose: str) -> bytes:
    # Loaded here, by the first keyed log, not by every import of the store (see SecretCipher).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose.encode("ascii")).derive(
        material
    )


class IntegrityKeys:
    """The purpose keys derived from one key material; ``origin`` names the setting it came from."""

    __slots__ = ("_link", "_record", "_secret", "check_value", "origin")

    def __init__(self, material: bytes, *, origin: str) -> None:
        # The link and record keys are kept as HMACs already keyed: every event's link and every anchor
        # copies one (the key's padding is hashed once, not again per MAC as hmac.new would).
        self._link = hmac.new(_derive(material, "confledger/link/v2"), digestmod=hashlib.sha256)
        self._record = hmac.new(_derive(material, "confledger/record/v1"), digestmod=hashlib.sha256)
        self._secret = _derive(material, "confledger/secret-digest/v1")
        check = _derive(material, "confledger/check/v1")
        self.check_value = hmac.new(check, _CHECK_TEXT, hashlib.sha256).hexdigest()[:32]
        self.origin = origin

    def link_mac(self, message: bytes) -> str:
        mac = self._link.copy()
        mac.update(message)
        return mac.hexdigest()

    def record_mac(self, purpose: str, value: Any) -> str:
        return self.record_mac_of_text(purpose, canonical_json(value))

    def record_mac_of_text(self, purpose: str, text: str) -> str:
        """``record_mac`` of the value whose canonical JSON is ``text``."""
        # The purpose is MACed too: a checkpoint's MAC can never be passed off as the anchor's.
        mac = self._record.copy()
        mac.update(purpose.encode("ascii") + b"\x00" + text.encode())
        return mac.hexdigest()

    def record_mac_holds(self, purpose: str, value: Any, mac: str | None) -> bool:
        return self.record_mac_of_text_holds(purpose, canonical_json(value), mac)

    def record_mac_of_text_holds(self, purpose: str, text: str, mac: str | None) -> bool:
        """``record_mac_holds`` of the value whose canonical JSON is ``text``."""
        return mac is not None and hmac.compare_digest(self.record_mac_of_text(purpose, text), str(mac))

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
    *,
    plain_text: str | None = None,
) -> str:
    """The hash of ``plain_body`` (secrets revealed) under hash scheme ``version``; ``plain_text``: its
    canonical text, when the caller has it (a hash with nothing digested is that text's)."""
    if version not in (CONFIG_HASH_PLAIN, CONFIG_HASH_KEYED, CONFIG_HASH_SEALS_MORE):
        raise ValueError(f"unknown config hash version {version}")
    paths = list(secret_paths)
    if version == CONFIG_HASH_PLAIN or not paths:
        return sha256_hex(canonical_json(dict(plain_body)) if plain_text is None else plain_text)
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
    upsert(connection, integrity_records, {"name": _VERIFIED_RECORD, **values}, key="name")


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
    """The anchor file exists but holds no anchor this key wrote (edited, damaged or from another key)."""


# The file holds two fixed-size slots, written in turn in place (pwrite on a kept descriptor, no rename,
# no fsync): a rename-over costs the append path an implicit flush on ext4 (measured +0.9 ms per append),
# an in-place write of one slot a few microseconds. A write torn by a crash damages one slot; the other
# still holds an older anchor, which is still a true lower bound.
_SLOT = 512
_SLOTS = 2


# In a slot's canonical JSON the MAC's member sorts right before this text ("format", "hash", "log_id",
# "mac", "position"), which occurs once: the other values are a number and texts, whose quotes are escaped.
_AFTER_MAC = ',"position":'


def seal_anchor(anchor: Anchor, keys: IntegrityKeys) -> bytes:
    """The slot that records ``anchor``: its value and MAC, padded to a slot."""
    # One encoding of the value serves both the MAC and the slot: the slot is the value's canonical JSON
    # with the MAC's member set in (canonical JSON nests as it stands alone). The reader takes the fields
    # by name, so slots written by json.dumps, in its order, still read.
    text = canonical_json(anchor.value())
    mac = keys.record_mac_of_text("integrity.anchor", text)
    before, after_mac, after = text.partition(_AFTER_MAC)
    return f'{before},"mac":"{mac}"{after_mac}{after}'.encode().ljust(_SLOT - 1) + b"\n"


def _parse_slot(raw: bytes, keys: IntegrityKeys) -> Anchor | None:
    try:
        stored = json.loads(raw.decode("utf-8"))
        value = {key: stored[key] for key in ("format", "log_id", "position", "hash")}
        anchor = Anchor(str(value["log_id"]), int(value["position"]), str(value["hash"]))
        mac = stored["mac"]
    except (ValueError, KeyError, TypeError):
        return None
    return anchor if keys.record_mac_holds("integrity.anchor", value, mac) else None


def read_anchor(path: Path, keys: IntegrityKeys) -> Anchor | None:
    """The newest intact anchor in ``path`` (None: no file, or an empty one); ``AnchorUnreadable`` when
    the file holds no slot this key wrote."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AnchorUnreadable(f"cannot read the anchor file {path}: {type(exc).__name__}") from exc
    if not data.strip():
        return None
    slots = [data[index * _SLOT : (index + 1) * _SLOT] for index in range(_SLOTS)]
    intact = [anchor for anchor in (_parse_slot(slot, keys) for slot in slots if slot.strip()) if anchor]
    if not intact:
        raise AnchorUnreadable(
            f"the anchor file {path} holds no anchor written with this key (edited, damaged, or another key's)"
        )
    return max(intact, key=lambda anchor: anchor.position)


class AnchorFile:
    """The anchor file kept open for writing: each ``write`` fills the other slot (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None
        self._next_slot = 0

    def write(self, anchor: Anchor, keys: IntegrityKeys) -> None:
        self.write_sealed(seal_anchor(anchor, keys), keys)

    def write_sealed(self, slot: bytes, keys: IntegrityKeys) -> None:
        """Write a slot ``seal_anchor`` made (``keys`` read the file when it is first opened)."""
        if self._descriptor is None:
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            # Start with the slot that does not hold the newest anchor, so that one survives a torn write.
            with contextlib.suppress(AnchorUnreadable, OSError):
                newest = read_anchor(self.path, keys)
                data = self.path.read_bytes()
                if newest is not None and _parse_slot(data[:_SLOT], keys) == newest:
                    self._next_slot = 1
        os.pwrite(self._descriptor, slot, self._next_slot * _SLOT)
        self._next_slot = (self._next_slot + 1) % _SLOTS

    def close(self) -> None:
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            os.close(descriptor)


def write_anchor(path: Path, anchor: Anchor, keys: IntegrityKeys) -> None:
    """Write ``anchor`` into ``path`` once (the log keeps an ``AnchorFile`` open instead)."""
    anchor_file = AnchorFile(path)
    try:
        anchor_file.write(anchor, keys)
    finally:
        anchor_file.close()
