"""The service against someone who can write its database (issue 13, items 2 and 3), through the real app:
an edited body is refused at start-up and by a rollback; a truncated log found at start-up leaves the
instance serving reads but refusing writes, and /readyz says so; on both backends."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from httpx import Response
from typer.testing import CliRunner

from confledger.api.cli import app as cli_app
from confledger.store import EventLog, SecretCipher
from confledger.store.errors import ConfigBodyMismatch, HashSchemeTooNew, IntegrityFailed
from confledger.store.schema import config_versions, events
from tests.integration.api.service_harness import (
    Service,
    clear_confledger_environment,
    is_postgres,
    serving,
    variant,
    write_config,
)
from tests.integration.store.test_integrity import drop_guards


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


@pytest.fixture
def options(database_url: str) -> dict[str, Any]:
    """One key for every start of the same log (on PostgreSQL it comes from the settings)."""
    return {"encryption_key": SecretCipher.generate_key()} if is_postgres(database_url) else {}


def apply(service: Service, **changes: Any) -> str:
    write_config(service.source, variant(**changes))
    answer = service.post("/reload", json={})
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"], answer.text
    current = service.current_full_hash()
    assert current is not None
    return current


def edit_body(service: Service, full_hash: str) -> None:
    """What someone with DDL rights does: the guards dropped, one stored body's plain field changed."""
    drop_guards(service.log)
    with service.log.engine.connect() as connection:
        body = connection.execute(
            sa.select(config_versions.c.body).where(config_versions.c.hash == full_hash)
        ).scalar_one()
    # Written in a transaction of its own (see the truncation test: no read-then-write under a live writer).
    with service.log.engine.begin() as connection:
        connection.execute(
            config_versions.update()
            .where(config_versions.c.hash == full_hash)
            .values(body={**body, "app_name": "edited-in-the-database"})
        )


def assert_writes_refused(service: Service, reason: str) -> None:
    ready = service.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "integrity check failed", "reason": reason, "writes": "refused"}
    for path, body in (("/reload", {"force": True}), ("/rollback", {})):
        refused = service.post(path, json=body)
        assert refused.status_code == 503, (path, refused.text)
        assert refused.json()["code"] == "integrity_failed"
        # Says what to do about it: verify shows what changed, a backup restored (and a restart) clears it.
        assert "restore the database from a backup" in refused.json()["detail"]


def refused_rollback(service: Service, target: str, current: str, code: str) -> Response:
    """A rollback to ``target``, whose stored body fails its check with ``code``: answered 409 naming
    it, nothing applied, and ``verify`` naming that body."""
    refused = service.post("/rollback", json={"target_hash": target[:16]})
    assert refused.status_code == 409, refused.text
    assert refused.json()["success"] is False
    assert code in refused.text
    assert service.current_full_hash() == current  # nothing applied
    report = service.get("/verify").json()
    assert (report["ok"], report["code"], report["config_hash"]) == (False, code, target)
    return refused


def test_a_rollback_to_an_edited_body_is_refused_and_recorded(
    tmp_path: Path, database_url: str, options: dict[str, Any]
) -> None:
    with serving(tmp_path, database_url, **options) as service:
        first = service.current_full_hash()
        assert first is not None
        current = apply(service, database__pool_size=31)
        edit_body(service, first)
        refused = refused_rollback(service, first, current, "config_body_mismatch")
        assert service.reloader.current is not None
        assert service.reloader.current.config.app_name != "edited-in-the-database"
        operation_id = refused.json()["operation_id"]
        assert service.events_of(operation_id) == ["operation.started", "operation.completed"]


def store_as_newer_release(service: Service, full_hash: str) -> None:
    """What a newer release leaves in a shared log: a body under a hash scheme this one does not know
    (the guards dropped first, ``drop_guards``)."""
    with service.log.engine.begin() as connection:
        connection.execute(
            config_versions.update().where(config_versions.c.hash == full_hash).values(hash_version=99)
        )


