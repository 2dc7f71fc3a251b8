"""store.operations.OperationRunner: the straight line of one operation, on a real SQLite log (no model)."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from confledger.store import EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.calls import UserCalls
from confledger.store.errors import InitialConfigError
from confledger.store.events import ConfigApplied, OperationStarted, ServiceNotified, ServiceOutcome
from confledger.store.operations import OperationRunner
from confledger.store.outcome import ReloadOperation, ReloadStatus
from confledger.store.services import ServiceRegistry
from confledger.store.validation import ValidationPipeline

pytestmark = pytest.mark.anyio

CIPHER = SecretCipher([SecretCipher.generate_key()])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def no_region(config: dict[str, Any]) -> dict[str, list[str]]:
    return {"errors": [] if "region" in config else ["region is required"]}


async def no_region_async(config: dict[str, Any]) -> dict[str, list[str]]:
    return no_region(config)


@asynccontextmanager
async def runner_on(
    tmp_path: Path,
    source: Path | None,
    *,
    threshold: float = 0.5,
    automatic: bool = True,
    instance: str = "unit",
    services: ServiceRegistry | None = None,
    notify_on_start: bool = True,
    validators: list[Callable[[Any], Any]] | None = None,
) -> AsyncIterator[OperationRunner]:
    log = EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id=instance, cipher=CIPHER)
    runner = OperationRunner(
        log,
        pipeline=ValidationPipeline(
            None, [no_region] if validators is None else validators, validator_timeout=5.0, max_items=50
        ),
        services=services if services is not None else ServiceRegistry(),
        calls=UserCalls(4),
        config_source=source,
        enable_automatic_rollback=automatic,
        rollback_threshold=threshold,
        max_source_bytes=1 << 20,
        callback_timeout=5.0,
        notify_on_start=notify_on_start,
        version="test",
        fleet_lock_wait=5.0,
    )
    try:
        await runner.start()
        yield runner
    finally:
        log.close()


def types(runner: OperationRunner, operation: ReloadOperation) -> list[str]:
    return [event.type for event in runner.log.read_operation(operation.operation_id)]


def accept(old: Any, new: Any) -> bool:
    return True


def refuse(old: Any, new: Any) -> bool:
    return False


START = ["operation.started", "config.loaded", "validation.passed"]


@pytest.mark.parametrize(
    ("body", "services", "options", "status", "success", "events"),
    [
        # a change every service accepts: the start, the answers, the applied config
        (
            {"region": "us"},
            [accept, accept],
            {},
            ReloadStatus.SUCCESS,
            True,
            [*START, "service.notified", "service.notified", "config.applied", "operation.completed"],
        ),
        # no services: applied in one go
        (
            {"region": "us"},
            [],
            {},
            ReloadStatus.SUCCESS,
            True,
            [*START, "config.applied", "operation.completed"],
        ),
        # the same body again: a no-op, nobody notified
        (
            {"region": "eu"},
            [accept],
            {},
            ReloadStatus.SUCCESS,
            True,
            ["operation.started", "config.loaded", "config.unchanged", "operation.completed"],
        ),
        # the same body, forced: a full operation
        (
            {"region": "eu"},
            [accept],
            {"force": True},
            ReloadStatus.SUCCESS,
            True,
            [*START, "service.notified", "config.applied", "operation.completed"],
        ),
        # a validator refuses: nobody notified
        (
            {"zone": "a"},
            [accept],
            {},
            ReloadStatus.FAILED,
            False,
            ["operation.started", "config.loaded", "validation.failed", "operation.completed"],
        ),
        # a dry run validates and stops
        (
            {"region": "us"},
            [accept],
            {"dry_run": True},
            ReloadStatus.SUCCESS,
            True,
            [*START, "operation.completed"],
        ),
        # 1 of 3 accepted: compensated and rolled back automatically, not applied
        (
            {"region": "us"},
            [accept, refuse, refuse],
            {},
            ReloadStatus.ROLLED_BACK,
            False,
            [*START, *["service.notified"] * 4, "config.rolled_back", "operation.completed"],
        ),
    ],
)
async def test_one_reload_records_its_steps_in_order(
    tmp_path: Path,
    body: dict[str, Any],
    services: list[Callable[[Any, Any], bool]],
    options: dict[str, bool],
    status: ReloadStatus,
    success: bool,
    events: list[str],
) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source) as runner:
        before = runner.active
        for index, callback in enumerate(services):
            runner.services.register(f"s{index}", callback)
        write(source, body)
        operation = await runner.reload(**options)
        assert (operation.status, operation.success) == (status, success)
        assert types(runner, operation) == events
        applied = "config.applied" in events
        assert (runner.active is not before) is applied
        assert runner.running_operation_id is None


@pytest.mark.parametrize(
    ("validators", "services", "hops"),
    [
        ([], 0, 1),  # no user code: the whole reload, its reads and its commit, is one thread hop
        ([no_region], 0, 1),  # sync validators: called by the line's own thread
        ([no_region], 2, 1),  # sync validators and services: all in the line's thread
        ([no_region_async], 2, 2),  # an async validator runs on the loop: the rest is a hop of its own
    ],
)
async def test_a_reload_takes_one_thread_hop_and_one_per_async_user_code(
    tmp_path: Path, validators: list[Callable[[Any], Any]], services: int, hops: int
) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source, validators=validators) as runner:
        for index in range(services):
            runner.services.register(f"s{index}", accept)
        made: list[str] = []
        original = anyio.to_thread.run_sync

        async def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
            made.append(getattr(function, "__name__", repr(function)))
            return await original(function, *args, **kwargs)

        write(source, {"region": "us"})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(anyio.to_thread, "run_sync", counting)
            operation = await runner.reload()
        assert operation.success
        assert len(made) == hops, made


async def test_the_start_is_committed_before_the_first_service_hears_of_the_change(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    seen: list[list[str]] = []
    async with runner_on(tmp_path, source) as runner:

        def looks_at_the_log(old: Any, new: Any) -> bool:
            # Another connection, as a process reading after a crash would see it.
            with EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id="reader") as reader:
                operation_id = runner.running_operation_id
                assert operation_id is not None
                seen.append([event.type for event in reader.read_operation(operation_id)])
            return True

        runner.services.register("watcher", looks_at_the_log)
        write(source, {"region": "us"})
        operation = await runner.reload()
    assert seen == [START]
    assert operation.success


@pytest.mark.parametrize(
    ("body", "services", "durable"),
    [
        # services to tell: the start commits without waiting for the disk, the outcome makes both durable
        ({"region": "us"}, 2, [False, True]),
        # nobody to tell: the start and the outcome are one durable commit
        ({"region": "us"}, 0, [True]),
        # refused by a validator: the refusal is the outcome, durable
        ({"zone": "a"}, 2, [True]),
    ],
)
async def test_only_the_outcome_waits_for_the_disk(
    tmp_path: Path, body: dict[str, Any], services: int, durable: list[bool]
) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source) as runner:
        for index in range(services):
            runner.services.register(f"s{index}", accept)
        appended: list[bool] = []
        original = runner.log.append_recorded

        def noting(*args: Any, durable: bool = True, **kwargs: Any) -> Any:
            appended.append(durable)
            return original(*args, durable=durable, **kwargs)

        write(source, body)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runner.log, "append_recorded", noting)
            await runner.reload()
        assert appended == durable


async def test_a_crash_mid_notification_leaves_an_interrupted_operation(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    entered = anyio.Event()

    async def hangs(old: Any, new: Any) -> bool:
        entered.set()
        await anyio.sleep(60)
        return True

    async with runner_on(tmp_path, source) as runner:
        runner.services.register("hangs", hangs)
        write(source, {"region": "us"})
        async with anyio.create_task_group() as group:
            group.start_soon(runner.reload)
            await entered.wait()
            running = runner.running_operation_id
            group.cancel_scope.cancel()  # the process dies while the service holds the change
    assert running is not None
    async with runner_on(tmp_path, source) as restarted:
        events = restarted.log.read_operation(running)
        assert [event.type for event in events] == [*START, "operation.completed"]
        assert restarted.active is not None
        assert restarted.active.config == {"region": "eu"}  # never applied


async def test_reload_and_rollback_share_one_slot(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    entered, gate = anyio.Event(), anyio.Event()

    async def blocks(old: Any, new: Any) -> bool:
        entered.set()
        await gate.wait()
        return True

    async with runner_on(tmp_path, source) as runner:
        write(source, {"region": "us"})
        assert (await runner.reload()).success
        runner.services.register("blocks", blocks)
        async with anyio.create_task_group() as group:
            group.start_soon(runner.rollback)
            await entered.wait()
            running = runner.running_operation_id
            second = await runner.reload(force=True)
            gate.set()
    assert second.rejected
    assert second.running_operation_id == running
    assert second.status is ReloadStatus.FAILED
    assert types(runner, second) == ["operation.rejected"]


async def test_a_manual_rollback_is_rolled_back_and_a_success(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source) as runner:
        write(source, {"region": "us"})
        await runner.reload()
        back = await runner.rollback()
        assert (back.status, back.success, back.kind) == (
            ReloadStatus.ROLLED_BACK,
            True,
            OperationKind.ROLLBACK,
        )
        assert runner.active is not None
        assert runner.active.config == {"region": "eu"}
        assert types(runner, back) == [
            "operation.started",
            "validation.passed",
            "config.rolled_back",
            "config.applied",
            "operation.completed",
        ]


async def test_signal_bursts_coalesce_into_one_follow_up(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    entered, gate = anyio.Event(), anyio.Event()

    async def blocks(old: Any, new: Any) -> bool:
        entered.set()
        await gate.wait()
        return True

    async with runner_on(tmp_path, source) as runner:
        runner.services.register("blocks", blocks)
        write(source, {"region": "us"})
        answers: list[ReloadOperation | None] = []

        async def request() -> None:
            answers.append(await runner.request_reload(Trigger.SIGNAL))

        async with anyio.create_task_group() as group:
            group.start_soon(runner.reload)
            await entered.wait()
            for _ in range(5):
                group.start_soon(request)
            await anyio.wait_all_tasks_blocked()
            write(source, {"region": "ap"})
            gate.set()
    follow_ups = [answer for answer in answers if answer is not None]
    assert len(answers) == 5
    assert len(follow_ups) == 1
    assert follow_ups[0].trigger is Trigger.SIGNAL
    assert runner.active is not None
    assert runner.active.config == {"region": "ap"}


async def test_config_for_hash_knows_only_the_current_config(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source) as runner:
        first = runner.active
        assert first is not None
        assert runner.config_for_hash(first.hash) is first.config
        write(source, {"region": "us"})
        await runner.reload()
        assert runner.config_for_hash(first.hash) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # the validator refuses it
        ({"zone": "a"}, "validation_failed"),
        # not a JSON object
        ("[1, 2]", "not_a_mapping"),
    ],
)
async def test_an_initial_config_that_cannot_be_applied_raises(
    tmp_path: Path, body: dict[str, Any] | str, reason: str
) -> None:
    source = tmp_path / "config.json"
    source.write_text(body if isinstance(body, str) else json.dumps(body), encoding="utf-8")
    with pytest.raises(InitialConfigError) as raised:
        async with runner_on(tmp_path, source):
            pass
    assert raised.value.reason == reason
    assert raised.value.code == "initial_config_not_applied"
    with EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id="reader", cipher=CIPHER) as log:
        events = log.read_operation(raised.value.operation_id)
    assert events[0].type == "operation.started"
    assert events[-1].type == "operation.completed"


async def test_a_source_that_does_not_exist_yet_starts_with_no_config_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "config.json"
    async with runner_on(tmp_path, source) as runner:
        assert runner.active is None
        write(source, {"region": "eu"})
        assert (await runner.reload()).success
    assert "does not exist yet" in caplog.text


async def test_an_open_operation_of_this_instance_is_closed_as_interrupted_at_start(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source):
        pass
    crashed = uuid.uuid4()
    with EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id="unit", cipher=CIPHER) as log:
        log.append(
            [NewEvent(OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API), operation_id=crashed)]
        )
    async with runner_on(tmp_path, source) as runner:
        events = runner.log.read_operation(crashed)
    assert [event.type for event in events] == ["operation.started", "operation.completed"]
    assert events[-1].payload.status.value == "interrupted"  # type: ignore[union-attr]


async def test_a_hung_sync_callback_is_not_called_again_while_it_runs(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    release = threading.Event()
    async with runner_on(tmp_path, source, threshold=0.0) as runner:
        try:
            # A call given up before a worker thread started it never runs (a loaded machine can take
            # longer than the timeout to start one): reloaded again, the callback given twice the time,
            # until it hangs in a thread.
            with anyio.fail_after(60):
                for attempt in itertools.count():
                    runner.services.register(
                        "hung", lambda old, new: release.wait(60), timeout=0.05 * 2**attempt
                    )
                    write(source, {"region": f"us-{attempt}"})
                    first = await runner.reload()
                    if "service:hung" in runner.calls.in_flight():
                        break
            write(source, {"region": "ap"})
            second = await runner.reload()
        finally:
            release.set()
    assert first.services_notified == ("hung:timeout",)
    assert second.services_notified == ("hung:error",)


async def test_a_change_of_many_keys_records_the_first_paths_and_counts_the_rest(tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    many = {"region": "eu", **{f"key{n:05d}": n for n in range(5_000)}}
    async with runner_on(tmp_path, source) as runner:
        write(source, many)
        dry = await runner.reload(dry_run=True)
        assert dry.message.startswith("Dry run: 5000 change(s) (key00000, key00001,")
        assert len(dry.message) < 2_000
        operation = await runner.reload()
        assert operation.success
        (applied,) = [
            e.payload for e in runner.log.read_operation(operation.operation_id) if e.type == "config.applied"
        ]
        assert isinstance(applied, ConfigApplied)
        assert (len(applied.changes), applied.changes_omitted) == (50, 4_950)
        assert applied.changes[0] == "key00000"
        assert operation.changes_applied[-1] == "(and 4950 more changes)"
        assert len(operation.changes_applied) == 51


def record_calls(calls: list[tuple[Any, Any]], answer: bool = True) -> Callable[[Any, Any], bool]:
    def callback(old: Any, new: Any) -> bool:
        calls.append((old, new))
        return answer

    return callback


# (the runner's default, the callback's own setting) -> whether a restart calls it
NOTIFY_ON_START = [
    (True, None, True),  # the default: on
    (True, False, False),  # a callback that opts out
    (False, None, False),  # CONFLEDGER_NOTIFY_ON_START=false
    (False, True, True),  # a callback that opts in against the setting
]


@pytest.mark.parametrize(("default", "own", "called"), NOTIFY_ON_START)
async def test_a_restart_hands_the_restored_config_to_the_callbacks_that_want_it(
    tmp_path: Path, default: bool, own: bool | None, called: bool
) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    calls: list[tuple[Any, Any]] = []
    services = ServiceRegistry()
    services.register("cache", record_calls(calls), notify_on_start=own)
    async with runner_on(tmp_path, source, services=services, notify_on_start=default):
        pass
    assert calls == [(None, {"region": "eu"})]  # the first start's initial load, whatever the setting
    calls.clear()
    source.unlink()  # a restart restores from the log; the source is not read

    async with runner_on(tmp_path, source, services=services, notify_on_start=default) as restarted:
        assert restarted.active is not None
        assert restarted.active.config == {"region": "eu"}
        notified = [e for e in restarted.log.read() if isinstance(e.payload, ServiceNotified)]
        at_start = [e for e in notified if e.payload.direction == "start"]
        applies = [e for e in restarted.log.read() if e.type == "config.applied"]
    assert calls == ([(None, {"region": "eu"})] if called else [])
    assert len(at_start) == int(called)
    assert len(applies) == 1  # the restart changed no config
    for event in at_start:
        assert event.operation_id is None  # no operation: nothing in history, nothing in the stats totals
        assert event.payload.config_hash == restarted.active.hash


async def test_a_callback_refusing_at_start_is_logged_recorded_and_the_start_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write(tmp_path / "config.json", {"region": "eu"})
    async with runner_on(tmp_path, source):
        pass
    services = ServiceRegistry()
    services.register("search", refuse)

    async with runner_on(tmp_path, source, services=services) as restarted:
        (event,) = [e for e in restarted.log.read() if isinstance(e.payload, ServiceNotified)]
        assert restarted.active is not None
        assert (event.payload.direction, event.payload.outcome) == ("start", ServiceOutcome.FAILED)
        assert restarted.active.config == {"region": "eu"}
    assert "service search did not accept the restored config" in caplog.text
