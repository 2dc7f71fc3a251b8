"""Security of the HTTP API: tokens on every endpoint, the config_source allow-list, and secrets.

* every route under ``/api/v1/config`` (read from ``app.routes``, so a new endpoint cannot escape) answers
  401 without a token or with a wrong one, and every mutating route answers 403 to the read token;
* a table of traversal attempts for ``config_source``: all 403, each recorded as ``operation.rejected``,
  none loaded;
* a full tour with the example's secret values, after which neither any response body, nor the log
  output (DEBUG, everything), nor a raw dump of every table and view in the database contains them;
* tokens and key files: short tokens refused, generated files 0600, a lost key fails start-up clearly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from httpx import Response

from confledger import ApiError
from confledger.api.lifecycle import setup_configuration_lifecycle
from confledger.api.security import TokenError
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import SecretCipher, SecretKeyError
from confledger.store.services import ServiceRegistry
from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    BASE,
    EXAMPLE_CONFIG,
    FIRECRAWL_KEY,
    OPENAI_KEY,
    PREFIX,
    READ_TOKEN,
    Service,
    build_app,
    clear_confledger_environment,
    config_routes,
    full_hash_of,
    serving,
    unstarted_app,
    variant,
    write_config,
)

# --- the routes, read from the app itself --------------------------------------------------------------

_LISTING_APP = unstarted_app(metrics=True)
ROUTES = config_routes(_LISTING_APP)
PROTECTED = [(method, path) for method, path in ROUTES if path.startswith(PREFIX + "/")]
MUTATING = [(method, path) for method, path in PROTECTED if method != "GET"]
READING = [(method, path) for method, path in PROTECTED if method == "GET"]
# Token-protected routes outside the prefix (the Prometheus endpoint); the rest are public on purpose.
PROTECTED_OUTSIDE = [("GET", "/metrics")]
# "/docs/assets" is confledger serve's own Swagger UI; "/redoc" the default page of an embedding app.
PUBLIC = {
    "/",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/docs/assets",
    "/redoc",
}

# A value for each path parameter a route may have. A new parameter fails the test loudly, here.
PATH_VALUES = {
    "operation_id": str(uuid.UUID(int=1)),
    "config_hash": "abcdef1",
}


def _concrete(path: str) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in PATH_VALUES, f"no test value for path parameter {name!r} of {path}"
        return PATH_VALUES[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", fill, path)


def test_the_route_listing_sees_every_router() -> None:
    # Guards the parametrization below: if flattening included routers broke, it would test nothing.
    named = {
        ("POST", "/reload"),
        ("POST", "/rollback"),
        ("GET", "/history"),
        ("GET", "/stats"),
        ("GET", "/status"),
        ("GET", "/backups"),
        ("POST", "/file-watch/enable"),
        ("POST", "/file-watch/disable"),
        ("GET", "/current"),
        ("GET", "/versions/{config_hash}"),
        ("GET", "/diff"),
        ("GET", "/operations/{operation_id}"),
        ("GET", "/events"),
        ("GET", "/verify"),
        ("GET", "/timeline"),
        ("GET", "/watch"),
    }
    assert {(method, PREFIX + path) for method, path in named} <= set(PROTECTED)
    unprotected = {path for _, path in ROUTES if not path.startswith(PREFIX + "/")}
    assert unprotected - PUBLIC == {path for _, path in PROTECTED_OUTSIDE}


# --- one SQLite service for the token and traversal tables ----------------------------------------------


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """conf/ (allowed), extra/ (allowed via CONFLEDGER_SOURCE_DIRS), and places a client must not reach."""
    root = tmp_path_factory.mktemp("security")
    paths = {
        "conf": root / "conf",
        "extra": root / "extra",
        "outside": root / "outside",
        "sibling": root / "conf-evil",  # shares the allowed directory's name as a string prefix
    }
    for directory in paths.values():
        directory.mkdir()
    (paths["conf"] / "config.yaml").write_bytes(EXAMPLE_CONFIG.read_bytes())
    # Valid configs outside the allow-list: if any of them were read, it would apply cleanly.
    write_config(paths["outside"] / "config.yaml", variant(app_name="outside"))
    write_config(paths["sibling"] / "config.yaml", variant(app_name="sibling"))
    write_config(paths["extra"] / "config.yaml", variant(app_name="extra"))
    (paths["conf"] / "link.yaml").symlink_to(paths["outside"] / "config.yaml")
    (paths["conf"] / "linkdir").symlink_to(paths["outside"], target_is_directory=True)
    (paths["conf"] / "sub").mkdir()
    return paths


@pytest.fixture(scope="module")
def shared(layout: dict[str, Path]) -> Iterator[Service]:
    with pytest.MonkeyPatch.context() as patch:
        clear_confledger_environment(patch)
        patch.setenv("CONFLEDGER_SOURCE_DIRS", str(layout["extra"]))
        with serving(
            layout["conf"].parent,
            f"sqlite:///{layout['conf'].parent / 'confledger.db'}",
            source=layout["conf"] / "config.yaml",
            metrics=True,
        ) as service:
            yield service


def _request(service: Service, method: str, path: str, headers: dict[str, str]) -> Response:
    if method == "GET":
        # A stream (GET /watch) is judged by its status and headers: its body ends only when the client leaves.
        with service.client.stream("GET", _concrete(path), headers=headers) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                response.read()
        return response
    return service.client.request(method, _concrete(path), headers=headers, json={})


# Authorization headers that must all be refused with 401: none at all, and near misses.
BAD_CREDENTIALS = [
    {},  # no header
    {"Authorization": ""},  # empty header
    {"Authorization": "Bearer "},  # scheme without a token
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}X"},  # same length, last character wrong
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},  # the admin token plus one character
    {"Authorization": f"Bearer {ADMIN_TOKEN[:16]}"},  # a prefix of the admin token
    {"Authorization": f"Basic {ADMIN_TOKEN}"},  # the right token under the wrong scheme
    {"Authorization": ADMIN_TOKEN},  # no scheme at all
    {"X-API-Key": ADMIN_TOKEN},  # the right token in the wrong header
]


@pytest.mark.parametrize(("method", "path"), PROTECTED + PROTECTED_OUTSIDE)
def test_every_protected_endpoint_refuses_a_missing_or_wrong_token_with_401(
    shared: Service, method: str, path: str
) -> None:
    head = shared.log.head()
    for headers in BAD_CREDENTIALS:
        response = _request(shared, method, path, headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "missing or invalid bearer token", "code": "unauthorized"}
    assert shared.log.head() == head  # a refused caller changes nothing


@pytest.mark.parametrize(("method", "path"), MUTATING)
def test_the_read_token_is_refused_on_every_mutating_endpoint_with_403(
    shared: Service, method: str, path: str
) -> None:
    head = shared.log.head()
    response = _request(shared, method, path, {"Authorization": f"Bearer {READ_TOKEN}"})
    assert response.status_code == 403
    assert response.json() == {
        "detail": "this endpoint needs the admin token",
        "code": "admin_token_required",
    }
    assert shared.log.head() == head


# Every refusal answers {"detail", "code"}: the code is what a client branches on.
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
REFUSALS = [
    # (method, path, headers, body: JSON text or None, status, code)
    ("GET", "/current", {}, None, 401, "unauthorized"),  # no token
    ("GET", "/current?access_token=x", ADMIN, None, 401, "credential_in_url"),  # a token in the URL
    ("POST", "/reload", READER, "{}", 403, "admin_token_required"),  # refused before the body is read
    ("POST", "/reload", ADMIN, "{not json", 400, "invalid_json"),
    ("POST", "/reload", ADMIN, '{"force": "sometimes"}', 422, "invalid_request"),
    ("POST", "/reload", ADMIN, '{"config_source": "/etc/passwd"}', 403, "source_not_allowed"),
    ("GET", f"/operations/{uuid.UUID(int=0)}", ADMIN, None, 404, "unknown_operation"),
    ("GET", "/versions/zzz", ADMIN, None, 400, "invalid_hash_prefix"),
    ("GET", "/versions/0000000", ADMIN, None, 404, "unknown_config_hash"),
    ("GET", "/diff?from=0000000&to=1111111", ADMIN, None, 404, "unknown_config_hash"),
    (
        "GET",
        "/timeline?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        ADMIN,
        None,
        400,
        "invalid_time_window",
    ),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), REFUSALS)
def test_every_refusal_names_its_code(
    shared: Service, method: str, path: str, headers: dict[str, str], body: str | None, status: int, code: str
) -> None:
    head = shared.log.head()
    content = None if body is None else body.encode()
    sent = {**headers, "Content-Type": "application/json"} if content is not None else headers
    response = shared.client.request(method, PREFIX + path, headers=sent, content=content)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["code"] == code, answer
    assert answer["detail"]
    if code != "source_not_allowed":  # the refused source is recorded as a rejected operation
        assert shared.log.head() == head


def test_the_host_apps_errors_keep_their_shape_and_confledgers_can_be_reshaped(
    tmp_path: Path, database_url: str
) -> None:
    app, _lifecycle, _source, _services = build_app(tmp_path, database_url)

    @app.get("/own")
    async def own() -> None:
        raise HTTPException(418, "the app's own")

    async def reshaped(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse({"error": {"reason": exc.code}}, status_code=exc.status_code)

    # Registered after setup_configuration_lifecycle's own handler, before the app starts: it wins.
    app.add_exception_handler(ApiError, reshaped)
    with TestClient(app) as client:
        assert client.get("/own").json() == {"detail": "the app's own"}  # no code forced on it
        refused = client.get(PREFIX + "/current")
        assert refused.status_code == 401
        assert refused.json() == {"error": {"reason": "unauthorized"}}


@pytest.mark.parametrize(("method", "path"), READING + PROTECTED_OUTSIDE)
def test_the_read_token_reads_every_get_endpoint(shared: Service, method: str, path: str) -> None:
    response = _request(shared, method, path, {"Authorization": f"Bearer {READ_TOKEN}"})
    assert response.status_code not in (401, 403), response.text


def test_public_endpoints_need_no_token(shared: Service) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert shared.client.get(path).status_code == 200, path


# --- config_source traversal ---------------------------------------------------------------------------

# (config_source, what the attempt is): every one must be refused with 403 and nothing loaded.
TRAVERSALS = [
    ("../outside/config.yaml", "plain parent traversal to a valid config"),
    ("../x", "parent traversal to nothing"),
    ("%2e%2e/outside/config.yaml", "percent-encoded dots"),
    ("%2E%2E%2Foutside%2Fconfig.yaml", "percent-encoded dots and slashes"),
    ("%252e%252e/outside/config.yaml", "double-encoded dots"),
    ("%25252e%25252e/outside/config.yaml", "triple-encoded dots"),
    ("sub/../../outside/config.yaml", "traversal that passes through a real subdirectory"),
    ("sub/../config.yaml", "a '..' that would land back inside is refused too"),
    ("..\\outside\\config.yaml", "backslash separators"),
    ("/etc/passwd", "an absolute path elsewhere"),
    ("{sibling}/config.yaml", "an absolute path in a sibling dir sharing the allowed dir's prefix"),
    ("{outside}/config.yaml", "an absolute path to a valid config outside"),
    ("config.yaml\x00.json", "a NUL byte"),
    ("%00config.yaml", "an encoded NUL byte"),
    ("link.yaml", "a symlink inside the allowed dir pointing outside"),
    ("linkdir/config.yaml", "a symlinked directory inside the allowed dir pointing outside"),
    ("{conf}/link.yaml", "the same symlink, named absolutely"),
    ("", "an empty string"),
    ("   ", "only whitespace"),
    ("%20", "an encoded space"),
]


@pytest.mark.parametrize(("requested", "why"), TRAVERSALS, ids=[why for _, why in TRAVERSALS])
def test_config_source_outside_the_allowed_dirs_is_403_recorded_and_never_loaded(
    shared: Service, layout: dict[str, Path], requested: str, why: str
) -> None:
    requested = requested.format(**{name: str(path) for name, path in layout.items()})
    current = shared.reloader.current_hash
    head = shared.log.head()

    response = shared.post("/reload", json={"config_source": requested, "force": True})

    assert response.status_code == 403, (why, response.text)
    assert "not allowed" in response.json()["detail"]
    new_events = shared.log.read(head)
    assert [event.type for event in new_events] == ["operation.rejected"], why
    rejected = new_events[0]
    assert rejected.payload.reason == "source_not_allowed"  # type: ignore[attr-defined]
    assert rejected.payload.trigger.value == "api"  # type: ignore[attr-defined]
    assert rejected.actor == "token:admin"
    assert shared.reloader.current_hash == current
    for name in ("outside", "sibling"):
        assert not shared.log.has_config(full_hash_of(variant(app_name=name), shared.log))


# (config_source, which file it names): inside the config's dir or a CONFLEDGER_SOURCE_DIRS entry.
ALLOWED_SOURCES = [
    ("config.yaml", "{conf}/config.yaml"),
    ("./config.yaml", "{conf}/config.yaml"),
    ("{conf}/config.yaml", "{conf}/config.yaml"),
    (
        "%7Bconf%7D/config.yaml",
        None,
    ),  # decodes to a name inside conf/ that does not exist: allowed, not found
    ("{extra}/config.yaml", "{extra}/config.yaml"),
]


@pytest.mark.parametrize(("requested", "names"), ALLOWED_SOURCES)
def test_config_source_inside_the_allowed_dirs_is_read(
    shared: Service, layout: dict[str, Path], requested: str, names: str | None
) -> None:
    values = {name: str(path) for name, path in layout.items()}
    requested = requested.format(**values) if "%" not in requested else requested
    response = shared.post("/reload", json={"config_source": requested})
    assert response.status_code == 200, response.text
    started = shared.log.read_operation(response.json()["operation_id"])[0]
    if names is None:
        assert response.json()["success"] is False
        assert response.json()["reason"] == "not_found"
    else:
        assert started.payload.source == os.path.realpath(names.format(**values))  # type: ignore[attr-defined]
        assert response.json()["success"] is True
    shared.post("/reload", json={})  # back to the configured file for the next case


# --- secrets never leave: responses, logs, tables ------------------------------------------------------

NEW_SECRET = "sk-tour-7777-rotated-not-real-8888"
SECRETS = [OPENAI_KEY, FIRECRAWL_KEY, NEW_SECRET]
# Distinctive fragments: a partly masked or truncated value would still show one of these.
FRAGMENTS = ["not-a-real-key", "rotated-not-real", "sk-demo", "fc-demo", "sk-tour"]


def leaky_validator(config: AppConfig) -> dict[str, list[str]]:
    """User code that echoes the value it dislikes; confledger must scrub it before anything sees it."""
    key = config.embedding.openai_api_key
    if config.performance.max_retries > 10 and key is not None:
        return {
            "errors": [f"embedding.openai_api_key {key.get_secret_value()} may not retry more than 10 times"],
            "warnings": [],
        }
    return {"errors": [], "warnings": []}


def leaky_service(old: AppConfig | None, new: AppConfig) -> bool:
    """A callback whose exception message carries a secret (as connection errors often do)."""
    if new.database.pool_size == 77 and new.crawl.firecrawl_api_key is not None:
        raise RuntimeError(f"could not connect with key {new.crawl.firecrawl_api_key.get_secret_value()}")
    return True


def _dump_database(service: Service) -> tuple[dict[str, str], set[str]]:
    """``SELECT *`` from every table and view in the log's database, as text."""
    engine = service.log.engine
    inspector = sa.inspect(engine)
    names = set(inspector.get_table_names()) | set(inspector.get_view_names())
    dumped: dict[str, str] = {}
    with engine.connect() as connection:
        for name in sorted(names):
            rows = connection.execute(sa.text(f'SELECT * FROM "{name}"')).all()
            dumped[name] = "\n".join(repr(tuple(row)) for row in rows)
    return dumped, names


