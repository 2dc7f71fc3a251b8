"""Commands that read the log directly: they never create, migrate or append to it, and work while the
service is down. The log machinery is imported when a command runs, not when the command line starts.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from confledger.api.cli.app import DatabaseOption, JsonOption, app, err, fail_cleanly, out, resolve_database
from confledger.api.cli.render import (
    backups_table,
    cell,
    failed_services,
    history_table,
    key_values,
    new_table,
    print_json,
    print_stats,
    short_time,
    status_text,
)
from confledger.store.events import Trigger
from confledger.store.outcome import ReloadStatus

if TYPE_CHECKING:
    from confledger.api.inspect import LogInspector
    from confledger.api.schemas import FleetKeptOut
    from confledger.store.chain import VerifyReport

__all__ = ["inspect"]

T = TypeVar("T")

# Replays folding at least this many events show a progress bar (on stderr, only on a terminal).
PROGRESS_MIN_EVENTS = 2_000


def inspect(database: str | None, action: Callable[[LogInspector], T], *, code: int = 1) -> T:
    """Open the log read-only (never created, migrated or appended to) and run ``action`` on it."""

    from confledger.api.inspect import LogInspector

    def run() -> T:
        with LogInspector.open(resolve_database(database)) as inspector:
            return action(inspector)

    return fail_cleanly(run, code=code)


@app.command("history")
def history_command(
    database: DatabaseOption = None,
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
    page = inspect(
        database,
        lambda inspector: inspector.history_page(
            limit,
            before=before,
            trigger=None if trigger is None else trigger.value,
            status=None if status is None else status.value,
        ),
    )
    if as_json:
        print_json(page)
        return
    operations = [op.model_dump(mode="json") for op in page.operations]
    out.print(history_table(operations, f"history: {len(operations)} of {page.total_count} operations"))
    if page.next_before is not None:
        out.print(f"older: --before {page.next_before}", style="dim", highlight=False)


@app.command("stats")
def stats_command(database: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """Totals, success rate, duration percentiles, per trigger and per service."""
    stats = inspect(database, lambda inspector: inspector.stats_summary())
    if as_json:
        print_json(stats)
        return
    print_stats(stats)


@app.command("status")
def status_command(database: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """Current config, log head, instances, open operations and service drift, from the log."""
    status = inspect(database, lambda inspector: inspector.status())
    if as_json:
        print_json(status)
        return
    started, stopped = status["last_instance_started"], status["last_instance_stopped"]
    statistics = status["reload_statistics"]
    source, source_text = status["source_state"], "unknown"
    if source is not None:
        by = f" by {source['rolled_back_by']}" if source["rolled_back_by"] else ""
        held = f"holds {source['hash'] or 'no loadable config'}, not applied: {source['reason']}{by}"
        source_text = held if source["differs_from_applied"] else "holds the applied config"
    out.print(
        key_values(
            "confledger status",
            [
                ("database", status["database"]),
                ("current config", status["current_config_hash"] or "none applied"),
                (
                    "applied",
                    ""
                    if status["current_applied_at"] is None
                    else f"{short_time(status['current_applied_at'])} UTC by {status['current_applied_by']} "
                    f"(position {status['current_applied_position']})",
                ),
                ("source", source_text),
                ("log head", status["log_head"]),
                (
                    "last started",
                    "never"
                    if started is None
                    else f"{started['instance_id']} at {short_time(started['occurred_at'])} UTC",
                ),
                (
                    "last stopped",
                    "never"
                    if stopped is None
                    else f"{stopped['instance_id']} at {short_time(stopped['occurred_at'])} UTC",
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
        table = new_table("instances")
        for column in ("instance", "state", "since (UTC)", "version"):
            table.add_column(column, overflow="fold")
        for instance in status["instances"]:
            state = Text(
                instance["state"], style={"up": "green", "gone": "yellow"}.get(instance["state"], "dim")
            )
            table.add_row(
                cell(instance["instance_id"]),
                state,
                cell(short_time(instance["occurred_at"])),
                cell(instance.get("version", "")),
            )
        out.print(table)
    if status["open_operations"]:
        out.print(history_table(status["open_operations"], "open operations (running or interrupted)"))
    else:
        out.print("open operations: none", highlight=False)
    if status["service_drift"]:
        out.print(Text("service drift (last accepted config is not the current one):", style="yellow"))
        for service, running in status["service_drift"].items():
            out.print(Text(f"  {service}: runs {running or 'unknown'}"))
    else:
        out.print("service drift: none", highlight=False)


@app.command("fleet")
def fleet_command(
    database: DatabaseOption = None,
    as_json: JsonOption = False,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            envvar="CONFLEDGER_HEARTBEAT_INTERVAL",
            min=0.1,
            help="The fleet's heartbeat interval in seconds, for instances without a heartbeat row (gone "
            "after 3) [default: serve's default].",
        ),
    ] = None,
    gone_shown_for: Annotated[
        float | None,
        typer.Option(
            "--gone-shown-for",
            envvar="CONFLEDGER_FLEET_GONE_SHOWN_FOR",
            min=0,
            help="Seconds an instance that went stays listed; older ones are only counted [default: "
            "serve's default, a day].",
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every instance the log knows, however long gone.")
    ] = False,
) -> None:
    """The fleet's desired config and each instance's state (in_sync, lagging, drifted, gone), from the log."""
    from confledger.api.schemas import FleetResponse

    view = inspect(
        database,
        lambda inspector: inspector.fleet(heartbeat_interval, gone_shown_for, all_instances=show_all),
    )
    fleet = FleetResponse.of(view)
    if as_json:
        print_json(fleet.model_dump(mode="json"))
        return
    out.print(
        key_values(
            "confledger fleet",
            [
                ("desired config", fleet.desired_hash or "none applied"),
                ("desired at position", fleet.desired_position),
                (
                    "decided by",
                    "-"
                    if fleet.desired_decided_by is None
                    else f"{fleet.desired_decided_by} ({fleet.desired_kind})",
                ),
                ("fleet threshold", _kept_line(fleet.fleet_threshold_kept)),
                ("log head", fleet.log_head),
                *(
                    [("gone long ago", f"{fleet.gone_hidden} instances not listed (--all lists them)")]
                    if fleet.gone_hidden
                    else []
                ),
            ],
        )
    )
    table = new_table("instances")
    for column in ("instance", "state", "applied", "lag", "last seen (UTC)", "failures"):
        table.add_column(column, overflow="fold")
    styles = {"in_sync": "green", "lagging": "yellow", "drifted": "red", "gone": "dim"}
    for instance in fleet.instances:
        failures = ", ".join(
            f"{failure.service}: {failure.error or failure.outcome}" for failure in instance.failures
        )
        table.add_row(
            cell(instance.instance_id),
            Text(instance.state, style=styles.get(instance.state, "")),
            cell(_answered(instance.applied_hash, instance.outcome)),
            cell(instance.lag_positions),
            cell(short_time(instance.last_seen)),
            cell(failures or "; ".join(instance.errors)),
        )
    out.print(table)


def _answered(config_hash: str | None, outcome: str | None) -> str | None:
    # An instance whose own model refused the desired config still runs the one before it: shown bare
    # under "applied", the refused hash would read as the config it runs.
    return f"{config_hash} (refused)" if outcome == "invalid" and config_hash else config_hash


def _kept_line(kept: FleetKeptOut | None) -> str:
    if kept is None:
        return "not judged"
    live = kept.applied + kept.failed + kept.waiting
    return f"kept: {kept.applied} of {live} instances applied (threshold {kept.threshold:g})"


@app.command("show")
def show_command(
    config_hash: Annotated[
        str, typer.Argument(metavar="HASH", help="A config hash or a unique prefix (7+ hex).")
    ],
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """A stored config, secrets shown as **********."""
    version = inspect(database, lambda inspector: inspector.show(config_hash))
    if as_json:
        print_json(version)
        return
    import yaml

    state = "applied" if version.applied else "stored, never applied"
    out.print(
        Text(
            f"config {version.hash} ({state}; {version.size_bytes} bytes; stored {short_time(version.created_at)} UTC; "
            f"first position {version.first_position})",
            style="bold",
        )
    )
    from rich.syntax import Syntax

    out.print(Syntax(yaml.safe_dump(version.config, sort_keys=False), "yaml", background_color="default"))


@app.command("diff")
def diff_command(
    old: Annotated[str, typer.Argument(metavar="A", help="The older config (hash or prefix).")],
    new: Annotated[str, typer.Argument(metavar="B", help="The newer config (hash or prefix).")],
    database: DatabaseOption = None,
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
        from confledger.api.inspect import diff_cipher

        cipher = diff_cipher(resolve_database(database), encryption_key, warn=warn)
        return inspector.diff(old, new, cipher)

    result = inspect(database, compute)
    if as_json:
        print_json(result)
        return
    title = f"diff {result['from_hash']} -> {result['to_hash']}: {len(result['changes'])} change(s)"
    if not result["changes"]:
        out.print(title, highlight=False)
    else:
        table = new_table(title)
        for column in ("path", "kind", "old", "new"):
            table.add_column(column, overflow="fold")
        styles = {"added": "green", "removed": "red", "changed": "yellow", "unknown": "dim"}
        for change in result["changes"]:
            table.add_row(
                cell(change["path"]),
                Text(change["kind"], style=styles.get(change["kind"], "")),
                cell(json.dumps(change["old"])) if change["old"] is not None else cell(""),
                cell(json.dumps(change["new"])) if change["new"] is not None else cell(""),
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
    database: DatabaseOption = None,
    as_json: JsonOption = False,
    anchor_file: Annotated[
        Path | None,
        typer.Option(
            "--anchor-file",
            help="The anchor file to check the log's end against [default: CONFLEDGER_ANCHOR_FILE, else "
            "beside an SQLite log, else (PostgreSQL) beside --config].",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The service's config file: a PostgreSQL log's anchor lies beside it [default: "
            "CONFLEDGER_CONFIG].",
        ),
    ] = None,
) -> None:
    """Recompute the hash chain; exit 1 naming the first broken position (2 if the log cannot be read)."""
    # The log alone, not LogInspector: verify needs no projection and no response model, and an
    # operator runs it in a hurry (it starts in about half the time).
    from confledger.api.readonly import open_readonly_log
    from confledger.store.errors import LogNotFound

    keyed = False

    def run() -> VerifyReport:
        nonlocal keyed
        url = resolve_database(database)
        log = open_readonly_log(url)
        try:
            if anchor_file is not None and not anchor_file.is_file():
                # Named, it must be there: checking nothing and exiting 0 would read as a clean bill.
                raise LogNotFound(f"no anchor file at {anchor_file}")
            if anchor_file is not None or config is not None:
                from confledger.api.settings import anchor_file_path, environment_settings

                settings = environment_settings()
                log.anchor_path = (
                    anchor_file.absolute()
                    if anchor_file is not None
                    else anchor_file_path(settings, url, config)
                )
            keyed = log.integrity().record is not None
            return log.verify()
        finally:
            log.close()

    report = fail_cleanly(run, code=2)
    if as_json:
        from confledger.api.schemas import VerifyResponse

        print_json(VerifyResponse.of(report))
    elif report.ok:
        out.print(
            Text(f"ok: the chain holds ({report.checked} events verified, head {report.head})", style="green")
        )
        if report.anchor_checked is not None:
            out.print(Text(f"its end matches the anchor file {report.anchor_checked}", style="green"))
        elif keyed:
            err.print(
                Text(
                    "no anchor file was checked: events cut off the end of the log would go unseen. A "
                    "PostgreSQL log's anchor lies beside the service's config (--config) or where "
                    "CONFLEDGER_ANCHOR_FILE says (--anchor-file); an SQLite log's beside the database.",
                    style="yellow",
                ),
                soft_wrap=True,
            )
    if not report.ok:
        # The reason code beside the words: it is what the runbook, /readyz and the service's log name.
        broken = report.first_broken_position
        tally = f"{report.checked} events verified, head {report.head}"
        if report.failed_on_a_body and report.config_hash is not None:
            # Every link held: what failed is a stored config (edited or deleted), not an event. Its
            # position is the event that names it, which an auditor must not go looking at as edited.
            where = f"stored config {report.config_hash[:16]} failed its check (named at position {broken})"
            tally = f"the chain holds: {tally}"
        elif broken is None:
            where = "integrity check failed"
        else:
            where = f"chain broken at position {broken}"
            tally = f"{report.checked} events verified before it, head {report.head}"
        err.print(Text(f"{where} ({report.code}): {report.reason} ({tally})", style="red"), soft_wrap=True)
        raise typer.Exit(1)


@app.command("backups")
def backups_command(
    database: DatabaseOption = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count", "-n", min=1, max=1000, help="How many backups [default: what serve keeps by default]."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The last N distinct configs applied before the current one (rollback targets)."""
    result = inspect(database, lambda inspector: inspector.backups(count))
    if as_json:
        print_json(result)
        return
    backups = [entry.model_dump(mode="json") for entry in result.backups]
    out.print(
        backups_table(backups, f"backups: {len(backups)} (current {result.current_config_hash or 'none'})")
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
    # In UTC, as the log's times and the timeline's rows are (and as GET /timeline answers its bounds):
    # a bound kept in its own offset was printed as that offset's wall clock beside UTC rows.
    try:
        return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise typer.BadParameter(
            f"{value!r} is out of range once converted to UTC", param_hint=option
        ) from None


@contextlib.contextmanager
def _replay_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    database: DatabaseOption = None,
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

        state = inspect(database, rebuild)
        if as_json:
            print_json(state)
            return
        out.print(
            Text(
                f"as of position {state['position']} ({short_time(state['occurred_at'])} UTC): "
                f"current config {state['current_config_hash']}",
                style="bold",
            )
        )
        out.print(history_table(state["history"], f"history then: {len(state['history'])} most recent"))
        print_stats(state["stats"], "statistics then")
        out.print(backups_table(state["backups"], f"backups then: {len(state['backups'])}"))
        return

    since_at, until_at = _parse_moment(since, "--since"), _parse_moment(until, "--until")
    if since_at is not None and until_at is not None and since_at > until_at:
        err.print("[red]error[/red]: --since is after --until", highlight=False)
        raise typer.Exit(2)
    timeline = inspect(database, lambda inspector: inspector.timeline(since_at, until_at))
    if as_json:
        print_json(timeline)
        return
    window = f"{short_time(timeline['since']) or 'the beginning'} .. {short_time(timeline['until']) or 'now'} (UTC)"
    wide = out.width >= 120
    table = new_table(f"incident timeline {window}: {len(timeline['operations'])} operation(s)")
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("kind/trigger" if wide else "kind", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("failed services", overflow="fold")
    table.add_column("what changed / why", overflow="fold", ratio=1)
    for op in timeline["operations"]:
        changed = op.get("changes_applied") or []
        why = op.get("validation_errors") or ([op["error_message"]] if op.get("error_message") else [])
        started = short_time(op.get("started_at"))
        table.add_row(
            cell(started if wide else started[5:]),
            cell(op.get("actor")),
            cell(f"{op.get('kind')}{'/' if wide else chr(10)}{op.get('trigger')}"),
            status_text(str(op.get("status"))),
            cell(", ".join(failed_services(op))),
            cell(
                "; ".join(changed if op.get("status") == "success" and changed else why) or op.get("message")
            ),
        )
    out.print(table)
    if timeline["config_changes"]:
        changes = new_table("config changes")
        changes.add_column("time (UTC)", no_wrap=True)
        changes.add_column("pos", justify="right", no_wrap=True)
        changes.add_column("from", no_wrap=True)
        changes.add_column("to", no_wrap=True)
        changes.add_column("by", overflow="fold")
        changes.add_column("paths", overflow="fold", ratio=1)
        for change in timeline["config_changes"]:
            when = short_time(change["occurred_at"])
            changes.add_row(
                cell(when if wide else when[5:]),
                str(change["position"]),
                cell(change["previous_hash"] or ""),
                cell(change["hash"]),
                cell(change["actor"]),
                cell(", ".join(change["changes"])),
            )
        out.print(changes)
    for entry in timeline["lifecycle"]:
        out.print(
            Text(
                f"{short_time(entry['occurred_at'])} UTC  {entry['type']}  {entry['instance_id']}",
                style="dim",
            )
        )