def test_a_body_of_a_newer_release_is_refused_over_http_as_such_and_never_recorded_as_edited(
    tmp_path: Path, database_url: str, options: dict[str, Any]
) -> None:
    # What an operator of an instance left behind in a rolling upgrade sees: why, and what to do.
    with serving(tmp_path, database_url, **options) as service:
        first = service.current_full_hash()
        assert first is not None
        current = apply(service, database__pool_size=33)
        drop_guards(service.log)
        store_as_newer_release(service, first)
        refused = refused_rollback(service, first, current, "hash_scheme_too_new")
        assert "upgrade this instance" in refused.text
        assert "changed in the database" not in refused.text
        # From here this instance takes no more writes, and says to upgrade, not to restore a backup.
        held_back = service.post("/reload", json={"force": True})
        assert held_back.status_code == 503, held_back.text
        assert held_back.json()["code"] == "integrity_failed"
        assert "upgrade this instance" in held_back.json()["detail"]
        assert "restore the database" not in held_back.json()["detail"]
        store_as_newer_release(service, current)
    # Its current config is one it cannot check: the start fails, saying so, and writes no alarm into
    # the log the newer instances share.
    with pytest.raises(HashSchemeTooNew, match="upgrade"), serving(tmp_path, database_url, **options):
        pass
    cipher = options.get("encryption_key")
    with EventLog(database_url, cipher=None if cipher is None else SecretCipher([cipher])) as log:
        assert log.last_of_type("integrity.check_failed") is None


def delete_body(service: Service, full_hash: str) -> None:
    """The same hand deleting one stored body's row instead."""
    drop_guards(service.log)
    with service.log.engine.begin() as connection:
        connection.execute(config_versions.delete().where(config_versions.c.hash == full_hash))


# What was done to the current config's stored body: either way there is no config the instance could
# serve under that hash, and the start says so as the same integrity failure (not a lookup error).
TAMPERED_BODIES = [pytest.param(edit_body, id="edited"), pytest.param(delete_body, id="deleted")]


@pytest.mark.parametrize("tamper", TAMPERED_BODIES)
def test_a_tampered_current_body_is_recorded_and_never_served(
    tmp_path: Path, database_url: str, options: dict[str, Any], tamper: Callable[[Service, str], None]
) -> None:
    with serving(tmp_path, database_url, **options) as service:
        current = apply(service, database__pool_size=32)
        tamper(service, current)
    with pytest.raises(ConfigBodyMismatch, match=current[:16]), serving(tmp_path, database_url, **options):
        pass
    cipher = options.get("encryption_key")
    with EventLog(database_url, cipher=None if cipher is None else SecretCipher([cipher])) as log:
        failed = log.last_of_type("integrity.check_failed")
    assert failed is not None
    assert failed.payload.reason == "config_body_mismatch"  # type: ignore[attr-defined]
    assert failed.payload.config_hash == current  # type: ignore[attr-defined]


def test_a_truncated_log_is_found_at_start_up_and_reads_go_on(
    tmp_path: Path, database_url: str, options: dict[str, Any]
) -> None:
    with serving(tmp_path, database_url, **options) as service:
        apply(service, database__pool_size=33)
        kept = service.current_full_hash()
        apply(service, database__pool_size=34)
        head = service.log.head()
        drop_guards(service.log)
    with serving(tmp_path, database_url, **options) as cut:
        # The newest operation and the stop deleted, checkpoints dropped: the chain that is left holds.
        with cut.log.engine.connect() as connection:
            applied = connection.execute(
                sa.select(sa.func.max(events.c.position)).where(events.c.type == "config.applied")
            ).scalar_one()
        # A transaction of its own that writes first: SQLite cannot turn a read transaction into a write
        # while the running service writes (its heartbeat), and says "locked" at once instead of waiting.
        with cut.log.engine.begin() as connection:
            connection.execute(events.delete().where(events.c.position >= applied - 3))
            connection.execute(sa.text("DELETE FROM projection_checkpoints"))
        assert cut.log.head() < head
    with serving(tmp_path, database_url, **options) as restarted:
        assert_writes_refused(restarted, "truncated")
        assert restarted.reloader.current_hash == kept  # what the cut log names, still served for reads
        assert restarted.get("/current").status_code == 200
        assert restarted.get("/verify").json()["code"] == "truncated"
    # From the command line too, given where the anchor is (a PostgreSQL log's lies beside the config).
    key = options.get("encryption_key")
    environment = {} if key is None else {"CONFLEDGER_ENCRYPTION_KEY": key}
    found = CliRunner().invoke(
        cli_app, ["verify", "--database", database_url, "--config", str(restarted.source)], env=environment
    )
    assert found.exit_code == 1, found.output
    assert "(truncated)" in found.stderr


