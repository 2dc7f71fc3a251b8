"""The meaning of "nothing lost", defined once: what every reliability scenario checks when it ends.

A scenario drives a service (in-process ``ConfigReloader``, or a ``confledger serve`` process over HTTP),
records what each client was told (``Reply``), lets the service settle, then calls ``check_nothing_lost``.
The check reads the log itself (a fresh fold from position 0, never the service's checkpoints) and holds:

1. positions are exactly 1..N (no gap, no duplicate) and ``verify`` passes over all N events;
2. every operation in the log is whole: it opens with ``operation.started`` and has exactly one
   ``operation.completed``, its last event, or it is a lone ``operation.rejected`` (a refused request);
   an operation may be left open only when its writer is dead (``live_instances`` says who is alive);
3. every reply that named an operation has exactly one terminal event for it (``operation.completed``
   or ``operation.rejected``), and the status the client was told is the status the log folds to; a
   request that errored (5xx, dropped connection) left its operation whole or nothing (2 holds that,
   whatever its id was);
4. a fresh fold of the log equals what the service reports: ``/status`` (hash, head, totals, backups
   count, drift), ``/stats``, every page of ``/history``, ``/backups`` and ``/fleet`` when the service
   has that route (skipped, and said so in the report, when it does not);
5. the live config is the last applied one (hash and body, secrets redacted alike), and nothing is
   half-applied: no operation running at rest, none left open in the log by a live instance.

``check_nothing_lost`` returns a ``Report`` (what was checked, with counts) and raises ``AssertionError``
naming the first broken rule. ``check_log`` holds rules 1-3 on a log alone (for a scenario whose
service is dead, e.g. after a SIGKILL, before a restart closes its operations).

Observed state comes from an ``Observer``: ``ReloaderObserver`` (in-process; the reloader's own
projections, shaped as the routes shape them) or ``HttpObserver`` (a running service; the routes
themselves). ``/fleet`` is read only over HTTP (``check_fleet``: its desired hash and position are the last
``config.applied``'s, its log head the log's, and every instance still up is in sync on that hash or
reports itself drifted, none lagging at rest).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from confledger.api.inspect import DEFAULT_BACKUP_COUNT, stats_document
from confledger.api.reloader import ConfigReloader
from confledger.api.schemas import BackupsResponse, OperationOut, short
from confledger.projections.backups import BackupsProjection
from confledger.projections.stats import StatsProjection
from confledger.store.events import ConfigApplied, RecordedEvent
from confledger.store.log import EventLog
from confledger.store.outcome import DEFAULT_LISTED, build_operation
from confledger.store.secrets import find_secret_paths, redact
from confledger.store.validation import dump_revealed

__all__ = [
    "DEFAULT_BACKUP_COUNT",
    "Expected",
    "HttpObserver",
    "Observed",
    "Observer",
    "ReloaderObserver",
    "Reply",
    "Report",
    "check_fleet",
    "check_log",
    "check_no_interleaving",
    "check_nothing_lost",
    "fold_log",
    "operations_of",
    "reply_from_response",
    "wait_until_settled",
]

PREFIX = "/api/v1/config"
_TERMINAL = ("operation.completed", "operation.rejected")
_HISTORY_PAGE = 100  # the route's largest page


# --- what clients were told ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One request as its client saw it.

    ``status_code`` None: no answer at all (connection dropped, timeout, the process died).
    ``operation_id`` and ``status`` come from the body when it named an operation (a 200 or 4xx
    operation answer, a 409's recorded rejection).
    """

    status_code: int | None
    operation_id: str | None = None
    status: str | None = None

    @property
    def errored(self) -> bool:
        return self.status_code is None or self.status_code >= 500

    @property
    def answered(self) -> bool:
        """A reply that told its client which operation it was: that operation must be in the log."""
        return not self.errored and self.operation_id is not None


