"""Every setting is an option of ``confledger serve``: the table of options held to the settings model."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from confledger.api.cli import app
from confledger.api.cli.setting_options import (
    SECRET_SETTINGS,
    SETTING_DEFAULTS,
    SETTING_OPTIONS,
    with_setting_options,
)
from confledger.api.settings import Settings

# Settings that serve declares in its own signature, by the parameter that sets each.
OWN_OPTIONS = {
    "config": "config",
    "model": "model",
    "database_url": "database",
    "host": "host",
    "port": "port",
    "watch": "watch",
    "poll_interval": "poll_interval",
    "app_dir": "app_dir",
    "metrics": "metrics",
    "log_level": "log_level",
    "workers": "workers",
}


def _serve() -> Any:
    """serve as the command line parses it (Typer's own click: ``typer._click``)."""
    return typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
        assert len(kept) == 1, annotation
        return kept[0]
    return annotation


def test_each_setting_is_one_option_or_a_secret() -> None:
    tabled = [option.name for option in SETTING_OPTIONS]
    assert len(tabled) == len(set(tabled))
    ways = [*OWN_OPTIONS, *tabled, *SECRET_SETTINGS]
    assert sorted(ways) == sorted(Settings.model_fields), "a setting with no option, or an option with none"


@pytest.mark.parametrize("option", SETTING_OPTIONS, ids=lambda option: option.name)
def test_an_option_has_its_settings_type(option: Any) -> None:
    assert option.type == _without_none(Settings.model_fields[option.name].annotation)


def test_serve_takes_every_option_and_no_secret() -> None:
    parameters = {parameter.name: parameter for parameter in _serve().params}
    for name in [*OWN_OPTIONS.values(), *(option.name for option in SETTING_OPTIONS)]:
        assert name in parameters, name
    assert "settings_given" not in parameters  # the wrapper's own, not an option
    assert not SECRET_SETTINGS & set(parameters)


# (command line, the settings it gives serve's settings model) — nothing given is nothing passed
GIVEN = [
    # none given: the variables and defaults stand
    ([], {}),
    # a number, a flag's two spellings, a path
    (
        ["--backup-count", "2", "--no-docs", "--follow", "--anchor-file", "a.anchor"],
        {"backup_count": 2, "docs": False, "follow": True, "anchor_file": Path("a.anchor")},
    ),
    # a repeated option is a list, in order
    (
        ["--source-dirs", "/srv/a", "--source-dirs", "/srv/b"],
        {"source_dirs": [Path("/srv/a"), Path("/srv/b")]},
    ),
]


@pytest.mark.parametrize(("arguments", "given"), GIVEN)
def test_only_given_options_reach_the_command(arguments: list[str], given: dict[str, object]) -> None:
    seen: dict[str, Any] = {}
    probe = typer.Typer()

    @probe.command()
    @with_setting_options
    def command(
        config: Annotated[Path, typer.Option("--config")], *, settings_given: dict[str, object] | None = None
    ) -> None:
        seen.update(config=config, settings_given=settings_given)

    result = CliRunner().invoke(probe, ["--config", "c.yaml", *arguments])
    assert result.exit_code == 0, result.output
    assert seen == {"config": Path("c.yaml"), "settings_given": given}


@pytest.mark.parametrize("option", SETTING_OPTIONS, ids=lambda option: option.name)
def test_help_shows_the_models_default(option: Any) -> None:
    # serve --help showed no default for these (a newcomer had to read settings.py to learn them)
    default = Settings.model_fields[option.name].get_default(call_default_factory=True)
    if default is None or default == []:
        assert option.name not in SETTING_DEFAULTS
        return
    assert SETTING_DEFAULTS[option.name] == default
    assert type(SETTING_DEFAULTS[option.name]) is type(default)
    (parameter,) = [parameter for parameter in _serve().params if parameter.name == option.name]
    dashed = option.name.replace("_", "-")
    shown = (dashed if default else f"no-{dashed}") if isinstance(default, bool) else str(default)
    assert parameter.help.endswith(f"[env var: CONFLEDGER_{option.name.upper()}; default: {shown}]")
