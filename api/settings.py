"""Settings from ``CONFLEDGER_*`` environment variables (pydantic-settings); each is also a CLI option."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from store import DEFAULT_DATABASE_URL

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONFLEDGER_", extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, description="sqlite:///path or postgresql+psycopg://…")
    instance_id: str | None = Field(None, description="name of this process in the log (default host:pid)")
    sqlite_synchronous: str = Field("FULL", description="SQLite synchronous pragma: FULL survives power loss")