def test_an_edit_below_the_verified_position_found_by_verify_stops_writes(
    tmp_path: Path, database_url: str, options: dict[str, Any]
) -> None:
    """Start-up checks the tail since the position it last verified; an older event edited since is
    found by the full check of GET /verify, which then refuses writes as a failed start-up check does,
    and makes the next start-up check the whole log."""
    with serving(tmp_path, database_url, **options) as service:
        apply(service, database__pool_size=36)
        drop_guards(service.log)
    with serving(tmp_path, database_url, **options) as restarted:
        # Below the position the last start verified: the actor of the first event, edited in place.
        with restarted.log.engine.begin() as connection:
            connection.execute(events.update().where(events.c.position == 1).values(actor="forged"))
        assert restarted.client.get("/readyz").status_code == 200  # start-up did not look there
        report = restarted.get("/verify").json()
        assert (report["ok"], report["first_broken_position"]) == (False, 1)
        assert_writes_refused(restarted, report["code"])
    # Nor does a restart lift it (nor would another instance's start): the next start-up checks it all.
    with serving(tmp_path, database_url, **options) as again:
        assert_writes_refused(again, report["code"])


def test_a_current_config_pointed_elsewhere_below_the_verified_position_is_never_served(
    tmp_path: Path, database_url: str, options: dict[str, Any]
) -> None:
    """The newest config.applied names the config a start restores: edited to name another stored config
    (after a start verified past it, checkpoints dropped), it is found at start-up, which refuses to serve."""
    with serving(tmp_path, database_url, **options) as service:
        first = service.current_full_hash()
        apply(service, database__pool_size=37)
        drop_guards(service.log)
    with serving(tmp_path, database_url, **options) as again:  # this start verifies up to the head
        applied = again.log.last_of_type("config.applied")
        assert applied is not None
    with again.log.engine.begin() as connection:
        payload = {**applied.payload.model_dump(mode="json"), "hash": first}
        connection.execute(
            events.update().where(events.c.position == applied.position).values(payload=payload)
        )
        connection.execute(sa.text("DELETE FROM projection_checkpoints"))
    refused = pytest.raises(IntegrityFailed, match=f"the config.applied at {applied.position}, which names")
    with refused, serving(tmp_path, database_url, **options):
        pass


def test_verify_says_which_anchor_it_checked_and_when_it_checked_none(
    tmp_path: Path, database_url: str, options: dict[str, Any]
) -> None:
    with serving(tmp_path, database_url, **options) as service:
        apply(service, database__pool_size=35)
        source = service.source
    key = options.get("encryption_key")
    environment = {} if key is None else {"CONFLEDGER_ENCRYPTION_KEY": key}

    def verify(*extra: str) -> tuple[dict[str, Any], str]:
        done = CliRunner().invoke(cli_app, ["verify", "--database", database_url, *extra], env=environment)
        assert done.exit_code == 0, done.output
        if "--config" in extra:  # the text names the file it checked: beside the config on PostgreSQL
            beside = source.parent if is_postgres(database_url) else None
            assert "its end matches the anchor file" in done.stdout
            assert beside is None or str(beside) in done.stdout.replace("\n", "")
        as_json = CliRunner().invoke(
            cli_app, ["verify", "--database", database_url, "--json", *extra], env=environment
        )
        return json.loads(as_json.stdout), done.stderr

    given, said = verify("--config", str(source))
    assert given["anchor_checked"] is True
    assert "no anchor file was checked" not in said
    alone, said = verify()
    if is_postgres(database_url):
        # Nothing says where the service's config is: the chain holds, and verify says what it left out.
        assert alone["anchor_checked"] is False
        assert "no anchor file was checked" in said
    else:
        assert alone["anchor_checked"] is True  # beside the database
    # An anchor file named and not there is an error, not a check of nothing that exits 0.
    missing = CliRunner().invoke(
        cli_app,
        ["verify", "--database", database_url, "--anchor-file", str(tmp_path / "nowhere.anchor")],
        env=environment,
    )
    assert missing.exit_code == 2, missing.output
    assert "no anchor file at" in missing.stderr
