"""Config versions: the current one, any stored one, and the difference between two."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import Response

from confledger.api.deps import ReaderCaller, ReloaderDep, pages_of
from confledger.api.errors import ApiError, http_error
from confledger.api.limits import GuardedRoute
from confledger.api.pages import CONDITIONAL, NOT_MODIFIED, conditional_response, if_none_match
from confledger.api.schemas import (
    ChangeOut,
    CurrentResponse,
    DiffResponse,
    ErrorResponse,
    VersionResponse,
    short,
)
from confledger.projections.current import CurrentConfig
from confledger.projections.timeline import diff_configs
from confledger.store import ConfledgerError
from confledger.store.log import StoredConfig
from confledger.store.secrets import find_secret_paths, redact
from confledger.store.validation import dump_revealed

__all__ = ["router"]

router = APIRouter(tags=["versions"], route_class=GuardedRoute)

_LOOKUP_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "not a hash, or an ambiguous prefix"},
    404: {"model": ErrorResponse, "description": "no stored config has that hash"},
}
HashPath = Annotated[str, PathParam(min_length=1, max_length=64)]


def _current_body(value: CurrentConfig) -> bytes:
    # The dump and the secret walk were most of the route's time: done once per applied config.
    return (
        CurrentResponse(
            hash=value.short_hash,
            full_hash=value.hash,
            applied_at=value.applied_at,
            config=redact(dump_revealed(value.config), find_secret_paths(value.config)),
        )
        .model_dump_json()
        .encode()
    )


@router.get(
    "/current",
    response_model=CurrentResponse,
    responses={**NOT_MODIFIED, 404: {"model": ErrorResponse}},
    openapi_extra=CONDITIONAL,
)
async def current(request: Request, reloader: ReloaderDep, _caller: ReaderCaller) -> Response:
    """The current config (secrets shown as **********; ETag: 304 if unchanged)."""
    value = reloader.current
    if value is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, "no configuration has been applied yet", "no_config_applied"
        )
    page = pages_of(request).of_snapshot(value, lambda: _current_body(value))
    return conditional_response(page, if_none_match(request))


@router.get("/versions/{config_hash}", response_model=VersionResponse, responses=_LOOKUP_ERRORS)
async def version(config_hash: HashPath, reloader: ReloaderDep, _caller: ReaderCaller) -> VersionResponse:
    """One stored config by hash or unique prefix (secrets shown as **********)."""

    def load() -> tuple[StoredConfig, bool]:
        stored = reloader.log.get_config(config_hash, reveal=False)
        return stored, reloader.log.was_applied(stored.hash)

    try:
        stored, applied = await anyio.to_thread.run_sync(load)
    except ConfledgerError as exc:
        raise http_error(exc) from None
    return VersionResponse.of(stored, applied=applied)


@router.get("/diff", response_model=DiffResponse, responses=_LOOKUP_ERRORS)
async def diff(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    from_hash: Annotated[str, Query(alias="from", min_length=1, max_length=64)],
    to_hash: Annotated[str, Query(alias="to", min_length=1, max_length=64)],
) -> DiffResponse:
    """What changed between two configs, as dotted paths (secret values shown as **********)."""

    def compute() -> tuple[str, str, list[ChangeOut]]:
        old = reloader.log.resolve_hash(from_hash)
        new = reloader.log.resolve_hash(to_hash)
        changes = diff_configs(reloader.log, old, new)
        return old, new, [ChangeOut(**change.as_dict()) for change in changes]

    try:
        old, new, changes = await anyio.to_thread.run_sync(compute)
    except ConfledgerError as exc:
        raise http_error(exc) from None
    return DiffResponse(from_hash=short(old) or "", to_hash=short(new) or "", changes=changes)
