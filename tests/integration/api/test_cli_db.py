"""The installed ``confledger`` console script: ``db`` commands, and clean one-line errors on bad input."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from confledger import __version__
from confledger.store import migrate as store_migrate

CONFLEDGER = Path(sys.executable).parent / "confledger"
HEAD = store_migrate.head_revision()


def _environment() -> dict[str, str]:
    # No CONFLEDGER_* from the developer's shell; a narrow terminal, so a wrapped message would show.
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
    env["COLUMNS"] = "60"
    return env


def confledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONFLEDGER), *args], capture_output=True, text=True, env=_environment(), timeout=120, check=False
    )


def start_confledger(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CONFLEDGER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )


def test_version() -> None:
    result = confledger("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"confledger {__version__}"


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cli.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


def test_db_upgrade_current_downgrade_and_check(fresh_database_url: str) -> None:
    database = ("--database", fresh_database_url)

    current = confledger("db", "current", *database)
    assert current.returncode == 0, current.stderr
    assert current.stdout.split() == ["current:", "base", "(empty)", "head:", HEAD]
    if fresh_database_url.startswith("sqlite"):
        assert not Path(fresh_database_url.removeprefix("sqlite:///")).exists()  # asking created nothing

    upgraded = confledger("db", "upgrade", *database)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database at revision {HEAD}"
    if fresh_database_url.startswith("sqlite"):
        # Made ahead of a deploy, the log is as private as the one serve makes.
        made = Path(fresh_database_url.removeprefix("sqlite:///"))
        assert stat.S_IMODE(made.stat().st_mode) == 0o600

    current = confledger("db", "current", *database)
    assert current.stdout.split() == ["current:", HEAD, "head:", HEAD]

    downgraded = confledger("db", "downgrade", "base", "--yes", *database)
    assert downgraded.returncode == 0, downgraded.stderr
    assert downgraded.stdout.strip() == "database at revision base"

    checked = confledger("db", "check", *database)  # check migrates first, then compares
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "no drift between models and migrations"


def test_downgrade_to_base_needs_confirmation(tmp_path: Path) -> None:
    refused = confledger("db", "downgrade", "base", "--database", f"sqlite:///{tmp_path / 'cli.db'}")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert not (tmp_path / "cli.db").exists()  # refused before opening anything


def _read_only_sqlite(tmp_path: Path) -> str:
    # We run as root, so chmod cannot make a file read-only; SQLite's own read-only mode can.
    path = tmp_path / "read-only.db"
    path.touch()
    return f"sqlite:///file:{path}?mode=ro&uri=true"


BAD_DATABASES = {
    # id: (URL given the tmp dir, words the one-line error must contain)
    "unreachable-postgres": (
        lambda tmp: "postgresql+psycopg://confledger:hunter2@127.0.0.1:1/test",
        ["cannot reach PostgreSQL", "127.0.0.1:1"],
    ),
    # libpq takes the password as a query parameter too; it is as secret there as after the user name.
    "unreachable-postgres-password-in-query": (
        lambda tmp: "postgresql+psycopg://confledger@127.0.0.1:1/test?password=hunter2&connect_timeout=5",
        ["cannot reach PostgreSQL", "127.0.0.1:1", "connect_timeout=5"],
    ),
    "malformed-url": (lambda tmp: "not a url", ["cannot parse database URL", "not a url"]),
    "unsupported-scheme": (
        lambda tmp: "mysql://user@localhost/confledger",
        ["unsupported database", "mysql"],
    ),
    "read-only-sqlite": (_read_only_sqlite, ["read-only"]),
    "missing-directory": (
        lambda tmp: f"sqlite:///{tmp / 'no-such-dir' / 'confledger.db'}",
        ["cannot open SQLite database", "missing"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATABASES))
def test_bad_database_input_fails_with_one_clean_line(case: str, tmp_path: Path) -> None:
    url_for, expected_words = BAD_DATABASES[case]
    url = url_for(tmp_path)
    commands = [["db", "upgrade"], ["db", "current"], ["db", "check"]]
    if case == "read-only-sqlite":
        # Reading the revision of a read-only database works (it is "base"); only writing is refused.
        commands.remove(["db", "current"])
    # The three commands reach the database by three paths (migrate, read, EventLog); run them together.
    running = [(command, start_confledger(*command, "--database", url)) for command in commands]
    for command, process in running:
        stdout, stderr = process.communicate(timeout=120)
        shown = f"confledger {' '.join(command)} --database {url!r}"
        assert process.returncode == 1, f"{shown}: exit {process.returncode}\n{stderr}"
        assert "Traceback" not in stderr + stdout, f"{shown}:\n{stderr}"
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"{shown} printed {len(lines)} lines:\n{stderr}"
        for word in expected_words:
            assert word in lines[0], f"{shown}: {word!r} not in {lines[0]!r}"
        assert "hunter2" not in stderr, f"{shown} showed the password"
        assert stdout == ""


def test_one_step_down_is_an_argument_and_needs_confirmation_when_it_reaches_base(
    fresh_database_url: str,
) -> None:
    # "-1" as the help shows it (click once refused it as an unknown option); from the first revision it
    # reaches base, which drops the log like "base" itself, so it asks for --yes the same way.
    database = ("--database", fresh_database_url)
    assert confledger("db", "upgrade", *database).returncode == 0
    head = ScriptDirectory.from_config(store_migrate.alembic_config()).get_revision(HEAD)
    assert head is not None
    below_head = head.down_revision
    stepped = confledger("db", "downgrade", "-1", *database)
    if below_head is None:
        assert stepped.returncode == 2, stepped.stderr
        assert "--yes" in stepped.stderr
        assert confledger("db", "current", *database).stdout.split()[:2] == ["current:", HEAD]
        stepped = confledger("db", "downgrade", "-1", "--yes", *database)
    assert stepped.returncode == 0, stepped.stderr
    assert stepped.stdout.strip() == f"database at revision {below_head or 'base'}"
