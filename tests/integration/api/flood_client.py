"""A flood of large request bodies against a confledger service, as issue 13's red-team run sent it.

Run as its own process (``python flood_client.py PORT SECONDS TOKEN [FLOODER NAME …]``), so its threads do not compete
with a latency probe for the probing interpreter's lock. Each flooder thread connects, sends its
request head and then its body as fast as the kernel takes it, reads the status the server answered
with, and starts again, until the time is up; the statuses each kind saw are printed as one JSON line.
Standard library only: the child is started without the test suite on its import path.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass

PREFIX = "/api/v1/config"
MB = 1024 * 1024
MIN_ANSWERS = 3  # answers each kind of flooder gets, however long past its time that takes
GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Flooder:
    name: str
    threads: int
    method: str
    path: str
    admin: bool
    length: int | None  # Content-Length; None sends a chunked body that never ends
    expected: int  # the status the service must answer with


FLOODERS = [
    Flooder("unauthenticated 48 MB reload", 3, "POST", "/reload", False, 48 * MB, 401),
    Flooder("admin 48 MB reload", 2, "POST", "/reload", True, 48 * MB, 413),
    Flooder("admin endless chunked reload", 1, "POST", "/reload", True, None, 413),
    Flooder("admin 30 MB body on GET /current", 1, "GET", "/current", True, 30 * MB, 413),
]


def request_head(method: str, path: str, token: str | None, length: int | None) -> bytes:
    lines = [f"{method} {PREFIX}{path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status_of(connection: socket.socket) -> int | None:
    try:
        first = connection.recv(64)
    except OSError:
        return None
    parts = first.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def json_array(length: int) -> bytes:
    """``[0,0,…,0]`` of exactly ``length`` bytes: valid JSON that is costly to parse and to hold (one
    list entry per two bytes), as the red-team's bodies were."""
    zeros = max(1, (length - 1) // 2)
    return b"[" + b"0," * (zeros - 1) + b"0" + b" " * (length - 2 * zeros - 1) + b"]"


def _flood(port: int, flooder: Flooder, token: str, until: float, seen: dict[str, int]) -> None:
    head = request_head(flooder.method, flooder.path, token if flooder.admin else None, flooder.length)
    body = memoryview(json_array(flooder.length)) if flooder.length is not None else None
    # A chunked body that never ends: "[" and then "0," for as long as the time lasts.
    chunk = b"%x\r\n%s\r\n" % (MB, b"0," * (MB // 2))
    # On a loaded machine (a CI runner, parallel test workers) the time can be up before a kind got an
    # answer at all; it then floods on until it has MIN_ANSWERS, so "the flood reached the server" does
    # not hinge on the machine's speed (GRACE_SECONDS bounds that).
    deadline = until + GRACE_SECONDS
    while time.monotonic() < until or (sum(seen.values()) < MIN_ANSWERS and time.monotonic() < deadline):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            try:
                connection.sendall(head)
                if body is not None:
                    connection.sendall(body)
                else:
                    connection.sendall(b"1\r\n[\r\n")
                    # Until the service cuts it off at its body limit (the deadline only bounds a bug).
                    while time.monotonic() < deadline:
                        connection.sendall(chunk)
            except OSError:
                pass  # the service answered and closed: the kernel refuses the rest of the body
            status = str(_status_of(connection))
        seen[status] = seen.get(status, 0) + 1


def flood(port: int, seconds: float, token: str, names: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Every flooder (or those named) for ``seconds``: the statuses each kind saw."""
    chosen = [flooder for flooder in FLOODERS if not names or flooder.name in names]
    until = time.monotonic() + seconds
    seen: dict[str, dict[str, int]] = {flooder.name: {} for flooder in chosen}
    threads = [
        threading.Thread(target=_flood, args=(port, flooder, token, until, seen[flooder.name]))
        for flooder in chosen
        for _ in range(flooder.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


if __name__ == "__main__":
    port, seconds, token, *names = sys.argv[1:]
    print(json.dumps(flood(int(port), float(seconds), token, names)), flush=True)
