"""SIGKILL at random moments while a real ``confledger serve`` runs reloads and rollbacks: nothing is lost.

One process start per loop: the service starts on the log the previous loop's kill left behind (three
services registered, see ``crash_services``), and the start is the recovery under test. Then:

1. the restart closed every operation the kill left open, as ``interrupted``;
2. "nothing lost" holds (``tests.reliability.invariants``: the log gap-free and verified, every reply
   any client was ever given backed by exactly one completion with the status it was told, a fresh fold
   equal to /status, /stats, /history and /backups, the live config the last applied one);
3. every service runs the current config again (handed to it at start);

and a client thread runs operations back to back (a reload of a new file, one the ``gamma`` service
refuses, so an automatic rollback hands the others their old config back, or a manual rollback) until
the parent kills the process with SIGKILL after a random delay. The log left behind must already hold
rules 1-3 of the invariants with the writer dead (``check_log``).

Size: ``30 x CONFLEDGER_TEST_SCALE`` loops per backend (CI: 30; the issue's full size is 200 loops,
``CONFLEDGER_TEST_SCALE=6.67``). The seed is printed; the kill moments depend on timing anyway. The
processes are forked from a server that has done their imports (``tests.reliability.forkserver``): a
start then costs what start-up itself does (open and check the log, restore, notify, bind), not 1-3 s
of importing.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import httpx
import pytest

from confledger.store.events import OperationStatus
from tests.integration.api.service_harness import ADMIN_TOKEN
from tests.reliability.crash_harness import (
    Deployment,
    Serve,
    body_with,
    check_fleet_after_crashes,
    child_environment,
)
from tests.reliability.crash_services import REFUSED_TTL, SERVICES
from tests.reliability.forkserver import ForkServer
from tests.reliability.invariants import (
    HttpObserver,
    Reply,
    check_log,
    check_nothing_lost,
    operations_of,
    reply_from_response,
    wait_until_settled,
)
from tests.scale import scaled

KILL_LOOPS = scaled(30)
# The kill lands this long after the client starts: an operation takes some 10-40 ms here, so the
# window covers a few of them and every phase of one (parse, start commit, callbacks, outcome commit).
KILL_AFTER_SECONDS = (0.02, 0.4)


def run_operations(serve: Serve, deployment: Deployment, rng: random.Random, replies: list[Reply]) -> None:
    """Operations back to back until the process dies under it (the first request with no answer)."""
    while True:
        roll = rng.random()
        try:
            if roll < 0.6:
                deployment.write_config(body_with(rng.randint(21, 500)))
                response = serve.post("/reload")
            elif roll < 0.75:
                deployment.write_config(body_with(rng.randint(21, 500), cache__ttl_seconds=REFUSED_TTL))
                response = serve.post("/reload")
            else:
                response = serve.post("/rollback")
        except httpx.TransportError:
            replies.append(Reply(None))
            return
        replies.append(reply_from_response(response))


def open_operation_ids(deployment: Deployment) -> set[str]:
    with deployment.open_log() as log:
        return {
            operation_id
            for operation_id, group in operations_of(log.iter_events()).items()
            if group[0].type == "operation.started" and group[-1].type != "operation.completed"
        }


def statuses(deployment: Deployment, operation_ids: set[str]) -> set[OperationStatus]:
    found: set[OperationStatus] = set()
    with deployment.open_log() as log:
        for operation_id, group in operations_of(log.iter_events()).items():
            if operation_id in operation_ids:
                found |= {event.payload.status for event in group if event.type == "operation.completed"}  # type: ignore[attr-defined]
    return found


@pytest.mark.slow
def test_random_sigkill_during_reloads_and_rollbacks_loses_nothing(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}, {KILL_LOOPS} loops")
    rng = random.Random(seed)
    forkserver = ForkServer(child_environment())
    request.addfinalizer(forkserver.close)
    deployment = Deployment(
        tmp_path, database_url, environment={"CONFLEDGER_ROLLBACK_THRESHOLD": "1.0"}, forkserver=forkserver
    )
    deployment.write_config(body_with(20))
    replies: list[Reply] = []
    left_open: set[str] = set()
    interrupted = 0
    for loop in range(KILL_LOOPS + 1):
        serve = deployment.start()
        try:
            with deployment.open_log() as log:
                observer = HttpObserver(serve.client, ADMIN_TOKEN)
                wait_until_settled(observer, log, quiet=0.05)
                report = check_nothing_lost(log, [observer], replies, fleet_check=check_fleet_after_crashes)
            assert report.open_operations == 0, f"loop {loop}: the restart left operations open"
            if left_open:
                assert statuses(deployment, left_open) == {OperationStatus.INTERRUPTED}, f"loop {loop}"
                interrupted += len(left_open)
            assert deployment.services() == dict.fromkeys(SERVICES, serve.pool_size()), f"loop {loop}"
            if loop == KILL_LOOPS:
                # The last start: one more change applies everywhere, then a clean stop.
                deployment.write_config(body_with(19))
                answer = serve.post("/reload").json()
                assert answer["success"] is True, answer
                assert deployment.services() == dict.fromkeys(SERVICES, 19)
                serve.stop()
                break
            client = threading.Thread(
                target=run_operations, args=(serve, deployment, random.Random(rng.random()), replies)
            )
            client.start()
            threading.Event().wait(rng.uniform(*KILL_AFTER_SECONDS))
        finally:
            serve.kill()
        client.join(timeout=60)
        assert not client.is_alive()
        with deployment.open_log() as log:
            check_log(log, replies, live_instances=())
        left_open = open_operation_ids(deployment)
        assert len(left_open) <= 1, f"loop {loop}: one process runs one operation at a time"
    answered = sum(reply.answered for reply in replies)
    print(f"{answered} operations answered, {len(replies)} requests, {interrupted} interrupted by a kill")
    assert answered > KILL_LOOPS  # the clients got work done between the kills
