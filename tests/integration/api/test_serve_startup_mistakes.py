"""Every start-up mistake a user can make with ``confledger serve`` is one line, a non-zero exit, and an
untouched log: no traceback, no event appended.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from tests.conftest import require_postgres

ROOT = Path(__file__).resolve().parents[3]
MODEL = "confledger.examples.app_config:AppConfig"
CONFLEDGER = str(Path(sys.executable).with_name("confledger"))


@dataclass
class Case:
    """One mistake: the arguments and environment that make it, and what the one line must say."""

    args: list[str]
    says: str
    env: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _events(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("events"):
                return 0
            return int(connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "examples" / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _serve(workdir: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONFLEDGER_")}
    return subprocess.run(
        [CONFLEDGER, "serve", *args],
        cwd=workdir,
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert says in lines[0], lines[0]


# (mistake, how to make it) — each against a fresh SQLite log in the test's own directory
SQLITE_CASES: list[tuple[str, Callable[[Path, int], Case]]] = [
    # the config file's directory does not exist
    (
        "config directory missing",
        lambda w, port: Case(
            ["--config", str(w / "missing" / "config.yaml"), "--model", MODEL, "--port", str(port)],
            "config directory",
        ),
    ),
    # --config names the directory `confledger init` wrote (it made the log, key and token files in the
    # directory above, then failed at start-up: "unsupported config format (none)")
    (
        "config is a directory",
        lambda w, port: Case(
            ["--config", str(w), "--model", MODEL, "--port", str(port)],
            f"--config names the directory {w}, not a config file: did you mean {w / 'config.yaml'}?",
        ),
    ),
    # --database names a directory that does not exist
    (
        "database directory missing",
        lambda w, port: Case(
            [
                "--config",
                "config.yaml",
                "--model",
                MODEL,
                "--port",
                str(port),
                "--database",
                f"sqlite:///{w / 'nowhere' / 'log.db'}",
            ],
            "database directory",
        ),
    ),
    # a database that cannot be created (even root cannot create files in /proc)
    (
        "database not writable",
        lambda w, port: Case(
            [
                "--config",
                "config.yaml",
                "--model",
                MODEL,
                "--port",
                str(port),
                "--database",
                "sqlite:////proc/log.db",
            ],
            "/proc",
        ),
    ),
    # --anchor-file in a directory that does not exist: it was never written (a warning per append),
    # so nothing outside the database kept the log's end while the service ran
    (
        "anchor directory missing",
        lambda w, port: Case(
            [
                *("--config", "config.yaml", "--model", MODEL, "--port", str(port)),
                *("--anchor-file", str(w / "nowhere" / "log.anchor")),
            ],
            "anchor file's directory",
        ),
    ),
    # the same from its variable
    (
        "anchor directory missing variable",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", MODEL, "--port", str(port)],
            "CONFLEDGER_ANCHOR_FILE",
            env={"CONFLEDGER_ANCHOR_FILE": str(w / "nowhere" / "log.anchor")},
        ),
    ),
    # a URL SQLAlchemy cannot parse
    (
        "bad database URL",
        lambda w, port: Case(
            [
                "--config",
                "config.yaml",
                "--model",
                MODEL,
                "--port",
                str(port),
                "--database",
                "postgres://u:p@:::bad",
            ],
            "database URL",
        ),
    ),
    # a backend confledger does not support
    (
        "unsupported backend",
        lambda w, port: Case(
            [
                "--config",
                "config.yaml",
                "--model",
                MODEL,
                "--port",
                str(port),
                "--database",
                "mysql://u@h/db",
            ],
            "unsupported database",
        ),
    ),
    # --model names a module that does not exist
    (
        "model module missing",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", "no_such_module:Config", "--port", str(port)], "--model"
        ),
    ),
    # --model names something that is not a pydantic model
    (
        "model not a model",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", "os.path:join", "--port", str(port)], "BaseModel"
        ),
    ),
    # a key that is not a Fernet key
    (
        "malformed key",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", MODEL, "--port", str(port)],
            # which setting to fix, and how to make a good key
            "CONFLEDGER_ENCRYPTION_KEY: encryption key is not a valid Fernet key",
            env={"CONFLEDGER_ENCRYPTION_KEY": "not-a-key"},
        ),
    ),
    # a token too short to be safe
    (
        "weak admin token",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", MODEL, "--port", str(port)],
            "CONFLEDGER_ADMIN_TOKEN",
            env={"CONFLEDGER_ADMIN_TOKEN": "short"},
        ),
    ),
    # two settings that do not go together: the one-line error names the rule, not a single setting
    (
        "fleet threshold without following",
        lambda w, port: Case(
            [
                *("--config", "config.yaml", "--model", MODEL, "--port", str(port)),
                *("--fleet-rollback-threshold", "0.5", "--no-follow"),
            ],
            "invalid settings: fleet_rollback_threshold needs follow",
        ),
    ),
    # a log level that is none (it was a multi-screen traceback from the logging module)
    (
        "unknown log level",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", MODEL, "--port", str(port), "--log-level", "bogus"],
            "invalid setting log_level",
        ),
    ),
    # the same from its variable
    (
        "unknown log level variable",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", MODEL, "--port", str(port)],
            "invalid setting log_level",
            env={"CONFLEDGER_LOG_LEVEL": "loud"},
        ),
    ),
    # a setting given as an option, out of its model's range
    (
        "setting option out of range",
        lambda w, port: Case(
            ["--config", "config.yaml", "--model", MODEL, "--port", str(port), "--rollback-threshold", "1.5"],
            "rollback_threshold",
        ),
    ),
]


@pytest.mark.parametrize(("mistake", "make"), SQLITE_CASES, ids=[name for name, _ in SQLITE_CASES])
def test_a_start_up_mistake_is_one_line_and_touches_no_log(
    workdir: Path, mistake: str, make: Callable[[Path, int], Case]
) -> None:
    case = make(workdir, _free_port())
    result = _serve(workdir, case.args, case.env)
    _assert_one_line(result, case.says)
    assert _events(f"sqlite:///{workdir / 'confledger.db'}") == 0


def test_a_port_in_use_is_one_line_and_touches_no_log(workdir: Path, busy_port: int) -> None:
    result = _serve(workdir, ["--config", "config.yaml", "--model", MODEL, "--port", str(busy_port)], {})
    _assert_one_line(result, "already in use")
    assert not (workdir / "confledger.db").exists()


def test_a_wrong_key_for_a_log_with_secrets_is_one_line_and_appends_nothing(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'confledger.db'}"
    key = Fernet.generate_key().decode()
    from confledger.store.log import EventLog
    from confledger.store.secrets import SecretCipher

    with EventLog(url, cipher=SecretCipher([key])) as log:  # a log whose current config holds secrets
        from confledger.store.events import ConfigApplied, NewEvent

        body = {"app_name": "x", "embedding": {"openai_api_key": "sk-secret"}}
        digest = log.put_config(body, [("embedding", "openai_api_key")])
        log.append([NewEvent(ConfigApplied(hash=digest, previous_hash=None))])
    before = _events(url)

    other = Fernet.generate_key().decode()
    result = _serve(
        workdir,
        ["--config", "config.yaml", "--model", MODEL, "--port", str(_free_port())],
        {"CONFLEDGER_ENCRYPTION_KEY": other},
    )
    _assert_one_line(result, "key")
    assert _events(url) == before


@pytest.mark.parametrize(
    ("mistake", "url_of", "env"),
    [
        # nothing listens there
        (
            "postgres down",
            lambda: "postgresql+psycopg://postgres@127.0.0.1:1/test",
            {"CONFLEDGER_ENCRYPTION_KEY": Fernet.generate_key().decode()},
        ),
        # a shared log needs the shared key
        ("key missing", None, {}),
    ],
)
def test_postgres_start_up_mistakes_are_one_line(
    workdir: Path, pg_schema_url: str, mistake: str, url_of: Callable[[], str] | None, env: dict[str, str]
) -> None:
    require_postgres()
    url = url_of() if url_of is not None else pg_schema_url
    result = _serve(
        workdir,
        ["--config", "config.yaml", "--model", MODEL, "--port", str(_free_port()), "--database", url],
        env,
    )
    _assert_one_line(result, "PostgreSQL" if mistake == "postgres down" else "CONFLEDGER_ENCRYPTION_KEY")
    assert _events(pg_schema_url) == 0
