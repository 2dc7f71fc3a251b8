"""Wiring confledger into a FastAPI app: lifespan, router, SIGHUP, file watching, tokens and keys.

::

    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(app, config_model=AppConfig, config_source="config.yaml")

    @app.get("/items")
    async def items(config: CurrentConfigDep): ...
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from fastapi import FastAPI
from pydantic import BaseModel

from confledger.api.pages import RenderedPages
from confledger.api.reloader import ConfigReloader, WatchGroup, set_config_reloader
from confledger.api.security import Tokens, create_private_database_file, load_or_create_token_file
from confledger.api.settings import (
    Settings,
    absolute,
    default_database_url,
    misspelt_variables,
    open_log,
    resolve_cipher,
    settings_with,
    token_file_path,
)
from confledger.api.telemetry import Telemetry, otlp_configured
from confledger.projections.fleet import group_of
from confledger.store import EventLog, Trigger
from confledger.store.database import normalize_url
from confledger.store.services import ServiceCallback, ServiceRegistry
from confledger.store.validation import ConfigValidator, ValidatorSpec

__all__ = [
    "ConfigLifecycle",
    "default_database_url",
    "register_config_callback",
    "resolve_cipher",
    "setup_configuration_lifecycle",
    "token_file_path",
    "unregister_config_callback",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "/api/v1/config"

# Callbacks registered before any lifecycle exists wait here; the next lifecycle adopts them, so
# register_config_callback() works at import time, before start-up and after it alike.
_default_services = ServiceRegistry()
# Running lifecycles, oldest first. The newest is the active one (get_config_reloader, the registry
# above's replacement); one stopping hands that back to the newest still running, not to nobody.
_running: list[ConfigLifecycle] = []


def _active_registry() -> ServiceRegistry:
    return _running[-1].services if _running else _default_services


# SIGHUP asks every running lifecycle of the process to reload, through one handler on the loop: a loop
# keeps one handler per signal, so a second app's replaced the first's, and its removal at stop left
# the first app with none. The handler the first found is put back when the last one stops.
_sighup_listeners: list[MemoryObjectSendStream[None]] = []
_sighup_previous: Any = None


def _on_sighup() -> None:
    for send in list(_sighup_listeners):
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(None)


def register_config_callback(
    name: str,
    callback: ServiceCallback,
    priority: int = 0,
    async_callback: bool = False,
    timeout: float | None = None,
    notify_on_start: bool | None = None,
) -> None:
    """Call ``callback(old_config, new_config)`` on every change; higher priority runs first.

    ``timeout`` None: ``CONFLEDGER_CALLBACK_TIMEOUT`` (30 s unless set). ``notify_on_start``: when the
    service restarts with a config restored from the log, call ``callback(None, restored)`` as on the
    first start (None: ``CONFLEDGER_NOTIFY_ON_START``, on unless set)."""
    _active_registry().register(
        name,
        callback,
        priority=priority,
        async_callback=async_callback,
        timeout=timeout,
        notify_on_start=notify_on_start,
    )


def unregister_config_callback(name: str) -> bool:
    return _active_registry().unregister(name)


def _freeze_start_up_objects() -> None:
    """Leave what the process made up to now out of the garbage collector's later passes (``gc.freeze``).

    A full pass walks every object the process holds, and most of a service's were made at start-up (the
    modules, the app, the model's schema, the restored projections) and live as long as it does. The
    pass stops every thread for its length: 44-62 ms for the example service, once every few hundred
    reloads, and every request in flight waited for it. Left out, the longest pass took 6 ms. No
    collection first: start-up leaves about a hundred unreachable objects, not worth the 70 ms one
    takes; ``gc.unfreeze`` at stop hands everything back (a process that starts the service again must
    not keep every earlier one's).
    """
    gc.freeze()


class ConfigLifecycle:
    """Owns the reloader for one app: opened at start-up, stopped at shut-down."""

    def __init__(
        self,
        *,
        config_model: type[BaseModel] | None,
        config_source: str | Path | None,
        validators: Sequence[ConfigValidator | ValidatorSpec],
        tokens: Tokens,
        services: ServiceRegistry,
        settings: Settings,
        telemetry: Telemetry | None = None,
    ) -> None:
        """``settings`` holds every option (the database, key, thresholds, timeouts, watching, metrics)."""
        self.settings = settings
        self.metrics = settings.metrics
        self.telemetry = telemetry
        self._owns_telemetry = False
        self.config_model = config_model
        self.config_source = None if config_source is None else str(absolute(config_source))
        self.database_url = settings.database_url or default_database_url(config_source)
        normalize_url(self.database_url)  # a malformed URL fails at set-up, not at first request
        self.validators = list(validators)
        self.tokens = tokens
        self.services = services
        self.source_dirs = list(settings.source_dirs)
        for directory in self.source_dirs:
            if not directory.is_dir():
                # Allowed, and perhaps made later (a volume mounted after start): said, not refused.
                logger.warning("CONFLEDGER_SOURCE_DIRS names %s, which is not a directory (yet)", directory)
        self.encryption_key = settings.encryption_key.get_secret_value() if settings.encryption_key else None
        self.enable_signal_handler = settings.signal_handler
        self.watch_on_start = settings.watch
        self.poll_interval = settings.poll_interval
        self.force_polling = settings.force_polling
        self.reloader: ConfigReloader | None = None
        # Read pages as served, kept while the reloader's projections stay where they were.
        self.pages: RenderedPages | None = None
        self.signal_handler_enabled = False
        self.token_file: Path | None = None
        self.token_created = False
        # Set by ``serve --workers`` (``api.workers``): this process's index among the service's workers,
        # and when the service's supervisor started (wall-clock seconds): a file-watch toggle its workers
        # recorded before then belongs to an earlier run of the service.
        self.worker_index: int | None = None
        self.workers_started_at: float | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def base_dir(self) -> Path | None:
        return None if self.config_source is None else Path(self.config_source).parent

    @property
    def allowed_dirs(self) -> list[Path]:
        """Where a client's ``config_source`` may point: the configured source's directory and the extras."""
        dirs = [] if self.base_dir is None else [self.base_dir]
        return dirs + self.source_dirs

    def _open_log(self) -> EventLog:
        return open_log(
            self.settings, self.database_url, self.config_source, encryption_key=self.encryption_key
        )

    async def __aenter__(self) -> ConfigLifecycle:
        stack = contextlib.AsyncExitStack()
        try:
            log = await anyio.to_thread.run_sync(self._open_log)
            stack.callback(log.close)
            if self.telemetry is None and (self.metrics or otlp_configured()):
                self.telemetry = Telemetry(prometheus=self.metrics)
                self._owns_telemetry = True
                stack.callback(self._drop_telemetry)
            reloader = ConfigReloader(
                log,
                config_model=self.config_model,
                config_source=self.config_source,
                validators=self.validators,
                services=self.services,
                tracer=None if self.telemetry is None else self.telemetry.tracer,
                settings=self.settings,
            )
            if self.worker_index is not None:
                started_at = self.workers_started_at
                reloader.watch_group = WatchGroup(
                    group_of(log.instance_id),
                    owner=self.worker_index == 0,
                    since=datetime.now(UTC)
                    if started_at is None
                    else datetime.fromtimestamp(started_at, UTC),
                )
            if self.telemetry is not None:
                # Bound before start so the start-up operation is measured like any other.
                self.telemetry.bind(reloader)
                if not self._owns_telemetry:
                    # An owned one is unbound by its shutdown, after its final export.
                    stack.callback(self.telemetry.unbind)
            await stack.enter_async_context(reloader)
            self.reloader = reloader
            self.pages = RenderedPages(reloader.projections)
            set_config_reloader(reloader)
            _running.append(self)
            stack.callback(self._step_down)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            if self.enable_signal_handler:
                self.signal_handler_enabled = self._install_sighup(task_group, stack)
            if self.watch_on_start and self.config_source is not None:
                await reloader.enable_file_watching(self.poll_interval, force_polling=self.force_polling)
            if self.settings.gc_freeze:
                _freeze_start_up_objects()
                stack.callback(self._thaw)
        except BaseException:
            await stack.aclose()
            self.reloader, self.pages = None, None
            raise
        self._stack = stack
        return self

    def _drop_telemetry(self) -> None:
        if self.telemetry is not None and self._owns_telemetry:
            self.telemetry.shutdown()
            self.telemetry = None
            self._owns_telemetry = False

    def _thaw(self) -> None:
        """``gc.unfreeze`` once no other lifecycle of the process runs: the freeze is process-wide, and
        another app still running would have its own start-up objects handed back to the full passes."""
        if all(other is self for other in _running):
            gc.unfreeze()

    def _step_down(self) -> None:
        """No longer the active lifecycle: the newest other one still running is, if any."""
        if self in _running:
            _running.remove(self)
        set_config_reloader(_running[-1].reloader if _running else None)

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._step_down()
            self.signal_handler_enabled = False

    def _install_sighup(self, task_group: anyio.abc.TaskGroup, stack: contextlib.AsyncExitStack) -> bool:
        """SIGHUP through the running loop: the handler only queues a request; a task does the reload."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        # One slot: a burst of signals while a reload runs leaves exactly one follow-up queued.
        send, receive = anyio.create_memory_object_stream[None](max_buffer_size=1)

        async def consume() -> None:
            async with receive:
                async for _ in receive:
                    if self.reloader is None:
                        continue
                    try:
                        await self.reloader.request_reload(Trigger.SIGNAL, actor="signal")
                    except Exception as exc:
                        # An unreachable log fails this reload, not the service: keep serving and
                        # keep listening, so the next SIGHUP can try again.
                        logger.error("reload on SIGHUP failed: %s", exc)

        global _sighup_previous
        if not _sighup_listeners:
            _sighup_previous = signal.getsignal(signal.SIGHUP)
            loop.add_signal_handler(signal.SIGHUP, _on_sighup)
        _sighup_listeners.append(send)

        def restore() -> None:
            _sighup_listeners.remove(send)
            send.close()
            if not _sighup_listeners:
                loop.remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, _sighup_previous)

        stack.callback(restore)
        task_group.start_soon(consume)
        return True


