"""``confledger init`` and ``confledger keygen``: a working directory the user owns, and a usable key."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from confledger.api import cli
from confledger.store.secrets import SecretCipher

runner = CliRunner()


def test_init_writes_a_starter_config_and_keeps_an_edited_one(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    first = runner.invoke(cli.app, ["init", str(target)])
    assert first.exit_code == 0, first.output
    config = target / "config.yaml"
    assert "pool_size: 20" in config.read_text()
    assert "--model confledger.examples.app_config:AppConfig" in first.output

    config.write_text(config.read_text().replace("pool_size: 20", "pool_size: 25"))
    again = runner.invoke(cli.app, ["init", str(target)])
    assert again.exit_code == 0, again.output
    assert "kept" in again.output
    assert "pool_size: 25" in config.read_text()


def test_init_into_a_path_that_cannot_be_a_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(cli.app, ["init", str(blocker / "demo")])
    assert result.exit_code == 1
    assert "cannot create" in result.stderr
    assert "Traceback" not in result.output


def test_init_into_a_directory_it_cannot_write_in_is_one_line(tmp_path: Path) -> None:
    # What an operator without write access to an existing directory (/etc/app) meets. We run as root,
    # which no mode keeps out: the starter file's name is a link into a directory that is not there.
    target = tmp_path / "demo"
    target.mkdir()
    (target / "config.yaml").symlink_to(tmp_path / "gone" / "config.yaml")
    result = runner.invoke(cli.app, ["init", str(target)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"cannot write {target / 'config.yaml'}" in result.stderr
    assert "next:" not in result.stdout


def test_keygen_prints_a_key_the_cipher_accepts() -> None:
    result = runner.invoke(cli.app, ["keygen"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    cipher = SecretCipher([key])
    assert cipher.decrypt(cipher.encrypt("hunter2")) == "hunter2"


def test_keygen_writes_a_private_file_and_never_overwrites_it(tmp_path: Path) -> None:
    key_file = tmp_path / "confledger.key"
    written = runner.invoke(cli.app, ["keygen", "--file", str(key_file)])
    assert written.exit_code == 0, written.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()

    refused = runner.invoke(cli.app, ["keygen", "--file", str(key_file)])
    assert refused.exit_code == 1
    assert "never overwritten" in refused.stderr
    assert key_file.read_text().strip() == key

    directory = runner.invoke(cli.app, ["keygen", "--file", str(tmp_path)])
    assert directory.exit_code == 1
    assert "is a directory: name the key file in it" in directory.stderr
