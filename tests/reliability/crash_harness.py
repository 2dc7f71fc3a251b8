"""A real ``confledger serve`` that the crash tests start, crash, reap and start again on the same log.

``Deployment`` is what outlives a process: the directory, the config file, the log's URL, the key, and
the directory where the three services of ``tests.reliability.crash_services`` keep their state.
``Deployment.start`` runs the console script next to the interpreter with that model (so the services
register at import, as an application's do), an admin token and key from the environment, optionally a
crash point armed (``CONFLEDGER_FAILPOINT``), and waits for ``/readyz``. A process that ends is always
reaped (``wait``) before the next start: an unreaped child's pid still answers ``kill(pid, 0)``, and the
restart closes an open operation only when its writer's pid is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from cryptography.fernet import Fernet

from confledger.store import EventLog, SecretCipher
from tests.integration.api.service_harness import ADMIN_TOKEN, PREFIX, REPO, variant
from tests.integration.api.test_serve_process import free_port
from tests.integration.api.test_serve_process import wait_for as serve_wait_for
from tests.reliability.crash_services import SERVICES_DIR_VARIABLE, state_of
from tests.reliability.forkserver import ForkedProcess, ForkServer
from tests.reliability.invariants import Expected, check_fleet

CONFLEDGER = Path(sys.executable).parent / "confledger"
MODEL = "tests.reliability.crash_services:AppConfig"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float = 30.0) -> T:
    """``test_serve_process.wait_for`` with the crash tests' longer timeout and shorter step (a restart
    after a kill is timed against it)."""
    return serve_wait_for(what, probe, timeout=timeout, every=0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _process_of(instance: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """Where an instance of /fleet runs: its heartbeat's host and pid, or, before its first heartbeat is
    written (just after its start), what its default id ``host:pid`` says."""
    if instance["host"] is not None:
        return instance["host"], instance["pid"]
    host, _, pid = str(instance["instance_id"]).rpartition(":")
    return (host, int(pid)) if pid.isdigit() else (None, None)


def _alive_here(host: str | None, pid: int | None) -> bool:
    return host == socket.gethostname() and pid is not None and pid_alive(pid)


def check_fleet_after_crashes(fleet: Mapping[str, Any], expected: Expected) -> None:
    """``/fleet`` after crashes: a killed instance stays listed (``lagging``, on the config it ran) until
    three heartbeat intervals pass without it, so only live processes are held to the desired config;
    every other one listed must be a dead process (or one that said it stopped)."""
    live = [
        instance
        for instance in fleet["instances"]
        if instance["state"] != "gone" and _alive_here(*_process_of(instance))
    ]
    assert live, f"no live instance in /fleet: {fleet}"
    check_fleet({**fleet, "instances": live}, expected)


def child_environment() -> dict[str, str]:
    """This process's environment for a child: no CONFLEDGER_* setting of the shell, the repository
    importable (``tests.reliability.crash_services``)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return environment


def body_with(pool_size: int, **changes: Any) -> dict[str, Any]:
    """The example config, marked by its pool size (what each service file records)."""
    return variant(database__pool_size=pool_size, **changes)


@dataclass
class Serve:
    """One ``confledger serve`` process of a deployment."""

    process: subprocess.Popen[bytes] | ForkedProcess
    client: httpx.Client
    output: Path

    def post(self, path: str, payload: Mapping[str, Any] | None = None) -> httpx.Response:
        return self.client.post(PREFIX + path, json=dict(payload or {}))

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(PREFIX + path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def pool_size(self) -> int:
        return int(self.get("/current")["config"]["database"]["pool_size"])

    def printed(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Reap the process once it has ended by itself; its exit status."""
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.client.close()

    def kill(self) -> None:
        """SIGKILL and reap: the crash nothing inside the process can see coming. The client stays open
        (a thread may still be sending on it: its request fails as a dropped connection)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM and a graceful exit."""
        self.process.send_signal(signal.SIGTERM)
        returncode = self.process.wait(timeout=30)
        self.client.close()
        assert returncode in (0, -signal.SIGTERM), self.printed()


@dataclass
class Deployment:
    """What survives a crash: the files and the log one service instance runs on."""

    workdir: Path
    database_url: str
    encryption_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    environment: dict[str, str] = field(default_factory=dict)
    # Starts without a crash point go through it when given (tests.reliability.forkserver).
    forkserver: ForkServer | None = None
    runs: int = 0

    @property
    def config(self) -> Path:
        return self.workdir / "config.yaml"

    @property
    def services_dir(self) -> Path:
        return self.workdir / "services"

    def write_config(self, body: Mapping[str, Any]) -> None:
        """Replace the config file atomically (the crash tests are about the log, not torn files)."""
        temporary = self.config.with_name(".config.yaml.tmp")
        temporary.write_text(yaml.safe_dump(dict(body), sort_keys=False), encoding="utf-8")
        os.replace(temporary, self.config)

    def services(self) -> dict[str, int | None]:
        return state_of(self.services_dir)

    def open_log(self) -> EventLog:
        return EventLog(
            self.database_url,
            instance_id="crash-test-reader",
            cipher=SecretCipher.from_env_value(self.encryption_key),
        )

    def start(self, *, failpoint: str | None = None, wait_ready: bool = True) -> Serve:
        self.services_dir.mkdir(exist_ok=True)
        self.runs += 1
        environment = child_environment()
        environment.update(
            {
                "CONFLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
                "CONFLEDGER_ENCRYPTION_KEY": self.encryption_key,
                SERVICES_DIR_VARIABLE: str(self.services_dir),
                **self.environment,
            }
        )
        if failpoint is not None:
            environment["CONFLEDGER_FAILPOINT"] = failpoint
        port = free_port()
        output = self.workdir / f"serve-{self.runs}.log"
        command = [
            str(CONFLEDGER),
            "serve",
            "--config",
            str(self.config),
            "--model",
            MODEL,
            "--database",
            self.database_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        process: subprocess.Popen[bytes] | ForkedProcess
        if self.forkserver is not None and failpoint is None:
            process = ForkedProcess(self.forkserver.spawn(command[1:], environment, self.workdir, output))
        else:
            with output.open("wb") as sink:
                process = subprocess.Popen(
                    command, cwd=self.workdir, env=environment, stdout=sink, stderr=subprocess.STDOUT
                )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        serve = Serve(process, client, output)
        if wait_ready:
            try:
                wait_for("/readyz", lambda: _ready(serve), timeout=60)
            except BaseException:
                serve.kill()
                serve.client.close()
                raise
        return serve

    @contextmanager
    def serving(self, *, failpoint: str | None = None) -> Iterator[Serve]:
        """A started instance, killed on leaving if it still runs (a failed test leaves nothing behind)."""
        serve = self.start(failpoint=failpoint)
        try:
            yield serve
        finally:
            serve.kill()
            serve.client.close()


def _ready(serve: Serve) -> bool | None:
    if serve.process.poll() is not None:
        raise AssertionError(
            f"confledger serve exited ({serve.process.returncode}) early:\n{serve.printed()}"
        )
    try:
        return True if serve.client.get("/readyz").status_code == 200 else None
    except httpx.TransportError:
        return None