def _tokens_for(
    admin_token: str | None, read_token: str | None, database_url: str, config_source: str | Path | None
) -> tuple[Tokens, Path | None, bool]:
    if admin_token:
        return Tokens(admin_token, read_token or None), None, False
    path = token_file_path(database_url, config_source)
    token, created = load_or_create_token_file(path)
    return Tokens(token, read_token or None), path, created


def setup_configuration_lifecycle(
    app: FastAPI,
    *,
    config_model: type[BaseModel] | None = None,
    config_source: str | Path | None = None,
    database_url: str | None = None,
    validators: Sequence[ConfigValidator | ValidatorSpec] = (),
    admin_token: str | None = None,
    read_token: str | None = None,
    source_dirs: Sequence[str | Path] = (),
    encryption_key: str | None = None,
    instance_id: str | None = None,
    backup_count: int | None = None,
    enable_automatic_rollback: bool | None = None,
    rollback_threshold: float | None = None,
    enable_signal_handler: bool | None = None,
    enable_file_watching: bool | None = None,
    poll_interval: float | None = None,
    force_polling: bool | None = None,
    prefix: str = DEFAULT_PREFIX,
    include_router: bool = True,
    include_health: bool = True,
    services: ServiceRegistry | None = None,
    sqlite_synchronous: str | None = None,
    metrics: bool | None = None,
    telemetry: Telemetry | None = None,
    history_window: int | None = None,
    settings: Settings | None = None,
) -> ConfigLifecycle:
    """Wire a reloader into ``app``'s lifespan and mount the config API under ``prefix``.

    Options left as None come from ``settings`` (default: the ``CONFLEDGER_*`` environment variables;
    the defaults are written once, in ``confledger.api.settings.Settings``). With no admin token
    configured, one is generated into a 0600 file beside the database (its path is logged, never the
    token). ``metrics`` adds a Prometheus ``/metrics`` endpoint (read token); traces and metrics go to
    OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; pass ``telemetry`` to bring your own providers.
    ``history_window`` is how many recent operations ``GET /history`` serves from memory; older pages
    are folded from the log. If the log is empty and the source cannot be applied, start-up fails with
    ``InitialConfigError``.
    """
    base = settings if settings is not None else Settings()
    if settings is None:  # read from the environment here: a misspelt variable would go unnoticed
        for warning in misspelt_variables(os.environ):
            logger.warning(warning)
    resolved = settings_with(
        base,
        database_url=database_url,
        admin_token=admin_token,
        read_token=read_token,
        source_dirs=[*source_dirs, *base.source_dirs] if source_dirs else None,
        encryption_key=encryption_key,
        instance_id=instance_id,
        backup_count=backup_count,
        automatic_rollback=enable_automatic_rollback,
        rollback_threshold=rollback_threshold,
        signal_handler=enable_signal_handler,
        watch=enable_file_watching,
        poll_interval=poll_interval,
        force_polling=force_polling,
        sqlite_synchronous=sqlite_synchronous,
        metrics=metrics,
        history_window=history_window,
    )
    # Like every other option, the source and the model come from the settings when not given
    # (CONFLEDGER_CONFIG, CONFLEDGER_MODEL): without them the seed's `setup_configuration_lifecycle(app)`
    # started a service with no config, every reload failing "no config source".
    if config_source is None:
        config_source = resolved.config
    if config_model is None and resolved.model:
        from confledger.api.server import import_model, import_validators

        config_model = import_model(resolved.model, resolved.app_dir)
        validators = validators or import_validators(config_model)
    url = resolved.database_url or default_database_url(config_source)
    resolved = settings_with(resolved, database_url=url)
    admin = resolved.admin_token.get_secret_value() if resolved.admin_token else None
    reader = resolved.read_token.get_secret_value() if resolved.read_token else None
    tokens, token_path, created = _tokens_for(admin, reader, url, config_source)
    if created:
        logger.warning("generated an admin token for the config API; it is in %s (mode 0600)", token_path)
    lifecycle = ConfigLifecycle(
        config_model=config_model,
        config_source=config_source,
        validators=validators,
        tokens=tokens,
        services=services if services is not None else _default_services,
        settings=resolved,
        telemetry=telemetry,
    )
    lifecycle.token_file = token_path
    lifecycle.token_created = created
    # After the URL was checked; before start-up, which opens the log (and SQLite would create it 0644):
    # the log holds the whole config history, embedded or under serve.
    create_private_database_file(url)
    app.state.confledger = lifecycle
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with lifecycle, original(application) as state:
            yield state

    app.router.lifespan_context = lifespan
    # Imported here: the routes depend on this module (through api.deps), not the other way round.
    from confledger.api.errors import ApiError, api_error_handler
    from confledger.api.routes import build_config_router, health
    from confledger.api.routes import metrics as metrics_routes

    # For confledger's own refusals only (the app's HTTPExceptions answer as before): every one carries
    # its code, from the routes and from CurrentConfigDep in the app's own routes alike.
    app.add_exception_handler(ApiError, api_error_handler)
    if include_router:
        from confledger.api.errors import store_error_handler
        from confledger.store import ConfledgerError

        app.include_router(build_config_router(), prefix=prefix)
        # A failing log (unreachable, read-only) answers JSON with a stable detail, not a plain-text 500.
        app.add_exception_handler(ConfledgerError, store_error_handler)
    if resolved.metrics or telemetry is not None:
        app.include_router(metrics_routes.router)
    if include_health:
        app.include_router(health.router)
    return lifecycle
