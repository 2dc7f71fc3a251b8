"""The ``confledger`` command line (Typer)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

import store
from store import EventLog, StoreError
from store import migrate as store_migrate
from store.database import create_store_engine, normalize_url

__all__ = ["app", "main"]

app = typer.Typer(help="confledger: an event-sourced configuration store with zero-downtime reloading.")
db_app = typer.Typer(help="Schema migrations of the event log's database.")
app.add_typer(db_app, name="db")

err = Console(stderr=True)
out = Console()

T = TypeVar("T")

DatabaseOption = Annotated[
    str,
    typer.Option(
        "--database",
        "-d",
        envvar="CONFLEDGER_DATABASE_URL",
        help="sqlite:///path/to/file.db or postgresql+psycopg://user@host/db",
    ),
]


def _fail_cleanly(action: Callable[[], T]) -> T:
    """Run ``action``; a StoreError becomes one red line on stderr and exit code 1, never a traceback."""
    try:
        return action()
    except StoreError as exc:
        err.print(f"[red]error[/red] ({exc.code}): {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"confledger {store.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """confledger: every reload, validation and rollback recorded in an append-only log."""


@db_app.command("upgrade")
def db_upgrade(
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: head)."""

    def run() -> str | None:
        engine = create_store_engine(normalize_url(database))
        try:
            return store_migrate.upgrade(engine, revision)
        finally:
            engine.dispose()

    reached = _fail_cleanly(run)
    out.print(f"database at revision {reached}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision, e.g. -1 or base (base drops every table).")
    ],
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a downgrade that drops the event log.")] = False,
) -> None:
    """Migrate the database down to REVISION."""
    if revision == "base" and not yes:
        err.print("[red]error[/red]: downgrading to base deletes the whole event log; add --yes to confirm")
        raise typer.Exit(2)

    def run() -> str | None:
        engine = create_store_engine(normalize_url(database))
        try:
            return store_migrate.downgrade(engine, revision)
        finally:
            engine.dispose()

    reached = _fail_cleanly(run)
    out.print(f"database at revision {reached or 'base'}")


@db_app.command("current")
def db_current(database: DatabaseOption = store.DEFAULT_DATABASE_URL) -> None:
    """Print the database's schema revision and the newest this release knows."""

    def run() -> str | None:
        engine = create_store_engine(normalize_url(database))
        try:
            return store_migrate.current_revision(engine)
        finally:
            engine.dispose()

    current = _fail_cleanly(run)
    out.print(f"current: {current or 'base (empty)'}  head: {store_migrate.head_revision()}")


@db_app.command("check")
def db_check(database: DatabaseOption = store.DEFAULT_DATABASE_URL) -> None:
    """Migrate, then compare the tables with the models; exit 1 on any drift."""

    def run() -> list[str]:
        log = EventLog(database)
        try:
            return store_migrate.schema_drift(log.engine)
        finally:
            log.close()

    drift = _fail_cleanly(run)
    if drift:
        for line in drift:
            err.print(line, highlight=False)
        raise typer.Exit(1)
    out.print("no drift between models and migrations")


@app.command("serve")
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CONFLEDGER_CONFIG", help="Config file.")],
    model: Annotated[
        str | None, typer.Option("--model", envvar="CONFLEDGER_MODEL", help="Config model as module:Class.")
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database", "-d", envvar="CONFLEDGER_DATABASE_URL", help="Default: SQLite next to the config."
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="CONFLEDGER_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CONFLEDGER_PORT")] = 8000,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", envvar="CONFLEDGER_WATCH")] = False,
    poll_interval: Annotated[float, typer.Option(envvar="CONFLEDGER_POLL_INTERVAL", min=0.1, max=60.0)] = 1.0,
    app_dir: Annotated[Path, typer.Option("--app-dir", envvar="CONFLEDGER_APP_DIR")] = Path("."),
    metrics: Annotated[bool, typer.Option("--metrics/--no-metrics", envvar="CONFLEDGER_METRICS")] = True,
    log_level: Annotated[str, typer.Option(envvar="CONFLEDGER_LOG_LEVEL")] = "info",
) -> None:
    """Run the config service (FastAPI under uvicorn) on CONFIG, recording everything in the log."""
    import uvicorn
    from pydantic import ValidationError

    from api.security import TokenError
    from api.server import ModelImportError, create_app
    from api.settings import Settings

    overrides: dict[str, object] = {
        "config": config,
        "model": model,
        "host": host,
        "port": port,
        "watch": watch,
        "poll_interval": poll_interval,
        "app_dir": app_dir,
        "metrics": metrics,
    }
    if database is not None:
        overrides["database_url"] = database
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        fastapi_app, lifecycle = create_app(settings)
    except (ModelImportError, TokenError, StoreError, ValidationError) as exc:
        message = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else _settings_error(exc)
        err.print(f"[red]error[/red]: {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if not config.exists():
        err.print(
            f"[yellow]warning[/yellow]: {config} does not exist yet; serving without a config until it does"
        )
    if lifecycle.token_created:
        # Printed this once; afterwards it lives only in the 0600 file.
        out.print(
            f"admin token (shown once; kept in {lifecycle.token_file}): {lifecycle.tokens.admin}",
            highlight=False,
            soft_wrap=True,
        )
    elif lifecycle.token_file is not None:
        out.print(
            f"admin token: in {lifecycle.token_file}; send it as 'Authorization: Bearer <token>'",
            highlight=False,
        )
    uvicorn.run(fastapi_app, host=settings.host, port=settings.port, log_level=log_level.lower())


def _settings_error(exc: Exception) -> str:
    from pydantic import ValidationError

    assert isinstance(exc, ValidationError)
    first = exc.errors(include_url=False, include_input=False)[0]
    return f"invalid setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def main() -> None:
    app(prog_name="confledger")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
