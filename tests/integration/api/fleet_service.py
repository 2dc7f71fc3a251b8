"""The config model and service of the fleet process tests, loaded by ``confledger serve --model``.

Importing it registers one service callback (``register_config_callback`` before the lifecycle exists:
the serve process's lifecycle adopts it). The service appends one JSON line per call to the file named
by ``FLEET_RECORD`` (``{"instance", "old", "new", "accepted"}``), so a test reads what each process's
service was handed, in order. ``FLEET_REJECT_LEVEL``: the service refuses that level. ``FLEET_SLOW_LEVEL``:
it first writes ``{"begin": level}`` and sleeps 30 s at that level (a process to kill mid-change).
The fleet benchmark's followers have a model and service of their own (``tests/benchmarks/fleet_noop.py``).
"""

from __future__ import annotations

import json
import os
import time

from pydantic import BaseModel

from confledger.api.lifecycle import register_config_callback


class FleetConfig(BaseModel):
    level: int
    name: str = "fleet"


def _record(line: dict[str, object]) -> None:
    path = os.environ["FLEET_RECORD"]
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(json.dumps(line) + "\n")
        sink.flush()
        os.fsync(sink.fileno())


def _service(old: FleetConfig | None, new: FleetConfig) -> bool:
    if os.environ.get("FLEET_SLOW_LEVEL") == str(new.level):
        _record({"begin": new.level})
        time.sleep(30)
    accepted = os.environ.get("FLEET_REJECT_LEVEL") != str(new.level)
    _record(
        {
            "instance": os.environ.get("CONFLEDGER_INSTANCE_ID"),
            "old": None if old is None else old.level,
            "new": new.level,
            "accepted": accepted,
        }
    )
    return accepted


if "FLEET_RECORD" in os.environ:
    register_config_callback("recorder", _service, timeout=60)
