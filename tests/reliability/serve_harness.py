"""One real ``confledger serve`` process per test, on either backend, read back through ``invariants``.

``running_serve`` starts the console script (``tests.integration.api.test_serve_process.confledger_serve``:
a free port, the example model, the admin token from the environment) with the log named explicitly
(an SQLite file in the test's directory, or the test's own PostgreSQL schema with a fresh key), waits for
``/readyz``, and hands back a ``Served``: the HTTP client, the process (for signals), the log opened by
the test with the log's key (it only reads), and an ``HttpObserver`` for ``check_nothing_lost``.

``instances`` starts several processes on the same log (a fleet on PostgreSQL); scenarios take the
count as a parameter so a fleet variant is one more table row.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from confledger.store import EventLog, SecretCipher
from confledger.store.database import sqlite_path
from tests.integration.api.service_harness import ADMIN_TOKEN, EXAMPLE_CONFIG, PREFIX
from tests.integration.api.test_serve_process import Server, confledger_serve, free_port
from tests.reliability.invariants import HttpObserver, Observer, Reply, check_nothing_lost, wait_until_settled

__all__ = ["Served", "running_serve"]


@dataclass
class Served:
    """One or more running ``confledger serve`` processes on one log."""

    servers: list[Server]
    config: Path
    database_url: str
    log: EventLog  # read-only, opened by the test

    @property
    def client(self) -> httpx.Client:
        return self.servers[0].client

    @property
    def observers(self) -> list[Observer]:
        return [HttpObserver(server.client, ADMIN_TOKEN) for server in self.servers]

    def sighup(self, index: int = 0) -> None:
        os.kill(self.servers[index].process.pid, signal.SIGHUP)

    def wait_for_current(self, full_hash: str, timeout: float = 30.0) -> None:
        """Until every instance serves ``full_hash`` (it may never: the caller then sees the timeout)."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            while True:
                status = server.client.get(PREFIX + "/status").json()
                if status["current_config_hash"] == full_hash[:16]:
                    break
                assert time.monotonic() < deadline, (
                    f"{status['instance_id']} still serves {status['current_config_hash']}"
                )
                time.sleep(0.05)

    def settle(self, timeout: float = 60.0, quiet: float = 0.3) -> None:
        for observer in self.observers:
            wait_until_settled(observer, self.log, timeout=timeout, quiet=quiet)

    def check(self, replies: Sequence[Reply] = ()) -> None:
        """Settle, then every rule of ``invariants``."""
        self.settle()
        check_nothing_lost(self.log, self.observers, replies)

    def output(self) -> str:
        return "\n".join(server.output.read_text(errors="replace") for server in self.servers)


@contextmanager
def running_serve(
    workdir: Path,
    database_url: str,
    *,
    instances: int = 1,
    config: Path | None = None,
    watch: bool = True,
    arguments: Sequence[str] = (),
) -> Iterator[Served]:
    """Start ``instances`` serve processes on one log (the config file shared), stop them on leaving."""
    if config is None:
        config_dir = workdir / "conf"
        config_dir.mkdir(exist_ok=True)
        config = config_dir / "config.yaml"
        config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    variables = {"CONFLEDGER_DATABASE_URL": database_url}
    key: str | None = None
    if database_url.startswith("postgresql"):
        # A PostgreSQL log is shared, so its key comes from the environment.
        key = variables["CONFLEDGER_ENCRYPTION_KEY"] = SecretCipher.generate_key()
    options = ["--watch" if watch else "--no-watch", "--poll-interval", "0.2", *arguments]
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                confledger_serve(
                    workdir,
                    config,
                    free_port(),
                    run,
                    arguments=options,
                    variables={**variables, "CONFLEDGER_INSTANCE_ID": f"serve-{run}"},
                )
            )
            for run in range(instances)
        ]
        # The log's key (serve made a key file beside an SQLite log) keys its links and config hashes:
        # the test reads and verifies with it, as the service does.
        database = sqlite_path(database_url)
        if key is not None:
            cipher = SecretCipher.from_env_value(key)
        else:
            assert database is not None
            cipher = SecretCipher.from_key_file(database.with_name(database.name + ".key"), create=False)
        log = stack.enter_context(
            EventLog(database_url, instance_id="reliability-reader", cipher=cipher, migrate_on_open=False)
        )
        yield Served(servers, config, database_url, log)
