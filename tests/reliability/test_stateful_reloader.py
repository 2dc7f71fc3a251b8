"""A hypothesis state machine over ``ConfigReloader``, on SQLite and PostgreSQL.

Rules mix valid and invalid reloads, dry runs, rollbacks (previous, known hashes by full hash or prefix,
unknown hashes), service callbacks that accept, refuse, raise or time out, and restarts (a new reloader on
the same log, automatic rollback switched on or off; or a crash, perhaps mid-operation, after an
explicit checkpoint or none). After every step the reloader must agree with a fresh
fold of the whole log, every operation must have exactly one completion, and the chain must verify.

Size knob: ``CONFLEDGER_TEST_SCALE`` (float, default 1.0) scales the examples (20) and steps (15) per backend.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
import yaml
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from confledger.api.reloader import ConfigReloader, ReloadOperation, ReloadStatus
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.projections.backups import BackupsProjection
from confledger.projections.history import HistoryProjection
from confledger.projections.stats import StatsProjection
from confledger.store import EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.events import ConfigApplied, OperationStarted
from confledger.store.integrity import CONFIG_HASH_KEYED, candidate_keys, config_hash_as
from confledger.store.secrets import classify_secrets, digested_paths
from confledger.store.validation import dump_revealed
from tests.conftest import _pg_admin_engine, make_pg_schema_url, require_postgres
from tests.scale import SCALE

MAX_EXAMPLES = max(1, round(20 * SCALE))
STEP_COUNT = max(2, round(15 * SCALE))
# A slow callback never answers in time, however slow the machine: the async one waits on the loop past
# its deadline, and the sync one until the machine releases it. The others always do: an async callback
# that never awaits cannot be cut off, and the sync one's timeout leaves a loaded machine room to start
# its worker thread (0.1 s did not: an "ok" callback timed out).
ASYNC_TIMEOUT_S = 0.1
SYNC_TIMEOUT_S = 1.0
INSTANCE_ID = "stateful-node"
BACKUP_COUNT = 3  # small, so rollbacks often reach past the backups

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
CIPHER = SecretCipher([SecretCipher.generate_key()])
BEHAVIOURS = ("ok", "refuse", "raise", "slow")
FLAKY = ("flaky_async", "flaky_sync")


def hash_of(body: dict[str, Any]) -> str:
    """The hash the log stores ``body`` under: its secrets as digests under the key derived from CIPHER."""
    model = AppConfig.model_validate(body)
    keys = candidate_keys(None, CIPHER)[0]
    return config_hash_as(
        dump_revealed(model), digested_paths(classify_secrets(model)), CONFIG_HASH_KEYED, keys
    )


def valid_body(ttl: int, pool_size: int, debug: bool, key: str) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["cache"]["ttl_seconds"] = ttl
    body["database"]["pool_size"] = pool_size
    body["debug"] = debug
    body["embedding"]["openai_api_key"] = key
    return body


class ReloaderMachine(RuleBasedStateMachine):
    """One log, one reloader at a time, and a model of what the reloader must report."""

    url: str

    def __init__(self, make_url: Callable[[], tuple[str, Callable[[], None]]]) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="confledger-stateful-"))
        self.url, self._drop = make_url()
        self.source = self.directory / "config.json"
        initial = valid_body(3600, 20, False, "sk-key-a-1111")
        self.source.write_text(json.dumps(initial), encoding="utf-8")
        self.behaviour = dict.fromkeys(FLAKY, "ok")
        self.released = threading.Event()  # ends the slow sync callback's abandoned calls
        self.auto_rollback = True
        self._portal_context = start_blocking_portal("asyncio")
        self.portal: BlockingPortal = self._portal_context.__enter__()
        self.reloader = self.portal.call(self._open)
        # The model: what was applied, in order, and what must be current.
        self.applied: list[str] = [hash_of(initial)]
        self.current: str = self.applied[0]
        # Configs a manual rollback moved away from: an unforced reload must not bring them back.
        self.pinned: set[str] = set()
        self.running: dict[str, str] = {}  # the config each service last accepted
        assert self.reloader.current_hash == self.current

    # --- set-up and tear-down -----------------------------------------------------------------------------

    async def _open(self) -> ConfigReloader:
        reloader = ConfigReloader(
            self.url,
            config_model=AppConfig,
            config_source=self.source,
            validators=VALIDATORS,
            cipher=CIPHER,
            backup_count=BACKUP_COUNT,
            enable_automatic_rollback=self.auto_rollback,
            rollback_threshold=0.5,
            instance_id=INSTANCE_ID,
        )
        await reloader.start()
        reloader.register_config_callback("steady", lambda old, new: True, priority=10)
        reloader.register_config_callback(
            "flaky_async", self._flaky_async, priority=5, timeout=ASYNC_TIMEOUT_S
        )
        reloader.register_config_callback("flaky_sync", self._flaky_sync, priority=1, timeout=SYNC_TIMEOUT_S)
        return reloader

    async def _flaky_async(self, old: AppConfig, new: AppConfig) -> bool:
        behaviour = self.behaviour["flaky_async"]
        if behaviour == "raise":
            raise RuntimeError(f"rejected key {new.embedding.openai_api_key}")
        if behaviour == "slow":
            await anyio.sleep(ASYNC_TIMEOUT_S * 4)
        return behaviour != "refuse"

    def _flaky_sync(self, old: AppConfig, new: AppConfig) -> bool:
        behaviour = self.behaviour["flaky_sync"]
        if behaviour == "raise":
            raise RuntimeError("cannot reconfigure")
        if behaviour == "slow":
            self.released.wait(60)  # the abandoned worker thread ends once the behaviours change
        return behaviour != "refuse"

    def teardown(self) -> None:
        self.released.set()
        try:
            self.portal.call(self.reloader.stop)
        finally:
            self._portal_context.__exit__(None, None, None)
            self._drop()
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- the model's expectations -----------------------------------------------------------------------

    def _accepting(self) -> int:
        return 1 + sum(self.behaviour[name] == "ok" for name in FLAKY)

    def _expect_change(self, operation: ReloadOperation, target: str) -> None:
        """A change to ``target`` reached the services: applied, rolled back or failed by the threshold."""
        accepted = self._accepting()
        assert len(operation.services_notified) == 3
        accepting = [
            label.split(":")[0] for label in operation.services_notified if label.endswith(":success")
        ]
        assert len(accepting) == accepted
        for label in operation.services_notified:
            # One that refused the first config it was ever offered (all three were registered after
            # the start) runs none the log knows of.
            self.running.setdefault(label.split(":")[0], "")
        if accepted / 3 >= 0.5:
            # The seed's contract: a rollback that completed is rolled_back, and a success.
            done = (
                ReloadStatus.ROLLED_BACK if operation.kind is OperationKind.ROLLBACK else ReloadStatus.SUCCESS
            )
            assert (operation.status, operation.success) == (done, True), operation
            self.running.update(dict.fromkeys(accepting, target))
            if operation.kind is OperationKind.ROLLBACK:
                self.pinned.add(self.current)
            self.pinned.discard(target)
            self.applied.append(target)
            self.current = target
        elif self.auto_rollback:
            assert (operation.status, operation.success) == (ReloadStatus.ROLLED_BACK, False), operation
            # The services that accepted were given the current config back, in reverse order.
            assert operation.services_compensated == tuple(f"{name}:success" for name in reversed(accepting))
            self.running.update(dict.fromkeys(accepting, self.current))
        else:
            self.running.update(dict.fromkeys(accepting, target))
            assert operation.status is ReloadStatus.FAILED, operation
            assert operation.reason == "services_below_threshold"
        assert self.reloader.current_hash == self.current

    def _previous_distinct(self) -> str | None:
        # The newest earlier config not rolled back away from: a second rollback goes further back.
        return next((h for h in reversed(self.applied) if h != self.current and h not in self.pinned), None)

    # --- rules --------------------------------------------------------------------------------------------

    @rule(
        ttl=st.sampled_from([60, 600, 3600]),
        pool_size=st.sampled_from([5, 20]),
        debug=st.booleans(),
        key=st.sampled_from(["sk-key-a-1111", "sk-key-b-2222"]),
        force=st.booleans(),
    )
    def reload_valid(self, ttl: int, pool_size: int, debug: bool, key: str, force: bool) -> None:
        body = valid_body(ttl, pool_size, debug, key)
        self.source.write_text(json.dumps(body), encoding="utf-8")
        target = hash_of(body)

        operation = self.portal.call(lambda: self.reloader.reload_config(force=force))

        assert operation.new_config_hash == target
        if target == self.current and not force:
            assert operation.status is ReloadStatus.SUCCESS
            assert operation.message == "No configuration changes detected"
            assert operation.services_notified == ()
        elif target in self.pinned and not force:
            # Rolled back away from: refused until forced or until the file holds something else.
            assert (operation.status, operation.reason) == (ReloadStatus.FAILED, "rolled_back_hash"), (
                operation
            )
            assert operation.services_notified == ()
            assert self.reloader.current_hash == self.current
        else:
            self._expect_change(operation, target)

    @rule(kind=st.sampled_from(["bad_types", "missing_key", "unparsable"]))
    def reload_invalid(self, kind: str) -> None:
        if kind == "unparsable":
            self.source.write_text('{"app_name": ', encoding="utf-8")
        else:
            body = yaml.safe_load((EXAMPLES / "invalid" / f"{kind}.yaml").read_text(encoding="utf-8"))
            self.source.write_text(json.dumps(body), encoding="utf-8")

        operation = self.portal.call(self.reloader.reload_config)

        assert operation.status is ReloadStatus.FAILED
        assert operation.services_notified == ()
        if kind == "unparsable":
            assert operation.validation_errors == ()
            assert operation.reason is not None
        else:
            assert operation.validation_errors
            assert operation.reason == "validation_failed"

    @rule(ttl=st.sampled_from([61, 3600]))
    def dry_run(self, ttl: int) -> None:
        body = valid_body(ttl, 20, False, "sk-key-a-1111")
        self.source.write_text(json.dumps(body), encoding="utf-8")
        operation = self.portal.call(lambda: self.reloader.reload_config(dry_run=True, force=True))
        assert operation.status is ReloadStatus.SUCCESS
        assert operation.dry_run
        assert operation.services_notified == ()

    @rule()
    def rollback_to_previous(self) -> None:
        expected = self._previous_distinct()
        operation = self.portal.call(self.reloader.rollback_config)
        if expected is None:
            assert operation.status is ReloadStatus.FAILED
            assert operation.reason == "no_previous_config"
        else:
            assert operation.new_config_hash == expected
            self._expect_change(operation, expected)

    @rule(data=st.data(), digits=st.sampled_from([7, 12, 64]))
    def rollback_to_known_hash(self, data: st.DataObject, digits: int) -> None:
        target = data.draw(st.sampled_from(sorted(set(self.applied))), label="target")
        operation = self.portal.call(lambda: self.reloader.rollback_config(target[:digits]))
        if target == self.current:
            assert (operation.status, operation.success) == (ReloadStatus.ROLLED_BACK, True)
            assert operation.services_notified == ()
        else:
            assert operation.new_config_hash == target
            self._expect_change(operation, target)

    @rule(reference=st.text(alphabet="0123456789abcdef", min_size=7, max_size=64))
    def rollback_to_unknown_hash(self, reference: str) -> None:
        with self.reloader.log.engine.connect() as connection:
            matches = connection.execute(
                sa.text("SELECT count(*) FROM config_versions WHERE hash LIKE :p"), {"p": f"{reference}%"}
            ).scalar()
        assume(matches == 0)
        operation = self.portal.call(lambda: self.reloader.rollback_config(reference))
        assert operation.status is ReloadStatus.FAILED
        assert operation.reason == "unknown_config_hash"

    @rule(flaky_async=st.sampled_from(BEHAVIOURS), flaky_sync=st.sampled_from(BEHAVIOURS))
    def set_behaviours(self, flaky_async: str, flaky_sync: str) -> None:
        # A slow sync callback's abandoned call runs on past its deadline, and until it returns each
        # operation records it as still running (an error, whatever it was told to do next): it is
        # released, and the new behaviours start once it has returned.
        self.released.set()
        settled_by = time.monotonic() + 30
        while self.reloader.runner.calls.in_flight() and time.monotonic() < settled_by:
            time.sleep(0.01)
        self.released = threading.Event()
        self.behaviour = {"flaky_async": flaky_async, "flaky_sync": flaky_sync}

    @rule(auto_rollback=st.booleans())
    def restart(self, auto_rollback: bool) -> None:
        before = (self.reloader.current_hash, self.reloader.get_reload_history(limit=100))
        self.portal.call(self.reloader.stop)
        self.auto_rollback = auto_rollback
        self.reloader = self.portal.call(self._open)
        assert self.reloader.startup_operation is None  # restored from the log, not reloaded
        assert (self.reloader.current_hash, self.reloader.get_reload_history(limit=100)) == before

    @rule()
    def checkpoint(self) -> None:
        self.reloader.projections.checkpoint()

    @rule(interrupted=st.booleans())
    def crash_and_restart(self, interrupted: bool) -> None:
        # The process dies: no instance.stopped and no checkpoint at shutdown, perhaps mid-operation.
        history = self.reloader.get_reload_history(limit=100)
        self.reloader.log.close()
        crashed = uuid.uuid4()
        if interrupted:
            with EventLog(self.url, instance_id=INSTANCE_ID, cipher=CIPHER) as log:
                log.append(
                    [
                        NewEvent(
                            OperationStarted(
                                kind=OperationKind.RELOAD, trigger=Trigger.SIGNAL, previous_hash=self.current
                            ),
                            actor="signal",
                            operation_id=crashed,
                        )
                    ]
                )
        self.reloader = self.portal.call(self._open)
        assert self.reloader.startup_operation is None
        assert self.reloader.current_hash == self.current
        after = self.reloader.get_reload_history(limit=100)
        if interrupted:
            assert after[0].operation_id == str(crashed)
            assert after[0].status is ReloadStatus.INTERRUPTED
            after = after[1:]
        assert after == history[: len(after)]

    # --- invariants --------------------------------------------------------------------------------------

    @invariant()
    def agrees_with_a_fresh_fold_of_the_log(self) -> None:
        log = self.reloader.log
        events = log.read()

        applied = [e.payload.hash for e in events if isinstance(e.payload, ConfigApplied)]
        assert applied == self.applied
        assert self.reloader.current_hash == applied[-1] == self.current

        started = Counter(str(e.operation_id) for e in events if e.type == "operation.started")
        completed = Counter(str(e.operation_id) for e in events if e.type == "operation.completed")
        assert set(started.values()) == {1}
        assert completed == started

        report = log.verify()
        assert report.ok, report.reason
        assert report.checked == len(events)

        stats, history, backups = (
            StatsProjection(),
            HistoryProjection(window=500),
            BackupsProjection(BACKUP_COUNT),
        )
        for event in events:
            for projection in (stats, history, backups):
                projection.apply(event)
        assert _plain(stats.snapshot()) == _plain(self.reloader.projections.get("stats").snapshot())
        assert history.recent() == self.reloader.get_reload_history(limit=10_000)
        assert backups.backups == self.reloader.get_backups()

        stored = log.get_config(self.current)
        assert self.reloader.get_config() == AppConfig.model_validate(stored.body)
        # Services left on another config (accepted an abandoned change, or refused the current one).
        assert self.reloader.service_drift() == {
            name: running for name, running in sorted(self.running.items()) if running != self.current
        }


def _plain(state: dict[str, Any]) -> Any:
    return json.loads(json.dumps(state))


# --- one log per example, on each backend --------------------------------------------------------------------


def sqlite_log() -> tuple[str, Callable[[], None]]:
    directory = Path(tempfile.mkdtemp(prefix="confledger-stateful-db-"))
    return f"sqlite:///{directory / 'log.db'}", lambda: shutil.rmtree(directory, ignore_errors=True)


def postgres_log() -> tuple[str, Callable[[], None]]:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return make_pg_schema_url(schema), drop


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",  # a new database file per example
        "postgres",  # a new schema per example, dropped in teardown
    ],
)
def test_the_reloader_agrees_with_its_log_whatever_happens(backend: str) -> None:
    if backend == "postgres":
        require_postgres()
    make_url = sqlite_log if backend == "sqlite" else postgres_log
    run_state_machine_as_test(
        lambda: ReloaderMachine(make_url),
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEP_COUNT,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
