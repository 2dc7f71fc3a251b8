"""Migrations on a log with real data: upgrade, downgrade one step, upgrade again, and nothing changed.

A log of 10,000 events (``tests/benchmarks/logbuilder.py``: whole reload operations as a live reloader
appends them) plus real operations on top (a failed reload, a manual rollback, a dry run, checkpoints
saved by a running reloader) is taken through ``confledger db downgrade -1`` and ``confledger db upgrade``
with the installed console script, as an operator would. Before and after:

- every row of every table (events with their chain hashes, stored bodies, checkpoints, anything a later
  revision adds) and every row of every SQL view is the same;
- the projections folded fresh from the log are the same;
- a reloader started on the migrated log (its projections restored from the checkpoints) reports the
  same history and config, a new reload applies, and ``check_nothing_lost`` holds (``verify`` over
  every event, its projections equal to a fresh fold).

With a single revision the one step down is ``base``, which drops the log by design (and asks for
``--yes``); the test then has nothing to round-trip and says so as a skip. Every later revision makes it
run (the second revision's downgrade must keep the first revision's data).

Tables that are a liveness signal rather than a record (``VOLATILE_TABLES``: the fleet's heartbeat rows)
are left out of the comparison; a downgrade known to lose record data is a strict xfail
(``LOSSY_DOWNGRADES``) so it stays visible until it is fixed.

Size knob ``CONFLEDGER_TEST_SCALE`` (float, default 1): events ``round(10_000 * SCALE)``, and above 1 the
round trip through every step, not only the one below head (``-N`` steps down from head, then up);
full scale is 10 (100,000 events per backend, every step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, SecretCipher
from confledger.store import migrate as store_migrate
from tests.benchmarks.logbuilder import build_log
from tests.integration.api.service_harness import variant
from tests.reliability.invariants import ReloaderObserver, check_nothing_lost, fold_log
from tests.scale import SCALE

EVENTS = max(800, round(10_000 * SCALE))
CONFLEDGER = Path(sys.executable).parent / "confledger"
CIPHER_KEY = SecretCipher.generate_key()


def _chain() -> list[tuple[str, str | None]]:
    """Every revision with the one below it, head first."""
    script = ScriptDirectory.from_config(store_migrate.alembic_config())
    chain = []
    for revision in script.walk_revisions():
        down = revision.down_revision
        assert down is None or isinstance(down, str), f"{revision.revision} is a merge: name the branch"
        chain.append((revision.revision, down))
    assert chain[0][0] == store_migrate.head_revision()
    return chain


def _cli(*arguments: str) -> str:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
    done = subprocess.run(
        [str(CONFLEDGER), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"confledger {' '.join(arguments[:2])}: {done.stderr}"
    return done.stdout.strip()


def _everything(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table and view but Alembic's own and the volatile ones, in a stable order."""
    inspector = sa.inspect(engine)
    names = [
        name for name in inspector.get_table_names() if name not in ("alembic_version", *VOLATILE_TABLES)
    ]
    names += inspector.get_view_names()
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for name in sorted(names):
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            found = connection.execute(sa.select(table)).all()
            rows[name] = sorted((tuple(row) for row in found), key=lambda row: json.dumps(row, default=str))
    return rows


def _fresh_fold(log: EventLog) -> Any:
    """The projections folded from position 0, as JSON (what the service must report)."""
    return json.loads(json.dumps(fold_log(log).__dict__, default=str))


async def _real_operations(url: str, source: Path) -> None:
    """A failed reload, an applied one, a manual rollback and a dry run by a reloader, which also
    saves its checkpoints when it stops."""
    async with ConfigReloader(
        url,
        config_model=AppConfig,
        config_source=source,
        validators=VALIDATORS,
        cipher=SecretCipher([CIPHER_KEY]),
    ) as reloader:
        source.write_text('{"app_name": ', encoding="utf-8")
        await reloader.reload_config()
        source.write_text(json.dumps(variant(cache__ttl_seconds=4242)), encoding="utf-8")
        await reloader.reload_config()
        await reloader.rollback_config()
        await reloader.reload_config(dry_run=True, force=True)


