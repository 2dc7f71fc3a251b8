"""Start ``confledger serve`` processes without paying for their imports each time (the kill loops).

A ``confledger serve`` spends most of its start-up importing (FastAPI, uvicorn, SQLAlchemy, psycopg,
pydantic, the package itself: 1-3 s on a loaded 2-core machine), and the random-kill test starts one
per loop. The fork server imports all of that once, then forks a child per request, which runs the
console script's own entry point (``confledger.api.cli:main``) with the request's arguments,
environment, working directory and output file: the same code path in a process of its own, with its
own pid (and so its own default instance id, ``host:pid``). Children are reaped by the kernel
(SIGCHLD ignored in the server), so a killed one's pid is gone at once, which is what a restart looks at
to close the operations it left open. The server holds no threads when it forks (checked).

Not for crash points: ``CONFLEDGER_FAILPOINT`` is read at import, which the children skip, and a child's
exit status goes to the server, not to the test (``Deployment.start`` runs the console script when a
point is armed).

Protocol (one JSON object a line each way): ``{"argv", "env", "cwd", "output"}`` in, ``{"pid"}`` out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The modules a ``confledger serve`` imports before it answers /readyz (the store's failpoints module
# among them, read with no CONFLEDGER_FAILPOINT: crash-point runs start the console script instead).
PRELOADED = (
    "confledger.api.cli",
    "confledger.api.cli.serve",
    "confledger.api.server",
    "confledger.api.lifecycle",
    "confledger.api.routes",
    "confledger.api.preflight",
    "confledger.api.access_log",
    "confledger.api.connections",
    "confledger.api.deps",
    "confledger.api.telemetry",
    "confledger.api.cli.log",
    "confledger.api.cli.bootstrap",
    "opentelemetry.exporter.prometheus",
    "confledger.examples.app_config",
    "uvicorn",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.lifespan.on",
    "psycopg",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.sqlite.pysqlite",
)


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the requested ``confledger serve`` and never return."""
    status = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)  # its own process group, as a process started from a shell would be
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        sys.stdin.close()
        sys.path[:0] = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
        sys.argv = ["confledger", *request["argv"]]
        from confledger.api.cli import main

        try:
            main()
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def serve_requests() -> None:
    for module in PRELOADED:
        __import__(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        assert threading.active_count() == 1, "the fork server must hold no threads when it forks"
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)


class ForkServer:
    """The parent's side: start the server once, then ``spawn`` a child per start."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            text=True,
        )
        assert self.process.stdout is not None
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def spawn(self, argv: list[str], environment: dict[str, str], cwd: Path, output: Path) -> int:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        request = {"argv": argv, "env": environment, "cwd": str(cwd), "output": str(output)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return int(json.loads(self.process.stdout.readline())["pid"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkedProcess:
    """A forked child, with the part of ``subprocess.Popen``'s interface the crash harness uses.

    Its parent is the fork server, so its exit status is not known here: ``returncode`` is ``-9`` after
    ``kill`` and ``None`` for any other ending (the kill loops never look at it otherwise).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._killed = False

    def _gone(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def poll(self) -> int | None:
        if self.returncode is None and self._gone():
            self.returncode = -signal.SIGKILL if self._killed else 0
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if signum == signal.SIGKILL:
            self._killed = True
        if not self._gone():
            os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode


if __name__ == "__main__":
    serve_requests()
