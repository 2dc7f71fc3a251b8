"""The audit views tell when an operation was asked for, and call a fleet threshold's rollback by its name.

``operations.started_at`` was the commit time of ``operation.started``: for an operation that ends before
a callback runs (a refused config, "no changes", a request refused) that is the end, written in the same
commit as ``operation.completed``, so ``started_at`` equalled ``completed_at``; for the others it left out
the wait for the fleet's lock and the load. ``operation.started`` carries ``started_at`` (version 2:
when the request arrived), as the API and the CLI show it; the view now does too, and falls back on the
commit time for a version 1 event. ``config_history`` said ``manual rollback`` for a rollback the fleet
threshold made (trigger ``fleet_threshold``); it says ``fleet threshold rollback``.

The views are 0001's, with those two expressions replaced; downgrade puts 0001's back.

Revision ID: 0005_audit_view_times
Revises: 0004_applied_rings_only
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0005_audit_view_times"
down_revision: str | None = "0004_applied_rings_only"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Alembic loads each revision file on its own; 0001 is imported here by its place in the package.
_INITIAL = importlib.import_module("confledger.migrations.versions.0001_initial")

# The text as SQLite stores a time ("2026-12-07 10:13:17.294000"), from the ISO text the payload holds
# ("2026-12-07T10:13:17.294Z", or whole seconds with no fraction), so the column keeps one format and
# compares and sorts as occurred_at does.
_SQLITE_STARTED = "replace(replace(json_extract(s.payload, '$.started_at'), 'T', ' '), 'Z', '')"
_SQLITE_STARTED_AT = (
    f"COALESCE(CASE WHEN instr({_SQLITE_STARTED}, '.') > 0 THEN {_SQLITE_STARTED}"
    f" ELSE {_SQLITE_STARTED} || '.000000' END, s.occurred_at)"
)
_POSTGRES_STARTED_AT = "COALESCE((s.payload ->> 'started_at')::timestamptz, s.occurred_at)"

_OLD_STARTED_AT = "s.occurred_at AS started_at"


def _reason(kind: str, trigger: str) -> tuple[str, str]:
    """0001's reason of an applied row, and this revision's."""
    old = f"CASE WHEN {kind} = 'rollback' THEN 'manual rollback' ELSE 'reload' END AS reason"
    new = (
        f"CASE WHEN {kind} = 'rollback' AND {trigger} = 'fleet_threshold' THEN 'fleet threshold rollback'"
        f" WHEN {kind} = 'rollback' THEN 'manual rollback' ELSE 'reload' END AS reason"
    )
    return old, new


def _corrected(views: list[str], started_at: str, kind: str, trigger: str) -> list[str]:
    operations, history = views
    old_reason, new_reason = _reason(kind, trigger)
    # Replacing text of 0001's views rather than writing them out again: they stay one definition, and
    # a change to either expression that misses its text fails here, at the migration, not in an audit.
    if _OLD_STARTED_AT not in operations or old_reason not in history:
        raise RuntimeError("0001's audit views are not as 0005_audit_view_times expects them")
    return [
        operations.replace(_OLD_STARTED_AT, f"{started_at} AS started_at"),
        history.replace(old_reason, new_reason),
    ]


def _views(dialect: str) -> tuple[list[str], list[str]]:
    """0001's views on ``dialect`` and this revision's."""
    if dialect == "sqlite":
        initial = list(_INITIAL.SQLITE_VIEWS)
        field = "json_extract(s.payload, '$.{name}')"
        started_at = _SQLITE_STARTED_AT
    else:
        initial = list(_INITIAL.POSTGRES_VIEWS)
        field = "(s.payload ->> '{name}')"
        started_at = _POSTGRES_STARTED_AT
    kind, trigger = field.format(name="kind"), field.format(name="trigger")
    return initial, _corrected(initial, started_at, kind, trigger)


def _replace_views(statements: list[str]) -> None:
    op.execute("DROP VIEW IF EXISTS config_history")
    op.execute("DROP VIEW IF EXISTS operations")
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _replace_views(_views(op.get_bind().dialect.name)[1])


def downgrade() -> None:
    _replace_views(_views(op.get_bind().dialect.name)[0])
