"""Schemathesis against the app's own OpenAPI schema, with the admin token: no 5xx, no response that
breaks the schema it publishes.

The schema is read from the app (``app.openapi()``, no server needed) when the module loads, so each
operation becomes its own test. Requests go through one running app (real lifespan, real SQLite log)
via Starlette's TestClient, which reports a 500 as a response instead of raising, so the checks judge it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    Service,
    clear_confledger_environment,
    serving,
    unstarted_app,
)

# As `confledger serve` builds it: the config API, health, and the Prometheus endpoint.
_SCHEMA_APP = unstarted_app(metrics=True)
OPENAPI = _SCHEMA_APP.openapi()
# GET /watch is a stream that ends only when the client leaves or the service stops, which Starlette's
# TestClient (it collects the whole body) cannot do: tests/integration/api/test_watch.py speaks to it
# through a real server.
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(path="/api/v1/config/watch")

CHECKS = [not_a_server_error, response_schema_conformance]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# requests-style keyword -> httpx-style keyword, for the few that differ
_HTTPX_NAMES = {"data": "content"}
_DROPPED = {"url", "method", "verify", "allow_redirects", "timeout", "stream", "cert", "proxies"}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with pytest.MonkeyPatch.context() as patch:
        clear_confledger_environment(patch)
        directory = tmp_path_factory.mktemp("schemathesis")
        with serving(
            directory, f"sqlite:///{directory / 'confledger.db'}", raise_server_exceptions=False, metrics=True
        ) as service:
            assert service.app.openapi() == OPENAPI  # the schema under test is the one this app serves
            yield service


def send(client: TestClient, case: Any) -> Any:
    """Send a generated case through the TestClient (httpx) using schemathesis's own serialisation."""
    prepared: dict[str, Any] = case.as_transport_kwargs(base_url=str(client.base_url), headers=AUTH)
    method, url = prepared["method"], prepared["url"]
    arguments = {_HTTPX_NAMES.get(key, key): value for key, value in prepared.items() if key not in _DROPPED}
    if not arguments.get("cookies"):
        arguments.pop("cookies", None)  # httpx deprecates per-request cookies; none are generated here
    if isinstance(arguments.get("content"), dict):
        arguments["data"] = arguments.pop("content")  # a form body, not raw bytes
    if arguments.get("headers"):
        # A header value is bytes on the wire. httpx encodes a str value as ASCII and refuses the rest,
        # which schemathesis generates for a header parameter (If-None-Match: "\x80"): sent as UTF-8.
        arguments["headers"] = {
            name: value if not isinstance(value, str) or value.isascii() else value.encode("utf-8")
            for name, value in arguments["headers"].items()
        }
    return client.request(method, url, **arguments)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_no_server_error_and_every_response_matches_the_schema(case: Any, running: Service) -> None:
    response = send(running.client, case)
    case.validate_response(response, checks=CHECKS)
