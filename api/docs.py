"""The service's own pages: ``/docs`` (Swagger UI from assets installed with confledger, so it works with no
network) and ``/`` (where to go from here).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

__all__ = ["ASSETS_PATH", "add_index", "add_offline_docs"]

ASSETS_PATH = "/docs/assets"
# What /docs loads, and the source maps a browser's tools ask for beside them.
_ASSETS = frozenset(
    {"swagger-ui-bundle.js", "swagger-ui-bundle.js.map", "swagger-ui.css", "swagger-ui.css.map"}
)


class _DocsAssets(StaticFiles):
    """swagger-ui-bundle's directory, of which only the files /docs uses are served.

    The rest of it is Swagger UI's stock distribution: its ``index.html`` is a second, public Swagger UI
    that fetches the petstore example from petstore.swagger.io, which the docs of an offline service
    must not do, and its template and ES bundles are nothing /docs needs.
    """

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path not in _ASSETS:
            return "", None
        return super().lookup_path(path)


def add_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, its JavaScript and CSS served by the app itself (swagger-ui-bundle)."""
    app.mount(ASSETS_PATH, _DocsAssets(directory=swagger_ui_path), name="swagger-ui-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url="data:,",  # FastAPI's default favicon lives on the web
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def add_index(app: FastAPI, *, docs: bool) -> None:
    """``GET /``: a small map of the service instead of a 404. Public, and shows nothing about the config."""
    index: dict[str, Any] = {
        "service": "confledger",
        "api": "/api/v1/config",
        "health": "/healthz",
        "ready": "/readyz",
    }
    if docs:
        index["docs"] = "/docs"
        index["openapi"] = app.openapi_url

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return index
