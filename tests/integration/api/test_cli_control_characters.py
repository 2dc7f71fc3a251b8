"""The read commands never send a control character from the log to the terminal.

A config key holding escape sequences (here one the model refuses, so it is quoted in the validation
error) reaches ``history`` and ``replay``; they show it escaped in tables and drop it
elsewhere, so the output cannot retitle the terminal or move the cursor over the rows it prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import yaml
from typer.testing import CliRunner

from confledger.api import cli
from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import AppConfig
from confledger.store import SecretCipher, Trigger

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"
# A retitle (OSC 0), a colour, and a carriage return that would write the rest over the line's start.
HOSTILE_KEY = "\x1b]0;owned\x07\x1b[8mhidden\rkey"
CONTROL_CHARACTERS = ("\x1b", "\x07", "\r")

runner = CliRunner()


def _log_with_a_hostile_key(url: str, tmp_path: Path) -> dict[str, str]:
    source = tmp_path / "config.json"
    body = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    source.write_text(json.dumps(body), encoding="utf-8")
    key = SecretCipher.generate_key()

    async def run() -> None:
        async with ConfigReloader(
            url, config_model=AppConfig, config_source=source, cipher=SecretCipher.from_env_value(key)
        ) as reloader:
            source.write_text(json.dumps({**body, HOSTILE_KEY: 1}), encoding="utf-8")
            refused = await reloader.reload_config(Trigger.MANUAL)
            assert not refused.success
            assert any(HOSTILE_KEY in error for error in refused.validation_errors)

    anyio.run(run)
    return {"CONFLEDGER_ENCRYPTION_KEY": key}


@pytest.mark.parametrize(
    "command",
    [["history"], ["replay", "--since", "2000-01-01T00:00:00"]],
    ids=lambda command: command[0],
)
def test_a_read_command_never_prints_a_control_character_from_the_log(
    database_url: str, tmp_path: Path, command: list[str]
) -> None:
    environment = _log_with_a_hostile_key(database_url, tmp_path)
    result = runner.invoke(cli.app, [*command, "--database", database_url], env=environment)

    assert result.exit_code == 0, result.output
    for character in CONTROL_CHARACTERS:
        assert character not in result.output, (character, result.output)
    assert "hidden" in result.output  # the operation is listed, its key shown
