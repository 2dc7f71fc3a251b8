"""A fleet of real ``confledger serve`` processes on one log (PostgreSQL, and SQLite on one file).

Each process runs the model of ``tests/integration/api/fleet_service.py``, whose service writes what it
was handed to a file of its own, so the test reads what every instance's service received, in order.
Nothing is mocked: the processes meet only through the database.

``CONFLEDGER_TEST_SCALE`` (default 1) multiplies the number of changes of the long loops.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from confledger.api.cli.app import app as cli_app
from confledger.projections.backups import BackupsProjection
from confledger.projections.base import Folder
from confledger.projections.fleet import FleetProjection
from confledger.projections.history import HistoryProjection
from confledger.projections.stats import StatsProjection
from confledger.store import EventLog, SecretCipher
from confledger.store.events import ConfigApplied, ConfigRolledBack, InstanceApplied
from confledger.store.fleet import Heartbeat, record_heartbeat
from tests.integration.api.service_harness import ADMIN_TOKEN, PREFIX, REPO
from tests.integration.api.test_serve_process import free_port, wait_for
from tests.private_postgres import PrivatePostgres
from tests.scale import scaled

CONFLEDGER = Path(sys.executable).parent / "confledger"
MODEL = "tests.integration.api.fleet_service:FleetConfig"

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX processes")


def write_level(path: Path, level: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"level": level}), encoding="utf-8")
    temporary.replace(path)


@dataclass
class Instance:
    name: str
    port: int
    record: Path
    process: subprocess.Popen[bytes]
    output: Path
    client: httpx.Client = field(repr=False)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(PREFIX + path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, **body: Any) -> httpx.Response:
        return self.client.post(PREFIX + path, json=body)

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text(encoding="utf-8").splitlines() if line]

    def received(self) -> list[int]:
        """The levels this instance's service was handed and finished with (accepted or not), in order."""
        return [line["new"] for line in self.records() if "new" in line]

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Fleet:
    workdir: Path
    config: Path
    database_url: str
    key: str
    tag: str
    stack: ExitStack
    instances: dict[str, Instance] = field(default_factory=dict)
    # Every port handed out so far: a port is free until its server binds it, so probing for the next
    # instance while the last one starts can return the same port (the second then exits at start).
    ports: set[int] = field(default_factory=set)

    def instance_id(self, name: str) -> str:
        # Unique per test: PostgreSQL sessions are named after it (pg_stat_activity), and other tests
        # and helpers share the server.
        return f"fleet-{self.tag}-{name}"

    def spawn(self, name: str, variables: Mapping[str, str] | None = None) -> Instance:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
        environment.update(
            {
                "CONFLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
                "CONFLEDGER_DATABASE_URL": self.database_url,
                "CONFLEDGER_ENCRYPTION_KEY": self.key,
                "CONFLEDGER_INSTANCE_ID": self.instance_id(name),
                "CONFLEDGER_FOLLOW_POLL_INTERVAL": "0.1",
                "CONFLEDGER_HEARTBEAT_INTERVAL": "1",
                "CONFLEDGER_SIGNAL_HANDLER": "false",
                "FLEET_RECORD": str(self.workdir / f"{name}.jsonl"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                **(variables or {}),
            }
        )
        port = free_port()
        while port in self.ports:
            port = free_port()
        self.ports.add(port)
        output = self.workdir / f"{name}-{port}.log"
        command = [
            str(CONFLEDGER),
            "serve",
            "--config",
            str(self.config),
            "--model",
            MODEL,
            "--port",
            str(port),
        ]
        with output.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=self.workdir, env=environment, stdout=sink, stderr=subprocess.STDOUT
            )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        instance = Instance(name, port, self.workdir / f"{name}.jsonl", process, output, client)
        self.instances[name] = instance
        self.stack.callback(instance.stop)
        return instance

    def wait_ready(self, *names: str) -> None:
        for name in names:
            instance = self.instances[name]

            def ready(instance: Instance = instance) -> bool | None:
                if instance.process.poll() is not None:
                    raise AssertionError(
                        f"{instance.name} exited:\n{instance.output.read_text(errors='replace')}"
                    )
                try:
                    return True if instance.client.get("/readyz").status_code == 200 else None
                except httpx.TransportError:
                    return None

            wait_for(f"{name} ready", ready, timeout=60)

    def start(self, *names: str, variables: Mapping[str, Mapping[str, str]] | None = None) -> None:
        for name in names:
            self.spawn(name, (variables or {}).get(name))
        self.wait_ready(*names)

    def __getitem__(self, name: str) -> Instance:
        return self.instances[name]

    def log(self) -> EventLog:
        log = EventLog(self.database_url, instance_id="fleet-test-reader", cipher=SecretCipher([self.key]))
        self.stack.callback(log.close)
        return log


