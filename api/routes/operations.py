"""Reloads, rollbacks and the operations they leave in the log."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response

from confledger.api.deps import (
    AdminCaller,
    ReaderCaller,
    ReloaderDep,
    lifecycle_of,
    pages_of,
)
from confledger.api.errors import STATUS_BY_CODE, ApiError, error_response
from confledger.api.limits import GuardedRoute, arrived
from confledger.api.pages import CONDITIONAL, NOT_MODIFIED, conditional_response, if_none_match, rendered
from confledger.api.paths import resolve_source
from confledger.api.schemas import (
    MAX_POSITION,
    ErrorResponse,
    EventOut,
    HistoryResponse,
    OperationDetail,
    OperationOut,
    RefusedOperationOut,
    ReloadRequest,
    RollbackRequest,
    history_json,
    operation_json,
)
from confledger.api.telemetry import caller_trace_context
from confledger.projections.history import HistoryProjection, window_page
from confledger.store import OperationKind, SourceNotAllowed, Trigger
from confledger.store.outcome import ReloadOperation, ReloadStatus, build_operation
from confledger.store.sources.reading import GuardedSource

__all__ = ["router"]

router = APIRouter(tags=["operations"], route_class=GuardedRoute)


def _conflict(operation: ReloadOperation) -> JSONResponse | None:
    """409 when the operation could not run or could not apply: another one is running here, or another
    instance applied a config after this one started (the log refused a stale overwrite)."""
    if operation.rejected:
        detail = operation.message
    elif operation.reason == "concurrency_conflict":
        detail = "; ".join(filter(None, [operation.message, operation.error_message]))
    else:
        return None
    return error_response(
        status.HTTP_409_CONFLICT,
        detail,
        operation.reason or "operation_rejected",  # a refusal always records its reason
        running_operation_id=operation.running_operation_id,
        operation_id=operation.operation_id,
    )


def _answer(operation: ReloadOperation) -> Response:
    """The operation as ``OperationOut`` describes it, rendered once: the bytes ``operation_json`` keeps
    for the history pages that show it next, where FastAPI would validate the model again and encode it
    through ``jsonable_encoder`` and ``json.dumps`` (the model stays the route's ``response_model``, for
    OpenAPI)."""
    return Response(operation_json(operation), media_type="application/json")


@router.post(
    "/reload",
    response_model=OperationOut,
    responses={
        400: {"model": ErrorResponse, "description": "the body is not JSON text"},
        403: {"model": ErrorResponse},
        408: {
            "model": ErrorResponse,
            "description": "the body did not arrive within CONFLEDGER_REQUEST_TIMEOUT",
        },
        409: {
            "model": ErrorResponse,
            "description": "another operation is running, or another instance applied a config meanwhile",
        },
        503: {"model": ErrorResponse, "description": "the log failed its integrity check (integrity_failed)"},
    },
)
async def reload(
    http: Request, reloader: ReloaderDep, caller: AdminCaller, request: ReloadRequest | None = None
) -> object:
    """Reload the configuration (no body: as `{}`); a failed validation answers 200 with success false."""
    request = request or ReloadRequest()
    source: GuardedSource | None = None
    if request.config_source is not None:
        lifecycle = lifecycle_of(http)
        try:
            # The answer carries the allow-list into the load, which checks the file it opened.
            source = resolve_source(
                request.config_source, allowed_dirs=lifecycle.allowed_dirs, base_dir=lifecycle.base_dir
            )
        except SourceNotAllowed as exc:
            await reloader.runner.reject_request(
                kind=OperationKind.RELOAD,
                trigger=caller.trigger,
                actor=caller.actor,
                reason=exc.code,
                message=exc.message,
                source=request.config_source[:200],
                client=caller.client,
                received=arrived(http),
            )
            raise ApiError(status.HTTP_403_FORBIDDEN, exc.message, exc.code) from None
    with caller_trace_context(http.headers):
        operation = await reloader.reload_config(
            caller.trigger,
            config_source=source,
            force=request.force,
            dry_run=request.dry_run,
            actor=caller.actor,
            client=caller.client,
            received=arrived(http),
        )
    conflict = _conflict(operation)
    if conflict is not None:
        return conflict
    if operation.reason == SourceNotAllowed.code:  # the opened file lay outside (a swapped symlink)
        return error_response(
            status.HTTP_403_FORBIDDEN,
            operation.error_message or "",
            SourceNotAllowed.code,
            operation_id=operation.operation_id,
        )
    return _answer(operation)


@router.post(
    "/rollback",
    response_model=OperationOut,
    responses={
        400: {
            # A refused rollback is an operation; a body that is not JSON never became one.
            "model": RefusedOperationOut | ErrorResponse,
            "description": "the rollback failed (or the prefix is ambiguous), or the body is not JSON text",
        },
        408: {
            "model": ErrorResponse,
            "description": "the body did not arrive within CONFLEDGER_REQUEST_TIMEOUT",
        },
        404: {"model": RefusedOperationOut, "description": "no applied config has that hash"},
        409: {
            "model": RefusedOperationOut | ErrorResponse,
            "description": "another operation is running, another instance applied a config meanwhile, or "
            "the target's stored body no longer matches its hash (config_body_mismatch)",
        },
        503: {"model": ErrorResponse, "description": "the log failed its integrity check (integrity_failed)"},
    },
)
async def rollback(
    http: Request, reloader: ReloaderDep, caller: AdminCaller, request: RollbackRequest | None = None
) -> object:
    """Roll back to the previous config (no body, or `{}`) or to any applied hash (a unique 7+ hex prefix)."""
    request = request or RollbackRequest()
    with caller_trace_context(http.headers):
        operation = await reloader.rollback_config(
            request.target_hash,
            trigger=caller.trigger,
            actor=caller.actor,
            client=caller.client,
            received=arrived(http),
        )
    conflict = _conflict(operation)
    if conflict is not None:
        return conflict
    if not operation.success:
        code = STATUS_BY_CODE.get(operation.reason or "", status.HTTP_400_BAD_REQUEST)
        # 409 config_body_mismatch: the stored body was edited in the database, nothing was applied.
        if code not in (status.HTTP_404_NOT_FOUND, status.HTTP_400_BAD_REQUEST, status.HTTP_409_CONFLICT):
            code = status.HTTP_400_BAD_REQUEST
        return JSONResponse(RefusedOperationOut.refused(operation).model_dump(mode="json"), status_code=code)
    return _answer(operation)


@router.get("/history", response_model=HistoryResponse, responses=NOT_MODIFIED, openapi_extra=CONDITIONAL)
async def history(
    request: Request,
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_POSITION, description="position cursor from next_before")
    ] = None,
    trigger: Annotated[Trigger | None, Query()] = None,
    status_: Annotated[ReloadStatus | None, Query(alias="status")] = None,
) -> Response:
    """Operations newest first, paged with `before`, filtered by trigger and status (ETag: 304 if unchanged)."""
    trigger_value = None if trigger is None else trigger.value
    status_value = None if status_ is None else status_.value

    # A page of the in-memory window is kept as rendered until the projections move; a page beyond it
    # is read from the log on a worker thread each time (so it says when the log is unreachable).
    pages = pages_of(request)
    query = ("history", limit, before, trigger_value, status_value)
    positions, kept = pages.get(query)
    if kept is not None:
        return conditional_response(kept, if_none_match(request))
    window = reloader.projections.get(HistoryProjection.name)
    assert isinstance(window, HistoryProjection)
    operations = window_page(window, limit, before=before, trigger=trigger_value, status=status_value)
    from_window = operations is not None
    if operations is None:
        operations = await reloader.aget_reload_history(
            limit, before=before, trigger=trigger_value, status=status_value
        )
    total = reloader.count_operations(trigger=trigger_value, status=status_value)
    # Encoded from each operation's kept JSON, where a HistoryResponse would build and dump all of them
    # again after every change (FastAPI's response_model would also validate them once more).
    page = history_json(
        operations,
        total_count=max(total, len(operations)),
        limit=limit,
        next_before=operations[-1].first_position if len(operations) == limit else None,
    )
    shown = rendered(page)
    if from_window:
        pages.keep(query, positions, shown)
    return conditional_response(shown, if_none_match(request))


@router.get(
    "/operations/{operation_id}", response_model=OperationDetail, responses={404: {"model": ErrorResponse}}
)
async def operation_detail(
    operation_id: Annotated[str, PathParam(pattern=r"^[0-9a-fA-F-]{32,36}$")],
    reloader: ReloaderDep,
    _caller: ReaderCaller,
) -> OperationDetail:
    """One operation and every event it recorded."""
    try:
        events = await anyio.to_thread.run_sync(reloader.log.read_operation, operation_id)
    except ValueError:
        raise ApiError(status.HTTP_404_NOT_FOUND, "no such operation", "unknown_operation") from None
    if not events:
        raise ApiError(status.HTTP_404_NOT_FOUND, "no such operation", "unknown_operation")
    return OperationDetail(
        operation=OperationOut.of(build_operation(events)), events=[EventOut.of(event) for event in events]
    )
