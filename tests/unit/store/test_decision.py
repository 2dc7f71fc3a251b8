"""store.decision: what the services' answers add up to (``decide``, the service threshold) and what the
fleet's instances' answers add up to (``judge_fleet``, the fleet threshold)."""

from __future__ import annotations

import pytest

from confledger.store.decision import FleetAnswer, FleetVerdict, decide, judge_fleet
from confledger.store.events import OperationKind, OperationStatus, ServiceOutcome
from confledger.store.services import NotifyResult

OK, REFUSED, ERROR, TIMEOUT = (
    ServiceOutcome.SUCCESS,
    ServiceOutcome.FAILED,
    ServiceOutcome.ERROR,
    ServiceOutcome.TIMEOUT,
)
TARGET = "ab" * 32


def answers(*outcomes: ServiceOutcome) -> list[NotifyResult]:
    """Services s0, s1, ... in notification order, answering ``outcomes``."""
    return [NotifyResult(f"s{index}", 0, outcome, 1.0) for index, outcome in enumerate(outcomes)]


@pytest.mark.parametrize(
    ("outcomes", "threshold", "automatic", "has_previous", "status", "applies", "compensate", "reason"),
    [
        # no services at all: a share of 1, applied
        ((), 0.5, True, True, OperationStatus.SUCCESS, True, (), None),
        # every service accepted
        ((OK, OK, OK), 0.5, True, True, OperationStatus.SUCCESS, True, (), None),
        # exactly at the threshold (1 of 2 at 0.5) still applies: "below" is strict
        ((OK, REFUSED), 0.5, True, True, OperationStatus.SUCCESS, True, (), None),
        # below it (1 of 3): rolled back, the one that accepted gets the old config back
        (
            (OK, REFUSED, TIMEOUT),
            0.5,
            True,
            True,
            OperationStatus.ROLLED_BACK,
            False,
            ("s0",),
            "services_below_threshold",
        ),
        # those that accepted are compensated in reverse order of notification
        (
            (OK, ERROR, OK, REFUSED, REFUSED),
            0.5,
            True,
            True,
            OperationStatus.ROLLED_BACK,
            False,
            ("s2", "s0"),
            "services_below_threshold",
        ),
        # below it with automatic rollback off: failed, and nobody is called back (the drift shows)
        (
            (OK, REFUSED, ERROR),
            0.5,
            False,
            True,
            OperationStatus.FAILED,
            False,
            (),
            "services_below_threshold",
        ),
        # below it with no previous config (the first apply): nothing to give back
        (
            (OK, REFUSED, REFUSED),
            0.5,
            True,
            False,
            OperationStatus.ROLLED_BACK,
            False,
            (),
            "services_below_threshold",
        ),
        # threshold 0: anything applies, even no service accepting
        ((REFUSED, ERROR), 0.0, True, True, OperationStatus.SUCCESS, True, (), None),
        # threshold 1: one refusal is enough to roll back
        (
            (OK, OK, REFUSED),
            1.0,
            True,
            True,
            OperationStatus.ROLLED_BACK,
            False,
            ("s1", "s0"),
            "services_below_threshold",
        ),
    ],
)
def test_the_threshold_rule(
    outcomes: tuple[ServiceOutcome, ...],
    threshold: float,
    automatic: bool,
    has_previous: bool,
    status: OperationStatus,
    applies: bool,
    compensate: tuple[str, ...],
    reason: str | None,
) -> None:
    results = answers(*outcomes)
    decision = decide(
        kind=OperationKind.RELOAD,
        target_hash=TARGET,
        results=results,
        threshold=threshold,
        automatic_rollback=automatic,
        has_previous=has_previous,
    )
    assert decision.status is status
    assert decision.applies is applies
    assert decision.automatic_rollback is (status is OperationStatus.ROLLED_BACK)
    assert decision.compensate == compensate
    assert decision.reason == reason
    accepted = sum(result.accepted for result in results)
    assert decision.success_ratio == (accepted / len(results) if results else 1.0)


@pytest.mark.parametrize(
    ("kind", "outcomes", "automatic", "message", "error"),
    [
        # a reload every service accepted
        (OperationKind.RELOAD, (OK,), True, "Configuration reloaded successfully", None),
        # a reload applied with one refusal: the share is in the message
        (
            OperationKind.RELOAD,
            (OK, REFUSED),
            True,
            "Configuration reloaded successfully (1/2 services accepted)",
            None,
        ),
        # a rollback names its target
        (OperationKind.ROLLBACK, (OK,), True, f"Rolled back to {TARGET[:16]}", None),
        # rolled back automatically: the share, the threshold and who failed
        (
            OperationKind.RELOAD,
            (OK, REFUSED, TIMEOUT),
            True,
            "Configuration rolled back automatically: 1/3 services accepted (threshold 0.5)",
            "services failed: s1, s2",
        ),
        # a rollback that its services refused is itself rolled back
        (
            OperationKind.ROLLBACK,
            (REFUSED,),
            True,
            "Rollback rolled back automatically: 0/1 services accepted (threshold 0.5)",
            "services failed: s0",
        ),
        # automatic rollback off
        (
            OperationKind.RELOAD,
            (REFUSED,),
            False,
            "Configuration not applied: 0/1 services accepted (threshold 0.5); automatic rollback is off",
            "services failed: s0",
        ),
    ],
)
def test_messages(
    kind: OperationKind,
    outcomes: tuple[ServiceOutcome, ...],
    automatic: bool,
    message: str,
    error: str | None,
) -> None:
    decision = decide(
        kind=kind,
        target_hash=TARGET,
        results=answers(*outcomes),
        threshold=0.5,
        automatic_rollback=automatic,
        has_previous=True,
    )
    assert (decision.message, decision.error) == (message, error)