@contextmanager
def fleet_on(tmp_path: Path, database_url: str) -> Iterator[Fleet]:
    config = tmp_path / "config.json"
    write_level(config, 1)
    with ExitStack() as stack:
        yield Fleet(tmp_path, config, database_url, SecretCipher.generate_key(), uuid.uuid4().hex[:8], stack)


def all_receive(fleet: Fleet, names: list[str], level: int) -> None:
    for name in names:
        wait_for(
            f"{name} to receive level {level}",
            lambda name=name: True if level in fleet[name].received()[-1:] else None,
        )


def states(instance: Instance) -> dict[str, str]:
    return {
        item["instance_id"]: item["state"]
        for item in instance.get("/fleet")["instances"]
        if item["state"] != "gone"
    }


def newest_rollback(instance: Instance) -> dict[str, Any]:
    """The newest operation in ``instance``'s history once it is a finished rollback: a service is handed
    a config before its operation's outcome is recorded, and a follower folds the outcome after that."""

    def finished() -> dict[str, Any] | None:
        [newest] = instance.get("/history", limit=1)["operations"]
        return newest if newest["kind"] == "rollback" and newest["completed_at"] is not None else None

    found: dict[str, Any] = wait_for(
        f"{instance.name}'s newest operation to be a finished rollback", finished
    )
    return found


def reload_through(instance: Instance, config: Path, level: int) -> dict[str, Any]:
    write_level(config, level)
    response = instance.post("/reload")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"], body
    return dict(body)


def fresh_fold(
    log: EventLog,
) -> tuple[HistoryProjection, StatsProjection, BackupsProjection, FleetProjection]:
    projections = (HistoryProjection(window=500), StatsProjection(), BackupsProjection(5), FleetProjection())
    Folder(projections).fold(log.iter_events())
    for projection in projections:
        projection.settle()
    return projections


def assert_projections_equal_a_fresh_fold(fleet: Fleet, names: list[str]) -> None:
    log = fleet.log()
    head = log.head()
    for name in names:
        wait_for(
            f"{name} to fold to {head}",
            lambda name=name: True if fleet[name].get("/status")["log_head"] >= head else None,
        )
    history, stats, backups, fleet_projection = fresh_fold(log)
    expected_operations = [(op.operation_id, op.status.value) for op in history.recent()]
    expected_backups = [entry["hash"] for entry in backups.backups]
    expected_applied = {name: item["applied_hash"] for name, item in fleet_projection.instances.items()}
    for name in names:
        instance = fleet[name]
        page = instance.get("/history", limit=100)
        assert [(op["operation_id"], op["status"]) for op in page["operations"]] == expected_operations[:100]
        assert page["total_count"] == len(expected_operations)
        assert instance.get("/stats")["total_operations"] == stats.total
        assert [entry["full_hash"] for entry in instance.get("/backups")["backups"]] == expected_backups
        view = instance.get("/fleet")
        assert view["desired_hash"] == (fleet_projection.desired_hash or "")[:16]
        change = fleet_projection.desired
        assert view["desired_decided_by"] == (None if change is None else change.decided_by)
        assert view["desired_kind"] == (None if change is None else change.kind)
        shown = {
            item["instance_id"]: item["applied_hash"]
            for item in view["instances"]
            if item["instance_id"] in expected_applied
        }
        assert shown == {key: (value or "")[:16] or None for key, value in expected_applied.items()}


def verify_passes(database_url: str, key: str) -> None:
    from typer.testing import CliRunner

    # The log is keyed with the fleet's key: verify checks its links with it.
    result = CliRunner().invoke(
        cli_app, ["verify", "--database", database_url], env={"CONFLEDGER_ENCRYPTION_KEY": key}
    )
    assert result.exit_code == 0, result.output


