"""The HTTP API: one router module per resource, assembled under ``/api/v1/config``."""

from __future__ import annotations

from fastapi import APIRouter

from confledger.api.routes import audit, file_watch, health, operations, status, versions, watch
from confledger.api.schemas import ErrorResponse

__all__ = ["build_config_router", "health"]

_AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
    403: {"model": ErrorResponse, "description": "the read token on a mutating endpoint"},
    413: {
        "model": ErrorResponse,
        "description": "the request body is larger than CONFLEDGER_MAX_REQUEST_BYTES",
    },
    503: {"model": ErrorResponse, "description": "the reloader is not running"},
}


def build_config_router() -> APIRouter:
    router = APIRouter(responses=_AUTH_RESPONSES)
    for module in (operations, status, versions, audit, file_watch, watch):
        router.include_router(module.router)
    return router
