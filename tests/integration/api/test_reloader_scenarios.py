"""The seed's own test scenarios, rewritten against ``ConfigReloader`` and run on both backends.

Every scenario also checks the events its operation left in the log, in order, and the ``url`` fixture
checks the whole log after each test: every operation that started completed exactly once, and the chain
verifies.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
import yaml
from anyio import wait_all_tasks_blocked

from confledger.api.reloader import ConfigReloader, ReloadOperation, ReloadStatus, ReloadTrigger
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, NewEvent, OperationKind, SecretCipher, Trigger, config_hash
from confledger.store.errors import ConfigLookupError, InitialConfigError
from confledger.store.events import (
    ConfigApplied,
    ConfigRolledBack,
    OperationCompleted,
    OperationStarted,
    ServiceNotified,
)
from confledger.store.secrets import classify_secrets, digested_paths
from confledger.store.validation import dump_revealed

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
OPENAI_KEY = BASE["embedding"]["openai_api_key"]
FIRECRAWL_KEY = BASE["crawl"]["firecrawl_api_key"]
CIPHER_KEY = SecretCipher.generate_key()
CIPHER = SecretCipher([CIPHER_KEY])

RELOAD_WITH_SERVICES = [
    "operation.started",
    "config.loaded",
    "validation.passed",
    "service.notified",
    "config.applied",
    "operation.completed",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- helpers -------------------------------------------------------------------------------------------


def open_log(url: str, instance_id: str = "inspector") -> EventLog:
    return EventLog(url, instance_id=instance_id, cipher=CIPHER)


def assert_log_sound(url: str) -> None:
    """Every operation.started has exactly one operation.completed (and none without a start); the chain holds."""
    with open_log(url) as log:
        recorded = log.read()
        started = Counter(str(e.operation_id) for e in recorded if e.type == "operation.started")
        completed = Counter(str(e.operation_id) for e in recorded if e.type == "operation.completed")
        assert set(started.values()) <= {1}
        assert completed == started
        report = log.verify()
        assert report.ok, report.reason
        assert report.checked == len(recorded)


@pytest.fixture
def url(database_url: str) -> Iterator[str]:
    """An empty log on each backend, checked for soundness after the test."""
    yield database_url
    assert_log_sound(database_url)


def variant(**changes: Any) -> dict[str, Any]:
    """The example config with ``section__field=value`` changes (double underscore = one level down)."""
    body = copy.deepcopy(BASE)
    for dotted_name, value in changes.items():
        *parents, leaf = dotted_name.split("__")
        node = body
        for part in parents:
            node = node[part]
        node[leaf] = value
    return body


def write(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


@asynccontextmanager
async def running(
    url: str, source: Path | None = None, *, instance_id: str | None = None, **options: Any
) -> AsyncIterator[ConfigReloader]:
    options.setdefault("cipher", CIPHER)
    reloader = ConfigReloader(
        url,
        config_model=AppConfig,
        config_source=source,
        validators=VALIDATORS,
        instance_id=instance_id,
        **options,
    )
    await reloader.start()
    try:
        yield reloader
    finally:
        await reloader.stop()


def event_types(reloader: ConfigReloader, operation: ReloadOperation) -> list[str]:
    return [event.type for event in reloader.log.read_operation(operation.operation_id)]


def payloads(reloader: ConfigReloader, operation: ReloadOperation, kind: type[Any]) -> list[Any]:
    return [
        event.payload
        for event in reloader.log.read_operation(operation.operation_id)
        if isinstance(event.payload, kind)
    ]


def hash_of(body: dict[str, Any], log: EventLog) -> str:
    """The config hash in ``log``: over the validated config, its secrets as digests under the log's key."""
    model = AppConfig.model_validate(body)
    return log.hash_config(dump_revealed(model), digested_paths(classify_secrets(model)))


@cache
def bodies_sharing_a_seven_digit_prefix() -> tuple[dict[str, int], dict[str, int]]:
    """Two bodies whose hashes share their first 7 hex digits (a birthday search over ~20k hashes)."""
    seen: dict[str, int] = {}
    for n in range(2_000_000):
        prefix = config_hash({"n": n})[:7]
        if prefix in seen:
            return {"n": seen[prefix]}, {"n": n}
        seen[prefix] = n
    raise AssertionError("no shared prefix found")  # pragma: no cover


# --- reload ------------------------------------------------------------------------------------------


async def test_the_first_configuration_is_applied_as_initial(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        first = reloader.startup_operation
        assert first is not None
        assert first.status is ReloadStatus.SUCCESS
        assert first.trigger is Trigger.STARTUP
        assert first.changes_applied == ("initial_configuration",)
        assert first.previous_config_hash is None
        assert first.new_config_hash == reloader.current_hash == hash_of(BASE, reloader.log)
        assert event_types(reloader, first) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "config.applied",
            "operation.completed",
        ]
        assert reloader.get_config() == AppConfig.model_validate(BASE)


async def test_a_log_started_without_a_source_takes_its_first_config_from_a_manual_reload(
    url: str, tmp_path: Path
) -> None:
    async with running(url) as reloader:
        assert reloader.startup_operation is None
        assert reloader.current is None
        # A confledger error with its reason code, as every other refusal (and still a LookupError).
        with pytest.raises(ConfigLookupError) as raised:
            reloader.get_config()
        assert raised.value.code == "no_config_applied"
        assert isinstance(raised.value, LookupError)
        operation = await reloader.reload_config(config_source=write(tmp_path / "c.json", BASE))
        assert operation.success
        assert operation.changes_applied == ("initial_configuration",)
        assert reloader.current_hash == operation.new_config_hash


