"""The app ``confledger serve`` builds (``create_app``): its files' modes and the docs setting.

Each test builds the real app from ``Settings`` around a copy of the example config, with the log
beside it (the default), and runs it with Starlette's TestClient.
"""

from __future__ import annotations

import gc
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient

from confledger.api.server import create_app
from confledger.api.settings import Settings
from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    EXAMPLE_CONFIG,
    PREFIX,
    clear_confledger_environment,
)

MODEL = "confledger.examples.app_config:AppConfig"


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems give a service (022): files are created 0644 unless asked otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _config(tmp_path: Path) -> Path:
    source = tmp_path / "config.yaml"
    source.write_bytes(EXAMPLE_CONFIG.read_bytes())
    return source


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_log_its_sidecars_the_key_and_the_token_are_0600(tmp_path: Path, usual_umask: None) -> None:
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False)
    app, lifecycle = create_app(settings)
    database = tmp_path / "confledger.db"
    assert _mode(database) == 0o600  # created before SQLite first opens it

    with TestClient(app) as client:
        token = lifecycle.tokens.admin
        assert client.post(
            f"{PREFIX}/reload", json={"force": True}, headers={"Authorization": f"Bearer {token}"}
        ).is_success
        # While the log is open, with the write-ahead log and shared memory beside it.
        files = {
            name: tmp_path / name
            for name in (
                "confledger.db",
                "confledger.db-wal",
                "confledger.db-shm",
                "confledger.db.key",
                "confledger.db.admin-token",
            )
        }
        modes = {name: _mode(path) for name, path in files.items()}

    assert modes == dict.fromkeys(files, 0o600)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o044  # the umask did apply to other files


def test_an_existing_log_others_may_read_keeps_its_mode_with_a_warning(
    tmp_path: Path, usual_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    database = tmp_path / "confledger.db"
    database.touch(mode=0o644)

    create_app(settings)

    assert _mode(database) == 0o644  # the operator's file, the operator's choice
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(database) in record.getMessage() for record in warnings)


# (CONFLEDGER_DOCS, what /docs, its assets and /openapi.json answer)
DOCS = [(None, 200), ("true", 200), ("false", 404)]


@pytest.mark.parametrize(("setting", "expected"), DOCS)
def test_docs_and_the_schema_follow_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: int
) -> None:
    if setting is not None:
        monkeypatch.setenv("CONFLEDGER_DOCS", setting)
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    app, _ = create_app(settings)
    with TestClient(app) as client:
        for path in (
            "/docs",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/swagger-ui.css",
            "/openapi.json",
        ):
            assert client.get(path).status_code == expected, path
        assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN
        index = client.get("/").json()
        assert index["api"] == PREFIX
        assert ("docs" in index) is (expected == 200)
        # The API itself is there either way.
        assert client.get(f"{PREFIX}/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).is_success


def test_docs_load_nothing_from_the_network(tmp_path: Path) -> None:
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    app, _ = create_app(settings)
    with TestClient(app) as client:
        page = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in page
    assert "http://" not in page
    assert "https://" not in page


@pytest.mark.parametrize(
    "name", ["index.html", "swagger-initializer.js", "index.j2", "oauth2-redirect.html", "swagger-ui.js"]
)
def test_only_the_files_the_docs_use_are_served_from_the_bundle(tmp_path: Path, name: str) -> None:
    # The bundle's stock index.html is a Swagger UI of its own that loads petstore.swagger.io.
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    app, _ = create_app(settings)
    with TestClient(app) as client:
        refused = client.get(f"/docs/assets/{name}")
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert refused.status_code == 404
    assert refused.json()["code"] == "not_found"


# (method, path, status, code): the router's own refusals, in the app serve runs, carry a code as well
ROUTING_REFUSALS = [
    ("GET", f"{PREFIX}/histroy", 404, "not_found"),  # a typo under the API's prefix
    ("GET", "/nowhere", 404, "not_found"),  # outside it
    ("GET", "/docs/assets/missing.js", 404, "not_found"),  # a docs file that is not there
    ("GET", f"{PREFIX}/reload", 405, "method_not_allowed"),  # reload is a POST
    ("DELETE", f"{PREFIX}/status", 405, "method_not_allowed"),
    ("GET", f"{PREFIX}/current/", 404, "not_found"),  # no redirect to a Location the Host header names
]


@pytest.mark.parametrize(("method", "path", "status", "code"), ROUTING_REFUSALS)
def test_the_routers_own_refusals_carry_a_code(
    tmp_path: Path, method: str, path: str, status: int, code: str
) -> None:
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    app, _ = create_app(settings)
    with TestClient(app) as client:
        response = client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == status
    assert response.json() == {"detail": response.json()["detail"], "code": code}
    if status == 405:
        assert response.headers["allow"]  # which methods the path does take


def test_an_unexpected_failure_is_a_500_with_a_code_that_tells_nothing_of_it(tmp_path: Path) -> None:
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    app, _ = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail of the failure")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error; the service's log has the details",
        "code": "internal_error",
    }
    assert "secret detail" not in response.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_probes_answer_head_as_load_balancers_send_it(tmp_path: Path, path: str) -> None:
    settings = Settings(config=_config(tmp_path), model=MODEL, signal_handler=False, admin_token=ADMIN_TOKEN)
    app, _ = create_app(settings)
    with TestClient(app) as client:
        response = client.head(path)
    assert response.status_code == 200
    assert response.content == b""


