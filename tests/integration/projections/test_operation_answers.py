"""The answer a reload or rollback gets is the record: a ``ReloadOperation`` is folded from the events its
operation appended, as the log recorded them, and for every kind of outcome it equals
``build_operation(read_operation())`` - without reading the log back. It is the history projection's own
entry: each operation is folded once."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from confledger.api.reloader import ConfigReloader, ReloadOperation, ReloadStatus
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import OperationKind, SecretCipher, Trigger
from confledger.store.outcome import build_operation

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
CIPHER = SecretCipher([SecretCipher.generate_key()])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(path: Path, **changes: Any) -> Path:
    body = copy.deepcopy(BASE)
    for dotted_name, value in changes.items():
        section, field = dotted_name.split("__")
        body[section][field] = value
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


@asynccontextmanager
async def running(url: str, source: Path, **options: Any) -> AsyncIterator[ConfigReloader]:
    reloader = ConfigReloader(
        url, config_model=AppConfig, config_source=source, validators=VALIDATORS, cipher=CIPHER, **options
    )
    await reloader.start()
    try:
        yield reloader
    finally:
        await reloader.stop()


def read_back(reloader: ConfigReloader, operation: ReloadOperation) -> ReloadOperation:
    return build_operation(reloader.log.read_operation(operation.operation_id))


async def test_every_answer_equals_the_operation_read_back(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write(tmp_path / "a.json")
    second = write(tmp_path / "b.json", performance__max_retries=5)
    invalid = write(tmp_path / "bad.json", database__pool_size=0)
    release = anyio.Event()
    refuse = {"on": False}

    async def slow(_old: Any, _new: Any) -> None:
        await release.wait()

    def picky(_old: Any, _new: Any) -> bool:
        return not refuse["on"]

    async with running(database_url, first) as reloader:
        read_operation = reloader.log.read_operation
        reads: list[object] = []
        monkeypatch.setattr(reloader.log, "read_operation", lambda op: reads.append(op) or read_operation(op))
        answers: list[ReloadOperation] = []
        assert reloader.startup_operation is not None
        answers.append(reloader.startup_operation)
        reloader.register_config_callback("cache", picky, priority=2)
        reloader.register_config_callback("search", picky, priority=1)
        answers.append(await reloader.reload_config(config_source=second))  # applied
        answers.append(await reloader.reload_config(config_source=second))  # unchanged
        answers.append(await reloader.reload_config(config_source=second, force=True))  # forced
        answers.append(await reloader.reload_config(config_source=invalid))  # validation failed
        answers.append(await reloader.reload_config(config_source=tmp_path / "missing.json"))  # load failed
        answers.append(await reloader.reload_config(config_source=first, dry_run=True))  # dry run
        refuse["on"] = True
        answers.append(await reloader.reload_config(config_source=first))  # rolled back automatically
        refuse["on"] = False
        answers.append(await reloader.rollback_config())  # manual rollback
        answers.append(await reloader.rollback_config("f" * 12))  # unknown target
        reloader.register_config_callback("slow", slow, async_callback=True)
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: reloader.reload_config(config_source=second, force=True))
            await anyio.wait_all_tasks_blocked()
            answers.append(await reloader.reload_config(config_source=first))  # rejected: one is running
            release.set()
        answers.append(
            await reloader.runner.reject_request(
                kind=OperationKind.RELOAD,
                trigger=Trigger.API,
                actor="test",
                reason="source_not_allowed",
                message="not allowed",
            )
        )
        assert reads == []  # every answer came from the events the operation appended
        monkeypatch.undo()
        statuses = {answer.status for answer in answers}
        assert {ReloadStatus.SUCCESS, ReloadStatus.FAILED, ReloadStatus.ROLLED_BACK} <= statuses
        assert any(answer.rejected for answer in answers)
        for answer in answers:
            assert answer == read_back(reloader, answer), answer.message


async def test_an_operation_has_its_own_start_and_durations_to_the_microsecond(
    database_url: str, tmp_path: Path
) -> None:
    first = write(tmp_path / "a.json")
    second = write(tmp_path / "b.json", performance__max_retries=5)

    def unhurried(_old: Any, _new: Any) -> None:
        # A floor under the operation's length, so its start and completion cannot share a clock tick.
        time.sleep(0.02)

    async with running(database_url, first) as reloader:
        reloader.register_config_callback("unhurried", unhurried)
        answers = [
            await reloader.reload_config(config_source=second),  # applied: two commits
            await reloader.reload_config(config_source=second),  # unchanged: one commit
            await reloader.rollback_config(),  # manual rollback
        ]
        for answer in answers:
            recorded = read_back(reloader, answer)
            assert recorded.started_at is not None
            assert recorded.completed_at is not None
            waited_ms = (recorded.completed_at - recorded.started_at).total_seconds() * 1000
            # The whole measured operation lies between its recorded start and its completion's commit.
            assert waited_ms > 0
            assert waited_ms >= recorded.total_duration_ms - 1.0, answer.message
            durations = [
                recorded.total_duration_ms,
                recorded.validation_duration_ms,
                recorded.apply_duration_ms,
            ]
            durations += list(recorded.service_durations_ms.values())
            for duration in durations:
                assert duration == round(duration, 3)
        assert answers[0].apply_duration_ms >= 20
