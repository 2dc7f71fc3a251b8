"""A fleet of ``ConfigReloader``s in one process on one log, both backends: following, the fleet lock,
the fleet view. (Separate processes: tests/integration/api/test_fleet_processes.py.)

Each reloader has its own instance id, its own services (which record what they were given) and its own
connection pool, so they meet only through the database, as instances on different hosts do.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field, ValidationError
from typer.testing import CliRunner

from confledger.api.cli import app as cli_app
from confledger.api.reloader import ConfigReloader
from confledger.api.schemas import FleetResponse
from confledger.api.settings import Settings
from confledger.store import EventLog, SecretCipher
from confledger.store.decision import FleetVerdict
from confledger.store.events import (
    ConfigRolledBack,
    FleetChangeKept,
    InstanceApplied,
    OperationCompleted,
    OperationStatus,
    Trigger,
)
from confledger.store.fleet import Heartbeat, fleet_lock_for, record_heartbeat
from tests.integration.api.service_harness import READ_TOKEN, serving
from tests.private_postgres import PrivatePostgres, private_postgres  # noqa: F401 (the fixture)
from tests.reliability.test_database_down import private_database

pytestmark = pytest.mark.anyio

KEY = SecretCipher.generate_key()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Small(BaseModel):
    level: int
    name: str = "fleet"


def write(path: Path, level: int) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"level": level}), encoding="utf-8")
    temporary.replace(path)
    return path


class Member:
    """One reloader of the fleet and what its service was handed."""

    def __init__(self, reloader: ConfigReloader) -> None:
        self.reloader = reloader
        self.received: list[int] = []
        self.refuse: set[int] = set()
        self.slow: set[int] = set()  # levels the service takes half a second over

        def service(_old: Any, new: Small) -> bool:
            self.received.append(new.level)
            if new.level in self.slow:
                time.sleep(0.5)
            return new.level not in self.refuse

        reloader.register_config_callback("recorder", service)

    @property
    def level(self) -> int | None:
        current = self.reloader.current
        return None if current is None else current.config.level


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    database_url: str,
    names: list[str],
    *,
    own: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> AsyncIterator[list[Member]]:
    """Reloaders named ``names`` on one log and one source, each with ``settings`` and then the settings
    ``own`` gives its name."""
    source = write(tmp_path / "config.json", 1)
    async with AsyncExitStack() as stack:
        members = []
        for name in names:
            options = {
                "database_url": database_url,
                "encryption_key": KEY,
                "instance_id": name,
                "follow_poll_interval": 0.02,
                "heartbeat_interval": 5.0,
                **settings,
                **(own or {}).get(name, {}),
            }
            reloader = ConfigReloader(config_model=Small, config_source=source, settings=Settings(**options))
            member = Member(reloader)
            await stack.enter_async_context(reloader)
            members.append(member)
        yield members


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def states_become(member: Member, expected: dict[str, str], timeout: float = 10.0) -> dict[str, Any]:
    """The member's fleet view once its states are ``expected`` (the follower folds others' answers as
    they land); fails with the last view seen."""
    view: dict[str, Any] = {}
    with anyio.move_on_after(timeout):
        while True:
            view = await member.reloader.fleet()
            if {i["instance_id"]: i["state"] for i in view["instances"]} == expected:
                return view
            await anyio.sleep(0.02)
    raise AssertionError(f"states never became {expected}: {view}")


def answers(log: EventLog) -> list[tuple[str, int | None, str, str]]:
    """(instance, position answered, role, outcome) of every instance.applied, in log order."""
    found = []
    for event in log.read(types=[InstanceApplied.event_type]):
        payload = event.payload
        assert isinstance(payload, InstanceApplied)
        found.append((event.instance_id, payload.position, payload.role, payload.outcome))
    return found


async def test_sequential_changes_through_different_instances_all_apply_everywhere(
    tmp_path: Path, database_url: str
) -> None:
    async with fleet(tmp_path, database_url, ["a", "b", "c"]) as (a, b, c):
        source = Path(a.reloader.config_source or "")
        # Through a, then (in sequence) through b, then back to the first config through c.
        for member, level in ((a, 2), (b, 3)):
            write(source, level)
            operation = await member.reloader.reload_config()
            assert operation.success, operation.message
            await eventually(lambda level=level: all(m.level == level for m in (a, b, c)))
        rollback = await c.reloader.rollback_config()
        assert rollback.success, rollback.message
        await eventually(lambda: all(m.level == 2 for m in (a, b, c)))
        # Each service heard each change once: the start, 2, 3, and the rollback to 2.
        for member in (a, b, c):
            await eventually(lambda member=member: member.received == [1, 2, 3, 2])
        view = await states_become(a, {"a": "in_sync", "b": "in_sync", "c": "in_sync"})
        assert view["desired_hash"] == a.reloader.current_hash
        log = a.reloader.log
        roles = [(instance, role) for instance, _, role, _ in answers(log)]
        # The first config decided by a at start; each later one decided by one and followed by two.
        assert roles.count(("a", "decided")) == 2
        assert roles.count(("b", "decided")) == 1
        assert roles.count(("c", "decided")) == 1
        assert (
            sum(role == "followed" for _, role in roles) == 3 * 2
        )  # three changes after the start, each followed by the two that did not decide it


async def test_a_refusing_service_leaves_its_instance_drifted_and_the_desired_config_in_place(
    tmp_path: Path, database_url: str
) -> None:
    async with fleet(tmp_path, database_url, ["a", "b"]) as (a, b):
        b.refuse.add(5)
        write(Path(a.reloader.config_source or ""), 5)
        operation = await a.reloader.reload_config()
        assert operation.success
        view = await states_become(b, {"a": "in_sync", "b": "drifted"})
        drifted = next(i for i in view["instances"] if i["instance_id"] == "b")
        assert drifted["failures"][0]["service"] == "recorder"
        assert drifted["lag_positions"] == 0
        assert view["desired_hash"] == a.reloader.current_hash == b.reloader.current_hash


class Strict(Small):
    level: int = Field(le=5)  # this instance's model refuses what the others take


def strict_member(database_url: str, source: Path) -> ConfigReloader:
    """One more instance of the fleet on ``source``, whose own model refuses levels above 5."""
    settings = Settings(
        database_url=database_url,
        encryption_key=KEY,
        instance_id="strict",
        follow_poll_interval=0.02,
        heartbeat_interval=5.0,
    )
    return ConfigReloader(config_model=Strict, config_source=source, settings=settings)


async def test_a_config_an_instance_s_model_refuses_is_answered_once_and_it_keeps_its_own(
    tmp_path: Path, database_url: str
) -> None:
    async with fleet(tmp_path, database_url, ["a"]) as (a,):
        source = Path(a.reloader.config_source or "")
        async with strict_member(database_url, source) as strict:
            operation = await a.reloader.reload_config(config_source=str(write(source, 7)))
            assert operation.success
            await states_become(a, {"a": "in_sync", "strict": "drifted"})
            await anyio.sleep(0.5)  # 25 follow turns: the refusal is not answered again at each
            refusals = [answer for answer in answers(a.reloader.log) if answer[0] == "strict"]
            assert refusals[-1:] == [("strict", refusals[-1][1], "followed", "invalid")]
            assert len([r for r in refusals if r[3] == "invalid"]) == 1
            # It runs what it ran, and says so.
            assert strict.current is not None
            assert strict.current.config.level == 1
            assert a.reloader.current is not None
            assert strict.current.hash != a.reloader.current.hash
            table = CliRunner().invoke(cli_app, ["fleet", "--database", database_url], env={"COLUMNS": "200"})
            [strict_row] = [line for line in table.output.splitlines() if line.strip().startswith("strict")]
            assert f"{a.reloader.current.hash[:16]} (refused)" in strict_row
            # The next change it can take, it takes.
            assert (await a.reloader.reload_config(config_source=str(write(source, 4)))).success
            await eventually(lambda: strict.current is not None and strict.current.config.level == 4)
            await states_become(a, {"a": "in_sync", "strict": "in_sync"})


async def test_a_rollback_through_an_instance_that_refused_the_change_rolls_the_fleet_back(
    tmp_path: Path, database_url: str
) -> None:
    """A rollback moves the fleet: "the previous config" is the one before the newest config.applied, even
    on the instance whose model refused that one and still runs the config before it."""
    async with fleet(tmp_path, database_url, ["a"]) as (a,):
        source = Path(a.reloader.config_source or "")
        async with strict_member(database_url, source) as strict:
            before = a.reloader.current_hash
            assert (await a.reloader.reload_config(config_source=str(write(source, 7)))).success
            await states_become(a, {"a": "in_sync", "strict": "drifted"})
            back = await strict.rollback_config()
            assert back.success, back.error_message
            assert back.new_config_hash == before
            await eventually(lambda: a.level == 1)
            await states_become(a, {"a": "in_sync", "strict": "in_sync"})


async def test_the_fleet_lock_held_past_the_wait_is_a_409_naming_the_holder(
    tmp_path: Path, database_url: str
) -> None:
    async with fleet(tmp_path, database_url, ["a"], fleet_lock_wait=0.2) as (a,):
        lease = fleet_lock_for(a.reloader.log.engine).acquire(
            "0190e0e0-0000-7000-8000-000000000001@elsewhere", 1.0
        )
        try:
            write(Path(a.reloader.config_source or ""), 7)
            operation = await a.reloader.reload_config()
        finally:
            lease.release()
        assert operation.rejected
        assert operation.reason == "fleet_lock_busy"
        assert operation.running_operation_id == "0190e0e0-0000-7000-8000-000000000001"
        assert "elsewhere" in operation.message
        # The refusal says how long the request was kept: at least the whole wait for the lock, in the
        # answer and as history reads it back.
        assert operation.total_duration_ms >= 200
        (listed,) = [
            op for op in a.reloader.get_reload_history(10) if op.operation_id == operation.operation_id
        ]
        assert listed.total_duration_ms == operation.total_duration_ms
        assert (listed.completed_at - listed.started_at).total_seconds() >= 0.2
        # Released: the next one goes through.
        assert (await a.reloader.reload_config()).success


async def test_total_duration_counts_the_wait_for_the_fleets_turn(tmp_path: Path, database_url: str) -> None:
    # total_duration_ms runs from the request: a reload that waited for another instance's turn says so.
    async with fleet(tmp_path, database_url, ["a"], fleet_lock_wait=10.0) as (a,):
        lease = fleet_lock_for(a.reloader.log.engine).acquire(
            "0190e0e0-0000-7000-8000-000000000002@elsewhere", 1.0
        )
        releasing: list[float] = []

        def release() -> None:
            releasing.append(time.perf_counter())  # before: the turn cannot be had until after it
            lease.release()

        write(Path(a.reloader.config_source or ""), 8)
        releaser = threading.Timer(0.3, release)
        asked = time.perf_counter()
        releaser.start()
        try:
            # Asked at ``asked``: the wait from then until the holder let go is inside the total.
            operation = await a.reloader.reload_config(received=asked)
        finally:
            releaser.join()
        assert operation.success, operation.message
        waited_ms = (releasing[0] - asked) * 1000
        assert waited_ms >= 300
        assert operation.total_duration_ms > waited_ms


async def test_a_reload_that_must_follow_a_rollback_first_still_honours_its_pin(
    tmp_path: Path, database_url: str
) -> None:
    # b follows only when told. It is on 2 when a rolls back from 2 to 1, which pins 2. b's reload of the
    # file, which still holds 2, takes the fleet's turn and follows the rollback first (b is then on 1),
    # and only then judges the file: 2 is a change from 1, and a pinned one, so it is refused. Had the
    # file been read before following, it would have been judged against b's old config (2: no change,
    # so no look at the pins), and then applied as a change from 1, undoing the rollback.
    async with fleet(tmp_path, database_url, ["a", "b"], follow=False) as (a, b):
        source = Path(a.reloader.config_source or "")
        write(source, 2)
        assert (await a.reloader.reload_config()).success
        await b.reloader.runner.follow()
        assert b.level == 2
        rollback = await a.reloader.rollback_config()
        assert rollback.success, rollback.message
        operation = await b.reloader.reload_config()
        assert not operation.success
        assert operation.reason == "rolled_back_hash"
        assert (a.level, b.level) == (1, 1)
        assert b.received == [1, 2, 1]


async def test_a_read_ahead_is_followed_once_and_only_while_nothing_was_followed_since(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The doorbell's thread reads what was decided as it wakes (read_ahead). The turn uses that read
    # instead of its own; but if an operation of this instance followed those changes in between, the
    # read is stale and following it would tell b's service of 2 a second time.
    async with fleet(tmp_path, database_url, ["a", "b"], follow=False) as (a, b):
        source = Path(a.reloader.config_source or "")
        write(source, 2)
        assert (await a.reloader.reload_config()).success
        stale = b.reloader.runner.read_ahead(b.reloader.runner.followed)
        assert (await b.reloader.reload_config()).success  # its turn follows a's 2 first
        assert (b.level, b.received) == (2, [1, 2])
        await b.reloader.runner.follow(stale)
        assert b.received == [1, 2]
        followed = [
            answer for answer in answers(b.reloader.log) if answer[:1] == ("b",) and answer[2] == "followed"
        ]
        assert len(followed) == 1  # a's 2, answered once

        write(source, 3)
        assert (await a.reloader.reload_config()).success
        ahead = b.reloader.runner.read_ahead(b.reloader.runner.followed)
        reads: list[int] = []
        read = b.reloader.runner._applied_since
        monkeypatch.setattr(
            b.reloader.runner, "_applied_since", lambda after: reads.append(after) or read(after)
        )
        await b.reloader.runner.follow(ahead)
        assert (b.level, b.received, reads) == (3, [1, 2, 3], [])  # followed from the read ahead alone


async def test_confledger_fleet_shows_what_get_fleet_shows(tmp_path: Path, database_url: str) -> None:
    async with fleet(tmp_path, database_url, ["a", "b"]) as (a, b):
        b.refuse.add(9)
        write(Path(a.reloader.config_source or ""), 9)
        assert (await a.reloader.reload_config()).success
        served = FleetResponse.of(await states_become(a, {"a": "in_sync", "b": "drifted"}))
        result = CliRunner().invoke(cli_app, ["fleet", "--database", database_url, "--json"])
        table = CliRunner().invoke(cli_app, ["fleet", "--database", database_url])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["desired_hash"] == served.desired_hash
    # Both were running when the command read the log (heartbeats within 3 intervals).
    assert {i["instance_id"]: (i["state"], i["applied_hash"]) for i in shown["instances"]} == {
        i.instance_id: (i.state, i.applied_hash) for i in served.instances
    }
    [drifted] = [i for i in shown["instances"] if i["state"] == "drifted"]
    assert drifted["failures"] == [
        {"service": "recorder", "outcome": "failed", "error": "callback returned False"}
    ]
    assert table.exit_code == 0, table.output
    assert "drifted" in table.output
    assert "a (reload)" in table.output  # who decided the desired config, and how


def test_get_fleet_needs_a_token_and_answers_the_fleet(tmp_path: Path, database_url: str) -> None:
    with serving(tmp_path, database_url) as service:
        assert service.get("/fleet", token=None).status_code == 401
        response = service.get("/fleet", token=READ_TOKEN)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["desired_hash"] == service.current_full_hash()[:16]  # type: ignore[index]
        [instance] = body["instances"]
        assert instance["instance_id"] == service.log.instance_id
        assert instance["state"] == "in_sync"
        assert instance["role"] == "decided"
        assert service.get("/status").json()["fleet_threshold"] is None  # off unless set
        assert body["gone_hidden"] == 0


def test_instances_gone_longer_than_a_day_are_counted_and_listed_on_asking(
    tmp_path: Path, database_url: str
) -> None:
    """Every restart under ``host:pid`` is a new instance: a week's deploys must not bury the live one."""
    with serving(tmp_path, database_url) as service:
        long_ago = datetime.now(UTC) - timedelta(days=3)
        for pid in (101, 102):
            record_heartbeat(
                service.log.engine,
                Heartbeat(f"old-host:{pid}", "old-host", pid, "1", long_ago, long_ago, 1, 30.0),
            )
        default = service.get("/fleet", token=READ_TOKEN).json()
        every = service.get("/fleet?all=true", token=READ_TOKEN).json()
        url = service.database_url
    assert [i["instance_id"] for i in default["instances"]] == [service.log.instance_id]
    assert default["gone_hidden"] == 2
    assert {i["instance_id"]: i["state"] for i in every["instances"]} == {
        service.log.instance_id: "in_sync",
        "old-host:101": "gone",
        "old-host:102": "gone",
    }
    assert every["gone_hidden"] == 0
    table = CliRunner().invoke(cli_app, ["fleet", "--database", url])
    assert table.exit_code == 0, table.output
    assert "2 instances not listed" in table.output
    assert "old-host" not in table.output
    listed = CliRunner().invoke(cli_app, ["fleet", "--database", url, "--all", "--json"])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.output)["instances"]) == 3


