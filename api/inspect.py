"""Read-only inspection of an event log: what the operator CLI shows, straight from the database.

The CLI's ``history``, ``stats``, ``status``, ``show``, ``diff``, ``replay``, ``verify`` and ``backups``
work while the service is down (that is when an incident review happens), so they read the tables
themselves instead of asking the HTTP API. They never write: no reloader or operation runner is started
(those record ``instance.started``), no schema is migrated, no checkpoint is saved. Projections are folded
here as ``ProjectionSet`` folds them - ``restore_projections``, then the tail - and then dropped.

Every answer is a JSON-able value shaped like the HTTP API's (hashes as their first 16 hex digits, secret
values as ``**********``); the CLI renders it as rich tables or prints it with ``--json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from confledger.api.readonly import CLI_INSTANCE_ID, diff_cipher, open_readonly_log
from confledger.api.schemas import (
    BackupsResponse,
    HistoryResponse,
    OperationOut,
    SourceStateOut,
    VerifyResponse,
    VersionResponse,
    short,
)
from confledger.api.settings import Settings
from confledger.projections.backups import BackupsProjection
from confledger.projections.base import Folder, Projection
from confledger.projections.current import CurrentProjection
from confledger.projections.fleet import FleetProjection, fleet_view, is_silent
from confledger.projections.history import HistoryProjection, history_page
from confledger.projections.runner import restore_projections
from confledger.projections.stats import StatsProjection
from confledger.projections.timeline import as_of, incident_replay, position_of_hash
from confledger.store.diff import diff_bodies
from confledger.store.errors import LogNotFound
from confledger.store.events import (
    ConfigApplied,
    InstanceStarted,
    InstanceStopped,
    RecordedEvent,
)
from confledger.store.fleet import read_heartbeats
from confledger.store.log import EventLog
from confledger.store.outcome import ReloadOperation, build_operation
from confledger.store.pins import RollbackPins
from confledger.store.secrets import (
    ConfigPath,
    SecretCipher,
    find_secret_paths,
    is_sealed,
    redact,
    unseal,
)
from confledger.store.source_state import describe_source, last_read
from confledger.store.times import utc_text

__all__ = [
    "CANNOT_COMPARE",
    "CLI_INSTANCE_ID",
    "LogInspector",
    "LogNotFound",
    "diff_cipher",
    "open_readonly_log",
]

CANNOT_COMPARE = "(secret: cannot compare without the key)"
# The one default is the settings model's (CONFLEDGER_BACKUP_COUNT), so an offline reader lists what
# a serving instance keeps.
DEFAULT_BACKUP_COUNT: int = Settings.model_fields["backup_count"].default
DEFAULT_HISTORY_WINDOW: int = Settings.model_fields["history_window"].default
DEFAULT_HEARTBEAT_INTERVAL: float = Settings.model_fields["heartbeat_interval"].default
DEFAULT_GONE_SHOWN_FOR: float = Settings.model_fields["fleet_gone_shown_for"].default
_SCAN_BATCH = 500

Progress = Callable[[int, int], None]


# --- the fold --------------------------------------------------------------------------------------------


def _materialize_nothing(_full_hash: str) -> None:
    # The CLI needs the current hash and when it was applied, not a typed config object.
    return None


class LogInspector:
    """Projections folded from an open log: checkpoints restored, the tail folded, nothing written."""

    def __init__(self, log: EventLog, *, history_window: int = DEFAULT_HISTORY_WINDOW) -> None:
        self.log = log
        self.current = CurrentProjection(_materialize_nothing)
        self.history = HistoryProjection(window=history_window)
        self.stats = StatsProjection()
        self.backups_projection = BackupsProjection(DEFAULT_BACKUP_COUNT)
        self.fleet_projection = FleetProjection()
        self.projections: list[Projection] = [
            self.current,
            self.history,
            self.stats,
            self.backups_projection,
            self.fleet_projection,
        ]
        self.head = 0
        self.folded_events = 0
        self._loaded = False

    @classmethod
    @contextlib.contextmanager
    def open(cls, url: str, **options: Any) -> Iterator[LogInspector]:
        log = open_readonly_log(url)
        try:
            yield cls(log, **options)
        finally:
            log.close()

    def load(self) -> LogInspector:
        """Restore the checkpoints as the service does, then fold the events after them (at most once)."""
        if self._loaded:
            return self
        self.head = restore_projections(self.log, self.projections)
        start = min(projection.position for projection in self.projections)
        # A Folder folds exactly as apply on each projection would, routing each event only to the
        # projections that read its type: the cheaper way through a long tail.
        self.folded_events += Folder(self.projections).fold(self.log.iter_events(start, until=self.head))
        for projection in self.projections:
            projection.settle()
        self._loaded = True
        return self

    @property
    def current_hash(self) -> str | None:
        return self.current.hash

    # --- history -----------------------------------------------------------------------------------

    def history_page(
        self,
        limit: int = 20,
        *,
        before: int | None = None,
        trigger: str | None = None,
        status: str | None = None,
    ) -> HistoryResponse:
        """Operations newest first, like ``GET /history`` (``before`` is a position cursor)."""
        self.load()
        operations = self._operations(limit, before=before, trigger=trigger, status=status)
        total = self.stats.count_matching(trigger=trigger, status=status)
        return HistoryResponse(
            operations=[OperationOut.of(op) for op in operations],
            total_count=max(total, len(operations)),
            limit=limit,
            next_before=operations[-1].first_position if len(operations) == limit else None,
        )

    def _operations(
        self, limit: int, *, before: int | None, trigger: str | None, status: str | None
    ) -> list[ReloadOperation]:
        return history_page(self.history, self.log, limit, before=before, trigger=trigger, status=status)

    # --- stats -------------------------------------------------------------------------------------

    def stats_summary(self) -> dict[str, Any]:
        """The seed's keys first, then percentiles, per-trigger and per-service breakdowns."""
        self.load()
        return stats_document(self.stats.summary(), self.current_hash, len(self.backups_projection.backups))

    # --- status ------------------------------------------------------------------------------------

    def fleet(
        self,
        heartbeat_interval: float | None = None,
        gone_shown_for: float | None = None,
        *,
        all_instances: bool = False,
    ) -> dict[str, Any]:
        """The fleet view as ``GET /fleet`` gives it, from the log and the heartbeat rows (full hashes);
        None for either setting is serve's default; ``all_instances`` lists the long gone too."""
        shown_for = DEFAULT_GONE_SHOWN_FOR if gone_shown_for is None else gone_shown_for
        self.load()
        heartbeats = read_heartbeats(self.log.engine)
        return fleet_view(
            self.fleet_projection,
            heartbeats,
            now=datetime.now(UTC),
            default_interval_s=DEFAULT_HEARTBEAT_INTERVAL
            if heartbeat_interval is None
            else heartbeat_interval,
            head=self.head,
            gone_shown_for=None if all_instances else timedelta(seconds=shown_for),
        )

    def status(self) -> dict[str, Any]:
        self.load()
        current = self.current.snapshot().get("applied")
        summary = self.stats.summary()
        open_operations = [
            OperationOut.of(build_operation(self.log.read_operation(started.operation_id))).model_dump(
                mode="json"
            )
            for started in self.log.open_operations()
            if started.operation_id is not None
        ]
        last_started = self.log.last_of_type(InstanceStarted.event_type)
        return {
            "database": self.log.display_url,
            "current_config_hash": short(self.current_hash),
            "current_applied_at": None if current is None else utc_text(current["applied_at"]),
            "current_applied_by": None if current is None else current["actor"],
            "current_applied_position": None if current is None else current["position"],
            "log_head": self.head,
            "last_instance_started": _lifecycle_entry(last_started),
            "last_instance_stopped": _lifecycle_entry(self.log.last_of_type(InstanceStopped.event_type)),
            "instances": self._instances(),
            "open_operations": open_operations,
            "service_drift": {
                service: short(running) or ""
                for service, running in self.stats.drift(self.current_hash).items()
            },
            "available_backups": len(self.backups_projection.backups),
            "reload_statistics": {
                "total_operations": summary["total_operations"],
                "success_rate": summary["success_rate"],
                "average_duration_ms": summary["average_duration_ms"],
            },
            "source_state": self._source_state(last_started),
        }

    def _source_state(self, last_started: RecordedEvent | None) -> dict[str, Any] | None:
        """The source of the instance that started last, as ``GET /status`` shows it (from the log)."""
        payload = None if last_started is None else last_started.payload
        source = payload.config_source if isinstance(payload, InstanceStarted) else None
        if source is None:
            return None
        pins = RollbackPins()
        pins.catch_up(self.log, save=False)  # a read-only look: the checkpoint is the service's to write
        state = SourceStateOut.of(
            describe_source(source, last_read(self.log, source), self.current_hash, pins)
        )
        return None if state is None else state.model_dump(mode="json")

    def _instances(self, scan: int = 200, keep: int = 10) -> list[dict[str, Any]]:
        """Each recently seen instance with its last lifecycle event: ``up``, ``stopped``, or ``gone``
        (started, never stopped, and its heartbeat silent for three intervals: killed, or its host lost)."""
        latest: dict[str, RecordedEvent] = {}
        for event in self.log.read_reverse(
            limit=scan, types=[InstanceStarted.event_type, InstanceStopped.event_type]
        ):
            latest.setdefault(event.instance_id, event)
        heartbeats = read_heartbeats(self.log.engine)
        now = datetime.now(UTC)
        entries = []
        for instance_id, event in list(latest.items())[:keep]:
            entry = _lifecycle_entry(event) or {}
            entry["instance_id"] = instance_id
            if not isinstance(event.payload, InstanceStarted):
                entry["state"] = "stopped"
            else:
                # Gone only by a heartbeat row gone silent: an instance that does not follow the log
                # (--no-follow) writes none, and its start alone says nothing about whether it still runs.
                beat = heartbeats.get(instance_id)
                silent = beat is not None and is_silent(
                    max(beat.last_seen, event.occurred_at), beat.interval_s, now
                )
                entry["state"] = "gone" if silent else "up"
            entries.append(entry)
        return entries

    # --- configs -----------------------------------------------------------------------------------

    def show(self, reference: str) -> VersionResponse:
        """A stored config by hash or prefix, secrets redacted (no key needed: bodies stay sealed)."""
        stored = self.log.get_config(reference, reveal=False)
        return VersionResponse.of(stored, applied=self.log.was_applied(stored.hash))

    def diff(self, from_reference: str, to_reference: str, cipher: SecretCipher | None) -> dict[str, Any]:
        """Dotted-path changes between two stored configs, secret values shown as ``**********``.

        With the key, secrets are compared by value (a changed secret is listed, never shown). Without it
        they can only be compared sealed, so a secret present on both sides is listed as not comparable.
        """
        old = self.log.get_config(from_reference, reveal=False)
        new = self.log.get_config(to_reference, reveal=False)
        secret_paths: set[ConfigPath] = set(old.secret_paths | new.secret_paths)
        if cipher is not None:
            old_body, new_body = unseal(old.body, cipher), unseal(new.body, cipher)
            secret_paths |= find_secret_paths(old_body) | find_secret_paths(new_body)
            changes = [c.as_dict() for c in diff_bodies(old_body, new_body, secret_paths=secret_paths)]
        else:
            secret_paths |= find_secret_paths(old.body) | find_secret_paths(new.body)
            # Two walks: one that tells every sealed value apart (each is sealed afresh, so two seals of
            # one secret differ) finds every path that may have changed; one that takes them all as
            # equal finds what visibly changed. A path only the first finds differs in sealed values
            # alone: a secret, or a list holding one (lists are compared whole), that cannot be compared.
            visible = {
                change.path: change
                for change in diff_bodies(
                    _sealed_as_leaves(old.body, tell_apart=False),
                    _sealed_as_leaves(new.body, tell_apart=False),
                    secret_paths=secret_paths,
                )
            }
            changes = []
            for change in diff_bodies(
                _sealed_as_leaves(old.body), _sealed_as_leaves(new.body), secret_paths=secret_paths
            ):
                seen = visible.get(change.path)
                if seen is not None:
                    changes.append(seen.as_dict())
                else:
                    changes.append(
                        {**change.as_dict(), "kind": "unknown", "old": CANNOT_COMPARE, "new": CANNOT_COMPARE}
                    )
        return {
            "from_hash": old.hash[:16],
            "to_hash": new.hash[:16],
            "secrets_compared": cipher is not None,
            "changes": changes,
        }

    def backups(self, count: int | None = None) -> BackupsResponse:
        """The last ``count`` (None: as many as serve keeps) distinct configs applied before the current
        one, newest first.

        Folded by ``BackupsProjection`` over just the ``config.applied`` events it needs (found newest
        first), so any count is answered without replaying the whole log.
        """
        count = DEFAULT_BACKUP_COUNT if count is None else count
        projection = BackupsProjection(count)
        for operation_start, applied in self._recent_distinct_applies(count + 1):
            if operation_start is not None:
                projection.fold(operation_start)
            projection.fold(applied)
        current = projection.entries[0]["hash"] if projection.entries else None
        return BackupsResponse.of(projection.backups, count, current)

    def _recent_distinct_applies(self, wanted: int) -> list[tuple[RecordedEvent | None, RecordedEvent]]:
        """The newest ``config.applied`` of each of the last ``wanted`` distinct hashes, oldest first,
        each with its operation's ``operation.started`` (for the trigger)."""
        seen: set[str] = set()
        picked: list[RecordedEvent] = []
        before: int | None = None
        while len(picked) < wanted:
            batch = self.log.read_reverse(before, _SCAN_BATCH, types=[ConfigApplied.event_type])
            for event in batch:
                if isinstance(event.payload, ConfigApplied) and event.payload.hash not in seen:
                    seen.add(event.payload.hash)
                    picked.append(event)
                    if len(picked) >= wanted:
                        break
            if len(batch) < _SCAN_BATCH:
                break
            before = batch[-1].position
        result: list[tuple[RecordedEvent | None, RecordedEvent]] = []
        for applied in reversed(picked):
            start = None
            if applied.operation_id is not None:
                start = next(
                    (
                        e
                        for e in self.log.read_operation(applied.operation_id)
                        if e.type == "operation.started"
                    ),
                    None,
                )
            result.append((start, applied))
        return result

    # --- integrity ---------------------------------------------------------------------------------

    def verify(self) -> VerifyResponse:
        return VerifyResponse.of(self.log.verify())

    # --- replay ------------------------------------------------------------------------------------

    def timeline(self, since: datetime | None, until: datetime | None) -> dict[str, Any]:
        """Incident replay: who did what, by which trigger, which services failed, what changed."""
        incident = incident_replay(self.log, since, until)
        operations = [OperationOut.of(op).model_dump(mode="json") for op in incident.operations]
        failed: dict[str, int] = {}
        for op in incident.operations:
            for label in op.services_notified:
                service, _, outcome = label.rpartition(":")
                if outcome != "success":
                    failed[service] = failed.get(service, 0) + 1
        return {
            "since": None if since is None else utc_text(since),
            "until": None if until is None else utc_text(until),
            "operations": operations,
            "failed_services": dict(sorted(failed.items())),
            "lifecycle": incident.lifecycle,
            "config_changes": [
                {**change, "hash": short(change["hash"]), "previous_hash": short(change["previous_hash"])}
                for change in incident.config_changes
            ],
        }

    def until_hash_positions(self, reference: str) -> tuple[int, int]:
        """Where ``reference`` was last applied, and where the operation that applied it completed."""
        applied_at = position_of_hash(self.log, reference)
        found = self.log.read(applied_at - 1, 1)
        position = applied_at
        if found and found[0].operation_id is not None:
            operation = self.log.read_operation(found[0].operation_id)
            if operation:
                position = max(applied_at, operation[-1].position)
        return applied_at, position

    def replay_until_hash(
        self,
        reference: str,
        *,
        history_limit: int = 20,
        backup_count: int = DEFAULT_BACKUP_COUNT,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Every projection rebuilt from zero as it stood when ``reference`` was last applied (through
        the end of the operation that applied it, so that operation shows with its outcome)."""
        applied_at, position = self.until_hash_positions(reference)
        state = as_of(
            self.log,
            position,
            backup_count=backup_count,
            history_window=max(history_limit, 1),
            progress=progress,
        )
        if progress is not None:
            progress(state.position, position)
        config = None if state.config is None else redact(state.config, find_secret_paths(state.config))
        return {
            "position": state.position,
            "applied_position": applied_at,
            "occurred_at": None if state.occurred_at is None else utc_text(state.occurred_at),
            "current_config_hash": short(state.current_hash),
            "config": config,
            "history": [OperationOut.of(op).model_dump(mode="json") for op in state.history[:history_limit]],
            "stats": stats_document(state.stats, state.current_hash, len(state.backups)),
            "backups": [
                {
                    "hash": short(entry["hash"]),
                    "full_hash": entry["hash"],
                    "created_at": utc_text(entry["applied_at"]),
                    "actor": entry["actor"],
                    "trigger": entry["trigger"],
                    "operation_id": entry["operation_id"],
                }
                for entry in state.backups
            ],
        }


# --- helpers ---------------------------------------------------------------------------------------------


_SEED_KEYS = (
    "total_operations",
    "successful_operations",
    "failed_operations",
    "success_rate",
    "average_duration_ms",
)


def stats_document(summary: dict[str, Any], current_hash: str | None, backups: int) -> dict[str, Any]:
    """``GET /stats``'s shape from a ``StatsProjection.summary()``, hashes shortened."""
    services = {
        name: {**entry, "running_hash": short(entry.get("running_hash"))}
        for name, entry in summary.get("services", {}).items()
    }
    return {
        **{key: summary[key] for key in _SEED_KEYS},
        "backups_available": backups,
        "current_config_hash": short(current_hash),
        **{key: value for key, value in summary.items() if key not in _SEED_KEYS and key != "services"},
        "services": services,
    }


def _lifecycle_entry(event: RecordedEvent | None) -> dict[str, Any] | None:
    if event is None:
        return None
    entry: dict[str, Any] = {
        "position": event.position,
        "occurred_at": utc_text(event.occurred_at),
        "instance_id": event.instance_id,
    }
    payload = event.payload
    if isinstance(payload, InstanceStarted):
        entry.update(version=payload.version, host=payload.host, pid=payload.pid)
        entry["current_hash"] = short(payload.current_hash)
    elif isinstance(payload, InstanceStopped):
        entry["reason"] = payload.reason
    return entry


def _sealed_as_leaves(body: Any, *, tell_apart: bool = True) -> Any:
    """Sealed values as plain strings, so a diff compares them as leaves (never as nested objects): each
    its own (``tell_apart``), or all one."""
    if is_sealed(body):
        return "sealed:" + str(next(iter(body.values()))) if tell_apart else "sealed"
    if isinstance(body, dict):
        return {key: _sealed_as_leaves(child, tell_apart=tell_apart) for key, child in body.items()}
    if isinstance(body, list):
        return [_sealed_as_leaves(child, tell_apart=tell_apart) for child in body]
    return body