# --- the scenario of the issue ---------------------------------------------------------------------------


def test_four_instances_follow_changes_made_through_any_of_them(tmp_path: Path, database_url: str) -> None:
    names = ["a", "b", "c", "d"]
    with fleet_on(tmp_path, database_url) as fleet:
        fleet.start(*names, variables={"d": {"FLEET_REJECT_LEVEL": "4"}})
        all_receive(fleet, names, 1)
        # A reload through a is applied by all four; then one through b, in sequence, succeeds too.
        reload_through(fleet["a"], fleet.config, 2)
        all_receive(fleet, names, 2)
        reload_through(fleet["b"], fleet.config, 3)
        all_receive(fleet, names, 3)
        # A rollback through c (to the previous config, level 2) is applied by all four.
        response = fleet["c"].post("/rollback")
        assert response.status_code == 200, response.text
        assert response.json()["success"]
        all_receive(fleet, names, 2)
        # d's service refuses level 4: d is drifted, the others apply it, the desired config is 4.
        reload_through(fleet["a"], fleet.config, 4)
        all_receive(fleet, names, 4)
        wait_for(
            "d drifted",
            lambda: (
                True
                if states(fleet["b"])
                == {**{fleet.instance_id(n): "in_sync" for n in "abc"}, fleet.instance_id("d"): "drifted"}
                else None
            ),
        )
        for name in names:
            assert fleet[name].received() == [1, 2, 3, 2, 4], name
        assert [line["accepted"] for line in fleet["d"].records()][-1] is False
        hashes = {fleet[name].get("/current")["hash"] for name in names}
        assert len(hashes) == 1
        verify_passes(database_url, fleet.key)
        assert_projections_equal_a_fresh_fold(fleet, names)


def test_a_change_one_instance_refuses_is_rolled_back_by_the_fleet_threshold(
    tmp_path: Path, database_url: str
) -> None:
    names = ["a", "b", "c"]
    judged = {"CONFLEDGER_FLEET_ROLLBACK_THRESHOLD": "1.0"}
    with fleet_on(tmp_path, database_url) as fleet:
        fleet.start(*names, variables={"a": judged, "b": judged, "c": {**judged, "FLEET_REJECT_LEVEL": "2"}})
        all_receive(fleet, names, 1)
        decided = reload_through(fleet["a"], fleet.config, 2)
        # c refuses 2: a rolls the fleet back to 1, and every instance's service is handed 1 again.
        for name in names:
            wait_for(
                f"{name} back on 1", lambda name=name: True if fleet[name].received() == [1, 2, 1] else None
            )
        rollback = newest_rollback(fleet["b"])
        assert (rollback["kind"], rollback["trigger"], rollback["actor"]) == (
            "rollback",
            "fleet_threshold",
            "system",
        )
        assert rollback["previous_config_hash"] == decided["new_config_hash"]
        wait_for(
            "all in sync on 1",
            lambda: True if set(states(fleet["c"]).values()) == {"in_sync"} else None,
        )
        hashes = {fleet[name].get("/current")["hash"] for name in names}
        assert hashes == {decided["previous_config_hash"]}
        verify_passes(database_url, fleet.key)
        assert_projections_equal_a_fresh_fold(fleet, names)


