"""Opening a log to read it and nothing else: what every read-only command starts with.

Kept apart from ``confledger.api.inspect`` (the projections, the API's response models) so that
``confledger verify``, which needs only the log, starts without loading them.
"""

from __future__ import annotations

from collections.abc import Callable

from confledger.api.settings import anchor_file_path, environment_settings, existing_cipher, signing_key_of
from confledger.store import migrate
from confledger.store.database import describe_url, normalize_url, sqlite_path
from confledger.store.errors import LogNotFound, SchemaError, SchemaTooNew, SecretKeyError
from confledger.store.log import EventLog
from confledger.store.secrets import SecretCipher

__all__ = ["CLI_INSTANCE_ID", "diff_cipher", "open_readonly_log"]

CLI_INSTANCE_ID = "confledger-cli"


def open_readonly_log(url: str) -> EventLog:
    """Open an existing log without migrating it; refuse a database that does not hold one yet.

    An SQLite file that does not exist is refused before anything connects (connecting would create it).
    """
    parsed = normalize_url(url)
    rendered = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(rendered)
        if path is None:
            raise LogNotFound("an in-memory SQLite database never holds a log to inspect; name a file")
        if not path.exists():
            raise LogNotFound(
                f"no confledger log at {path}: the database does not exist (check --database or "
                "CONFLEDGER_DATABASE_URL; `confledger serve` creates it)"
            )
        if path.is_dir():
            raise LogNotFound(f"{path} is a directory, not an SQLite database")
    log = EventLog(parsed, instance_id=CLI_INSTANCE_ID, migrate_on_open=False)
    try:
        _check_schema(log)
        _use_existing_keys(log, rendered)
    except BaseException:
        log.close()
        raise
    return log


def _use_existing_keys(log: EventLog, url: str) -> None:
    """The keys ``verify`` and ``show`` need, if this machine has them (never made here): a keyed log's
    links, bodies and anchor are checked with them; without them a keyed log's check says so."""
    settings = environment_settings()
    log.signing_key = signing_key_of(settings)
    log.cipher = existing_cipher(settings, url)
    log.anchor_path = anchor_file_path(settings, url, settings.config)


def _check_schema(log: EventLog) -> None:
    revision = migrate.current_revision(log.engine)
    where = describe_url(log.url)
    if revision is None:
        raise LogNotFound(
            f"{where} holds no confledger log (no schema): check --database or CONFLEDGER_DATABASE_URL"
        )
    head = migrate.head_revision()
    if revision == head:
        return
    if not migrate.is_known_revision(revision):
        raise SchemaTooNew(
            f"{where} is at schema revision {revision!r}, newer than this confledger knows ({head!r}): "
            "inspect it with the release that wrote it"
        )
    raise SchemaError(
        f"{where} is at schema revision {revision!r}, older than this confledger's {head!r}: "
        "run `confledger db upgrade` (or start the service, which migrates) before inspecting it"
    )


def diff_cipher(
    url: str, encryption_key: str | None, *, warn: Callable[[str], None] | None = None
) -> SecretCipher | None:
    """The key to compare secret values with: the one given, else the key file beside an SQLite log.

    Returns None when there is none (secrets are then reported as not comparable). A key file that exists
    but cannot be read is a warning, not an error: the diff is still useful without the secrets.
    """
    if encryption_key:
        return SecretCipher.from_env_value(encryption_key)
    database = sqlite_path(normalize_url(url).render_as_string(hide_password=False))
    if database is None:
        return None
    key_file = database.with_name(database.name + ".key")
    if not key_file.exists():
        return None
    try:
        return SecretCipher.from_key_file(key_file, create=False)
    except SecretKeyError as exc:
        if warn is not None:
            warn(f"{exc}; secrets are compared as sealed values")
        return None
