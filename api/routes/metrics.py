"""The Prometheus text endpoint (read token required)."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import Response

from confledger.api.deps import LifecycleDep, ReaderCaller
from confledger.api.errors import ApiError
from confledger.api.limits import GuardedRoute

__all__ = ["router"]

router = APIRouter(tags=["metrics"], route_class=GuardedRoute)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", response_class=Response, responses={200: {"content": {PROMETHEUS_CONTENT_TYPE: {}}}})
async def metrics(lifecycle: LifecycleDep, _caller: ReaderCaller) -> Response:
    """Operation counters, durations and the current config hash in Prometheus text format."""
    telemetry = lifecycle.telemetry
    if telemetry is None or telemetry.prometheus_registry is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, "metrics are not enabled on this service", "metrics_disabled"
        )
    return Response(telemetry.render_prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)
