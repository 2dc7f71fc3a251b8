"""``confledger db``: schema migrations of the event log's database (Alembic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from confledger.api.cli.app import DatabaseOption, db_app, err, fail_cleanly, out, resolve_database

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__: list[str] = []


def _engine(database: str | None) -> Engine:
    from confledger.store.database import create_store_engine, normalize_url

    return create_store_engine(normalize_url(resolve_database(database)))


@db_app.command("upgrade")
def db_upgrade(
    database: DatabaseOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: head)."""

    def run() -> str | None:
        from confledger.api.security import create_private_database_file
        from confledger.store import migrate as store_migrate

        engine = _engine(database)  # the URL is checked here, before any file is made for it
        try:
            # Run ahead of a deploy, this may be what creates an SQLite log: private, as serve makes it.
            create_private_database_file(resolve_database(database), warn_if_shared=False)
            return store_migrate.upgrade(engine, revision)
        finally:
            engine.dispose()

    reached = fail_cleanly(run)
    out.print(f"database at revision {reached}")


# A relative step (-1) is an argument, not an option: without this, click refuses it as "No such option".
@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision, e.g. -1 or base (base drops every table).")
    ],
    database: DatabaseOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a downgrade that drops the event log.")] = False,
) -> None:
    """Migrate the database down to REVISION."""
    if revision == "base" and not yes:
        err.print("[red]error[/red]: downgrading to base deletes the whole event log; add --yes to confirm")
        raise typer.Exit(2)

    def run() -> tuple[bool, str | None]:
        from confledger.store import migrate as store_migrate

        engine = _engine(database)
        try:
            # One step down from the first revision is base too: it needs the same confirmation.
            if not yes and store_migrate.downgrade_target(engine, revision) is None:
                return False, None
            return True, store_migrate.downgrade(engine, revision)
        finally:
            engine.dispose()

    done, reached = fail_cleanly(run)
    if not done:
        err.print(
            f"[red]error[/red]: downgrading to {revision} reaches base and deletes the whole event log; "
            "add --yes to confirm"
        )
        raise typer.Exit(2)
    out.print(f"database at revision {reached or 'base'}")


@db_app.command("current")
def db_current(database: DatabaseOption = None) -> None:
    """Print the database's schema revision and the newest this release knows."""

    def run() -> str | None:
        from confledger.store import migrate as store_migrate
        from confledger.store.database import sqlite_path

        engine = _engine(database)  # refuses a malformed URL or a missing directory, connecting to nothing
        path = sqlite_path(engine.url.render_as_string(hide_password=False))
        if path is not None and not path.exists() and path.parent.is_dir():
            engine.dispose()
            return None  # base, and asking must not create the file (connecting would)
        try:
            return store_migrate.current_revision(engine)
        finally:
            engine.dispose()

    from confledger.store import migrate as store_migrate

    current = fail_cleanly(run)
    out.print(f"current: {current or 'base (empty)'}  head: {store_migrate.head_revision()}")


@db_app.command("check")
def db_check(database: DatabaseOption = None) -> None:
    """Migrate, then compare the tables with the models; exit 1 on any drift."""

    def run() -> list[str]:
        from confledger.api.security import create_private_database_file
        from confledger.store import migrate as store_migrate
        from confledger.store.database import normalize_url
        from confledger.store.log import EventLog

        url = resolve_database(database)
        normalize_url(url)  # the URL is checked before any file is made for it
        create_private_database_file(url, warn_if_shared=False)
        log = EventLog(url)
        try:
            return store_migrate.schema_drift(log.engine)
        finally:
            log.close()

    drift = fail_cleanly(run)
    if drift:
        for line in drift:
            err.print(line, highlight=False)
        raise typer.Exit(1)
    out.print("no drift between models and migrations")
