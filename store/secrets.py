"""Secrets in config bodies: finding them, sealing them at rest, and redacting them for display.

A config hash is computed over the plain values (a rotated API key is a changed config), but the body
written to ``config_versions`` has every secret replaced by a Fernet token, so an auditor running
``SELECT body FROM config_versions`` never reads a production key, while rollback can still restore it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from confledger.store.canonical import canonical_json
from confledger.store.errors import SecretKeyError

__all__ = [
    "DIGESTED_SECRET",
    "NOT_SECRET",
    "REDACTED",
    "SEALED_MARKER",
    "SEALED_SECRET",
    "SEALED_UNDIGESTED_MARKER",
    "SECRET_DIGEST_MARKER",
    "ConfigPath",
    "SecretCipher",
    "classify_secrets",
    "digest_secrets",
    "digested_paths",
    "dotted",
    "find_secret_paths",
    "get_path",
    "holds_password",
    "is_sealed",
    "looks_secret",
    "redact",
    "replace_path",
    "seal",
    "sealed_paths",
    "secret_kind",
    "unseal",
]

REDACTED = "**********"
SEALED_MARKER = "$confledger_sealed"
# A sealed value the config hash takes in the clear (hash scheme 3: found only by the sealing rules).
SEALED_UNDIGESTED_MARKER = "$confledger_sealed_undigested"
_SEAL_MARKERS = (SEALED_MARKER, SEALED_UNDIGESTED_MARKER)
# What stands for a secret in the canonical form a version-2 config hash is taken over.
SECRET_DIGEST_MARKER = "$confledger_secret_digest"  # noqa: S105 - a marker, not a secret

ConfigPath = tuple[str | int, ...]

# Untyped configs have no SecretStr to go by, so names decide. Matching on whole name parts keeps
# "max_tokens" and "keyspace" out while catching "api_key", "dbPassword" and "FIRECRAWL_API_KEY".
# These two sets are part of config hash scheme 2 (docs/architecture.md, "Integrity"): a value they name
# is hashed as its keyed digest. They never change, since a change would give configs already in logs
# new hashes; names they miss are caught by the sealing rules below instead.
_SECRET_PARTS = {
    "password",
    "passwords",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "secrets",
    "token",
    "credential",
    "credentials",
    "apikey",
}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("auth", "key")}

# Names the hash rules above miss but that hold secrets all the same ("DB_PASS", "STRIPE_KEY",
# "signing_key", "api_keys", "ACCESSTOKEN"). Their values are sealed at rest and hidden in every answer
# like any secret, and hashed in the clear (scheme 3 marks them so in the stored body), so widening
# these rules changes no config's hash.
_SEALED_PARTS = {
    "apikeys",
    "apitoken",
    "authtoken",
    "accesstoken",
    "accesskey",
    "secretkey",
    "privatekey",
    "signingkey",
    "encryptionkey",
    "clientsecret",
}
# Short spellings of a password, only as a name's last part: "smtp_pass" holds one, "pass_rate" does not.
_SEALED_LAST_PARTS = {"pass", "pw"}
# A name ending in "key" holds a key ("stripe_key", "signing_key") unless the part before it says it is
# a key of data, which is no secret ("sort_key", "cache_key", "partition_key").
_KEY_PARTS = {"key", "keys"}
_DATA_KEY_KINDS = {
    "attribute",
    "bucket",
    "business",
    "cache",
    "column",
    "composite",
    "config",
    "cursor",
    "dedup",
    "dedupe",
    "deduplication",
    "dimension",
    "entry",
    "event",
    "experiment",
    "feature",
    "field",
    "flag",
    "foreign",
    "group",
    "grouping",
    "hash",
    "hot",
    "i18n",
    "idempotency",
    "index",
    "item",
    "join",
    "json",
    "keyboard",
    "label",
    "locale",
    "lock",
    "lookup",
    "map",
    "message",
    "metadata",
    "metric",
    "natural",
    "object",
    "order",
    "ordering",
    "param",
    "parameter",
    "partition",
    "primary",
    "property",
    "public",
    "publishable",
    "query",
    "queue",
    "range",
    "rate",
    "record",
    "routing",
    "row",
    "search",
    "secondary",
    "setting",
    "settings",
    "shard",
    "sharding",
    "shortcut",
    "sort",
    "state",
    "storage",
    "stream",
    "surrogate",
    "table",
    "tag",
    "topic",
    "translation",
    "unique",
    "variant",
}

# What a name makes of the value it holds: nothing, a secret hashed in the clear (sealed and hidden),
# or a secret the config hash takes as its keyed digest.
NOT_SECRET = 0
SEALED_SECRET = 1
DIGESTED_SECRET = 2

# A URL with a password in its user part ("postgresql://app:hunter2@db/prod"), or a libpq keyword
# string with one ("host=db password=hunter2"): secret whatever it is named.
_PASSWORD_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@|(?:^|\s)password\s*=\s*\S")


def _name_parts(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [part for part in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if part]


# A name that ends in one of these describes a secret ("api_key_header", "token_url", "password_file")
# rather than holding one, so it stays readable.
_DESCRIBING_SUFFIXES = {
    "header",
    "name",
    "url",
    "uri",
    "file",
    "path",
    "ttl",
    "type",
    "length",
    "env",
    "field",
    "prefix",
}


# Every secret part and pair above contains one of these: a name holding none of them cannot be
# secret, and most names of a config hold none. Answering those without the regular expressions keeps
# the cache for the rest, so a config of more distinct names than the cache holds (a feature-flag file
# of thousands) does not miss on every name of every reload.
_SECRET_HINTS = ("pass", "pw", "secret", "token", "credential", "key")


def secret_kind(name: str) -> int:
    """``NOT_SECRET``, ``SEALED_SECRET`` or ``DIGESTED_SECRET``: what the name ``name`` makes of its value."""
    lowered = name.lower()
    for hint in _SECRET_HINTS:
        if hint in lowered:
            return _secret_kind(name)
    return NOT_SECRET


def looks_secret(name: str) -> bool:
    """Whether a value held under ``name`` is a secret: sealed at rest, hidden in every answer."""
    return secret_kind(name) != NOT_SECRET


def holds_password(text: str) -> bool:
    """Whether ``text`` carries a password inline (a URL's user part, a libpq ``password=``)."""
    return _may_hold_password(text) and _PASSWORD_IN_TEXT.search(text) is not None


def _may_hold_password(text: str) -> bool:
    # Most texts of a config hold neither: the walk asks this in line before calling anything per leaf,
    # a call per leaf having cost 40% more on a 1,000-flag config.
    return "@" in text or "password" in text


@functools.lru_cache(maxsize=4096)
def _secret_kind(name: str) -> int:
    parts = _name_parts(name)
    if not parts or parts[-1] in _DESCRIBING_SUFFIXES:
        return NOT_SECRET
    if any(part in _SECRET_PARTS for part in parts) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(parts)
    ):
        return DIGESTED_SECRET
    last = parts[-1]
    if (
        any(part in _SEALED_PARTS for part in parts)
        or last in _SEALED_LAST_PARTS
        or (last in _KEY_PARTS and len(parts) > 1 and parts[-2] not in _DATA_KEY_KINDS)
    ):
        return SEALED_SECRET
    return NOT_SECRET


