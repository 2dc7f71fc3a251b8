"""Getting started: ``confledger init`` writes a working directory the user owns, ``confledger keygen`` makes
an encryption key.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from confledger.api.cli.app import app, err, out

__all__: list[str] = []

EXAMPLE_MODEL = "confledger.examples.app_config:AppConfig"
# What `init` copies out of the installed examples: the tour edits these copies, never the package's own.
STARTER_FILES = ("config.yaml",)


@app.command("init")
def init_command(
    directory: Annotated[
        Path, typer.Argument(help="Where to put the starter config (created if missing).")
    ] = Path("confledger-demo"),
) -> None:
    """Write a starter config to DIRECTORY (existing files are kept) and say how to serve it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(f"[red]error[/red]: cannot create {directory}: {exc.strerror or type(exc).__name__}")
        raise typer.Exit(1) from None
    examples = resources.files("confledger.examples")
    for name in STARTER_FILES:
        target = directory / name
        if target.exists():
            out.print(f"kept {target} (already there)", highlight=False)
            continue
        try:
            with resources.as_file(examples / name) as source:
                shutil.copyfile(source, target)
        except OSError as exc:
            # An existing directory the user may not write in (/etc/app without sudo).
            err.print(
                f"[red]error[/red]: cannot write {target}: {exc.strerror or type(exc).__name__}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        out.print(f"wrote {target}", highlight=False)
    out.print(
        f"next: confledger serve --config {directory / 'config.yaml'} --model {EXAMPLE_MODEL}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("keygen")
def keygen_command(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Write the key to this file (mode 0600, never overwritten) instead of printing it.",
        ),
    ] = None,
) -> None:
    """Make a new encryption key for secrets at rest (set it as CONFLEDGER_ENCRYPTION_KEY)."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode("ascii")
    if file is None:
        typer.echo(key)
        return
    try:
        # O_EXCL: a key that already protects a log is never replaced by accident.
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        why = (
            "is a directory: name the key file in it"
            if file.is_dir()
            else "exists; a key in use is never overwritten"
        )
        err.print(f"[red]error[/red]: {file} {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(
            f"[red]error[/red]: cannot write {file}: {exc.strerror or type(exc).__name__}", soft_wrap=True
        )
        raise typer.Exit(1) from None
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    out.print(f"wrote a new key to {file} (mode 0600)", highlight=False)
