"""Several writer processes appending to one log at once: positions stay exactly 1..N and the chain holds.

Size knob: ``CONFLEDGER_TEST_SCALE`` (float, default 1.0) multiplies the appends per writer.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

import pytest

from confledger.store import EventLog, NewEvent
from confledger.store.events import InstanceStarted
from tests.scale import scaled

WRITERS = 4
APPENDS_PER_WRITER = scaled(500)


def append_many(url: str, writer: int, appends: int, start: Barrier) -> None:
    """Child process: open the log, wait for the others, then append one event per transaction."""
    # SQLite keeps its default synchronous=FULL (an fsync per commit): the 4 x 500 run takes about 4 s
    # on a 2-core machine, so there is no need to weaken durability to keep the test fast.
    with EventLog(url, instance_id=f"writer-{writer}") as log:
        start.wait(timeout=120)
        for sequence in range(appends):
            log.append([NewEvent(InstanceStarted(version="0.1.0", host=f"writer-{writer}", pid=sequence))])


@pytest.mark.slow
def test_concurrent_writer_processes_leave_a_gap_free_verified_log(
    database_url: str, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    # A spawned child imports this module by name to find ``append_many``: it needs the repository root
    # (where ``tests`` lives) on its path, which the importlib import mode does not give the parent.
    monkeypatch.syspath_prepend(str(pytestconfig.rootpath))
    # Migrate once here, so the children only contend for appends.
    with EventLog(database_url, instance_id="parent"):
        pass

    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(WRITERS)
    writers = [
        spawn.Process(target=append_many, args=(database_url, writer, APPENDS_PER_WRITER, start))
        for writer in range(WRITERS)
    ]
    try:
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=600)
    finally:
        for process in writers:
            if process.is_alive():  # only a hung writer: never leave it running after the test
                process.kill()
                process.join()
    assert [process.exitcode for process in writers] == [0] * WRITERS

    total = WRITERS * APPENDS_PER_WRITER
    with EventLog(database_url, instance_id="parent") as log:
        recorded = list(log.iter_events())
        assert [event.position for event in recorded] == list(range(1, total + 1))  # no gap, no duplicate
        assert log.head() == total
        report = log.verify()
        assert report.ok, report.reason
        assert report.checked == total

    # Every writer's events are all there, each writer's in its own order.
    for writer in range(WRITERS):
        own = [event.payload.pid for event in recorded if event.instance_id == f"writer-{writer}"]  # type: ignore[attr-defined]
        assert own == list(range(APPENDS_PER_WRITER))
    # Interleaving is not asserted: SQLite's busy handler lets one writer keep the lock for long streaks
    # (a run of 468 of one writer's 500 appends was seen), so how much the writers mix is up to the
    # scheduler. The barrier makes all four contend from their first append.


@pytest.mark.slow
def test_threads_sharing_one_log_and_a_second_writer_interleave_without_gaps(database_url: str) -> None:
    # One process's appends and put_config share the writer connection (a thread lock); checkpoints
    # write through SQLAlchemy connections; a second EventLog on the same database is another writer.
    # All of them must still exclude each other, and a failing append must not poison the connection.
    import threading

    from confledger.store import ConcurrencyConflict, config_hash
    from confledger.store.events import ConfigApplied
    from confledger.store.log import Checkpoint

    threads = 4
    appends = max(1, APPENDS_PER_WRITER // 5)
    with (
        EventLog(database_url, instance_id="shared") as log,
        EventLog(database_url, instance_id="other") as other,
    ):
        failures: list[BaseException] = []
        start = threading.Barrier(threads + 2)

        def appender(index: int) -> None:
            try:
                start.wait(timeout=60)
                for sequence in range(appends):
                    log.append(
                        [NewEvent(InstanceStarted(version="0.1.0", host=f"thread-{index}", pid=sequence))]
                    )
                    if sequence % 10 == 0:  # a stale apply: refused, nothing written, connection still good
                        with pytest.raises(ConcurrencyConflict):
                            log.append(
                                [
                                    NewEvent(
                                        ConfigApplied(
                                            hash=config_hash({"t": index, "s": sequence}), previous_hash=None
                                        )
                                    )
                                ],
                                expected_head=0,
                            )
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        def side_writer() -> None:
            try:
                start.wait(timeout=60)
                for sequence in range(appends):
                    other.append([NewEvent(InstanceStarted(version="0.1.0", host="other", pid=sequence))])
                    log.save_checkpoint(
                        Checkpoint("probe", version=1, position=sequence, state={"n": sequence})
                    )
                    log.put_config({"sequence": sequence})
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        log.append([NewEvent(ConfigApplied(hash=config_hash({"first": True}), previous_hash=None))])
        workers = [threading.Thread(target=appender, args=(index,)) for index in range(threads)]
        workers.append(threading.Thread(target=side_writer))
        for worker in workers:
            worker.start()
        start.wait(timeout=60)
        for worker in workers:
            worker.join(timeout=600)
        assert not failures, failures

        total = 1 + (threads + 1) * appends
        assert [event.position for event in log.iter_events()] == list(range(1, total + 1))
        report = log.verify()
        assert report.ok, report.reason
