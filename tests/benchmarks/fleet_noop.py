"""The model and service of ``bench_fleet.py``'s followers, loaded by ``confledger serve --model``.

Importing it registers one service callback that accepts every config and does nothing else but say
when it was handed one: ``<instance> <level> <time.time()>`` as one datagram to the Unix socket named by
``FLEET_STAMPS``, where the benchmark waits in ``recv``. The benchmark used to poll a stamp file per
follower every half millisecond, on the very cores the followers were sharing; a blocked ``recv``
costs nothing while it waits.

``bench_fleet.py`` copies this file into its work directory as a top-level module, so the followers of
an ``--anchor`` tree load this same service rather than whatever that tree had.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from pydantic import BaseModel

from confledger.api.lifecycle import register_config_callback


class FleetConfig(BaseModel):
    level: int
    name: str = "fleet"


_STAMPS = os.environ.get("FLEET_STAMPS")
_INSTANCE = os.environ.get("CONFLEDGER_INSTANCE_ID", "")
_SENDER = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


def _accept(_old: FleetConfig | None, new: FleetConfig) -> bool:
    if _STAMPS is not None:
        # Nobody listening (OSError) is the config a follower starts with: it is not measured.
        with contextlib.suppress(OSError):
            _SENDER.sendto(f"{_INSTANCE} {new.level} {time.time()}".encode(), _STAMPS)
    return True


register_config_callback("noop", _accept)
