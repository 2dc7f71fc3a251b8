"""FastAPI dependencies, in one place: the lifecycle, the reloader, and who is calling.

Each is ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in a worker thread,
and the four a protected route resolved were four thread hops per request (0.4-0.5 ms of a 1 ms read).
None of them blocks: they read attributes and compare tokens in memory. They are also few, since FastAPI
spends about as much per dependency it resolves (10-15 us) as a small endpoint does: the token and the
role are one dependency, and the lifecycle is looked up by a plain call unless a route asks for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, status
from fastapi.security import HTTPBearer
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

from confledger.api.errors import ApiError
from confledger.api.lifecycle import ConfigLifecycle
from confledger.api.pages import RenderedPages
from confledger.api.reloader import ConfigReloader
from confledger.api.security import Role
from confledger.store import Trigger

__all__ = [
    "CREDENTIAL_PARAMETER",
    "AdminCaller",
    "BearerCaller",
    "Caller",
    "CurrentConfigDep",
    "LifecycleDep",
    "ReaderCaller",
    "ReloaderDep",
    "authenticate",
    "authenticated",
    "credential_in_query",
    "get_current_config",
    "lifecycle_of",
    "pages_of",
]

_bearer = HTTPBearer(auto_error=False, description="CONFLEDGER_ADMIN_TOKEN, or CONFLEDGER_READ_TOKEN for GET")


def lifecycle_of(request: Request) -> ConfigLifecycle:
    """The app's lifecycle, looked up by a plain call: a route that needs it only now and then (or
    besides the reloader) saves the dependency FastAPI would resolve for every request."""
    lifecycle = getattr(request.app.state, "confledger", None)
    if not isinstance(lifecycle, ConfigLifecycle):
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE, "confledger is not set up on this app", "not_set_up"
        )
    return lifecycle


def pages_of(request: Request) -> RenderedPages:
    """The app's rendered reads (``api.pages``), by a plain call like ``lifecycle_of``. They are set as
    the reloader starts, so a route that got ``ReloaderDep`` always finds them."""
    pages = lifecycle_of(request).pages
    if pages is None:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the config reloader is not running", "reloader_not_running"
        )
    return pages


async def _lifecycle(request: Request) -> ConfigLifecycle:
    return lifecycle_of(request)


LifecycleDep = Annotated[ConfigLifecycle, Depends(_lifecycle)]


async def _reloader(request: Request) -> ConfigReloader:
    reloader = lifecycle_of(request).reloader
    if reloader is None or not reloader.started:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the config reloader is not running", "reloader_not_running"
        )
    return reloader


ReloaderDep = Annotated[ConfigReloader, Depends(_reloader)]


_CLI_USER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
# An IP address, a host name, or an RFC 7239 obfuscated identifier ("_hidden", "unknown").
_CLIENT_ADDRESS = re.compile(r"^[A-Za-z0-9._:%\[\]-]{1,64}$")


def client_address(host: str | None) -> str | None:
    """The peer's address as recorded with an operation, never raw text a client chose.

    uvicorn takes the address from ``X-Forwarded-For`` on a connection from ``FORWARDED_ALLOW_IPS``
    (127.0.0.1 by default), as it arrived: escape sequences in it went into the audit log and, through
    the access log, into an operator's terminal. Anything but an address is kept escaped and clipped.
    """
    if host is None or _CLIENT_ADDRESS.match(host):
        return host
    return "unreadable:" + ascii(host[:64])


# A query parameter named like a credential. URLs are written to access logs, proxy logs and shell
# history, so a token there is refused outright rather than half-honoured; no API parameter matches.
CREDENTIAL_PARAMETER = re.compile(
    r"token|key|secret|passw|auth|bearer|credential|session|signature|jwt", re.IGNORECASE
)
URL_CREDENTIAL_REFUSAL = "send the token in the Authorization header; a credential in the URL is refused"


@dataclass(frozen=True)
class Caller:
    """Who made a request: recorded as the event's actor and client, never the token itself.

    The ``confledger`` CLI says so in ``X-Confledger-Client: cli`` and names its OS user in
    ``X-Confledger-User``. No token proves who that user is (the CLI sends the admin token it read), so
    the name is recorded as a claim beside the role of the token that made it:
    ``claimed:cli:alice (admin token)``, with trigger ``cli``. Only the role is proven.
    """

    role: Role
    client: str | None
    cli_user: str | None = None

    @property
    def actor(self) -> str:
        if self.cli_user:
            return f"claimed:cli:{self.cli_user} ({self.role.value} token)"
        return f"token:{self.role.value}"

    @property
    def trigger(self) -> Trigger:
        return Trigger.CLI if self.cli_user else Trigger.API


def _unauthorized(detail: str = "missing or invalid bearer token", code: str = "unauthorized") -> ApiError:
    return ApiError(status.HTTP_401_UNAUTHORIZED, detail, code, headers={"WWW-Authenticate": "Bearer"})


def credential_in_query(request: Request) -> bool:
    if not request.scope.get("query_string"):
        return False
    return any(CREDENTIAL_PARAMETER.search(name) for name in request.query_params)


# Where a route's request guard (``api.limits.GuardedRoute``) leaves the role it found before reading the
# body, so the route's dependency does not compare the token a second time. In the request's scope, which
# only the server and this package write to: a client cannot put a role there.
_AUTHENTICATED = "confledger_role"


def authenticate(request: Request, *, admin_only: bool) -> Role:
    """The role of the bearer token in the ``Authorization`` header, or the 401/403 to answer.

    Reads headers only. A route that takes a body has it checked by its request guard, before the body
    is read; the dependency then takes the role the guard found (``authenticated``).
    """
    if credential_in_query(request):
        raise _unauthorized(URL_CREDENTIAL_REFUSAL, "credential_in_url")
    authorization = request.headers.get("authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not credentials or scheme.lower() != "bearer":
        raise _unauthorized()
    role = lifecycle_of(request).tokens.role_of(credentials)
    if role is None:
        raise _unauthorized()
    if admin_only and role is not Role.ADMIN:
        raise ApiError(
            status.HTTP_403_FORBIDDEN, "this endpoint needs the admin token", "admin_token_required"
        )
    setattr(request.state, _AUTHENTICATED, (role, admin_only))
    return role


def authenticated(request: Request, *, admin_only: bool) -> Role:
    """The role ``authenticate`` found for this request under the same demand, else ``authenticate``."""
    found = getattr(request.state, _AUTHENTICATED, None)
    if found is not None and (found[1] or not admin_only):
        return found[0]  # type: ignore[no-any-return]
    return authenticate(request, admin_only=admin_only)


class BearerCaller(SecurityBase):
    """Who is calling, from the bearer token, as one dependency that is also the OpenAPI security scheme.

    ``HTTPBearer`` names the scheme in the schema; the header is read and the role checked in the same
    call rather than by a dependency on it, which FastAPI would resolve as two more steps per request.
    """

    def __init__(self, bearer: HTTPBearer, *, admin_only: bool) -> None:
        self.model = bearer.model
        self.scheme_name = bearer.scheme_name
        self.admin_only = admin_only

    async def __call__(self, request: Request) -> Caller:
        role = authenticated(request, admin_only=self.admin_only)
        cli_user = None
        if request.headers.get("x-confledger-client", "").lower() == "cli":
            claimed = request.headers.get("x-confledger-user", "unknown")
            cli_user = claimed if _CLI_USER.match(claimed) else "unknown"
        return Caller(role, client_address(request.client.host if request.client else None), cli_user)


ReaderCaller = Annotated[Caller, Depends(BearerCaller(_bearer, admin_only=False))]
AdminCaller = Annotated[Caller, Depends(BearerCaller(_bearer, admin_only=True))]


async def get_current_config(request: Request) -> Any:
    """The current typed config for one request: one reference, taken once, consistent for the request."""
    lifecycle = lifecycle_of(request)
    current = None if lifecycle.reloader is None else lifecycle.reloader.current
    if current is None:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no configuration has been applied yet", "no_config_applied"
        )
    return current.config


CurrentConfigDep = Annotated[Any, Depends(get_current_config)]
