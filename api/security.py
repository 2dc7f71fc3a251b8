"""Bearer tokens: an admin token for everything, a read token for GET; compared in constant time."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from confledger.api.settings import MIN_TOKEN_LENGTH
from confledger.store.database import sqlite_path
from confledger.store.errors import TokenError

__all__ = [
    "Role",
    "TokenError",
    "Tokens",
    "create_private_database_file",
    "load_or_create_token_file",
    "warn_if_readable_by_others",
]

logger = logging.getLogger(__name__)


class Role(StrEnum):
    ADMIN = "admin"
    READ = "read"


def _check(name: str, value: str | None) -> str | None:
    """The token as clients can send it, or why it cannot be one."""
    if value is None:
        return None
    # A token read from a file or a Kubernetes secret often ends in a newline, which no HTTP header can
    # carry (and the CLI strips): kept, it made a service that refused every request.
    value = value.strip()
    if not all(" " <= character <= "~" for character in value):
        raise TokenError(
            f"{name} holds a character an HTTP header cannot carry as sent (a control or non-ASCII "
            "character); use a token of printable ASCII, as `openssl rand -hex 32` makes"
        )
    if len(value) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{name} is shorter than {MIN_TOKEN_LENGTH} characters; use a longer random token")
    return value


@dataclass(frozen=True)
class Tokens:
    """The configured tokens. ``repr`` never shows them."""

    admin: str
    read: str | None = None

    def __post_init__(self) -> None:
        # Frozen: the checked (stripped) tokens replace the given ones once, here.
        object.__setattr__(self, "admin", _check("CONFLEDGER_ADMIN_TOKEN", self.admin))
        object.__setattr__(self, "read", _check("CONFLEDGER_READ_TOKEN", self.read))
        if self.read is not None and hmac.compare_digest(self.read.encode(), self.admin.encode()):
            # Every holder of the read token (dashboards, sidecars) could reload and roll back.
            raise TokenError(
                "CONFLEDGER_READ_TOKEN is the admin token: whoever holds it could change the config; "
                "give readers a token of their own"
            )

    def __repr__(self) -> str:
        return f"Tokens(admin=<{len(self.admin)} chars>, read={'<set>' if self.read else None})"

    def role_of(self, presented: str) -> Role | None:
        # compare_digest on equal-length bytes takes the same time whether the first or last byte
        # differs, so response timing does not leak how much of a guessed token was right. Both
        # tokens are always compared, so timing does not reveal which one exists either.
        given = presented.encode("utf-8")
        is_admin = hmac.compare_digest(given, self.admin.encode("utf-8"))
        is_read = self.read is not None and hmac.compare_digest(given, self.read.encode("utf-8"))
        if is_admin:
            return Role.ADMIN
        if is_read:
            return Role.READ
        return None


def warn_if_readable_by_others(path: Path, what: str) -> None:
    """A warning when a file that holds a secret may be read by other users (it was made 0600)."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            logger.warning("the %s %s may be read by other users; chmod 600 it", what, path)


def load_or_create_token_file(path: Path) -> tuple[str, bool]:
    """The admin token kept in ``path`` (mode 0600), generating one if the file is missing.

    Returns the token and whether it was just created (so ``serve`` prints it once, and only then).
    """
    try:
        if path.exists():
            warn_if_readable_by_others(path, "admin token file")
            token = path.read_text(encoding="utf-8").strip()
            return _check(f"token file {path}", token) or "", False
        token = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TokenError(
            f"cannot use the admin token file {path} ({reason}): fix the directory, or set CONFLEDGER_ADMIN_TOKEN"
        ) from None
    return token, True


def create_private_database_file(database_url: str, *, warn_if_shared: bool = True) -> Path | None:
    """Create an SQLite log's file empty with mode 0600 before SQLite first opens it (which would
    create it 0644 under the usual umask); SQLite then creates the ``-wal`` and ``-shm`` files with
    the database file's mode. An existing file keeps its mode: a warning says if others may read it
    (unless not ``warn_if_shared``: a one-off command leaves that to the service).
    Returns the file (None for PostgreSQL or in-memory)."""
    path = sqlite_path(database_url)
    if path is None:
        return None
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if warn_if_shared:
            warn_if_readable_by_others(path, "event log")
        return path
    except FileNotFoundError:
        return path  # no such directory: SQLite's own error says so when the log is opened
    os.close(descriptor)
    return path
