"""The "nothing lost" check itself: it passes on an honest run and fails on each kind of loss.

In-process (``ConfigReloader`` + ``EventLog``) and over HTTP (the real app through Starlette's
``TestClient``), on both backends. Each breakage is made the way it would happen (an operation left
open, a reply the log does not back, a gap), not by editing the check's inputs by hand.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.events import InstanceStarted, OperationCompleted, OperationStarted, OperationStatus
from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    BASE,
    clear_confledger_environment,
    serving,
    variant,
    write_config,
)
from tests.reliability.invariants import (
    HttpObserver,
    ReloaderObserver,
    Reply,
    check_log,
    check_no_interleaving,
    check_nothing_lost,
    reply_from_response,
    wait_until_settled,
)

CIPHER = SecretCipher([SecretCipher.generate_key()])


def _body(ttl: int) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["cache"]["ttl_seconds"] = ttl
    return body


async def _run_operations(reloader: ConfigReloader, source: Path) -> list[Reply]:
    """Applied reloads, an unchanged one, a failed one, a manual rollback: one of each outcome."""
    replies = []
    for ttl in (60, 600, 600):
        source.write_text(json.dumps(_body(ttl)), encoding="utf-8")
        operation = await reloader.reload_config()
        replies.append(Reply(200, operation.operation_id, operation.status.value))
    source.write_text('{"app_name": ', encoding="utf-8")
    failed = await reloader.reload_config()
    replies.append(Reply(200, failed.operation_id, failed.status.value))
    rolled_back = await reloader.rollback_config()
    replies.append(Reply(200, rolled_back.operation_id, rolled_back.status.value))
    return replies


def test_an_honest_in_process_run_passes_and_each_loss_is_caught(database_url: str, tmp_path: Path) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps(_body(3600)), encoding="utf-8")

    async def scenario() -> None:
        async with ConfigReloader(
            database_url,
            config_model=AppConfig,
            config_source=source,
            validators=VALIDATORS,
            cipher=CIPHER,
            instance_id="invariants-node",
        ) as reloader:
            reloader.register_config_callback("steady", lambda old, new: True, priority=1)
            replies = await _run_operations(reloader, source)
            observer = ReloaderObserver(reloader)
            await anyio.to_thread.run_sync(lambda: wait_until_settled(observer, reloader.log, quiet=0))
            report = check_nothing_lost(reloader.log, [observer], replies)
            assert report.replies_matched == len(replies) == 5
            assert report.history_entries >= 5  # the start-up load and the five
            assert report.skipped == ["fleet"]  # in-process there is no /fleet to compare
            assert check_no_interleaving(list(reloader.log.iter_events())) == report.operations

            # A reply the log does not back: told success for a failed operation, or an unknown id.
            with pytest.raises(AssertionError, match="client told"):
                check_log(reloader.log, [Reply(200, replies[3].operation_id, "success")])
            with pytest.raises(AssertionError, match="0 terminal events"):
                check_log(reloader.log, [Reply(200, str(uuid.uuid4()), "success")])
            # An errored request that left nothing is fine; one told nothing at all is not checked by id.
            assert check_log(reloader.log, [Reply(503, str(uuid.uuid4())), Reply(None)]).replies_matched == 0

            # A live instance's operation left open (a half-applied service) is loss; a dead one's is not.
            reloader.log.append(
                [
                    NewEvent(
                        OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API, previous_hash=None),
                        actor="admin",
                        operation_id=uuid.uuid4(),
                    )
                ]
            )
            with pytest.raises(AssertionError, match="was left open"):
                check_log(reloader.log)
            assert check_log(reloader.log, live_instances=()).open_operations == 1
            with pytest.raises(AssertionError, match="was left open"):
                check_nothing_lost(reloader.log, [observer])

    anyio.run(scenario)


def test_a_gap_in_positions_is_caught(sqlite_url: str) -> None:
    # The events table refuses DELETE (a trigger); an operator with DDL rights can still make a gap.
    with EventLog(sqlite_url, instance_id="gap") as log:
        for pid in range(3):
            log.append([NewEvent(InstanceStarted(version="0", host="h", pid=pid))])
        with log.engine.begin() as connection:
            triggers = connection.execute(
                sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'")
            ).scalars()
            for name in list(triggers):
                connection.execute(sa.text(f'DROP TRIGGER "{name}"'))
            connection.execute(sa.text("DELETE FROM events WHERE position = 2"))
        with pytest.raises(AssertionError, match=r"missing \[2\]|not 1..N"):
            check_log(log)


def test_interleaved_operations_are_caught(sqlite_url: str) -> None:
    with EventLog(sqlite_url, instance_id="node") as log:
        first, second = uuid.uuid4(), uuid.uuid4()

        def start(operation: uuid.UUID) -> NewEvent:
            payload = OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.SIGNAL, previous_hash=None)
            return NewEvent(payload, actor="signal", operation_id=operation)

        def complete(operation: uuid.UUID) -> NewEvent:
            return NewEvent(
                OperationCompleted(status=OperationStatus.FAILED), actor="signal", operation_id=operation
            )

        for batch in ([start(first)], [start(second)], [complete(first)], [complete(second)]):
            log.append(batch)
        with pytest.raises(AssertionError, match="interleave"):
            check_no_interleaving(list(log.iter_events()))


def test_an_honest_http_run_passes(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_confledger_environment(monkeypatch)
    with serving(tmp_path, database_url) as service:
        replies = []
        for ttl in (60, 600):
            write_config(service.source, variant(cache__ttl_seconds=ttl))
            replies.append(reply_from_response(service.post("/reload", json={})))
        replies.append(reply_from_response(service.post("/rollback", json={})))
        replies.append(reply_from_response(service.post("/rollback", json={"target_hash": "0" * 12})))
        assert [reply.status_code for reply in replies] == [200, 200, 200, 404]
        observer = HttpObserver(service.client, ADMIN_TOKEN)
        wait_until_settled(observer, service.log, quiet=0)
        report = check_nothing_lost(service.log, [observer], replies)
        assert report.replies_matched == 4
        assert report.skipped == ([] if observer.has_fleet() else ["fleet"])
        # The same run seen in-process agrees with what HTTP showed.
        check_nothing_lost(service.log, [ReloaderObserver(service.reloader)], replies)