# Tables that are not a record: their rows may be lost by a downgrade by design.
VOLATILE_TABLES = {
    "fleet_instances": "heartbeat rows rewritten in place at each beat; a lost row reads 'gone' until the next",
}
# Known losses, kept visible: 0002_integrity's downgrade drops events.link_version,
# config_versions.hash_version, projection_checkpoints.mac and the integrity table, so a keyed log comes
# back from the round trip with its keyed rows marked plain (verify: link_mismatch at position 1) and
# without its key record. Strict: the day the downgrade keeps them, the case passes and the mark must go.
LOSSY_DOWNGRADES = {
    "0002_integrity": "its downgrade drops the keyed rows' scheme columns and the integrity records",
}
# The CI size takes the step down from head; above it, the step down from every revision but the first
# (whose step down is base: no log by design, and --yes).
STEPS = [(revision, down) for revision, down in _chain() if down is not None][: None if SCALE > 1 else 1]


@pytest.mark.parametrize(
    ("revision", "below"),
    [
        pytest.param(
            revision,
            below,
            marks=[pytest.mark.xfail(reason=LOSSY_DOWNGRADES[revision], strict=True)]
            if revision in LOSSY_DOWNGRADES
            else [],
        )
        for revision, below in STEPS
    ]
    or [pytest.param(None, None, marks=pytest.mark.skip(reason="a single revision: one step down is base"))],
)
def test_upgrade_downgrade_one_step_upgrade_changes_nothing(
    database_url: str, tmp_path: Path, revision: str, below: str
) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps(variant()), encoding="utf-8")

    with EventLog(
        database_url,
        instance_id="builder",
        cipher=SecretCipher([CIPHER_KEY]),
        sqlite_synchronous="OFF",
    ) as log:
        built = build_log(log, EVENTS)
    anyio.run(_real_operations, database_url, source)

    with EventLog(database_url, instance_id="reader", cipher=SecretCipher([CIPHER_KEY])) as log:
        head = log.head()
        assert head >= built.head + 4 * 4  # the builder's events and the real operations'
        before_rows = _everything(log.engine)
        before = _fresh_fold(log)
        report = log.verify()
        assert report.ok, report.reason
        assert before_rows["events"], "no events read"

    # From head down to just below ``revision`` (one step when it is the head), then back up.
    steps = [name for name, _ in _chain()].index(revision) + 1
    downgraded = _cli("db", "downgrade", f"-{steps}", "--database", database_url)
    assert downgraded == f"database at revision {below}"
    engine = sa.create_engine(database_url)
    try:
        assert store_migrate.current_revision(engine) == below
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM events")).scalar() == head
    finally:
        engine.dispose()
    assert (
        _cli("db", "upgrade", "--database", database_url)
        == f"database at revision {store_migrate.head_revision()}"
    )

    with EventLog(database_url, instance_id="reader", cipher=SecretCipher([CIPHER_KEY])) as log:
        assert log.head() == head
        after_rows = _everything(log.engine)
        assert sorted(after_rows) == sorted(before_rows)
        for name in before_rows:
            assert after_rows[name] == before_rows[name], f"{name} changed across the round trip"
        assert _fresh_fold(log) == before

    async def reload_after() -> None:
        async with ConfigReloader(
            database_url,
            config_model=AppConfig,
            config_source=source,
            validators=VALIDATORS,
            cipher=SecretCipher([CIPHER_KEY]),
            instance_id="after-migration",
        ) as reloader:
            # Restored from the checkpoints saved before the round trip: the same as the fresh fold.
            assert ReloaderObserver(reloader).observe().history == before["history"]
            assert reloader.current_hash == before["applied_hash"]
            source.write_text(json.dumps(variant(cache__ttl_seconds=4343)), encoding="utf-8")
            operation = await reloader.reload_config()
            assert operation.success, operation
            # verify over every event, the restored projections against a fresh fold, nothing open
            check_nothing_lost(reloader.log, [ReloaderObserver(reloader)])

    anyio.run(reload_after)