def test_a_change_whose_decider_is_killed_before_judging_it_is_judged_by_the_next_in_line(
    tmp_path: Path, database_url: str
) -> None:
    names = ["a", "b"]
    judged = {"CONFLEDGER_FLEET_ROLLBACK_THRESHOLD": "1.0", "CONFLEDGER_FLEET_ANSWER_WAIT": "2"}
    # a is killed before it judges, however long its answer and the kill take on a loaded machine (with
    # b's 2 s it could judge first); b stands in after its own wait.
    decider = {**judged, "CONFLEDGER_FLEET_ANSWER_WAIT": "60"}
    with fleet_on(tmp_path, database_url) as fleet:
        fleet.start(*names, variables={"a": decider, "b": judged})
        all_receive(fleet, names, 1)
        # A live instance that never answers (its heartbeat is fresh for a minute) keeps the change open
        # until the wait is over, so the decider can be killed before it judges it.
        now = datetime.now(UTC)
        ghost = Heartbeat(fleet.instance_id("ghost"), "elsewhere", 1, "0", now, now, 0, 60.0)
        record_heartbeat(fleet.log().engine, ghost)
        decided = reload_through(fleet["a"], fleet.config, 2)
        fleet["a"].process.send_signal(signal.SIGKILL)
        fleet["a"].process.wait(timeout=10)
        # b sees a gone after three of its heartbeats (1 s) and judges: b applied, the ghost silent.
        wait_for("b back on 1", lambda: True if fleet["b"].received() == [1, 2, 1] else None, timeout=30)
        rollback = newest_rollback(fleet["b"])
        assert (rollback["kind"], rollback["trigger"], rollback["actor"], rollback["success"]) == (
            "rollback",
            "fleet_threshold",
            "system",
            True,
        )
        assert rollback["previous_config_hash"] == decided["new_config_hash"]
        assert "1 of 2 instances applied" in rollback["message"]
        log = fleet.log()
        [rolled_back] = log.read(types=[ConfigRolledBack.event_type])
        assert rolled_back.instance_id == fleet.instance_id("b")
        assert (
            "which " + fleet.instance_id("a") + " decided and did not judge" in fleet["b"].output.read_text()
        )
        view = fleet["b"].get("/fleet")
        assert (view["desired_decided_by"], view["desired_kind"]) == (fleet.instance_id("b"), "rollback")
        verify_passes(database_url, fleet.key)
        assert_projections_equal_a_fresh_fold(fleet, ["b"])


def test_an_instance_killed_mid_change_catches_up_and_applies_the_desired_config_once(
    tmp_path: Path, database_url: str
) -> None:
    with fleet_on(tmp_path, database_url) as fleet:
        fleet.start("a", "b", variables={"b": {"FLEET_SLOW_LEVEL": "5"}})
        reload_through(fleet["a"], fleet.config, 5)
        # b's service is in the middle of taking level 5: kill -9 it there.
        wait_for("b to begin level 5", lambda: True if {"begin": 5} in fleet["b"].records() else None)
        fleet["b"].process.send_signal(signal.SIGKILL)
        fleet["b"].process.wait(timeout=10)
        reload_through(fleet["a"], fleet.config, 6)
        before = len(fleet["b"].records())
        fleet.start("b")  # the same instance id, no slow level this time
        wait_for(
            "b in sync", lambda: True if states(fleet["a"]).get(fleet.instance_id("b")) == "in_sync" else None
        )
        # Caught up from the log: level 6, exactly once, and nothing of the superseded level 5.
        assert fleet["b"].received()[-1:] == [6]
        assert [line["new"] for line in fleet["b"].records()[before:]] == [6]
        log = fleet.log()
        b_answers = [
            event.payload.hash
            for event in log.read(types=[InstanceApplied.event_type])
            if event.instance_id == fleet.instance_id("b") and isinstance(event.payload, InstanceApplied)
        ]
        desired = log.last_of_type(ConfigApplied.event_type)
        assert desired is not None
        assert isinstance(desired.payload, ConfigApplied)
        assert b_answers.count(desired.payload.hash) == 1
        verify_passes(database_url, fleet.key)


