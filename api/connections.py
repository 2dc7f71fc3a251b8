"""uvicorn's h11 protocol with a deadline for receiving each request whole (``confledger serve``).

uvicorn closes a keep-alive connection that stays idle after a response, but nothing else: a client
that opens a connection and sends nothing, or half a request line, or headers announcing a body it
never sends, holds the connection (and, past the body, a request task) for as long as it likes, and
any bytes it trickles in cancel the keep-alive timer. This protocol gives every request a deadline:
from the moment the connection opens, or the previous response ends, the client has
``CONFLEDGER_REQUEST_TIMEOUT`` seconds to deliver the request line, the headers and the whole body.
A request received in time is never cut off while the service works on it or answers it.

It also holds the request line and headers to ``CONFLEDGER_MAX_HEADER_BYTES`` (uvicorn's
``h11_max_incomplete_event_size``): h11 applies that cap only to a head still arriving, so a whole
100 KB head in one read was parsed and served. A complete head over the cap is answered 431
(``headers_too_large``) and the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["RequestDeadlineProtocol", "with_request_deadline"]

logger = logging.getLogger(__name__)

# The client's side of the exchange while a request is still on its way: nothing or part of the
# request line and headers (IDLE), or the headers but not all of the body (SEND_BODY).
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


class RequestDeadlineProtocol(H11Protocol):
    """``H11Protocol`` that closes a connection whose request has not fully arrived in time."""

    request_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_deadline: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        limit = self.config.h11_max_incomplete_event_size
        if limit is not None and self.conn.their_state is h11.IDLE and self._head_too_large(data, limit):
            self._refuse_head(limit)
            return
        super().data_received(data)

    def _head_too_large(self, data: bytes, limit: int) -> bool:
        """Whether the request head that ``data`` completes (with what h11 holds of it) passes ``limit``;
        a head still incomplete is h11's to cap."""
        held = self.conn.trailing_data[0]
        pending = held + data if held else data
        end = pending.find(b"\r\n\r\n")
        return end >= 0 and end + 4 > limit

    def _refuse_head(self, limit: int) -> None:
        logger.info(
            "refused a request from %s whose head is larger than %d bytes",
            self.client[0] if self.client else "an unknown client",
            limit,
        )
        self._answer_and_close(
            b"431 Request Header Fields Too Large",
            f"the request line and headers are larger than {limit} bytes",
            "headers_too_large",
        )

    def _answer_and_close(self, status_line: bytes, detail: str, code: str) -> None:
        # Written raw: h11 lets a server answer only a request it has parsed and not yet answered, and
        # this one is not whole (or not parsed at all).
        body = json.dumps({"detail": detail, "code": code}, separators=(",", ":")).encode()
        head = (
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % (status_line, len(body))
        )
        self.transport.write(head + body)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_request_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_request_deadline()

    def _start_request_deadline(self) -> None:
        self._cancel_request_deadline()
        self._request_deadline = self.loop.call_later(self.request_timeout, self._request_deadline_passed)

    def _cancel_request_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_deadline_passed(self) -> None:
        self._request_deadline = None
        if self.transport.is_closing() or self.conn.their_state not in _RECEIVING:
            return
        logger.info(
            "closed a connection from %s that sent no whole request within %g s",
            self.client[0] if self.client else "an unknown client",
            self.request_timeout,
        )
        started = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        if started and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            # Part of a request came, and nothing has been answered: the client is told why it is cut
            # off (an idle keep-alive connection is closed silently, as every server does).
            self._answer_and_close(
                b"408 Request Timeout",
                f"the request did not arrive whole within {self.request_timeout:g} s",
                "request_timeout",
            )
            return
        self.transport.close()


def with_request_deadline(seconds: float) -> type[RequestDeadlineProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with this deadline."""
    return type("RequestDeadlineProtocol", (RequestDeadlineProtocol,), {"request_timeout": seconds})
