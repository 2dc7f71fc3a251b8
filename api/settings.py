"""Settings from ``CONFLEDGER_*`` environment variables (pydantic-settings); each is also a CLI option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

__all__ = ["MIN_TOKEN_LENGTH", "Settings", "sqlite_path"]

MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Everything ``confledger serve`` and the lifecycle read from the environment."""

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
    instance_id: str | None = None
    backup_count: int = Field(5, ge=1, le=1000)
    rollback_threshold: float = Field(0.5, ge=0.0, le=1.0)
    automatic_rollback: bool = True
    sqlite_synchronous: str = Field("FULL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    signal_handler: bool = True
    metrics: bool = True
    log_format: str = Field("text", pattern="^(text|json)$")
    log_level: str = "INFO"

    @field_validator("source_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            import os

            return [Path(part) for part in value.split(os.pathsep) if part.strip()]
        return value


def sqlite_path(database_url: str) -> Path | None:
    """The file behind an SQLite URL (None for PostgreSQL or in-memory)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    database = url.database
    if database.startswith("file:"):
        database = database[len("file:") :]
    return Path(database)
