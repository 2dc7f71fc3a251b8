"""Mapping store errors to HTTP: a stable ``detail`` and ``code``, never a traceback."""

from __future__ import annotations

from fastapi import HTTPException, status

from store import StoreError

__all__ = ["STATUS_BY_CODE", "http_error"]

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


def http_error(exc: StoreError) -> HTTPException:
    code = STATUS_BY_CODE.get(exc.code, status.HTTP_500_INTERNAL_SERVER_ERROR)
    return HTTPException(code, detail=exc.message)
