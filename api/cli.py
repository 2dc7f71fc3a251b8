"""The ``confledger`` command line (Typer)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from confledger import __version__, store
from confledger.api.inspect import LogInspector, diff_cipher
from confledger.store import ConfledgerError, EventLog, Trigger
from confledger.store import migrate as store_migrate
from confledger.store.database import create_store_engine, normalize_url
from confledger.store.outcome import ReloadStatus

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


def _fail_cleanly(action: Callable[[], T], *, code: int = 1) -> T:
    """Run ``action``; a ConfledgerError becomes one red line on stderr and exit ``code``, never a traceback."""
    try:
        return action()
    except ConfledgerError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.code
        err.print(Text.assemble(("error", "red"), f" ({exc.code}): {message}"), soft_wrap=True)
        raise typer.Exit(code) from None


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

    from confledger.api.logs import configure_logging
    from confledger.api.security import TokenError
    from confledger.api.server import ModelImportError, create_app
    from confledger.api.settings import Settings

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
        configure_logging(settings.log_format, log_level)
        fastapi_app, lifecycle = create_app(settings)
    except (ModelImportError, TokenError, ConfledgerError, ValidationError) as exc:
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


# --- reading the log directly: works while the service is down ----------------------------------------

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys) instead of tables.")]

# Replays folding at least this many events show a progress bar (on stderr, only on a terminal).
PROGRESS_MIN_EVENTS = 2_000


def _print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2, default=str))


def _inspect(database: str, action: Callable[[LogInspector], T], *, code: int = 1) -> T:
    """Open the log read-only (never created, migrated or appended to) and run ``action`` on it."""

    def run() -> T:
        with LogInspector.open(database) as inspector:
            return action(inspector)

    return _fail_cleanly(run, code=code)


def _text(value: object) -> Text:
    """A table cell from data: never parsed as rich markup (paths like ``a[0]`` stay as they are)."""
    return Text("" if value is None else str(value))


def _when(value: object) -> str:
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text[:19].replace("T", " ")


_STATUS_STYLE = {
    "success": "green",
    "failed": "red",
    "rolled_back": "yellow",
    "interrupted": "magenta",
    "in_progress": "cyan",
}


def _status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _failed_services(operation: dict[str, Any]) -> list[str]:
    return [label for label in operation.get("services_notified", []) if not label.endswith(":success")]


def _operation_detail(operation: dict[str, Any]) -> str:
    if operation.get("validation_errors"):
        return "; ".join(operation["validation_errors"])
    failed = _failed_services(operation)
    if failed:
        return "services: " + ", ".join(failed)
    if operation.get("status") == "success" and operation.get("changes_applied"):
        changes = operation["changes_applied"]
        shown = ", ".join(changes[:4]) + (f" (+{len(changes) - 4})" if len(changes) > 4 else "")
        return f"changed: {shown}"
    return str(operation.get("error_message") or operation.get("message") or "")


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def _history_table(operations: list[dict[str, Any]], title: str) -> Table:
    """Operations as a table; on a narrow terminal the id, actor and duration columns are left out."""
    wide = out.width >= 120
    table = _table(title)
    table.add_column("started", no_wrap=True)
    if wide:
        table.add_column("op", no_wrap=True)
    table.add_column("kind/trigger" if wide else "kind", overflow="fold")
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("actor", overflow="fold")
    table.add_column("config", no_wrap=True)
    if wide:
        table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1)
    for op in operations:
        cells: list[Text] = [_text(_when(op.get("started_at"))[: 19 if wide else 16])]
        if wide:
            cells.append(_text(str(op["operation_id"])[:8]))
        separator = "/" if wide else "\n"
        cells += [
            _text(f"{op.get('kind')}{separator}{op.get('trigger')}"),
            _status_text(str(op.get("status"))),
        ]
        if wide:
            cells.append(_text(op.get("actor")))
        cells.append(_text(op.get("new_config_hash") or "-"))
        if wide:
            cells.append(_text(f"{op.get('total_duration_ms', 0.0):.0f}"))
        cells.append(_text(_operation_detail(op)))
        table.add_row(*cells)
    return table


def _key_values(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else _text(value))
    return table


def _print_stats(stats: dict[str, Any], title: str = "reload statistics") -> None:
    out.print(
        _key_values(
            title,
            [
                ("total operations", stats["total_operations"]),
                ("successful", stats["successful_operations"]),
                ("failed", stats["failed_operations"]),
                ("success rate", f"{stats['success_rate']:.1%}"),
                ("average ms", stats["average_duration_ms"]),
                (
                    "p50 / p95 / p99 ms",
                    f"{stats['p50_duration_ms']} / {stats['p95_duration_ms']} / {stats['p99_duration_ms']}",
                ),
                ("max ms", stats["max_duration_ms"]),
                ("by status", ", ".join(f"{k}={v}" for k, v in stats["operations_by_status"].items())),
                ("rollbacks", ", ".join(f"{k}={v}" for k, v in stats["rollbacks"].items()) or "none"),
                ("backups available", stats["backups_available"]),
                ("current config", stats["current_config_hash"] or "none"),
            ],
        )
    )
    if stats["triggers"]:
        table = _table("by trigger")
        for column in ("trigger", "total", "failed", "failure rate"):
            table.add_column(column, justify="left" if column == "trigger" else "right")
        for trigger, entry in stats["triggers"].items():
            table.add_row(
                _text(trigger), str(entry["total"]), str(entry["failed"]), f"{entry['failure_rate']:.1%}"
            )
        out.print(table)
    if stats["services"]:
        table = _table("by service")
        for column in ("service", "notified", "outcomes", "undone", "p50 ms", "p99 ms"):
            table.add_column(
                column, overflow="fold", justify="left" if column in ("service", "outcomes") else "right"
            )
        table.add_column("running", no_wrap=True)
        for service, entry in stats["services"].items():
            table.add_row(
                _text(service),
                str(entry["notified"]),
                _text(", ".join(f"{k}={v}" for k, v in entry["outcomes"].items())),
                str(entry["compensations"]),
                f"{entry['p50_ms']:.1f}",
                f"{entry['p99_ms']:.1f}",
                _text(entry["running_hash"]),
            )
        out.print(table)


def _backups_table(backups: list[dict[str, Any]], title: str) -> Table:
    table = _table(title)
    for column in ("hash", "applied", "actor", "trigger", "operation"):
        table.add_column(column, overflow="fold")
    for entry in backups:
        table.add_row(
            _text(entry["hash"]),
            _text(_when(entry["created_at"])),
            _text(entry["actor"]),
            _text(entry["trigger"]),
            _text((entry.get("operation_id") or "")[:8]),
        )
    return table


@app.command("history")
def history_command(
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many operations.")] = 20,
    trigger: Annotated[
        Trigger | None, typer.Option("--trigger", case_sensitive=False, help="Only this trigger.")
    ] = None,
    status: Annotated[
        ReloadStatus | None, typer.Option("--status", case_sensitive=False, help="Only this status.")
    ] = None,
    before: Annotated[
        int | None,
        typer.Option("--before", min=1, help="Position cursor (next_before of the previous page)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Operations newest first, read from the log (works while the service is down)."""
    page = _inspect(
        database,
        lambda inspector: inspector.history_page(
            limit,
            before=before,
            trigger=None if trigger is None else trigger.value,
            status=None if status is None else status.value,
        ),
    )
    if as_json:
        _print_json(page)
        return
    operations = [op.model_dump(mode="json") for op in page.operations]
    out.print(_history_table(operations, f"history: {len(operations)} of {page.total_count} operations"))
    if page.next_before is not None:
        out.print(f"older: --before {page.next_before}", style="dim", highlight=False)


