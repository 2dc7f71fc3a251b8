"""What ``confledger serve`` checks before it serves: every start-up mistake a user can make is one line.

A missing or unwritable directory, a bad database URL, a database that cannot be reached, a missing or
wrong key, a port already in use, a model that does not import: each is found here, before uvicorn starts
and before anything is appended to the log, and reported as a ``ConfledgerError`` whose message says what
is wrong and what to do. The port is bound first, so a second ``serve`` on a busy port touches nothing.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from confledger.store.database import normalize_url, sqlite_path
from confledger.store.errors import ConfledgerError, InvalidDatabaseURL, ReadOnlyStore, SetupError

if TYPE_CHECKING:
    from confledger.api.settings import Settings

__all__ = [
    "bind_listening_socket",
    "check_anchor_location",
    "check_config_directory",
    "check_database_location",
    "check_log",
    "listening_url",
    "one_line",
]


# The config file names a directory may hold (`confledger init` writes config.yaml).
_CONFIG_NAMES = ("config.yaml", "config.yml", "config.json", "config.toml", ".env")


def one_line(exc: BaseException) -> str:
    """An error's first line: what ``serve`` prints instead of a traceback."""
    text = str(exc).strip()
    if not text and isinstance(exc, ConfledgerError):
        return exc.code
    return text.splitlines()[0] if text else type(exc).__name__


def check_config_directory(config: Path) -> None:
    if config.is_dir():
        # Left to start-up, a directory was read as a config of no format, after the log, key and token
        # files had been made beside it, in the directory above.
        inside = next((config / name for name in _CONFIG_NAMES if (config / name).is_file()), None)
        hint = f": did you mean {inside}?" if inside is not None else ""
        raise SetupError(
            f"--config names the directory {config}, not a config file{hint}", code="config_is_a_directory"
        )
    directory = config.absolute().parent
    if not directory.is_dir():
        raise SetupError(
            f"the config directory {directory} does not exist: create it, or run `confledger init {directory}`",
            code="config_directory_missing",
        )


def check_database_location(database_url: str) -> None:
    """The URL parses, and an SQLite file can be created and written where it is named."""
    try:
        normalize_url(database_url)
    except InvalidDatabaseURL:
        raise
    except ValueError as exc:  # SQLAlchemy's URL parser raises ValueError for a bad port and the like
        raise InvalidDatabaseURL(
            f"cannot parse the database URL ({one_line(exc)}): use sqlite:///path/to/file.db or "
            "postgresql+psycopg://user@host:port/dbname"
        ) from None
    path = sqlite_path(database_url)
    if path is None:
        return
    directory = path.absolute().parent
    problem = _unwritable(path)
    if problem == "no directory":
        raise SetupError(
            f"the database directory {directory} does not exist: create it or pass another --database",
            code="database_directory_missing",
        )
    if problem == "file":
        raise ReadOnlyStore(
            f"the database {path} is not writable by this user: fix its permissions or pass another --database"
        )
    if problem == "directory":
        raise ReadOnlyStore(
            f"cannot create the database in {directory}: the directory is not writable by this user; "
            "fix its permissions or pass another --database"
        )


def check_anchor_location(anchor_file: Path | None) -> None:
    """The operator's anchor file can be written where it is named.

    The log would go on without it (a warning at each append), but then nothing outside the database
    keeps the log's end, which is what the operator named the file for."""
    if anchor_file is None:
        return
    directory = anchor_file.absolute().parent
    named = f"the anchor file {anchor_file} (--anchor-file or CONFLEDGER_ANCHOR_FILE)"
    problem = _unwritable(anchor_file)
    if problem == "no directory":
        raise SetupError(
            f"the anchor file's directory {directory} does not exist: create it, or fix --anchor-file "
            "or CONFLEDGER_ANCHOR_FILE",
            code="anchor_directory_missing",
        )
    if problem == "file":
        raise SetupError(
            f"{named} is not writable by this user: fix its permissions", code="anchor_not_writable"
        )
    if problem == "directory":
        raise SetupError(
            f"cannot create {named}: its directory {directory} is not writable by this user",
            code="anchor_not_writable",
        )


def _unwritable(path: Path) -> Literal["no directory", "file", "directory"] | None:
    """Why this user could not keep writing the file at ``path``: its directory is missing, the file is
    there but not readable and writable, or it is not there and its directory refuses a new one."""
    directory = path.absolute().parent
    if not directory.is_dir():
        return "no directory"
    if path.exists():
        return None if os.access(path, os.R_OK | os.W_OK) else "file"
    return None if os.access(directory, os.W_OK | os.X_OK) else "directory"


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else is touched (uvicorn serves on it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SetupError(
            f"cannot listen on {host}: {exc.strerror}; pass another --host", code="bad_host"
        ) from None
    family, kind, protocol, _, address = infos[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SetupError(
                f"port {port} on {host} is already in use: stop what holds it, or pass --port",
                code="port_in_use",
            ) from None
        raise SetupError(
            f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}", code="cannot_listen"
        ) from None
    sock.set_inheritable(True)
    return sock


def listening_url(sock: socket.socket) -> str:
    """The base URL a client reaches the bound socket at (an IPv6 address in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_log(settings: Settings, database_url: str) -> None:
    """Open the log as start-up will (reachable, writable, schema, key), then close it.

    Opening migrates a new database's schema; it appends nothing.
    """
    from confledger.api.security import create_private_database_file
    from confledger.api.settings import resolve_cipher, signing_key_of
    from confledger.store.log import EventLog

    # This is the first open of a new log: its file (and the -wal and -shm SQLite makes with its mode)
    # must be 0600 from the start, not 0644 under the usual umask.
    database = sqlite_path(database_url)
    if database is not None and not database.exists():
        create_private_database_file(database_url)
    log = EventLog(
        database_url,
        instance_id=settings.instance_id,
        sqlite_synchronous=settings.sqlite_synchronous,  # type: ignore[arg-type]
        signing_key=signing_key_of(settings),
    )
    try:
        encryption_key = settings.encryption_key.get_secret_value() if settings.encryption_key else None
        log.cipher = resolve_cipher(encryption_key, database_url, log)
        # A key other than the one the log's links were made with: refused here, naming the setting.
        log.integrity()
        applied = log.last_of_type("config.applied")
        if applied is not None:
            # The config start-up restores, read as start-up reads it: a key that cannot open its
            # secrets is found here rather than after the instance has announced itself in the log.
            log.get_config(applied.payload.hash, reveal=True)  # type: ignore[attr-defined]
    finally:
        log.close()


class OneLineStartupFailure:
    """ASGI wrapper: a start-up failure the checks above could not foresee is reported as one line.

    Starlette reports a failed lifespan start with the whole traceback as its message, which uvicorn
    prints; an invalid first config or a database lost between the check and the start would show 60
    lines. The wrapper keeps the exception's own first line instead.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.failure: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short(message: Any) -> None:
            if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
                self.failure = _last_exception_line(message.get("message", ""))
                message = {**message, "message": self.failure}
            await send(message)

        await self.app(scope, receive, send_short)


def _last_exception_line(traceback_text: str) -> str:
    """``package.module.SomeError: what happened`` -> ``what happened (SomeError)``."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    if not lines:
        return "start-up failed"
    kind, _, message = lines[-1].partition(": ")
    return f"{message} ({kind.rsplit('.', 1)[-1]})" if message else kind
