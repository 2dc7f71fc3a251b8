"""``ConfigReloader``: the seed's Python surface over the write side (store) and the read side (projections)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.trace import Tracer
from pydantic import BaseModel

from confledger import __version__
from confledger.api.file_watching import FileWatching, WatchGroup
from confledger.api.fleet_judge import FleetJudge
from confledger.api.security import create_private_database_file
from confledger.api.settings import Settings, default_database_url, open_log, settings_with
from confledger.api.watch import ChangeFeed
from confledger.api.watcher import FileWatcher
from confledger.projections.backups import BackupsProjection
from confledger.projections.current import CurrentConfig, CurrentProjection
from confledger.projections.fleet import GONE_AFTER_INTERVALS, FleetProjection, fleet_view
from confledger.projections.history import HistoryProjection, history_page
from confledger.projections.runner import ProjectionSet
from confledger.projections.stats import StatsProjection
from confledger.store import ConfledgerError, EventLog, SecretCipher, Trigger, VerifyReport
from confledger.store.calls import UserCalls
from confledger.store.database import checkpoint_wal
from confledger.store.errors import ConfigLookupError, ConfigRefusedHere, HashSchemeTooNew, IntegrityFailed
from confledger.store.events import ConfigApplied
from confledger.store.fleet import read_heartbeats
from confledger.store.follower import LogFollower
from confledger.store.operations import OperationRunner
from confledger.store.outcome import ReloadOperation, ReloadStatus, build_operation
from confledger.store.services import ServiceCallback, ServiceRegistry
from confledger.store.source_state import SourceState
from confledger.store.sources.reading import GuardedSource
from confledger.store.validation import ConfigValidator, ValidationPipeline, ValidatorSpec

__all__ = [
    "ConfigReloader",
    "ReloadOperation",
    "ReloadStatus",
    "ReloadTrigger",
    "WatchGroup",
    "get_config_reloader",
    "set_config_reloader",
]

logger = logging.getLogger(__name__)

# How often a running reloader looks whether its projections' checkpoint is due (``_save_checkpoints``).
CHECKPOINT_LOOK_S = 1.0

ReloadTrigger = Trigger


class ConfigReloader(FileWatching):
    """Zero-downtime reloading with every step recorded in the log.

    ``await reloader.start()`` restores the current config from the log (or loads the source into an
    empty log), then folds the projections. Read the config with ``reloader.current`` (no lock, no I/O).
    """

    def __init__(
        self,
        log: EventLog | str | None = None,
        *,
        config_model: type[BaseModel] | None = None,
        config_source: str | Path | None = None,
        backup_count: int | None = None,
        enable_automatic_rollback: bool | None = None,
        rollback_threshold: float | None = None,
        validators: Sequence[ConfigValidator | ValidatorSpec] = (),
        max_source_bytes: int | None = None,
        history_window: int | None = None,
        callback_timeout: float | None = None,
        validator_timeout: float | None = None,
        instance_id: str | None = None,
        notify_on_start: bool | None = None,
        max_recorded_items: int | None = None,
        cipher: SecretCipher | None = None,
        services: ServiceRegistry | None = None,
        tracer: Tracer | None = None,
        settings: Settings | None = None,
    ) -> None:
        """Options left as None come from ``settings`` (default: ``CONFLEDGER_*`` environment variables).

        ``log`` is an open ``EventLog``, a database URL, or None for ``CONFLEDGER_DATABASE_URL`` (else
        an SQLite file next to the config). A log opened here gets ``cipher``, else the key of
        ``CONFLEDGER_ENCRYPTION_KEY``, else a 0600 key file beside an SQLite log, as ``confledger serve``.
        """
        self.settings = settings_with(
            settings,
            backup_count=backup_count,
            automatic_rollback=enable_automatic_rollback,
            rollback_threshold=rollback_threshold,
            max_source_bytes=max_source_bytes,
            history_window=history_window,
            callback_timeout=callback_timeout,
            validator_timeout=validator_timeout,
            instance_id=instance_id,
            notify_on_start=notify_on_start,
            max_recorded_items=max_recorded_items,
        )
        self._owns_log = not isinstance(log, EventLog)
        self.log = log if isinstance(log, EventLog) else self._open_log(log, config_source, cipher)
        self.config_model = config_model
        self.backup_count = self.settings.backup_count
        self.services = services if services is not None else ServiceRegistry()
        self.pipeline = ValidationPipeline(
            config_model,
            validators,
            validator_timeout=self.settings.validator_timeout,
            max_items=self.settings.max_recorded_items,
        )
        self.runner = OperationRunner(
            self.log,
            pipeline=self.pipeline,
            services=self.services,
            calls=UserCalls(self.settings.worker_threads),
            config_source=config_source,
            enable_automatic_rollback=self.settings.automatic_rollback,
            rollback_threshold=self.settings.rollback_threshold,
            max_source_bytes=self.settings.max_source_bytes,
            callback_timeout=self.settings.callback_timeout,
            notify_on_start=self.settings.notify_on_start,
            version=__version__,
            tracer=tracer,
            fleet_lock_wait=self.settings.fleet_lock_wait,
        )
        self.current = None
        self._current = CurrentProjection(self._materialize)
        self._current.listeners.append(self._on_current)
        self._history = HistoryProjection(
            window=self.settings.history_window, listed=self.settings.max_recorded_items
        )
        self._stats = StatsProjection()
        self._backups = BackupsProjection(self.backup_count)
        self._fleet = FleetProjection()
        self.projections = ProjectionSet(
            self.log, [self._current, self._history, self._stats, self._backups, self._fleet]
        )
        # What other instances append reaches the projections through the follower (runner.follow).
        self.runner.after_follow = self.projections.catch_up
        self.follower = LogFollower(
            self.runner,
            poll_interval=self.settings.follow_poll_interval,
            heartbeat_interval=self.settings.heartbeat_interval,
            version=__version__,
        )
        self._follower_scope: anyio.CancelScope | None = None
        self._checkpoint_scope: anyio.CancelScope | None = None
        # Told of each applied change as the projections fold it, whoever decided it (GET /watch).
        self.changes = ChangeFeed(self.settings.watch_queue_size)
        self.projections.applied_listeners.append(self.changes.on_applied)
        self.started = False
        self._log_closed = False
        self.startup_operation: ReloadOperation | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._watcher: FileWatcher | None = None
        # Under ``serve --workers``: the workers of one service watch one file through worker 0 (set by
        # the lifecycle before the start).
        self.watch_group: WatchGroup | None = None
        self._group_watch_scope: anyio.CancelScope | None = None
        self._judge: FleetJudge | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None

    def _open_log(
        self, url: str | None, config_source: str | Path | None, cipher: SecretCipher | None
    ) -> EventLog:
        settings = self.settings
        database_url = url or settings.database_url or default_database_url(config_source)
        # SQLite would create it 0644, and it holds every config (the lifecycle warns of a shared one).
        create_private_database_file(database_url, warn_if_shared=False)
        key = settings.encryption_key.get_secret_value() if settings.encryption_key else None
        return open_log(settings, database_url, config_source, encryption_key=key, cipher=cipher)

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def config_source(self) -> str | None:
        return self.runner.config_source

    @property
    def enable_automatic_rollback(self) -> bool:
        return self.runner.enable_automatic_rollback

    @property
    def rollback_threshold(self) -> float:
        return self.runner.rollback_threshold

    async def start(self) -> ReloadOperation | None:
        """Close interrupted operations, restore (or load) the config, fold the projections.

        Raises ``InitialConfigError`` when the log is empty and the source cannot be applied: a
        reloader never starts silently without a config it was given a source for.
        """
        if self.started:
            return self.startup_operation
        # The tail since the last verified position, the checkpoints and the anchor: a failure keeps the
        # instance up for reads but refuses every write (the log's integrity_failure); a wrong key raises.
        report = await anyio.to_thread.run_sync(self.log.check_integrity)
        if not report.ok:
            await anyio.to_thread.run_sync(self.log.record_integrity_failure, report)
            await self._refuse_an_untrusted_current_config(report)
            logger.error(
                "the event log failed its integrity check (%s): %s; reloads and rollbacks are refused: %s",
                report.code,
                report.reason,
                IntegrityFailed.recovery_for(report.code),
            )
        self.startup_operation = await self.runner.start()
        await anyio.to_thread.run_sync(self.projections.start)
        self.started = True
        return self.startup_operation

    async def stop(self) -> None:
        """Record the stop and close a log this reloader opened (also after a start that raised)."""
        try:
            if self.started:
                self.started = False
                self.changes.close()
                try:
                    await self.runner.stop()
                finally:
                    await anyio.to_thread.run_sync(self.projections.stop)
        finally:
            if self._owns_log and not self._log_closed:
                self._log_closed = True
                self.log.close()

    async def __aenter__(self) -> ConfigReloader:
        """Start, with a task group for the file watcher; leaving stops the watcher and the reloader."""
        stack = contextlib.AsyncExitStack()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.push_async_callback(self._shutdown)
        try:
            await self.start()
            await self._task_group.start(self._save_checkpoints)
            if self.watch_group is not None and self.watch_group.owner:
                self._task_group.start_soon(self._watch_for_the_group)
            if self.settings.follow:
                await self._task_group.start(self._follow)
                threshold = self.settings.fleet_rollback_threshold
                if threshold is not None:
                    self._judge = FleetJudge(
                        self.runner,
                        self.fleet,
                        self._task_group,
                        threshold=threshold,
                        wait=self.settings.fleet_answer_wait,
                        look_every=self.settings.follow_poll_interval,
                        instance_id=self.log.instance_id,
                        desired=lambda: self._fleet.desired,
                        gone_after=GONE_AFTER_INTERVALS * self.settings.heartbeat_interval,
                    )
                    self.runner.on_applied = self._judge.judge_later
                    self._judge.start()
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def _follow(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._follower_scope = scope
            await self.follower.run(task_status=task_status)

    async def _save_checkpoints(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Save the projections' checkpoint when one is due, in a worker thread, off every append's path.

        Saving a set (encoding the states, MACing and writing them) took about 10 ms of CPU on a busy
        two-core machine. On the thread of the append that made it due, it held up the operation that
        tipped it; in a fleet that was the follower's next change, and most of the propagation
        benchmark's p99 (30 ms with it, 20 ms without). Looked for once a second: a checkpoint is a
        cache that falls due every few seconds at most, and the look reads two numbers. SQLite's WAL is
        checkpointed in the same turn (``store.database.checkpoint_wal``), for the same reason.
        """
        with anyio.CancelScope() as scope:
            self._checkpoint_scope = scope
            self.projections.checkpoint_on_append = False
            task_status.started()
            failing: str | None = None
            try:
                while True:
                    await anyio.sleep(CHECKPOINT_LOOK_S)
                    try:
                        await anyio.to_thread.run_sync(self._checkpoint_if_due)
                    except Exception as exc:
                        # A cache: a failed save costs the next start a longer fold, never the service
                        # (an exception out of this task would end the reloader's task group). Said
                        # once per kind of failure until a save works again; one that is no store
                        # error is a bug, logged with its traceback.
                        code = exc.code if isinstance(exc, ConfledgerError) else type(exc).__name__
                        if failing != code:
                            logger.warning(
                                "saving the projections' or the WAL's checkpoint failed (%s); retrying",
                                code,
                                exc_info=not isinstance(exc, ConfledgerError),
                            )
                        failing = code
                    else:
                        failing = None
            finally:
                self.projections.checkpoint_on_append = True

    def _checkpoint_if_due(self) -> None:
        self.projections.checkpoint_if_due()
        checkpoint_wal(self.log.engine)

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._judge is not None:
                self.runner.on_applied = None
                await self._judge.stop()
                self._judge = None
            if self._follower_scope is not None:
                self._follower_scope.cancel()
                self._follower_scope = None
            if self._checkpoint_scope is not None:
                self._checkpoint_scope.cancel()
                self._checkpoint_scope = None
            if self._group_watch_scope is not None:
                self._group_watch_scope.cancel()
                self._group_watch_scope = None
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            await self.stop()
            self._task_group = None

    def _materialize(self, full_hash: str) -> Any:
        cached = self.runner.config_for_hash(full_hash)
        if cached is not None:
            return cached
        stored = self.log.get_config(full_hash)
        config, _, errors = self.pipeline.parse(stored.body)
        if config is None:
            raise ConfigRefusedHere(
                f"config {full_hash[:16]} does not pass this instance's model: {'; '.join(errors[:3])}"
            )
        return config

    # --- reading the config (hot path) ---------------------------------------------------------------

    current: CurrentConfig | None
    """The current config snapshot: one attribute read (no property call, no lock), safe from any thread.

    A plain attribute, kept equal to the current projection's published value; read it, never assign it.
    """

    def _on_current(self, value: CurrentConfig | None) -> None:
        self.current = value

    def get_config(self) -> Any:
        value = self.current
        if value is None:
            raise ConfigLookupError("no configuration has been applied yet", code="no_config_applied")
        return value.config

    @property
    def current_hash(self) -> str | None:
        value = self.current
        return None if value is None else value.hash

    # --- commands ------------------------------------------------------------------------------------

    async def reload_config(
        self,
        trigger: Trigger = Trigger.MANUAL,
        config_source: str | Path | GuardedSource | None = None,
        force: bool = False,
        dry_run: bool = False,
        *,
        actor: str | None = None,
        client: str | None = None,
        trace_id: str | None = None,
        received: float | None = None,
    ) -> ReloadOperation:
        """Load, validate, notify services and apply; every step is an event. Never raises for bad input.

        A config rolled back away from is not applied again unless ``force`` (reason
        ``rolled_back_hash``); a ``GuardedSource`` (``api.paths.resolve_source``) is read only if the
        file opened lies inside its allowed directories (reason ``source_not_allowed``). ``received``:
        ``time.perf_counter()`` when the request asking for it arrived, where ``total_duration_ms``
        starts (default: now)."""
        return await self.runner.reload(
            Trigger(trigger),
            config_source=config_source,
            force=force,
            dry_run=dry_run,
            actor=actor,
            client=client,
            trace_id=trace_id,
            received=received,
        )

    async def request_reload(self, trigger: Trigger, *, actor: str | None = None) -> ReloadOperation | None:
        """A coalescing reload for signals and file changes (see ``OperationRunner.request_reload``)."""
        return await self.runner.request_reload(Trigger(trigger), actor=actor)

    async def rollback_config(
        self,
        target_hash: str | None = None,
        *,
        trigger: Trigger = Trigger.MANUAL,
        actor: str | None = None,
        client: str | None = None,
        trace_id: str | None = None,
        received: float | None = None,
    ) -> ReloadOperation:
        """Return to ``target_hash`` (any unique 7+ hex prefix of an applied hash) or the previous config;
        ``received`` as for ``reload_config``."""
        return await self.runner.rollback(
            target_hash,
            trigger=Trigger(trigger),
            actor=actor,
            client=client,
            trace_id=trace_id,
            received=received,
        )

    def register_config_callback(
        self,
        name: str,
        callback: ServiceCallback,
        priority: int = 0,
        async_callback: bool = False,
        timeout: float | None = None,
        notify_on_start: bool | None = None,
    ) -> None:
        """Call ``callback(old_config, new_config)`` on every change; higher priority runs first.

        ``timeout`` None: ``CONFLEDGER_CALLBACK_TIMEOUT`` (30 s unless set). ``notify_on_start``: on a
        start that restores a config from the log, call ``callback(None, restored)`` too (None:
        ``CONFLEDGER_NOTIFY_ON_START``, on unless set); a callback registered after the start is not."""
        self.services.register(
            name,
            callback,
            priority=priority,
            async_callback=async_callback,
            timeout=timeout,
            notify_on_start=notify_on_start,
        )

    def unregister_config_callback(self, name: str) -> bool:
        return self.services.unregister(name)

    def add_validator(
        self, validator: ConfigValidator, *, name: str | None = None, timeout: float | None = None
    ) -> None:
        self.pipeline.add(validator, name=name, timeout=timeout)

    # --- reading the record --------------------------------------------------------------------------

    def get_reload_history(
        self,
        limit: int = 20,
        *,
        before: int | None = None,
        trigger: str | None = None,
        status: str | None = None,
    ) -> list[ReloadOperation]:
        """Operations newest first; ``before`` is a position cursor (an operation's ``first_position``).

        Served from the in-memory window when it reaches far enough back, otherwise folded from the log.
        Blocking when it has to read the log: async callers use ``aget_reload_history``.
        """

        return history_page(self._history, self.log, limit, before=before, trigger=trigger, status=status)

    async def aget_reload_history(self, limit: int = 20, **filters: Any) -> list[ReloadOperation]:
        return await anyio.to_thread.run_sync(lambda: self.get_reload_history(limit, **filters))

    def count_operations(self, *, trigger: str | None = None, status: str | None = None) -> int:
        return self._stats.count_matching(trigger=trigger, status=status)

    def get_operation(self, operation_id: str) -> ReloadOperation | None:
        events = self.log.read_operation(operation_id)
        return build_operation(events, listed=self.settings.max_recorded_items) if events else None

    def get_reload_stats(self) -> dict[str, Any]:
        """The seed's keys, plus percentiles and per-trigger and per-service breakdowns."""
        summary = self._stats.summary()
        return {
            **{
                key: summary[key]
                for key in (
                    "total_operations",
                    "successful_operations",
                    "failed_operations",
                    "success_rate",
                    "average_duration_ms",
                )
            },
            "listeners_registered": len(self.services),
            "backups_available": len(self._backups.backups),
            "current_config_hash": self.current_hash,
            **{
                key: value
                for key, value in summary.items()
                if key
                not in (
                    "total_operations",
                    "successful_operations",
                    "failed_operations",
                    "success_rate",
                    "average_duration_ms",
                )
            },
        }

    def get_slow_operations(self, threshold_ms: float = 1000.0) -> list[ReloadOperation]:
        """Recent operations slower than ``threshold_ms``, slowest first (each names its slowest phase)."""
        slow = [op for op in self._history.recent() if op.total_duration_ms > threshold_ms]
        return sorted(slow, key=lambda op: op.total_duration_ms, reverse=True)

    def get_backups(self) -> list[dict[str, Any]]:
        return self._backups.backups

    def source_state(self) -> SourceState | None:
        """What the config source held when last read, whether it differs from the applied config and why
        (``rolled_back_hash``: a reload will not apply it again without force). Served from memory."""
        return self.runner.source_state()

    def service_drift(self) -> dict[str, str]:
        """Registered services whose last accepted config is not the current one."""
        drift = self._stats.drift(self.current_hash)
        return {name: running for name, running in drift.items() if name in self.services}

    async def _refuse_an_untrusted_current_config(self, report: VerifyReport) -> None:
        """Reads go on after a failed check (a log cut off at its end still names its current config),
        but not when the chain breaks at or before the ``config.applied`` the instance would restore:
        that event may have been edited to point the service at another stored config (one refused once,
        say), and there is then no config it could serve."""
        broken = report.first_broken_position
        if broken is None or report.failed_on_a_body:
            return  # a stored body, not the chain: the restore re-hashes the body it would serve
        applied = await anyio.to_thread.run_sync(self.log.last_of_type, ConfigApplied.event_type)
        if applied is None or broken > applied.position:
            return  # the break lies after it: the config it names stands
        # A break before it (an old event edited) leaves the event itself to be judged on its own link.
        if broken == applied.position or not await anyio.to_thread.run_sync(
            self.log.event_link_holds, applied
        ):
            raise IntegrityFailed(
                f"the config.applied at {applied.position}, which names the config this instance would "
                f"serve, was changed in the database ({report.code}: {report.reason}), so there is no "
                f"config it can trust: {IntegrityFailed.RECOVERY}",
                reason=report.code or "integrity_failed",
            )

    async def verify(self) -> VerifyReport:
        """The whole log checked (``EventLog.verify``). A keyed log that fails it is treated as one that
        failed its start-up check: reads go on, writes are refused until it is restored and restarted
        (an event edited below the position start-up verified is found here, not at start-up)."""
        report = await anyio.to_thread.run_sync(self.log.verify)
        if report.ok or self.log.integrity_failure is not None:
            return report
        if (await anyio.to_thread.run_sync(self.log.integrity)).record is None:
            return report  # keyless: nothing a forger could not recompute, as at start-up
        self.log.integrity_failure = report
        await anyio.to_thread.run_sync(self.log.record_integrity_failure, report)
        # A change in the database: every instance of the log (other workers, other hosts) finds it at its
        # next start, this one too. A newer release's body is this release's alone to refuse.
        everyone = report.code != HashSchemeTooNew.code
        if everyone:
            await anyio.to_thread.run_sync(self.log.forget_verified)
        logger.error(
            "the event log failed a full integrity check (%s): %s; reloads and rollbacks are refused here%s: %s",
            report.code,
            report.reason,
            ", and by every instance of this log from its next start" if everyone else "",
            IntegrityFailed.recovery_for(report.code),
        )
        return report

    async def fleet(self, *, all_instances: bool = False) -> dict[str, Any]:
        """The fleet's desired config and each instance's state (heartbeats read from the database);
        instances gone longer than ``fleet_gone_shown_for`` are only counted unless ``all_instances``."""
        heartbeats = await anyio.to_thread.run_sync(read_heartbeats, self.log.engine)
        return fleet_view(
            self._fleet,
            heartbeats,
            now=datetime.now(UTC),
            default_interval_s=self.settings.heartbeat_interval,
            head=self.projections.position,
            gone_shown_for=None if all_instances else timedelta(seconds=self.settings.fleet_gone_shown_for),
        )

    @property
    def fleet_judge(self) -> FleetJudge | None:
        """The fleet threshold's judge while this reloader runs with one (``fleet_rollback_threshold``)."""
        return self._judge

    @property
    def stats_projection(self) -> StatsProjection:
        return self._stats

    @property
    def running_operation_id(self) -> str | None:
        return self.runner.running_operation_id


_global_reloader: ConfigReloader | None = None


def get_config_reloader() -> ConfigReloader:
    """The process-wide reloader set by ``set_config_reloader`` (or the FastAPI lifecycle)."""
    if _global_reloader is None:
        raise RuntimeError("no ConfigReloader has been set up: call set_config_reloader() or the lifecycle")
    return _global_reloader


def set_config_reloader(reloader: ConfigReloader | None) -> None:
    global _global_reloader
    _global_reloader = reloader