@app.command("stats")
def stats_command(database: DatabaseOption = store.DEFAULT_DATABASE_URL, as_json: JsonOption = False) -> None:
    """Totals, success rate, duration percentiles, per trigger and per service."""
    stats = _inspect(database, lambda inspector: inspector.stats_summary())
    if as_json:
        _print_json(stats)
        return
    _print_stats(stats)


@app.command("status")
def status_command(
    database: DatabaseOption = store.DEFAULT_DATABASE_URL, as_json: JsonOption = False
) -> None:
    """Current config, log head, instances, open operations and service drift, from the log."""
    status = _inspect(database, lambda inspector: inspector.status())
    if as_json:
        _print_json(status)
        return
    started, stopped = status["last_instance_started"], status["last_instance_stopped"]
    statistics = status["reload_statistics"]
    out.print(
        _key_values(
            "confledger status",
            [
                ("database", status["database"]),
                ("current config", status["current_config_hash"] or "none applied"),
                (
                    "applied",
                    ""
                    if status["current_applied_at"] is None
                    else f"{_when(status['current_applied_at'])} by {status['current_applied_by']} "
                    f"(position {status['current_applied_position']})",
                ),
                ("log head", status["log_head"]),
                (
                    "last started",
                    "never"
                    if started is None
                    else f"{started['instance_id']} at {_when(started['occurred_at'])}",
                ),
                (
                    "last stopped",
                    "never"
                    if stopped is None
                    else f"{stopped['instance_id']} at {_when(stopped['occurred_at'])}",
                ),
                (
                    "operations",
                    f"{statistics['total_operations']} ({statistics['success_rate']:.1%} successful, "
                    f"average {statistics['average_duration_ms']} ms)",
                ),
                ("backups", status["available_backups"]),
            ],
        )
    )
    if status["instances"]:
        table = _table("instances")
        for column in ("instance", "state", "since", "version"):
            table.add_column(column, overflow="fold")
        for instance in status["instances"]:
            state = Text(instance["state"], style="green" if instance["state"] == "up" else "dim")
            table.add_row(
                _text(instance["instance_id"]),
                state,
                _text(_when(instance["occurred_at"])),
                _text(instance.get("version", "")),
            )
        out.print(table)
    if status["open_operations"]:
        out.print(_history_table(status["open_operations"], "open operations (running or interrupted)"))
    else:
        out.print("open operations: none", highlight=False)
    if status["service_drift"]:
        out.print(Text("service drift (last accepted config is not the current one):", style="yellow"))
        for service, running in status["service_drift"].items():
            out.print(Text(f"  {service}: runs {running or 'unknown'}"))
    else:
        out.print("service drift: none", highlight=False)


