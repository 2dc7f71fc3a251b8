"""Turning file watching on and off at run time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from confledger.api.deps import AdminCaller, ReloaderDep
from confledger.api.errors import ApiError
from confledger.api.limits import GuardedRoute
from confledger.api.schemas import ErrorResponse, FileWatchDisabledResponse, FileWatchEnabledResponse

__all__ = ["router"]

router = APIRouter(prefix="/file-watch", tags=["file watching"], route_class=GuardedRoute)


@router.post("/enable", response_model=FileWatchEnabledResponse, responses={400: {"model": ErrorResponse}})
async def enable(
    reloader: ReloaderDep,
    _caller: AdminCaller,
    poll_interval: Annotated[
        float,
        Query(
            ge=0.1,
            le=60.0,
            description="seconds between looks at the file when polling; with inotify, how often the "
            "file is also checked by stat (at least 0.5 s), for changes no event reports",
        ),
    ] = 1.0,
    force_polling: Annotated[bool, Query(description="poll instead of inotify")] = False,
) -> FileWatchEnabledResponse:
    """Reload automatically whenever the config file changes."""
    try:
        await reloader.enable_file_watching(poll_interval, force_polling=force_polling)
    except (ValueError, RuntimeError) as exc:
        raise ApiError(status.HTTP_400_BAD_REQUEST, str(exc), "file_watch_refused") from None
    return FileWatchEnabledResponse(
        file_watching_enabled=True,
        poll_interval_seconds=poll_interval,
        config_source=reloader.config_source,
        message=f"File watching enabled ({reloader.file_watch_mode})",
        mode=reloader.file_watch_mode or "inotify",
    )


@router.post("/disable", response_model=FileWatchDisabledResponse)
async def disable(reloader: ReloaderDep, _caller: AdminCaller) -> FileWatchDisabledResponse:
    """Stop watching the config file."""
    was_enabled = reloader.file_watching_enabled
    await reloader.disable_file_watching()
    return FileWatchDisabledResponse(
        file_watching_enabled=False,
        message="File watching disabled" if was_enabled else "File watching was not enabled",
    )
