"""The ``confledger`` command line (Typer).

One module per group of commands: ``bootstrap`` (init, keygen), ``db`` (migrations), ``serve`` (the service), ``log`` (reading the log
directly, while the service is up or down), ``remote`` (acting on a running service over HTTP). Each
imports the heavy parts it needs (SQLAlchemy, FastAPI, uvicorn, httpx) when a command runs, so the
command line starts quickly.
"""

from __future__ import annotations

from confledger.api.cli import bootstrap, db, log, remote, serve  # noqa: F401 - importing registers the commands
from confledger.api.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="confledger")