def rollbacks_recorded(log: EventLog) -> list[ConfigRolledBack]:
    found = []
    for event in log.read(types=[ConfigRolledBack.event_type]):
        assert isinstance(event.payload, ConfigRolledBack)
        found.append(event.payload)
    return found


async def test_a_change_too_few_instances_applied_is_rolled_back_fleet_wide(
    tmp_path: Path, database_url: str
) -> None:
    async with fleet(tmp_path, database_url, ["a", "b", "c"], fleet_rollback_threshold=1.0) as (a, b, c):
        c.refuse.add(5)
        write(Path(a.reloader.config_source or ""), 5)
        operation = await a.reloader.reload_config()
        assert operation.success, operation.message  # a's own services took it
        # c's answer (drifted) makes 2 of 3 < 1.0: a rolls the fleet back, and every instance follows.
        await eventually(lambda: all(m.level == 1 for m in (a, b, c)))
        for member in (a, b):
            await eventually(lambda member=member: member.received == [1, 5, 1])
        [rollback] = a.reloader.get_reload_history(1)
        assert (rollback.kind, rollback.trigger, rollback.actor) == ("rollback", "fleet_threshold", "system")
        assert rollback.success
        # Settled by c's refusal alone: whether b's answer had landed by then is the machine's timing.
        assert re.search(r"[12] of 3 instances applied", rollback.message), rollback.message
        [recorded] = rollbacks_recorded(a.reloader.log)
        assert (recorded.reason, recorded.threshold) == ("fleet_threshold", 1.0)
        # And an auditor's SQL says which rollback it was.
        with a.reloader.log.engine.connect() as connection:
            reasons = connection.execute(
                sa.text("SELECT reason FROM config_history WHERE operation_id = :id"),
                {"id": str(rollback.operation_id)},
            ).scalars()
            assert list(reasons) == ["fleet threshold rollback"]
        assert recorded.success_ratio in (pytest.approx(1 / 3), pytest.approx(2 / 3))
        assert recorded.from_hash == operation.new_config_hash
        await states_become(a, {"a": "in_sync", "b": "in_sync", "c": "in_sync"})
        # Pinned, as after a manual rollback: the file still holds 5, and a reload does not bring it back...
        refused = await a.reloader.reload_config()
        assert (refused.success, refused.reason) == (False, "rolled_back_hash")
        assert "by system" in (refused.error_message or "")
        # ...until c takes it and the operator says so.
        c.refuse.clear()
        again = await a.reloader.reload_config(force=True)
        assert again.success, again.message
        await eventually(lambda: all(m.level == 5 for m in (a, b, c)))
        await states_become(a, {"a": "in_sync", "b": "in_sync", "c": "in_sync"})
        assert len(rollbacks_recorded(a.reloader.log)) == 1


