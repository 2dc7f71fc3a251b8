"""The Typer application every command registers on, and what the commands share: consoles, options,
and turning a ConfledgerError into one line on stderr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Annotated, TypeVar

import typer
from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
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
    "shown_escaped",
]

app = typer.Typer(
    help="confledger: an event-sourced configuration store with zero-downtime reloading.",
    # Click's plain help: Typer's rich panels print a `<bool>` type after every flag, which takes no value.
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Schema migrations of the event log's database.")
app.add_typer(db_app, name="db")

# C0 controls but tab and newline (carriage return included: it overwrites the line), DEL and C1.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def shown_escaped(text: str) -> str:
    """``text`` with each control character written as ``\\x1b``: for data, before rich measures it."""
    return _CONTROL_CHARACTER.sub(_escaped, text)


class DataConsole(Console):
    """A console that never sends a control character from what it prints to the terminal.

    What the commands print comes from the log: config keys in validation errors, messages, instance
    ids, rows anyone who can write the database may have added. An escape sequence there could move the
    cursor over a row or retitle the terminal, so the output would lie to the auditor reading it. Table
    cells show them escaped (``render.cell``); whatever else holds one loses it here, after rich measured
    the text (a control character takes no cell, so dropping it keeps the layout; an escape would be cut
    off at the column's edge). rich's own styling is not in the segments' text, so it is kept.
    """

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and _CONTROL_CHARACTER.search(segment.text):
                yield Segment(_CONTROL_CHARACTER.sub("", segment.text), segment.style)
            else:
                yield segment


err = DataConsole(stderr=True)
out = DataConsole()

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
