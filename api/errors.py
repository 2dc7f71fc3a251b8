"""Errors as HTTP answers: a stable ``detail`` and ``code``, never a traceback, never the input back.

Every error confledger answers carries a ``code`` a client can branch on (the English ``detail`` may be
reworded): ``ApiError`` for what a route or dependency refuses (handled by ``api_error_handler``, which
``setup_configuration_lifecycle`` registers for that class alone, so the host app's own
``HTTPException``s answer as they always did), ``store_error_handler`` for a ``ConfledgerError`` a route
did not handle, ``validation_error_response`` (``invalid_request``) for a request FastAPI refused, and
the request guard's own answers (``api.limits``). In the app ``confledger serve`` runs, where every route
is confledger's, ``routing_error_handler`` gives the router's own 404 and 405 their codes too, and
``internal_error_handler`` an unexpected 500 its ``internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from confledger.api.schemas import ErrorResponse, InvalidField, ValidationErrorResponse
from confledger.store import ConfledgerError
from confledger.store.errors import IntegrityFailed

__all__ = [
    "STATUS_BY_CODE",
    "ApiError",
    "api_error_handler",
    "error_response",
    "http_error",
    "internal_error_handler",
    "routing_error_handler",
    "store_error_handler",
    "validation_error_response",
]

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
    "integrity_failed": status.HTTP_503_SERVICE_UNAVAILABLE,
    "config_body_mismatch": status.HTTP_409_CONFLICT,
    "hash_scheme_too_new": status.HTTP_409_CONFLICT,
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
    if isinstance(exc, IntegrityFailed):
        # What to do depends on what failed: a restore after a change, an upgrade for a newer release's body.
        return code, (
            "the event log failed its integrity check: reloads and rollbacks are refused; "
            + IntegrityFailed.recovery_for(exc.reason)
        )
    return code, _PUBLIC_DETAIL.get(exc.code, _INTERNAL_DETAIL)


class ApiError(HTTPException):
    """A refusal with its ``code``: answered as ``{"detail", "code"}`` (``ErrorResponse``)."""

    def __init__(
        self, status_code: int, detail: str, code: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail=detail, headers=dict(headers) if headers else None)
        self.code = code


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """``ApiError`` as JSON ``{"detail", "code"}``, with its headers (a 401's ``WWW-Authenticate``)."""
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, str(exc.detail), exc.code, headers=exc.headers)


# The router's own refusals: a path no route has (a typo in a client's URL), a method the path does not take.
_ROUTING_CODES = {
    status.HTTP_404_NOT_FOUND: "not_found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "method_not_allowed",
}


async def routing_error_handler(request: Request, exc: Exception) -> Response:
    """The router's 404 and 405 (and the docs' missing files) as ``{"detail", "code"}``, the 405 with
    its ``Allow``; any other ``HTTPException`` as FastAPI answers it.

    Registered only by ``create_app``: an app that embeds confledger keeps its own answers to its own
    paths."""
    assert isinstance(exc, StarletteHTTPException)
    code = _ROUTING_CODES.get(exc.status_code)
    if code is None:
        return await http_exception_handler(request, exc)
    return error_response(exc.status_code, str(exc.detail), code, headers=exc.headers)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """Anything no other handler took, as ``{"detail", "code": "internal_error"}`` rather than
    Starlette's plain-text 500: a client branches on the code as on every other error.

    Registered only by ``create_app``. Starlette raises the exception again once this answer is sent, so
    the traceback still reaches the service's log; the answer says nothing of it."""
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        "internal error; the service's log has the details",
        "internal_error",
    )


def http_error(exc: ConfledgerError) -> ApiError:
    status_code, detail = _status_and_detail(exc)
    return ApiError(status_code, detail, exc.code)


async def store_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Any ``ConfledgerError`` a route did not handle: JSON ``{"detail", "code"}`` with the mapped status.

    Without it, an unreachable database turned every endpoint into a plain-text 500.
    """
    assert isinstance(exc, ConfledgerError)
    code, detail = _status_and_detail(exc)
    if code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        logger.error("%s %s failed (%s): %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(code, detail, exc.code)


def error_response(
    status_code: int,
    detail: str,
    code: str,
    *,
    close: bool = False,
    headers: Mapping[str, str] | None = None,
    **operations: str | None,
) -> JSONResponse:
    """An ``ErrorResponse``. ``close`` ends the connection after the answer, so a body the service
    refused to read is not drained from the socket afterwards. ``operations``: the ``operation_id`` the
    refusal recorded and the ``running_operation_id`` it met, answered (null too) when given."""
    content = ErrorResponse(detail=detail, code=code, **operations).model_dump(
        mode="json", exclude_unset=True
    )
    answer_headers = dict(headers or {})
    if close:
        answer_headers["Connection"] = "close"
    return JSONResponse(content, status_code=status_code, headers=answer_headers)


# A 422 names what was wrong, not what was sent: FastAPI's default echoes every input (50 MB in, 50 MB
# out, and a NaN or a lone surrogate in it made the echo itself fail as a plain-text 500).
MAX_REPORTED_ERRORS = 20
MAX_LOCATION_PART = 64
MAX_MESSAGE = 200


def _bounded(text: object, limit: int) -> str:
    value = str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 shape (``detail``: a list of ``type``, ``loc``, ``msg``) without ``input`` or
    ``ctx``, each part bounded, at most ``MAX_REPORTED_ERRORS`` errors; ``code`` is ``invalid_request``."""
    errors = exc.errors()
    detail = [
        InvalidField(
            type=_bounded(error.get("type", "invalid"), MAX_LOCATION_PART),
            loc=[
                part if isinstance(part, int) else _bounded(part, MAX_LOCATION_PART)
                for part in error.get("loc", ())
            ],
            msg=_bounded(error.get("msg", ""), MAX_MESSAGE),
        )
        for error in errors[:MAX_REPORTED_ERRORS]
    ]
    answer = ValidationErrorResponse(detail=detail, code="invalid_request")
    return JSONResponse(answer.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
