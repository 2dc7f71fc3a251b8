"""Settings from ``CONFLEDGER_*`` environment variables (pydantic-settings); each is also a CLI option.

Every default of the reload path is written here once: ``ConfigReloader`` and
``setup_configuration_lifecycle`` take ``None`` for "from the settings", and the store's constructors
take the values they are handed. ``ConfigReloader`` in plain Python reads the same variables as
``confledger serve`` (the database, the encryption key, the instance id, the thresholds and timeouts).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from confledger.store import EventLog, SecretCipher, SecretKeyError
from confledger.store.canonical import sha256_hex
from confledger.store.database import normalize_url, sqlite_path
from confledger.store.errors import SetupError
from confledger.store.outcome import DEFAULT_LISTED
from confledger.store.sources.limits import DEFAULT_MAX_BYTES

__all__ = [
    "MIN_TOKEN_LENGTH",
    "Settings",
    "anchor_file_path",
    "default_database_url",
    "environment_settings",
    "existing_cipher",
    "misspelt_variables",
    "open_log",
    "resolve_cipher",
    "settings_error_message",
    "settings_with",
    "signing_key_of",
    "sqlite_path",
    "token_file_path",
]

MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Everything ``confledger serve``, the lifecycle and ``ConfigReloader`` read from the environment."""

    model_config = SettingsConfigDict(env_prefix="CONFLEDGER_", extra="ignore")

    database_url: str | None = Field(
        None,
        description="sqlite:///path or postgresql+psycopg://…; default: an SQLite file next to the config",
    )
    config: Path | None = Field(None, description="the config source file (json, yaml, toml or .env)")
    model: str | None = Field(None, description="the config model as module:Class (a pydantic BaseModel)")
    app_dir: Path = Field(Path("."), description="directory put on the import path for --model")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    watch: bool = Field(False, description="watch the config file from start-up")
    poll_interval: float = Field(1.0, ge=0.1, le=60.0)
    force_polling: bool = Field(False, description="poll the file instead of using inotify")
    admin_token: SecretStr | None = None
    read_token: SecretStr | None = None
    source_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="extra directories a client's config_source may name (os.pathsep-separated)",
    )
    encryption_key: SecretStr | None = Field(
        None, description="Fernet key(s) for secrets at rest, comma-separated"
    )
    signing_key: SecretStr | None = Field(
        None,
        description="key the log's links and MACs are made with (32+ characters); default: derived from "
        "the encryption key",
    )
    anchor_file: Path | None = Field(
        None,
        description="file outside the database keeping the log's anchor (a position and its MAC); default: "
        "beside an SQLite database, beside the config for PostgreSQL",
    )
    instance_id: str | None = None
    backup_count: int = Field(5, ge=1, le=1000, description="distinct applied configs kept as backups")
    rollback_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="roll back when fewer than this share of services accept"
    )
    automatic_rollback: bool = True
    max_source_bytes: int = Field(
        DEFAULT_MAX_BYTES, ge=1, description="the largest config source read, in bytes"
    )
    callback_timeout: float = Field(30.0, gt=0, description="seconds a service callback may take")
    validator_timeout: float = Field(5.0, gt=0, description="seconds a custom validator may take")
    worker_threads: int = Field(
        8, ge=1, le=256, description="worker threads for sync validators and callbacks running on time"
    )
    history_window: int = Field(500, ge=1, description="recent operations history serves from memory")
    max_recorded_items: int = Field(
        DEFAULT_LISTED,
        ge=1,
        le=10_000,
        description="validation errors, warnings and changed paths recorded (and answered) per operation, "
        "each list; the rest are counted",
    )
    notify_on_start: bool = Field(
        True,
        description="hand each service callback the config restored from the log when the service restarts",
    )
    sqlite_synchronous: str = Field(
        "FULL",
        pattern="^(OFF|NORMAL|FULL|EXTRA)$",
        description="FULL or EXTRA (any case); NORMAL and OFF may lose the newest operations to a power cut",
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        le=1000,
        description="PostgreSQL: connections the log's pool keeps open between bursts of reads, the writer's "
        "and the fleet lock's among them (LISTEN takes one more)",
    )
    database_max_overflow: int = Field(
        10,
        ge=0,
        le=1000,
        description="PostgreSQL: connections the log's pool opens beyond database_pool_size in a burst of "
        "reads, each closed once returned",
    )
    signal_handler: bool = True
    gc_freeze: bool = Field(
        True,
        description="once started, leave the objects made so far out of the garbage collector's full "
        "passes (gc.freeze): such a pass over them paused the whole service for some 50 ms",
    )
    metrics: bool = True
    log_format: str = Field("text", pattern="^(text|json)$")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="the service's and uvicorn's log level (any case)"
    )
    # What one HTTP client may cost the service. A reload or rollback body is a few hundred bytes.
    max_request_bytes: int = Field(
        65_536, ge=1_024, description="the largest request body the config API reads; larger is 413"
    )
    request_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds a client has to send a whole request, headers and body"
    )
    keep_alive_timeout: int = Field(
        5, ge=1, le=300, description="seconds an idle keep-alive connection stays open (serve)"
    )
    max_header_bytes: int = Field(
        16_384,
        ge=4_096,
        le=1_048_576,
        description="the largest request line and headers; larger is 431 (serve)",
    )
    shutdown_timeout: int = Field(
        10, ge=1, le=300, description="seconds serve waits for open requests when it stops"
    )
    # A fleet on one log (several workers or hosts): how instances take turns and follow each other.
    fleet_lock_wait: float = Field(
        5.0,
        gt=0,
        le=300,
        description="seconds an operation waits for the fleet's operation lock (held by another instance's "
        "operation) before answering 409 with the holder's id",
    )
    fleet_rollback_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="roll the fleet back when fewer than this share of its live instances applied a change "
        "this instance decided (every service took it) within fleet_answer_wait; unset: off",
    )
    fleet_answer_wait: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="seconds the fleet threshold waits for the instances' answers to a change; one that has "
        "not answered by then counts as not applied",
    )
    follow: bool = Field(
        True, description="follow the log: apply configs other instances decided (a fleet on one log)"
    )
    follow_poll_interval: float = Field(
        0.5,
        ge=0.001,
        le=60.0,
        description="seconds between looks at the log's head when no doorbell rings (SQLite always; "
        "PostgreSQL's LISTEN/NOTIFY wakes a follower at once and this is its fallback)",
    )
    heartbeat_interval: float = Field(
        30.0, ge=0.1, le=3600.0, description="seconds between heartbeats; not seen for 3 of them = gone"
    )
    fleet_gone_shown_for: float = Field(
        86400.0,
        ge=0.0,
        description="seconds /fleet and confledger fleet keep listing an instance after it went (stopped or "
        "silent); older ones are only counted (gone_hidden), and ?all=true lists them",
    )
    docs: bool = Field(
        True, description="serve /docs (Swagger UI, assets served locally) and /openapi.json (serve)"
    )
    watch_queue_size: int = Field(
        100,
        ge=1,
        le=100_000,
        description="changes queued per /watch client; a client further behind is dropped (it reconnects "
        "with Last-Event-ID and replays from the log)",
    )
    watch_max_streams: int = Field(
        100,
        ge=1,
        le=100_000,
        description="open /watch streams per instance at most; one more is answered 503 "
        "(watch_streams_full) until one closes",
    )
    watch_ping_interval: float = Field(
        15.0, gt=0, le=3600, description="seconds between keep-alive comments on an idle /watch stream"
    )
    watch_send_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds one /watch write may wait on a client before it is dropped"
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="worker processes of `confledger serve` sharing its socket, each an instance",
    )

    @model_validator(mode="after")
    def _judged_fleets_follow(self) -> Settings:
        # The judge reads the others' answers from the fleet view its follower folds: without following,
        # none would ever arrive and every change would be rolled back at the wait's end.
        if self.fleet_rollback_threshold is not None and not self.follow:
            raise ValueError("fleet_rollback_threshold needs follow on (the answers come by following)")
        return self

    @model_validator(mode="after")
    def _pool_leaves_reads_a_connection(self) -> Settings:
        # The writer and the fleet lock each hold one of the pool's connections for the instance's life:
        # with no third, every read would wait for the pool's timeout and fail.
        if self.database_pool_size + self.database_max_overflow < 3:
            raise ValueError(
                "database_pool_size + database_max_overflow must be at least 3: the log's writer and the "
                "fleet lock hold two connections, and reads need one more"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper_synchronous(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value  # as SQLite's own PRAGMA takes it

    @field_validator("source_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part) for part in value.split(os.pathsep) if part.strip()]
        return value


def settings_error_message(exc: ValidationError) -> str:
    """A settings ValidationError as one line naming the setting (never the value: it may be a key)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    if not first["loc"]:  # a rule over two settings names them itself
        return f"invalid settings: {first['msg'].removeprefix('Value error, ')}"
    return f"invalid setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def environment_settings() -> Settings:
    """The settings a command that only reads takes from the environment (its keys, the anchor's place).

    The host's environment may carry serve's variables too: one of them out of range is a SetupError
    naming it, a line on stderr, rather than a ValidationError's traceback out of every read command."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SetupError(settings_error_message(exc)) from None


# CONFLEDGER_* variables that are not settings but are read all the same: the CLI's service URL, the
# crash points of the reliability tests, the test suite's own.
_READ_ELSEWHERE = frozenset({"CONFLEDGER_URL", "CONFLEDGER_FAILPOINT"})


def misspelt_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``CONFLEDGER_*`` variable that nothing reads, with the setting it may have meant.

    pydantic-settings ignores a variable it does not know, so a typo (``CONFLEDGER_ADMIN_TOKN``) would
    leave the setting at its default without a word: a generated token instead of the one exported.
    """
    known = {f"CONFLEDGER_{name.upper()}" for name in Settings.model_fields} | _READ_ELSEWHERE
    warnings = []
    for name in sorted(environ):
        if not name.startswith("CONFLEDGER_") or name in known or name.startswith("CONFLEDGER_TEST_"):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a confledger setting and is ignored{hint}")
    return warnings


def settings_with(settings: Settings | None, **overrides: Any) -> Settings:
    """``settings`` (default: read from the environment) with the overrides that are not None, validated."""
    base = settings if settings is not None else Settings()
    given = {name: value for name, value in overrides.items() if value is not None}
    if not given:
        return base
    return Settings(**{**base.model_dump(), **given})


def absolute(path: str | Path) -> Path:
    """An absolute path that keeps symlinks as named.

    A config file is often a symlink that deploys swap (a Kubernetes ConfigMap's ``..data`` link): the
    reloader must keep reading and watching the link, not the file it pointed to at start-up, and the
    log, key and token files beside it must not move to the target's directory when the link moves.
    """
    return Path(os.path.abspath(path))


def default_database_url(config_source: str | Path | None) -> str:
    """With no database named, the log is an SQLite file next to the config (or in the working directory)."""
    if config_source is None:
        return "sqlite:///./confledger.db"
    directory = absolute(config_source).parent
    return f"sqlite:///{directory / 'confledger.db'}"


def token_file_path(database_url: str, config_source: str | Path | None) -> Path:
    database = sqlite_path(database_url)
    if database is not None:
        return database.with_name(database.name + ".admin-token")
    base = absolute(config_source).parent if config_source is not None else Path.cwd()
    return base / "confledger.admin-token"


def anchor_file_path(settings: Settings, database_url: str, config_source: str | Path | None) -> Path | None:
    """Where the anchor lives: the operator's file, else beside an SQLite database (``<db>.anchor``), else
    (PostgreSQL) beside the config, named after the database it anchors (several logs may share a
    directory); None for PostgreSQL with neither, so nothing lands in whatever the working directory is."""
    if settings.anchor_file is not None:
        return absolute(settings.anchor_file)
    database = sqlite_path(database_url)
    if database is not None:
        return database.with_name(database.name + ".anchor")
    if config_source is None:
        return None
    where = normalize_url(database_url).render_as_string(hide_password=True)
    return absolute(config_source).parent / f"confledger-{sha256_hex(where)[:12]}.anchor"


def signing_key_of(settings: Settings) -> str | None:
    """The signing key without surrounding whitespace, as the tokens and the encryption key are taken: a
    Kubernetes secret made from a file ends in a newline, and an instance given the key that way was
    refused as holding another key than the instances given it without."""
    if settings.signing_key is None:
        return None
    return settings.signing_key.get_secret_value().strip() or None


def existing_cipher(settings: Settings, database_url: str) -> SecretCipher | None:
    """The key a read-only command may use: the configured one or an SQLite log's key file; never made."""
    if settings.encryption_key:
        return SecretCipher.from_env_value(settings.encryption_key.get_secret_value())
    database = sqlite_path(database_url)
    if database is None:
        return None
    key_file = database.with_name(database.name + ".key")
    return SecretCipher.from_key_file(key_file, create=False) if key_file.exists() else None


def resolve_cipher(encryption_key: str | None, database_url: str, log: EventLog) -> SecretCipher:
    """The key for secrets at rest: the configured one, or a 0600 key file beside an SQLite log."""
    if encryption_key:
        return SecretCipher.from_env_value(encryption_key)
    database = sqlite_path(database_url)
    if database is None:
        raise SecretKeyError(
            "a PostgreSQL log is shared by every instance: set CONFLEDGER_ENCRYPTION_KEY "
            "(the same Fernet key on each) so secrets can be stored encrypted"
        )
    key_file = database.with_name(database.name + ".key")
    if not key_file.exists() and log.config_count() > 0:
        raise SecretKeyError(
            f"the log at {database} holds configs but its key file {key_file} is missing: restore the key "
            "file or set CONFLEDGER_ENCRYPTION_KEY; without it stored secrets cannot be restored"
        )
    if key_file.exists():
        from confledger.api.security import warn_if_readable_by_others

        warn_if_readable_by_others(key_file, "encryption key file")
    return SecretCipher.from_key_file(key_file, create=True)


def open_log(
    settings: Settings,
    database_url: str,
    config_source: str | Path | None,
    *,
    encryption_key: str | None,
    cipher: SecretCipher | None = None,
) -> EventLog:
    """The log a serving instance opens, as ``settings`` say (SQLite's synchronous level, the signing key,
    the anchor file, PostgreSQL's pool), with ``cipher`` or else the key ``resolve_cipher`` finds for
    ``encryption_key``; closed again if no key can be had."""
    log = EventLog(
        database_url,
        instance_id=settings.instance_id,
        cipher=cipher,
        sqlite_synchronous=settings.sqlite_synchronous,  # type: ignore[arg-type]
        signing_key=signing_key_of(settings),
        anchor_path=anchor_file_path(settings, database_url, config_source),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    if cipher is None:
        try:
            log.cipher = resolve_cipher(encryption_key, database_url, log)
        except BaseException:
            log.close()
            raise
    return log