async def test_manual_reload_success_notifies_the_callback_with_old_and_new(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    calls: list[tuple[Any, Any]] = []

    def service(old: AppConfig, new: AppConfig) -> bool:
        calls.append((old, new))
        return True

    async with running(url, source) as reloader:
        old_hash = reloader.current_hash
        reloader.register_config_callback("database_config", service, priority=50)
        changed = variant(database__pool_size=40)
        write(source, changed)

        operation = await reloader.reload_config(trigger=ReloadTrigger.MANUAL)

        assert operation.status is ReloadStatus.SUCCESS
        assert operation.success
        assert operation.message == "Configuration reloaded successfully"
        assert operation.services_notified == ("database_config:success",)
        assert operation.previous_config_hash == old_hash
        assert operation.new_config_hash == reloader.current_hash == hash_of(changed, reloader.log)
        assert operation.changes_applied == ("database.pool_size",)
        assert operation.validation_errors == ()
        [(old, new)] = calls
        assert isinstance(old, AppConfig)
        assert isinstance(new, AppConfig)
        assert old.database.pool_size == 20
        assert new.database.pool_size == 40
        assert reloader.get_config() is new  # the object services saw is the one readers get
        assert event_types(reloader, operation) == RELOAD_WITH_SERVICES


@pytest.mark.parametrize(
    ("file_name", "expected_error"),
    [
        # pydantic model errors: wrong types, an unknown enum value, a bound below its minimum
        ("bad_types.yaml", "database.pool_size"),
        # a custom validator's error: OpenAI is selected but no key is given
        ("missing_key.yaml", "embedding.openai_api_key: required"),
    ],
)
async def test_validation_errors_fail_without_notifying_and_leave_the_config(
    url: str, tmp_path: Path, file_name: str, expected_error: str
) -> None:
    source = write(tmp_path / "config.json", BASE)
    called: list[str] = []
    async with running(url, source) as reloader:
        before = reloader.current
        reloader.register_config_callback("cache_config", lambda old, new: called.append("x"))

        operation = await reloader.reload_config(config_source=EXAMPLES / "invalid" / file_name)

        assert operation.status is ReloadStatus.FAILED
        assert not operation.success
        assert operation.validation_errors
        assert any(expected_error in line for line in operation.validation_errors)
        assert operation.services_notified == ()
        assert called == []
        assert reloader.current is before
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.failed",
            "operation.completed",
        ]


@pytest.mark.parametrize(
    ("file_name", "reason"),
    [
        ("does_not_exist.json", "not_found"),  # no such file
        ("duplicate_keys.json", "duplicate_key"),  # refused by the parser, before the model sees it
    ],
)
async def test_a_source_that_cannot_be_loaded_fails_with_its_reason(
    url: str, tmp_path: Path, file_name: str, reason: str
) -> None:
    async with running(url, write(tmp_path / "config.json", BASE)) as reloader:
        before = reloader.current
        operation = await reloader.reload_config(config_source=EXAMPLES / "invalid" / file_name)
        assert operation.status is ReloadStatus.FAILED
        assert operation.reason == reason
        assert operation.error_message
        assert reloader.current is before
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.load_failed",
            "operation.completed",
        ]


async def test_warnings_alone_do_not_fail_a_reload(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        operation = await reloader.reload_config(config_source=EXAMPLES / "invalid" / "risky.yaml")
        assert operation.success
        assert len(operation.validation_warnings) == 2


async def test_no_changes_is_a_success_that_notifies_nobody(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    called: list[str] = []
    async with running(url, source) as reloader:
        before = reloader.current
        reloader.register_config_callback("search", lambda old, new: called.append("x"))
        # Same content, different bytes: the hash is over the validated config, not the file.
        write(source, json.loads(json.dumps(BASE)) | {"debug": False})

        operation = await reloader.reload_config()

        assert operation.success
        assert operation.message == "No configuration changes detected"
        assert operation.services_notified == ()
        assert operation.changes_applied == ()
        assert called == []
        assert reloader.current is before
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "config.unchanged",
            "operation.completed",
        ]

        forced = await reloader.reload_config(force=True)
        assert forced.success
        assert forced.services_notified == ("search:success",)
        assert forced.changes_applied == ()
        assert event_types(reloader, forced) == RELOAD_WITH_SERVICES


# --- service callbacks and the threshold ------------------------------------------------------------------


async def test_half_the_services_failing_at_threshold_one_half_still_succeeds(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source, rollback_threshold=0.5) as reloader:
        reloader.register_config_callback("good", lambda old, new: True, priority=2)
        reloader.register_config_callback("bad", lambda old, new: False, priority=1)
        changed = variant(cache__ttl_seconds=60)
        write(source, changed)

        operation = await reloader.reload_config()

        assert operation.status is ReloadStatus.SUCCESS
        assert operation.services_notified == ("good:success", "bad:failed")
        assert "(1/2 services accepted)" in operation.message
        assert reloader.current_hash == hash_of(changed, reloader.log)
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "service.notified",
            "service.notified",
            "config.applied",
            "operation.completed",
        ]


async def test_below_threshold_with_automatic_rollback_compensates_the_services_that_accepted(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    calls: list[tuple[str, int, int]] = []

    def recording(name: str, result: bool) -> Any:
        def callback(old: AppConfig, new: AppConfig) -> bool:
            calls.append((name, old.cache.ttl_seconds, new.cache.ttl_seconds))
            return result

        return callback

    async with running(url, source, enable_automatic_rollback=True, rollback_threshold=0.5) as reloader:
        before = reloader.current
        reloader.register_config_callback("accepts", recording("accepts", True), priority=3)
        reloader.register_config_callback("refuses", recording("refuses", False), priority=2)
        reloader.register_config_callback("raises", lambda old, new: 1 / 0, priority=1)
        abandoned = variant(cache__ttl_seconds=60)
        write(source, abandoned)

        operation = await reloader.reload_config()

        assert operation.status is ReloadStatus.ROLLED_BACK
        assert not operation.success
        assert operation.services_notified == ("accepts:success", "refuses:failed", "raises:error")
        assert operation.services_compensated == ("accepts:success",)
        # Forward with (old, new), then only the service that accepted, with (new, old).
        assert calls == [("accepts", 3600, 60), ("refuses", 3600, 60), ("accepts", 60, 3600)]
        assert reloader.current is before
        # The one that accepted got the current config back; the two that refused the first config
        # they were ever offered (registered after start-up) run none the log knows of.
        assert reloader.service_drift() == {"refuses": "", "raises": ""}
        [rolled] = payloads(reloader, operation, ConfigRolledBack)
        assert rolled.reason == "automatic"
        assert rolled.from_hash == hash_of(abandoned, reloader.log)
        assert rolled.to_hash == before.hash
        assert rolled.success_ratio == pytest.approx(1 / 3)
        assert rolled.threshold == 0.5
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "service.notified",
            "service.notified",
            "service.notified",
            "service.notified",  # the compensation
            "config.rolled_back",
            "operation.completed",
        ]
        directions = [p.direction for p in payloads(reloader, operation, ServiceNotified)]
        assert directions == ["forward", "forward", "forward", "compensate"]