async def test_a_change_enough_instances_applied_stands(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confledger.api.fleet_judge")
    async with fleet(tmp_path, database_url, ["a", "b", "c"], fleet_rollback_threshold=0.5) as (a, b, c):
        c.refuse.add(5)
        write(Path(a.reloader.config_source or ""), 5)
        operation = await a.reloader.reload_config()
        assert operation.success
        await eventually(lambda: any("fleet threshold met" in r.getMessage() for r in caplog.records))
        assert "2 of 3 instances applied" in caplog.text
        assert rollbacks_recorded(a.reloader.log) == []
        # The verdict may come before c has followed the change ("1 without an answer"): c gets there,
        # its service's refusal notwithstanding, and nothing rolls the fleet back meanwhile.
        await eventually(lambda: [m.level for m in (a, b, c)] == [5, 5, 5])
        assert rollbacks_recorded(a.reloader.log) == []
        # The verdict is in the log (appended once it is said), so every instance knows it was kept.
        await eventually(lambda: len(a.reloader.log.read(types=[FleetChangeKept.event_type])) > 0)
        [kept] = a.reloader.log.read(types=[FleetChangeKept.event_type])
        assert kept.instance_id == "a"
        assert isinstance(kept.payload, FleetChangeKept)
        assert (kept.payload.hash, kept.payload.operation_id, kept.payload.threshold) == (
            operation.new_config_hash,
            operation.operation_id,
            0.5,
        )
        # Kept once a and b applied it: c's refusal may have landed by then, or not yet.
        assert kept.payload.applied == 2
        assert kept.payload.failed + kept.payload.waiting == 1
        await eventually(
            lambda: (
                b.reloader.log.head() >= kept.position and b.reloader.projections.position >= kept.position
            )
        )
        seen = FleetResponse.of(await b.reloader.fleet())
        assert (seen.desired_decided_by, seen.desired_kind) == ("a", "reload")
        assert seen.desired_operation_id == operation.operation_id
        assert seen.fleet_threshold_kept is not None
        assert seen.fleet_threshold_kept.applied == 2
        # A second judge's rollback, however it came to its verdict, is refused under the lock.
        late = FleetVerdict(
            operation.new_config_hash or "", 1, 2, 0, 0.5, operation_id=operation.operation_id
        )
        refused = await b.reloader.runner.rollback(
            operation.previous_config_hash, trigger=Trigger.FLEET_THRESHOLD, fleet_verdict=late
        )
        assert (refused.success, refused.reason) == (False, "fleet_change_kept")
        assert [m.level for m in (a, b, c)] == [5, 5, 5]


async def test_a_change_whose_decider_stopped_before_judging_it_is_judged_by_the_next_in_line(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confledger.api.fleet_judge")
    async with fleet(
        # a entered last, so that it can leave first (each reloader holds a task group of its own).
        tmp_path,
        database_url,
        ["b", "c", "a"],
        fleet_rollback_threshold=1.0,
        fleet_answer_wait=1.0,
        # a stops before it judges, however long its reload and its stop take on a loaded machine (with
        # the others' second it judged first when they took longer); b and c stand by for their own.
        own={"a": {"fleet_answer_wait": 60.0}},
    ) as (b, c, a):
        # A live instance that never answers keeps the change open until the wait is over...
        now = datetime.now(UTC)
        record_heartbeat(a.reloader.log.engine, Heartbeat("ghost", "elsewhere", 1, "0", now, now, 0, 60.0))
        write(Path(a.reloader.config_source or ""), 6)
        operation = await a.reloader.reload_config()
        assert operation.success
        # ...and the decider stops before it is (a rolling restart, say): it is gone at once.
        await a.reloader.__aexit__(None, None, None)
        assert b.reloader.log.read(types=[FleetChangeKept.event_type, ConfigRolledBack.event_type]) == []
        # b, the live instance with the smallest id, stands in: c's and b's answers against the ghost's
        # silence, a not counted.
        await eventually(lambda: b.received == [1, 6, 1] and c.received == [1, 6, 1])
        [recorded] = rollbacks_recorded(b.reloader.log)
        assert (recorded.reason, recorded.from_hash) == ("fleet_threshold", operation.new_config_hash)
        assert recorded.success_ratio == pytest.approx(2 / 3)
        [rollback] = b.reloader.get_reload_history(1)
        assert (rollback.trigger, rollback.actor, rollback.success) == ("fleet_threshold", "system", True)
        [event] = b.reloader.log.read(types=[ConfigRolledBack.event_type])
        assert event.instance_id == "b"
        assert "which a decided and did not judge" in caplog.text
        # c stood by and left it to b: one rollback, and no refused attempt beside it.
        await anyio.sleep(0.5)
        assert [op.kind for op in c.reloader.get_reload_history(3)] == ["rollback", "reload", "reload"][
            : len(c.reloader.get_reload_history(3))
        ]
        assert len(rollbacks_recorded(c.reloader.log)) == 1


async def test_an_instance_silent_past_the_wait_counts_as_not_applied(
    tmp_path: Path, database_url: str
) -> None:
    async with fleet(
        tmp_path, database_url, ["a", "b"], fleet_rollback_threshold=1.0, fleet_answer_wait=2.0
    ) as (a, b):
        # A live instance (its heartbeat is fresh) that never answers: hung, or partitioned from the log.
        now = datetime.now(UTC)
        ghost = Heartbeat("ghost", "elsewhere", 1, "0", now, now, 0, 60.0)
        record_heartbeat(a.reloader.log.engine, ghost)
        write(Path(a.reloader.config_source or ""), 6)
        assert (await a.reloader.reload_config()).success
        await eventually(lambda: all(m.level == 1 for m in (a, b)))
        [recorded] = rollbacks_recorded(a.reloader.log)
        # The ghost never answered; b's answer lands well inside the wait on any machine this runs on.
        assert recorded.success_ratio == pytest.approx(2 / 3)
        [rollback] = a.reloader.get_reload_history(1)
        assert "2 of 3 instances applied" in rollback.message
        assert "1 without an answer" in rollback.message


async def test_a_fleet_threshold_without_following_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="fleet_rollback_threshold needs follow"):
        Settings(fleet_rollback_threshold=0.5, follow=False)


async def test_a_fleet_rollback_after_a_later_change_is_not_made(tmp_path: Path, database_url: str) -> None:
    async with fleet(tmp_path, database_url, ["a", "b"]) as (a, b):
        source = Path(a.reloader.config_source or "")
        judged = await a.reloader.reload_config(config_source=str(write(source, 2)))
        later = await b.reloader.reload_config(config_source=str(write(source, 3)))
        assert judged.success
        assert later.success
        # A verdict on 2, arriving once 3 is the fleet's config: checked under the lock, it stands down.
        verdict = FleetVerdict(judged.new_config_hash or "", applied=1, failed=1, waiting=0, threshold=1.0)
        refused = await a.reloader.runner.rollback(
            judged.previous_config_hash, trigger=Trigger.FLEET_THRESHOLD, fleet_verdict=verdict
        )
        assert (refused.success, refused.reason) == (False, "fleet_moved_on")
        assert a.level == 3
        assert rollbacks_recorded(a.reloader.log) == []


async def test_stopping_during_a_fleet_rollback_finishes_it_first(tmp_path: Path, database_url: str) -> None:
    async with fleet(tmp_path, database_url, ["a", "b"], fleet_rollback_threshold=1.0) as (a, b):
        b.refuse.add(5)
        a.slow.add(1)  # the rollback's config: a's service is still busy with it when a is told to stop
        write(Path(a.reloader.config_source or ""), 5)
        assert (await a.reloader.reload_config()).success
        await eventually(lambda: a.received == [1, 5, 1])
    # Stopped (b, then a) while a's rollback was under way: it was finished, not left open.
    with EventLog(database_url, cipher=SecretCipher.from_env_value(KEY), instance_id="reader") as log:
        assert log.open_operations() == []
        [rolled] = log.read(types=[ConfigRolledBack.event_type])
        completed = [
            event.payload
            for event in log.read(types=[OperationCompleted.event_type])
            if event.operation_id == rolled.operation_id
        ]
        assert [payload.status for payload in completed] == [OperationStatus.SUCCESS]  # type: ignore[union-attr]


def test_get_status_shows_what_the_fleet_threshold_is_judging(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (
        ("FLEET_ROLLBACK_THRESHOLD", "1.0"),
        ("FLEET_ANSWER_WAIT", "60"),
        ("FOLLOW_POLL_INTERVAL", "0.02"),
    ):
        monkeypatch.setenv(f"CONFLEDGER_{name}", value)
    with serving(tmp_path, database_url) as service:
        # A live instance that has not answered keeps the judgement open for the whole wait.
        now = datetime.now(UTC)
        record_heartbeat(service.log.engine, Heartbeat("ghost", "elsewhere", 1, "0", now, now, 0, 60.0))
        service.source.write_text(service.source.read_text().replace("pool_size: 20", "pool_size: 21"))
        reloaded = service.post("/reload", json={}).json()
        assert reloaded["success"], reloaded

        def judging() -> list[dict[str, Any]]:
            return list(service.get("/status").json()["fleet_threshold"]["judging"])

        deadline = time.monotonic() + 10
        while not judging():
            assert time.monotonic() < deadline, "the judgement never showed"
            time.sleep(0.02)
        status = service.get("/status").json()["fleet_threshold"]
        assert (status["threshold"], status["answer_wait_s"]) == (1.0, 60.0)
        [open_] = status["judging"]
        assert open_["config_hash"] == reloaded["new_config_hash"]
        assert (open_["applied"], open_["failed"], open_["waiting"]) == (1, 0, 1)
        until = datetime.fromisoformat(open_["until"].replace("Z", "+00:00"))
        assert until - datetime.now(UTC) > timedelta(seconds=50)
    # Stopped with the judgement open: the change stands, nothing was rolled back.
    with EventLog(database_url, cipher=None, instance_id="reader") as log:
        assert rollbacks_recorded(log) == []


async def test_the_fleet_threshold_waits_out_a_database_outage(
    tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confledger.api.fleet_judge")
    server: PrivatePostgres = request.getfixturevalue("private_postgres")
    with private_database(server) as url:
        # The wait is about as long as the outage (2 s, and the start): the outage begins before it is over
        # unless stopping the server takes longer than that, and it costs the test nothing.
        async with fleet(tmp_path, url, ["a", "b"], fleet_rollback_threshold=1.0, fleet_answer_wait=3.0) as (
            a,
            b,
        ):
            now = datetime.now(UTC)
            record_heartbeat(
                a.reloader.log.engine, Heartbeat("ghost", "elsewhere", 1, "0", now, now, 0, 60.0)
            )
            write(Path(a.reloader.config_source or ""), 7)
            assert (await a.reloader.reload_config()).success
            # The database goes away before the wait is over: the judge can neither read the answers
            # nor roll back until it is back, and then it does.
            await anyio.to_thread.run_sync(server.stop)
            await anyio.sleep(2.0)
            await anyio.to_thread.run_sync(server.start)
            await eventually(lambda: all(m.level == 1 for m in (a, b)), timeout=30)
            [recorded] = rollbacks_recorded(a.reloader.log)
            assert recorded.reason == "fleet_threshold"
    said = [record.getMessage() for record in caplog.records if record.name == "confledger.api.fleet_judge"]
    # The outage met and its end, each said once per outage, not at every look (a hundred looks in 2 s;
    # a connection the pool still held from before may add one more pair as it is found dead).
    assert 1 <= sum("cannot be read" in line for line in said) <= 2, said
    assert 1 <= sum("can be read again" in line for line in said) <= 2, said


async def test_an_instance_warns_once_when_another_process_beats_under_its_id(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes given one CONFLEDGER_INSTANCE_ID overwrite each other's heartbeat and show as one
    instance; the one that finds the other's beat between two of its own says so. A predecessor's row,
    found by the first beat of a restart under the same id, is no such twin."""
    now = datetime.now(UTC)
    with EventLog(database_url, instance_id="setup") as log:
        record_heartbeat(log.engine, Heartbeat("a", "old-host", 1, "0", now, now, 0, 0.05))
    caplog.set_level(logging.WARNING, logger="confledger.store.follower")
    async with fleet(tmp_path, database_url, ["a"], heartbeat_interval=0.1) as (a,):
        await anyio.sleep(0.4)  # a few beats over the predecessor's row
        assert "duplicate_instance_id" not in caplog.text
        for _ in range(3):  # the twin keeps beating: one warning, not one per beat
            record_heartbeat(a.reloader.log.engine, Heartbeat("a", "twin-host", 4242, "0", now, now, 0, 0.05))
            await eventually(lambda: "twin-host" in caplog.text)
            await anyio.sleep(0.25)
    warnings = [
        record.getMessage() for record in caplog.records if "duplicate_instance_id" in record.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "host twin-host, pid 4242" in warnings[0]
    assert "instance a " in warnings[0]


@pytest.mark.parametrize(
    ("pool", "between_bursts", "at_least", "at_most"),
    [
        # SQLAlchemy's pool, as serve runs by default: the writer's and the fleet lock's, 5 more kept open
        # after a burst and up to 10 beyond those in one, and the LISTEN
        ({}, 8, 9, 16),
        # capped: the writer's, the fleet lock's and one for reads, and the LISTEN
        ({"database_pool_size": 3, "database_max_overflow": 0}, 4, 4, 4),
    ],
)
async def test_the_postgresql_sessions_an_instance_holds_stay_within_its_pool(
    tmp_path: Path,
    pg_schema_url: str,
    pool: dict[str, int],
    between_bursts: int,
    at_least: int,
    at_most: int,
) -> None:
    """The README's sizing of ``max_connections``: the log's writer, the fleet lock and the LISTEN are held
    for the instance's life, the writer and the lock taken from the reads' pool, which keeps at most
    ``database_pool_size`` open between bursts (8 sessions in all by default) and opens
    ``database_max_overflow`` more in one (16). A burst of reads meets the limit and never passes it, and
    every read is served, waiting its turn once the pool is spent."""
    name = f"connections-{uuid.uuid4().hex[:8]}"
    probe = sa.create_engine(pg_schema_url)
    seen: list[int] = []

    def sessions(like: str = "%") -> int:
        with probe.connect() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                        "AND query LIKE :like"
                    ),
                    {"name": f"confledger {name}", "like": like},
                ).scalar_one()
            )

    try:
        async with fleet(tmp_path, pg_schema_url, [name], **pool) as (member,):
            await eventually(lambda: sessions("LISTEN%") == 1)  # the follower's doorbell is open
            assert sessions() <= between_bursts
            engine = member.reloader.log.engine

            def read_slowly() -> None:
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT pg_sleep(0.1)")

            burst_over = threading.Event()

            def sample() -> None:
                while not burst_over.is_set():
                    seen.append(sessions())
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                async with anyio.create_task_group() as group:
                    for _ in range(20):
                        group.start_soon(anyio.to_thread.run_sync, read_slowly)
            finally:
                burst_over.set()
                sampler.join()
            assert at_least <= max(seen) <= at_most, seen
            assert sessions() <= between_bursts
    finally:
        probe.dispose()
