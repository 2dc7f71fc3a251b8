"""``RequestDeadlineProtocol`` under a real uvicorn server: what it closes, and what it must not; and the
cap on a request's head.

A small ASGI app (it reads the body, answers, and on ``/slow`` takes three deadlines to do so) runs
under uvicorn in a thread, with the protocol and a short deadline, and raw sockets play the clients.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import uvicorn

from confledger.api.connections import with_request_deadline
from tests.integration.api.test_serve_process import free_port, wait_for

DEADLINE = 0.6
MARGIN = 1.5  # scheduling slack on a shared machine
HEAD_LIMIT = 8_192  # the request line and headers (CONFLEDGER_MAX_HEADER_BYTES)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await anyio.sleep(DEADLINE * 3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    chosen = free_port()
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=chosen,
        http=with_request_deadline(DEADLINE),
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=30,  # longer than the deadline: what closes an idle connection here is ours
        h11_max_incomplete_event_size=HEAD_LIMIT,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("uvicorn to start", lambda: True if server.started else None)
    yield chosen
    server.should_exit = True
    thread.join(timeout=10)


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE * 3 + MARGIN + 5)
    return connection


def _read_until_closed(connection: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    received = b""
    while True:
        try:
            chunk = connection.recv(65_536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def _request(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


# (what the client sends and then stops at): each closed by the deadline
STALLED = [
    (b"", "a connection that sends nothing"),
    (b"GET /sta", "half a request line"),
    (b"GET / HTTP/1.1\r\nHost: test\r\n", "headers without their end"),
    (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789", "10 of 100 body bytes"),
    (
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "an unended chunked body",
    ),
]


@pytest.mark.parametrize(("sent", "what"), STALLED, ids=[what for _, what in STALLED])
def test_a_request_that_does_not_arrive_whole_in_time_is_closed(port: int, sent: bytes, what: str) -> None:
    with _connect(port) as connection:
        connection.sendall(sent)
        received, waited = _read_until_closed(connection)
    assert waited < DEADLINE + MARGIN, what
    assert b"done" not in received


def test_a_trickle_of_bytes_does_not_hold_the_connection_open(port: int) -> None:
    # Each byte would cancel uvicorn's keep-alive timer; the deadline counts from the connection.
    with _connect(port) as connection:
        started = time.monotonic()
        closed = False
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(DEADLINE / 6)
            if time.monotonic() - started > DEADLINE + MARGIN:
                break
        if not closed:
            _read_until_closed(connection)
        assert time.monotonic() - started < DEADLINE + MARGIN + DEADLINE / 6


def test_a_request_received_in_time_is_answered_however_long_it_runs(port: int) -> None:
    with _connect(port) as connection:
        # Timed from before the send: the server (a thread of this process) can read the request and
        # start its three deadlines before this thread is scheduled again after sendall.
        started = time.monotonic()
        connection.sendall(_request("/slow"))
        received, _ = _read_until_closed_after_response(connection)
        waited = time.monotonic() - started
    assert received.endswith(b"done")
    assert waited >= DEADLINE * 3


def test_a_slow_but_timely_client_and_keep_alive_requests_are_served(port: int) -> None:
    with _connect(port) as connection:
        body = b'{"force": true}'
        connection.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(DEADLINE / 2)
        connection.sendall(body)
        first, _ = _read_until_closed_after_response(connection)
        # The deadline starts again after each response: a second request later than the first
        # deadline, sooner than the second, is served on the same connection.
        time.sleep(DEADLINE * 0.7)
        connection.sendall(_request())
        second, _ = _read_until_closed_after_response(connection)
        # And once idle past the deadline, the connection is closed.
        rest, waited = _read_until_closed(connection)
    assert first.endswith(b"done")
    assert second.endswith(b"done")
    assert rest == b""
    assert waited < DEADLINE + MARGIN


def _read_until_closed_after_response(connection: socket.socket) -> tuple[bytes, float]:
    """One response (it ends with the 4-byte body), and how long it took to arrive."""
    started = time.monotonic()
    received = b""
    while not received.endswith(b"done"):
        chunk = connection.recv(65_536)
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def _head(size: int) -> bytes:
    """A GET whose request line and headers, their blank line included, are ``size`` bytes."""
    bare = b"GET / HTTP/1.1\r\nHost: test\r\nX-Pad: \r\n\r\n"
    return bare.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(bare)))


# (the head's size, the writes it is sent in, the status answered)
HEADS = [
    (HEAD_LIMIT * 6, 1, 431),  # whole in one write, far over the cap: h11 alone parsed and served it
    (HEAD_LIMIT + 1, 1, 431),  # one byte over
    (HEAD_LIMIT + 1_000, 2, 431),  # completed by a second write
    (HEAD_LIMIT, 1, 200),  # exactly the cap: served
    (HEAD_LIMIT - 500, 2, 200),  # under it, in two writes
]


@pytest.mark.parametrize(("size", "writes", "status"), HEADS)
def test_a_request_head_over_the_cap_is_431_however_it_arrives(
    port: int, size: int, writes: int, status: int
) -> None:
    head = _head(size)
    assert len(head) == size
    connection = _connect(port)
    try:
        half = len(head) // 2 if writes == 2 else len(head)
        connection.sendall(head[:half])
        if writes == 2:
            time.sleep(0.1)  # two reads on the server's side
            connection.sendall(head[half:])
        if status == 431:
            received, _ = _read_until_closed(connection)  # and the connection is closed
        else:
            received = connection.recv(65_536)
    finally:
        connection.close()
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:100]
    if status == 431:
        # The body as every other refusal writes it: compact JSON with a detail and a code.
        assert json.loads(received.split(b"\r\n\r\n", 1)[1])["code"] == "headers_too_large"
