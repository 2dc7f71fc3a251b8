"""The database goes away under a running ``confledger serve``, then comes back: no restart needed.

Two outages, one scenario:

- PostgreSQL stopped mid-run (``pg_ctl stop -m fast``: every connection dropped, new ones refused), on a
  throwaway cluster of this module's own (``tests.private_postgres``), never the shared server;
- SQLite's disk full: the log lives on a small tmpfs, and a filler file takes the rest of its space.

While the database is down, reloads and rollbacks (API and SIGHUP) fail with 503 and the reason code
``store_unavailable``, the process stays up, the config applied before keeps being served and every
service keeps running it. Once the database is back, the next change applies everywhere, with the same
process, and "nothing lost" holds (``tests.reliability.invariants``), the 503 replies included (an
errored request is wholly in the log or absent).

The outage may also begin inside an operation, after its start was recorded and while the services are
being told (``beta`` holds the change until the test has taken the database away): the outcome cannot
be recorded, so the services that took the change get their previous config back, the client gets the
503, and the operation's closing (``failed``, ``store_unavailable``) is recorded once the log takes
writes again, before the next change.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.api.service_harness import ADMIN_TOKEN
from tests.private_postgres import PrivatePostgres, private_postgres  # noqa: F401 (the fixture)
from tests.reliability.crash_harness import Deployment, Serve, body_with, wait_for
from tests.reliability.crash_services import HELD_RETRIES, RELEASE_FILE, SERVICES
from tests.reliability.invariants import (
    HttpObserver,
    Reply,
    check_nothing_lost,
    reply_from_response,
    wait_until_settled,
)

# Room for the log of this scenario (a few hundred kB) and nothing much more.
SMALL_FILESYSTEM = "8m"


class Outage(Protocol):
    database_url: str

    def take_down(self) -> None: ...

    def bring_back(self) -> None: ...


@dataclass
class StoppedPostgres:
    """The private cluster, stopped and started again; the log is a database of its own on it."""

    server: PrivatePostgres
    database_url: str

    def take_down(self) -> None:
        self.server.stop("fast")

    def bring_back(self) -> None:
        self.server.start()


@dataclass
class FullDisk:
    """An SQLite log on a small tmpfs; a filler file takes every byte left, then is deleted."""

    mount_point: Path
    database_url: str

    @property
    def filler(self) -> Path:
        return self.mount_point / "filler"

    def take_down(self) -> None:
        # Big writes until ENOSPC, then smaller ones for the blocks left over.
        with self.filler.open("wb", buffering=0) as handle:
            for block in (65536, 512):
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(b"\0" * block)
        assert os.statvfs(self.mount_point).f_bavail == 0

    def bring_back(self) -> None:
        self.filler.unlink()


@contextlib.contextmanager
def small_filesystem(where: Path) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_FILESYSTEM},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the full-disk case: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@contextlib.contextmanager
def private_database(server: PrivatePostgres) -> Iterator[str]:
    name = f"down_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield server.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(Exception), admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["postgres_stopped", "sqlite_disk_full"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    if request.param == "postgres_stopped":
        server: PrivatePostgres = request.getfixturevalue("private_postgres")
        with private_database(server) as url:
            yield StoppedPostgres(server, url)
    else:
        with small_filesystem(tmp_path / "small") as mount_point:
            yield FullDisk(mount_point, f"sqlite:///{mount_point / 'confledger.db'}")


def refused_while_down(serve: Serve, path: str, replies: list[Reply]) -> None:
    response = serve.post(path)
    replies.append(reply_from_response(response))
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "store_unavailable", response.text


@pytest.mark.slow
def test_reloads_answer_503_while_the_database_is_down_and_work_once_it_is_back(
    outage: Outage, tmp_path: Path
) -> None:
    deployment = Deployment(tmp_path, outage.database_url)
    deployment.write_config(body_with(20))
    replies: list[Reply] = []
    with deployment.serving() as serve:
        deployment.write_config(body_with(21))
        applied = serve.post("/reload")
        replies.append(reply_from_response(applied))
        assert applied.json()["success"] is True

        outage.take_down()
        try:
            deployment.write_config(body_with(22))
            refused_while_down(serve, "/reload", replies)
            refused_while_down(serve, "/rollback", replies)
            refused_while_down(serve, "/reload", replies)  # a second try changes nothing
            serve.process.send_signal(signal.SIGHUP)
            wait_for("the SIGHUP's failure", lambda: "reload on SIGHUP failed" in serve.printed() or None)
            assert serve.process.poll() is None

            # Still serving what was applied before, and every service still runs it.
            assert serve.pool_size() == 21
            assert serve.client.get("/healthz").status_code == 200
            assert deployment.services() == dict.fromkeys(SERVICES, 21)
        finally:
            outage.bring_back()

        # Back: the next change applies everywhere, and the same process answers.
        answer = serve.post("/reload")
        replies.append(reply_from_response(answer))
        assert answer.status_code == 200, answer.text
        assert answer.json()["success"] is True, answer.text
        assert serve.pool_size() == 22
        assert deployment.services() == dict.fromkeys(SERVICES, 22)
        with deployment.open_log() as log:
            observer = HttpObserver(serve.client, ADMIN_TOKEN)
            wait_until_settled(observer, log)
            report = check_nothing_lost(log, [observer], replies)
        assert report.replies_matched == 2  # the two answered operations; the 503s named none
        serve.stop()


@pytest.mark.slow
def test_an_outage_between_the_two_commits_leaves_no_service_on_an_unrecorded_config(
    outage: Outage, tmp_path: Path
) -> None:
    deployment = Deployment(tmp_path, outage.database_url)
    deployment.write_config(body_with(20))
    replies: list[Reply] = []
    with deployment.serving() as serve:
        deployment.write_config(body_with(21, performance__max_retries=HELD_RETRIES))
        answers: list[httpx.Response] = []
        client = threading.Thread(target=lambda: answers.append(serve.post("/reload")))
        client.start()
        try:
            # alpha took the change, beta holds it: the start is recorded, the outcome is not.
            wait_for("alpha to take the change", lambda: deployment.services()["alpha"] == 21 or None)
            outage.take_down()
            try:
                (deployment.services_dir / RELEASE_FILE).touch()
                client.join(timeout=60)
                [answer] = answers
                replies.append(reply_from_response(answer))
                assert answer.status_code == 503, answer.text
                assert answer.json()["code"] == "store_unavailable"
                # The log does not say 21 was applied: nobody runs it, 20 is still served.
                assert deployment.services() == dict.fromkeys(SERVICES, 20)
                assert serve.pool_size() == 20
            finally:
                outage.bring_back()
        finally:
            (deployment.services_dir / RELEASE_FILE).touch()
            client.join(timeout=60)

        deployment.write_config(body_with(22))
        answer = serve.post("/reload")
        replies.append(reply_from_response(answer))
        assert answer.json()["success"] is True, answer.text
        assert deployment.services() == dict.fromkeys(SERVICES, 22)
        with deployment.open_log() as log:
            observer = HttpObserver(serve.client, ADMIN_TOKEN)
            wait_until_settled(observer, log)
            check_nothing_lost(log, [observer], replies)
            [held] = [
                operation
                for operation in serve.get("/history", limit=100)["operations"]
                if operation["reason"] == "store_unavailable"
            ]
        assert held["status"] == "failed"
        assert held["services_notified"] == ["alpha:success", "beta:success", "gamma:success"]
        detail = serve.get(f"/operations/{held['operation_id']}")
        given_back = [
            event["payload"]["service"]
            for event in detail["events"]
            if event["type"] == "service.notified" and event["payload"]["direction"] == "compensate"
        ]
        assert given_back == ["gamma", "beta", "alpha"]
        assert "config.applied" not in [event["type"] for event in detail["events"]]
        serve.stop()
