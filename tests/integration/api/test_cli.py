"""The operator CLI: read commands against a real log on both backends, reload/rollback against a real server.

The log is written by a real ``ConfigReloader`` (the example model, a few reloads, a failed one, an
automatic and a manual rollback); the read commands run through Typer's ``CliRunner`` against it, and must
never write to it. ``reload`` and ``rollback`` talk to a uvicorn server running in a thread.
"""

from __future__ import annotations

import copy
import getpass
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from fastapi import FastAPI
from rich.console import Console
from typer.testing import CliRunner, Result

from confledger.api import cli
from confledger.api.cli import log as log_commands
from confledger.api.lifecycle import resolve_cipher, setup_configuration_lifecycle
from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.events import InstanceStarted, OperationStarted
from confledger.store.fleet import Heartbeat, record_heartbeat
from confledger.store.schema import events, projection_checkpoints
from confledger.store.services import ServiceRegistry

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
ROTATED_KEY = "sk-demo-rotated-4444-not-real-5555"
SECRETS = [BASE["embedding"]["openai_api_key"], BASE["crawl"]["firecrawl_api_key"], ROTATED_KEY]
PG_KEY = SecretCipher.generate_key()

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CONFLEDGER_DATABASE_URL",
        "CONFLEDGER_ADMIN_TOKEN",
        "CONFLEDGER_READ_TOKEN",
        "CONFLEDGER_ENCRYPTION_KEY",
        "CONFLEDGER_URL",
        "CONFLEDGER_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)