async def test_below_threshold_without_automatic_rollback_fails_and_shows_the_drift(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    calls: list[str] = []
    async with running(url, source, enable_automatic_rollback=False) as reloader:
        before = reloader.current
        reloader.register_config_callback("accepts", lambda old, new: calls.append("accepts"), priority=2)
        reloader.register_config_callback("refuses", lambda old, new: False, priority=1)
        reloader.register_config_callback("refuses_too", lambda old, new: False, priority=0)
        abandoned = variant(cache__ttl_seconds=60)
        write(source, abandoned)

        operation = await reloader.reload_config()

        assert operation.status is ReloadStatus.FAILED
        assert operation.services_compensated == ()
        assert calls == ["accepts"]  # called once: no compensation
        assert reloader.current is before
        # The service that accepted still runs the config that was abandoned: status can show it; the two
        # that refused the first config they were offered run none the log knows of.
        assert reloader.service_drift() == {
            "accepts": hash_of(abandoned, reloader.log),
            "refuses": "",
            "refuses_too": "",
        }
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "service.notified",
            "service.notified",
            "service.notified",
            "operation.completed",
        ]


@pytest.mark.parametrize(
    "asynchronous",
    [
        False,  # a sync callback in a worker thread, abandoned at its timeout
        True,  # an async callback on the loop, cancelled at its timeout
    ],
)
async def test_a_callback_past_its_timeout_is_recorded_as_timeout(
    url: str, tmp_path: Path, asynchronous: bool
) -> None:
    source = write(tmp_path / "config.json", BASE)
    release = threading.Event()

    def slow_sync(old: AppConfig, new: AppConfig) -> bool:
        release.wait(10)  # sleeps well past the 0.2 s timeout, until the test lets it go
        return True

    async def slow_async(old: AppConfig, new: AppConfig) -> bool:
        await anyio.sleep(10)
        return True

    async with running(url, source) as reloader:
        reloader.register_config_callback("fast", lambda old, new: True, priority=1)
        reloader.register_config_callback(
            "slow", slow_async if asynchronous else slow_sync, async_callback=asynchronous, timeout=0.2
        )
        changed = variant(performance__max_retries=5)
        write(source, changed)
        try:
            operation = await reloader.reload_config()
        finally:
            release.set()

        assert operation.services_notified == ("fast:success", "slow:timeout")
        assert operation.status is ReloadStatus.SUCCESS  # 1 of 2 meets the 0.5 threshold
        assert reloader.current_hash == hash_of(changed, reloader.log)
        [_, timed_out] = payloads(reloader, operation, ServiceNotified)
        assert timed_out.error == "no answer within 0.2s"
        assert timed_out.duration_ms > 0
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "service.notified",
            "service.notified",
            "config.applied",
            "operation.completed",
        ]


async def test_a_raising_callback_is_an_error_whose_text_never_holds_a_secret(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    new_key = "sk-rotated-5555-do-not-leak-6666"

    def leaky(old: AppConfig, new: AppConfig) -> bool:
        raise RuntimeError(
            f"cannot authenticate with {new.embedding.openai_api_key.get_secret_value()} "  # type: ignore[union-attr]
            f"(was {old.embedding.openai_api_key.get_secret_value()})"  # type: ignore[union-attr]
        )

    async with running(url, source) as reloader:
        reloader.register_config_callback("embeddings", leaky)
        write(source, variant(embedding__openai_api_key=new_key))

        operation = await reloader.reload_config()

        assert operation.services_notified == ("embeddings:error",)
        assert operation.status is ReloadStatus.ROLLED_BACK
        [notified] = payloads(reloader, operation, ServiceNotified)
        assert notified.error is not None
        assert notified.error.startswith("RuntimeError: cannot authenticate with **********")
        for text in (notified.error, operation.error_message or "", operation.message):
            assert new_key not in text
            assert OPENAI_KEY not in text
        with reloader.log.engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT payload FROM events")).scalars().all()
        assert not any(new_key in str(p) or OPENAI_KEY in str(p) for p in stored)
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "service.notified",
            "config.rolled_back",
            "operation.completed",
        ]


async def test_listeners_run_by_priority_then_registration_and_can_be_removed(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    order: list[str] = []

    def listener(name: str) -> Any:
        return lambda old, new: order.append(name)

    async with running(url, source) as reloader:
        # (name, priority), in registration order
        for name, priority in [
            ("low", 0),
            ("high_first", 100),
            ("middle", 50),
            ("high_second", 100),  # a tie: registration order decides
            ("removed", 75),
            ("negative", -10),
        ]:
            reloader.register_config_callback(name, listener(name), priority=priority)
        assert reloader.unregister_config_callback("removed") is True
        assert reloader.unregister_config_callback("never_registered") is False
        assert reloader.get_reload_stats()["listeners_registered"] == 5
        write(source, variant(debug=True))

        operation = await reloader.reload_config()

        expected = ["high_first", "high_second", "middle", "low", "negative"]
        assert order == expected
        assert operation.services_notified == tuple(f"{name}:success" for name in expected)
        notified = payloads(reloader, operation, ServiceNotified)
        assert [(p.service, p.priority) for p in notified] == [
            ("high_first", 100),
            ("high_second", 100),
            ("middle", 50),
            ("low", 0),
            ("negative", -10),
        ]
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            *["service.notified"] * 5,
            "config.applied",
            "operation.completed",
        ]


# --- rollback ----------------------------------------------------------------------------------------


