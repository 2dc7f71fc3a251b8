"""FastAPI dependencies, in one place: the lifecycle, the reloader, and who is calling."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from confledger.api.lifecycle import ConfigLifecycle
from confledger.api.reloader import ConfigReloader
from confledger.api.security import Role
from confledger.store import Trigger

__all__ = [
    "AdminCaller",
    "Caller",
    "CurrentConfigDep",
    "LifecycleDep",
    "ReaderCaller",
    "ReloaderDep",
    "get_current_config",
]

_bearer = HTTPBearer(auto_error=False, description="CONFLEDGER_ADMIN_TOKEN, or CONFLEDGER_READ_TOKEN for GET")


def _lifecycle(request: Request) -> ConfigLifecycle:
    lifecycle = getattr(request.app.state, "confledger", None)
    if lifecycle is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "confledger is not set up on this app")
    if not isinstance(lifecycle, ConfigLifecycle):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "confledger is not set up on this app")
    return lifecycle


LifecycleDep = Annotated[ConfigLifecycle, Depends(_lifecycle)]


def _reloader(lifecycle: LifecycleDep) -> ConfigReloader:
    if lifecycle.reloader is None or not lifecycle.reloader.started:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the config reloader is not running")
    return lifecycle.reloader


ReloaderDep = Annotated[ConfigReloader, Depends(_reloader)]


_CLI_USER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


@dataclass(frozen=True)
class Caller:
    """Who made a request: recorded as the event's actor and client, never the token itself.

    The ``confledger`` CLI says so in ``X-Confledger-Client: cli`` and names its OS user in
    ``X-Confledger-User``; its operations are then recorded with trigger ``cli`` and actor ``cli:<user>``
    (the token still decides what it may do).
    """

    role: Role
    client: str | None
    cli_user: str | None = None

    @property
    def actor(self) -> str:
        return f"cli:{self.cli_user}" if self.cli_user else f"token:{self.role.value}"

    @property
    def trigger(self) -> Trigger:
        return Trigger.CLI if self.cli_user else Trigger.API


def _caller(
    request: Request,
    lifecycle: LifecycleDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    unauthorized = HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized
    role = lifecycle.tokens.role_of(credentials.credentials)
    if role is None:
        raise unauthorized
    cli_user = None
    if request.headers.get("x-confledger-client", "").lower() == "cli":
        claimed = request.headers.get("x-confledger-user", "unknown")
        cli_user = claimed if _CLI_USER.match(claimed) else "unknown"
    return Caller(role, request.client.host if request.client else None, cli_user)


def _reader(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
    return caller


def _admin(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
    if caller.role is not Role.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this endpoint needs the admin token")
    return caller


ReaderCaller = Annotated[Caller, Depends(_reader)]
AdminCaller = Annotated[Caller, Depends(_admin)]


def get_current_config(request: Request) -> Any:
    """The current typed config for one request: one reference, taken once, consistent for the request."""
    lifecycle = _lifecycle(request)
    current = None if lifecycle.reloader is None else lifecycle.reloader.current
    if current is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no configuration has been applied yet")
    return current.config


CurrentConfigDep = Annotated[Any, Depends(get_current_config)]
