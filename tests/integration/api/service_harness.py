"""The real confledger app for the HTTP tests: the example config copied to a temp dir, a real log.

Nothing here is mocked: ``serving()`` builds a FastAPI app with ``setup_configuration_lifecycle`` and
runs its lifespan through Starlette's ``TestClient``, so every request goes through the real router,
dependencies, reloader, projections and database.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import sqlalchemy as sa
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, SecretCipher
from confledger.store.integrity import CONFIG_HASH_KEYED, IntegrityKeys, candidate_keys, config_hash_as
from confledger.store.secrets import classify_secrets, digested_paths
from confledger.store.services import ServiceRegistry
from confledger.store.validation import dump_revealed

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_CONFIG = REPO / "examples" / "config.yaml"
BASE: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
OPENAI_KEY: str = BASE["embedding"]["openai_api_key"]
FIRECRAWL_KEY: str = BASE["crawl"]["firecrawl_api_key"]

PREFIX = "/api/v1/config"
ADMIN_TOKEN = "admin-token-0123456789abcdefghij"  # 32 characters
READ_TOKEN = "read-token-0123456789abcdefghijk"  # 32 characters
assert len(ADMIN_TOKEN) == len(READ_TOKEN) == 32

SEED_RELOAD_KEYS = {
    "operation_id",
    "status",
    "success",
    "message",
    "total_duration_ms",
    "validation_duration_ms",
    "apply_duration_ms",
    "previous_config_hash",
    "new_config_hash",
    "changes_applied",
    "services_notified",
    "validation_errors",
    "validation_warnings",
}


def clear_confledger_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CONFLEDGER_* setting from the developer's shell may change what a test builds."""
    for name in list(os.environ):
        if name.startswith("CONFLEDGER_"):
            monkeypatch.delenv(name)


def stored_rows_text(database_url: str) -> str:
    """Every row of ``config_versions`` and ``events`` as text: what someone reading the tables sees."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = [*connection.execute(sa.text("SELECT * FROM config_versions"))]
            rows += [*connection.execute(sa.text("SELECT * FROM events"))]
    finally:
        engine.dispose()
    return "\n".join(repr(tuple(row)) for row in rows)


def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


def variant(**changes: Any) -> dict[str, Any]:
    """The example config with ``section__field=value`` changes (double underscore = one level down)."""
    body = copy.deepcopy(BASE)
    for dotted_name, value in changes.items():
        *parents, leaf = dotted_name.split("__")
        node = body
        for part in parents:
            node = node[part]
        node[leaf] = value
    return body


def write_config(path: Path, body: dict[str, Any]) -> Path:
    """Replace ``path`` atomically with ``body`` as YAML (a temp file renamed over it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    os.replace(temporary, path)
    return path


def full_hash_of(body: dict[str, Any], keyed_by: EventLog | IntegrityKeys) -> str:
    """The config hash confledger computes for ``body`` in a log (model-validated, secrets revealed): its
    secrets enter only as digests under the log's key, so the hash depends on the log it is stored in."""
    model = AppConfig.model_validate(body)
    paths = digested_paths(classify_secrets(model))
    if isinstance(keyed_by, EventLog):
        return keyed_by.hash_config(dump_revealed(model), paths)
    return config_hash_as(dump_revealed(model), paths, CONFIG_HASH_KEYED, keyed_by)


def keys_beside(database: Path) -> IntegrityKeys:
    """The integrity key of an SQLite log whose key file ``serve`` made beside it."""
    cipher = SecretCipher.from_key_file(database.with_name(database.name + ".key"), create=False)
    return candidate_keys(None, cipher)[0]


def config_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, flattening included routers whatever FastAPI's version."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: list[Any] = list(iterate(app.routes)) if iterate is not None else list(app.routes)
    found: set[tuple[str, str]] = set()
    for route in routes:
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None) or set()
        if path is None:
            continue
        for method in methods:
            if method != "HEAD":
                found.add((method, path))
    return sorted(found, key=lambda pair: (pair[1], pair[0]))


@dataclass
class Service:
    """One running app: its client, lifecycle, config file and log."""

    app: FastAPI
    lifecycle: ConfigLifecycle
    client: TestClient
    source: Path
    database_url: str
    services: ServiceRegistry

    @property
    def reloader(self) -> ConfigReloader:
        assert self.lifecycle.reloader is not None
        return self.lifecycle.reloader

    @property
    def log(self) -> EventLog:
        return self.reloader.log

    def get(self, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> Response:
        return self.client.get(_url(path), headers={**_auth(token), **kwargs.pop("headers", {})}, **kwargs)

    def post(self, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> Response:
        return self.client.post(_url(path), headers=_auth(token), **kwargs)

    def events_of(self, operation_id: str) -> list[str]:
        """The event types one operation left in the log, in order."""
        return [event.type for event in self.log.read_operation(operation_id)]

    def current_full_hash(self) -> str | None:
        return self.reloader.current_hash


def _url(path: str) -> str:
    return path if path.startswith(("/healthz", "/readyz", "/metrics", "/openapi")) else PREFIX + path


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def build_app(
    tmp_path: Path, database_url: str, *, source: Path | None = None, **options: Any
) -> tuple[FastAPI, ConfigLifecycle, Path, ServiceRegistry]:
    """An app around a copy of the example config in ``tmp_path/conf`` (not started)."""
    if source is None:
        config_dir = tmp_path / "conf"
        config_dir.mkdir(exist_ok=True)
        source = config_dir / "config.yaml"
        if not source.exists():
            source.write_bytes(EXAMPLE_CONFIG.read_bytes())
    services = options.pop("services", None)
    if services is None:
        services = ServiceRegistry()
    if is_postgres(database_url):
        # A PostgreSQL log is shared by a fleet, so its key must come from the environment or settings.
        options.setdefault("encryption_key", SecretCipher.generate_key())
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=AppConfig,
        config_source=source,
        database_url=database_url,
        validators=options.pop("validators", VALIDATORS),
        admin_token=options.pop("admin_token", ADMIN_TOKEN),
        read_token=options.pop("read_token", READ_TOKEN),
        services=services,
        enable_signal_handler=False,
        **options,
    )
    return app, lifecycle, source, services


def unstarted_app(**options: Any) -> FastAPI:
    """An app that is built but never started: for reading its routes and OpenAPI schema at import time.

    Nothing is created on disk, and no CONFLEDGER_* setting from the shell takes part.
    """
    nowhere = Path("/nonexistent")
    with pytest.MonkeyPatch.context() as patch:
        clear_confledger_environment(patch)
        app = build_app(nowhere, "sqlite:///unused.db", source=nowhere / "conf" / "config.yaml", **options)[0]
    return app


@contextmanager
def serving(
    tmp_path: Path,
    database_url: str,
    *,
    raise_server_exceptions: bool = True,
    **options: Any,
) -> Iterator[Service]:
    """Build the app and run it (lifespan included) for the duration of the block."""
    app, lifecycle, source, services = build_app(tmp_path, database_url, **options)
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        yield Service(app, lifecycle, client, source, database_url, services)
