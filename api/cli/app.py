"""The Typer application every command registers on, and what the commands share: consoles, options,
and turning a ConfledgerError into one line on stderr.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from confledger import __version__
from confledger.store.errors import ConfledgerError

__all__ = [
    "DatabaseOption",
    "JsonOption",
    "app",
    "db_app",
    "err",
    "fail_cleanly",
    "out",
    "resolve_database",
    "settings_error",
]

app = typer.Typer(
    help="confledger: an event-sourced configuration store with zero-downtime reloading.",
    # Click's plain help: Typer's rich panels print a `<bool>` type after every flag, which takes no value.
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Schema migrations of the event log's database.")
app.add_typer(db_app, name="db")

err = Console(stderr=True)
out = Console()

T = TypeVar("T")

# Kept here rather than imported from confledger.store.database so that `confledger --help` does not load
# SQLAlchemy; tests/integration/api/test_cli_db.py holds the two equal.
FALLBACK_DATABASE_URL = "sqlite:///./confledger.db"

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        "-d",
        envvar="CONFLEDGER_DATABASE_URL",
        metavar="URL",
        show_default=False,
        help=f"sqlite:///path/to/file.db or postgresql+psycopg://user@host/db [default: {FALLBACK_DATABASE_URL}]",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys) instead of tables.")]


def resolve_database(database: str | None) -> str:
    return database or os.environ.get("CONFLEDGER_DATABASE_URL") or FALLBACK_DATABASE_URL


def fail_cleanly(action: Callable[[], T], *, code: int = 1) -> T:
    """Run ``action``; a ConfledgerError becomes one red line on stderr and exit ``code``, never a traceback."""
    try:
        return action()
    except ConfledgerError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.code
        err.print(Text.assemble(("error", "red"), f" ({exc.code}): {message}"), soft_wrap=True)
        raise typer.Exit(code) from None


def settings_error(exc: Exception) -> str:
    """A pydantic-settings ValidationError as one line naming the setting."""
    from pydantic import ValidationError

    from confledger.api.settings import settings_error_message

    assert isinstance(exc, ValidationError)
    return settings_error_message(exc)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"confledger {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """confledger: every reload, validation and rollback recorded in an append-only log."""
