"""Liveness and readiness, outside the token-protected prefix."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from confledger.store import ConfledgerError

__all__ = ["router"]

router = APIRouter(tags=["health"])


# HEAD too: load balancers and uptime checkers probe with it, and a 405 reads as "down". Left out of
# the schema: one operation per path there, not two of one function.
@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the reloader runs, a config is current and the log answers."""
    lifecycle = getattr(request.app.state, "confledger", None)
    reloader = None if lifecycle is None else lifecycle.reloader
    if reloader is None or not reloader.started:
        return JSONResponse({"status": "starting"}, status_code=503)
    failure = reloader.log.integrity_failure
    if failure is not None:
        # Reads of the config restored at start-up go on; writes are refused. The reason code only: the
        # details (positions, hashes) are for token holders and the service's log.
        body = {"status": "integrity check failed", "reason": failure.code, "writes": "refused"}
        return JSONResponse(body, status_code=503)
    if reloader.current is None:
        return JSONResponse({"status": "no configuration applied"}, status_code=503)
    try:
        with anyio.fail_after(2.0):
            await anyio.to_thread.run_sync(reloader.log.head, abandon_on_cancel=True)
    except (ConfledgerError, TimeoutError):
        return JSONResponse({"status": "event log unreachable"}, status_code=503)
    # No config hash: anyone may call this, and which config runs is for token holders (/status).
    return JSONResponse({"status": "ready"})
