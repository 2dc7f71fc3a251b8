"""Reload and rollback as recorded operations: the write side of confledger.

``OperationRunner`` turns one trigger into one operation in the log:

    operation.started                       durable before any service hears of the change
    config.loaded | config.load_failed      (rollbacks load from the log instead of a source)
    config.unchanged                        no-op reload without force
    validation.passed | validation.failed
    service.notified ...                    forward, in priority order; then compensations if abandoned
    config.rolled_back                      manual rollback, or automatic when too few services accepted
    config.applied                          the one event that changes the current config
    operation.completed                     exactly once per operation

Everything the outcome depends on is committed in one transaction, and ``ReloadOperation`` - what the
caller gets back - is built by folding those same events (``store.outcome``), so an answer can never
disagree with history.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from opentelemetry import trace

from confledger.store.batch import NO_SPANS, CallOutcome, SyncCall, span_starter
from confledger.store.diff import changed_paths
from confledger.store.errors import (
    ConcurrencyConflict,
    ConfigLookupError,
    ConfledgerError,
    SecretKeyError,
    SourceError,
)
from confledger.store.events import (
    ConfigApplied,
    ConfigLoaded,
    ConfigLoadFailed,
    ConfigRolledBack,
    ConfigUnchanged,
    EventPayload,
    InstanceStarted,
    InstanceStopped,
    NewEvent,
    OperationCompleted,
    OperationKind,
    OperationRejected,
    OperationStarted,
    OperationStatus,
    RecordedEvent,
    ServiceNotified,
    ServiceOutcome,
    Trigger,
    ValidationFailed,
    ValidationPassed,
)
from confledger.store.ids import uuid7
from confledger.store.log import EventLog, PreparedConfig
from confledger.store.outcome import ReloadOperation, build_operation
from confledger.store.secrets import ConfigPath, find_secret_paths
from confledger.store.services import NotifyResult, ServiceRegistry, ServiceSpec
from confledger.store.sources import LoadedSource, load_source
from confledger.store.validation import ValidationOutcome, ValidationPipeline, values_at

__all__ = ["ActiveConfig", "OperationRunner", "default_actor"]

logger = logging.getLogger(__name__)

INITIAL_CHANGE = "initial_configuration"
NO_CHANGES_MESSAGE = "No configuration changes detected"
IN_PROGRESS_MESSAGE = "Another reload operation is in progress"
_CONFIG_CACHE_SIZE = 16
_COLLECTED_MAX = 64


def default_actor(trigger: Trigger) -> str:
    if trigger is Trigger.SIGNAL:
        return "signal"
    if trigger is Trigger.FILE_WATCH:
        return "file_watch"
    return "system"


@dataclass(frozen=True, slots=True)
class ActiveConfig:
    """The config this instance runs: what callbacks get as ``old`` and what a reload is compared with."""

    hash: str
    config: Any
    body: dict[str, Any]
    secret_paths: frozenset[ConfigPath]
    position: int

    def secret_values(self) -> list[str]:
        return values_at(self.body, self.secret_paths)


@dataclass
class _Timer:
    started: float

    def ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class OperationRunner:
    """Runs reloads and rollbacks one at a time and records every step in ``log``."""

    def __init__(
        self,
        log: EventLog,
        *,
        pipeline: ValidationPipeline,
        services: ServiceRegistry,
        config_source: str | Path | None = None,
        enable_automatic_rollback: bool = True,
        rollback_threshold: float = 0.5,
        max_source_bytes: int = 1_048_576,
        version: str = "0",
        tracer: trace.Tracer | None = None,
    ) -> None:
        if not 0.0 <= rollback_threshold <= 1.0:
            raise ValueError("rollback_threshold must be between 0 and 1")
        self.log = log
        self.pipeline = pipeline
        self.services = services
        self.config_source = None if config_source is None else str(config_source)
        self.enable_automatic_rollback = enable_automatic_rollback
        self.rollback_threshold = rollback_threshold
        self.max_source_bytes = max_source_bytes
        self.version = version
        self.tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        self.active: ActiveConfig | None = None
        self._known_head = 0
        self._running: uuid.UUID | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._followup_queued = False
        self._had_content: dict[str, bool] = {}
        self._config_cache: dict[str, Any] = {}
        # The events each operation of this runner appended, as the log recorded them: its answer is
        # folded from these instead of being read back (see _operation_result).
        self._collected: dict[uuid.UUID, list[RecordedEvent]] = {}
        self._prepared: dict[tuple[str | None, frozenset[ConfigPath], int], PreparedConfig] = {}
        self.on_active_changed: list[Callable[[ActiveConfig], None]] = []
        # Where a finished operation may already be folded (the reloader points this at its history):
        # its answer is then that entry, instead of folding the same events a second time.
        self.folded_operation: Callable[[str], ReloadOperation | None] | None = None

    # --- helpers ---------------------------------------------------------------------------------------

    async def _append(
        self,
        events: Sequence[NewEvent],
        *,
        expected_head: int | None = None,
        configs: Iterable[PreparedConfig] = (),
    ) -> list[int]:
        return self._appended(await self._append_recorded(events, expected_head, list(configs)))

    async def _append_recorded(
        self, batch: Sequence[NewEvent], expected_head: int | None, configs: Sequence[PreparedConfig]
    ) -> list[RecordedEvent]:
        # Every database call goes to a worker thread: an fsync must never stall the event loop.
        return await anyio.to_thread.run_sync(
            lambda: self.log.append_recorded(batch, expected_head=expected_head, configs=configs)
        )

    def _appended(self, recorded: Sequence[RecordedEvent]) -> list[int]:
        """Loop-side bookkeeping for events this runner appended (from any thread)."""
        if recorded:
            self._known_head = max(self._known_head, recorded[-1].position)
        for event in recorded:
            if event.operation_id is not None:
                bucket = self._collected.get(event.operation_id)
                if bucket is not None:
                    bucket.append(event)
        return [event.position for event in recorded]

    async def _prepare(
        self, body: dict[str, Any], secret_paths: frozenset[ConfigPath], digest: str | None
    ) -> PreparedConfig:
        # Sealing encrypts every secret and hashes the body again. Bodies are content-addressed, so one
        # this runner has sealed before is as good sealed again: reuse it, with no worker-thread hop.
        key = (digest, secret_paths, id(self.log.cipher))
        prepared = self._prepared.get(key) if digest is not None else None
        if prepared is None:
            prepared = await anyio.to_thread.run_sync(lambda: self.log.prepare_config(body, secret_paths))
            if prepared.hash == digest:
                self._prepared[key] = prepared
                while len(self._prepared) > _CONFIG_CACHE_SIZE:
                    del self._prepared[next(iter(self._prepared))]
        return prepared

    def _new_operation_id(self) -> uuid.UUID:
        operation_id = uuid7()
        # Entries left by operations that ended in an exception are dropped; a dropped entry only
        # means that operation's answer is read back from the log.
        while len(self._collected) >= _COLLECTED_MAX:
            del self._collected[next(iter(self._collected))]
        self._collected[operation_id] = []
        return operation_id

    async def _operation_result(self, operation_id: uuid.UUID) -> ReloadOperation:
        # Every event of an operation is appended by this runner, after its id was registered, so the
        # collected list is exactly what read_operation would return - without a database round trip.
        events = self._collected.pop(operation_id, None)
        if events and self.folded_operation is not None:
            folded = self.folded_operation(str(operation_id))
            # The same fold of the same events, once they include the last one this runner appended.
            if folded is not None and folded.last_position == events[-1].position:
                return folded
        if not events:
            events = await anyio.to_thread.run_sync(self.log.read_operation, operation_id)
        return build_operation(events)

    def _set_active(self, active: ActiveConfig) -> None:
        self.active = active
        self._remember(active.hash, active.config)
        for listener in list(self.on_active_changed):
            listener(active)

    def _remember(self, full_hash: str, config: Any) -> None:
        self._config_cache.pop(full_hash, None)
        self._config_cache[full_hash] = config
        while len(self._config_cache) > _CONFIG_CACHE_SIZE:
            del self._config_cache[next(iter(self._config_cache))]

    @property
    def running_operation_id(self) -> str | None:
        return None if self._running is None else str(self._running)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def config_for_hash(self, full_hash: str) -> Any | None:
        """The typed config for a hash this runner has validated (None if it has not)."""
        return self._config_cache.get(full_hash)

    # --- start-up and shut-down ------------------------------------------------------------------------

    async def start(self) -> ReloadOperation | None:
        """Close interrupted operations, restore the current config from the log, record the start.

        With an empty log, the source is loaded and applied as the initial configuration; the
        operation is returned. Restoring never reads the source: the log is the truth.
        """
        await self._close_interrupted()
        result: ReloadOperation | None = None
        restored = await anyio.to_thread.run_sync(self._restore_from_log)
        if restored is not None:
            self._set_active(restored)
        elif self.config_source is not None:
            result = await self.reload(Trigger.STARTUP, actor="system")
        host = socket.gethostname()
        await self._append(
            [
                NewEvent(
                    InstanceStarted(
                        version=self.version,
                        host=host,
                        pid=os.getpid(),
                        current_hash=None if self.active is None else self.active.hash,
                    )
                )
            ]
        )
        return result

    async def stop(self, reason: str = "shutdown") -> None:
        await self._append([NewEvent(InstanceStopped(reason=reason))])

    async def record(self, payload: EventPayload, *, actor: str = "system") -> None:
        """Append one event outside any operation (instance and file-watch lifecycle)."""
        await self._append([NewEvent(payload, actor=actor)])

    def _restore_from_log(self) -> ActiveConfig | None:
        self._known_head = self.log.head()
        applied = self.log.last_of_type(ConfigApplied.event_type)
        if applied is None or not isinstance(applied.payload, ConfigApplied):
            return None
        stored = self.log.get_config(applied.payload.hash)
        config, normalised, errors = self.pipeline.parse(stored.body)
        if config is None or normalised is None:
            raise ConfledgerError(
                f"the current config {applied.payload.hash[:16]} in the log no longer passes the config model "
                f"({'; '.join(errors[:3])}); fix the model or roll back with the CLI",
                code="current_config_invalid",
            )
        return ActiveConfig(
            hash=applied.payload.hash,
            config=config,
            body=normalised,
            secret_paths=frozenset(find_secret_paths(config)),
            position=applied.position,
        )

    async def refresh(self) -> None:
        """Re-read the current config from the log (after another writer applied one)."""
        restored = await anyio.to_thread.run_sync(self._restore_from_log)
        if restored is not None and (self.active is None or restored.hash != self.active.hash):
            self._set_active(restored)

    async def _close_interrupted(self) -> None:
        open_ops = await anyio.to_thread.run_sync(self.log.open_operations)
        closing: list[NewEvent] = []
        for started in open_ops:
            if not _owner_is_gone(started.instance_id, self.log.instance_id):
                continue
            closing.append(
                NewEvent(
                    OperationCompleted(
                        status=OperationStatus.INTERRUPTED,
                        message="Operation was interrupted (its process stopped before it completed)",
                        error_message="interrupted",
                        reason="interrupted",
                    ),
                    actor="system",
                    operation_id=started.operation_id,
                )
            )
        if closing:
            await self._append(closing)

    # --- the operation slot ------------------------------------------------------------------------------

    async def _reject(
        self,
        kind: OperationKind,
        trigger: Trigger,
        actor: str,
        source: str | None,
        client: str | None,
    ) -> ReloadOperation:
        operation_id = self._new_operation_id()
        message = f"{IN_PROGRESS_MESSAGE} ({self._running})"
        await self._append(
            [
                NewEvent(
                    OperationRejected(
                        kind=kind,
                        trigger=trigger,
                        reason="operation_in_progress",
                        message=message,
                        running_operation_id=self.running_operation_id,
                        source=source,
                        client=client,
                    ),
                    actor=actor,
                    operation_id=operation_id,
                )
            ]
        )
        return await self._operation_result(operation_id)

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
    ) -> ReloadOperation:
        """Record a request refused before it became an operation (e.g. a source outside the allow-list)."""
        operation_id = self._new_operation_id()
        await self._append(
            [
                NewEvent(
                    OperationRejected(
                        kind=kind,
                        trigger=trigger,
                        reason=reason,
                        message=message,
                        source=source,
                        client=client,
                    ),
                    actor=actor,
                    operation_id=operation_id,
                )
            ]
        )
        return await self._operation_result(operation_id)

    async def request_reload(self, trigger: Trigger, *, actor: str | None = None) -> ReloadOperation | None:
        """A reload asked for by a signal or the file watcher: bursts coalesce into one follow-up.

        If an operation is running, one follow-up reload is queued to run after it (later requests
        join that one and return None), so a change made during a reload is never missed and a
        burst of 50 SIGHUPs costs at most two reloads.
        """
        if self._followup_queued:
            return None
        if self._running is not None:
            self._followup_queued = True
            try:
                while self._running is not None:
                    await self._idle.wait()
            finally:
                self._followup_queued = False
        return await self.reload(trigger, actor=actor)

    def _tracer_for_steps(self) -> trace.Tracer:
        # Steps (load, validators, callbacks) open spans only under a recording operation span: see
        # store.batch.NO_SPANS. Called inside the operation span, so that is the current span.
        return self.tracer if trace.get_current_span().is_recording() else NO_SPANS

    def _operation_span(
        self, kind: OperationKind, trigger: Trigger, attributes: dict[str, Any]
    ) -> contextlib.AbstractContextManager[trace.Span]:
        # The operation span is current while the operation runs, so the load, validation and callback
        # spans nest under it, and under the caller's trace when an HTTP request carried a traceparent.
        # What start_as_current_span does, without its generator wrapped around use_span's.
        span = self.tracer.start_span(
            f"confledger.{kind.value}",
            # The span's name says reload or rollback; the kind is not repeated as an attribute.
            attributes={"confledger.trigger": trigger.value, **attributes},
            record_exception=False,
            set_status_on_exception=True,
        )
        return trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=True)

    # --- reload --------------------------------------------------------------------------------------

    async def reload(
        self,
        trigger: Trigger = Trigger.MANUAL,
        *,
        config_source: str | Path | None = None,
        force: bool = False,
        dry_run: bool = False,
        actor: str | None = None,
        client: str | None = None,
        trace_id: str | None = None,
    ) -> ReloadOperation:
        actor = actor or default_actor(trigger)
        source = str(config_source) if config_source is not None else self.config_source
        attributes = {
            "confledger.force": force,
            "confledger.dry_run": dry_run,
            "confledger.source": source or "",
        }
        with self._operation_span(OperationKind.RELOAD, trigger, attributes) as span:
            if self._running is not None:
                result = await self._reject(OperationKind.RELOAD, trigger, actor, source, client)
            else:
                operation_id = self._new_operation_id()
                self._running = operation_id
                self._idle = anyio.Event()
                try:
                    trace_id = trace_id or _trace_id_of(span)
                    await self._reload(operation_id, trigger, source, force, dry_run, actor, client, trace_id)
                    result = await self._operation_result(operation_id)
                finally:
                    self._running = None
                    self._idle.set()
            _finish(span, result)
            return result

    async def _reload(
        self,
        operation_id: uuid.UUID,
        trigger: Trigger,
        source: str | None,
        force: bool,
        dry_run: bool,
        actor: str,
        client: str | None,
        trace_id: str | None,
    ) -> None:
        timer = _Timer(time.perf_counter())
        previous = self.active
        expected_head = self._known_head
        started = OperationStarted(
            kind=OperationKind.RELOAD,
            trigger=trigger,
            source=source,
            force=force,
            dry_run=dry_run,
            previous_hash=None if previous is None else previous.hash,
            expected_head=expected_head,
            client=client,
            trace_id=trace_id,
        )
        pending: list[EventPayload] = [started]

        def events(payloads: Iterable[EventPayload]) -> list[NewEvent]:
            return [NewEvent(payload, actor=actor, operation_id=operation_id) for payload in payloads]

        if source is None:
            pending += [
                ConfigLoadFailed(reason="no_source", message="no config source configured or given"),
                _completed(
                    OperationStatus.FAILED, timer, message="No config source", error="no config source"
                ),
            ]
            await self._append(events(pending))
            return

        # Load: read once, hash and parse the same bytes - in the same worker hop as the validation.
        expect_content = self._had_content.get(source, False)
        load = _SourceLoad(source, self.max_source_bytes, expect_content)
        tracer = self._tracer_for_steps()
        try:
            outcome = await self.pipeline.validate(load=load.call(tracer), tracer=tracer)
        except SourceError as exc:
            pending += [
                ConfigLoadFailed(
                    reason=exc.code,
                    message=exc.message,
                    source=source,
                    input_sha256=exc.input_sha256,
                    size_bytes=exc.size_bytes,
                ),
                _completed(
                    OperationStatus.FAILED,
                    timer,
                    message="Configuration could not be loaded",
                    error=exc.message,
                    reason=exc.code,
                ),
            ]
            await self._append(events(pending))
            return
        loaded = load.loaded
        if loaded is None:  # pragma: no cover - validate() returns only after the load succeeded
            raise RuntimeError("the source load did not run")
        self._had_content[source] = loaded.size_bytes > 0
        load_ms = load.duration_ms

        pending.append(
            ConfigLoaded(
                hash=outcome.hash,
                source=source,
                size_bytes=loaded.size_bytes,
                load_ms=load_ms,
                input_sha256=loaded.raw_sha256,
                format=loaded.format,
            )
        )
        configs: list[PreparedConfig] = []
        if outcome.body is not None:
            try:
                configs.append(await self._prepare(outcome.body, outcome.secret_paths, outcome.hash))
            except SecretKeyError as exc:
                # A body with secrets and no key to seal them cannot be stored: a recorded failure,
                # not an exception that leaves no trace of the attempt.
                pending += [
                    ValidationFailed(
                        hash=outcome.hash,
                        errors=(exc.message,),
                        warnings=outcome.warnings,
                        duration_ms=outcome.duration_ms,
                    ),
                    _completed(
                        OperationStatus.FAILED,
                        timer,
                        message="Configuration could not be stored",
                        error=exc.message,
                        reason=exc.code,
                        validation_ms=outcome.duration_ms,
                    ),
                ]
                await self._append(events(pending))
                return

        if (
            outcome.hash is not None
            and previous is not None
            and outcome.hash == previous.hash
            and not force
            and not outcome.errors
        ):
            pending += [
                ConfigUnchanged(hash=outcome.hash),
                _completed(OperationStatus.SUCCESS, timer, message=NO_CHANGES_MESSAGE),
            ]
            await self._append(events(pending))
            return

        await self._decide(
            operation_id=operation_id,
            kind=OperationKind.RELOAD,
            pending=pending,
            outcome=outcome,
            previous=previous,
            configs=configs,
            timer=timer,
            expected_head=expected_head,
            dry_run=dry_run,
            actor=actor,
            rollback_event=None,
        )

    # --- rollback ------------------------------------------------------------------------------------

    async def rollback(
        self,
        target_hash: str | None = None,
        *,
        trigger: Trigger = Trigger.MANUAL,
        actor: str | None = None,
        client: str | None = None,
        trace_id: str | None = None,
    ) -> ReloadOperation:
        """Return to ``target_hash`` (any unique prefix of any applied hash) or the previous config."""
        actor = actor or default_actor(trigger)
        attributes = {"confledger.target": (target_hash or "")[:64]}
        with self._operation_span(OperationKind.ROLLBACK, trigger, attributes) as span:
            if self._running is not None:
                result = await self._reject(OperationKind.ROLLBACK, trigger, actor, None, client)
            else:
                operation_id = self._new_operation_id()
                self._running = operation_id
                self._idle = anyio.Event()
                try:
                    trace_id = trace_id or _trace_id_of(span)
                    await self._rollback(operation_id, target_hash, trigger, actor, client, trace_id)
                    result = await self._operation_result(operation_id)
                finally:
                    self._running = None
                    self._idle.set()
            _finish(span, result)
            return result

    def _previous_distinct_hash(self) -> str | None:
        current = None if self.active is None else self.active.hash
        before: int | None = None
        while True:
            batch = self.log.read_reverse(before, 200, types=[ConfigApplied.event_type])
            for event in batch:
                if isinstance(event.payload, ConfigApplied) and event.payload.hash != current:
                    return event.payload.hash
            if len(batch) < 200:
                return None
            before = batch[-1].position

    def _resolve_target(self, reference: str | None) -> str:
        if reference is None:
            found = self._previous_distinct_hash()
            if found is None:
                raise ConfigLookupError(
                    "no previous configuration to roll back to", code="no_previous_config"
                )
            return found
        full = self.log.resolve_hash(reference)
        if not self.log.was_applied(full):
            raise ConfigLookupError(
                f"config {full[:16]} was never applied; rollback can only return to an applied config",
                code="unknown_config_hash",
            )
        return full

    async def _rollback(
        self,
        operation_id: uuid.UUID,
        reference: str | None,
        trigger: Trigger,
        actor: str,
        client: str | None,
        trace_id: str | None,
    ) -> None:
        timer = _Timer(time.perf_counter())
        previous = self.active
        expected_head = self._known_head

        def events(payloads: Iterable[EventPayload]) -> list[NewEvent]:
            return [NewEvent(payload, actor=actor, operation_id=operation_id) for payload in payloads]

        try:
            target = await anyio.to_thread.run_sync(lambda: self._resolve_target(reference))
        except ConfigLookupError as exc:
            await self._append(
                events(
                    [
                        OperationStarted(
                            kind=OperationKind.ROLLBACK,
                            trigger=trigger,
                            previous_hash=None if previous is None else previous.hash,
                            target_hash=None,
                            expected_head=expected_head,
                            client=client,
                            trace_id=trace_id,
                            source=None if reference is None else reference[:80],
                        ),
                        _completed(
                            OperationStatus.FAILED,
                            timer,
                            message="Rollback failed",
                            error=exc.message,
                            reason=exc.code,
                        ),
                    ]
                )
            )
            return
        pending: list[EventPayload] = [
            OperationStarted(
                kind=OperationKind.ROLLBACK,
                trigger=trigger,
                previous_hash=None if previous is None else previous.hash,
                target_hash=target,
                expected_head=expected_head,
                client=client,
                trace_id=trace_id,
                source=f"log:{target[:16]}",
            )
        ]
        if previous is not None and target == previous.hash:
            pending += [
                ConfigUnchanged(hash=target),
                _completed(OperationStatus.SUCCESS, timer, message=f"Configuration is already {target[:16]}"),
            ]
            await self._append(events(pending))
            return
        try:
            # Reading the stored body (and unsealing its secrets) shares the validation's worker hop.
            outcome = await self.pipeline.validate(
                load=SyncCall(lambda: self.log.get_config(target).body, stop_on_error=True),
                tracer=self._tracer_for_steps(),
            )
        except SecretKeyError as exc:
            # The target's secrets cannot be restored without the key it was sealed with: a recorded
            # failure, not an exception that leaves the operation open until the next restart.
            pending.append(
                _completed(
                    OperationStatus.FAILED,
                    timer,
                    message="Rollback failed",
                    error=exc.message,
                    reason=exc.code,
                )
            )
            await self._append(events(pending))
            return
        rolled = ConfigRolledBack(
            from_hash=None if previous is None else previous.hash, to_hash=target, reason="manual"
        )
        await self._decide(
            operation_id=operation_id,
            kind=OperationKind.ROLLBACK,
            pending=pending,
            outcome=outcome,
            previous=previous,
            configs=[],
            timer=timer,
            expected_head=expected_head,
            dry_run=False,
            actor=actor,
            rollback_event=rolled,
        )

    # --- the shared decision -------------------------------------------------------------------------

    async def _decide(
        self,
        *,
        operation_id: uuid.UUID,
        kind: OperationKind,
        pending: list[EventPayload],
        outcome: ValidationOutcome,
        previous: ActiveConfig | None,
        configs: list[PreparedConfig],
        timer: _Timer,
        expected_head: int,
        dry_run: bool,
        actor: str,
        rollback_event: ConfigRolledBack | None,
    ) -> None:
        def events(payloads: Iterable[EventPayload]) -> list[NewEvent]:
            return [NewEvent(payload, actor=actor, operation_id=operation_id) for payload in payloads]

        noun = "Rollback" if kind is OperationKind.ROLLBACK else "Configuration"
        if not outcome.ok or outcome.hash is None or outcome.body is None:
            pending += [
                ValidationFailed(
                    hash=outcome.hash,
                    errors=outcome.errors,
                    warnings=outcome.warnings,
                    duration_ms=outcome.duration_ms,
                ),
                _completed(
                    OperationStatus.FAILED,
                    timer,
                    message=f"{noun} validation failed",
                    error=f"validation failed: {len(outcome.errors)} error(s)",
                    reason="validation_failed",
                    validation_ms=outcome.duration_ms,
                ),
            ]
            await self._append(events(pending), configs=configs)
            return
        pending.append(
            ValidationPassed(hash=outcome.hash, warnings=outcome.warnings, duration_ms=outcome.duration_ms)
        )
        changes = [INITIAL_CHANGE] if previous is None else changed_paths(previous.body, outcome.body)
        services = self.services.ordered()

        if dry_run:
            names = ", ".join(spec.name for spec in services) or "no services"
            pending.append(
                _completed(
                    OperationStatus.SUCCESS,
                    timer,
                    message=f"Dry run: {len(changes)} change(s) ({', '.join(changes[:20])}); would notify {names}",
                    validation_ms=outcome.duration_ms,
                )
            )
            await self._append(events(pending), configs=configs)
            return

        new_active = ActiveConfig(
            hash=outcome.hash,
            config=outcome.config,
            body=outcome.body,
            secret_paths=outcome.secret_paths,
            position=0,
        )
        apply_started = time.perf_counter()
        secrets = [*new_active.secret_values(), *([] if previous is None else previous.secret_values())]
        old_config = None if previous is None else previous.config
        started_events, started_configs = events(pending), configs
        appended: list[RecordedEvent] = []

        def make_start_durable() -> None:
            appended.extend(self.log.append_recorded(started_events, configs=started_configs))

        if services:
            # The start must be durable before the first service hears of the change: after a crash,
            # the log then shows an interrupted operation instead of services silently on a new config.
            # It is appended in the same worker hop that calls the first (sync) services.
            pending = []
            configs = []

        def success_events(results: list[NotifyResult]) -> list[NewEvent] | None:
            """The rest of the operation when enough services accepted; None when they did not."""
            accepted = sum(result.outcome is ServiceOutcome.SUCCESS for result in results)
            if results and accepted / len(results) < self.rollback_threshold:
                return None
            applied = ConfigApplied(
                hash=new_active.hash,
                previous_hash=None if previous is None else previous.hash,
                changes=tuple(changes),
            )
            message = (
                f"Rolled back to {new_active.hash[:16]}"
                if kind is OperationKind.ROLLBACK
                else "Configuration reloaded successfully"
            )
            if accepted < len(results):
                message += f" ({accepted}/{len(results)} services accepted)"
            completed = _completed(
                OperationStatus.SUCCESS,
                timer,
                message=message,
                validation_ms=outcome.duration_ms,
                apply_ms=(time.perf_counter() - apply_started) * 1000,
            )
            return events(
                [
                    *pending,
                    *(_notified(result, "forward", new_active.hash) for result in results),
                    *([] if rollback_event is None else [rollback_event]),
                    applied,
                    completed,
                ]
            )

        def record_success(results: list[NotifyResult]) -> list[RecordedEvent] | None:
            batch = success_events(results)
            if batch is None:
                return None
            # Projections fold this batch inside append (on its thread) and look the typed config up
            # by hash; registering it first hands them this very object instead of a second copy.
            self._remember(new_active.hash, new_active.config)
            return self.log.append_recorded(batch, expected_head=expected_head, configs=configs)

        try:
            # With only sync services, the outcome is recorded in the same worker hop that called them
            # (``then``); otherwise, or when one timed out, it is recorded below from the loop.
            notified = await self.services.notify_all(
                services,
                old_config,
                new_active.config,
                secret_values=secrets,
                tracer=self._tracer_for_steps(),
                before=make_start_durable if services else None,
                then=record_success if services else None,
            )
        finally:
            self._appended(appended)
        results = notified.results
        recorded: list[RecordedEvent] | None = None
        conflict: ConcurrencyConflict | None = None
        if notified.then is not None:
            if isinstance(notified.then.error, ConcurrencyConflict):
                conflict = notified.then.error
            elif notified.then.error is not None:
                raise notified.then.error
            elif isinstance(notified.then.value, list):
                recorded = notified.then.value
        succeeded = [
            spec
            for spec, result in zip(services, results, strict=True)
            if result.outcome is ServiceOutcome.SUCCESS
        ]
        if recorded is None and conflict is None:
            batch = success_events(results)
            if batch is not None:
                self._remember(new_active.hash, new_active.config)
                try:
                    recorded = await self._append_recorded(batch, expected_head, configs)
                except ConcurrencyConflict as exc:
                    conflict = exc
        if recorded is not None:
            positions = self._appended(recorded)
            self._set_active(
                ActiveConfig(
                    hash=new_active.hash,
                    config=new_active.config,
                    body=new_active.body,
                    secret_paths=new_active.secret_paths,
                    position=positions[-2],
                )
            )
            return
        pending += [_notified(result, "forward", new_active.hash) for result in results]
        if conflict is not None:
            compensations = await self._compensate(succeeded, new_active, previous, secrets)
            await self._append(
                events(
                    [
                        *pending,
                        *compensations,
                        _completed(
                            OperationStatus.FAILED,
                            timer,
                            message=f"{noun} not applied: another instance applied a config meanwhile",
                            error=conflict.message,
                            reason=conflict.code,
                            validation_ms=outcome.duration_ms,
                        ),
                    ]
                ),
                configs=configs,
            )
            await self.refresh()
            return
        ratio = 1.0 if not results else len(succeeded) / len(results)

        if ratio < self.rollback_threshold:
            failed_names = ", ".join(r.service for r in results if r.outcome is not ServiceOutcome.SUCCESS)
            share = (
                f"{len(succeeded)}/{len(results)} services accepted (threshold {self.rollback_threshold:g})"
            )
            if self.enable_automatic_rollback:
                pending += await self._compensate(succeeded, new_active, previous, secrets)
                pending += [
                    ConfigRolledBack(
                        from_hash=new_active.hash,
                        to_hash=None if previous is None else previous.hash,
                        reason="automatic",
                        success_ratio=ratio,
                        threshold=self.rollback_threshold,
                    ),
                    _completed(
                        OperationStatus.ROLLED_BACK,
                        timer,
                        message=f"{noun} rolled back automatically: {share}",
                        error=f"services failed: {failed_names}",
                        reason="services_below_threshold",
                        validation_ms=outcome.duration_ms,
                        apply_ms=(time.perf_counter() - apply_started) * 1000,
                    ),
                ]
            else:
                pending.append(
                    _completed(
                        OperationStatus.FAILED,
                        timer,
                        message=f"{noun} not applied: {share}; automatic rollback is off",
                        error=f"services failed: {failed_names}",
                        reason="services_below_threshold",
                        validation_ms=outcome.duration_ms,
                        apply_ms=(time.perf_counter() - apply_started) * 1000,
                    )
                )
            await self._append(events(pending), configs=configs)
            return
        raise AssertionError("a share at or above the threshold was recorded above")  # pragma: no cover

    async def _compensate(
        self,
        accepted: Sequence[ServiceSpec],
        abandoned: ActiveConfig,
        previous: ActiveConfig | None,
        secrets: Sequence[str],
    ) -> list[EventPayload]:
        """Give services that accepted an abandoned change their previous config back, in reverse order."""
        if previous is None:
            return []
        notified = await self.services.notify_all(
            list(reversed(accepted)),
            abandoned.config,
            previous.config,
            secret_values=secrets,
            tracer=self._tracer_for_steps(),
            direction="compensate",
        )
        return [_notified(result, "compensate", previous.hash) for result in notified.results]


class _SourceLoad:
    """Reading one source as the first call of the validation hop, with its ``confledger.load`` span."""

    def __init__(self, source: str, max_bytes: int, expect_content: bool) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.expect_content = expect_content
        self.loaded: LoadedSource | None = None
        self.duration_ms = 0.0

    def call(self, tracer: trace.Tracer) -> SyncCall:
        return SyncCall(
            self._load,
            stop_on_error=True,
            start_span=span_starter(tracer, "confledger.load"),
            finish_span=self._finish,
        )

    def _load(self) -> object:
        started = time.perf_counter()
        try:
            self.loaded = load_source(
                self.source, max_bytes=self.max_bytes, expect_content=self.expect_content
            )
        finally:
            self.duration_ms = (time.perf_counter() - started) * 1000
        return self.loaded.body

    def _finish(self, span: trace.Span, outcome: CallOutcome) -> None:
        # One set_attributes call when the outcome is known (a span costs per call, not per attribute).
        if isinstance(outcome.error, SourceError):
            span.set_attributes({"confledger.source": self.source, "confledger.reason": outcome.error.code})
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error.code))
        elif outcome.error is not None:
            span.set_attributes({"confledger.source": self.source})
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(outcome.error).__name__))
        elif self.loaded is not None:
            span.set_attributes(
                {
                    "confledger.source": self.source,
                    "confledger.size_bytes": self.loaded.size_bytes,
                    "confledger.format": self.loaded.format,
                }
            )


def _trace_id_of(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _finish(span: trace.Span, result: ReloadOperation) -> None:
    """Close an operation: span attributes and status, and its one structured log line."""
    if span.is_recording():
        # One call: each set_attribute takes the span's lock, and this runs once per operation on the loop.
        attributes = {
            "confledger.operation_id": result.operation_id,
            "confledger.status": result.status.value,
        }
        if result.previous_config_hash:
            attributes["confledger.previous_hash"] = result.previous_config_hash
        if result.new_config_hash:
            attributes["confledger.new_hash"] = result.new_config_hash
        span.set_attributes(attributes)
        if not result.success:
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.reason or result.status.value))
    level = logging.INFO if result.success else logging.WARNING
    if not logger.isEnabledFor(level):
        return  # the structured fields below would be built for nothing
    logger.log(
        level,
        "%s %s %s: %s (%.1f ms)",
        result.kind.value,
        result.operation_id,
        result.status.value,
        result.message,
        result.total_duration_ms,
        extra={
            "confledger": {
                "operation_id": result.operation_id,
                "trace_id": result.trace_id,
                "kind": result.kind.value,
                "trigger": result.trigger.value,
                "actor": result.actor,
                "status": result.status.value,
                "reason": result.reason,
                "previous_hash": result.previous_config_hash,
                "new_hash": result.new_config_hash,
                "total_ms": round(result.total_duration_ms, 3),
                "validation_ms": round(result.validation_duration_ms, 3),
                "apply_ms": round(result.apply_duration_ms, 3),
                "services": list(result.services_notified),
            }
        },
    )


def _owner_is_gone(instance_id: str, own_instance_id: str) -> bool:
    """Whether the instance that started an open operation can no longer complete it.

    Our own id means we restarted. For the default ``host:pid`` form on this host, a dead pid means the
    process is gone. An operation of a live process or another host is left alone: it may be running.
    """
    if instance_id == own_instance_id:
        return True
    host, _, pid_text = instance_id.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _completed(
    status: OperationStatus,
    timer: _Timer,
    *,
    message: str,
    error: str | None = None,
    reason: str | None = None,
    validation_ms: float = 0.0,
    apply_ms: float = 0.0,
) -> OperationCompleted:
    return OperationCompleted(
        status=status,
        message=message,
        error_message=error,
        reason=reason,
        total_ms=timer.ms(),
        validation_ms=validation_ms,
        apply_ms=apply_ms,
    )


def _notified(result: NotifyResult, direction: str, config_hash: str) -> ServiceNotified:
    return ServiceNotified(
        service=result.service,
        priority=result.priority,
        outcome=result.outcome,
        duration_ms=result.duration_ms,
        error=result.error,
        direction="forward" if direction == "forward" else "compensate",
        config_hash=config_hash,
    )