def variant(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``body`` with ``section__field=value`` changes."""
    changed = copy.deepcopy(body)
    for dotted_name, value in changes.items():
        *parents, leaf = dotted_name.split("__")
        node = changed
        for part in parents:
            node = node[part]
        node[leaf] = value
    return changed


def write(path: Path, body: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(body), encoding="utf-8")


def invoke(*args: str, env: dict[str, str] | None = None, columns: int = 200) -> Result:
    """Run the CLI in-process; tables are laid out ``columns`` wide so assertions see whole cells."""
    return runner.invoke(cli.app, list(args), env={"COLUMNS": str(columns), **(env or {})})


def assert_no_secrets(*results: Result) -> None:
    for result in results:
        for text in (result.stdout, result.stderr):
            for secret in SECRETS:
                assert secret not in text


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


# --- a log written by a real reloader ----------------------------------------------------------------


@dataclass
class Story:
    url: str
    key: str | None  # the key to pass explicitly (PostgreSQL); SQLite finds the key file itself
    hashes: dict[str, str]  # name -> full hash
    operation_ids: dict[str, str]

    def db(self) -> list[str]:
        return ["--database", self.url]

    def keys(self) -> dict[str, str]:
        """What `verify` needs for a keyed PostgreSQL log (its links are HMACs under the log's key)."""
        return {} if self.key is None else {"CONFLEDGER_ENCRYPTION_KEY": self.key}


def build_story(url: str, tmp_path: Path) -> Story:
    source = tmp_path / "config.yaml"
    write(source, BASE)
    log = EventLog(url, instance_id="cli-test")
    key = None
    if log.dialect == "sqlite":
        log.cipher = resolve_cipher(None, url, log)  # the key file beside the database, as `serve` does
    else:
        key = PG_KEY
        log.cipher = SecretCipher.from_env_value(PG_KEY)
    services = ServiceRegistry()
    behaviour = {"fail_search": False}
    hashes: dict[str, str] = {}
    ids: dict[str, str] = {}

    async def run() -> None:
        reloader = ConfigReloader(
            log,
            config_model=AppConfig,
            config_source=source,
            validators=VALIDATORS,
            services=services,
            rollback_threshold=0.75,
        )
        await reloader.start()
        assert reloader.current_hash is not None
        hashes["initial"] = reloader.current_hash
        reloader.register_config_callback("database_pool", lambda old, new: True, priority=10)
        reloader.register_config_callback("cache", lambda old, new: True, priority=5)

        write(source, variant(BASE, database__pool_size=40))
        op = await reloader.reload_config(Trigger.MANUAL)
        assert op.success
        hashes["pool"], ids["pool"] = op.new_config_hash or "", op.operation_id

        rotated = variant(
            BASE, database__pool_size=40, cache__ttl_seconds=60, embedding__openai_api_key=ROTATED_KEY
        )
        write(source, rotated)
        op = await reloader.reload_config(Trigger.SIGNAL, actor="signal")
        assert op.success
        hashes["rotated"], ids["rotated"] = op.new_config_hash or "", op.operation_id

        write(source, variant(rotated, database__pool_size=-1))
        op = await reloader.reload_config(Trigger.FILE_WATCH, actor="file_watch")
        assert not op.success
        ids["invalid"] = op.operation_id

        # A service that refuses: 1 of 2... below the 0.75 threshold, so the change is rolled back.
        reloader.unregister_config_callback("cache")
        reloader.register_config_callback(
            "search_index", lambda old, new: not behaviour["fail_search"], priority=1
        )
        behaviour["fail_search"] = True
        write(source, variant(rotated, performance__max_retries=7))
        op = await reloader.reload_config(Trigger.MANUAL)
        assert op.status.value == "rolled_back", op
        ids["refused"] = op.operation_id
        behaviour["fail_search"] = False

        op = await reloader.rollback_config(None)
        assert op.success, op
        assert op.new_config_hash == hashes["pool"]
        ids["rollback"] = op.operation_id
        await reloader.stop()

    try:
        anyio.run(run)
    finally:
        log.close()
    return Story(url, key, hashes, ids)


@pytest.fixture
def story(database_url: str, tmp_path: Path) -> Story:
    return build_story(database_url, tmp_path)


def log_fingerprint(url: str) -> tuple[int, list[tuple[Any, ...]]]:
    log = EventLog(url, migrate_on_open=False)
    try:
        with log.engine.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
            checkpoints = [
                tuple(row)
                for row in connection.execute(
                    sa.select(projection_checkpoints.c.name, projection_checkpoints.c.position).order_by(
                        projection_checkpoints.c.name
                    )
                )
            ]
        return int(count), checkpoints
    finally:
        log.close()


# --- history, stats, status ----------------------------------------------------------------------------


def test_history_lists_operations_newest_first_with_filters_and_paging(story: Story) -> None:
    page = as_json(invoke("history", *story.db(), "--json"))
    operations = page["operations"]
    assert [op["operation_id"] for op in operations[:5]] == [
        story.operation_ids[name] for name in ("rollback", "refused", "invalid", "rotated", "pool")
    ]
    assert len(operations) == page["total_count"] == 6
    assert [op["status"] for op in operations] == [
        "rolled_back",  # the manual rollback: rolled_back, and a success
        "rolled_back",
        "failed",
        "success",
        "success",
        "success",
    ]
    assert operations[-1]["trigger"] == "startup"
    assert operations[0]["kind"] == "rollback"
    assert operations[0]["new_config_hash"] == story.hashes["pool"][:16]
    assert operations[0]["previous_config_hash"] == story.hashes["rotated"][:16]
    assert all(len(op["previous_config_hash"] or "x" * 16) == 16 for op in operations)
    assert page["next_before"] is None

    first = as_json(invoke("history", *story.db(), "--json", "--limit", "2"))
    assert [op["operation_id"] for op in first["operations"]] == [
        story.operation_ids["rollback"],
        story.operation_ids["refused"],
    ]
    assert first["total_count"] == 6
    assert first["next_before"] is not None
    second = as_json(
        invoke("history", *story.db(), "--json", "--limit", "2", "--before", str(first["next_before"]))
    )
    assert [op["operation_id"] for op in second["operations"]] == [
        story.operation_ids["invalid"],
        story.operation_ids["rotated"],
    ]

    signal = as_json(invoke("history", *story.db(), "--json", "--trigger", "signal"))
    assert [op["operation_id"] for op in signal["operations"]] == [story.operation_ids["rotated"]]
    assert signal["total_count"] == 1
    failed = as_json(invoke("history", *story.db(), "--json", "--status", "failed"))
    assert [op["operation_id"] for op in failed["operations"]] == [story.operation_ids["invalid"]]
    assert "database.pool_size" in failed["operations"][0]["validation_errors"][0]

    # Each operation says where it starts in the log: the cursor that pages past it, shown in the table.
    positions = [op["first_position"] for op in operations]
    assert all(isinstance(position, int) and position > 0 for position in positions)
    assert positions == sorted(positions, reverse=True)
    assert first["next_before"] == first["operations"][-1]["first_position"]

    table = invoke("history", *story.db())
    assert table.exit_code == 0, table.stderr
    assert "history: 6 of 6 operations" in table.stdout
    assert "rolled_back" in table.stdout
    rollback_row = next(line for line in table.stdout.splitlines() if "rollback/" in line)
    assert re.search(rf"\s{positions[0]}\s+rollback/", rollback_row), rollback_row
    bad = invoke("history", *story.db(), "--trigger", "nonsense")
    assert bad.exit_code == 2
    assert_no_secrets(table, bad)


def test_stats_and_status_read_the_projections(story: Story) -> None:
    stats = as_json(invoke("stats", *story.db(), "--json"))
    assert list(stats)[:5] == [
        "total_operations",
        "successful_operations",
        "failed_operations",
        "success_rate",
        "average_duration_ms",
    ]
    assert stats["total_operations"] == 6
    assert stats["successful_operations"] == 4
    assert stats["failed_operations"] == 2
    assert stats["operations_by_status"] == {"failed": 1, "rolled_back": 2, "success": 3}
    assert stats["current_config_hash"] == story.hashes["pool"][:16]
    assert stats["backups_available"] == 2
    assert stats["rollbacks"] == {"automatic": 1, "manual": 1}
    assert stats["triggers"]["signal"] == {"total": 1, "failed": 0, "failure_rate": 0.0}
    assert stats["triggers"]["file_watch"]["failed"] == 1
    assert stats["triggers"]["manual"]["total"] == 3
    assert set(stats["services"]) == {"cache", "database_pool", "search_index"}
    assert stats["services"]["search_index"]["outcomes"] == {"failed": 1, "success": 1}
    assert stats["p50_duration_ms"] <= stats["p99_duration_ms"] <= stats["max_duration_ms"] + 1e-6

    status = as_json(invoke("status", *story.db(), "--json"))
    assert status["current_config_hash"] == story.hashes["pool"][:16]
    assert status["log_head"] > 0
    assert status["last_instance_started"]["instance_id"] == "cli-test"
    assert status["last_instance_stopped"]["instance_id"] == "cli-test"
    assert status["instances"] == [
        {**status["last_instance_stopped"], "instance_id": "cli-test", "state": "stopped"}
    ]
    assert status["open_operations"] == []
    # "cache" accepted the rotated config and was then unregistered: it still runs that one.
    assert status["service_drift"] == {"cache": story.hashes["rotated"][:16]}
    assert status["reload_statistics"]["total_operations"] == 6

    table = invoke("stats", *story.db())
    assert table.exit_code == 0, table.stderr
    assert "by trigger" in table.stdout
    assert "search_index" in table.stdout
    assert re.search(rf"refused requests\s+{stats['rejected_requests']}\b", table.stdout)
    status_table = invoke("status", *story.db())
    assert status_table.exit_code == 0, status_table.stderr
    assert story.hashes["pool"][:16] in status_table.stdout
    assert "cache: runs" in status_table.stdout
    assert_no_secrets(table, status_table)


def test_status_lists_an_operation_left_open(story: Story) -> None:
    """An operation.started with no completion (a crashed or still-running instance) is shown as open."""
    operation_id = uuid.uuid4()
    cipher = None if story.key is None else SecretCipher.from_env_value(story.key)
    with EventLog(story.url, instance_id="crashed", cipher=cipher) as log:
        if cipher is None:
            log.cipher = resolve_cipher(None, story.url, log)  # the key file beside an SQLite log
        log.append(
            [
                NewEvent(
                    OperationStarted(
                        kind=OperationKind.RELOAD, trigger=Trigger.API, previous_hash=story.hashes["pool"]
                    ),
                    actor="token:admin",
                    operation_id=operation_id,
                )
            ]
        )
    status = as_json(invoke("status", *story.db(), "--json"))
    [open_operation] = status["open_operations"]
    assert open_operation["operation_id"] == str(operation_id)
    assert open_operation["status"] == "in_progress"
    history = as_json(invoke("history", *story.db(), "--json", "--limit", "1"))
    assert history["operations"][0]["operation_id"] == str(operation_id)
    table = invoke("status", *story.db())
    assert "open operations (running or interrupted)" in table.stdout


def test_status_calls_an_instance_that_stopped_beating_gone(story: Story) -> None:
    """Killed -9, an instance records no stop: its silent heartbeat says it is gone, as /fleet says."""
    cipher = None if story.key is None else SecretCipher.from_env_value(story.key)
    now = datetime.now(UTC)
    with EventLog(story.url, instance_id="killed", cipher=cipher) as log:
        if cipher is None:
            log.cipher = resolve_cipher(None, story.url, log)
        for name in ("killed", "alive", "not-following"):
            log.instance_id = name
            log.append([NewEvent(InstanceStarted(version="1", host="h", pid=1))])
        # The killed one beat every 0.1 s and then no more; the live one beats every 30 s.
        record_heartbeat(log.engine, Heartbeat("killed", "h", 1, "1", now, now, 0, 0.1))
        record_heartbeat(log.engine, Heartbeat("alive", "h", 2, "1", now, now, 0, 30.0))
    time.sleep(0.5)
    status = as_json(invoke("status", *story.db(), "--json"))
    states = {entry["instance_id"]: entry["state"] for entry in status["instances"]}
    # One that does not follow (--no-follow) writes no heartbeat: nothing says it went.
    assert states == {"killed": "gone", "alive": "up", "not-following": "up", "cli-test": "stopped"}


# --- configs: show, diff, backups ---------------------------------------------------------------------


def test_show_redacts_secrets_and_accepts_a_prefix(story: Story) -> None:
    shown = as_json(invoke("show", story.hashes["rotated"][:10], *story.db(), "--json"))
    assert shown["hash"] == story.hashes["rotated"][:16]
    assert shown["full_hash"] == story.hashes["rotated"]
    assert shown["applied"] is True
    assert shown["config"]["embedding"]["openai_api_key"] == "**********"
    assert shown["config"]["crawl"]["firecrawl_api_key"] == "**********"
    assert shown["config"]["cache"]["ttl_seconds"] == 60
    table = invoke("show", story.hashes["initial"], *story.db())
    assert table.exit_code == 0, table.stderr
    assert "openai_api_key: '**********'" in table.stdout
    assert "pool_size: 20" in table.stdout

    unknown = invoke("show", "0000000", *story.db())
    assert unknown.exit_code == 1
    assert unknown.stderr.count("\n") == 1
    assert "unknown_config_hash" in unknown.stderr
    assert "Traceback" not in unknown.stderr + unknown.stdout
    short = invoke("show", "abc", *story.db())
    assert short.exit_code == 1
    assert "at least 7 hex digits" in short.stderr
    assert_no_secrets(table, unknown, short)


def test_diff_compares_secrets_with_the_key_and_marks_them_without(story: Story, tmp_path: Path) -> None:
    key_args = [] if story.key is None else ["--encryption-key", story.key]
    keyed = invoke("diff", story.hashes["initial"], story.hashes["rotated"], *story.db(), *key_args, "--json")
    result = as_json(keyed)
    assert result["secrets_compared"] is True
    changes = {change["path"]: change for change in result["changes"]}
    assert set(changes) == {"cache.ttl_seconds", "database.pool_size", "embedding.openai_api_key"}
    assert changes["database.pool_size"] == {
        "path": "database.pool_size",
        "kind": "changed",
        "old": 20,
        "new": 40,
    }
    assert (
        changes["embedding.openai_api_key"]["old"]
        == changes["embedding.openai_api_key"]["new"]
        == "**********"
    )

    same_secrets = as_json(
        invoke("diff", story.hashes["initial"], story.hashes["pool"], *story.db(), *key_args, "--json")
    )
    assert [change["path"] for change in same_secrets["changes"]] == ["database.pool_size"]

    # Without the key (none given, and for SQLite the key file moved away) secrets cannot be compared.
    if story.key is None:
        key_file = Path(story.url.removeprefix("sqlite:///") + ".key")
        key_file.rename(tmp_path / "elsewhere.key")
    keyless = as_json(invoke("diff", story.hashes["initial"], story.hashes["pool"], *story.db(), "--json"))
    assert keyless["secrets_compared"] is False
    marked = {change["path"]: change for change in keyless["changes"]}
    assert marked["database.pool_size"]["new"] == 40
    assert marked["embedding.openai_api_key"]["kind"] == "unknown"
    assert marked["embedding.openai_api_key"]["old"] == "(secret: cannot compare without the key)"
    table = invoke("diff", story.hashes["initial"], story.hashes["rotated"], *story.db())
    assert table.exit_code == 0, table.stderr
    assert "cannot compare" in table.stdout
    assert_no_secrets(keyed, table)


def test_backups_lists_earlier_distinct_configs(story: Story) -> None:
    result = as_json(invoke("backups", *story.db(), "--json"))
    assert result["current_config_hash"] == story.hashes["pool"][:16]
    assert [entry["full_hash"] for entry in result["backups"]] == [
        story.hashes["rotated"],
        story.hashes["initial"],
    ]
    assert result["backups"][0]["trigger"] == "signal"
    assert result["backups"][1]["trigger"] == "startup"
    one = as_json(invoke("backups", *story.db(), "--json", "--count", "1"))
    assert [entry["full_hash"] for entry in one["backups"]] == [story.hashes["rotated"]]
    table = invoke("backups", *story.db())
    assert table.exit_code == 0, table.stderr
    assert story.hashes["initial"][:16] in table.stdout


# --- replay -------------------------------------------------------------------------------------------


def test_replay_until_hash_rebuilds_the_earlier_state(story: Story) -> None:
    state = as_json(invoke("replay", *story.db(), "--until-hash", story.hashes["rotated"][:12], "--json"))
    assert state["current_config_hash"] == story.hashes["rotated"][:16]
    assert [op["operation_id"] for op in state["history"]] == [
        story.operation_ids["rotated"],
        story.operation_ids["pool"],
        state["history"][-1]["operation_id"],
    ]
    assert state["history"][0]["status"] == "success"
    assert state["stats"]["total_operations"] == 3
    assert state["stats"]["failed_operations"] == 0
    assert [entry["full_hash"] for entry in state["backups"]] == [
        story.hashes["pool"],
        story.hashes["initial"],
    ]
    assert state["config"]["embedding"]["openai_api_key"] == "**********"
    assert state["config"]["cache"]["ttl_seconds"] == 60

    table = invoke("replay", *story.db(), "--until-hash", story.hashes["initial"])
    assert table.exit_code == 0, table.stderr
    assert f"current config {story.hashes['initial'][:16]}" in table.stdout
    never = invoke("replay", *story.db(), "--until-hash", "0000000")
    assert never.exit_code == 1
    assert "unknown_config_hash" in never.stderr
    assert_no_secrets(table, never)


def test_replay_window_lists_the_incident(story: Story) -> None:
    everything = as_json(invoke("replay", *story.db(), "--since", "2000-01-01T00:00:00Z", "--json"))
    assert [op["operation_id"] for op in everything["operations"]][1:] == [
        story.operation_ids[name] for name in ("pool", "rotated", "invalid", "refused", "rollback")
    ]
    assert everything["failed_services"] == {"search_index": 1}
    refused = next(
        op for op in everything["operations"] if op["operation_id"] == story.operation_ids["refused"]
    )
    assert refused["status"] == "rolled_back"
    assert "search_index:failed" in refused["services_notified"]
    assert [change["hash"] for change in everything["config_changes"]] == [
        story.hashes[name][:16] for name in ("initial", "pool", "rotated", "pool")
    ]
    assert [entry["type"] for entry in everything["lifecycle"]] == ["instance.started", "instance.stopped"]

    nothing = as_json(invoke("replay", *story.db(), "--until", "2000-01-01T00:00:00", "--json"))
    assert nothing["operations"] == []

    table = invoke("replay", *story.db(), "--since", "2000-01-01")
    assert table.exit_code == 0, table.stderr
    assert "incident timeline" in table.stdout
    assert "search_index:failed" in table.stdout
    assert "database.pool_size: Input should be greater" in table.stdout

    for bad in (
        ["replay", *story.db()],
        ["replay", *story.db(), "--since", "yesterday"],
        ["replay", *story.db(), "--since", "2001-01-01", "--until", "2000-01-01"],
        ["replay", *story.db(), "--since", "2001-01-01", "--until-hash", story.hashes["pool"]],
    ):
        result = invoke(*bad)
        assert result.exit_code == 2, bad
        assert "Traceback" not in result.stderr
    assert_no_secrets(table)


def test_replay_window_bounds_are_shown_in_utc_as_its_rows_are(story: Story) -> None:
    # The rows are UTC; a window given in another offset was printed in that offset's wall clock, with
    # no zone, so an operation inside the window looked hours outside it.
    result = as_json(
        invoke(
            "replay", *story.db(), "--since", "2000-01-01T00:00:00-05:00", "--until", "2100-01-01", "--json"
        )
    )
    assert (result["since"], result["until"]) == ("2000-01-01T05:00:00Z", "2100-01-01T00:00:00Z")
    assert len(result["operations"]) == 6
    table = invoke("replay", *story.db(), "--since", "2000-01-01T00:00:00-05:00")
    assert table.exit_code == 0, table.stderr
    assert "incident timeline 2000-01-01 05:00:00 .. now (UTC)" in table.stdout
    assert "time (UTC)" in table.stdout


def test_every_table_says_its_times_are_utc(story: Story) -> None:
    # The tables showed UTC times with no zone: read as local time anywhere but UTC.
    shown = {
        command: invoke(command, *story.db(), env={"COLUMNS": "200"}).stdout
        for command in ("history", "status", "fleet", "backups")
    }
    assert "started (UTC)" in shown["history"]
    assert re.search(r"applied +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by ", shown["status"]), shown["status"]
    assert re.search(r"last started +\S+ at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown["status"])
    assert "since (UTC)" in shown["status"]
    assert "last seen (UTC)" in shown["fleet"]
    assert "applied (UTC)" in shown["backups"]
    # A bound that exists in its own offset but not in UTC is a bad option, not a traceback.
    for bound in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:00-14:00"):
        refused = invoke("replay", *story.db(), "--since", bound)
        assert refused.exit_code == 2, (bound, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert "out of range" in refused.stderr


def test_long_replays_show_progress_on_stderr_only(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_commands, "PROGRESS_MIN_EVENTS", 0)
    monkeypatch.setattr(log_commands, "err", Console(stderr=True, force_terminal=True, width=100))
    result = invoke("replay", *story.db(), "--until-hash", story.hashes["rotated"], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["current_config_hash"] == story.hashes["rotated"][:16]
    assert "replaying the log" in result.stderr


# --- verify, and never writing ------------------------------------------------------------------------


def test_verify_passes_on_a_sound_log(story: Story) -> None:
    result = as_json(invoke("verify", *story.db(), "--json", env=story.keys()))
    assert result["ok"] is True
    assert result["checked"] == result["head"] > 0
    table = invoke("verify", *story.db(), env=story.keys())
    assert table.exit_code == 0
    assert "the chain holds" in table.stdout


def tamper(url: str, *statements: str, **values: Any) -> None:
    """What someone with DDL rights does to the log: ``statements`` in one transaction, bound to ``values``."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement), values)
    finally:
        engine.dispose()


def test_verify_names_the_first_tampered_position(sqlite_url: str, tmp_path: Path) -> None:
    story = build_story(sqlite_url, tmp_path)
    tamper(
        sqlite_url,
        "DROP TRIGGER events_refuse_update",
        "UPDATE events SET payload = json_set(payload, '$.reason', 'edited') WHERE position = 4",
    )
    result = invoke("verify", *story.db(), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["first_broken_position"] == 4
    assert report["checked"] == 3
    assert f"chain broken at position 4 ({report['code']}):" in result.stderr
    table = invoke("verify", *story.db())
    assert table.exit_code == 1
    assert "position 4" in table.stderr


@pytest.mark.parametrize(
    ("change", "code", "said", "not_said"),
    [
        # Every link holds; only a stored config was edited. "chain broken at position N" with every
        # event "verified before it" sent an auditor looking for an edited event that is not there.
        (
            "UPDATE config_versions SET body = json_set(body, '$.database.pool_size', 7) WHERE hash = :hash",
            "config_body_mismatch",
            "changed in the database",
            "chain broken",
        ),
        # What an instance left behind in a rolling upgrade meets: a hash scheme it does not know. It
        # was told "it was changed in the database", and an auditor looked for an edit that never was.
        (
            "UPDATE config_versions SET hash_version = 99 WHERE hash = :hash",
            "hash_scheme_too_new",
            "hash scheme 99, which this release does not know",
            "changed in the database",
        ),
    ],
)
def test_verify_names_a_failed_body_as_a_body_not_a_broken_chain(
    sqlite_url: str, tmp_path: Path, change: str, code: str, said: str, not_said: str
) -> None:
    story = build_story(sqlite_url, tmp_path)
    tamper(sqlite_url, "DROP TRIGGER config_versions_refuse_update", change, hash=story.hashes["pool"])
    result = invoke("verify", *story.db(), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["code"], report["config_hash"]) == (code, story.hashes["pool"])
    assert report["checked"] == report["head"]
    table = invoke("verify", *story.db())
    assert table.exit_code == 1
    assert f"stored config {story.hashes['pool'][:16]} failed its check" in table.stderr
    assert f"the chain holds: {report['checked']} events verified" in table.stderr
    assert said in table.stderr
    assert not_said not in table.stderr


def test_read_commands_never_write_to_the_log(story: Story) -> None:
    before = log_fingerprint(story.url)
    for args in (
        ["history"],
        ["stats"],
        ["status"],
        ["backups"],
        ["verify"],
        ["show", story.hashes["pool"]],
        ["diff", story.hashes["initial"], story.hashes["pool"]],
        ["replay", "--since", "2000-01-01"],
        ["replay", "--until-hash", story.hashes["pool"]],
    ):
        result = invoke(*args, *story.db(), "--json", env=story.keys())
        assert result.exit_code == 0, (args, result.stderr)
        json.loads(result.stdout)
        # The tables on a narrow terminal too: laid out, not crashed, nothing secret.
        table = invoke(*args, *story.db(), columns=80, env=story.keys())
        assert table.exit_code == 0, (args, table.stderr)
        assert table.stdout.strip()
        assert_no_secrets(result, table)
    assert log_fingerprint(story.url) == before


def test_a_database_that_does_not_exist_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    for command in ("history", "stats", "status", "backups", "verify"):
        result = invoke(command, "--database", f"sqlite:///{missing}")
        assert result.exit_code == (2 if command == "verify" else 1), command
        assert "does not exist" in result.stderr
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert not missing.exists()
    malformed = invoke("history", "--database", "mysql://somewhere/db")
    assert malformed.exit_code == 1
    assert "invalid_database_url" in malformed.stderr


def test_an_empty_postgres_schema_is_refused(pg_schema_url: str) -> None:
    result = invoke("status", "--database", pg_schema_url)
    assert result.exit_code == 1
    assert "holds no confledger log" in result.stderr
    engine = sa.create_engine(pg_schema_url)
    try:
        with engine.connect() as connection:
            assert not sa.inspect(connection).get_table_names()
    finally:
        engine.dispose()


def test_an_invalid_service_setting_in_the_environment_is_one_line_not_a_traceback(story: Story) -> None:
    # A read command reads the keys and the anchor's place from the CONFLEDGER_* settings; on a host whose
    # environment also carries serve's variables, a bad one is named, as serve names it.
    for command, code in (("history", 1), ("status", 1), ("verify", 2)):
        result = invoke(command, *story.db(), env={**story.keys(), "CONFLEDGER_PORT": "eighty"})
        assert result.exit_code == code, (command, result.stderr, result.exception)
        assert isinstance(result.exception, SystemExit), (command, result.exception)
        assert "invalid setting port" in result.stderr, command
        assert result.stderr.count("\n") == 1, result.stderr


def test_the_environment_names_the_database(story: Story) -> None:
    result = invoke("history", "--json", env={"CONFLEDGER_DATABASE_URL": story.url})
    assert len(as_json(result)["operations"]) == 6


# --- reload and rollback over HTTP --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    url: str
    database_url: str
    token: str
    source: Path
    behaviour: dict[str, Any]

    def admin(self) -> dict[str, str]:
        return {"CONFLEDGER_ADMIN_TOKEN": self.token, "CONFLEDGER_URL": self.url}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("service")
    source = directory / "config.yaml"
    write(source, BASE)
    database_url = f"sqlite:///{directory / 'confledger.db'}"
    behaviour: dict[str, Any] = {"fail": False, "slow": threading.Event()}

    def search_index(old: AppConfig, new: AppConfig) -> bool:
        if behaviour["slow"].is_set():
            time.sleep(1.5)
        return not behaviour["fail"]

    services = ServiceRegistry()
    services.register("search_index", search_index, priority=1)
    app = FastAPI()
    with pytest.MonkeyPatch.context() as environment:
        # No token from the developer's shell: the lifecycle generates the token file, as `serve` does.
        for name in ("CONFLEDGER_ADMIN_TOKEN", "CONFLEDGER_READ_TOKEN", "CONFLEDGER_ENCRYPTION_KEY"):
            environment.delenv(name, raising=False)
        lifecycle = setup_configuration_lifecycle(
            app,
            config_model=AppConfig,
            config_source=source,
            database_url=database_url,
            validators=VALIDATORS,
            services=services,
            enable_signal_handler=False,
            sqlite_synchronous="NORMAL",
        )
    assert lifecycle.token_file is not None
    assert lifecycle.token_created
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.05)
    try:
        yield Service(
            f"http://127.0.0.1:{port}",
            database_url,
            lifecycle.tokens.admin,
            source,
            behaviour,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_reload_applies_a_change_and_prints_the_operation(service: Service) -> None:
    write(service.source, variant(BASE, cache__ttl_seconds=120))
    result = invoke("reload", "--json", env=service.admin())
    operation = as_json(result)
    assert operation["status"] == "success"
    assert operation["success"] is True
    # The CLI identifies itself: recorded as trigger "cli"; its OS user is a claim, beside the token's role.
    assert operation["trigger"] == "cli"
    assert operation["actor"] == f"claimed:cli:{getpass.getuser()} (admin token)"
    assert operation["changes_applied"] == ["cache.ttl_seconds"]
    assert operation["services_notified"] == ["search_index:success"]
    assert len(operation["new_config_hash"]) == 16

    write(service.source, variant(BASE, cache__ttl_seconds=240))
    dry = invoke("reload", "--dry-run", env=service.admin())
    assert dry.exit_code == 0, dry.stderr
    assert "nothing was applied" in dry.stdout
    table = invoke("reload", "--force", env=service.admin())
    assert table.exit_code == 0, table.stderr
    assert "reload success" in table.stdout
    assert_no_secrets(result, dry, table)


def test_reload_failures_exit_1(service: Service, tmp_path: Path) -> None:
    invalid = service.source.parent / "invalid.yaml"
    write(invalid, variant(BASE, embedding__openai_api_key=None))
    failed = invoke("reload", "--source", str(invalid), "--json", env=service.admin())
    assert failed.exit_code == 1
    operation = json.loads(failed.stdout)
    assert operation["status"] == "failed"
    assert any("embedding.openai_api_key" in error for error in operation["validation_errors"])
    table = invoke("reload", "--source", str(invalid), env=service.admin())
    assert table.exit_code == 1
    assert "validation error" in table.stdout

    service.behaviour["fail"] = True
    try:
        write(service.source, variant(BASE, performance__max_retries=9))
        refused = invoke("reload", "--json", env=service.admin())
    finally:
        service.behaviour["fail"] = False
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["status"] == "rolled_back"

    outside = tmp_path / "outside.yaml"
    write(outside, BASE)
    forbidden = invoke("reload", "--source", str(outside), env=service.admin())
    assert forbidden.exit_code == 2
    assert "403" in forbidden.stderr
    assert forbidden.stdout == ""
    assert_no_secrets(failed, table, refused, forbidden)


def test_rollback_over_http(service: Service) -> None:
    # A config of its own before the two it rolls between: the last rollback goes to a config before
    # both, which on a service this test is the first to use would otherwise not exist.
    write(service.source, variant(BASE, database__pool_size=32))
    assert as_json(invoke("reload", "--json", env=service.admin()))["success"] is True
    write(service.source, variant(BASE, database__pool_size=33))
    applied = as_json(invoke("reload", "--json", env=service.admin()))
    rolled = as_json(invoke("rollback", "--json", env=service.admin()))
    assert rolled["kind"] == "rollback"
    assert rolled["previous_config_hash"] == applied["new_config_hash"]
    back = as_json(invoke("rollback", applied["new_config_hash"], "--json", env=service.admin()))
    assert back["new_config_hash"] == applied["new_config_hash"]
    unknown = invoke("rollback", "0000000", env=service.admin())
    assert unknown.exit_code == 1
    assert "rollback failed" in unknown.stdout
    table = invoke("rollback", env=service.admin())
    assert table.exit_code == 0, table.stderr
    assert "rollback rolled_back" in table.stdout


def test_the_token_comes_from_the_file_beside_the_database(service: Service) -> None:
    write(service.source, variant(BASE, database__pool_size=34))
    result = invoke("reload", "--json", "--url", service.url, "--database", service.database_url)
    assert as_json(result)["success"] is True
    token_file = Path(service.database_url.removeprefix("sqlite:///") + ".admin-token")
    explicit = invoke("rollback", "--json", "--url", service.url, "--token-file", str(token_file))
    assert as_json(explicit)["kind"] == "rollback"


def test_the_url_may_be_given_as_the_tour_s_api_variable_or_without_a_scheme(service: Service) -> None:
    # The README's tour keeps the API's URL in $API (http://…/api/v1/config): passed as --url it was a
    # bare "HTTP 404: Not Found"; host:port without a scheme was "missing an 'http://' protocol".
    for url in (
        f"{service.url}/api/v1/config",
        f"{service.url}/api/v1/config/",
        service.url.removeprefix("http://"),
    ):
        result = invoke("reload", "--json", "--url", url, env={"CONFLEDGER_ADMIN_TOKEN": service.token})
        # reached: an operation came back (0 or 1, by what the shared service's log holds), not exit 2
        assert result.exit_code in (0, 1), (url, result.stderr)
        assert json.loads(result.stdout)["kind"] == "reload"


def test_connection_and_token_errors_exit_2(service: Service, tmp_path: Path) -> None:
    wrong = invoke("reload", env={"CONFLEDGER_ADMIN_TOKEN": "x" * 32, "CONFLEDGER_URL": service.url})
    assert wrong.exit_code == 2
    assert "401" in wrong.stderr
    assert "[unauthorized]" in wrong.stderr  # the code, to branch on
    assert "from CONFLEDGER_ADMIN_TOKEN" in wrong.stderr  # where the refused token came from
    assert wrong.stderr.count("\n") == 1
    assert wrong.stdout == ""
    # A token file left from before the service was given a token of its own: named in the refusal.
    stale = tmp_path / "stale.admin-token"
    stale.write_text("y" * 32, encoding="utf-8")
    refused = invoke("reload", "--url", service.url, "--token-file", str(stale))
    assert refused.exit_code == 2
    assert f"from the token file {stale}" in refused.stderr

    closed = invoke(
        "rollback", "--url", f"http://127.0.0.1:{free_port()}", env={"CONFLEDGER_ADMIN_TOKEN": service.token}
    )
    assert closed.exit_code == 2
    assert "cannot reach confledger" in closed.stderr
    assert "Traceback" not in closed.stderr
    # A credential in the URL's user part (a basic-auth front) is not echoed into the error line.
    behind_auth = invoke(
        "reload",
        "--url",
        f"http://ops:hunter2-basic@127.0.0.1:{free_port()}",
        env={"CONFLEDGER_ADMIN_TOKEN": service.token},
    )
    assert behind_auth.exit_code == 2
    assert "hunter2" not in behind_auth.stderr
    assert "//***@127.0.0.1" in behind_auth.stderr

    no_token = invoke("reload", "--url", service.url, "--database", f"sqlite:///{tmp_path / 'other.db'}")
    assert no_token.exit_code == 2
    assert "no admin token" in no_token.stderr
    for result in (wrong, closed, no_token):
        assert service.token not in result.stdout + result.stderr


def test_a_reload_while_another_runs_exits_2_naming_it(service: Service) -> None:
    service.behaviour["slow"].set()
    first: dict[str, Any] = {}

    def slow_reload() -> None:
        response = httpx.post(
            f"{service.url}/api/v1/config/reload",
            json={"force": True},
            headers={"Authorization": f"Bearer {service.token}"},
            timeout=30,
        )
        first["status"] = response.status_code

    thread = threading.Thread(target=slow_reload)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        running = None
        while running is None and time.monotonic() < deadline:
            status = httpx.get(
                f"{service.url}/api/v1/config/status", headers={"Authorization": f"Bearer {service.token}"}
            ).json()
            running = status["running_operation_id"]
            time.sleep(0.02)
        assert running is not None
        busy = invoke("reload", "--force", env=service.admin())
    finally:
        service.behaviour["slow"].clear()
        thread.join(timeout=30)
    assert first["status"] == 200
    assert busy.exit_code == 2
    assert "409" in busy.stderr
    assert running in busy.stderr