def _log_output(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(vars(record)))  # structured fields passed with extra=
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(repr(record.exc_info[1]))
    return "\n".join(parts)


def _assert_no_secret(where: str, text: str) -> None:
    for value in SECRETS + FRAGMENTS:
        assert value not in text, f"{value!r} found in {where}"
        escaped = json.dumps(value)[1:-1]
        assert escaped not in text, f"{value!r} (JSON-escaped) found in {where}"


def test_a_full_tour_never_shows_a_secret_in_responses_logs_or_tables(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy keeps its own loggers at WARNING; open them too, so every statement and parameter is seen.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    services = ServiceRegistry()
    services.register("pool", leaky_service, priority=5)
    services.register("cache", lambda old, new: True, priority=1)
    responses: list[tuple[str, Response]] = []

    with serving(
        tmp_path, database_url, validators=[*VALIDATORS, leaky_validator], services=services
    ) as service:

        def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
            response = (service.get if method == "GET" else service.post)(path, **kwargs)
            responses.append((f"{method} {path} -> {response.status_code}", response))
            assert response.status_code < 500, response.text
            return dict(response.json())

        first = service.reloader.current_hash
        assert first is not None
        call("GET", "/current")
        call("POST", "/reload", json={})
        # Rotate a secret: a changed secret is a changed config.
        write_config(service.source, variant(embedding__openai_api_key=NEW_SECRET))
        rotated = call("POST", "/reload", json={})
        assert rotated["success"] is True
        assert rotated["changes_applied"] == ["embedding.openai_api_key"]
        second = service.reloader.current_hash
        assert second is not None
        assert second != first
        diff = call("GET", "/diff", params={"from": first, "to": second})
        assert diff["changes"][0]["new"] == "**********"
        call("GET", f"/versions/{first}")
        call("GET", f"/versions/{second[:9]}")
        # A service whose error message carries a secret; one of two services failing still applies.
        write_config(service.source, variant(embedding__openai_api_key=NEW_SECRET, database__pool_size=77))
        partial = call("POST", "/reload", json={})
        assert partial["services_notified"] == ["pool:error", "cache:success"]
        # A validator error that names the key (and, in user code, echoes its value).
        write_config(
            service.source, variant(embedding__openai_api_key=NEW_SECRET, performance__max_retries=11)
        )
        failed = call("POST", "/reload", json={})
        assert failed["success"] is False
        assert any("embedding.openai_api_key" in error for error in failed["validation_errors"])
        assert any("**********" in error for error in failed["validation_errors"])
        # A document that does not parse, with the secret on the offending line.
        service.source.write_text(
            EXAMPLE_CONFIG.read_text(encoding="utf-8").replace(
                f"openai_api_key: {OPENAI_KEY}", f"openai_api_key: {OPENAI_KEY}: [unclosed"
            ),
            encoding="utf-8",
        )
        broken = call("POST", "/reload", json={})
        assert broken["success"] is False
        # A secret typed wrongly (a list where a string belongs): the model's error must not echo it.
        write_config(service.source, variant(crawl__firecrawl_api_key=[FIRECRAWL_KEY]))
        assert call("POST", "/reload", json={})["success"] is False
        write_config(service.source, variant(embedding__openai_api_key=NEW_SECRET, cache__ttl_seconds=5))
        call("POST", "/reload", json={"dry_run": True})
        call("POST", "/reload", json={"config_source": "../elsewhere.yaml"})  # refused and recorded
        back = call("POST", "/rollback", json={"target_hash": first})
        assert back["success"] is True
        # Rollback restored the plain secret from the encrypted log.
        current = service.reloader.current
        assert current is not None
        assert current.hash == first
        assert current.config.embedding.openai_api_key.get_secret_value() == OPENAI_KEY
        call("POST", "/file-watch/enable", params={"poll_interval": 1})
        call("POST", "/file-watch/disable")
        history = call("GET", "/history", params={"limit": 100})
        for operation in history["operations"]:
            call("GET", f"/operations/{operation['operation_id']}")
        after = 0
        while True:
            page = call("GET", "/events", params={"after": after, "limit": 1000})
            if not page["events"]:
                break
            after = page["next_after"]
        for path in ("/timeline", "/current", "/status", "/stats", "/backups", "/verify"):
            call("GET", path)
        call("GET", "/stats", params={"slow_ms": 0})
        call("GET", "/openapi.json", token=None)
        call("GET", "/readyz", token=None)
        tables, names = _dump_database(service)

    assert {"events", "config_versions", "projection_checkpoints", "operations", "config_history"} <= names
    assert len(responses) > 25
    for label, response in responses:
        _assert_no_secret(f"the body of {label}", response.text)
        _assert_no_secret(f"the headers of {label}", repr(response.headers))
    output = _log_output(caplog)
    assert "operation" in output  # the capture did see the tour
    # ... and the SQL it ran, with stored bodies in the rows it logged (appends go to the driver directly)
    assert "FROM config_versions" in output
    _assert_no_secret("the log output", output)
    for name, text in tables.items():
        _assert_no_secret(f"table/view {name}", text)
    assert "**********" in "".join(response.text for _, response in responses)  # redacted, not omitted


# --- tokens and key files ------------------------------------------------------------------------------

# (which setting, how it is given): each one shorter than 16 characters
SHORT_TOKENS = [
    ({"admin_token": "short-token-15c"}, {}),  # admin, as an argument
    ({"admin_token": ADMIN_TOKEN, "read_token": "read-15-chars.."}, {}),  # read, as an argument
    ({}, {"CONFLEDGER_ADMIN_TOKEN": "tiny"}),  # admin, from the environment
    ({"admin_token": ADMIN_TOKEN}, {"CONFLEDGER_READ_TOKEN": "x" * 15}),  # read, from the environment
]


def set_up(tmp_path: Path, **options: Any) -> None:
    """The lifecycle's set-up on an SQLite log in ``tmp_path``: where a start-up mistake is refused."""
    setup_configuration_lifecycle(
        FastAPI(),
        config_model=AppConfig,
        config_source=tmp_path / "config.yaml",
        database_url=f"sqlite:///{tmp_path / 'confledger.db'}",
        services=ServiceRegistry(),
        enable_signal_handler=False,
        **options,
    )


@pytest.mark.parametrize(("arguments", "environment"), SHORT_TOKENS)
def test_tokens_shorter_than_16_characters_are_refused_at_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: dict[str, str], environment: dict[str, str]
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(TokenError, match="shorter than 16 characters") as refused:
        set_up(tmp_path, **arguments)
    for value in [*arguments.values(), *environment.values()]:
        assert value not in str(refused.value)


def test_a_token_set_with_a_trailing_newline_is_taken_without_it(tmp_path: Path, sqlite_url: str) -> None:
    # As a Kubernetes secret made from a file gives it: the service refused every request, even the
    # CLI's, which strips the same variable.
    with serving(
        tmp_path, sqlite_url, admin_token=ADMIN_TOKEN + "\n", read_token=f" {READ_TOKEN}\r\n"
    ) as service:
        assert service.get("/status").status_code == 200
        assert service.get("/status", token=READ_TOKEN).status_code == 200
        assert service.post("/reload", json={}, token=READ_TOKEN).status_code == 403


@pytest.mark.parametrize(
    "token",
    [
        "sk-\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9",
        "abcdefgh\x00ijklmnopq",
    ],
)
def test_a_token_no_header_can_carry_is_refused_at_set_up(tmp_path: Path, token: str) -> None:
    with pytest.raises(
        TokenError, match="CONFLEDGER_ADMIN_TOKEN holds a character an HTTP header cannot"
    ) as refused:
        set_up(tmp_path, admin_token=token)
    assert token not in str(refused.value)


def test_an_allowed_source_directory_that_does_not_exist_is_a_warning_at_set_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="confledger.api.lifecycle")
    set_up(tmp_path, admin_token=ADMIN_TOKEN, source_dirs=[tmp_path / "not-made"])
    assert any("not-made, which is not a directory" in record.getMessage() for record in caplog.records)