def dotted(path: ConfigPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def find_secret_paths(config: Any) -> set[ConfigPath]:
    """Paths of secret values, to seal at rest and hide in answers: ``SecretStr``/``SecretBytes`` fields
    of models, values under secret-looking names, and text carrying a password inline."""
    return set(classify_secrets(config))


def classify_secrets(config: Any) -> dict[ConfigPath, bool]:
    """Each secret path of ``config`` (``find_secret_paths``), and whether the config hash takes it as
    its keyed digest (True: a typed secret, or a name of the hash scheme's rules) or in the clear."""
    found: dict[ConfigPath, bool] = {}
    _collect_secrets(config, (), NOT_SECRET, found)
    return found


def digested_paths(secrets: Mapping[ConfigPath, bool]) -> frozenset[ConfigPath]:
    """The paths of ``classify_secrets``' answer that a config hash digests."""
    return frozenset(path for path, digested in secrets.items() if digested)


# Exactly these types (no subclasses): a leaf of a config, secret only by the name it is held under.
_LEAVES = frozenset({str, int, float, bool, type(None)})
# Per model class: the fields mapping a plan was made from, and each field's name with secret_kind(name).
# A rebuilt model class gets a new fields mapping: the identity check on it sees that.
_PLANS: dict[type, tuple[object, tuple[tuple[str, int], ...]]] = {}
# Model classes are few and long-lived; the bound only stops classes made on the fly piling up.
_MAX_PLANS = 512


def _plan(kind: type) -> tuple[tuple[str, int], ...] | None:
    """The fields to walk on a model of class ``kind`` (made and kept); None when it is not a model."""
    if not issubclass(kind, BaseModel) or issubclass(kind, SecretStr | SecretBytes):
        return None
    fields = kind.model_fields
    plan = tuple((name, secret_kind(name)) for name in fields)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[kind] = (fields, plan)
    return plan


def _leaf(value: Any, path: ConfigPath, named: int, found: dict[ConfigPath, bool]) -> None:
    """A leaf (``_LEAVES``) at ``path`` held under a name of kind ``named``."""
    if named and value is not None and type(value) is not bool:
        found[path] = named == DIGESTED_SECRET
    elif type(value) is str and holds_password(value):
        found[path] = False


def _collect_secrets(value: Any, path: ConfigPath, named: int, found: dict[ConfigPath, bool]) -> None:
    # The exact types a validated config is mostly made of are tried first, by identity: an ABC
    # isinstance check per node cost more than the rest of the walk. Everything else takes the general
    # branches at the end, in the order that decides what a value is.
    kind = type(value)
    if kind in _LEAVES:
        _leaf(value, path, named, found)
        return
    if kind is SecretStr or kind is SecretBytes:
        found[path] = True
        return
    if kind is dict or kind is list or kind is tuple:
        if named and value:
            _secret_whole(value, path, named, found)
        elif kind is dict:
            for key, child in value.items():
                name = key if type(key) is str else str(key)
                if type(child) not in _LEAVES:
                    _collect_secrets(child, (*path, name), secret_kind(name), found)
                elif child is not None and type(child) is not bool:
                    named_here = secret_kind(name)
                    if named_here or (type(child) is str and _may_hold_password(child)):
                        _leaf(child, (*path, name), named_here, found)
        else:
            # Items of a list are secret only by what they are: a list under a secret name was taken whole.
            for index, child in enumerate(value):
                if type(child) not in _LEAVES:
                    _collect_secrets(child, (*path, index), NOT_SECRET, found)
                elif type(child) is str and _may_hold_password(child):
                    _leaf(child, (*path, index), NOT_SECRET, found)
        return
    cached = _PLANS.get(kind)
    if cached is not None and cached[0] is getattr(kind, "__pydantic_fields__", None):
        plan: tuple[tuple[str, int], ...] | None = cached[1]
    else:
        plan = _plan(kind)
    if plan is not None:
        for name, field_kind in plan:
            child = getattr(value, name)
            if type(child) not in _LEAVES:
                _collect_secrets(child, (*path, name), field_kind, found)
            elif field_kind or (type(child) is str and _may_hold_password(child)):
                _leaf(child, (*path, name), field_kind, found)
    elif isinstance(value, SecretStr | SecretBytes):
        found[path] = True
    elif isinstance(value, BaseModel):  # isinstance sees a class type() may not (a proxy's __class__)
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), (*path, name), secret_kind(name), found)
    elif named and isinstance(value, Mapping | list | tuple) and value:
        _secret_whole(value, path, named, found)
    elif isinstance(value, Mapping):
        for key, child in value.items():
            _collect_secrets(child, (*path, str(key)), secret_kind(str(key)), found)
    elif isinstance(value, list | tuple):
        for index, child in enumerate(value):
            _collect_secrets(child, (*path, index), named, found)
    elif named and value is not None and not isinstance(value, bool):
        found[path] = named == DIGESTED_SECRET
    elif isinstance(value, str) and holds_password(value):
        found[path] = False


