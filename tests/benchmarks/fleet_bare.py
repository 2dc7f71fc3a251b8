"""The bare follower of ``bench_fleet.py``'s work anchor: the fleet's work with nothing of confledger's.

    python fleet_bare.py CONNINFO NAME STAMPS_SOCKET

A process that does what the fleet issue asks of every follower, written as plainly as psycopg allows,
so the benchmark can show, in the same run and on the same cores, how soon N such processes can be done
with a change, whatever a library adds:

* wait for a ``NOTIFY`` on its own connection (``LISTEN bare_fleet``);
* read the changes decided after its position (``SELECT ... WHERE position > last``), one statement;
* parse each body (``json.loads``) and validate it with the benchmark's model (pydantic);
* hand it to a service: the same datagram ``fleet_noop.py`` sends (``NAME LEVEL time.time()``);
* record its answer durably in the one totally ordered log (``LOCK TABLE`` in ``EXCLUSIVE`` mode, as
  every writer of a gap-free, hash-chained log must take turns, one ``INSERT``, ``COMMIT``).

No hash chain, no encryption, no projections, no heartbeats, no HTTP server, no threads: what is left is
the floor. The table ``bare_events`` is made by the harness.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import psycopg
from pydantic import BaseModel


class FleetConfig(BaseModel):
    level: int
    name: str = "fleet"


def follow(conninfo: str, name: str, stamps: str) -> None:
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with (
        psycopg.connect(conninfo, autocommit=True) as bell,
        psycopg.connect(conninfo) as work,
    ):
        bell.execute("LISTEN bare_fleet")
        row = work.execute("SELECT coalesce(max(position), 0) FROM bare_events").fetchone()
        work.commit()
        last = int(row[0]) if row else 0
        sender.sendto(f"{name} 0 0".encode(), stamps)  # listening: level 0
        while True:
            for _ in bell.notifies(timeout=1.0, stop_after=1):
                pass
            decided = work.execute(
                "SELECT position, body FROM bare_events WHERE position > %s AND kind = 'applied' "
                "ORDER BY position",
                (last,),
            ).fetchall()
            work.commit()
            for position, body in decided:
                config = FleetConfig.model_validate(json.loads(body))
                if config.level < 0:  # the harness's way of saying the run is over
                    return
                sender.sendto(f"{name} {config.level} {time.time()}".encode(), stamps)
                answer = json.dumps({"position": position, "outcome": "applied", "level": config.level})
                work.execute("LOCK TABLE bare_events IN EXCLUSIVE MODE")
                work.execute(
                    "INSERT INTO bare_events (kind, instance, body) VALUES ('answer', %s, %s)", (name, answer)
                )
                work.commit()
                last = position


if __name__ == "__main__":
    follow(sys.argv[1], sys.argv[2], sys.argv[3])