def reply_from_response(response: httpx.Response | None) -> Reply:
    """The ``Reply`` for a POST /reload or /rollback response (None: the request got no response)."""
    if response is None:
        return Reply(None)
    try:
        body = response.json()
    except ValueError:
        return Reply(response.status_code)
    if not isinstance(body, dict):
        return Reply(response.status_code)
    # A 409's body is an ErrorResponse: it names the recorded rejection but no status.
    return Reply(response.status_code, body.get("operation_id"), body.get("status"))


# --- the log alone ------------------------------------------------------------------------------------------


def operations_of(events: Iterable[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    """Events grouped by operation id, each group in position order (events without an id left out)."""
    groups: dict[str, list[RecordedEvent]] = defaultdict(list)
    for event in events:
        if event.operation_id is not None:
            groups[str(event.operation_id)].append(event)
    return dict(groups)


@dataclass
class Report:
    """What a check covered, so a scenario can assert it checked something (and say what it skipped)."""

    events: int = 0
    operations: int = 0
    open_operations: int = 0
    replies_matched: int = 0
    history_entries: int = 0
    skipped: list[str] = field(default_factory=list)


def check_log(
    log: EventLog,
    replies: Sequence[Reply] = (),
    *,
    live_instances: Collection[str] | None = None,
    events: Sequence[RecordedEvent] | None = None,
) -> Report:
    """Rules 1-3 on the log alone.

    ``live_instances``: ids of instances still running; an operation of theirs must not be open. None
    means every writer is alive (the usual end of a scenario); pass ``()`` when all of them are dead.
    """
    recorded = list(log.iter_events()) if events is None else list(events)
    report = Report(events=len(recorded))

    positions = [event.position for event in recorded]
    assert positions == list(range(1, len(recorded) + 1)), f"positions are not 1..N: {_gaps(positions)}"
    assert log.head() == len(recorded), f"head {log.head()} but {len(recorded)} events"
    verified = log.verify()
    assert verified.ok, f"verify failed: {verified.reason}"
    assert verified.checked == len(recorded), f"verify checked {verified.checked} of {len(recorded)} events"

    groups = operations_of(recorded)
    report.operations = len(groups)
    for operation_id, group in groups.items():
        types = [event.type for event in group]
        if types == ["operation.rejected"]:
            continue
        assert types[0] == "operation.started", (
            f"operation {operation_id} does not open with a start: {types}"
        )
        assert types.count("operation.started") == 1, f"operation {operation_id} started twice: {types}"
        assert "operation.rejected" not in types, f"operation {operation_id} mixes a rejection in: {types}"
        completions = types.count("operation.completed")
        if completions == 0:
            writer = group[0].instance_id
            alive = live_instances is None or writer in live_instances
            assert not alive, f"operation {operation_id} of live instance {writer} was left open: {types}"
            report.open_operations += 1
            continue
        assert completions == 1, f"operation {operation_id} completed {completions} times: {types}"
        assert types[-1] == "operation.completed", (
            f"operation {operation_id} went on after completing: {types}"
        )

    for reply in replies:
        if reply.operation_id is None:
            continue
        group = groups.get(reply.operation_id, [])
        if reply.errored and not group:
            continue  # an errored request may be absent; if present, it is whole (checked above)
        terminal = [event for event in group if event.type in _TERMINAL]
        assert len(terminal) == 1, (
            f"reply {reply} names operation {reply.operation_id}, which has {len(terminal)} terminal events"
        )
        if reply.status is not None:
            told = build_operation(group).status.value
            assert told == reply.status, f"client told {reply.status!r}, the log says {told!r} ({reply})"
        report.replies_matched += 1
    return report


def check_no_interleaving(events: Sequence[RecordedEvent], *, per_instance: bool = True) -> int:
    """No event of one operation lies between another operation's start and completion (on the same
    instance, with ``per_instance``; a lone rejection recorded while an operation ran is not an operation).
    Returns how many operations were checked."""
    groups = operations_of(events)
    spans: list[tuple[int, int, str, str]] = []
    for operation_id, group in groups.items():
        if group[0].type != "operation.started":
            continue
        spans.append((group[0].position, group[-1].position, operation_id, group[0].instance_id))
    spans.sort()
    last_end: dict[str, tuple[int, str]] = {}
    for start, end, operation_id, instance in spans:
        key = instance if per_instance else ""
        previous = last_end.get(key)
        if previous is not None:
            assert start > previous[0], (
                f"operations {previous[1]} and {operation_id} interleave (positions up to {previous[0]}, from {start})"
            )
        last_end[key] = (end, operation_id)
    return len(spans)


def _gaps(positions: Sequence[int]) -> str:
    expected = set(range(1, len(positions) + 1))
    duplicates = [p for p, n in Counter(positions).items() if n > 1]
    return f"missing {sorted(expected - set(positions))[:10]}, duplicated {duplicates[:10]}"


# --- the fresh fold ----------------------------------------------------------------------------------------


@dataclass
class Expected:
    """What the service must report, folded from position 0 of the log (hashes shortened as shown)."""

    applied_hash: str | None  # full hash of the last config.applied
    applied_position: int  # its position (0: none)
    head: int
    stats: dict[str, Any]
    history: list[dict[str, Any]]
    backups: dict[str, Any]
    live_config: dict[str, Any] | None
    drift: dict[str, str]


def fold_log(
    log: EventLog,
    *,
    backup_count: int = DEFAULT_BACKUP_COUNT,
    listed: int = DEFAULT_LISTED,
    events: Sequence[RecordedEvent] | None = None,
) -> Expected:
    """Fold every event once, with fresh projections (no checkpoint is read)."""
    recorded = list(log.iter_events()) if events is None else list(events)
    stats, backups = StatsProjection(), BackupsProjection(backup_count)
    applied_hash: str | None = None
    applied_position = 0
    for event in recorded:
        stats.apply(event)
        backups.apply(event)
        if isinstance(event.payload, ConfigApplied):
            applied_hash, applied_position = event.payload.hash, event.position
    for projection in (stats, backups):
        projection.settle()
    operations = [build_operation(group, listed=listed) for group in operations_of(recorded).values()]
    operations.sort(key=lambda operation: operation.first_position, reverse=True)
    live_config = None
    if applied_hash is not None:
        stored = log.get_config(applied_hash, reveal=False)
        live_config = redact(stored.body, stored.secret_paths | find_secret_paths(stored.body))
    return Expected(
        applied_hash=applied_hash,
        applied_position=applied_position,
        head=len(recorded),
        stats=_plain(stats_document(stats.summary(), applied_hash, len(backups.backups))),
        history=[_plain(OperationOut.of(operation).model_dump(mode="json")) for operation in operations],
        backups=_plain(
            BackupsResponse.of(backups.backups, backup_count, applied_hash).model_dump(mode="json")
        ),
        live_config=live_config,
        drift={name: short(running) or "" for name, running in stats.drift(applied_hash).items()},
    )


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists, floats as JSON writes them), as a client would read it."""
    return json.loads(json.dumps(value, default=str))


# --- what the service reports -------------------------------------------------------------------------------


@dataclass
class Observed:
    """The service's own answers, in the routes' shapes."""

    instance_id: str
    current_hash: str | None  # 16 hex digits, as shown
    live_full_hash: str | None
    log_head: int
    running_operation_id: str | None
    listeners: list[str]
    available_backups: int
    totals: dict[str, Any]  # /status reload_statistics
    drift: dict[str, str]
    stats: dict[str, Any]
    history: list[dict[str, Any]]
    backups: dict[str, Any]
    live_config: dict[str, Any] | None
    fleet: dict[str, Any] | None  # None: the service has no /fleet route


class Observer(Protocol):
    def observe(self) -> Observed: ...

    def settled(self) -> tuple[str | None, int]:
        """The running operation (None at rest) and the last position the service has folded."""
        ...


class ReloaderObserver:
    """An in-process ``ConfigReloader``, read as its routes read it (call from any thread: reads only)."""

    def __init__(self, reloader: ConfigReloader) -> None:
        self.reloader = reloader

    def settled(self) -> tuple[str | None, int]:
        return self.reloader.running_operation_id, self.reloader.projections.position

    def observe(self) -> Observed:
        reloader = self.reloader
        stats = reloader.get_reload_stats()
        stats["current_config_hash"] = short(stats["current_config_hash"])
        for service in stats.get("services", {}).values():
            service["running_hash"] = short(service.get("running_hash"))
        stats.pop("listeners_registered", None)
        summary = reloader.stats_projection
        live = reloader.get_config()
        history = reloader.get_reload_history(limit=10**9)
        return Observed(
            instance_id=reloader.log.instance_id,
            current_hash=short(reloader.current_hash),
            live_full_hash=reloader.current_hash,
            log_head=reloader.projections.position,
            running_operation_id=reloader.running_operation_id,
            listeners=reloader.services.names(),
            available_backups=len(reloader.get_backups()),
            totals={
                "total_operations": summary.total,
                "success_rate": round(summary.success_rate, 6),
                "average_duration_ms": round(summary.durations.mean, 3),
            },
            drift={name: short(running) or "" for name, running in reloader.service_drift().items()},
            stats=_plain(stats),
            history=[_plain(OperationOut.of(operation).model_dump(mode="json")) for operation in history],
            backups=_plain(
                BackupsResponse.of(
                    reloader.get_backups(), reloader.backup_count, reloader.current_hash
                ).model_dump(mode="json")
            ),
            live_config=None if live is None else redact(dump_revealed(live), find_secret_paths(live)),
            fleet=None,
        )


class HttpObserver:
    """A running service (``confledger serve`` or any app with the config routes), read over HTTP."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self._has_fleet: bool | None = None

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(PREFIX + path, headers=self.headers, params=params or None)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:300]}"
        return response.json()

    def settled(self) -> tuple[str | None, int]:
        status = self._get("/status")
        return status["running_operation_id"], int(status["log_head"])

    def has_fleet(self) -> bool:
        if self._has_fleet is None:
            paths = self.client.get("/openapi.json").json().get("paths", {})
            self._has_fleet = PREFIX + "/fleet" in paths
        return self._has_fleet

    def observe(self) -> Observed:
        status = self._get("/status")
        stats = self._get("/stats")
        stats.pop("listeners_registered", None)
        history: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            page = self._get(
                "/history", limit=_HISTORY_PAGE, **({} if before is None else {"before": before})
            )
            history.extend(page["operations"])
            before = page["next_before"]
            if before is None:
                break
        current = self.client.get(PREFIX + "/current", headers=self.headers)
        assert current.status_code in (200, 404), f"GET /current: {current.status_code}"
        live = current.json() if current.status_code == 200 else None
        return Observed(
            instance_id=status["instance_id"],
            current_hash=status["current_config_hash"],
            live_full_hash=None if live is None else live["full_hash"],
            log_head=int(status["log_head"]),
            running_operation_id=status["running_operation_id"],
            listeners=list(status["listeners"]),
            available_backups=int(status["available_backups"]),
            totals=status["reload_statistics"],
            drift=status["service_drift"],
            stats=stats,
            history=history,
            backups=self._get("/backups"),
            live_config=None if live is None else live["config"],
            fleet=self._get("/fleet") if self.has_fleet() else None,
        )