def _secret_whole(value: Any, path: ConfigPath, named: int, found: dict[ConfigPath, bool]) -> None:
    """A container under a secret name (``"credentials": {"user", "pass"}``): everything in it is
    sealed and hidden as one value, its parts no less secret than a leaf would be.

    Under a name the hash rules know, it is digested whole. Under one only the sealing rules know, the
    hash must go on digesting exactly what it digested before those rules existed: so a digested secret
    inside keeps being one value of its own (and the container's other parts those the walk finds), and
    only a container with none is sealed whole."""
    if named == DIGESTED_SECRET:
        found[path] = True
        return
    inside: dict[ConfigPath, bool] = {}
    if isinstance(value, Mapping):
        for key, child in value.items():
            name = str(key)
            _collect_secrets(child, (*path, name), secret_kind(name), inside)
    else:
        for index, child in enumerate(value):
            _collect_secrets(child, (*path, index), NOT_SECRET, inside)
    if any(inside.values()):
        found.update(inside)
    else:
        found[path] = False


def get_path(body: Any, path: ConfigPath) -> tuple[bool, Any]:
    """Whether ``path`` is in ``body``, and the value there."""
    node = body
    for part in path:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def replace_path(body: Any, path: ConfigPath, new: Any) -> Any:
    """A copy of ``body`` with the value at ``path`` replaced by ``new`` (the parts on the way copied)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(body, Mapping):
        copy = dict(body)
        copy[str(head)] = replace_path(copy[str(head)], rest, new)
        return copy
    if isinstance(body, list):
        items = list(body)
        items[int(head)] = replace_path(items[int(head)], rest, new)
        return items
    return body


def redact(body: Mapping[str, Any], secret_paths: Iterable[ConfigPath]) -> dict[str, Any]:
    """A copy with each secret shown as ``**********``: those at ``secret_paths`` (the typed secrets a
    model declares), every still-sealed value, and every value the rules find in the body itself. The
    last is here, not left to callers: a body stored before a rule knew a name holds that value plain,
    and each display of a stored body had to remember to add them."""
    result: Any = _redact_sealed(body)
    for path in {*secret_paths, *find_secret_paths(result)}:
        present, value = get_path(result, path)
        if present and value is not None:
            result = replace_path(result, path, REDACTED)
    return dict(result)


def _redact_sealed(value: Any) -> Any:
    if is_sealed(value):
        return REDACTED
    if isinstance(value, Mapping):
        return {key: _redact_sealed(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_redact_sealed(child) for child in value]
    return value


def sealed_paths(body: Any, path: ConfigPath = (), *, digested_only: bool = False) -> list[ConfigPath]:
    """Where a stored body holds sealed values: the secret paths of a config read back from the log
    (``digested_only``: those its hash takes as digests, the others being hashed in the clear)."""
    if is_sealed(body):
        return [path] if not digested_only or SEALED_MARKER in body else []
    if isinstance(body, Mapping):
        return [
            found
            for key, child in body.items()
            for found in sealed_paths(child, (*path, str(key)), digested_only=digested_only)
        ]
    if isinstance(body, list):
        return [
            found
            for index, child in enumerate(body)
            for found in sealed_paths(child, (*path, index), digested_only=digested_only)
        ]
    return []


def is_sealed(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in _SEAL_MARKERS


class SecretCipher:
    """Fernet encryption of secret values; several keys allow rotation (the first one encrypts)."""

    def __init__(self, keys: Iterable[str | bytes]) -> None:
        # cryptography is loaded by the first cipher, not by importing this module: a log without
        # secrets (and ``confledger verify`` on one) never pays for it.
        from cryptography.fernet import Fernet, InvalidToken, MultiFernet

        self._refused = (InvalidToken, ValueError)
        fernets = []
        materials: list[bytes] = []
        given = list(keys)
        for number, key in enumerate(given, start=1):
            try:
                fernets.append(Fernet(key))
                materials.append(base64.urlsafe_b64decode(key))
            except (ValueError, TypeError) as exc:
                # In a rotated list, which one: the operator must not drop the key that still works.
                which = f"key {number} of {len(given)}" if len(given) > 1 else "encryption key"
                raise SecretKeyError(
                    f"{which} is not a valid Fernet key (32 url-safe base64 bytes; `confledger keygen` makes one)"
                ) from exc
        if not fernets:
            raise SecretKeyError("no encryption key given")
        self._fernet = MultiFernet(fernets)
        self._materials = tuple(materials)

    def key_materials(self) -> tuple[bytes, ...]:
        """The raw bytes of each key, newest first: what the integrity keys are derived from
        (``store.integrity``), never shown or stored."""
        return self._materials

    @staticmethod
    def generate_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode("ascii")

    @classmethod
    def from_env_value(cls, value: str) -> SecretCipher:
        """``CONFLEDGER_ENCRYPTION_KEY``: one key, or several separated by commas (newest first)."""
        try:
            return cls._from_key_list(value)
        except SecretKeyError as exc:
            # Said of the variable: a bare "not a valid Fernet key" left the operator guessing which
            # of the settings and files holding keys to fix.
            raise SecretKeyError(f"CONFLEDGER_ENCRYPTION_KEY: {exc}") from exc

    @classmethod
    def _from_key_list(cls, value: str) -> SecretCipher:
        return cls([part.strip() for part in value.split(",") if part.strip()])

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool) -> SecretCipher:
        """Read (or create with mode 0600) a key file; used for single-host SQLite logs."""
        if not path.exists():
            if not create:
                raise SecretKeyError(f"encryption key file {path} does not exist")
            _create_key_file(path, cls.generate_key())
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretKeyError(f"cannot read encryption key file {path}: {type(exc).__name__}") from exc
        try:
            return cls._from_key_list(text)
        except SecretKeyError as exc:
            # Said of the file, not of CONFLEDGER_ENCRYPTION_KEY: the operator must know which to fix.
            raise SecretKeyError(f"encryption key file {path}: {exc}") from exc

    def encrypt(self, value: Any) -> str:
        return self._fernet.encrypt(canonical_json(value).encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> Any:
        try:
            plain = self._fernet.decrypt(token.encode("ascii"))
        except self._refused as exc:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the configured key(s): the key was changed or lost"
            ) from exc
        return json.loads(plain)


def _create_key_file(path: Path, key: str) -> None:
    """Put a new key file at ``path`` whole and on disk, unless another process put one there first.

    Written aside, flushed to disk, then linked into place: ``link`` fails if the name exists, so of two
    first starts at one moment exactly one key wins and the other reads it (an ``O_EXCL`` create in
    place let the loser read the winner's file before a byte was in it). The key reaches the disk
    before its name does, and the name before the log seals anything with it: a power cut must not
    leave sealed secrets and an empty key file.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            return  # another process's key is in place: it is the one to use
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise SecretKeyError(f"cannot create encryption key file {path}: {type(exc).__name__}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def seal(
    body: Mapping[str, Any],
    secret_paths: Iterable[ConfigPath],
    cipher: SecretCipher | None,
    *,
    undigested: Iterable[ConfigPath] = (),
) -> dict[str, Any]:
    """Replace each secret value with ``{"$confledger_sealed": token}``; refuses to store secrets plain.

    ``undigested``: those of ``secret_paths`` the config hash takes in the clear. They are sealed under
    ``$confledger_sealed_undigested``, so whoever re-hashes the body knows them; with no key they stay
    plain, as every body held them before the sealing rules found them, rather than being refused."""
    in_clear = set(undigested)
    result: Any = dict(body)
    for path in sorted(secret_paths, key=lambda p: tuple(str(part) for part in p)):
        present, value = get_path(result, path)
        if not present or value is None or is_sealed(value):
            continue
        if path in in_clear:
            if cipher is not None:
                result = replace_path(result, path, {SEALED_UNDIGESTED_MARKER: cipher.encrypt(value)})
            continue
        if cipher is None:
            raise SecretKeyError(
                f"config has a secret at {dotted(path)} but no encryption key is configured "
                "(set CONFLEDGER_ENCRYPTION_KEY)"
            )
        result = replace_path(result, path, {SEALED_MARKER: cipher.encrypt(value)})
    return dict(result)


def digest_secrets(
    body: Mapping[str, Any], secret_paths: Iterable[ConfigPath], digest: Callable[[Any], str]
) -> dict[str, Any]:
    """A copy with each secret value replaced by ``{"$confledger_secret_digest": digest(value)}``.

    The same values as ``seal`` takes (present, not None), so a body's hash covers exactly the secrets
    its stored form seals.
    """
    result: Any = dict(body)
    for path in secret_paths:
        present, value = get_path(result, path)
        if present and value is not None:
            result = replace_path(result, path, {SECRET_DIGEST_MARKER: digest(value)})
    return dict(result)


def unseal(body: Any, cipher: SecretCipher | None) -> Any:
    """The plain body: every sealed value decrypted."""
    if is_sealed(body):
        if cipher is None:
            raise SecretKeyError(
                "the log holds encrypted secrets but no encryption key is configured "
                "(set CONFLEDGER_ENCRYPTION_KEY to the key the log was written with)"
            )
        return cipher.decrypt(str(next(iter(body.values()))))
    if isinstance(body, Mapping):
        return {key: unseal(child, cipher) for key, child in body.items()}
    if isinstance(body, list):
        return [unseal(child, cipher) for child in body]
    return body
