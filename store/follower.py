"""``LogFollower``: one task per instance that keeps it on the fleet's config, and its heartbeat.

It waits for the doorbell (PostgreSQL ``LISTEN``, ``store.fleet.Doorbell``) or the poll interval,
whichever comes first, then has the runner apply every ``config.applied`` other instances recorded
since its position (``OperationRunner.follow``). On SQLite, and whenever the doorbell's connection is
down, it polls: one look at the head per interval. Nothing is lost to a dropped connection or a
restarted database: the position is the truth, the bell only shortens the wait. Errors are logged
(once per kind of failure until it clears) and retried at the next interval.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from datetime import UTC, datetime

import anyio
import anyio.abc

from confledger.store.errors import ConfledgerError
from confledger.store.fleet import Doorbell, Heartbeat, record_heartbeat
from confledger.store.following import ReadAhead
from confledger.store.operations import OperationRunner

__all__ = ["LogFollower"]

logger = logging.getLogger(__name__)


class LogFollower:
    def __init__(
        self,
        runner: OperationRunner,
        *,
        poll_interval: float,
        heartbeat_interval: float,
        version: str,
        use_doorbell: bool = True,
    ) -> None:
        self.runner = runner
        self.log = runner.log
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.version = version
        self.use_doorbell = use_doorbell and self.log.dialect == "postgresql"
        self.started_at = datetime.now(UTC)
        self._doorbell: Doorbell | None = None
        # The doorbell thread waits for most of its life: it gets a limiter of its own rather than one
        # of the tokens that serve database calls and callbacks.
        self._bell_limiter = anyio.CapacityLimiter(1)
        self._failing: dict[str, str] = {}
        self._beaten = False
        self._twins_reported: set[tuple[str, int]] = set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow and beat until cancelled."""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._beat_forever)
                task_status.started()
                await self._follow_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_doorbell()

    async def _follow_forever(self) -> None:
        while True:
            ahead = await self._wait()
            try:
                await self.runner.follow(ahead)
            except Exception as exc:
                # Any failure (a database away, a bug in a callback's surroundings) is retried at the
                # next turn: a follower that died would leave the instance behind without a word.
                self._report("follow", exc)
            else:
                self._recovered("follow")

    async def _wait(self) -> ReadAhead | None:
        """Until a config is applied somewhere (the doorbell says so) or the poll interval is up.

        Rings for other appends (answers, failed operations) are left to the interval's end: they change
        no config, and acting on each would wake every follower once per instance per change. On an
        "applied" ring the doorbell's thread reads what was decided before it hands back (returned):
        every follower of the fleet wakes at once for it, on machines often busier than their cores,
        and each hop between threads is one more wait for a core before the services hear of it.
        """
        if not self.use_doorbell:
            await anyio.sleep(self.poll_interval)
            return None
        if self._doorbell is None:
            doorbell = Doorbell(self.log.engine, own_session=self.log.writer_session)
            try:
                await anyio.to_thread.run_sync(doorbell.open, limiter=self._bell_limiter)
            except Exception as exc:
                self._report("doorbell", exc)
                await anyio.sleep(self.poll_interval)
                return None
            self._doorbell = doorbell
            self._recovered("doorbell")
            # Whatever landed while the bell was down is read now, not at the next ring.
            return None
        doorbell = self._doorbell
        deadline = anyio.current_time() + self.poll_interval
        while (remaining := deadline - anyio.current_time()) > 0:
            wait = functools.partial(self._ring_then_read, doorbell, remaining, self.runner.followed)
            try:
                rang, ahead = await anyio.to_thread.run_sync(wait, limiter=self._bell_limiter)
            except Exception as exc:
                # The connection was terminated or the server restarted: reopen it at the next turn,
                # and read the log now in case the ring that was lost was for an applied config.
                self._report("doorbell", exc)
                await self._close_doorbell()
                return None
            if rang == "applied":
                return ahead
        return None

    def _ring_then_read(
        self, doorbell: Doorbell, timeout: float, after: int
    ) -> tuple[str | None, ReadAhead | None]:
        """The doorbell's wait and, when it rang for an applied config, the read of what was decided."""
        rang = doorbell.wait(timeout)
        if rang != "applied":
            return rang, None
        try:
            return rang, self.runner.read_ahead(after)
        except ConfledgerError:
            return rang, None  # the turn reads again itself, and says what failed

    async def _close_doorbell(self) -> None:
        doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None:
            await anyio.to_thread.run_sync(doorbell.close, limiter=self._bell_limiter)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            instance_id=self.log.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=self.version,
            started_at=self.started_at,
            last_seen=datetime.now(UTC),
            followed_position=self.runner.followed,
            interval_s=self.heartbeat_interval,
        )

    async def beat(self) -> None:
        beat = self.heartbeat()
        previous = await anyio.to_thread.run_sync(record_heartbeat, self.log.engine, beat)
        # The first beat may well overwrite another pid's: this instance's own earlier run, restarted
        # under the same id. After that, the row holds another process's beat only if that process
        # beats as this instance too, and the fleet view would show the two as one.
        twin = self._beaten and previous is not None and previous != (beat.host[:255], beat.pid)
        if twin and previous is not None and previous not in self._twins_reported:
            self._twins_reported.add(previous)
            logger.warning(
                "fleet heartbeat: another process (host %s, pid %s) runs as instance %s too "
                "(duplicate_instance_id); give every instance its own CONFLEDGER_INSTANCE_ID, or the "
                "fleet view shows the two as one",
                previous[0],
                previous[1],
                self.log.instance_id,
            )
        self._beaten = True

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except ConfledgerError as exc:
                self._report("heartbeat", exc)
            else:
                self._recovered("heartbeat")
            await anyio.sleep(self.heartbeat_interval)

    def _report(self, what: str, exc: Exception) -> None:
        # One warning per failure until it clears: a database down for a minute is not 600 log lines.
        code = exc.code if isinstance(exc, ConfledgerError) else type(exc).__name__
        if self._failing.get(what) != code:
            self._failing[what] = code
            message = exc.message if isinstance(exc, ConfledgerError) else str(exc)[:200]
            logger.warning("fleet %s failed (%s): %s; retrying", what, code, message)

    def _recovered(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            logger.info("fleet %s works again", what)