def wait_until_settled(
    observer: Observer, log: EventLog, *, timeout: float = 30.0, quiet: float = 0.3
) -> None:
    """Until no operation runs, the service has folded the log's head, and that stayed so for ``quiet``
    seconds (a file change or queued follow-up may still be on its way)."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    last_head = -1
    while time.monotonic() < deadline:
        running, folded = observer.settled()
        head = log.head()
        if running is None and folded == head and head == last_head:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet:
                return
        else:
            quiet_since = None
        last_head = head
        time.sleep(0.05)
    raise AssertionError(
        f"service not settled after {timeout} s: running {running}, folded {folded}, head {head}"
    )


# --- all of it ----------------------------------------------------------------------------------------------


def check_nothing_lost(
    log: EventLog,
    observers: Sequence[Observer],
    replies: Sequence[Reply] = (),
    *,
    backup_count: int = DEFAULT_BACKUP_COUNT,
    listed: int = DEFAULT_LISTED,
    live_instances: Collection[str] | None = None,
    fleet_check: Callable[[Mapping[str, Any], Expected], None] | None = None,
) -> Report:
    """Every rule, for a log and the live services on it (settle them first: ``wait_until_settled``)."""
    events = list(log.iter_events())
    report = check_log(log, replies, live_instances=live_instances, events=events)
    expected = fold_log(log, backup_count=backup_count, listed=listed, events=events)
    for observer in observers:
        observed = observer.observe()
        who = observed.instance_id
        assert observed.running_operation_id is None, (
            f"{who}: operation {observed.running_operation_id} still running"
        )
        assert observed.log_head == expected.head, (
            f"{who}: folded to {observed.log_head}, log head {expected.head}"
        )
        assert observed.current_hash == short(expected.applied_hash), (
            f"{who}: current {observed.current_hash}, last applied {short(expected.applied_hash)}"
        )
        assert observed.live_full_hash == expected.applied_hash, f"{who}: live config is not the last applied"
        assert observed.live_config == expected.live_config, (
            f"{who}: live config body differs from the stored one"
        )
        assert observed.stats == expected.stats, f"{who}: /stats differs from a fresh fold"
        assert observed.totals == {
            "total_operations": expected.stats["total_operations"],
            "success_rate": round(expected.stats["success_rate"], 6),
            "average_duration_ms": round(expected.stats["average_duration_ms"], 3),
        }, f"{who}: /status reload_statistics {observed.totals} differ from a fresh fold"
        assert observed.available_backups == expected.backups["backup_count"], f"{who}: available_backups"
        assert observed.backups == expected.backups, f"{who}: /backups differs from a fresh fold"
        assert observed.history == expected.history, f"{who}: /history differs from a fresh fold"
        listening = set(observed.listeners)
        assert observed.drift == {k: v for k, v in expected.drift.items() if k in listening}, (
            f"{who}: service drift {observed.drift} differs from a fresh fold {expected.drift}"
        )
        if observed.fleet is None:
            if "fleet" not in report.skipped:
                report.skipped.append("fleet")
        else:
            (fleet_check or check_fleet)(observed.fleet, expected)
    report.history_entries = len(expected.history)
    return report


def check_fleet(fleet: Mapping[str, Any], expected: Expected) -> None:
    """``GET /fleet`` at rest: the desired config is the last applied one (hash and position), the log
    head is the log's, and every instance still up has caught up: in sync on the desired hash, or
    drifted (its services refused it, which it reports), never lagging."""
    desired = short(expected.applied_hash)
    assert fleet["desired_hash"] == desired, f"/fleet desired {fleet['desired_hash']}, log {desired}"
    assert fleet["desired_position"] == expected.applied_position, (
        f"/fleet desired at {fleet['desired_position']}, last config.applied at {expected.applied_position}"
    )
    assert fleet["log_head"] == expected.head, f"/fleet log_head {fleet['log_head']}, log {expected.head}"
    for instance in fleet["instances"]:
        state = instance["state"]
        if state == "gone":
            continue
        assert state in ("in_sync", "drifted"), f"/fleet instance at rest is {state}: {instance}"
        if state == "in_sync":
            assert instance["applied_hash"] == desired, f"/fleet instance {instance} is not on {desired}"