def test_a_token_or_key_file_others_may_read_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="confledger.api")
    database_url = f"sqlite:///{tmp_path / 'confledger.db'}"
    app, lifecycle, _, _ = build_app(tmp_path, database_url, admin_token=None, read_token=None)
    with TestClient(app):  # made 0600, then loosened by someone
        pass
    assert lifecycle.token_file is not None
    lifecycle.token_file.chmod(0o644)
    (tmp_path / "confledger.db.key").chmod(0o640)
    (tmp_path / "confledger.db").chmod(0o644)
    app, _, _, _ = build_app(tmp_path, database_url, admin_token=None, read_token=None)
    with TestClient(app):
        pass
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "admin token file" in said
    assert "encryption key file" in said
    assert "event log" in said


def test_a_read_token_that_is_the_admin_token_is_refused_at_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFLEDGER_READ_TOKEN", ADMIN_TOKEN)
    with pytest.raises(TokenError, match="READ_TOKEN is the admin token") as refused:
        set_up(tmp_path, admin_token=ADMIN_TOKEN)
    assert ADMIN_TOKEN not in str(refused.value)


def test_a_generated_admin_token_is_kept_0600_works_and_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    database_url = f"sqlite:///{tmp_path / 'confledger.db'}"
    app, lifecycle, _, _ = build_app(tmp_path, database_url, admin_token=None, read_token=None)

    assert lifecycle.token_created is True
    assert lifecycle.token_file == tmp_path / "confledger.db.admin-token"
    assert stat.S_IMODE(lifecycle.token_file.stat().st_mode) == 0o600
    token = lifecycle.token_file.read_text(encoding="utf-8").strip()
    assert len(token) >= 32
    with TestClient(app) as client:
        assert client.get(f"{PREFIX}/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.post(
            f"{PREFIX}/reload", headers={"Authorization": f"Bearer {token}"}, json={}
        ).is_success

    again = build_app(tmp_path, database_url, admin_token=None, read_token=None)[1]
    assert again.token_created is False
    assert again.tokens.admin == token
    assert token not in _log_output(caplog)
    assert token not in repr(lifecycle.tokens)


