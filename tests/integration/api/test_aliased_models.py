"""Config models whose fields have aliases: their secrets stay sealed and their config survives a restart.

The stored body is keyed by field names whatever the model's aliases (``serialize_by_alias`` included),
so the secret paths found on the model match it, and the model reads it back by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.store import SecretCipher
from tests.integration.api.service_harness import ADMIN_TOKEN, PREFIX, is_postgres, stored_rows_text

SECRET = "sk-aliased-0123456789-secret"


class AliasedEndpoint(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    api_secret: SecretStr = Field(alias="apiSecret")
    timeout_seconds: int = Field(5, alias="timeoutSeconds")


class SerializedByAlias(BaseModel):
    """A camelCase file whose dump would be camelCase too: the secret's alias says nothing secret."""

    model_config = ConfigDict(serialize_by_alias=True)

    openai: SecretStr = Field(alias="OPENAI")
    endpoint: AliasedEndpoint
    pool_size: int = Field(1, alias="poolSize")


class Aliased(BaseModel):
    """Aliases for reading the file only (pydantic's default): the dump is keyed by field names."""

    openai: SecretStr = Field(alias="OPENAI")
    pool_size: int = Field(1, alias="poolSize")


BODIES: dict[type[BaseModel], str] = {
    SerializedByAlias: f"OPENAI: {SECRET}\nendpoint: {{apiSecret: {SECRET}-2, timeoutSeconds: 3}}\npoolSize: 4\n",
    Aliased: f"OPENAI: {SECRET}\npoolSize: 4\n",
}


@contextmanager
def running(
    tmp_path: Path, database_url: str, model: type[BaseModel], encryption_key: str
) -> Iterator[tuple[TestClient, ConfigLifecycle]]:
    source = tmp_path / "config.yaml"
    if not source.exists():
        source.write_text(BODIES[model], encoding="utf-8")
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=model,
        config_source=source,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        enable_signal_handler=False,
        encryption_key=encryption_key if is_postgres(database_url) else None,
    )
    with TestClient(app) as client:
        yield client, lifecycle


@pytest.mark.parametrize("model", [SerializedByAlias, Aliased], ids=lambda model: model.__name__)
def test_a_secret_field_with_an_alias_is_sealed_at_rest_and_redacted_in_answers(
    tmp_path: Path, database_url: str, model: type[BaseModel]
) -> None:
    with running(tmp_path, database_url, model, SecretCipher.generate_key()) as (client, _):
        current = client.get(f"{PREFIX}/current", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert current.status_code == 200
    assert SECRET not in current.text
    assert current.json()["config"]["openai"] == "**********"
    assert SECRET not in stored_rows_text(database_url)


@pytest.mark.parametrize("model", [SerializedByAlias, Aliased], ids=lambda model: model.__name__)
def test_a_model_with_aliases_restores_its_config_after_a_restart(
    tmp_path: Path, database_url: str, model: type[BaseModel]
) -> None:
    key = SecretCipher.generate_key()
    with running(tmp_path, database_url, model, key) as (_, lifecycle):
        assert lifecycle.reloader is not None
        applied = lifecycle.reloader.current_hash

    with running(tmp_path, database_url, model, key) as (_, lifecycle):
        assert lifecycle.reloader is not None
        assert lifecycle.reloader.current_hash == applied
        config = lifecycle.reloader.get_config()
        assert config.openai.get_secret_value() == SECRET
        assert config.pool_size == 4
