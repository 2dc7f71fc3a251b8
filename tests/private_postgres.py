"""A throwaway PostgreSQL server for tests that stop, restart or starve the database.

Tests that take the database away must never touch the shared server at 127.0.0.1:5432: other test
processes (and CI's other jobs) use it at the same time. This module builds a cluster of its own
with the machine's PostgreSQL binaries (``initdb`` into a temporary directory, trust auth, a free
port on 127.0.0.1), so a test can ``stop()``, ``start()`` and ``restart()`` it at will.

PostgreSQL refuses to run as root; when the tests run as root (as on these machines and in CI) the
server runs as the ``postgres`` system user, which then owns the data directory.

Use the ``private_postgres`` fixture (module scope: ``initdb`` costs about a second) or the class::

    with PrivatePostgres.create(tmp_path) as server:
        url = server.url
        server.restart()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PrivatePostgres", "postgres_binaries", "private_postgres"]


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None`` when PostgreSQL is not installed."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return installed[0].parent if installed else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """One PostgreSQL cluster owned by a test: its data directory, its port, its life cycle."""

    def __init__(self, binaries: Path, data_dir: Path, port: int) -> None:
        self.binaries = binaries
        self.data_dir = data_dir
        self.port = port
        self._run_as = "postgres" if os.geteuid() == 0 else None

    @classmethod
    @contextlib.contextmanager
    def create(cls, parent: Path | None = None) -> Iterator[PrivatePostgres]:
        """Initialise and start a cluster; stop it and remove its files afterwards."""
        binaries = postgres_binaries()
        if binaries is None:
            pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
        root = Path(tempfile.mkdtemp(prefix="confledger-pg-", dir=parent))
        server = cls(binaries, root / "data", _free_port())
        try:
            server._initdb(root)
            server.start()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop()
            shutil.rmtree(root, ignore_errors=True)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self, *argv: str) -> list[str]:
        command = [str(self.binaries / argv[0]), *argv[1:]]
        return ["runuser", "-u", self._run_as, "--", *command] if self._run_as else command

    def _initdb(self, root: Path) -> None:
        if self._run_as:
            # The server process drops to the postgres user, so it must own everything it writes.
            account = pwd.getpwnam(self._run_as)
            os.chown(root, account.pw_uid, account.pw_gid)
        subprocess.run(
            self._command("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync"),
            check=True,
            capture_output=True,
        )

    def _pg_ctl(self, *argv: str) -> None:
        result = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data_dir), *argv), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl {' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # fsync off: the tests restart the server, they never pull the power, and it keeps CI quick.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c fsync=off"
        self._pg_ctl("-w", "-t", "30", "-o", options, "-l", str(self.data_dir / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` disconnects every client at once, ``immediate`` is a crash."""
        self._pg_ctl("-w", "-t", "30", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test module's own, which its tests may stop and restart."""
    with PrivatePostgres.create() as server:
        yield server