def test_an_embedding_apps_own_404_is_left_as_it_was(tmp_path: Path) -> None:
    from fastapi import FastAPI

    from confledger.api.lifecycle import setup_configuration_lifecycle

    app = FastAPI()
    setup_configuration_lifecycle(
        app,
        config_source=_config(tmp_path),
        admin_token=ADMIN_TOKEN,
        enable_signal_handler=False,
    )
    with TestClient(app) as client:
        response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}  # the host app's answer, not confledger's


def test_every_setting_given_reaches_the_service_not_the_environment_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What serve builds from its options (an option wins over its variable): each must reach the service.
    # The variables say otherwise, so a setting read from the environment again shows.
    monkeypatch.setenv("CONFLEDGER_VALIDATOR_TIMEOUT", "9")
    monkeypatch.setenv("CONFLEDGER_HEARTBEAT_INTERVAL", "9")
    given = Settings(
        config=_config(tmp_path),
        model=MODEL,
        signal_handler=False,
        admin_token=ADMIN_TOKEN,
        validator_timeout=1.5,
        heartbeat_interval=2.0,
        anchor_file=tmp_path / "elsewhere.anchor",
        max_request_bytes=2_048,
        max_source_bytes=1_000,
        history_window=50,
        callback_timeout=4.0,
        follow_poll_interval=0.25,
        fleet_rollback_threshold=0.5,
        fleet_answer_wait=3.0,
        source_dirs=[tmp_path / "more"],
    )
    _, lifecycle = create_app(given)
    for name in given.model_fields_set:
        assert getattr(lifecycle.settings, name) == getattr(given, name), name


def test_an_embedding_app_s_log_is_0600_too(tmp_path: Path, usual_umask: None) -> None:
    from fastapi import FastAPI

    from confledger.api.lifecycle import setup_configuration_lifecycle

    app = FastAPI()
    setup_configuration_lifecycle(
        app, config_source=_config(tmp_path), admin_token=ADMIN_TOKEN, enable_signal_handler=False
    )
    with TestClient(app):
        modes = {name: _mode(tmp_path / name) for name in ("confledger.db", "confledger.db-wal")}
    assert modes == {"confledger.db": 0o600, "confledger.db-wal": 0o600}  # the whole config history


def test_a_bare_reloader_s_log_is_0600_too(tmp_path: Path, usual_umask: None) -> None:
    from confledger import ConfigReloader

    async def run() -> None:
        async with ConfigReloader(f"sqlite:///{tmp_path / 'app.db'}", config_source=_config(tmp_path)):
            pass

    anyio.run(run)
    assert _mode(tmp_path / "app.db") == 0o600


@pytest.mark.parametrize(
    ("gc_freeze", "frozen_while_serving"),
    [
        (True, True),  # the default: start-up's objects left out of later full passes
        (False, False),  # CONFLEDGER_GC_FREEZE=false: the process's collector as it was
    ],
)
def test_start_up_s_objects_are_frozen_while_serving_and_handed_back_at_stop(
    tmp_path: Path, gc_freeze: bool, frozen_while_serving: bool
) -> None:
    before = gc.get_freeze_count()
    app, _ = create_app(Settings(config=_config(tmp_path), gc_freeze=gc_freeze))
    with TestClient(app):
        assert (gc.get_freeze_count() > before) is frozen_while_serving
    assert gc.get_freeze_count() == (0 if frozen_while_serving else before)


def test_two_embedding_apps_in_one_process_each_stop_leaves_the_other_in_charge(tmp_path: Path) -> None:
    # The process-wide reloader (get_config_reloader) and the registry register_config_callback adds
    # to belong to the lifecycle started last; the second app stopping while the first still ran left
    # neither: get_config_reloader raised, and a callback went to a registry no running app reads.
    from fastapi import FastAPI

    from confledger import get_config_reloader, register_config_callback
    from confledger.api.lifecycle import setup_configuration_lifecycle
    from confledger.store.services import ServiceRegistry

    def app_in(directory: Path) -> tuple[FastAPI, ServiceRegistry]:
        directory.mkdir()
        app, services = FastAPI(), ServiceRegistry()
        setup_configuration_lifecycle(
            app,
            config_source=_config(directory),
            admin_token=ADMIN_TOKEN,
            enable_signal_handler=False,
            services=services,
        )
        return app, services

    (first, first_services), (second, _) = app_in(tmp_path / "a"), app_in(tmp_path / "b")
    with TestClient(first):
        with TestClient(second):
            assert get_config_reloader() is second.state.confledger.reloader
        assert get_config_reloader() is first.state.confledger.reloader
        register_config_callback("late", lambda old, new: True)
        assert "late" in first_services
    with pytest.raises(RuntimeError, match="no ConfigReloader"):
        get_config_reloader()