def test_the_generated_encryption_key_file_is_0600_and_secrets_are_stored_sealed(tmp_path: Path) -> None:
    with serving(tmp_path, f"sqlite:///{tmp_path / 'confledger.db'}") as service:
        key_file = tmp_path / "confledger.db.key"
        assert key_file.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        stored = repr(_dump_database(service)[0]["config_versions"])
    assert OPENAI_KEY not in stored
    assert "openai_api_key" in stored


def test_a_lost_key_file_fails_start_up_with_a_clear_error(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'confledger.db'}"
    with serving(tmp_path, database_url) as service:
        assert service.reloader.current_hash == full_hash_of(BASE, service.log)
    (tmp_path / "confledger.db.key").unlink()

    with pytest.raises(SecretKeyError) as lost, serving(tmp_path, database_url):
        pytest.fail("started without the key that seals the log's secrets")

    assert "key file" in str(lost.value)
    assert "CONFLEDGER_ENCRYPTION_KEY" in str(lost.value)
    assert not (tmp_path / "confledger.db.key").exists()  # no fresh key was made to paper over the loss


def test_a_different_key_fails_start_up_instead_of_restoring_empty_secrets(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'confledger.db'}"
    with serving(tmp_path, database_url, encryption_key=SecretCipher.generate_key()):
        pass

    with (
        pytest.raises(SecretKeyError),
        serving(tmp_path, database_url, encryption_key=SecretCipher.generate_key()),
    ):
        pytest.fail("started with a key that cannot open the log's secrets")
