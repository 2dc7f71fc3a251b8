"""Reload and rollback as recorded operations: the write side of confledger.

``OperationRunner`` turns one trigger into one operation in the log, in a straight line:

1. read the candidate: the source (reload: ``config.loaded`` | ``config.load_failed``) or the stored
   body of the target (rollback), and validate it (``validation.passed`` | ``validation.failed``);
2. record the start: ``operation.started`` and the events above are committed before the first service
   hears of the change, so a crash mid-notification leaves an interrupted operation in the log rather
   than services silently running a config it never recorded;
3. notify the services in priority order (``service.notified``, forward);
4. ``store.decision.decide`` says what the answers add up to: applied, failed, or rolled back by the
   threshold, and which services get their previous config back (``service.notified``, compensate);
5. record the outcome in a second transaction: ``config.rolled_back``, ``config.applied`` (the one event
   that changes the current config), ``operation.completed``.

A reload that would apply a config an operator rolled back away from ends after its validation, before
any service hears of it, unless forced (``store.pins``: reason ``rolled_back_hash``). A client-named source
is read under its guard (``store.sources.reading.SourceGuard``): the opened file must lie in an allowed
directory.

An operation that ends before any service is called (a load or validation failure, no change, a dry run,
or no services registered) is committed in one transaction. ``config.applied`` is appended with the head
the operation started from: if another instance applied a config meanwhile, the log refuses it, and the
services that accepted get the old config back. The caller's answer (``ReloadOperation``) is folded from
the events the operation appended (``store.outcome``), with the same function history uses.

At start, the services registered with ``notify_on_start`` get the config restored from the log
(``old=None``), recorded as ``service.notified`` with direction ``start`` outside any operation.

Step 1, reading and judging the candidate, is ``store.candidate.CandidateReader``; following the fleet
(what other instances decided, and an operation's catch-up before it decides) is
``store.following.FleetFollowing``; compensating as decided and recording the outcome (steps 4 and 5)
is ``store.concluding.Concluding``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
from opentelemetry import trace

from confledger.store import failpoints
from confledger.store.calls import TurnPlan, UserCalls
from confledger.store.candidate import CandidateReader
from confledger.store.concluding import Concluding
from confledger.store.decision import Decision, FleetVerdict, decide
from confledger.store.durations import elapsed_ms
from confledger.store.errors import (
    ConcurrencyConflict,
    ConfigBodyMismatch,
    ConfigRefusedHere,
    FleetLockBusy,
    InitialConfigError,
    IntegrityFailed,
    SecretKeyError,
    UnknownConfigHash,
)
from confledger.store.events import (
    ConfigApplied,
    EventPayload,
    InstanceApplied,
    InstanceStarted,
    InstanceStopped,
    NewEvent,
    OperationKind,
    OperationRejected,
    RecordedEvent,
    Trigger,
)
from confledger.store.fleet import FleetLock, fleet_lock_for
from confledger.store.following import FleetFollowing
from confledger.store.ids import uuid7
from confledger.store.log import EventLog, PreparedConfig, VerifyReport
from confledger.store.operation_record import (
    ActiveConfig,
    Change,
    Ended,
    Operation,
    Request,
    arrival,
    closings_of_interrupted,
    default_actor,
    failures_of,
    finish,
    notified,
    trace_id_of,
)
from confledger.store.outcome import ReloadOperation, build_operation
from confledger.store.pins import RollbackPins
from confledger.store.secrets import find_secret_paths
from confledger.store.services import (
    NotifyResult,
    ServiceRegistry,
    notification_plan,
    notify_services,
)
from confledger.store.source_state import SourceState, describe_source, last_read
from confledger.store.sources.reading import GuardedSource, quiet_remaining
from confledger.store.steps import Notify, RunValidators, Steps, Work, drive
from confledger.store.validation import ValidationPipeline

__all__ = ["ActiveConfig", "OperationRunner", "default_actor"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

IN_PROGRESS_MESSAGE = "Another reload operation is in progress"
# A SIGHUP's reload waits until the config file has been still this long (the file watcher's settle
# time), and reads a file that never stops changing after the longer bound (the watcher's too).
SOURCE_QUIET_S = 0.1
SOURCE_QUIET_MAX_S = 3.0
FLEET_BUSY_REASON = "fleet_lock_busy"


class OperationRunner(FleetFollowing, Concluding):
    """Runs reloads and rollbacks one at a time (one slot for both) and records every step in ``log``."""

    def __init__(
        self,
        log: EventLog,
        *,
        pipeline: ValidationPipeline,
        services: ServiceRegistry,
        calls: UserCalls,
        config_source: str | Path | None,
        enable_automatic_rollback: bool,
        rollback_threshold: float,
        max_source_bytes: int,
        callback_timeout: float,
        notify_on_start: bool,
        version: str,
        tracer: trace.Tracer | None = None,
        fleet_lock: FleetLock | None = None,
        fleet_lock_wait: float,
    ) -> None:
        self.log = log
        self.pipeline = pipeline
        # One hash scheme for what a reload reads and what the log stores: the log's (keyed) one.
        pipeline.use_hasher(log.hash_config)
        self.services = services
        self.calls = calls
        self.config_source = None if config_source is None else str(config_source)
        self.enable_automatic_rollback = enable_automatic_rollback
        self.rollback_threshold = rollback_threshold
        self.max_source_bytes = max_source_bytes
        self.callback_timeout = callback_timeout
        self.notify_on_start = notify_on_start
        self.version = version
        self.tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        self.active: ActiveConfig | None = None
        # The config an operation is appending as applied: the projections fold that append (on its
        # thread) and materialise the current config through ``config_for_hash``.
        self._applying: ActiveConfig | None = None
        self._known_head = 0
        self._running: uuid.UUID | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._followup_queued = False
        self.pins = RollbackPins()
        # Called on the loop with each operation of this instance that changed the fleet's config (its
        # ``config.applied`` recorded): the fleet threshold judges the change from there.
        self.on_applied: Callable[[ReloadOperation], None] | None = None
        # Step 1, the candidate: read, validated, and judged against the current config.
        self._candidates = CandidateReader(
            log,
            pipeline=pipeline,
            services=services,
            pins=self.pins,
            max_source_bytes=max_source_bytes,
        )
        self._restored_position = 0
        # The last reload that read the configured source (from the log at start, then this instance's).
        self._source_read: ReloadOperation | None = None
        # --- the fleet (store.fleet, store.follower) ---
        self.fleet_lock = fleet_lock if fleet_lock is not None else fleet_lock_for(log.engine)
        self.fleet_lock_wait = fleet_lock_wait
        # The last position this instance has followed: every config.applied up to it was applied here
        # (or decided here, or superseded by the config restored at start).
        self.followed = 0
        # Following and deciding take turns: a change is decided only once every change before it has
        # been applied here, and a followed change never reaches the services mid-operation.
        # fast_acquire: a free lock is taken without a trip round the loop, which on a busy loop waits
        # behind every request ready to run. No one starves: every holder yields inside (thread hops).
        self._apply_lock = anyio.Lock(fast_acquire=True)
        # Events of a followed change whose services were told but whose record failed (the database
        # went away): written before anything else is followed, so no service hears a change twice.
        self._unrecorded: list[NewEvent] = []
        # Called (in a worker thread) after following moved on, so the projections fold what others wrote.
        self.after_follow: Callable[[], object] | None = None
        # The closing of an operation whose outcome the log refused to take (the database went away
        # between its two commits): appended before anything else once the log takes writes again.
        self._unclosed: list[NewEvent] = []
        self._unclosed_lock = threading.Lock()
        self._positions_lock = threading.Lock()

    @property
    def running_operation_id(self) -> str | None:
        return None if self._running is None else str(self._running)

    def source_state(self) -> SourceState | None:
        """What the configured source held when last read, against the applied config (no I/O)."""
        applied = None if self.active is None else self.active.hash
        return describe_source(self.config_source, self._source_read, applied, self.pins)

    def config_for_hash(self, full_hash: str) -> Any | None:
        """The typed config for the hash being applied or the current one (None for any other hash)."""
        for known in (self._applying, self.active):
            if known is not None and known.hash == full_hash:
                return known.config
        return None

    async def _append(
        self,
        events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Sequence[PreparedConfig] = (),
    ) -> list[RecordedEvent]:
        # Every database call goes to a worker thread: an fsync must never stall the event loop.
        append = functools.partial(self._append_now, events, expected_head=expected_head, configs=configs)
        return await anyio.to_thread.run_sync(append)

    def _append_now(
        self,
        events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Sequence[PreparedConfig] = (),
        durable: bool = True,
    ) -> list[RecordedEvent]:
        """Append ``events`` (blocking), after any closing an unrecorded outcome left waiting."""
        if self._unclosed:
            self._close_unrecorded()
        recorded = self.log.append_recorded(
            events, expected_head=expected_head, configs=configs, durable=durable
        )
        if recorded:
            self._noted_own(recorded)
        return recorded

    def _noted_own(self, recorded: Sequence[RecordedEvent]) -> None:
        """Our own events hold nothing to follow: when they directly follow what was followed, following
        moves past them, so the next operation's catch-up is one head read instead of re-reading and
        decoding the previous operation's events (and refolding projections that already folded them)."""
        # Appends run in worker threads (an operation's, and an event recorded beside it): the
        # read-then-move of the positions is one step under the lock.
        with self._positions_lock:
            self._known_head = max(self._known_head, recorded[-1].position)
            if recorded[0].position == self.followed + 1:
                self.followed = max(self.followed, recorded[-1].position)
        self.pins.appended(recorded)  # a rollback pins its config at once, before any catch-up

    def _close_unrecorded(self) -> None:
        """Append the closing an unrecorded outcome left waiting (raises while the log still refuses)."""
        # Taken under the lock: a second append meanwhile must not write the same closing again.
        with self._unclosed_lock:
            closing, self._unclosed = self._unclosed, []
        try:
            recorded = self.log.append_recorded(closing)
        except BaseException:
            with self._unclosed_lock:
                self._unclosed = closing + self._unclosed
            raise
        self._noted_own(recorded)

    # --- start-up and shut-down ------------------------------------------------------------------------

    async def start(self) -> ReloadOperation | None:
        """Close interrupted operations, restore the current config from the log, record the start.

        With an empty log, the source is loaded and applied as the initial configuration and that
        operation is returned; if it is not applied, ``InitialConfigError`` is raised (the failed
        operation stays in the log), except when the source does not exist yet: then the start goes on
        with no config (a warning is logged, readiness answers 503) until a reload applies one.
        Restoring never reads the source: the log is the truth. A restored config is then handed to the
        services that want it at start (``notify_on_start``), after ``instance.started``.
        """
        try:
            return await self._start()
        except BaseException:
            # The start's reload took the fleet's lock, which keeps its file (or session) open between
            # operations; no stop() follows a start that raised, so each retried start kept one more.
            with anyio.CancelScope(shield=True):  # a cancelled start lets go of it too
                await anyio.to_thread.run_sync(self.fleet_lock.close)
            raise

    async def _start(self) -> ReloadOperation | None:
        if self.log.integrity_failure is not None:
            # Reads only: the config the log names is restored if its body still hashes to its hash,
            # and nothing is appended (no closing of operations, no instance.started).
            # A current body that does not match its hash raises: there is no config to serve.
            with contextlib.suppress(SecretKeyError):
                self.active = await anyio.to_thread.run_sync(self._restore_from_log)
            return None
        await self._close_interrupted()
        result: ReloadOperation | None = None
        try:
            self.active = await anyio.to_thread.run_sync(self._restore_from_log)
        except ConfigBodyMismatch as exc:
            await self._refuse_forged_body(exc)
        restored = self.active
        if self.active is None and self.config_source is not None:
            result = await self.reload(Trigger.STARTUP, actor="system")
            if result.reason == "not_found":
                # Not yet there (a config mounted after the service starts): not ready, said out loud.
                logger.warning(
                    "config source %s does not exist yet; no configuration until a reload applies one",
                    self.config_source,
                )
            elif not result.success:
                details = "; ".join(result.validation_errors[:3]) or result.error_message or result.message
                raise InitialConfigError(
                    f"the initial configuration from {self.config_source} was not applied "
                    f"({result.reason or result.status.value}): {details}",
                    operation_id=result.operation_id,
                    reason=result.reason,
                )
        started = InstanceStarted(
            version=self.version,
            host=socket.gethostname(),
            pid=os.getpid(),
            current_hash=None if self.active is None else self.active.hash,
            config_source=self.config_source,
        )
        await self._append([NewEvent(started)])
        if restored is not None:
            await self._notify_at_start(restored)
        return result

    async def _refuse_forged_body(self, exc: ConfigBodyMismatch) -> None:
        """The current config's stored body was edited: recorded (the chain itself verified), not applied,
        appends refused from now on, and the start fails: there is no config it could serve. A body of a
        newer release (``HashSchemeTooNew``) fails the start the same way, unrecorded: it is no edit."""
        logger.error("integrity check failed at start-up: %s", exc.message)
        report = VerifyReport(False, 0, self._known_head, None, exc.message, exc.code, exc.config_hash)
        await anyio.to_thread.run_sync(self.log.record_integrity_failure, report)
        raise exc

    async def _notify_at_start(self, restored: ActiveConfig) -> None:
        """Hand the restored config to each service that asks for it (old=None); it changes no config.

        A refusal is logged and recorded (the stats fold then shows the service as drifted: it runs no
        config the log knows of), and the instance starts anyway: its current config is the log's.
        """
        specs = self.services.notified_at_start(default=self.notify_on_start)
        results = await self._perform(Notify(specs, None, restored.config, restored.secret_values(), "start"))
        for refused in (result for result in results if not result.accepted):
            logger.warning(
                "service %s did not accept the restored config %s at start: %s",
                refused.service,
                restored.hash[:16],
                refused.error,
            )
        events = [NewEvent(notified(result, "start", restored.hash)) for result in results]
        # The fleet view learns what this instance runs from here, whether or not a service asked.
        events.append(
            NewEvent(
                InstanceApplied(
                    hash=restored.hash,
                    position=self._restored_position,
                    role="start",
                    outcome="failed" if any(not result.accepted for result in results) else "applied",
                    failures=failures_of(results),
                )
            )
        )
        await self._append(events)

    async def stop(self, reason: str = "shutdown") -> None:
        try:
            if self.log.integrity_failure is None:
                await self._append([NewEvent(InstanceStopped(reason=reason))])
        finally:
            await anyio.to_thread.run_sync(self.fleet_lock.close)

    async def record(self, payload: EventPayload, *, actor: str = "system") -> None:
        """Append one event outside any operation (instance and file-watch lifecycle)."""
        await self._append([NewEvent(payload, actor=actor)])

    def _restore_from_log(self) -> ActiveConfig | None:
        # The head first, the config.applied after: one that lands between the two reads is restored
        # here, and following starts past it, so it is applied once, not twice.
        self._known_head = self.log.head()
        self.followed = max(self.followed, self._known_head)
        self.pins.catch_up(self.log)
        if self._source_read is None:
            self._source_read = last_read(self.log, self.config_source)
        applied = self.log.last_of_type(ConfigApplied.event_type)
        if applied is None or not isinstance(applied.payload, ConfigApplied):
            return None
        self._restored_position = applied.position
        self.followed = max(self.followed, applied.position)
        try:
            stored = self.log.get_config(applied.payload.hash)
        except UnknownConfigHash as exc:
            # The table refuses deletes: a hand that dropped that guard took the body the log names as
            # the config to serve. As for an edited body, there is none this instance can trust.
            raise ConfigBodyMismatch(
                f"the current config {applied.payload.hash[:16]}, applied at position {applied.position}, "
                "has no stored body: its row was deleted in the database",
                config_hash=applied.payload.hash,
            ) from exc
        config, normalised, errors = self.pipeline.parse(stored.body)
        if config is None or normalised is None:
            raise ConfigRefusedHere(
                f"the current config {applied.payload.hash[:16]} in the log no longer passes the config model "
                f"({'; '.join(errors[:3])}); fix the model or roll back with the CLI"
            )
        return ActiveConfig(applied.payload.hash, config, normalised, frozenset(find_secret_paths(config)))

    async def refresh(self) -> None:
        """Re-read the current config from the log (after another writer applied one)."""
        restored = await anyio.to_thread.run_sync(self._restore_from_log)
        if restored is not None and (self.active is None or restored.hash != self.active.hash):
            self.active = restored

    async def _close_interrupted(self) -> None:
        open_operations = await anyio.to_thread.run_sync(self.log.open_operations)
        closing = closings_of_interrupted(open_operations, self.log.instance_id)
        if closing:
            await self._append(closing)

    # --- requests that never become operations -------------------------------------------------------

    async def reject_request(
        self,
        *,
        kind: OperationKind,
        trigger: Trigger,
        actor: str,
        reason: str,
        message: str,
        source: str | None = None,
        client: str | None = None,
        running_operation_id: str | None = None,
        received: float | None = None,
    ) -> ReloadOperation:
        """Record a request refused before it became an operation (another one runs, a source not allowed).

        ``received``: when it arrived (``time.perf_counter()``; default now), so the refusal says how long
        the request was kept: a request refused for the fleet's lock has waited the whole lock wait."""
        received, received_at = arrival(received)
        rejected = OperationRejected(
            kind=kind,
            trigger=trigger,
            reason=reason,
            message=message,
            running_operation_id=running_operation_id,
            source=source,
            client=client,
            started_at=received_at,
            total_ms=elapsed_ms(received),
        )
        return build_operation(await self._append([NewEvent(rejected, actor=actor, operation_id=uuid7())]))

    async def request_reload(self, trigger: Trigger, *, actor: str | None = None) -> ReloadOperation | None:
        """A reload asked for by a signal or the file watcher: bursts coalesce into one follow-up.

        If an operation is running, one follow-up reload is queued to run after it (later requests
        join that one and return None), so a change made during a reload is never missed and a
        burst of 50 SIGHUPs costs at most two reloads. A SIGHUP's reload also waits (queued the same
        way) until the configured file has been still for ``SOURCE_QUIET_S``.
        """
        if self._followup_queued:
            return None
        self._followup_queued = True
        try:
            deadline: float | None = None  # from the first look at the file, not from the request
            while True:
                while self._running is not None:
                    await self._idle.wait()
                if trigger is not Trigger.SIGNAL or self.config_source is None:
                    break
                # A SIGHUP says the file changed, not that it is complete: one being rewritten in place
                # is read once it has been still as long as the watcher waits. The wait holds no slot,
                # so API requests meanwhile run; the slot is taken with no await after the last look.
                if deadline is None:
                    deadline = anyio.current_time() + SOURCE_QUIET_MAX_S
                left = await anyio.to_thread.run_sync(quiet_remaining, self.config_source, SOURCE_QUIET_S)
                if left > 0 and anyio.current_time() < deadline:
                    await anyio.sleep(left)
                elif self._running is None:
                    break
        finally:
            self._followup_queued = False
        return await self.reload(trigger, actor=actor)

    # --- the two operations ----------------------------------------------------------------------------

    async def reload(
        self,
        trigger: Trigger = Trigger.MANUAL,
        *,
        config_source: str | Path | GuardedSource | None = None,
        force: bool = False,
        dry_run: bool = False,
        actor: str | None = None,
        client: str | None = None,
        trace_id: str | None = None,
        received: float | None = None,
    ) -> ReloadOperation:
        """Reload from ``config_source`` (default: the configured source).

        A ``GuardedSource`` (a client named the file: ``api.paths.resolve_source``) is read only if the
        file opened lies inside its allowed directories; otherwise the load fails with
        ``source_not_allowed``. Without ``force``, a config rolled back away from is not applied again
        (reason ``rolled_back_hash``). ``received``: when the request arrived (``time.perf_counter()``;
        default now), where ``total_duration_ms`` starts.
        """
        source = str(config_source) if config_source is not None else self.config_source
        received, received_at = arrival(received)
        request = Request(
            OperationKind.RELOAD,
            trigger,
            actor or default_actor(trigger),
            client,
            trace_id,
            source=source,
            guard=config_source.guard if isinstance(config_source, GuardedSource) else None,
            force=force,
            dry_run=dry_run,
            received=received,
            received_at=received_at,
        )
        attributes = {
            "confledger.force": force,
            "confledger.dry_run": dry_run,
            "confledger.source": source or "",
        }
        return await self._operate(request, attributes)

    async def rollback(
        self,
        target_hash: str | None = None,
        *,
        trigger: Trigger = Trigger.MANUAL,
        actor: str | None = None,
        client: str | None = None,
        trace_id: str | None = None,
        received: float | None = None,
        fleet_verdict: FleetVerdict | None = None,
    ) -> ReloadOperation:
        """Return to ``target_hash`` (any unique prefix of any applied hash) or the previous config;
        ``fleet_verdict``: the fleet threshold's, for the rollback it asks for."""
        received, received_at = arrival(received)
        request = Request(
            OperationKind.ROLLBACK,
            trigger,
            actor or default_actor(trigger),
            client,
            trace_id,
            target=target_hash,
            fleet_verdict=fleet_verdict,
            received=received,
            received_at=received_at,
        )
        return await self._operate(request, {"confledger.target": (target_hash or "")[:64]})

    async def _operate(self, request: Request, attributes: dict[str, Any]) -> ReloadOperation:
        failure = self.log.integrity_failure
        if failure is not None:
            # Nothing is chained onto a log that failed its check, not even the refusal: said in the
            # answer (503 integrity_failed), in /readyz and in the service's log instead.
            raise IntegrityFailed(
                f"{request.kind.value} refused: the log failed its integrity check ({failure.code}); "
                + IntegrityFailed.recovery_for(failure.code),
                reason=failure.code or "integrity_failed",
            )
        # The operation span is current while it runs: the validator and callback spans nest under it,
        # and under the caller's trace when an HTTP request carried a traceparent.
        with self.tracer.start_as_current_span(
            f"confledger.{request.kind.value}",
            attributes={"confledger.trigger": request.trigger.value, **attributes},
            record_exception=False,
        ) as span:
            if self._running is not None:
                result = await self.reject_request(
                    kind=request.kind,
                    trigger=request.trigger,
                    actor=request.actor,
                    reason="operation_in_progress",
                    message=f"{IN_PROGRESS_MESSAGE} ({self._running})",
                    source=request.source,
                    client=request.client,
                    running_operation_id=self.running_operation_id,
                    received=request.received,
                )
            else:
                operation_id = uuid7()
                # The slot is taken with no await since the check above: two callers cannot both get it.
                idle = anyio.Event()
                self._running, self._idle = operation_id, idle
                try:
                    result = await self._operate_in_turn(operation_id, request, span)
                finally:
                    self._free_slot(operation_id)
                    idle.set()
            finish(span, result)
        changed = result.new_config_hash is not None and result.new_config_hash != result.previous_config_hash
        if self.on_applied is not None and result.success and changed and not result.dry_run:
            self.on_applied(result)
        return result

    async def _operate_in_turn(
        self, operation_id: uuid.UUID, request: Request, span: trace.Span
    ) -> ReloadOperation:
        """Run the operation's straight line (``_steps``) under this instance's apply lock.

        409 (``fleet_lock_busy``, naming the holder) only when another operation held the fleet's turn
        past the wait budget.
        """
        async with self._apply_lock:
            try:
                return await self._drive(self._steps(operation_id, request, span))
            except FleetLockBusy as busy:
                held_by = busy.holder or ""
                return await self.reject_request(
                    kind=request.kind,
                    trigger=request.trigger,
                    actor=request.actor,
                    reason=FLEET_BUSY_REASON,
                    message=f"{IN_PROGRESS_MESSAGE} in the fleet ({held_by or 'holder unknown'})",
                    source=request.source,
                    client=request.client,
                    running_operation_id=held_by.partition("@")[0] or None,
                    received=request.received,
                )

    def _steps(self, operation_id: uuid.UUID, request: Request, span: trace.Span) -> Steps[ReloadOperation]:
        """The operation from start to end, as blocking code (``store.steps``): take the fleet's turn
        (its lock), apply whatever the fleet decided before it, then read, validate, notify, decide
        and record.

        So changes through any instance happen in order: the second of two sequential changes starts
        from the first, wherever each was made.
        """
        lease = self.fleet_lock.acquire(f"{operation_id}@{self.log.instance_id}", self.fleet_lock_wait)
        try:
            yield from self._follow_to_head()
            operation = Operation(
                operation_id,
                request,
                trace_id=request.trace_id or trace_id_of(span),
                previous=self.active,
                expected_head=self._known_head,
            )
            yield from self._run(operation, span)
            result = build_operation(operation.recorded, listed=self.pipeline.max_items)
            if request.kind is OperationKind.RELOAD and request.source == self.config_source:
                self._source_read = result
            # Free once recorded, as whoever sees the operation in the projections may already ask for
            # the next: that one then waits for the apply lock (a moment), not refused while the fleet
            # lock is released and the answer travels back to the loop.
            self._free_slot(operation_id)
            return result
        finally:
            lease.release()

    def _free_slot(self, operation_id: uuid.UUID) -> None:
        """Give up the operation slot if ``operation_id`` still holds it (from its thread or the loop).

        The check and the clear need no lock: the loop takes the slot only when it is free, so between
        them no other operation can have taken it."""
        if self._running == operation_id:
            self._running, self._applying = None, None

    def _run(self, operation: Operation, span: trace.Span) -> Steps[None]:
        try:
            candidates = self._candidates
            if operation.request.kind is OperationKind.RELOAD:
                outcome = yield from candidates.source_steps(operation, span)
            else:
                outcome = yield from candidates.target_steps(operation, span)
            change = candidates.change(operation, outcome, candidates.pin_for(operation, outcome))
        except Ended as ended:
            self._record_now(operation, *ended.events)
            return
        services = self.services.ordered()
        if services:
            failpoints.hit("before_start_append")
            # Committed before the first service hears of the change, so a crash of this process from
            # here on leaves an open operation that the next start closes as interrupted. On SQLite not
            # waited onto the disk: the outcome's commit, which every caller waits for, makes both
            # durable, and a power cut before it loses the start with everything the operation did (its
            # services run on this machine) and answered nobody. PostgreSQL can lose a commit while
            # this process lives on (its outcome, queued until the log takes writes again, would then
            # close an operation the log never saw start): there it is durable at once.
            self._record_now(operation, durable=False)
            failpoints.hit("after_start_append")
        previous = operation.previous
        secrets = [*change.active.secret_values(), *([] if previous is None else previous.secret_values())]
        apply_started = time.perf_counter()
        old = None if previous is None else previous.config
        forward = Notify(services, old, change.active.config, secrets, "forward")
        results: list[NotifyResult] = (yield forward) if services else []
        decision = self._decide(operation, change, results)
        try:
            yield from self._conclude(operation, change, services, results, decision, secrets, apply_started)
        except ConcurrencyConflict as conflict:
            decision = self._decide(operation, change, results, conflict=conflict.message)
            yield from self._conclude(operation, change, services, results, decision, secrets, apply_started)
            # A writer that skipped the fleet lock applied a config: this instance follows it now (its
            # services hear of it), so the next operation starts from it.
            yield from self._follow_to_head()

    # --- 3. notifying, 4. deciding, 5. recording the outcome -----------------------------------------

    async def _perform(self, work: Work) -> Any:
        """Run on the loop the user code a straight line yielded for (validators, or a notification of
        services) when its thread could not (``store.steps.drive``)."""
        if isinstance(work, RunValidators):
            return await self.pipeline.call_validators(work.model, calls=self.calls, tracer=self.tracer)
        return await notify_services(
            work.services,
            work.old,
            work.new,
            calls=self.calls,
            default_timeout=self.callback_timeout,
            tracer=self.tracer,
            direction=work.direction,
            secret_values=work.secrets,
        )

    def _plan(self, work: Work) -> TurnPlan | None:
        """The user code a straight line yielded for, as one turn its own thread can make (all sync)."""
        if isinstance(work, RunValidators):
            return self.pipeline.turn_plan(work.model, self.tracer)
        return notification_plan(
            work.services,
            work.old,
            work.new,
            default_timeout=self.callback_timeout,
            tracer=self.tracer,
            direction=work.direction,
            secret_values=work.secrets,
        )

    def _drive(self, steps: Steps[T]) -> Awaitable[T]:
        """``steps`` run by ``store.steps.drive``, whose loop looks at a line's calls as often as the
        shortest timeout registered now (a service registered later with a shorter one is the loop's)."""
        timeouts = [self.pipeline.timeout_of(spec) for spec in self.pipeline.validators]
        timeouts += [spec.timeout or self.callback_timeout for spec in self.services.ordered()]
        return drive(steps, self._perform, self._plan, self.calls, shortest=min(timeouts, default=math.inf))

    def _decide(
        self,
        operation: Operation,
        change: Change,
        results: list[NotifyResult],
        *,
        conflict: str | None = None,
    ) -> Decision:
        return decide(
            kind=operation.request.kind,
            target_hash=change.active.hash,
            results=results,
            threshold=self.rollback_threshold,
            automatic_rollback=self.enable_automatic_rollback,
            has_previous=operation.previous is not None,
            conflict=conflict,
            fleet_verdict=operation.request.fleet_verdict,
        )

    def _record_now(
        self,
        operation: Operation,
        *events: EventPayload,
        expected_head: int | None = None,
        beside: Sequence[NewEvent] = (),
        durable: bool = True,
    ) -> None:
        """Append the operation's pending events and ``events`` (and ``beside``, events outside the
        operation that must commit with it) in one transaction."""
        batch = [
            NewEvent(payload, actor=operation.request.actor, operation_id=operation.id)
            for payload in (*operation.pending, *events)
        ]
        recorded = self._append_now(
            [*batch, *beside], expected_head=expected_head, configs=operation.configs, durable=durable
        )
        # Cleared only once written: a refused append (a conflict) is retried with the same start.
        operation.pending, operation.configs = [], []
        operation.recorded += recorded[: len(batch)]
