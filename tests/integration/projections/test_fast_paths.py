"""The reloader's shortcuts answer exactly as reading the log back would.

- A ``ReloadOperation`` is folded from the events its operation appended, as the log recorded them,
  instead of being read back: for every kind of outcome it equals ``build_operation(read_operation())``
  (and is the history projection's own entry: each operation is folded once).
- ``EventLog.open_operations`` folds from a cached checkpoint instead of scanning every operation: with
  open operations before and after the checkpoint it returns what a fold from position 0 returns.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from confledger.api.reloader import ConfigReloader, ReloadOperation, ReloadStatus
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import CanonicalizationError, EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.canonical import canonical_json
from confledger.store.events import OperationCompleted, OperationStarted, OperationStatus
from confledger.store.log import _chain_hash_of_text, chain_hash
from confledger.store.outcome import build_operation
from confledger.store.schema import projection_checkpoints

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


def _start(operation_id: uuid.UUID) -> NewEvent:
    return NewEvent(
        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.MANUAL), operation_id=operation_id
    )


def _complete(operation_id: uuid.UUID) -> NewEvent:
    return NewEvent(OperationCompleted(status=OperationStatus.SUCCESS), operation_id=operation_id)


def _open_from_zero(log: EventLog) -> list[int]:
    """The plain fold over the whole log, as the reference."""
    open_at: dict[uuid.UUID, int] = {}
    for event in log.read():
        if event.operation_id is None:
            continue
        if event.type == "operation.started":
            open_at[event.operation_id] = event.position
        elif event.type == "operation.completed":
            open_at.pop(event.operation_id, None)
    return sorted(open_at.values())


def test_open_operations_from_a_checkpoint_equal_the_fold_from_zero(log: EventLog) -> None:
    ids = [uuid.uuid4() for _ in range(400)]
    left_open = {ids[3], ids[150], ids[399]}
    # 400 operations in one batch: enough lifecycle events for open_operations to checkpoint its fold.
    batch: list[NewEvent] = []
    for operation_id in ids:
        batch.append(_start(operation_id))
        if operation_id not in left_open:
            batch.append(_complete(operation_id))
    log.append(batch)
    assert [e.position for e in log.open_operations()] == _open_from_zero(log)
    checkpoint = log.load_checkpoint("store.open_operations")
    assert checkpoint is not None
    assert checkpoint.position == log.head()

    # After the checkpoint: one open operation completes, new ones start, one of them completes.
    later = [uuid.uuid4() for _ in range(3)]
    log.append([_complete(ids[150]), _start(later[0]), _start(later[1])])
    log.append([_complete(later[0]), _start(later[2])])
    found = log.open_operations()
    assert [e.position for e in found] == _open_from_zero(log)
    assert {e.operation_id for e in found} == {ids[3], ids[399], later[1], later[2]}
    assert all(e.type == "operation.started" for e in found)

    # Without the cached fold the answer is the same, and it is rebuilt.
    with log.engine.begin() as connection:
        connection.execute(sa.delete(projection_checkpoints))
    assert [e.position for e in log.open_operations()] == _open_from_zero(log)
    assert log.load_checkpoint("store.open_operations") is not None


# --- one serialisation per appended event ----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    actor=st.text(max_size=20),
    instance_id=st.text(max_size=20),
    operation_id=st.one_of(st.none(), st.uuids()),
    moment=st.datetimes(timezones=st.just(UTC)),
)
def test_the_spliced_chain_hash_is_the_chain_hash(
    payload: dict[str, Any], actor: str, instance_id: str, operation_id: uuid.UUID | None, moment: datetime
) -> None:
    envelope = {
        "position": 7,
        "event_id": uuid.uuid4(),
        "occurred_at": moment,
        "type": "x.y",
        "schema_version": 1,
        "operation_id": operation_id,
        "instance_id": instance_id,
        "actor": actor,
        "payload": payload,
        "prev_hash": "ab" * 32,
    }
    try:
        text = canonical_json(payload)
    except CanonicalizationError:
        return  # refused before anything is hashed (a lone surrogate)
    try:
        expected = chain_hash(envelope)
    except CanonicalizationError:
        return  # the envelope itself is refused either way
    assert _chain_hash_of_text(envelope, text) == expected


def test_appended_payloads_are_stored_as_their_canonical_text(log: EventLog) -> None:
    payloads = [
        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API, source='a "quoted" \u00e9 path'),
        OperationCompleted(status=OperationStatus.FAILED, message="ünïcode ✓", total_ms=1.25e-7),
    ]
    operation_id = uuid.uuid4()
    log.append([NewEvent(payload, actor='actor "x"', operation_id=operation_id) for payload in payloads])
    column = "payload::text" if log.dialect == "postgresql" else "payload"
    with log.engine.connect() as connection:
        stored = connection.execute(sa.text(f"SELECT {column} FROM events ORDER BY position")).scalars().all()
    assert stored == [canonical_json(payload.model_dump(mode="json")) for payload in payloads]
    assert [event.payload for event in log.read()] == payloads
    assert log.verify().ok
