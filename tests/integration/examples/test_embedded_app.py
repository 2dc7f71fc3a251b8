"""examples/embedded_app.py works the way the README says: per-request config, two real callbacks."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from confledger.api import lifecycle as lifecycle_module

EXAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"
TOKEN = "embedded-example-admin-token-0123"


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Path]]:
    source = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE_CONFIG, source)
    monkeypatch.setenv("CONFLEDGER_CONFIG", str(source))
    monkeypatch.setenv("CONFLEDGER_ADMIN_TOKEN", TOKEN)
    # The example registers its callbacks at import, into the process-wide registry: start clean.
    for name in ("database_pool", "response_cache"):
        lifecycle_module.unregister_config_callback(name)
    sys.modules.pop("confledger.examples.embedded_app", None)
    module = importlib.import_module("confledger.examples.embedded_app")
    try:
        yield module, source
    finally:
        sys.modules.pop("confledger.examples.embedded_app", None)
        for name in ("database_pool", "response_cache"):
            lifecycle_module.unregister_config_callback(name)


def _reload(client: TestClient) -> dict[str, object]:
    response = client.post("/api/v1/config/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return dict(response.json())


def test_callbacks_resize_the_pool_and_clear_the_cache(embedded: tuple[ModuleType, Path]) -> None:
    module, source = embedded
    with TestClient(module.app) as client:
        # Start-up applied the file: the pool callback resized the pool to the configured size.
        assert module.pool.size == 20
        first = client.get("/search", params={"q": "vector"}).json()
        assert first["cached"] is False
        assert first["pool_size"] == 20
        assert client.get("/search", params={"q": "vector"}).json()["cached"] is True

        text = source.read_text(encoding="utf-8")
        source.write_text(
            text.replace("pool_size: 20", "pool_size: 30").replace("ttl_seconds: 3600", "ttl_seconds: 60"),
            encoding="utf-8",
        )
        operation = _reload(client)
        assert operation["success"] is True
        assert operation["services_notified"] == ["database_pool:success", "response_cache:success"]
        assert module.pool.size == 30
        assert module.cache.ttl_seconds == 60
        # The cache was cleared by its callback, so the next answer is fresh and uses the new pool.
        after = client.get("/search", params={"q": "vector"}).json()
        assert after["cached"] is False
        assert after["pool_size"] == 30


def test_a_refusing_callback_is_recorded_and_shows_as_drift(embedded: tuple[ModuleType, Path]) -> None:
    module, source = embedded
    with TestClient(module.app) as client:
        text = source.read_text(encoding="utf-8")
        source.write_text(text.replace("pool_size: 20", "pool_size: 300"), encoding="utf-8")
        operation = _reload(client)
        # One of two services accepted: at the default threshold (0.5) the change still applies,
        # the pool keeps its old size, and status reports the pool running the previous config.
        assert operation["services_notified"] == ["database_pool:failed", "response_cache:success"]
        assert module.pool.size == 20
        status = client.get("/api/v1/config/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert status["service_drift"] == {"database_pool": operation["previous_config_hash"]}