def test_two_instances_racing_changes_at_each_other_stay_in_order_and_agree(
    tmp_path: Path, database_url: str
) -> None:
    changes_each = scaled(50)
    with fleet_on(tmp_path, database_url) as fleet:
        fleet.start("a", "b")
        answers: dict[str, list[httpx.Response]] = {"a": [], "b": []}

        def race(name: str, offset: int) -> None:
            # Each through its own file, so each reload applies the level its caller wrote.
            source = fleet.workdir / f"{name}.json"
            for index in range(changes_each):
                write_level(source, offset + index)
                answers[name].append(fleet[name].post("/reload", config_source=str(source)))

        threads = [
            threading.Thread(target=race, args=(name, offset)) for name, offset in (("a", 1000), ("b", 2000))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name, responses in answers.items():
            for response in responses:
                if response.status_code == 409:
                    assert response.json()["code"] == "fleet_lock_busy"
                    assert response.json()["running_operation_id"], response.text
                else:
                    assert response.status_code == 200, (name, response.text)
                    assert response.json()["success"], response.text
        log = fleet.log()
        assert log.verify().ok
        applied = [event for event in log.read(types=[ConfigApplied.event_type])]
        # Each change decided on top of the one before it: the desired configs form one chain.
        for before, after in itertools.pairwise(applied):
            assert isinstance(before.payload, ConfigApplied)
            assert isinstance(after.payload, ConfigApplied)
            assert after.payload.previous_hash == before.payload.hash
        final = applied[-1].payload
        assert isinstance(final, ConfigApplied)
        for name in ("a", "b"):
            wait_for(
                f"{name} on the last config",
                lambda name=name: True if fleet[name].get("/current")["full_hash"] == final.hash else None,
            )
        # Each instance answered every config the fleet decided, once, in log order (a decided one
        # names its operation; a followed or restored one the position of its config.applied).
        position_of_operation = {str(event.operation_id): event.position for event in applied}
        every_position = [event.position for event in applied]

        def answered_by(instance_id: str) -> list[int]:
            answered = []
            for event in log.read(types=[InstanceApplied.event_type]):
                payload = event.payload
                if event.instance_id == instance_id and isinstance(payload, InstanceApplied):
                    answered.append(
                        payload.position
                        if payload.position is not None
                        else position_of_operation[str(payload.operation_id)]
                    )
            return answered

        for name in ("a", "b"):
            instance_id = fleet.instance_id(name)
            # A follower serves a change once its services have it and records its answer just after:
            # wait for the record (a loaded machine can put seconds between the two), then compare.
            wait_for(
                f"{name}'s answers",
                lambda instance_id=instance_id: (
                    True if len(answered_by(instance_id)) >= len(every_position) else None
                ),
            )
            assert answered_by(instance_id) == every_position, name
        verify_passes(database_url, fleet.key)


def test_followers_whose_connections_are_terminated_end_on_the_last_config(
    tmp_path: Path, pg_schema_url: str
) -> None:
    changes = scaled(6)
    with fleet_on(tmp_path, pg_schema_url) as fleet:
        names = ["a", "b", "c"]
        fleet.start(*names)
        admin = sa.create_engine(pg_schema_url, isolation_level="AUTOCOMMIT")
        fleet.stack.callback(admin.dispose)
        followers = [fleet.instance_id(name) for name in ("b", "c")]
        ended = 0
        for index in range(changes):
            reload_through(fleet["a"], fleet.config, 100 + index)
            with admin.connect() as connection:
                # A follower whose sessions were all ended has none until its next turn reconnects.
                ended += connection.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = ANY(:names)"
                    ),
                    {"names": [f"confledger {name}" for name in followers]},
                ).scalar_one()
        assert ended >= changes
        last = 100 + changes - 1
        all_receive(fleet, names, last)
        for name in names:
            received = fleet[name].received()
            # Every change, in order, once: nothing skipped, nothing twice.
            assert received[received.index(100) :] == list(range(100, last + 1)), name
        verify_passes(pg_schema_url, fleet.key)


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    with PrivatePostgres.create() as server:
        yield server


def test_a_postgresql_restart_during_a_sequence_of_changes_loses_nothing(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    # On a cluster of the test's own: the shared server is never restarted.
    changes = scaled(6)
    restart_after = changes // 2
    with fleet_on(tmp_path, private_postgres.url) as fleet:
        names = ["a", "b", "c"]
        fleet.start(*names)
        for index in range(changes):
            level = 200 + index
            write_level(fleet.config, level)
            # While the server restarts, a reload may fail (503, or a recorded failure): retried until
            # one applies, as an operator would.
            wait_for(
                f"level {level} applied",
                lambda: True if _reload_succeeds(fleet["a"]) else None,
                timeout=60,
                every=0.5,
            )
            if index == restart_after:
                private_postgres.restart()
        last = 200 + changes - 1
        all_receive(fleet, names, last)
        for name in ("b", "c"):
            received = fleet[name].received()
            # Followers apply exactly the decided changes: every one, in order, once.
            assert received[received.index(200) :] == list(range(200, last + 1)), name
        verify_passes(private_postgres.url, fleet.key)


def _reload_succeeds(instance: Instance) -> bool:
    try:
        response = instance.post("/reload")
    except httpx.TransportError:
        return False
    return response.status_code == 200 and bool(response.json()["success"])