@app.command("show")
def show_command(
    config_hash: Annotated[
        str, typer.Argument(metavar="HASH", help="A config hash or a unique prefix (7+ hex).")
    ],
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    as_json: JsonOption = False,
) -> None:
    """A stored config, secrets shown as **********."""
    version = _inspect(database, lambda inspector: inspector.show(config_hash))
    if as_json:
        _print_json(version)
        return
    import yaml

    state = "applied" if version.applied else "stored, never applied"
    out.print(
        Text(
            f"config {version.hash} ({state}; {version.size_bytes} bytes; stored {_when(version.created_at)}; "
            f"first position {version.first_position})",
            style="bold",
        )
    )
    out.print(Syntax(yaml.safe_dump(version.config, sort_keys=False), "yaml", background_color="default"))


@app.command("diff")
def diff_command(
    old: Annotated[str, typer.Argument(metavar="A", help="The older config (hash or prefix).")],
    new: Annotated[str, typer.Argument(metavar="B", help="The newer config (hash or prefix).")],
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    encryption_key: Annotated[
        str | None,
        typer.Option(
            "--encryption-key",
            envvar="CONFLEDGER_ENCRYPTION_KEY",
            show_default=False,
            help="Fernet key to compare secret values (default: the key file beside an SQLite log).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What changed from A to B, as dotted paths (secret values shown as **********)."""

    def warn(message: str) -> None:
        err.print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)

    def compute(inspector: LogInspector) -> dict[str, Any]:
        cipher = diff_cipher(database, encryption_key, warn=warn)
        return inspector.diff(old, new, cipher)

    result = _inspect(database, compute)
    if as_json:
        _print_json(result)
        return
    title = f"diff {result['from_hash']} -> {result['to_hash']}: {len(result['changes'])} change(s)"
    if not result["changes"]:
        out.print(title, highlight=False)
    else:
        table = _table(title)
        for column in ("path", "kind", "old", "new"):
            table.add_column(column, overflow="fold")
        styles = {"added": "green", "removed": "red", "changed": "yellow", "unknown": "dim"}
        for change in result["changes"]:
            table.add_row(
                _text(change["path"]),
                Text(change["kind"], style=styles.get(change["kind"], "")),
                _text(json.dumps(change["old"])) if change["old"] is not None else _text(""),
                _text(json.dumps(change["new"])) if change["new"] is not None else _text(""),
            )
        out.print(table)
    if not result["secrets_compared"]:
        out.print(
            Text(
                "secrets were compared sealed (no key): give --encryption-key or CONFLEDGER_ENCRYPTION_KEY "
                "to compare them",
                style="dim",
            )
        )


@app.command("verify")
def verify_command(
    database: DatabaseOption = store.DEFAULT_DATABASE_URL, as_json: JsonOption = False
) -> None:
    """Recompute the hash chain; exit 1 naming the first broken position (2 if the log cannot be read)."""
    report = _inspect(database, lambda inspector: inspector.verify(), code=2)
    if as_json:
        _print_json(report)
    elif report.ok:
        out.print(
            Text(f"ok: the chain holds ({report.checked} events verified, head {report.head})", style="green")
        )
    if not report.ok:
        err.print(
            Text(
                f"chain broken at position {report.first_broken_position}: {report.reason} "
                f"({report.checked} events verified before it, head {report.head})",
                style="red",
            ),
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command("backups")
def backups_command(
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000, help="How many backups.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """The last N distinct configs applied before the current one (rollback targets)."""
    result = _inspect(database, lambda inspector: inspector.backups(count))
    if as_json:
        _print_json(result)
        return
    backups = [entry.model_dump(mode="json") for entry in result.backups]
    out.print(
        _backups_table(backups, f"backups: {len(backups)} (current {result.current_config_hash or 'none'})")
    )


def _parse_moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-01-31T14:05:00Z)", param_hint=option
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@contextlib.contextmanager
def _replay_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("replaying the log"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("replay", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@app.command("replay")
def replay_command(
    database: DatabaseOption = store.DEFAULT_DATABASE_URL,
    since: Annotated[
        str | None, typer.Option("--since", help="Start of the window (ISO 8601; naive = UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="End of the window (ISO 8601; naive = UTC).")
    ] = None,
    until_hash: Annotated[
        str | None,
        typer.Option(
            "--until-hash", help="Rebuild every projection as it stood when this config was last applied."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="History rows with --until-hash.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Incident replay: the timeline of a window (--since/--until), or the state as of a config (--until-hash)."""
    if until_hash is not None and (since is not None or until is not None):
        err.print("[red]error[/red]: give either --until-hash or --since/--until, not both", highlight=False)
        raise typer.Exit(2)
    if until_hash is None and since is None and until is None:
        err.print(
            "[red]error[/red]: give --since and/or --until for an incident timeline, or --until-hash HASH "
            "for the state as it stood when HASH was applied",
            highlight=False,
        )
        raise typer.Exit(2)
    if until_hash is not None:
        reference = until_hash

        def rebuild(inspector: LogInspector) -> dict[str, Any]:
            _, position = inspector.until_hash_positions(reference)
            long_replay = position >= PROGRESS_MIN_EVENTS and err.is_terminal
            with _replay_progress(long_replay) as progress:
                return inspector.replay_until_hash(reference, history_limit=limit, progress=progress)

        state = _inspect(database, rebuild)
        if as_json:
            _print_json(state)
            return
        out.print(
            Text(
                f"as of position {state['position']} ({_when(state['occurred_at'])}): "
                f"current config {state['current_config_hash']}",
                style="bold",
            )
        )
        out.print(_history_table(state["history"], f"history then: {len(state['history'])} most recent"))
        _print_stats(state["stats"], "statistics then")
        out.print(_backups_table(state["backups"], f"backups then: {len(state['backups'])}"))
        return

    since_at, until_at = _parse_moment(since, "--since"), _parse_moment(until, "--until")
    if since_at is not None and until_at is not None and since_at > until_at:
        err.print("[red]error[/red]: --since is after --until", highlight=False)
        raise typer.Exit(2)
    timeline = _inspect(database, lambda inspector: inspector.timeline(since_at, until_at))
    if as_json:
        _print_json(timeline)
        return
    window = f"{_when(timeline['since']) or 'the beginning'} .. {_when(timeline['until']) or 'now'}"
    wide = out.width >= 120
    table = _table(f"incident timeline {window}: {len(timeline['operations'])} operation(s)")
    table.add_column("time", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("kind/trigger" if wide else "kind", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("failed services", overflow="fold")
    table.add_column("what changed / why", overflow="fold", ratio=1)
    for op in timeline["operations"]:
        changed = op.get("changes_applied") or []
        why = op.get("validation_errors") or ([op["error_message"]] if op.get("error_message") else [])
        started = _when(op.get("started_at"))
        table.add_row(
            _text(started if wide else started[5:]),
            _text(op.get("actor")),
            _text(f"{op.get('kind')}{'/' if wide else chr(10)}{op.get('trigger')}"),
            _status_text(str(op.get("status"))),
            _text(", ".join(_failed_services(op))),
            _text(
                "; ".join(changed if op.get("status") == "success" and changed else why) or op.get("message")
            ),
        )
    out.print(table)
    if timeline["config_changes"]:
        changes = _table("config changes")
        changes.add_column("time", no_wrap=True)
        changes.add_column("pos", justify="right", no_wrap=True)
        changes.add_column("from", no_wrap=True)
        changes.add_column("to", no_wrap=True)
        changes.add_column("by", overflow="fold")
        changes.add_column("paths", overflow="fold", ratio=1)
        for change in timeline["config_changes"]:
            when = _when(change["occurred_at"])
            changes.add_row(
                _text(when if wide else when[5:]),
                str(change["position"]),
                _text(change["previous_hash"] or ""),
                _text(change["hash"]),
                _text(change["actor"]),
                _text(", ".join(change["changes"])),
            )
        out.print(changes)
    for entry in timeline["lifecycle"]:
        out.print(
            Text(f"{_when(entry['occurred_at'])}  {entry['type']}  {entry['instance_id']}", style="dim")
        )


# --- acting on a running service over HTTP ------------------------------------------------------------

UrlOption = Annotated[
    str, typer.Option("--url", envvar="CONFLEDGER_URL", help="Base URL of the running confledger service.")
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        show_default=False,
        help="File holding the admin token (default: CONFLEDGER_ADMIN_TOKEN, else the file `serve` wrote "
        "beside the database).",
    ),
]
ServiceDatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        "-d",
        envvar="CONFLEDGER_DATABASE_URL",
        show_default=False,
        help="The service's database; locates the default token file.",
    ),
]
ServiceConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="CONFLEDGER_CONFIG",
        show_default=False,
        help="The service's config file; locates the default token file.",
    ),
]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the service.")]
DEFAULT_SERVICE_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1/config"


def _service_error(message: str) -> NoReturn:
    err.print(Text.assemble(("error", "red"), f": {message}"), soft_wrap=True)
    raise typer.Exit(2)


def _admin_token(token_file: Path | None, database: str | None, config: Path | None) -> str:
    """The admin token: --token-file, else CONFLEDGER_ADMIN_TOKEN, else the 0600 file `serve` wrote."""
    from confledger.api.lifecycle import default_database_url, token_file_path

    if token_file is None:
        from_env = os.environ.get("CONFLEDGER_ADMIN_TOKEN", "").strip()
        if from_env:
            return from_env
        try:
            token_file = token_file_path(database or default_database_url(config), config)
        except Exception:  # a malformed URL: say so below, as a missing file
            token_file = Path("confledger.db.admin-token")
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        _service_error(
            f"no admin token: set CONFLEDGER_ADMIN_TOKEN or pass --token-file (no token file at {token_file})"
        )
    except (OSError, UnicodeDecodeError) as exc:
        _service_error(f"cannot read the token file {token_file}: {type(exc).__name__}")
    if not token:
        _service_error(f"the token file {token_file} is empty")
    return token


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no detail"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # a 422 from request validation
        return "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return str(detail or response.reason_phrase or "no detail")


def _call_service(url: str, path: str, body: dict[str, Any], token: str, timeout: float) -> dict[str, Any]:
    """POST to the service; anything but an operation result is one stderr line and exit code 2."""
    endpoint = url.rstrip("/") + API_PREFIX + path
    headers = {
        "Authorization": f"Bearer {token}",
        "User-Agent": f"confledger-cli/{__version__}",
        # Recorded as trigger "cli" and actor "cli:<user>" (the token still decides what is allowed).
        "X-Confledger-Client": "cli",
        "X-Confledger-User": getpass.getuser(),
    }
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.post(endpoint, json=body, headers=headers)
    except httpx.TimeoutException:
        _service_error(f"confledger at {url} did not answer within {timeout:g} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _service_error(f"cannot reach confledger at {url}: {reason}")
    status = response.status_code
    if status == 401:
        _service_error(f"the service refused the token (401): {_detail(response)}")
    if status == 403:
        _service_error(f"forbidden (403): {_detail(response)}")
    if status == 409:
        running = None
        with contextlib.suppress(ValueError, AttributeError):
            running = response.json().get("running_operation_id")
        suffix = f" (running operation {running})" if running else ""
        _service_error(f"conflict (409): {_detail(response)}{suffix}")
    try:
        data = response.json()
    except ValueError:
        data = None
    # 200, and a failed rollback's 400/404, carry the operation; anything else is the service's error.
    if status in (200, 400, 404) and isinstance(data, dict) and "operation_id" in data:
        return data
    _service_error(f"the service answered HTTP {status}: {_detail(response)}")


def _print_operation(operation: dict[str, Any]) -> None:
    status = str(operation.get("status"))
    headline = Text.assemble(
        (f"{operation.get('kind', 'operation')} {status}", _STATUS_STYLE.get(status, "")),
        f"  {operation.get('message') or ''}",
    )
    out.print(headline)
    previous, new = operation.get("previous_config_hash"), operation.get("new_config_hash")
    rows: list[tuple[str, object]] = [
        ("operation", operation.get("operation_id")),
        ("config", f"{previous or 'none'} -> {new or 'none'}"),
        (
            "durations ms",
            f"total {operation.get('total_duration_ms')}, validation {operation.get('validation_duration_ms')}, "
            f"apply {operation.get('apply_duration_ms')}",
        ),
    ]
    if operation.get("dry_run"):
        rows.append(("dry run", "nothing was applied"))
    if operation.get("changes_applied"):
        rows.append(("changes", ", ".join(operation["changes_applied"])))
    if operation.get("services_notified"):
        rows.append(("services", ", ".join(operation["services_notified"])))
    if operation.get("services_compensated"):
        rows.append(("compensated", ", ".join(operation["services_compensated"])))
    if operation.get("error_message") and not operation.get("success"):
        rows.append(("error", operation["error_message"]))
    for error in operation.get("validation_errors") or []:
        rows.append(("validation error", Text(error, style="red")))
    for warning in operation.get("validation_warnings") or []:
        rows.append(("warning", Text(warning, style="yellow")))
    out.print(_key_values("", rows))


def _finish_operation(operation: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(operation)
    else:
        _print_operation(operation)
    if not operation.get("success"):
        raise typer.Exit(1)


@app.command("reload")
def reload_command(
    force: Annotated[bool, typer.Option("--force", help="Apply even if the config did not change.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Load and validate only; apply nothing.")
    ] = False,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Another config file, inside the service's allowed directories."),
    ] = None,
    url: UrlOption = DEFAULT_SERVICE_URL,
    token_file: TokenFileOption = None,
    database: ServiceDatabaseOption = None,
    config: ServiceConfigOption = None,
    timeout: TimeoutOption = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Reload the running service's config (exit 0 applied, 1 failed or rolled back, 2 not done)."""
    token = _admin_token(token_file, database, config)
    config_source = source
    if source is not None and Path(source).exists():
        # A path that exists here is meant from here; the service checks it against its allow-list.
        config_source = str(Path(source).absolute())
    body = {"force": force, "dry_run": dry_run, "config_source": config_source}
    _finish_operation(_call_service(url, "/reload", body, token, timeout), as_json)


@app.command("rollback")
def rollback_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[HASH]", help="An applied config's hash or prefix (default: the previous one)."
        ),
    ] = None,
    url: UrlOption = DEFAULT_SERVICE_URL,
    token_file: TokenFileOption = None,
    database: ServiceDatabaseOption = None,
    config: ServiceConfigOption = None,
    timeout: TimeoutOption = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Roll the running service back (exit 0 done, 1 refused or failed, 2 not reached)."""
    token = _admin_token(token_file, database, config)
    _finish_operation(_call_service(url, "/rollback", {"target_hash": target}, token, timeout), as_json)


def _settings_error(exc: Exception) -> str:
    from pydantic import ValidationError

    assert isinstance(exc, ValidationError)
    first = exc.errors(include_url=False, include_input=False)[0]
    return f"invalid setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def main() -> None:
    app(prog_name="confledger")


if __name__ == "__main__":  # pragma: no cover
    main()
