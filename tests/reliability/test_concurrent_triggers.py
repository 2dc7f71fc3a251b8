"""API reloads, SIGHUPs and file rewrites all at once against real ``confledger serve`` processes.

Three threads start together: one sends ``POST /reload`` from several connections, one sends SIGHUPs,
one rewrites the config file (atomically, a new value each time). Then:

- no request answered 5xx, and none failed for a locked database (``database is locked`` is in no
  answer and nowhere in the service's output);
- every API request is in the log as an operation of trigger ``api`` (run, or refused with 409 because
  another was running); the SIGHUPs ran at least one reload, and every SIGHUP and file change is
  absorbed by a signal or file-watch reload (bursts coalesce into one queued follow-up);
- no two operations of one instance interleave between start and completion;
- every event of an operation carries the trigger and actor its first event names;
- the last content written is the config every instance runs, and ``check_nothing_lost`` holds.

Instances are a parameter (``INSTANCE_COUNTS``): with the fleet (``GET /fleet``), a row of 3 instances on one
PostgreSQL log is added, API requests spread over them and SIGHUPs sent to each in turn; the
invariants then also hold ``/fleet`` (every instance in sync on the last applied config).

Size knob ``CONFLEDGER_TEST_SCALE`` (float, default 1): triggers of each kind, ``round(50 * SCALE)``;
full scale is 10 (500 of each).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from confledger.api import schemas as api_schemas
from confledger.store.events import OperationRejected, OperationStarted, RecordedEvent
from tests.integration.api.service_harness import ADMIN_TOKEN, PREFIX, full_hash_of, variant, write_config
from tests.reliability.invariants import Reply, check_no_interleaving, operations_of, reply_from_response
from tests.reliability.serve_harness import Served, running_serve
from tests.scale import SCALE

TRIGGERS_EACH = max(3, round(50 * SCALE))
API_CONNECTIONS = 8
INSTANCE_COUNTS = [
    # (backend, instances)
    ("sqlite", 1),
    ("postgres", 1),
]
if hasattr(api_schemas, "FleetResponse"):
    # Once instances follow one another (the fleet), a fleet of 3 on one PostgreSQL log.
    INSTANCE_COUNTS.append(("postgres", 3))
# The actor each trigger records (API requests: the admin token's name).
ACTORS = {"api": "token:admin", "signal": "signal", "file_watch": "file_watch", "startup": "system"}


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    backend, instances = request.param
    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_schema_url"))
    with running_serve(tmp_path, url, instances=instances) as running:
        yield running


def _start_together(*jobs: Callable[[], None]) -> None:
    barrier = threading.Barrier(len(jobs))
    failures: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=30)
            job()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures


@pytest.mark.parametrize(
    "served", INSTANCE_COUNTS, indirect=True, ids=[f"{backend}-{n}" for backend, n in INSTANCE_COUNTS]
)
def test_api_sighup_and_file_triggers_at_once(served: Served) -> None:
    served.settle()
    head = served.log.head()
    ttls = itertools.count(30_000)
    last_written: list[int] = []
    replies: list[Reply] = []
    bodies: list[str] = []

    def api_reloads() -> None:
        clients = [
            httpx.Client(
                base_url=str(server.client.base_url), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            for server in served.servers
        ]

        def one(index: int) -> Reply:
            response = clients[index % len(clients)].post(PREFIX + "/reload", json={}, timeout=60)
            bodies.append(response.text)
            return reply_from_response(response)

        try:
            with ThreadPoolExecutor(API_CONNECTIONS) as pool:
                replies.extend(pool.map(one, range(TRIGGERS_EACH)))
        finally:
            for client in clients:
                client.close()

    def signals() -> None:
        for index in range(TRIGGERS_EACH):
            served.sighup(index % len(served.servers))
            time.sleep(0.005)

    def rewrites() -> None:
        for _ in range(TRIGGERS_EACH):
            ttl = next(ttls)
            write_config(served.config, variant(cache__ttl_seconds=ttl))
            last_written.append(ttl)
            time.sleep(0.005)

    _start_together(api_reloads, signals, rewrites)
    final = full_hash_of(variant(cache__ttl_seconds=last_written[-1]), served.log)
    served.wait_for_current(final)
    served.settle()

    codes = Counter(reply.status_code for reply in replies)
    assert set(codes) <= {200, 409}, codes
    assert codes[200] >= 1, codes
    assert not [body for body in bodies if "database is locked" in body]
    assert "database is locked" not in served.output()
    assert "Traceback" not in served.output()

    events = list(served.log.iter_events(head))
    operations = operations_of(events)
    by_trigger = Counter(_trigger_of(group) for group in operations.values())
    # Every API request is in the log, whether it ran or was refused while another operation ran.
    assert by_trigger["api"] == TRIGGERS_EACH, by_trigger
    api_ids = {str(reply.operation_id) for reply in replies}
    assert api_ids == {i for i, group in operations.items() if _trigger_of(group) == "api"}
    # SIGHUPs ran at least one reload; the watcher's requests may all have joined a queued signal reload.
    assert by_trigger["signal"] >= 1, by_trigger
    assert set(by_trigger) <= {"api", "signal", "file_watch"}, by_trigger

    assert check_no_interleaving(events) >= 2
    for operation_id, group in operations.items():
        trigger, actor = _trigger_of(group), group[0].actor
        assert actor == ACTORS[trigger], (operation_id, trigger, actor)
        assert {event.actor for event in group} == {actor}, (operation_id, [e.actor for e in group])

    served.check(replies)


def _trigger_of(group: list[RecordedEvent]) -> str:
    payload = group[0].payload
    assert isinstance(payload, OperationStarted | OperationRejected), group[0]
    return payload.trigger.value
