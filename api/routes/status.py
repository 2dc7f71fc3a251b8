"""Status, statistics and backups, served from the in-memory projections.

No database round trip and no worker-thread hop per request: the projections fold every event this
instance appends as it commits, and the follower (``store/follower.py``) folds what other instances of
a fleet append as it applies their changes; ``log_head`` is the last position this instance has folded.
``/fleet`` alone reads the database per request (the heartbeat rows).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from confledger.api.deps import ReaderCaller, ReloaderDep, lifecycle_of
from confledger.api.fleet_judge import FleetJudge
from confledger.api.limits import GuardedRoute
from confledger.api.schemas import (
    BackupsResponse,
    FleetJudgingOut,
    FleetResponse,
    FleetThresholdOut,
    ReloadStatistics,
    SourceStateOut,
    StatusResponse,
    short,
)
from confledger.store.times import utc_text

__all__ = ["router"]

router = APIRouter(tags=["status"], route_class=GuardedRoute)


@router.get("/status", response_model=StatusResponse)
async def get_status(request: Request, reloader: ReloaderDep, _caller: ReaderCaller) -> StatusResponse:
    """The reloader's state: current hash, listeners, backups, watching, signals, drift, the source as
    last read (``source_state``: whether it differs from the applied config, and why) and the fleet
    threshold's open judgements."""
    # The three figures straight from the stats projection, rounded as its summary rounds them: the
    # whole summary (percentiles, per trigger and per service) was a fifth of this route's time.
    stats = reloader.stats_projection
    return StatusResponse(
        config_reloader_enabled=reloader.started,
        current_config_hash=short(reloader.current_hash),
        registered_listeners=len(reloader.services),
        listeners=reloader.services.names(),
        available_backups=len(reloader.get_backups()),
        file_watching_enabled=reloader.file_watching_enabled,
        signal_handler_enabled=lifecycle_of(request).signal_handler_enabled,
        reload_statistics=ReloadStatistics(
            total_operations=stats.total,
            success_rate=round(stats.success_rate, 6),
            average_duration_ms=round(stats.durations.mean, 3),
        ),
        instance_id=reloader.log.instance_id,
        log_head=reloader.projections.position,
        running_operation_id=reloader.running_operation_id,
        service_drift={name: short(running) or "" for name, running in reloader.service_drift().items()},
        source_state=SourceStateOut.of(reloader.source_state()),
        fleet_threshold=_fleet_threshold(reloader.fleet_judge),
    )


def _fleet_threshold(judge: FleetJudge | None) -> FleetThresholdOut | None:
    if judge is None:
        return None
    judging = [FleetJudgingOut.of(judging) for judging in list(judge.open.values())]
    return FleetThresholdOut(threshold=judge.threshold, answer_wait_s=judge.wait, judging=judging)


@router.get("/stats")
async def get_stats(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    slow_ms: Annotated[float | None, Query(ge=0, description="also list operations slower than this")] = None,
) -> dict[str, Any]:
    """Totals, success rate, durations with percentiles, per trigger and per service."""
    stats = reloader.get_reload_stats()
    stats["current_config_hash"] = short(stats["current_config_hash"])
    for service in stats.get("services", {}).values():
        service["running_hash"] = short(service.get("running_hash"))
    if slow_ms is not None:
        stats["slow_operations"] = [
            {
                "operation_id": op.operation_id,
                "kind": op.kind.value,
                "trigger": op.trigger.value,
                "status": op.status.value,
                "total_duration_ms": round(op.total_duration_ms, 3),
                "slowest_phase": op.slowest_phase,
                "slowest_service": op.slowest_service,
                "started_at": None if op.started_at is None else utc_text(op.started_at),
            }
            for op in reloader.get_slow_operations(slow_ms)
        ]
    return stats


@router.get("/backups", response_model=BackupsResponse)
async def get_backups(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    count: Annotated[
        int | None,
        Query(
            ge=1, le=10_000, description="list only the newest this many (at most CONFLEDGER_BACKUP_COUNT)"
        ),
    ] = None,
) -> BackupsResponse:
    """The last N distinct configs before the current one (rollback can target any applied hash)."""
    kept = reloader.get_backups()
    return BackupsResponse.of(kept[:count], reloader.backup_count, reloader.current_hash)


@router.get("/fleet", response_model=FleetResponse)
async def get_fleet(
    reloader: ReloaderDep,
    _caller: ReaderCaller,
    all_instances: Annotated[
        bool,
        Query(
            alias="all",
            description="also list instances gone longer than CONFLEDGER_FLEET_GONE_SHOWN_FOR "
            "(otherwise only counted in gone_hidden)",
        ),
    ] = False,
) -> FleetResponse:
    """The fleet's desired config and, for each instance on this log, what it applied and its state
    (in_sync, lagging, drifted, gone). Folded from the log by this instance's follower; liveness from
    the heartbeat rows, read from the database per request."""
    return FleetResponse.of(await reloader.fleet(all_instances=all_instances))
