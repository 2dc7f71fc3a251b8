"""What the answers to a change add up to. Both rollback thresholds live here.

``decide`` is pure: given what each notified service answered (and whether the log refused the outcome
because another instance applied a config meanwhile), it says what the operation records and which
services get their previous config back. The runner calls it once per notified change, and once more if
the log refuses the applied outcome.

``judge_fleet`` is pure too: given what each live instance of a fleet made of a change one of them
decided (applied, failed, not answered yet), it says whether the fleet keeps the change, rolls it back,
or must wait for more answers. The deciding instance asks it as the answers land
(``api.reloader.ConfigReloader``, setting ``fleet_rollback_threshold``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from confledger.store.events import OperationKind, OperationStatus
from confledger.store.services import NotifyResult

__all__ = ["Decision", "FleetAnswer", "FleetVerdict", "decide", "judge_fleet"]


@dataclass(frozen=True, slots=True)
class Decision:
    status: OperationStatus
    applies: bool  # ``config.applied`` is recorded
    automatic_rollback: bool  # ``config.rolled_back`` (reason automatic) is recorded
    compensate: tuple[str, ...]  # services to give their previous config back, in the order to call them
    success_ratio: float
    message: str
    error: str | None = None
    reason: str | None = None


def decide(
    *,
    kind: OperationKind,
    target_hash: str,
    results: Sequence[NotifyResult],
    threshold: float,
    automatic_rollback: bool,
    has_previous: bool,
    conflict: str | None = None,
    fleet_verdict: FleetVerdict | None = None,
) -> Decision:
    """The outcome of a change that ``results`` answered; ``conflict`` is the log's refusal, if any.

    A change applies when the share of services that accepted is at least ``threshold`` (no services:
    a share of 1). Below it, with automatic rollback on, the services that accepted are given the
    previous config back (in reverse order) and the operation is rolled back; with it off, the operation
    fails and those services keep the new config (drift, visible in the stats). A conflict fails the
    operation and compensates every service that accepted. With no previous config there is nothing to
    give back. ``fleet_verdict``: the fleet threshold's, when it asked for this rollback (said in the
    message).
    """
    accepted = [result.service for result in results if result.accepted]
    ratio = len(accepted) / len(results) if results else 1.0
    noun = "Rollback" if kind is OperationKind.ROLLBACK else "Configuration"
    give_back = tuple(reversed(accepted)) if has_previous else ()
    if conflict is not None:
        return Decision(
            OperationStatus.FAILED,
            applies=False,
            automatic_rollback=False,
            compensate=give_back,
            success_ratio=ratio,
            message=f"{noun} not applied: another instance applied a config meanwhile",
            error=conflict,
            reason="concurrency_conflict",
        )
    if ratio >= threshold:
        message = (
            f"Rolled back to {target_hash[:16]}"
            if kind is OperationKind.ROLLBACK
            else "Configuration reloaded successfully"
        )
        if fleet_verdict is not None:
            message += f": {fleet_verdict.describe()}"
        if len(accepted) < len(results):
            message += f" ({len(accepted)}/{len(results)} services accepted)"
        return Decision(
            OperationStatus.SUCCESS,
            applies=True,
            automatic_rollback=False,
            compensate=(),
            success_ratio=ratio,
            message=message,
        )
    share = f"{len(accepted)}/{len(results)} services accepted (threshold {threshold:g})"
    failed = ", ".join(result.service for result in results if not result.accepted)
    if automatic_rollback:
        return Decision(
            OperationStatus.ROLLED_BACK,
            applies=False,
            automatic_rollback=True,
            compensate=give_back,
            success_ratio=ratio,
            message=f"{noun} rolled back automatically: {share}",
            error=f"services failed: {failed}",
            reason="services_below_threshold",
        )
    return Decision(
        OperationStatus.FAILED,
        applies=False,
        automatic_rollback=False,
        compensate=(),
        success_ratio=ratio,
        message=f"{noun} not applied: {share}; automatic rollback is off",
        error=f"services failed: {failed}",
        reason="services_below_threshold",
    )


class FleetAnswer(StrEnum):
    """What one live instance made of a change, as its ``/fleet`` state says."""

    APPLIED = "applied"  # in_sync: every one of its services took it
    FAILED = "failed"  # drifted: a service, or its own model, refused it
    WAITING = "waiting"  # lagging: no answer yet


@dataclass(frozen=True, slots=True)
class FleetVerdict:
    """The fleet's answers to the change to ``hash``, against ``threshold`` (a share of live instances);
    ``settled`` once the answers still missing cannot change the outcome (``judge_fleet``);
    ``operation_id``: the reload that made the change, when known (a rollback for this verdict is refused
    once the change was judged and kept)."""

    hash: str
    applied: int
    failed: int
    waiting: int
    threshold: float
    settled: bool = True
    operation_id: str | None = None

    @property
    def live(self) -> int:
        return self.applied + self.failed + self.waiting

    @property
    def share(self) -> float:
        """Of the live instances, the share that applied the change (an instance still waiting has not)."""
        return self.applied / self.live if self.live else 1.0

    @property
    def roll_back(self) -> bool:
        return self.share < self.threshold

    def describe(self) -> str:
        unanswered = f", {self.waiting} without an answer" if self.waiting else ""
        return (
            f"{self.applied} of {self.live} instances applied {self.hash[:16]}{unanswered} "
            f"(fleet threshold {self.threshold:g})"
        )


def judge_fleet(
    config_hash: str,
    answers: Iterable[FleetAnswer],
    threshold: float,
    *,
    time_is_up: bool,
    operation_id: str | None = None,
) -> FleetVerdict:
    """The fleet's verdict on the change to ``config_hash`` from its live instances' ``answers``: the
    answers so far, and whether they settle it (``settled``; until then ``roll_back`` means nothing).

    Settled as soon as the waiting instances can no longer change it: when those that applied already
    make ``threshold`` (kept, whatever the rest answer), or when they could not make it even if every
    waiting instance applied (rolled back at once). Otherwise it waits for answers until ``time_is_up``;
    then an instance that has not answered counts as one that did not apply. No live instance: kept
    (there is nobody to roll back for).
    """
    counted = {answer: 0 for answer in FleetAnswer}
    for answer in answers:
        counted[answer] += 1
    verdict = FleetVerdict(
        config_hash,
        counted[FleetAnswer.APPLIED],
        counted[FleetAnswer.FAILED],
        counted[FleetAnswer.WAITING],
        threshold,
        operation_id=operation_id,
    )
    if verdict.waiting == 0 or time_is_up or not verdict.roll_back:
        return verdict
    at_best = (verdict.applied + verdict.waiting) / verdict.live
    return verdict if at_best < threshold else dataclasses.replace(verdict, settled=False)
