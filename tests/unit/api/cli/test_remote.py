"""Where ``confledger reload`` / ``rollback`` find the admin token that ``serve`` wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from confledger.api.cli.remote import _admin_token


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFLEDGER_ADMIN_TOKEN", raising=False)


# (file serve wrote, beside the config; what the CLI is told: --database)
WRITTEN = [
    # SQLite next to the config: serve writes <db>.admin-token
    ("confledger.db.admin-token", None),
    # PostgreSQL: serve writes confledger.admin-token beside the config; the CLI is given only --config
    ("confledger.admin-token", None),
    # PostgreSQL, and the CLI is told the same URL serve was
    ("confledger.admin-token", "postgresql+psycopg://u@db.internal/app"),
]


@pytest.mark.parametrize(("written", "database"), WRITTEN)
def test_the_token_file_serve_wrote_is_found_from_the_config(
    tmp_path: Path, written: str, database: str | None
) -> None:
    config = tmp_path / "config.yaml"
    (tmp_path / written).write_text("a-token-of-thirty-two-characters\n")
    token, source = _admin_token(None, database, config)
    assert token == "a-token-of-thirty-two-characters"
    assert source == f"the token file {tmp_path / written}"  # named when the service refuses it


def test_the_environment_wins_over_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "confledger.admin-token").write_text("from-the-file-000000000000000000\n")
    monkeypatch.setenv("CONFLEDGER_ADMIN_TOKEN", "from-the-environment-00000000000")
    assert _admin_token(None, None, tmp_path / "config.yaml") == (
        "from-the-environment-00000000000",
        "CONFLEDGER_ADMIN_TOKEN",
    )


def test_no_token_anywhere_names_every_place_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit):
        _admin_token(None, None, tmp_path / "config.yaml")
    said = capsys.readouterr().err
    assert "confledger.admin-token" in said
    assert "confledger.db.admin-token" in said
