"""Every setting ``confledger serve`` reads from a ``CONFLEDGER_*`` variable is an option of it too.

``serve`` declares the few options an operator types most (``--config``, ``--port``, ``--watch`` ...) in
its own signature; the rest come from ``SETTING_OPTIONS`` here, added to its signature by
``with_setting_options`` (Typer reads ``__signature__``), after them in ``--help``.

An option given wins over its variable; an option not given is not passed on at all, so the variable or
the model's default applies: defaults and range checks live in ``confledger.api.settings.Settings``
alone, and a value out of range is that model's one-line error. The table names each setting and its
type rather than reading the model because the model imports the store (SQLAlchemy, pydantic-settings):
0.3-0.4 s that every ``confledger`` command, ``--help`` included, would pay to build its parser.
``tests/unit/api/cli/test_setting_options.py`` holds the table to the model, name by name and type by
type.

The secrets (``admin_token``, ``read_token``, ``encryption_key``, ``signing_key``) are not options: a
command line is visible to every user of the host (``ps``) and kept in shell history.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["SECRET_SETTINGS", "SETTING_DEFAULTS", "SETTING_OPTIONS", "SettingOption", "with_setting_options"]


@dataclass(frozen=True)
class SettingOption:
    """One setting as an option: its field name, its type, and one line for ``--help``."""

    name: str
    type: type
    help: str

    @property
    def flag(self) -> str:
        dashed = self.name.replace("_", "-")
        return f"--{dashed}/--no-{dashed}" if self.type is bool else f"--{dashed}"

    @property
    def variable(self) -> str:
        return f"CONFLEDGER_{self.name.upper()}"

    def parameter(self) -> inspect.Parameter:
        # None: not given. Typer's own envvar is left out on purpose: the settings model reads the
        # variable, with its own parsing (lists, secrets), and reading it twice could disagree.
        default = SETTING_DEFAULTS.get(self.name)
        shown = "" if default is None else f"; default: {_shown_default(self, default)}"
        option = typer.Option(
            self.flag,
            help=f"{self.help}  [env var: {self.variable}{shown}]",
            show_default=False,
            metavar="<path>" if self.type == list[Path] else None,
        )
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[self.type | None, option],
        )


def _shown_default(option: SettingOption, default: object) -> str:
    if option.type is bool:  # as Typer shows its own flags' defaults: the flag that is in effect
        dashed = option.name.replace("_", "-")
        return dashed if default else f"no-{dashed}"
    return str(default)


# Each setting's default, shown in --help (not read from the model: see above); held to the model by
# tests/unit/api/cli/test_setting_options.py. A setting with none (unset means off, or host:pid) is absent.
SETTING_DEFAULTS: dict[str, object] = {
    "sqlite_synchronous": "FULL",
    "database_pool_size": 5,
    "database_max_overflow": 10,
    "backup_count": 5,
    "history_window": 500,
    "max_recorded_items": 50,
    "max_source_bytes": 1048576,
    "force_polling": False,
    "rollback_threshold": 0.5,
    "automatic_rollback": True,
    "notify_on_start": True,
    "callback_timeout": 30.0,
    "validator_timeout": 5.0,
    "worker_threads": 8,
    "signal_handler": True,
    "gc_freeze": True,
    "log_format": "text",
    "docs": True,
    "max_request_bytes": 65536,
    "request_timeout": 10.0,
    "keep_alive_timeout": 5,
    "max_header_bytes": 16384,
    "shutdown_timeout": 10,
    "follow": True,
    "follow_poll_interval": 0.5,
    "fleet_lock_wait": 5.0,
    "fleet_answer_wait": 10.0,
    "heartbeat_interval": 30.0,
    "fleet_gone_shown_for": 86400.0,
    "watch_queue_size": 100,
    "watch_max_streams": 100,
    "watch_ping_interval": 15.0,
    "watch_send_timeout": 10.0,
}

SECRET_SETTINGS = frozenset({"admin_token", "read_token", "encryption_key", "signing_key"})

SETTING_OPTIONS: tuple[SettingOption, ...] = (
    # the log and the instance
    SettingOption("instance_id", str, "This instance's id in the log (default host:pid)."),
    SettingOption("anchor_file", Path, "File outside the database keeping the log's anchor."),
    SettingOption(
        "sqlite_synchronous",
        str,
        "SQLite's synchronous level for the log: FULL (default) or EXTRA; NORMAL and OFF may lose the "
        "newest operations to a power cut.",
    ),
    SettingOption(
        "database_pool_size", int, "PostgreSQL connections the log's pool keeps open between bursts."
    ),
    SettingOption(
        "database_max_overflow", int, "PostgreSQL connections the pool opens beyond those in a burst."
    ),
    SettingOption("backup_count", int, "Distinct applied configs kept as backups."),
    SettingOption("history_window", int, "Recent operations /history serves from memory."),
    SettingOption("max_recorded_items", int, "Validation errors, warnings and changed paths recorded."),
    # what a reload may read, and how it decides
    SettingOption("source_dirs", list[Path], "A directory a client's config_source may name (repeat it)."),
    SettingOption("max_source_bytes", int, "The largest config source read, in bytes."),
    SettingOption("force_polling", bool, "Poll the config file instead of using inotify."),
    SettingOption("rollback_threshold", float, "Roll back when fewer than this share of services accept."),
    SettingOption("automatic_rollback", bool, "Roll back automatically below the threshold."),
    SettingOption("notify_on_start", bool, "Hand each service the config restored from the log at start."),
    # user code
    SettingOption("callback_timeout", float, "Seconds a service callback may take."),
    SettingOption("validator_timeout", float, "Seconds a custom validator may take."),
    SettingOption("worker_threads", int, "Worker threads for sync validators and callbacks."),
    # the process
    SettingOption("signal_handler", bool, "Reload on SIGHUP."),
    SettingOption("gc_freeze", bool, "Once started, leave start-up's objects out of full GC passes."),
    SettingOption("log_format", str, "Log lines as text or json."),
    SettingOption("docs", bool, "Serve /docs and /openapi.json."),
    # requests and connections
    SettingOption("max_request_bytes", int, "The largest request body read; larger is 413."),
    SettingOption("request_timeout", float, "Seconds a client has to send a whole request."),
    SettingOption("keep_alive_timeout", int, "Seconds an idle keep-alive connection stays open."),
    SettingOption("max_header_bytes", int, "The largest request line and headers; larger is 431."),
    SettingOption("shutdown_timeout", int, "Seconds serve waits for open requests when it stops."),
    # the fleet
    SettingOption("follow", bool, "Apply the configs other instances on the log decide."),
    SettingOption("follow_poll_interval", float, "Seconds between looks at the log when no doorbell rings."),
    SettingOption("fleet_lock_wait", float, "Seconds an operation waits for the fleet's lock before 409."),
    SettingOption(
        "fleet_rollback_threshold", float, "Roll the fleet back below this share of instances applying."
    ),
    SettingOption(
        "fleet_answer_wait", float, "Seconds the fleet threshold waits for the instances' answers."
    ),
    SettingOption("heartbeat_interval", float, "Seconds between heartbeats; 3 missed = gone."),
    SettingOption("fleet_gone_shown_for", float, "Seconds /fleet keeps listing an instance that went."),
    # GET /watch
    SettingOption("watch_queue_size", int, "Changes queued per /watch client."),
    SettingOption("watch_max_streams", int, "Open /watch streams at most; one more is answered 503."),
    SettingOption("watch_ping_interval", float, "Seconds between keep-alive comments on an idle /watch."),
    SettingOption("watch_send_timeout", float, "Seconds one /watch write may wait on a client."),
)


def with_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` taking every ``SETTING_OPTIONS`` entry as a keyword option too; it is called with the
    given ones gathered in ``settings_given`` (name to value), which it passes to the settings model."""
    own = inspect.signature(command, eval_str=True)
    names = [option.name for option in SETTING_OPTIONS]

    @functools.wraps(command)
    def accepting(**arguments: Any) -> None:
        given = {name: arguments.pop(name) for name in names}
        # A repeatable option not given arrives as an empty list, the others as None.
        given = {name: value for name, value in given.items() if value is not None and value != []}
        command(**arguments, settings_given=given)

    kept = [parameter for parameter in own.parameters.values() if parameter.name != "settings_given"]
    accepting.__signature__ = own.replace(  # type: ignore[attr-defined]
        parameters=[*kept, *(option.parameter() for option in SETTING_OPTIONS)]
    )
    return accepting
