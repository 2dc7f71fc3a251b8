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
    "REDACTED",
    "SEALED_MARKER",
    "SECRET_DIGEST_MARKER",
    "ConfigPath",
    "SecretCipher",
    "digest_secrets",
    "dotted",
    "find_secret_paths",
    "get_path",
    "is_sealed",
    "looks_secret",
    "redact",
    "replace_path",
    "seal",
    "sealed_paths",
    "unseal",
]

REDACTED = "**********"
SEALED_MARKER = "$confledger_sealed"
# What stands for a secret in the canonical form a version-2 config hash is taken over.
SECRET_DIGEST_MARKER = "$confledger_secret_digest"  # noqa: S105 - a marker, not a secret

ConfigPath = tuple[str | int, ...]

# Untyped configs have no SecretStr to go by, so names decide. Matching on whole name parts keeps
# "max_tokens" and "keyspace" out while catching "api_key", "dbPassword" and "FIRECRAWL_API_KEY".
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


# Every secret part above contains one of these, and every secret pair ends in "key": a name holding
# none of them cannot be secret, and most names of a config hold none. Answering those without the
# regular expressions keeps the cache for the rest, so a config of more distinct names than the cache
# holds (a feature-flag file of thousands) does not miss on every name of every reload.
_SECRET_HINTS = ("pass", "pwd", "secret", "token", "credential", "key")


def looks_secret(name: str) -> bool:
    lowered = name.lower()
    for hint in _SECRET_HINTS:
        if hint in lowered:
            return _looks_secret(name)
    return False


@functools.lru_cache(maxsize=4096)
def _looks_secret(name: str) -> bool:
    parts = _name_parts(name)
    if parts and parts[-1] in _DESCRIBING_SUFFIXES:
        return False
    if any(part in _SECRET_PARTS for part in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts))


def dotted(path: ConfigPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def find_secret_paths(config: Any) -> set[ConfigPath]:
    """Paths of secret values: ``SecretStr``/``SecretBytes`` fields of models, and secret-looking keys."""
    found: set[ConfigPath] = set()
    _collect_secrets(config, (), False, found)
    return found


# Exactly these types (no subclasses): a leaf of a config, secret only by the name it is held under.
_LEAVES = frozenset({str, int, float, bool, type(None)})
# Per model class: the fields mapping a plan was made from, and each field's name with looks_secret(name).
# A rebuilt model class gets a new fields mapping: the identity check on it sees that.
_PLANS: dict[type, tuple[object, tuple[tuple[str, bool], ...]]] = {}
# Model classes are few and long-lived; the bound only stops classes made on the fly piling up.
_MAX_PLANS = 512


def _plan(kind: type) -> tuple[tuple[str, bool], ...] | None:
    """The fields to walk on a model of class ``kind`` (made and kept); None when it is not a model."""
    if not issubclass(kind, BaseModel) or issubclass(kind, SecretStr | SecretBytes):
        return None
    fields = kind.model_fields
    plan = tuple((name, looks_secret(name)) for name in fields)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[kind] = (fields, plan)
    return plan


def _collect_secrets(value: Any, path: ConfigPath, named_secret: bool, found: set[ConfigPath]) -> None:
    # The exact types a validated config is mostly made of are tried first, by identity: an ABC
    # isinstance check per node cost more than the rest of the walk. Everything else takes the general
    # branches at the end, in the order that decides what a value is.
    kind = type(value)
    if kind in _LEAVES:
        if named_secret and value is not None and kind is not bool:
            found.add(path)
        return
    if kind is SecretStr or kind is SecretBytes:
        found.add(path)
        return
    if kind is dict or kind is list or kind is tuple:
        if named_secret and value:
            # Everything under a secret-named key of an untyped config ("credentials": {"user", "pass"})
            # is sealed and redacted as one value: its parts are no less secret than a leaf would be.
            found.add(path)
        elif kind is dict:
            for key, child in value.items():
                name = key if type(key) is str else str(key)
                if type(child) not in _LEAVES:
                    _collect_secrets(child, (*path, name), looks_secret(name), found)
                elif child is not None and type(child) is not bool and looks_secret(name):
                    found.add((*path, name))
        else:
            # Items of a list are secret only by what they are: a list under a secret name was taken whole.
            for index, child in enumerate(value):
                if type(child) not in _LEAVES:
                    _collect_secrets(child, (*path, index), False, found)
        return
    cached = _PLANS.get(kind)
    if cached is not None and cached[0] is getattr(kind, "__pydantic_fields__", None):
        plan: tuple[tuple[str, bool], ...] | None = cached[1]
    else:
        plan = _plan(kind)
    if plan is not None:
        for name, secret in plan:
            child = getattr(value, name)
            if type(child) not in _LEAVES:
                _collect_secrets(child, (*path, name), secret, found)
            elif secret and child is not None and type(child) is not bool:
                found.add((*path, name))
    elif isinstance(value, SecretStr | SecretBytes):
        found.add(path)
    elif isinstance(value, BaseModel):  # isinstance sees a class type() may not (a proxy's __class__)
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), (*path, name), looks_secret(name), found)
    elif named_secret and isinstance(value, Mapping | list | tuple) and value:
        found.add(path)
    elif isinstance(value, Mapping):
        for key, child in value.items():
            _collect_secrets(child, (*path, str(key)), looks_secret(str(key)), found)
    elif isinstance(value, list | tuple):
        for index, child in enumerate(value):
            _collect_secrets(child, (*path, index), named_secret, found)
    elif named_secret and value is not None and not isinstance(value, bool):
        found.add(path)


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
    """A copy with each secret (and each still-sealed value) shown as ``**********``."""
    result: Any = _redact_sealed(body)
    for path in secret_paths:
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


def sealed_paths(body: Any, path: ConfigPath = ()) -> list[ConfigPath]:
    """Where a stored body holds sealed values: the secret paths of a config read back from the log."""
    if is_sealed(body):
        return [path]
    if isinstance(body, Mapping):
        return [found for key, child in body.items() for found in sealed_paths(child, (*path, str(key)))]
    if isinstance(body, list):
        return [found for index, child in enumerate(body) for found in sealed_paths(child, (*path, index))]
    return []


def is_sealed(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and SEALED_MARKER in value


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
    body: Mapping[str, Any], secret_paths: Iterable[ConfigPath], cipher: SecretCipher | None
) -> dict[str, Any]:
    """Replace each secret value with ``{"$confledger_sealed": token}``; refuses to store secrets plain."""
    result: Any = dict(body)
    for path in sorted(secret_paths, key=lambda p: tuple(str(part) for part in p)):
        present, value = get_path(result, path)
        if not present or value is None or is_sealed(value):
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
        return cipher.decrypt(str(body[SEALED_MARKER]))
    if isinstance(body, Mapping):
        return {key: unseal(child, cipher) for key, child in body.items()}
    if isinstance(body, list):
        return [unseal(child, cipher) for child in body]
    return body
