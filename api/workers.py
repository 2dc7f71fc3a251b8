"""``confledger serve --workers N``: one socket, N worker processes, each an instance on the one log.

The supervisor is uvicorn's own ``Multiprocess`` (it binds nothing itself: ``serve``'s preflight has bound
the socket and checked the log, and the admin token file has been written, all once, before any worker
exists). Each worker is a spawned process running uvicorn's ``Server`` on that socket with the app
``serve`` would run, built in the worker from the same options (``build_worker_app``), with the instance
id ``CONFLEDGER_INSTANCE_ID`` (default ``host:<supervisor pid>``) plus ``/w<index>``. A worker that dies
is started again under the same id, so it closes what it left open, as a restarted service does.

What the supervisor changes in uvicorn's: SIGHUP (``systemctl reload``) restarts every worker in uvicorn;
here it is handed to exactly one ready worker, which reloads through its normal SIGHUP path (trigger
``signal``) and decides the fleet's config; the other workers apply it by following the log. No worker is
restarted for it. Worker 0 starts (and, on an empty log, loads the first config) before the others, so
the first load and the closing of a crashed run's open operations are done once, not raced.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

__all__ = [
    "WorkerConfig",
    "WorkerPlan",
    "WorkerSupervisor",
    "build_worker_app",
    "service_app",
    "stop_when_orphaned",
    "worker_instance_id",
]

logger = logging.getLogger("uvicorn.error")

# How long the first worker may take to start (restore or load the config, fold the projections)
# before the supervisor gives up on the whole service.
FIRST_WORKER_START_TIMEOUT = 120.0
# Seconds between a worker's looks at whether its supervisor is still there.
ORPHAN_CHECK_INTERVAL = 1.0


def worker_instance_id(base: str | None, supervisor_pid: int, index: int) -> str:
    """``CONFLEDGER_INSTANCE_ID`` (default ``host:<supervisor pid>``) plus the worker's suffix ``/w<index>``.

    The pid in the default is the supervisor's, so a worker started again keeps its id, and an open
    operation of a whole service that crashed is known to be gone by that pid being dead.
    """
    root = base or f"{socket.gethostname()}:{supervisor_pid}"
    return f"{root}/w{index}"


@dataclass(frozen=True)
class WorkerPlan:
    """What a worker needs to build the app ``serve`` would run: plain data, sent to spawned workers."""

    overrides: dict[str, Any]
    log_level: str
    instance_id: str
    index: int = 0
    started_at: float | None = None  # the supervisor's start (wall-clock seconds): the run's file watch


def build_worker_app(plan: WorkerPlan) -> Any:
    """The worker's ASGI app (uvicorn's app factory, called in the worker before it serves)."""
    from confledger.api.settings import Settings

    # A process group of its own: a signal sent to the supervisor's group (a terminal's hang-up or
    # Ctrl-C, ``kill -HUP -<pgid>``) reaches the supervisor alone, which reloads once through one worker,
    # or stops every worker gracefully; it would otherwise make every worker reload (or stop) on its own.
    os.setpgid(0, 0)
    # Until the lifecycle takes SIGHUP over (once started), a SIGHUP must not end the worker (its default
    # action is to terminate); the supervisor sends it only to a worker that has started.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_when_orphaned(os.getppid())
    return service_app(
        Settings(**{**plan.overrides, "instance_id": plan.instance_id}),
        plan.log_level,
        worker_index=plan.index,
        workers_started_at=plan.started_at,
    )


def stop_when_orphaned(supervisor_pid: int) -> None:
    """SIGTERM this worker (a graceful stop: ``instance.stopped`` recorded) once its supervisor (``serve
    --workers``' or gunicorn's master) is gone.

    A supervisor killed outright (``kill -9``, the OOM killer) sends its workers nothing, and in process
    groups of their own they are out of reach of a signal to its group too: they went on serving the
    port, and a restarted service found it taken. An orphan is adopted by another process, so its
    parent pid changes; a daemon thread looks once a second (nothing portable tells it sooner).
    """

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(ORPHAN_CHECK_INTERVAL)
        logger.warning("Worker [%s]: its supervisor [%s] is gone; stopping.", os.getpid(), supervisor_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="confledger-orphan-watch", daemon=True).start()


def service_app(
    settings: Any, log_level: str, *, worker_index: int | None = None, workers_started_at: float | None = None
) -> Any:
    """The app ``confledger serve`` runs, built from ``settings`` (in a worker: its own instance id, and
    when the workers' supervisor started)."""
    from confledger.api.access_log import QueryRedaction, query_parameter_names
    from confledger.api.logs import configure_logging
    from confledger.api.preflight import OneLineStartupFailure
    from confledger.api.server import create_app, import_model

    configure_logging(settings.log_format, log_level)
    model = import_model(settings.model, settings.app_dir) if settings.model else None
    app, lifecycle = create_app(settings, model=model)
    # The workers of one service watch its one file through worker 0, whichever worker is asked.
    lifecycle.worker_index = worker_index
    lifecycle.workers_started_at = workers_started_at
    logging.getLogger("uvicorn.access").addFilter(QueryRedaction(query_parameter_names(app)))
    return OneLineStartupFailure(app)


class WorkerConfig(uvicorn.Config):
    """uvicorn's ``Config`` as it is sent to a spawned worker: everything in it is plain data.

    The request-deadline protocol class is made in the worker (a class made at run time cannot be
    pickled); the app is ``build_worker_app`` bound to the worker's plan.
    """

    def __init__(self, plan: WorkerPlan, *, request_timeout: float, **options: Any) -> None:
        super().__init__(functools.partial(build_worker_app, plan), factory=True, **options)
        self.plan = plan
        self.request_timeout = request_timeout

    def load(self) -> None:
        from confledger.api.connections import with_request_deadline

        self.http = with_request_deadline(self.request_timeout)
        super().load()


class WorkerSupervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` with one config per worker (its instance id) and SIGHUP forwarded."""

    def __init__(
        self, configs: list[WorkerConfig], sockets: list[socket.socket], *, reload_on_hup: bool = True
    ) -> None:
        super().__init__(configs[0], sockets)
        self.configs = configs
        # With the signal handler off (--no-signal-handler) a worker would not act on a SIGHUP sent to
        # it: the supervisor says so rather than claim a reload that never happens.
        self.reload_on_hup = reload_on_hup
        self.processes_num = len(configs)
        self.failed = False

    def _spawn(self, index: int) -> Process:
        process = Process(self.configs[index], self.sockets)
        process.start()
        return process

    def init_processes(self) -> None:
        first = self._spawn(0)
        self.processes = [first]
        if not first.wait_until_ready(FIRST_WORKER_START_TIMEOUT, self.should_exit):
            if not self.should_exit.is_set():
                logger.error("Worker 0 [%s] did not start; stopping.", first.pid)
                self.failed = True
                self.should_exit.set()
            return
        self.processes.extend(self._spawn(index) for index in range(1, self.processes_num))

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, but a worker is started again with its own config (its instance id)."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung (or already gone)
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # It failed before serving: the app or the log is broken, and every restart would fail alike.
                logger.error("Worker %d [%s] failed to start; stopping.", index, process.pid)
                self.failed = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info("Worker %d [%s] died; starting it again.", index, process.pid)
            self.processes[index] = self._spawn(index)

    def handle_hup(self) -> None:
        """One reload for the whole service: the first ready worker reloads, the others follow the log."""
        if not self.reload_on_hup:
            logger.warning("Received SIGHUP, but the signal handler is off (--no-signal-handler); ignored.")
            return
        for index, process in enumerate(self.processes):
            if process.pid is not None and process.is_ready(timeout=1):
                logger.info("Received SIGHUP: reloading through worker %d [%s].", index, process.pid)
                os.kill(process.pid, signal.SIGHUP)
                return
        logger.warning("Received SIGHUP, but no worker is ready to reload; nothing was done.")

    def handle_ttin(self) -> None:
        logger.warning("Received SIGTTIN: the number of workers is fixed by --workers; ignored.")

    def handle_ttou(self) -> None:
        logger.warning("Received SIGTTOU: the number of workers is fixed by --workers; ignored.")
