"""The fleet threshold: a change too few of the fleet's instances applied is rolled back, fleet-wide.

The service threshold (``rollback_threshold``) judges one instance's services as a change is made. A
fleet needs the same over its instances: a config that half the hosts' services refuse is a bad config
even if the instance that decided it took it. With ``fleet_rollback_threshold`` set, the instance that
decided a reload watches the answers land in its fleet view (``/fleet``: each live instance in_sync,
drifted or lagging) and asks ``store.decision.judge_fleet`` whether the change is settled. Kept: nothing
more happens. Below the threshold: this instance rolls the fleet back to the config before the change,
an ordinary rollback through the fleet's lock (trigger ``fleet_threshold``, actor ``system``) that every
instance follows, recorded with ``config.rolled_back`` reason ``fleet_threshold`` and the share and
threshold in it. It pins the config as a manual rollback does (``store.pins``): the file that held it
still does, and a stray SIGHUP must not hand the whole fleet back what it just refused; a forced reload
applies it again once the refusing instances are fixed.

The judgement is the deciding instance's alone (a second verdict recorded later, under the lock, as the
log already allows), so it needs that instance alive until the change settles: if it stops first, the
change stands. A rollback already under way when it is told to stop is finished first. Only reloads are
judged; an operator's rollback, and this one's, are not second-guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc

from confledger.store.decision import FleetAnswer, FleetVerdict, judge_fleet
from confledger.store.errors import ConfledgerError, StoreUnavailable
from confledger.store.events import OperationKind, Trigger
from confledger.store.operations import FLEET_BUSY_REASON, OperationRunner
from confledger.store.outcome import ReloadOperation

__all__ = ["FleetJudge", "Judging"]

logger = logging.getLogger(__name__)

# A fleet view's state for an instance, as an answer to its desired config; "gone" instances count
# neither way (they are not part of the fleet any more).
_ANSWER_OF_STATE = {
    "in_sync": FleetAnswer.APPLIED,
    "drifted": FleetAnswer.FAILED,
    "lagging": FleetAnswer.WAITING,
}
# Answers that say "not now", not "no": the judgement is made again a moment later.
_BUSY = frozenset({"operation_in_progress", FLEET_BUSY_REASON})


@dataclass(frozen=True, slots=True)
class Judging:
    """A change whose answers are still coming in, as of the judge's last look (``GET /status``)."""

    answers: FleetVerdict  # not settled yet
    until: datetime  # when an instance that has not answered counts as one that did not apply


class FleetJudge:
    """Judges each change this instance decides against ``threshold`` (see the module docstring)."""

    def __init__(
        self,
        runner: OperationRunner,
        fleet: Callable[[], Awaitable[dict[str, Any]]],
        task_group: anyio.abc.TaskGroup,
        *,
        threshold: float,
        wait: float,
        look_every: float,
    ) -> None:
        self._runner = runner
        self._fleet = fleet
        self._task_group = task_group
        self.threshold = threshold
        self.wait = wait
        self.look_every = look_every
        self._judging: set[anyio.CancelScope] = set()
        self.open: dict[str, Judging] = {}  # by config hash
        # Held while a rollback runs: stopping waits for it rather than cutting a fleet-wide change off
        # halfway (its services told, its outcome not recorded).
        self._rolling_back = anyio.Lock()
        self._stopped = False

    def judge_later(self, decided: ReloadOperation) -> None:
        """The runner's ``on_applied``: judge ``decided`` in the background if it is a reload."""
        if decided.kind is OperationKind.RELOAD and decided.previous_config_hash is not None:
            self._task_group.start_soon(self._judge, decided)

    async def stop(self) -> None:
        """Stop judging: changes still open stand; a rollback under way is finished first."""
        self._stopped = True
        for scope in self._judging:
            scope.cancel()
        async with self._rolling_back:
            pass

    async def _judge(self, decided: ReloadOperation) -> None:
        with anyio.CancelScope() as scope:
            self._judging.add(scope)
            try:
                await self._until_settled(decided)
            finally:
                self._judging.discard(scope)
                self.open.pop(decided.new_config_hash or "", None)

    async def _until_settled(self, decided: ReloadOperation) -> None:
        config_hash, previous = decided.new_config_hash, decided.previous_config_hash
        assert config_hash is not None  # judge_later took only changes with both
        assert previous is not None
        deadline = anyio.current_time() + self.wait
        until = datetime.now(UTC) + timedelta(seconds=self.wait)
        away = False  # said once per outage, not at every look
        while True:
            try:
                view = await self._fleet()
            except StoreUnavailable as exc:
                # The database is away: the answers, and a rollback, wait for it to come back.
                if not away:
                    logger.warning("fleet threshold: the fleet cannot be read (%s); waiting for it", exc)
                away = True
                await anyio.sleep(self.look_every)
                continue
            if away:
                logger.info("fleet threshold: the fleet can be read again")
                away = False
            if view["desired_hash"] != config_hash:
                return  # a later change decides now, and is judged itself
            answers = [
                _ANSWER_OF_STATE[instance["state"]]
                for instance in view["instances"]
                if instance["state"] in _ANSWER_OF_STATE
            ]
            verdict = judge_fleet(
                config_hash, answers, self.threshold, time_is_up=anyio.current_time() >= deadline
            )
            if not verdict.settled:
                self.open[config_hash] = Judging(verdict, until)
                await anyio.sleep(self.look_every)
                continue
            self.open.pop(config_hash, None)
            if not verdict.roll_back:
                logger.info("fleet threshold met: %s", verdict.describe())
                return
            with anyio.CancelScope(shield=True):
                async with self._rolling_back:
                    if self._stopped:
                        return
                    logger.warning("fleet threshold missed, rolling the fleet back: %s", verdict.describe())
                    try:
                        result = await self._runner.rollback(
                            previous, trigger=Trigger.FLEET_THRESHOLD, actor="system", fleet_verdict=verdict
                        )
                    except StoreUnavailable as exc:
                        logger.warning("fleet threshold: the rollback waits for the database (%s)", exc)
                        result = None
                    except ConfledgerError as exc:
                        # The log refuses writes (a failed integrity check): said once, not retried. Raised
                        # on, it would end the reloader's other tasks with it.
                        logger.error("fleet threshold: the fleet cannot be rolled back: %s", exc)
                        return
            if result is not None and result.reason not in _BUSY:
                return
            # Another operation ran, or the database was away: look again (there may be a newer change).
            await anyio.sleep(self.look_every)
