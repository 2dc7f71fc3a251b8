"""The fleet threshold: a change too few of the fleet's instances applied is rolled back, fleet-wide.

The service threshold (``rollback_threshold``) judges one instance's services as a change is made. A
fleet needs the same over its instances: a config that half the hosts' services refuse is a bad config
even if the instance that decided it took it. With ``fleet_rollback_threshold`` set, the instance that
decided a reload watches the answers land in its fleet view (``/fleet``: each live instance in_sync,
drifted or lagging) and asks ``store.decision.judge_fleet`` whether the change is settled. Kept: it
records ``fleet.change_kept`` with the answers, so every instance knows the change was judged. Below the
threshold: this instance rolls the fleet back to the config before the change, an ordinary rollback
through the fleet's lock (trigger ``fleet_threshold``, actor ``system``) that every instance follows,
recorded with ``config.rolled_back`` reason ``fleet_threshold`` and the share and threshold in it. It
pins the config as a manual rollback does (``store.pins``): the file that held it still does, and a stray
SIGHUP must not hand the whole fleet back what it just refused; a forced reload applies it again once the
refusing instances are fixed.

The deciding instance judges; the others stand by. Each instance with the threshold on watches the
fleet's desired change (its fleet projection, no I/O) and, for a reload it did not decide in this life,
looks once the answer wait is over: a change judged (kept, or rolled back and so no longer desired)
needs nothing more. One still unjudged is the decider's while the decider is live (``/fleet``: not
gone); once it is gone (stopped, or silent for three heartbeats) the live instance with the smallest id
stands in for it and judges it as the decider would have, every unanswered instance counting as not
applied. An instance that decided a change in an earlier life (restarted under the same
``CONFLEDGER_INSTANCE_ID``) judges it itself. A decider still live once it had time to be seen gone is
trusted (its threshold may be off): the change stands; so does a change first seen after that time (an
instance that starts, or turns the threshold on, does not judge what the fleet has run for a while). Two judges cannot both act: a rollback is refused
under the fleet's lock if the fleet moved on (``fleet_moved_on``) or the change was kept
(``fleet_change_kept``).

A rollback already under way when the judge is told to stop is finished first. Only reloads are judged;
an operator's rollback, and this one's, are not second-guessed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc

from confledger.projections.fleet import DesiredChange
from confledger.store.decision import FleetAnswer, FleetVerdict, judge_fleet
from confledger.store.errors import ConfledgerError, StoreUnavailable
from confledger.store.events import FleetChangeKept, OperationKind, Trigger
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
# The changes an instance remembers having judged or stood by for: only the newest matters (a change
# no longer desired needs nobody), the rest guard against a change seen twice in quick succession.
_REMEMBERED = 64


@dataclass(frozen=True, slots=True)
class Judging:
    """A change whose answers are still coming in, as of the judge's last look (``GET /status``)."""

    answers: FleetVerdict  # not settled yet
    until: datetime  # when an instance that has not answered counts as one that did not apply


