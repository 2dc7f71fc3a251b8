"""Two instances writing the same named row for the first time, at once (``store/upsert.py``), on both
backends: neither fails, and the row ends as the rules say (a checkpoint never moves back).

The first writer's transaction is held open while the second writes, so the second meets the first's
uncommitted row (PostgreSQL: it waits on the primary key; SQLite: on the write lock) and goes on once
the first commits. Before the upsert, "update, else insert" failed the second on PostgreSQL with a
duplicate key, which stopped a fresh instance from starting beside another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy.engine import Connection

from confledger.store import Checkpoint, EventLog
from confledger.store.checkpoints import save_checkpoints
from confledger.store.integrity import IntegrityKeys, load_verified, save_verified

KEYS = IntegrityKeys(b"k" * 32, origin="test")


def checkpoint_at(position: int) -> Callable[[Connection], None]:
    return lambda connection: save_checkpoints(connection, Checkpoint("stats", 1, position, {"at": position}))


def verified_at(position: int) -> Callable[[Connection], None]:
    return lambda connection: save_verified(connection, KEYS, position, f"{position:064x}")


def write_at_once(
    log: EventLog, first: Callable[[Connection], None], second: Callable[[Connection], None]
) -> None:
    """``first`` in a transaction left open while ``second`` runs in its own, on another thread."""
    failures: list[BaseException] = []

    def run_second() -> None:
        try:
            with log.engine.begin() as connection:
                second(connection)
        except BaseException as exc:  # reported on the test's thread
            failures.append(exc)

    with log.engine.connect() as connection:
        transaction = connection.begin()
        first(connection)
        other = threading.Thread(target=run_second)
        other.start()
        time.sleep(0.3)  # long enough for the second to reach the first's row and wait on it
        transaction.commit()
    other.join(timeout=30)
    assert not other.is_alive()
    assert failures == []


CASES = [
    # (what is written, the first writer's, the second writer's, what the row must hold after)
    pytest.param(checkpoint_at(5), checkpoint_at(9), 9, id="checkpoint-second-ahead"),
    # The second is behind the first: it must not move the checkpoint back.
    pytest.param(checkpoint_at(9), checkpoint_at(5), 9, id="checkpoint-second-behind"),
    pytest.param(verified_at(5), verified_at(9), 9, id="verified-record"),
]


@pytest.mark.parametrize(("first", "second", "expected"), CASES)
def test_two_first_writes_of_one_row_both_succeed(
    log: EventLog, first: Callable[[Connection], None], second: Callable[[Connection], None], expected: int
) -> None:
    write_at_once(log, first, second)
    with log.engine.connect() as connection:
        verified = load_verified(connection, KEYS)
    checkpoint = log.load_checkpoint("stats")
    found = checkpoint.position if checkpoint is not None else verified[0] if verified is not None else None
    assert found == expected
