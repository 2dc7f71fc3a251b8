"""The raw audit stream, the chain check, and incident replay."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, status

from confledger.api.deps import ReaderCaller, ReloaderDep
from confledger.api.errors import ApiError
from confledger.api.limits import GuardedRoute
from confledger.api.schemas import (
    MAX_POSITION,
    ErrorResponse,
    EventOut,
    EventsResponse,
    OperationOut,
    TimelineResponse,
    VerifyResponse,
)
from confledger.projections.timeline import incident_replay
from confledger.store.database import as_utc

__all__ = ["router"]

router = APIRouter(tags=["audit"], route_class=GuardedRoute)

# The most events one /timeline answer is made from (about 6,000 reloads): the newest of the window.
MAX_TIMELINE_EVENTS = 50_000


@router.get("/events", response_model=EventsResponse)
async def events(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    after: Annotated[int, Query(ge=0, le=MAX_POSITION, description="return events after this position")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventsResponse:
    """Events after a position, oldest first: the raw, hash-chained audit stream."""

    def read() -> tuple[list[EventOut], int]:
        found = reloader.log.read(after, limit)
        return [EventOut.of(event) for event in found], reloader.log.head()

    found, head = await anyio.to_thread.run_sync(read)
    return EventsResponse(events=found, next_after=found[-1].position if found else after, head=head)


@router.get("/verify", response_model=VerifyResponse)
async def verify(reloader: ReloaderDep, _caller: ReaderCaller) -> VerifyResponse:
    """Recompute the whole hash chain and name the first failure (on a keyed log it also stops writes)."""
    return VerifyResponse.of(await reloader.verify())


@router.get("/timeline", response_model=TimelineResponse, responses={400: {"model": ErrorResponse}})
async def timeline(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    since: Annotated[datetime | None, Query(description="ISO 8601 start of the window")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601 end of the window")] = None,
) -> TimelineResponse:
    """Incident replay: operations in a time window with per-service outcomes and config changes."""
    since, until = _in_utc("since", since), _in_utc("until", until)
    if since is not None and until is not None and since > until:
        raise ApiError(status.HTTP_400_BAD_REQUEST, "since is after until", "invalid_time_window")
    # Bounded: a read token must not be able to make one request read and answer a million events.
    incident = await anyio.to_thread.run_sync(
        lambda: incident_replay(reloader.log, since, until, max_events=MAX_TIMELINE_EVENTS)
    )
    return TimelineResponse(
        since=since,
        until=until,
        operations=[OperationOut.of(op) for op in incident.operations],
        lifecycle=incident.lifecycle,
        config_changes=incident.config_changes,
        truncated=incident.truncated,
    )


def _in_utc(name: str, moment: datetime | None) -> datetime | None:
    """A window bound in UTC (a naive one is taken to be UTC, as the log stores times).

    Comparing a naive bound with an aware one, or shifting 0001-01-01T00:00+14:00 into UTC, would
    otherwise raise inside the request: the caller gets a 400 naming the bound instead.
    """
    if moment is None:
        return None
    try:
        return as_utc(moment)
    except OverflowError:
        raise ApiError(
            status.HTTP_400_BAD_REQUEST,
            f"{name} is out of range once converted to UTC",
            "invalid_time_window",
        ) from None