@pytest.mark.parametrize(
    ("outcomes", "has_previous", "compensate"),
    [
        # every service that accepted is given the old config back, whatever the share
        ((OK, OK, REFUSED), True, ("s1", "s0")),
        # nobody accepted: nobody to call back
        ((REFUSED,), True, ()),
        # no previous config: nothing to give back
        ((OK,), False, ()),
    ],
)
def test_a_conflict_fails_and_compensates_every_service_that_accepted(
    outcomes: tuple[ServiceOutcome, ...], has_previous: bool, compensate: tuple[str, ...]
) -> None:
    decision = decide(
        kind=OperationKind.RELOAD,
        target_hash=TARGET,
        results=answers(*outcomes),
        threshold=0.5,
        automatic_rollback=True,
        has_previous=has_previous,
        conflict="another instance applied position 9",
    )
    assert decision.status is OperationStatus.FAILED
    assert not decision.applies
    assert not decision.automatic_rollback
    assert decision.compensate == compensate
    assert decision.reason == "concurrency_conflict"
    assert decision.error == "another instance applied position 9"
    assert decision.message == "Configuration not applied: another instance applied a config meanwhile"


APPLIED, FAILED, WAITING = FleetAnswer.APPLIED, FleetAnswer.FAILED, FleetAnswer.WAITING


@pytest.mark.parametrize(
    ("answers_of_instances", "threshold", "time_is_up", "settled", "roll_back"),
    [
        # every instance applied: kept
        ((APPLIED, APPLIED, APPLIED), 1.0, False, True, False),
        # one drifted of three, threshold 1: rolled back as soon as it is known, not at the wait's end
        ((APPLIED, APPLIED, FAILED), 1.0, False, True, True),
        # one drifted of three, threshold 0.5: 2/3 is enough
        ((APPLIED, APPLIED, FAILED), 0.5, False, True, False),
        # exactly at the threshold (2 of 4 at 0.5) keeps it: "below" is strict, as for services
        ((APPLIED, APPLIED, FAILED, FAILED), 0.5, False, True, False),
        # enough applied already: the stragglers cannot undo it, no need to wait for them
        ((APPLIED, APPLIED, WAITING), 0.6, False, True, False),
        # too many failed already: even if the straggler applies, 2/4 < 0.75, rolled back at once
        ((APPLIED, FAILED, FAILED, WAITING), 0.75, False, True, True),
        # could still go either way: wait for more answers
        ((APPLIED, WAITING, WAITING), 0.6, False, False, False),
        # the same when the wait is over: a silent instance has not applied, 1/3 < 0.6
        ((APPLIED, WAITING, WAITING), 0.6, True, True, True),
        # nobody answered yet but the decider, threshold 0: nothing is below it
        ((APPLIED, WAITING), 0.0, False, True, False),
        # no live instance at all: kept (nobody to roll back for)
        ((), 1.0, False, True, False),
    ],
)
def test_the_fleet_threshold_rule(
    answers_of_instances: tuple[FleetAnswer, ...],
    threshold: float,
    time_is_up: bool,
    settled: bool,
    roll_back: bool,
) -> None:
    verdict = judge_fleet(TARGET, answers_of_instances, threshold, time_is_up=time_is_up)
    assert verdict.settled is settled
    if verdict.settled:
        assert verdict.roll_back is roll_back
        assert verdict.live == len(answers_of_instances)
        assert verdict.share == (
            answers_of_instances.count(APPLIED) / len(answers_of_instances) if answers_of_instances else 1.0
        )


def test_a_fleet_rollback_says_why_in_its_message() -> None:
    verdict = FleetVerdict(TARGET, applied=1, failed=1, waiting=1, threshold=0.75)
    decision = decide(
        kind=OperationKind.ROLLBACK,
        target_hash="cd" * 32,
        results=answers(OK),
        threshold=0.5,
        automatic_rollback=True,
        has_previous=True,
        fleet_verdict=verdict,
    )
    assert decision.message == (
        f"Rolled back to {'cd' * 8}: 1 of 3 instances applied {'ab' * 8}, 1 without an answer "
        "(fleet threshold 0.75)"
    )
