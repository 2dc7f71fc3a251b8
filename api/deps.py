"""FastAPI dependencies, in one place: the lifecycle, the reloader, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.lifecycle import ConfigLifecycle
from api.reloader import ConfigReloader
from api.security import Role

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


@dataclass(frozen=True)
class Caller:
    """Who made a request: recorded as the event's actor and client, never the token itself."""

    role: Role
    client: str | None

    @property
    def actor(self) -> str:
        return f"token:{self.role.value}"


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
    return Caller(role, request.client.host if request.client else None)


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
