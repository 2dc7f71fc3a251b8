"""Gunicorn with uvicorn workers, where SIGHUP reloads the config once instead of restarting every worker.

A gunicorn config module (``pip install 'confledger[gunicorn]'``)::

    gunicorn -c python:confledger.api.gunicorn -w 4 -b 127.0.0.1:8000 'confledger.api.gunicorn:app()'
    gunicorn -c python:confledger.api.gunicorn -w 4 -b 127.0.0.1:8000 myservice:app   # your own app

Gunicorn's master answers SIGHUP by starting new workers and stopping the old ones. With this module,
the master hands SIGHUP to one worker instead (the longest-running), which reloads through its normal
SIGHUP path (trigger ``signal``) and decides the fleet's config; the other workers follow the log. No
worker is restarted. To reload gunicorn's own settings or code, use its other ways: ``kill -USR2`` (a
new master) or a restart.

Each worker is an instance named ``CONFLEDGER_INSTANCE_ID`` (default ``host:<master pid>``) plus
``/w<slot>``, a slot being a worker's place among the live workers (a replacement takes the slot of the
worker it replaces), as ``confledger serve --workers`` names them. ``app()`` is the service
``confledger serve`` runs, configured from ``CONFLEDGER_*`` (``CONFLEDGER_CONFIG``, ``CONFLEDGER_MODEL``,
...); for it the master runs serve's start-up checks and writes the admin token file once, before any
worker exists. An app of your own should set ``CONFLEDGER_ADMIN_TOKEN``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker

from confledger.api.workers import stop_when_orphaned, worker_instance_id

__all__ = ["UvicornWorker", "app", "on_starting", "post_fork", "pre_fork", "worker_class"]

worker_class = "confledger.api.gunicorn.UvicornWorker"

_APP_REFERENCE = "confledger.api.gunicorn:app"
# CONFLEDGER_INSTANCE_ID as the master found it; each worker adds its slot.
_base_instance_id: str | None = None
# In a worker (set by post_fork): its slot, so that confledger's own service groups its workers' file
# watching as ``serve --workers`` does (worker 0 watches for all, whichever worker is asked).
_worker_slot: int | None = None
# When the master started (wall-clock seconds; inherited by every worker it forks): a file-watch toggle
# recorded before then belongs to an earlier run of the service.
_started_at: float | None = None


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]  # uvicorn-worker ships no types
    """uvicorn-worker's worker with confledger's request deadline and header cap, ignoring SIGHUP until
    the app's lifecycle takes it over (gunicorn resets it to its default, which ends the process), and
    stopping gracefully once its master is gone (killed outright, it tells its workers nothing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from confledger.api.connections import with_request_deadline
        from confledger.api.settings import Settings

        settings = Settings()
        self.config.http = with_request_deadline(settings.request_timeout)
        self.config.h11_max_incomplete_event_size = settings.max_header_bytes

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # uvicorn's worker, unlike gunicorn's own, never looks whether its master is still there.
        stop_when_orphaned(self.ppid)


def on_starting(server: Any) -> None:
    """In the master, before any worker: SIGHUP goes to one worker; serve's checks run once for ``app()``."""
    global _base_instance_id, _started_at
    _base_instance_id = os.environ.get("CONFLEDGER_INSTANCE_ID") or None
    _started_at = time.time()
    server.handle_hup = lambda: _reload_through_one_worker(server)
    if str(getattr(server.app, "app_uri", None) or server.cfg.wsgi_app or "").startswith(_APP_REFERENCE):
        _check_service(server)


def _reload_through_one_worker(server: Any) -> None:
    workers = sorted(server.WORKERS.items(), key=lambda item: item[1].age)
    if not workers:
        server.log.warning("Received SIGHUP, but no worker is running; nothing was done.")
        return
    pid, _ = workers[0]
    server.log.info("Received SIGHUP: reloading through worker %s (no worker is restarted).", pid)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        server.log.warning("Received SIGHUP, but worker %s has just gone; send it again.", pid)


def pre_fork(server: Any, worker: Any) -> None:
    """In the master: the lowest slot no live worker holds."""
    taken = {getattr(other, "confledger_slot", None) for other in server.WORKERS.values()}
    worker.confledger_slot = next(slot for slot in range(len(taken) + 1) if slot not in taken)


def post_fork(server: Any, worker: Any) -> None:
    """In the worker, before the app is loaded: its instance id; the file watcher in slot 0 alone (a
    change is one reload the others follow, not one per worker racing for the fleet's lock)."""
    global _worker_slot
    _worker_slot = worker.confledger_slot
    os.environ["CONFLEDGER_INSTANCE_ID"] = worker_instance_id(
        _base_instance_id, server.pid, worker.confledger_slot
    )
    if worker.confledger_slot != 0:
        os.environ["CONFLEDGER_WATCH"] = "false"


def _check_service(server: Any) -> None:
    """serve's start-up checks, in the master: one line and exit 1 for any mistake; the token file once."""
    from pydantic import ValidationError

    from confledger.api.cli.app import settings_error
    from confledger.api.preflight import (
        check_anchor_location,
        check_config_directory,
        check_database_location,
        check_log,
        one_line,
    )
    from confledger.api.server import create_app, import_model
    from confledger.api.settings import Settings, default_database_url
    from confledger.store.errors import ConfledgerError, SetupError

    try:
        settings = Settings()
        if settings.config is None:
            raise SetupError("set CONFLEDGER_CONFIG to the config file", code="config_missing")
        model = import_model(settings.model, settings.app_dir) if settings.model else None
        check_config_directory(settings.config)
        database_url = settings.database_url or default_database_url(settings.config)
        check_database_location(database_url)
        check_anchor_location(settings.anchor_file)
        check_log(settings, database_url)
        _, lifecycle = create_app(settings, model=model)
        _first_load(settings, model)
    except (ConfledgerError, ValidationError) as exc:
        message = settings_error(exc) if isinstance(exc, ValidationError) else one_line(exc)
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if lifecycle.token_file is not None:
        server.log.info(
            "admin token: in %s; send it as 'Authorization: Bearer <token>'", lifecycle.token_file
        )


def _first_load(settings: Any, model: Any) -> None:
    """On an empty log, load the first config here, once: workers starting together on an empty log
    would each try to, and all but one would fail their start-up with a conflict."""
    import anyio

    from confledger.api.reloader import ConfigReloader
    from confledger.api.server import import_validators
    from confledger.store import EventLog

    with EventLog(settings.database_url or _default_url(settings), instance_id="probe") as log:
        if log.head() > 0:
            return

    async def load() -> None:
        async with ConfigReloader(
            config_model=model,
            config_source=settings.config,
            validators=import_validators(model) if model is not None else [],
            settings=settings,
            # As worker 0, which loads it under ``serve --workers``: under a name of its own, the master
            # stayed in the fleet view as an instance gone (a day; "web-1" beside "web-1/w0", …).
            instance_id=worker_instance_id(_base_instance_id, os.getpid(), 0),
        ):
            pass

    anyio.run(load)


def _default_url(settings: Any) -> str:
    from confledger.api.settings import default_database_url

    return default_database_url(settings.config)


def app() -> Any:
    """The service ``confledger serve`` runs, from ``CONFLEDGER_*`` (gunicorn calls it in each worker)."""
    from confledger.api.settings import Settings
    from confledger.api.workers import service_app

    settings = Settings()
    return service_app(
        settings, settings.log_level, worker_index=_worker_slot, workers_started_at=_started_at
    )
