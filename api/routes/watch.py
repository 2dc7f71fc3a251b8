"""``GET /watch``: applied changes as Server-Sent Events, for dashboards, sidecars and other outsiders.

A client that reconnects with ``Last-Event-ID`` (an event's ``id`` is its log position) first gets every
change after that position from the log, then the live feed, without a gap or a repeat at the seam: it is
subscribed to the feed before the log is read, and whatever the feed brings that the replay already gave
(its position is not newer) is skipped.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, status
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from confledger.api.deps import ReaderCaller, ReloaderDep
from confledger.api.errors import ApiError
from confledger.api.limits import GuardedRoute
from confledger.api.reloader import ConfigReloader
from confledger.api.schemas import MAX_POSITION, ErrorResponse, ValidationErrorResponse
from confledger.api.watch import AppliedChange, Subscription, replay_changes

__all__ = ["WatchEvent", "router"]

router = APIRouter(tags=["watch"], route_class=GuardedRoute)

EVENT_NAME = "config.applied"
# How long a browser's EventSource waits before it reconnects (it sends Last-Event-ID then).
RETRY_MS = 2_000


class WatchEvent(BaseModel):
    """The JSON ``data`` of one ``config.applied`` event on the stream (its ``id`` is ``position``)."""

    position: int = Field(description="the log position of the config.applied event; also the SSE id")
    hash: str = Field(description="the applied config's hash (first 16 hex digits)")
    previous_hash: str | None = Field(description="the config it replaced (first 16 hex digits)")
    applied_at: datetime
    changed_paths: list[str] = Field(description="dotted paths that changed; never a value")
    changes_omitted: int = Field(description="changed paths not listed (CONFLEDGER_MAX_RECORDED_ITEMS)")
    actor: str = Field(description="who caused it: token role, signal, file_watch, cli claim, system")
    instance_id: str = Field(description="the instance that decided it")


_STREAM_DESCRIPTION = (
    "`text/event-stream`. Each applied change is one event: `id` = its log position, "
    f"`event: {EVENT_NAME}`, `data` = one JSON object as the `WatchEvent` schema. Comments (lines "
    "starting with `:`) keep an idle connection alive. Reconnect with `Last-Event-ID` to get every "
    "change after that position, none twice. A client that falls more than CONFLEDGER_WATCH_QUEUE_SIZE "
    "changes behind is disconnected; it reconnects the same way."
)


@router.get(
    "/watch",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": _STREAM_DESCRIPTION,
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    # What each event's data holds, for clients to generate a type from (OpenAPI 3.1
                    # has no standard place for the items of a stream; 3.2 calls it itemSchema).
                    "x-sse-data-schema": WatchEvent.model_json_schema(),
                }
            },
        },
        422: {"model": ValidationErrorResponse, "description": "Last-Event-ID is not a log position"},
        503: {
            "model": ErrorResponse,
            "description": "CONFLEDGER_WATCH_MAX_STREAMS streams are open (watch_streams_full)",
        },
    },
)
async def watch(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_POSITION,
            description="resume after this position: every change after it, then live",
        ),
    ] = None,
) -> EventSourceResponse:
    """Each applied config change as it lands, whichever instance decided it (Server-Sent Events)."""
    settings = reloader.settings
    feed = reloader.changes
    # Taken here, before the answer starts, so a full instance can still say 503 rather than a 200 that
    # ends at once; a stream each client holds open costs a descriptor and a queue.
    subscription = feed.open(settings.watch_max_streams)
    if subscription is None:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"{settings.watch_max_streams} /watch streams are open on this instance "
            "(CONFLEDGER_WATCH_MAX_STREAMS); retry later",
            "watch_streams_full",
            headers={"Retry-After": str(RETRY_MS // 1000)},
        )
    stream = _events(reloader, last_event_id, subscription)
    # Given back when the stream ends, and also when it never starts (the client left before the
    # answer did): a generator that never ran has no ``finally`` to run, but it is collected.
    weakref.finalize(stream, feed.unsubscribe, subscription)
    return EventSourceResponse(
        stream,
        ping=settings.watch_ping_interval,
        send_timeout=settings.watch_send_timeout,
        sep="\n",
    )


async def _events(
    reloader: ConfigReloader, after: int | None, subscription: Subscription
) -> AsyncIterator[ServerSentEvent]:
    try:
        last = 0
        if after is not None:
            head = await anyio.to_thread.run_sync(reloader.log.head)
            if after > head:
                # A position past the log's end: the database was restored from a backup, or the client
                # watched another log. What it took for current may not be: it is sent the change that
                # made the current config, then every later one (skipping to the head would leave it
                # blind until the log passes its old position).
                current = reloader.current
                yield ServerSentEvent(
                    comment=f"reset: Last-Event-ID {after} is past the log's end ({head}); "
                    "resuming from the current config"
                )
                after = 0 if current is None else current.position - 1
            last = after
            async for change in replay_changes(reloader.log, after):
                yield _event(change)
                last = change.position
        async for change in subscription:
            if change.position <= last:
                continue
            yield _event(change)
            last = change.position
        if subscription.overflowed:
            yield ServerSentEvent(comment="dropped: too far behind; reconnect with Last-Event-ID")
    finally:
        reloader.changes.unsubscribe(subscription)


def _event(change: AppliedChange) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(change.data(), separators=(",", ":")),
        id=str(change.position),
        event=EVENT_NAME,
        retry=RETRY_MS,
    )
