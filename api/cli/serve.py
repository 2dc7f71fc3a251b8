"""``confledger serve``: the config service (FastAPI under uvicorn) on one config file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from socket import socket
from typing import TYPE_CHECKING, Annotated

import typer

from confledger.api.cli.app import app, err, out, settings_error
from confledger.api.cli.setting_options import with_setting_options
from confledger.store.errors import ConfledgerError

if TYPE_CHECKING:
    from confledger.api.settings import Settings

__all__: list[str] = []


@app.command("serve")
@with_setting_options
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CONFLEDGER_CONFIG", help="Config file.")],
    model: Annotated[
        str | None, typer.Option("--model", envvar="CONFLEDGER_MODEL", help="Config model as module:Class.")
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database", "-d", envvar="CONFLEDGER_DATABASE_URL", help="Default: SQLite next to the config."
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="CONFLEDGER_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CONFLEDGER_PORT")] = 8000,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", envvar="CONFLEDGER_WATCH")] = False,
    poll_interval: Annotated[float, typer.Option(envvar="CONFLEDGER_POLL_INTERVAL", min=0.1, max=60.0)] = 1.0,
    app_dir: Annotated[Path, typer.Option("--app-dir", envvar="CONFLEDGER_APP_DIR")] = Path("."),
    metrics: Annotated[bool, typer.Option("--metrics/--no-metrics", envvar="CONFLEDGER_METRICS")] = True,
    log_level: Annotated[
        str,
        typer.Option(envvar="CONFLEDGER_LOG_LEVEL", help="critical, error, warning, info or debug."),
    ] = "info",
    workers: Annotated[
        int,
        typer.Option(
            envvar="CONFLEDGER_WORKERS",
            min=1,
            max=64,
            help="Worker processes sharing the socket, each an instance on the one log.",
        ),
    ] = 1,
    *,
    settings_given: dict[str, object] | None = None,
) -> None:
    """Run the config service (FastAPI under uvicorn) on CONFIG, recording everything in the log.

    Every setting is an option; one not given takes its CONFLEDGER_* variable, else its default
    (confledger.api.settings.Settings). Tokens and keys are variables only: a command line is seen by
    every user of the host.
    """
    import logging

    import uvicorn
    from pydantic import ValidationError

    from confledger.api.access_log import QueryRedaction, query_parameter_names
    from confledger.api.connections import with_request_deadline
    from confledger.api.logs import configure_logging, uvicorn_log_config
    from confledger.api.preflight import (
        OneLineStartupFailure,
        bind_listening_socket,
        check_anchor_location,
        check_config_directory,
        check_database_location,
        check_log,
        listening_url,
        one_line,
    )
    from confledger.api.server import create_app, import_model
    from confledger.api.settings import Settings, default_database_url, misspelt_variables

    overrides: dict[str, object] = {
        "config": config,
        "model": model,
        "host": host,
        "port": port,
        "watch": watch,
        "poll_interval": poll_interval,
        "app_dir": app_dir,
        "metrics": metrics,
        "log_level": log_level,
        "workers": workers,
    }
    if database is not None:
        overrides["database_url"] = database
    overrides.update(settings_given or {})  # the rest of the settings, where given as options
    # Every start-up mistake is one line and a non-zero exit, found before anything is appended to the
    # log: the port is bound before the log is opened, and the log is opened (then closed) before
    # uvicorn starts the service on that port.
    sock = None
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        configure_logging(settings.log_format, settings.log_level)
        config_model = import_model(settings.model, settings.app_dir) if settings.model else None
        check_config_directory(config)
        database_url = settings.database_url or default_database_url(config)
        check_database_location(database_url)
        check_anchor_location(settings.anchor_file)
        sock = bind_listening_socket(settings.host, settings.port)
        check_log(settings, database_url)
        fastapi_app, lifecycle = create_app(settings, model=config_model)
    except (ConfledgerError, ValidationError) as exc:
        if sock is not None:
            sock.close()
        message = settings_error(exc) if isinstance(exc, ValidationError) else one_line(exc)
        err.print(f"[red]error[/red]: {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for warning in misspelt_variables(os.environ):
        err.print(f"[yellow]warning[/yellow]: {warning}", highlight=False, soft_wrap=True)
    if not config.exists():
        err.print(
            f"[yellow]warning[/yellow]: {config} does not exist yet; serving without a config until it does"
        )
    if lifecycle.token_created and _on_a_terminal():
        # Shown this once to the operator who started it; afterwards it lives only in the 0600 file.
        out.print(
            f"admin token (shown once; kept in {lifecycle.token_file}): {lifecycle.tokens.admin}",
            highlight=False,
            soft_wrap=True,
        )
    elif lifecycle.token_file is not None:
        out.print(
            f"admin token: in {lifecycle.token_file}; send it as 'Authorization: Bearer <token>'",
            highlight=False,
            soft_wrap=True,
        )
    # uvicorn names its address only when it binds the socket itself; bound here, the port (one given
    # as 0 too) would otherwise be nowhere in the output.
    # Logged, not printed: under --log-format json every line of the output stays a JSON object.
    logging.getLogger(__name__).info("listening on %s (Ctrl-C stops)", listening_url(sock))
    # The access log shows query values only for the API's own parameters (a token there is refused
    # with 401 and never written); uvicorn's dictConfig adds handlers but keeps a logger's filters.
    logging.getLogger("uvicorn.access").addFilter(QueryRedaction(query_parameter_names(fastapi_app)))
    if settings.workers > 1:
        _serve_with_workers(settings, overrides, sock)
        return
    guarded = OneLineStartupFailure(fastapi_app)
    server_config = uvicorn.Config(
        guarded,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Every request must arrive whole within the deadline; idle connections close after the
        # keep-alive timeout; request line and headers are capped; stopping waits this long at most.
        http=with_request_deadline(settings.request_timeout),
        timeout_keep_alive=settings.keep_alive_timeout,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        log_config=uvicorn_log_config(settings.log_format),
    )
    server = uvicorn.Server(server_config)
    server.run(sockets=[sock])
    if not server.started:
        raise typer.Exit(1)


def _serve_with_workers(settings: Settings, overrides: dict[str, object], sock: socket) -> None:
    """N workers on the socket bound above, under uvicorn's supervisor (``confledger.api.workers``)."""
    import os
    import time

    from confledger.api.logs import uvicorn_log_config
    from confledger.api.workers import WorkerConfig, WorkerPlan, WorkerSupervisor, worker_instance_id

    started_at = time.time()
    configs = [
        WorkerConfig(
            WorkerPlan(
                # One watcher for the file: a change is one reload decided by worker 0, which the other
                # workers follow, not one reload per worker racing for the fleet's lock.
                overrides=overrides if index == 0 else {**overrides, "watch": False},
                log_level=settings.log_level,
                instance_id=worker_instance_id(settings.instance_id, os.getpid(), index),
                index=index,
                started_at=started_at,
            ),
            request_timeout=settings.request_timeout,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_keep_alive=settings.keep_alive_timeout,
            h11_max_incomplete_event_size=settings.max_header_bytes,
            timeout_graceful_shutdown=settings.shutdown_timeout,
            workers=settings.workers,
            log_config=uvicorn_log_config(settings.log_format),
        )
        for index in range(settings.workers)
    ]
    supervisor = WorkerSupervisor(configs, [sock], reload_on_hup=settings.signal_handler)
    supervisor.run()
    if supervisor.failed:
        raise typer.Exit(1)


def _on_a_terminal() -> bool:
    """Whether standard output is a terminal. Elsewhere (systemd's journal, a container's log, a file
    under nohup) what ``serve`` prints is kept and read by more people than the token is meant for.
    Asked of the stream itself: Rich's ``is_terminal`` answers yes to ``FORCE_COLOR``, which CI sets."""
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except ValueError:  # closed
        return False