class FleetJudge:
    """Judges each change this instance decides against ``threshold``, and stands by for the changes
    others decided (see the module docstring). ``fleet`` is the fleet view (``/fleet``, read from the
    database), ``desired`` the fleet projection's desired change (no I/O), ``gone_after`` how long an
    instance is silent before the view counts it gone."""

    def __init__(
        self,
        runner: OperationRunner,
        fleet: Callable[[], Awaitable[dict[str, Any]]],
        task_group: anyio.abc.TaskGroup,
        *,
        threshold: float,
        wait: float,
        look_every: float,
        instance_id: str = "",
        desired: Callable[[], DesiredChange | None] | None = None,
        gone_after: float = 0.0,
    ) -> None:
        self._runner = runner
        self._fleet = fleet
        self._task_group = task_group
        self.threshold = threshold
        self.wait = wait
        self.look_every = look_every
        self.instance_id = instance_id
        self._desired = desired
        self.gone_after = gone_after
        self._judging: set[anyio.CancelScope] = set()
        self.open: dict[str, Judging] = {}  # by config hash
        self._decided: deque[str] = deque(maxlen=_REMEMBERED)  # operation ids judged as their decider
        self._seen: deque[str] = deque(maxlen=_REMEMBERED)  # and those stood by for
        # Held while a rollback runs: stopping waits for it rather than cutting a fleet-wide change off
        # halfway (its services told, its outcome not recorded).
        self._rolling_back = anyio.Lock()
        self._stopped = False

    def start(self) -> None:
        """Stand by for the changes others decide (a no-op without the fleet projection)."""
        if self._desired is not None:
            self._task_group.start_soon(self._scoped, self._watch)

    def judge_later(self, decided: ReloadOperation) -> None:
        """The runner's ``on_applied``: judge ``decided`` in the background if it is a reload."""
        if decided.kind is OperationKind.RELOAD and decided.previous_config_hash is not None:
            self._decided.append(decided.operation_id)
            self._task_group.start_soon(self._scoped, self._judge, decided)

    async def stop(self) -> None:
        """Stop judging: changes still open stand; a rollback under way is finished first."""
        self._stopped = True
        for scope in self._judging:
            scope.cancel()
        async with self._rolling_back:
            pass

    async def _scoped(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        with anyio.CancelScope() as scope:
            if self._stopped:
                return
            self._judging.add(scope)
            try:
                await task(*args)
            finally:
                self._judging.discard(scope)

    async def _judge(self, decided: ReloadOperation) -> None:
        try:
            await self._until_settled(decided)
        finally:
            self.open.pop(decided.new_config_hash or "", None)

    async def _until_settled(self, decided: ReloadOperation) -> None:
        config_hash, previous = decided.new_config_hash, decided.previous_config_hash
        assert config_hash is not None  # judge_later took only changes with both
        assert previous is not None
        deadline = anyio.current_time() + self.wait
        until = datetime.now(UTC) + timedelta(seconds=self.wait)
        while True:
            view = await self._look()
            if view["desired_hash"] != config_hash:
                return  # a later change decides now, and is judged itself
            verdict = judge_fleet(
                config_hash,
                _answers(view),
                self.threshold,
                time_is_up=anyio.current_time() >= deadline,
                operation_id=decided.operation_id,
            )
            if not verdict.settled:
                self.open[config_hash] = Judging(verdict, until)
                await anyio.sleep(self.look_every)
                continue
            self.open.pop(config_hash, None)
            if await self._act(verdict, previous):
                return
            # Another operation ran, or the database was away: look again (there may be a newer change).
            await anyio.sleep(self.look_every)

    async def _watch(self) -> None:
        """Every ``look_every``, the desired change: one this instance should stand by for gets a task."""
        assert self._desired is not None
        while True:
            change = self._desired()
            if (
                change is not None
                and change.operation_id is not None
                and change.kind == "reload"
                and change.previous_hash is not None
                and change.kept is None
                and change.operation_id not in self._decided
                and change.operation_id not in self._seen
            ):
                self._seen.append(change.operation_id)
                self._task_group.start_soon(self._scoped, self._stand_by, change)
            await anyio.sleep(self.look_every)

    async def _stand_by(self, change: DesiredChange) -> None:
        """Judge ``change`` if its decider is gone before judging it and this instance is next in line."""
        assert self._desired is not None
        assert change.previous_hash is not None  # _watch took only changes with one
        # The decider has had its wait; past ``trusted`` it has had time to be seen gone as well.
        first = change.decided_at + timedelta(seconds=self.wait + self.look_every)
        trusted = first + timedelta(seconds=self.gone_after)
        every = max(self.look_every, self.gone_after / 6)
        if datetime.now(UTC) >= trusted:
            # First seen after its judgement was due and its decider had time to be seen gone: this
            # instance started since, or turned the threshold on. A change that old stood, and judging
            # it now, by today's answers, would roll back a config the fleet has run for a while.
            return
        await anyio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds()))
        while True:
            now = self._desired()
            if now is None or now.operation_id != change.operation_id or now.kept is not None:
                return  # judged (kept, or rolled back), or a later change is desired now
            if change.operation_id in self._decided:
                return  # this instance decided it after all (it was seen before on_applied ran)
            view = await self._look()
            if view["desired_hash"] != change.hash:
                return
            states = {instance["instance_id"]: instance["state"] for instance in view["instances"]}
            # A change this instance decided in an earlier life is its own to judge: the others see
            # the decider live (the same id) and leave it.
            earlier_life = change.decided_by == self.instance_id
            decider_live = not earlier_life and states.get(change.decided_by, "gone") != "gone"
            live = sorted(
                name for name, state in states.items() if state != "gone" and name != change.decided_by
            )
            next_in_line = earlier_life or (not decider_live and live[:1] == [self.instance_id])
            if next_in_line:
                verdict = judge_fleet(
                    change.hash,
                    _answers(view),
                    self.threshold,
                    time_is_up=True,
                    operation_id=change.operation_id,
                )
                logger.warning(
                    "fleet threshold: judging the change %s, which %s decided and did not judge",
                    change.hash[:16],
                    "this instance (in an earlier life)" if earlier_life else change.decided_by,
                )
                if await self._act(verdict, change.previous_hash):
                    return
            elif datetime.now(UTC) >= trusted:
                return  # its decider is live (its judgement, whatever its threshold), or another stands in
            await anyio.sleep(every)

    async def _look(self) -> dict[str, Any]:
        """The fleet view; while the database is away, a warning once and another look a moment later."""
        away = False
        while True:
            try:
                view = await self._fleet()
            except StoreUnavailable as exc:
                if not away:
                    logger.warning("fleet threshold: the fleet cannot be read (%s); waiting for it", exc)
                away = True
                await anyio.sleep(self.look_every)
                continue
            if away:
                logger.info("fleet threshold: the fleet can be read again")
            return view

    async def _act(self, verdict: FleetVerdict, previous: str) -> bool:
        """Record the settled ``verdict``: kept, or the fleet rolled back to ``previous``. False: not done
        (another operation ran, or the database was away), to be looked at again."""
        if not verdict.roll_back:
            logger.info("fleet threshold met: %s", verdict.describe())
            await self._record_kept(verdict)
            return True
        with anyio.CancelScope(shield=True):
            async with self._rolling_back:
                if self._stopped:
                    return True
                logger.warning("fleet threshold missed, rolling the fleet back: %s", verdict.describe())
                try:
                    result = await self._runner.rollback(
                        previous, trigger=Trigger.FLEET_THRESHOLD, actor="system", fleet_verdict=verdict
                    )
                except StoreUnavailable as exc:
                    logger.warning("fleet threshold: the rollback waits for the database (%s)", exc)
                    return False
                except ConfledgerError as exc:
                    # The log refuses writes (a failed integrity check): said once, not retried. Raised
                    # on, it would end the reloader's other tasks with it.
                    logger.error("fleet threshold: the fleet cannot be rolled back: %s", exc)
                    return True
        return result.reason not in _BUSY

    async def _record_kept(self, verdict: FleetVerdict) -> None:
        if verdict.operation_id is None:
            return
        kept = FleetChangeKept(
            hash=verdict.hash,
            operation_id=verdict.operation_id,
            applied=verdict.applied,
            failed=verdict.failed,
            waiting=verdict.waiting,
            threshold=verdict.threshold,
        )
        try:
            await self._runner.record(kept)
        except ConfledgerError as exc:
            # The change stands either way; without the record, an instance standing by judges it again
            # only if this one is gone by then.
            logger.warning(
                "fleet threshold: the kept verdict on %s was not recorded: %s", verdict.hash[:16], exc
            )


def _answers(view: dict[str, Any]) -> list[FleetAnswer]:
    return [
        _ANSWER_OF_STATE[instance["state"]]
        for instance in view["instances"]
        if instance["state"] in _ANSWER_OF_STATE
    ]
