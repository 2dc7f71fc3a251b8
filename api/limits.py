"""The request guard of the config API: the token before the body, a capped body, and plain JSON.

FastAPI reads and parses a route's body before it resolves the route's dependencies, so the bearer
token was checked only after any amount of JSON had been read and parsed on the event loop: three
unauthenticated 48 MB reloads took a process to 1.8 GB and stalled every client for seconds. Every
config route is a ``GuardedRoute``, whose handler, before FastAPI's own:

* checks the token of a route that takes a body, from the headers alone, so an unauthenticated or
  read-token caller is answered 401/403 without a byte of its body read (the route's dependency then
  takes the role found here: ``deps.authenticated``);
* answers 413 when ``Content-Length`` or the bytes received pass ``CONFLEDGER_MAX_REQUEST_BYTES``,
  and 408 when the body takes longer than ``CONFLEDGER_REQUEST_TIMEOUT`` to arrive; both close the
  connection, so the rest of a refused body is not drained from the socket;
* answers 400 (``invalid_json``) for a body that is not JSON text: not UTF-8, malformed, nested deeper
  than the parser goes, ``NaN``/``Infinity``, or a lone UTF-16 surrogate (the last two made the 422's
  echo of the input fail as a plain-text 500);
* turns a 422 into one that names what was wrong without echoing what was sent.

It also notes when the whole request had arrived (``arrived``), where an operation's
``total_duration_ms`` starts: the caller waits through its parsing as through the operation.

It is a route class rather than middleware so that it guards the config API wherever it is mounted,
in ``confledger serve`` or in a service's own app, and touches none of that app's other routes. The
limits are read per request from the lifecycle's settings; FastAPI's ``max_body_size`` is fixed when
the route is built, and the routes are built once for every app in the process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from fastapi import Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from confledger.api.deps import BearerCaller, authenticate, lifecycle_of
from confledger.api.errors import ApiError, error_response, validation_error_response

__all__ = ["GuardedRoute", "arrived", "json_refusal"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# In the request's state (the scope's, which the endpoint's ``Request`` shares).
_ARRIVED = "confledger_arrived"


def arrived(request: Request) -> float | None:
    """When the request, body included, was in its ``GuardedRoute``'s hands (``time.perf_counter()``), if
    it went through one."""
    value = getattr(request.state, _ARRIVED, None)
    return value if isinstance(value, float) else None


class _NotJsonNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJsonNumber(f"{name} is not a JSON number")


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of two equal keys, a proxy or audit filter in front may read the first:
    # {"config_source": "a", "config_source": "b"} would be one file to it and another here.
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _DuplicateKey("the body is not JSON the API reads: a key appears twice in one object")
    return document


def _lone_surrogate_in(value: Any) -> bool:
    """Whether any string (or key) in a parsed document is not valid Unicode text. Iterative: the
    document may be as deep as the parser allows."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def json_refusal(body: bytes) -> str | None:
    """Why ``body`` is not a JSON text the API will parse, or None when it is one (or is empty).

    The reason names what is wrong and where, never what the body holds.
    """
    if not body:
        return None
    try:
        document = json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicate_keys)
    except UnicodeDecodeError:
        return "the body is not UTF-8 text"
    except _DuplicateKey as exc:
        return str(exc)
    except _NotJsonNumber as exc:
        return f"the body is not JSON: {exc} (NaN and Infinity are not allowed)"
    except json.JSONDecodeError as exc:
        return f"the body is not JSON: {exc.msg} at character {exc.pos}"
    except RecursionError:
        return "the body is not JSON the API reads: it is nested too deeply"
    except ValueError:
        # int() refuses a literal past sys.get_int_max_str_digits() (4300): a 500 with a traceback
        # before. Caught after JSONDecodeError and UnicodeDecodeError, its subclasses.
        return "the body is not JSON the API reads: a number in it has too many digits"
    if _lone_surrogate_in(document):
        return "the body is not JSON text: a string holds a lone UTF-16 surrogate"
    return None


def _content_length(request: Request) -> int | None:
    announced = request.headers.get("content-length")
    if announced is None or not announced.isdigit():
        return None
    return int(announced)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as more than ``limit`` bytes have arrived."""
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands FastAPI the body already read, then the connection's own messages."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


def _bearer_of(dependant: Dependant) -> BearerCaller | None:
    pending = list(dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, BearerCaller):
            return dependency.call
        pending.extend(dependency.dependencies)
    return None


def _too_large(limit: int) -> Response:
    return error_response(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the request body is larger than {limit} bytes",
        "request_too_large",
        close=True,
    )


class GuardedRoute(APIRoute):
    """An ``APIRoute`` whose handler runs the guard described in this module's docstring first."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        bearer = _bearer_of(self.dependant)

        async def guarded(request: Request) -> Response:
            # Received once the whole request is in hand: a slow client's upload is not the service's time.
            in_hand = time.perf_counter()
            settings = lifecycle_of(request).settings
            limit = settings.max_request_bytes
            if takes_body and bearer is not None:
                try:
                    authenticate(request, admin_only=bearer.admin_only)
                except ApiError as refused:
                    return error_response(
                        refused.status_code,
                        str(refused.detail),
                        refused.code,
                        close=True,
                        headers=refused.headers,
                    )
            announced = _content_length(request)
            if announced is not None and announced > limit:
                return _too_large(limit)
            if takes_body:
                body: bytes | None = b""
                try:
                    with anyio.move_on_after(settings.request_timeout) as waited:
                        body = await _read_body(request, limit)
                except ClientDisconnect:
                    # Nobody is left to answer; the status is only what the access log shows.
                    return Response(status_code=status.HTTP_400_BAD_REQUEST, headers={"Connection": "close"})
                if waited.cancelled_caught:
                    return error_response(
                        status.HTTP_408_REQUEST_TIMEOUT,
                        f"the request body did not arrive within {settings.request_timeout:g} s",
                        "request_timeout",
                        close=True,
                    )
                if body is None:
                    return _too_large(limit)
                in_hand = time.perf_counter()
                refusal = json_refusal(body)
                if refusal is not None:
                    return error_response(status.HTTP_400_BAD_REQUEST, refusal, "invalid_json")
                request = Request(request.scope, _replaying(body, request.receive))
            setattr(request.state, _ARRIVED, in_hand)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation_error_response(exc)

        return guarded
