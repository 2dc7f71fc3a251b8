"""Start-up folds only the tail after the checkpoints, and lands where a fold from zero lands.

A log of 5,000 events (625 realistic reload operations, built in large transactions) is started and
stopped once, which checkpoints every projection; a few events are appended after that checkpoint; a
new reloader then replays only those, and its current config, history, stats and backups equal those of
a second reloader on the same log whose projections are rebuilt from position 0. No wall-clock
assertions here: the timing proof is ``tests/benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.events import ConfigLoadFailed, OperationCompleted, OperationStarted, OperationStatus
from tests.benchmarks.logbuilder import EVENTS_PER_OPERATION, BuiltLog, build_log

pytestmark = pytest.mark.anyio

EVENTS = 5_000
CIPHER = SecretCipher([SecretCipher.generate_key()])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def built(database_url: str) -> Iterator[tuple[str, BuiltLog]]:
    with EventLog(database_url, cipher=CIPHER, instance_id="builder", sqlite_synchronous="OFF") as log:
        yield database_url, build_log(log, EVENTS)


def reloader_on(log: EventLog) -> ConfigReloader:
    return ConfigReloader(log, config_model=AppConfig, validators=VALIDATORS, history_window=200)


def tail_operation() -> list[NewEvent]:
    """Three events after the checkpoint: one reload that could not load its source."""
    operation_id = uuid.uuid4()
    return [
        NewEvent(
            OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.SIGNAL, source="/etc/app.yaml"),
            actor="signal",
            operation_id=operation_id,
        ),
        NewEvent(
            ConfigLoadFailed(reason="not_found", message="config source does not exist"),
            actor="signal",
            operation_id=operation_id,
        ),
        NewEvent(
            OperationCompleted(status=OperationStatus.FAILED, message="Configuration could not be loaded"),
            actor="signal",
            operation_id=operation_id,
        ),
    ]


def state_of(reloader: ConfigReloader) -> dict[str, Any]:
    current = reloader.current
    assert current is not None
    return {
        "current": (current.hash, current.position, current.applied_at, current.actor, current.instance_id),
        "config": current.config.model_dump(mode="json"),
        "history": [op.model_dump(mode="json") for op in reloader.get_reload_history(limit=300)],
        "history_window": [op.model_dump(mode="json") for op in reloader._history.recent()],
        "stats": reloader.get_reload_stats(),
        "backups": reloader.get_backups(),
        "snapshots": {p.name: (p.position, p.snapshot()) for p in reloader.projections.projections},
    }


async def test_start_replays_only_the_tail_and_equals_a_rebuild(built: tuple[str, BuiltLog]) -> None:
    url, log_built = built
    assert log_built.head == EVENTS
    with EventLog(url, cipher=CIPHER, instance_id="instance-a") as log:
        # The first start folds the whole log; stopping writes the checkpoints.
        first = reloader_on(log)
        await first.start()
        # ... and its own instance.started and instance.applied (the restored config, for the fleet view)
        assert first.projections.replayed_on_start == EVENTS + 2
        await first.stop()
        checkpoint = log.load_checkpoint("history")
        assert checkpoint is not None
        assert checkpoint.position == log.head() == EVENTS + 3

        log.append(tail_operation())

        restarted = reloader_on(log)
        await restarted.start()
        try:
            # The three tail events and this start's instance.started and instance.applied: nothing
            # before the checkpoint.
            assert restarted.projections.replayed_on_start == 5
            assert restarted.projections.position == log.head() == checkpoint.position + 5
            current = restarted.current
            assert current is not None
            assert current.hash == log_built.last_applied_hash
            assert isinstance(current.config, AppConfig)
            assert restarted.get_reload_history(limit=1)[0].error_message == "config source does not exist"
            stats = restarted.get_reload_stats()
            assert stats["total_operations"] == EVENTS // EVENTS_PER_OPERATION + 1
            assert stats["failed_operations"] == 1

            rebuilt = reloader_on(log)
            await rebuilt.start()
            try:
                rebuilt.projections.rebuild()
                restarted.projections.catch_up()  # the second start's instance.started and .applied
                assert rebuilt.projections.position == restarted.projections.position == log.head()
                assert state_of(restarted) == state_of(rebuilt)
            finally:
                await rebuilt.stop()
        finally:
            await restarted.stop()
