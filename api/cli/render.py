"""How the command line shows operations, statistics and backups: rich tables on a terminal, JSON for scripts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from pydantic import BaseModel
from rich import box
from rich.table import Table
from rich.text import Text

from confledger.api.cli.app import out, shown_escaped

__all__ = [
    "STATUS_STYLE",
    "backups_table",
    "cell",
    "failed_services",
    "history_table",
    "key_values",
    "new_table",
    "print_json",
    "print_operation",
    "print_stats",
    "short_time",
    "status_text",
]


def print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2, default=str))


def cell(value: object) -> Text:
    """A table cell from data: never parsed as rich markup (paths like ``a[0]`` stay as they are), its
    control characters shown as escapes."""
    return Text("" if value is None else shown_escaped(str(value)))


def short_time(value: object) -> str:
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text[:19].replace("T", " ")


STATUS_STYLE = {
    "success": "green",
    "failed": "red",
    "rolled_back": "yellow",
    "interrupted": "magenta",
    "in_progress": "cyan",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def failed_services(operation: dict[str, Any]) -> list[str]:
    return [label for label in operation.get("services_notified", []) if not label.endswith(":success")]


def operation_detail(operation: dict[str, Any]) -> str:
    if operation.get("validation_errors"):
        return "; ".join(operation["validation_errors"])
    failed = failed_services(operation)
    if failed:
        return "services: " + ", ".join(failed)
    if operation.get("status") == "success" and operation.get("changes_applied"):
        changes = operation["changes_applied"]
        shown = ", ".join(changes[:4]) + (f" (+{len(changes) - 4})" if len(changes) > 4 else "")
        return f"changed: {shown}"
    return str(operation.get("error_message") or operation.get("message") or "")


def new_table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def history_table(operations: list[dict[str, Any]], title: str) -> Table:
    """Operations as a table; on a narrow terminal the position, actor and duration columns are left out.

    The position (where the operation starts in the log) identifies a row: operation ids are time-ordered,
    so rows of one day share their first characters. Detail text wraps between words; a column is never
    made so narrow that a config path is cut in two.
    """
    wide = out.width >= 120
    table = new_table(title)
    table.add_column("started (UTC)", no_wrap=True)
    if wide:
        table.add_column("pos", justify="right", no_wrap=True)
    table.add_column("kind/trigger" if wide else "kind", no_wrap=True)
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("actor", overflow="fold", max_width=24)
    table.add_column("config", no_wrap=True)
    if wide:
        table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1)
    for op in operations:
        started = short_time(op.get("started_at"))
        cells: list[Text] = [cell(started if wide else started[5:16])]
        if wide:
            cells.append(cell(op.get("first_position") or ""))
        separator = "/" if wide else "\n"
        cells += [
            cell(f"{op.get('kind')}{separator}{op.get('trigger')}"),
            status_text(str(op.get("status"))),
        ]
        if wide:
            cells.append(cell(op.get("actor")))
        cells.append(cell((op.get("new_config_hash") or "-")[: 16 if wide else 7]))
        if wide:
            cells.append(cell(f"{op.get('total_duration_ms', 0.0):.1f}"))
        cells.append(cell(operation_detail(op)))
        table.add_row(*cells)
    return table


def key_values(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else cell(value))
    return table


def print_stats(stats: dict[str, Any], title: str = "reload statistics") -> None:
    out.print(
        key_values(
            title,
            [
                ("total operations", stats["total_operations"]),
                ("successful", stats["successful_operations"]),
                ("failed", stats["failed_operations"]),
                ("success rate", f"{stats['success_rate']:.1%}"),
                # Refused before they ran (another operation was running, a source not allowed): history
                # lists them, the totals above do not.
                ("refused requests", stats.get("rejected_requests", 0)),
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
        table = new_table("by trigger")
        for column in ("trigger", "total", "failed", "failure rate"):
            table.add_column(column, justify="left" if column == "trigger" else "right")
        for trigger, entry in stats["triggers"].items():
            table.add_row(
                cell(trigger), str(entry["total"]), str(entry["failed"]), f"{entry['failure_rate']:.1%}"
            )
        out.print(table)
    if stats["services"]:
        table = new_table("by service")
        for column in ("service", "notified", "outcomes", "undone", "p50 ms", "p99 ms"):
            table.add_column(
                column, overflow="fold", justify="left" if column in ("service", "outcomes") else "right"
            )
        table.add_column("running", no_wrap=True)
        for service, entry in stats["services"].items():
            table.add_row(
                cell(service),
                str(entry["notified"]),
                cell(", ".join(f"{k}={v}" for k, v in entry["outcomes"].items())),
                str(entry["compensations"]),
                f"{entry['p50_ms']:.1f}",
                f"{entry['p99_ms']:.1f}",
                cell(entry["running_hash"]),
            )
        out.print(table)


def backups_table(backups: list[dict[str, Any]], title: str) -> Table:
    table = new_table(title)
    for column in ("hash", "applied (UTC)", "actor", "trigger", "operation"):
        table.add_column(column, overflow="fold")
    for entry in backups:
        table.add_row(
            cell(entry["hash"]),
            cell(short_time(entry["created_at"])),
            cell(entry["actor"]),
            cell(entry["trigger"]),
            cell((entry.get("operation_id") or "")[:8]),
        )
    return table


def print_operation(operation: dict[str, Any]) -> None:
    status = str(operation.get("status"))
    headline = Text.assemble(
        (f"{operation.get('kind', 'operation')} {status}", STATUS_STYLE.get(status, "")),
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
    out.print(key_values("", rows))
