"""Mapping store errors to HTTP: a stable ``detail`` and ``code``, never a traceback."""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse

from confledger.store import ConfledgerError

__all__ = ["STATUS_BY_CODE", "http_error", "store_error_handler"]

logger = logging.getLogger(__name__)

STATUS_BY_CODE = {
    "unknown_config_hash": status.HTTP_404_NOT_FOUND,
    "no_previous_config": status.HTTP_400_BAD_REQUEST,
    "ambiguous_hash_prefix": status.HTTP_400_BAD_REQUEST,
    "invalid_hash_prefix": status.HTTP_400_BAD_REQUEST,
    "source_not_allowed": status.HTTP_403_FORBIDDEN,
    "operation_in_progress": status.HTTP_409_CONFLICT,
    "concurrency_conflict": status.HTTP_409_CONFLICT,
    "store_unavailable": status.HTTP_503_SERVICE_UNAVAILABLE,
    "store_read_only": status.HTTP_503_SERVICE_UNAVAILABLE,
}

# What a client is told about a failure on the server's side. The store's own message names the
# database URL and driver details: those go to the service's log, not into a response.
_PUBLIC_DETAIL = {
    "store_unavailable": "the event log is unavailable; retry later",
    "store_read_only": "the event log is read-only; retry later",
}
_INTERNAL_DETAIL = "internal error in the configuration store"


def _status_and_detail(exc: ConfledgerError) -> tuple[int, str]:
    code = STATUS_BY_CODE.get(exc.code, status.HTTP_500_INTERNAL_SERVER_ERROR)
    if code < status.HTTP_500_INTERNAL_SERVER_ERROR:
        return code, exc.message
    return code, _PUBLIC_DETAIL.get(exc.code, _INTERNAL_DETAIL)


def http_error(exc: ConfledgerError) -> HTTPException:
    code, detail = _status_and_detail(exc)
    return HTTPException(code, detail=detail)


async def store_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Any ``ConfledgerError`` a route did not handle: JSON ``{"detail", "code"}`` with the mapped status.

    Without it, an unreachable database turned every endpoint into a plain-text 500.
    """
    assert isinstance(exc, ConfledgerError)
    code, detail = _status_and_detail(exc)
    if code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        logger.error("%s %s failed (%s): %s", request.method, request.url.path, exc.code, exc.message)
    return JSONResponse({"detail": detail, "code": exc.code}, status_code=code)
