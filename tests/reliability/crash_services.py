"""The model and three service callbacks of the crash tests' ``confledger serve`` (``--model`` imports this).

Importing the module registers ``alpha``, ``beta`` and ``gamma`` (in that priority order) with
``register_config_callback``, the way an application registers its services at import time. Each one
keeps what a real service keeps, the config it runs, but where the test can see it after the process
died: the file ``$CRASH_SERVICES_DIR/<name>`` holds the ``database.pool_size`` of the config it was last
given (each version the tests write has its own pool size), replaced atomically.

``beta`` holds any config whose ``performance.max_retries`` is ``HELD_RETRIES`` until the file
``$CRASH_SERVICES_DIR/release`` exists (it has then accepted it): a test takes the database away while
an operation is between its two commits.

``gamma`` refuses any config whose ``cache.ttl_seconds`` is ``REFUSED_TTL``: with the rollback threshold
at 1 that makes a reload roll back automatically, handing ``beta`` and then ``alpha`` their previous
config back (the ``mid_rollback`` crash point lies between those two).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from confledger.api.lifecycle import register_config_callback
from confledger.examples.app_config import VALIDATORS, AppConfig

__all__ = ["HELD_RETRIES", "REFUSED_TTL", "RELEASE_FILE", "SERVICES", "VALIDATORS", "AppConfig", "state_of"]

SERVICES_DIR_VARIABLE = "CRASH_SERVICES_DIR"
SERVICES = ("alpha", "beta", "gamma")  # in the order they are called (priority, highest first)
REFUSED_TTL = 13
HELD_RETRIES = 7
RELEASE_FILE = "release"


def state_of(directory: Path) -> dict[str, int | None]:
    """The pool size each service runs, as its file says (None: never given a config)."""
    found: dict[str, int | None] = {}
    for name in SERVICES:
        path = directory / name
        found[name] = int(path.read_text(encoding="utf-8")) if path.exists() else None
    return found


def _keeper(name: str, *, refuse_ttl: int | None = None, hold: bool = False) -> object:
    def on_change(_old: AppConfig | None, new: AppConfig) -> bool:
        if refuse_ttl is not None and new.cache.ttl_seconds == refuse_ttl:
            return False
        directory = Path(os.environ[SERVICES_DIR_VARIABLE])
        if hold and new.performance.max_retries == HELD_RETRIES:
            deadline = time.monotonic() + 60
            while not (directory / RELEASE_FILE).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        temporary = directory / f".{name}.tmp"
        temporary.write_text(str(new.database.pool_size), encoding="utf-8")
        os.replace(temporary, directory / name)
        return True

    return on_change


if os.environ.get(SERVICES_DIR_VARIABLE):
    for priority, service in zip((30, 20, 10), SERVICES, strict=True):
        register_config_callback(
            service,
            _keeper(  # type: ignore[arg-type]
                service,
                refuse_ttl=REFUSED_TTL if service == "gamma" else None,
                hold=service == "beta",
            ),
            priority=priority,
        )