async def test_rollback_to_previous_and_to_a_given_hash(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    seen: list[tuple[int, int]] = []
    async with running(url, source) as reloader:
        first = reloader.current_hash
        assert first is not None
        reloader.register_config_callback(
            "cache", lambda old, new: seen.append((old.cache.ttl_seconds, new.cache.ttl_seconds))
        )
        write(source, variant(cache__ttl_seconds=10))
        second = (await reloader.reload_config()).new_config_hash
        write(source, variant(cache__ttl_seconds=20))
        third = (await reloader.reload_config()).new_config_hash
        assert second is not None
        assert third is not None

        back = await reloader.rollback_config()
        # The seed's contract: a rollback that completed is rolled_back, and a success.
        assert back.success
        assert back.status is ReloadStatus.ROLLED_BACK
        assert back.kind is OperationKind.ROLLBACK
        assert back.previous_config_hash == third
        assert back.new_config_hash == second
        assert back.message == f"Rolled back to {second[:16]}"
        assert back.changes_applied == ("cache.ttl_seconds",)
        assert back.services_notified == ("cache:success",)
        assert reloader.current_hash == second
        assert reloader.get_config().cache.ttl_seconds == 10
        [rolled] = payloads(reloader, back, ConfigRolledBack)
        assert (rolled.reason, rolled.from_hash, rolled.to_hash) == ("manual", third, second)
        assert event_types(reloader, back) == [
            "operation.started",
            "validation.passed",
            "service.notified",
            "config.rolled_back",
            "config.applied",
            "operation.completed",
        ]

        by_full = await reloader.rollback_config(target_hash=first)
        assert by_full.success
        assert reloader.current_hash == first
        by_prefix = await reloader.rollback_config(target_hash=third[:7])
        assert by_prefix.success
        assert reloader.current_hash == third
        assert by_prefix.new_config_hash == third
        assert reloader.get_config().cache.ttl_seconds == 20
        assert seen == [(3600, 10), (10, 20), (20, 10), (10, 3600), (3600, 20)]

        # Rolling back to the config already current changes nothing and notifies nobody.
        same = await reloader.rollback_config(target_hash=third)
        assert same.success
        assert same.services_notified == ()
        assert event_types(reloader, same) == ["operation.started", "config.unchanged", "operation.completed"]


async def test_rolling_back_again_goes_further_back_and_never_returns_what_it_undid(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        first = reloader.current_hash
        write(source, variant(cache__ttl_seconds=10))
        second = (await reloader.reload_config()).new_config_hash
        write(source, variant(cache__ttl_seconds=20))
        third = (await reloader.reload_config()).new_config_hash
        assert len({first, second, third}) == 3
        # Like undo: third -> second -> first, not third -> second -> third.
        assert (await reloader.rollback_config()).new_config_hash == second
        assert (await reloader.rollback_config()).new_config_hash == first
        # Every earlier config was rolled back away from: "the previous one" names none of them.
        nothing = await reloader.rollback_config()
        assert (nothing.success, nothing.reason) == (False, "no_previous_config")
        assert reloader.current_hash == first
        # Named, a config rolled back away from is still a rollback away, and unpinned by it; the one
        # left is pinned in turn, so "the previous one" is named, not guessed.
        assert third is not None
        assert (await reloader.rollback_config(target_hash=third)).success
        again = await reloader.rollback_config()
        assert (again.success, again.reason) == (False, "no_previous_config")
        assert "name its hash" in (again.error_message or "")
        assert (await reloader.rollback_config(target_hash=second or "")).new_config_hash == second


async def test_rollback_restores_secrets_from_the_log(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        write(source, variant(embedding__openai_api_key="sk-second-key-7777"))
        assert (await reloader.reload_config()).success
        back = await reloader.rollback_config()
        assert back.success
        assert reloader.get_config().embedding.openai_api_key.get_secret_value() == OPENAI_KEY


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        # a well-formed hash no config has
        ("unknown", "unknown_config_hash"),
        # a config that was stored (validated in a dry run) but never applied
        ("never_applied", "unknown_config_hash"),
        # a prefix two stored configs share
        ("ambiguous", "ambiguous_hash_prefix"),
        # too short to be a prefix
        ("short", "invalid_hash_prefix"),
    ],
)
async def test_a_rollback_target_that_cannot_be_used_fails_clearly(
    url: str, tmp_path: Path, target: str, reason: str
) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        before = reloader.current
        assert before is not None
        if target == "unknown":
            reference = ("0" if not before.hash.startswith("0") else "1") * 64
        elif target == "never_applied":
            write(source, variant(cache__ttl_seconds=99))
            dry = await reloader.reload_config(dry_run=True)
            assert dry.success
            assert dry.new_config_hash is not None
            reference = dry.new_config_hash
            assert reloader.log.has_config(reference)
        elif target == "ambiguous":
            one, two = bodies_sharing_a_seven_digit_prefix()
            reference = reloader.log.put_config(one)[:7]
            assert reloader.log.put_config(two)[:7] == reference
        else:
            reference = before.hash[:6]

        operation = await reloader.rollback_config(target_hash=reference)

        assert operation.status is ReloadStatus.FAILED
        assert not operation.success
        assert operation.reason == reason
        assert operation.message == "Rollback failed"
        assert operation.error_message
        assert reloader.current is before
        assert event_types(reloader, operation) == ["operation.started", "operation.completed"]


async def test_a_rollback_with_no_earlier_config_fails(url: str, tmp_path: Path) -> None:
    async with running(url, write(tmp_path / "config.json", BASE)) as reloader:
        operation = await reloader.rollback_config()
        assert operation.status is ReloadStatus.FAILED
        assert operation.reason == "no_previous_config"


async def test_rollback_reaches_further_back_than_the_five_backups(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", variant(cache__ttl_seconds=0))
    async with running(url, source, backup_count=5) as reloader:
        applied = [reloader.current_hash]
        for ttl in range(1, 8):
            write(source, variant(cache__ttl_seconds=ttl))
            applied.append((await reloader.reload_config()).new_config_hash)
        assert len(set(applied)) == 8
        backups = [entry["hash"] for entry in reloader.get_backups()]
        assert backups == list(reversed(applied[2:7]))  # the five before the current one
        assert applied[0] not in backups

        operation = await reloader.rollback_config(target_hash=applied[0])

        assert operation.success
        assert reloader.current_hash == applied[0]
        assert reloader.get_config().cache.ttl_seconds == 0


# --- one operation at a time -----------------------------------------------------------------------------


async def test_a_reload_while_one_runs_is_rejected_and_recorded(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    entered, gate = anyio.Event(), anyio.Event()

    async def blocking(old: AppConfig, new: AppConfig) -> bool:
        entered.set()
        await gate.wait()
        return True

    async with running(url, source) as reloader:
        reloader.register_config_callback("blocker", blocking, async_callback=True, timeout=30)
        write(source, variant(debug=True))
        results: dict[str, ReloadOperation] = {}

        async def first() -> None:
            results["first"] = await reloader.reload_config()

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            with anyio.fail_after(10):
                await entered.wait()
            running_id = reloader.running_operation_id
            assert running_id is not None

            second = await reloader.reload_config(trigger=ReloadTrigger.API)
            rollback = await reloader.rollback_config()
            gate.set()

        for rejected in (second, rollback):
            assert rejected.status is ReloadStatus.FAILED
            assert not rejected.success
            assert rejected.message.startswith("Another reload operation is in progress")
            assert rejected.running_operation_id == running_id
            assert rejected.reason == "operation_in_progress"
            assert event_types(reloader, rejected) == ["operation.rejected"]
        assert results["first"].success
        assert results["first"].operation_id == running_id
        assert reloader.running_operation_id is None


async def test_signal_bursts_during_a_reload_coalesce_into_one_follow_up(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    entered, gate = anyio.Event(), anyio.Event()

    async def blocking(old: AppConfig, new: AppConfig) -> bool:
        entered.set()
        await gate.wait()
        return True

    async with running(url, source) as reloader:
        reloader.register_config_callback("blocker", blocking, async_callback=True, timeout=30)
        write(source, variant(debug=True))
        requested: list[ReloadOperation | None] = []

        async def request() -> None:
            requested.append(await reloader.request_reload(Trigger.SIGNAL))

        async with anyio.create_task_group() as group:
            group.start_soon(reloader.reload_config)
            with anyio.fail_after(10):
                await entered.wait()
            # A change lands while the reload runs; then ten signals arrive at once.
            latest = variant(debug=True, performance__max_retries=7)
            write(source, latest)
            for _ in range(10):
                group.start_soon(request)
            await wait_all_tasks_blocked()
            assert requested == [None] * 9  # nine joined the queued follow-up at once
            gate.set()

        follow_ups = [operation for operation in requested if operation is not None]
        assert len(follow_ups) == 1
        [follow_up] = follow_ups
        assert follow_up.trigger is Trigger.SIGNAL
        assert follow_up.actor == "signal"
        assert follow_up.success
        assert follow_up.changes_applied == ("performance.max_retries",)
        assert reloader.current_hash == hash_of(latest, reloader.log)
        signal_ops = [op for op in reloader.get_reload_history(100) if op.trigger is Trigger.SIGNAL]
        assert [op.operation_id for op in signal_ops] == [follow_up.operation_id]
        assert reloader.count_operations(trigger="signal") == 1
        assert event_types(reloader, follow_up) == RELOAD_WITH_SERVICES


# --- a full cycle, dry runs, changes and secrets ------------------------------------------------------


async def test_a_full_cycle_from_a_file_records_durations(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:

        async def service(old: AppConfig, new: AppConfig) -> bool:
            await anyio.sleep(0.001)
            return True

        reloader.register_config_callback("search", service)
        yaml_source = tmp_path / "next.yaml"
        yaml_source.write_text(yaml.safe_dump(variant(security__rate_limit_per_minute=900)), encoding="utf-8")

        operation = await reloader.reload_config(config_source=yaml_source)

        assert operation.success
        assert operation.source == str(yaml_source)
        assert operation.total_duration_ms > 0
        assert operation.validation_duration_ms > 0
        assert operation.apply_duration_ms > 0
        assert operation.load_duration_ms > 0
        assert operation.service_durations_ms["search"] > 0
        assert operation.started_at is not None
        assert operation.completed_at is not None
        assert operation.started_at <= operation.completed_at
        assert reloader.get_config().security.rate_limit_per_minute == 900
        [history_entry, *_] = reloader.get_reload_history(limit=1)
        assert history_entry == operation
        assert event_types(reloader, operation) == RELOAD_WITH_SERVICES


async def test_the_total_duration_counts_from_when_the_request_arrived(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        write(source, variant(database__pool_size=31))
        # A request that arrived two seconds before the reloader was asked (an HTTP route passes the
        # moment its request was in hand): its total and its start count from then.
        arrived = time.perf_counter() - 2.0

        operation = await reloader.reload_config(received=arrived)
        rollback = await reloader.rollback_config(received=time.perf_counter() - 2.0)

    for counted in (operation, rollback):
        assert counted.success
        assert counted.total_duration_ms >= 2000
        assert counted.started_at is not None
        assert counted.completed_at is not None
        assert (counted.completed_at - counted.started_at).total_seconds() >= 1.99


async def test_a_dry_run_notifies_nobody_and_applies_nothing(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    called: list[str] = []
    async with running(url, source) as reloader:
        before = reloader.current
        reloader.register_config_callback("cache", lambda old, new: called.append("x"))
        write(source, variant(cache__ttl_seconds=5))

        operation = await reloader.reload_config(dry_run=True)

        assert operation.success
        assert operation.dry_run
        assert operation.services_notified == ()
        assert operation.changes_applied == ()
        assert "would notify cache" in operation.message
        assert "cache.ttl_seconds" in operation.message
        assert called == []
        assert reloader.current is before
        [started] = payloads(reloader, operation, OperationStarted)
        assert started.dry_run is True
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.passed",
            "operation.completed",
        ]


async def test_changes_applied_lists_dotted_paths_and_a_changed_secret_is_a_change(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    new_key = "sk-rotated-8888-not-shown-9999"
    async with running(url, source) as reloader:
        old_hash = reloader.current_hash
        write(source, variant(cache__ttl_seconds=10, embedding__dimensions=768))
        two_paths = await reloader.reload_config()
        assert two_paths.changes_applied == ("cache.ttl_seconds", "embedding.dimensions")

        # The seed masked secrets before hashing, so a rotated key was "no change": not here.
        rotated = variant(cache__ttl_seconds=10, embedding__dimensions=768, embedding__openai_api_key=new_key)
        write(source, rotated)
        operation = await reloader.reload_config()

        assert operation.success
        assert operation.changes_applied == ("embedding.openai_api_key",)
        assert operation.new_config_hash not in (old_hash, two_paths.new_config_hash)
        assert reloader.get_config().embedding.openai_api_key.get_secret_value() == new_key
        shown = operation.model_dump_json()
        assert new_key not in shown
        assert OPENAI_KEY not in shown


async def test_secrets_are_never_stored_in_plain_text(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    new_key = "sk-third-key-4444-sealed-at-rest"
    async with running(url, source) as reloader:
        write(source, variant(embedding__openai_api_key=new_key))
        assert (await reloader.reload_config()).success
        with reloader.log.engine.connect() as connection:
            bodies = connection.execute(sa.text("SELECT body FROM config_versions")).scalars().all()
            events = connection.execute(sa.text("SELECT payload FROM events")).scalars().all()
        assert len(bodies) == 2
        for text in [*map(str, bodies), *map(str, events)]:
            for secret in (OPENAI_KEY, FIRECRAWL_KEY, new_key):
                assert secret not in text
        assert any("$confledger_sealed" in str(body) for body in bodies)


async def test_a_secret_with_no_key_to_seal_it_is_a_recorded_failure(url: str, tmp_path: Path) -> None:
    # No model: any object is accepted, and secrets are found by their names.
    source = tmp_path / "plain.json"
    source.write_text(json.dumps({"region": "eu"}), encoding="utf-8")
    # A log opened with no key: a reloader given a URL would resolve one as the service does.
    log = EventLog(url, instance_id="no-key")
    reloader = ConfigReloader(log, config_source=source)
    await reloader.start()
    try:
        before = reloader.current
        source.write_text(json.dumps({"region": "eu", "api_key": "plain-text-key-1234"}), encoding="utf-8")

        operation = await reloader.reload_config()

        assert operation.status is ReloadStatus.FAILED
        assert operation.reason == "secret_key_error"
        assert operation.validation_errors
        assert "api_key" in operation.validation_errors[0]
        assert reloader.current is before
        assert event_types(reloader, operation) == [
            "operation.started",
            "config.loaded",
            "validation.failed",
            "operation.completed",
        ]
        with reloader.log.engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT payload FROM events")).scalars().all()
            bodies = connection.execute(sa.text("SELECT body FROM config_versions")).scalars().all()
        assert not any("plain-text-key-1234" in str(text) for text in [*stored, *bodies])
    finally:
        await reloader.stop()
        log.close()


# --- statistics ----------------------------------------------------------------------------------------


async def test_stats_after_a_known_sequence(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        first = reloader.current_hash
        reloader.register_config_callback("cache", lambda old, new: True)
        write(source, variant(cache__ttl_seconds=30))
        assert (await reloader.reload_config()).success  # manual: success, 1 notification
        bad = await reloader.reload_config(config_source=EXAMPLES / "invalid" / "bad_types.yaml")
        assert bad.status is ReloadStatus.FAILED  # manual: failed
        assert (await reloader.reload_config()).message == "No configuration changes detected"
        assert (await reloader.rollback_config()).success  # manual rollback: 1 notification

        stats = reloader.get_reload_stats()
        operations = reloader.get_reload_history(limit=100)

        assert len(operations) == 5
        seed_keys = {
            "total_operations": 5,
            "successful_operations": 4,
            "failed_operations": 1,
            "success_rate": 0.8,
            "listeners_registered": 1,
            "backups_available": 1,
            "current_config_hash": first,
        }
        assert {key: stats[key] for key in seed_keys} == seed_keys
        durations = sorted(op.total_duration_ms for op in operations)
        assert stats["average_duration_ms"] == pytest.approx(sum(durations) / 5, abs=1e-3)
        assert 0 < stats["p50_duration_ms"] <= stats["p95_duration_ms"] <= stats["p99_duration_ms"]
        assert stats["p99_duration_ms"] <= stats["max_duration_ms"] == pytest.approx(durations[-1], abs=1e-3)
        assert stats["p50_duration_ms"] == pytest.approx(durations[2], rel=0.02)
        assert stats["operations_by_status"] == {"failed": 1, "rolled_back": 1, "success": 3}
        assert stats["operations_by_kind"] == {"reload": 4, "rollback": 1}
        assert stats["rollbacks"] == {"manual": 1}
        assert stats["triggers"] == {
            "manual": {"total": 4, "failed": 1, "failure_rate": 0.25},
            "startup": {"total": 1, "failed": 0, "failure_rate": 0.0},
        }
        cache = stats["services"]["cache"]
        assert cache["notified"] == 2
        assert cache["outcomes"] == {"success": 2}
        assert cache["compensations"] == 0
        assert cache["failure_rate"] == 0.0
        assert cache["running_hash"] == first
        assert 0 < cache["p50_ms"] <= cache["p99_ms"]

        assert [op.operation_id for op in reloader.get_slow_operations(threshold_ms=0.0)] == [
            op.operation_id for op in sorted(operations, key=lambda op: op.total_duration_ms, reverse=True)
        ]
        assert reloader.get_slow_operations(threshold_ms=60_000.0) == []


async def test_stats_count_services_that_fail_and_rejected_requests(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        reloader.register_config_callback("ok", lambda old, new: True, priority=1)
        reloader.register_config_callback("flaky", lambda old, new: False)
        write(source, variant(debug=True))
        assert (await reloader.reload_config(trigger=ReloadTrigger.API)).success
        reloader.register_config_callback("broken", lambda old, new: 1 / 0)
        write(source, variant(debug=False, version="9"))
        assert (await reloader.reload_config(trigger=ReloadTrigger.API)).status is ReloadStatus.ROLLED_BACK

        stats = reloader.get_reload_stats()

        assert stats["services"]["flaky"]["outcomes"] == {"failed": 2}
        assert stats["services"]["flaky"]["failure_rate"] == 1.0
        assert stats["services"]["ok"]["outcomes"] == {"success": 2}
        assert stats["services"]["ok"]["compensations"] == 1
        assert stats["services"]["broken"]["outcomes"] == {"error": 1}
        assert stats["triggers"]["api"] == {"total": 2, "failed": 1, "failure_rate": 0.5}
        assert stats["rollbacks"] == {"automatic": 1}
        assert stats["operations_by_status"] == {"rolled_back": 1, "success": 2}


# --- restarts and crashes ------------------------------------------------------------------------------


async def test_a_restart_restores_everything_from_the_log_without_the_source(
    url: str, tmp_path: Path
) -> None:
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source) as reloader:
        reloader.register_config_callback("cache", lambda old, new: True)
        for ttl in (10, 20, 30):
            write(source, variant(cache__ttl_seconds=ttl))
            assert (await reloader.reload_config()).success
        await reloader.reload_config(config_source=EXAMPLES / "invalid" / "missing_key.yaml")
        assert (await reloader.rollback_config()).success
        before = {
            "hash": reloader.current_hash,
            "config": reloader.get_config(),
            "history": reloader.get_reload_history(limit=100),
            "stats": reloader.get_reload_stats(),
            "backups": reloader.get_backups(),
        }

    source.unlink()  # restarting must not need the source
    async with running(url, source) as restarted:
        assert restarted.startup_operation is None
        after = {
            "hash": restarted.current_hash,
            "config": restarted.get_config(),
            "history": restarted.get_reload_history(limit=100),
            "stats": restarted.get_reload_stats() | {"listeners_registered": 1},
            "backups": restarted.get_backups(),
        }
        assert after == before
        assert len(after["history"]) == 6
        assert restarted.get_config().cache.ttl_seconds == 20


async def test_an_operation_interrupted_by_a_crash_is_closed_on_start(url: str, tmp_path: Path) -> None:
    node = f"node-{uuid.uuid4().hex[:8]}"
    source = write(tmp_path / "config.json", BASE)
    async with running(url, source, instance_id=node):
        pass

    # The process "crashes" after recording the start of a reload: no completion follows.
    crashed = uuid.uuid4()
    with EventLog(url, instance_id=node, cipher=CIPHER) as log:
        log.append(
            [
                NewEvent(
                    OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.SIGNAL, source=str(source)),
                    actor="signal",
                    operation_id=crashed,
                )
            ]
        )

    async with running(url, source, instance_id=node) as reloader:
        events = reloader.log.read_operation(crashed)
        assert [e.type for e in events] == ["operation.started", "operation.completed"]
        completed = events[-1].payload
        assert isinstance(completed, OperationCompleted)
        assert completed.status.value == "interrupted"
        [newest, *_] = reloader.get_reload_history(limit=5)
        assert newest.operation_id == str(crashed)
        assert newest.status is ReloadStatus.INTERRUPTED
        assert not newest.success
        assert newest.trigger is Trigger.SIGNAL
        assert reloader.get_reload_stats()["operations_by_status"] == {"interrupted": 1, "success": 1}
        # The operation does not change the current config, and the next one runs normally.
        write(source, variant(debug=True))
        assert (await reloader.reload_config()).success


async def test_an_open_operation_of_another_live_instance_is_left_alone(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", BASE)
    other = uuid.uuid4()
    with EventLog(url, instance_id="other-host:1", cipher=CIPHER) as log:
        log.append(
            [
                NewEvent(
                    OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.API), operation_id=other
                ),
            ]
        )
    async with running(url, source, instance_id="this-node") as reloader:
        assert [e.type for e in reloader.log.read_operation(other)] == ["operation.started"]
        # Close it as its own instance would after restarting, so the log ends sound.
    async with running(url, source, instance_id="other-host:1") as reloader:
        assert [e.type for e in reloader.log.read_operation(other)] == [
            "operation.started",
            "operation.completed",
        ]


async def test_a_stale_instance_applies_what_the_fleet_decided_before_it_decides(
    url: str, tmp_path: Path
) -> None:
    # Another instance applied a config meanwhile: under the fleet lock the stale one first applies it
    # (its service hears 3 -> 7), then decides its own change on top of it (7 -> 5), in order.
    source = write(tmp_path / "config.json", BASE)
    calls: list[tuple[int, int]] = []

    def cache(old: AppConfig, new: AppConfig) -> bool:
        calls.append((old.performance.max_retries, new.performance.max_retries))
        return True

    async with running(url, source, instance_id="stale") as stale:
        stale.register_config_callback("cache", cache)
        async with running(url, write(tmp_path / "other.json", variant(performance__max_retries=7))) as other:
            applied = await other.reload_config()
            assert applied.success

        write(source, variant(performance__max_retries=5))
        operation = await stale.reload_config()

    assert operation.status is ReloadStatus.SUCCESS
    assert operation.previous_config_hash == applied.new_config_hash
    assert calls == [(3, 7), (7, 5)]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync-service", "async-service"])
async def test_a_config_applied_past_the_fleet_lock_gives_the_services_the_old_config_back(
    url: str, tmp_path: Path, asynchronous: bool
) -> None:
    # A writer that does not take the fleet lock (an older confledger on the same log) applies a config
    # while the services hear of this one: the log refuses the stale append (concurrency_conflict) and the
    # services get their previous config back. Sync services (worker threads) or an async one.
    source = write(tmp_path / "config.json", BASE)
    calls: list[tuple[int, int]] = []
    outsider = open_log(url, "outsider")
    outsider.cipher = CIPHER

    def apply_past_the_lock() -> None:
        body = dump_revealed(AppConfig.model_validate(variant(performance__max_retries=7)))
        prepared = outsider.prepare_config(body)
        current = outsider.last_of_type("config.applied")
        assert current is not None
        assert isinstance(current.payload, ConfigApplied)
        outsider.append(
            [NewEvent(ConfigApplied(hash=prepared.hash, previous_hash=current.payload.hash))],
            configs=[prepared],
        )

    def sync_cache(old: AppConfig, new: AppConfig) -> bool:
        calls.append((old.performance.max_retries, new.performance.max_retries))
        if len(calls) == 1:
            apply_past_the_lock()
        return True

    async def async_cache(old: AppConfig, new: AppConfig) -> bool:
        return sync_cache(old, new)

    try:
        async with running(url, source, instance_id="stale") as stale:
            stale.register_config_callback(
                "cache", async_cache if asynchronous else sync_cache, async_callback=asynchronous
            )
            write(source, variant(performance__max_retries=5))
            operation = await stale.reload_config()
    finally:
        outsider.close()

    assert operation.status is ReloadStatus.FAILED
    assert operation.reason == "concurrency_conflict"
    assert operation.services_notified == ("cache:success",)
    # Notified, given its previous config back, then handed the outsider's config as a follower.
    assert calls == [(3, 5), (5, 3), (3, 7)]
    directions = [p.direction for p in payloads(stale, operation, ServiceNotified)]
    assert directions == ["forward", "compensate"]
    assert event_types(stale, operation) == [
        "operation.started",
        "config.loaded",
        "validation.passed",
        "service.notified",
        "service.notified",
        "operation.completed",
    ]


# --- settings -------------------------------------------------------------------------------------------


async def test_a_plain_reloader_reads_the_services_settings(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key every log of this module is checked with afterwards (assert_log_sound): a log's links are
    # keyed with it, so another key would make the log unverifiable to that check.
    key = CIPHER_KEY
    monkeypatch.setenv("CONFLEDGER_ENCRYPTION_KEY", key)
    monkeypatch.setenv("CONFLEDGER_ROLLBACK_THRESHOLD", "1.0")
    monkeypatch.setenv("CONFLEDGER_CALLBACK_TIMEOUT", "0.05")
    source = write(tmp_path / "config.json", BASE)
    release = threading.Event()
    # No cipher passed: the key comes from CONFLEDGER_ENCRYPTION_KEY, as it does for `confledger serve`.
    async with running(url, source, instance_id="settings", cipher=None) as reloader:
        assert reloader.rollback_threshold == 1.0
        # Its own timeout: under the 0.05 s default a loaded machine's late worker thread timed it out.
        reloader.register_config_callback("ok", lambda old, new: True, timeout=30)
        reloader.register_config_callback("hangs", lambda old, new: release.wait(10))  # the default timeout
        write(source, variant(debug=True))
        try:
            operation = await reloader.reload_config()
        finally:
            release.set()
        assert operation.services_notified == ("ok:success", "hangs:timeout")
        assert operation.status is ReloadStatus.ROLLED_BACK  # 1 of 2 is below a threshold of 1.0
        # Given explicitly, an option wins over the environment.
    async with running(url, source, instance_id="settings", cipher=None, rollback_threshold=0.5) as again:
        assert again.rollback_threshold == 0.5
        with EventLog(url, instance_id="reader", cipher=SecretCipher.from_env_value(key)) as log:
            stored = log.get_config(again.current_hash or "")
        assert stored.body["embedding"]["openai_api_key"] == OPENAI_KEY


async def test_a_start_that_cannot_apply_the_initial_config_raises(url: str, tmp_path: Path) -> None:
    source = write(tmp_path / "config.json", variant(database__pool_size=-1))
    reloader = ConfigReloader(url, config_model=AppConfig, config_source=source, cipher=CIPHER)
    with pytest.raises(InitialConfigError, match="was not applied \\(validation_failed\\)") as raised:
        async with reloader:
            pass
    assert reloader.current is None
    with open_log(url) as log:
        [completed] = [
            e for e in log.read_operation(raised.value.operation_id) if e.type == "operation.completed"
        ]
    assert isinstance(completed.payload, OperationCompleted)
    assert completed.payload.reason == "validation_failed"


async def test_a_start_that_raises_lets_go_of_the_fleet_lock(url: str, tmp_path: Path) -> None:
    # The start's reload takes the fleet's lock, which keeps its file (SQLite) or session (PostgreSQL)
    # open between operations; a start that raised left it open, one more for every retried start.
    source = write(tmp_path / "config.json", variant(database__pool_size=-1))
    reloader = ConfigReloader(url, config_model=AppConfig, config_source=source, cipher=CIPHER)
    with pytest.raises(InitialConfigError):
        async with reloader:
            pass
    lock = reloader.runner.fleet_lock
    assert getattr(lock, "_fd", None) is None
    assert getattr(lock, "_connection", None) is None


# --- checkpoints --------------------------------------------------------------------------------------


async def test_a_running_reloader_saves_due_checkpoints_off_the_reload_path(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import confledger.api.reloader as reloader_module

    monkeypatch.setattr(reloader_module, "CHECKPOINT_LOOK_S", 0.05)
    source = write(tmp_path / "app.json", BASE)
    reloader = ConfigReloader(url, config_model=AppConfig, config_source=source, cipher=CIPHER)
    reloader.projections.checkpoint_every = 1
    reloader.projections.checkpoint_min_interval_s = 0.0
    saved_on: list[str] = []
    checkpoint = reloader.projections.checkpoint

    def noting_thread() -> None:
        saved_on.append(threading.current_thread().name)
        checkpoint()

    reloader.projections.checkpoint = noting_thread  # type: ignore[method-assign]
    async with reloader:
        assert not reloader.projections.checkpoint_on_append  # its task saves them
        write(source, variant(database__pool_size=40))
        reloaded = await reloader.reload_config()
        assert reloaded.success
        with anyio.fail_after(10):
            while (found := reloader.log.load_checkpoint("history")) is None or (
                found.position < reloader.log.head()
            ):
                await anyio.sleep(0.02)
        assert saved_on  # by the task, in a worker thread
    assert reloader.projections.checkpoint_on_append  # stopped: an append saves its own again


async def test_a_checkpoint_save_that_fails_leaves_the_reloader_serving(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import confledger.api.reloader as reloader_module

    monkeypatch.setattr(reloader_module, "CHECKPOINT_LOOK_S", 0.02)
    source = write(tmp_path / "app.json", BASE)
    reloader = ConfigReloader(url, config_model=AppConfig, config_source=source, cipher=CIPHER)
    attempts = 0

    def failing() -> bool:
        # Not a store error: what a bug in a projection's snapshot would raise.
        nonlocal attempts
        attempts += 1
        raise RuntimeError("a snapshot that cannot be made")

    reloader.projections.checkpoint_if_due = failing  # type: ignore[method-assign]
    async with reloader:
        with anyio.fail_after(10):
            while attempts < 3:
                await anyio.sleep(0.02)
        write(source, variant(database__pool_size=40))
        reloaded = await reloader.reload_config()
        assert reloaded.success
        assert reloader.current.config.database.pool_size == 40
    failures = [r for r in caplog.records if "checkpoint failed (RuntimeError)" in r.getMessage()]
    assert len(failures) == 1  # said once while it keeps failing, with its traceback
    assert failures[0].exc_info is not None
