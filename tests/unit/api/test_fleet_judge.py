"""api.fleet_judge.FleetJudge when the database is away or the log refuses writes: it waits, or gives up,
and never raises into the reloader's task group (where it would end the follower with it); and who
stands in for a decider that did not judge its change.

The runner and the fleet view are stand-ins here, scripted answer by answer: what the judge does with a
real runner on both backends is in ``tests/integration/api/test_fleet_reloaders.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import pytest

from confledger.api.fleet_judge import FleetJudge
from confledger.projections.fleet import DesiredChange
from confledger.store.decision import FleetVerdict
from confledger.store.errors import IntegrityFailed, StoreUnavailable
from confledger.store.events import EventPayload, FleetChangeKept, OperationKind, Trigger
from confledger.store.outcome import ReloadOperation

pytestmark = pytest.mark.anyio

NEW, OLD = "ab" * 32, "cd" * 32
REFUSED_BY_ONE = {"desired_hash": NEW, "instances": [{"state": "in_sync"}, {"state": "drifted"}]}
MOVED_ON = {"desired_hash": "ef" * 32, "instances": [{"state": "in_sync"}]}
DONE = ReloadOperation(operation_id="rollback", kind=OperationKind.ROLLBACK, success=True)
BUSY = ReloadOperation(operation_id="rejected", reason="operation_in_progress")
AWAY = StoreUnavailable("the database is away")
REFUSING = IntegrityFailed("the log failed its check", reason="link_mismatch")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Script:
    """Answers given in turn; an exception in the list is raised instead."""

    def __init__(self, answers: Sequence[Any]) -> None:
        self.answers = list(answers)
        self.asked = 0

    def next(self) -> Any:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class Runner:
    def __init__(self, answers: Sequence[Any]) -> None:
        self.script = Script(answers)
        self.verdicts: list[FleetVerdict | None] = []
        self.recorded: list[EventPayload] = []

    async def record(self, payload: EventPayload) -> None:
        self.recorded.append(payload)

    async def rollback(
        self, target: str, *, trigger: Trigger, actor: str, fleet_verdict: FleetVerdict | None
    ) -> ReloadOperation:
        assert (target, trigger, actor) == (OLD, Trigger.FLEET_THRESHOLD, "system")
        self.verdicts.append(fleet_verdict)
        result: ReloadOperation = self.script.next()
        return result


def judge_in(task_group: anyio.abc.TaskGroup, runner: Runner, fleet: Any, **options: Any) -> FleetJudge:
    """A judge at threshold 1.0 that looks every 10 ms, over the stand-ins."""
    return FleetJudge(runner, fleet, task_group, threshold=1.0, look_every=0.01, **options)  # type: ignore[arg-type]


# (what the fleet view answers, look by look; what the rollback answers, call by call; rollbacks asked)
SCRIPTS = [
    # the database away at the first look: looked at again, then rolled back
    ([AWAY, REFUSED_BY_ONE], [DONE], 1),
    # away when the rollback is asked: asked again at the next look
    ([REFUSED_BY_ONE], [AWAY, DONE], 2),
    # the log refuses writes: said once, not asked again
    ([REFUSED_BY_ONE], [REFUSING], 1),
    # another operation was running: looked at again, and a later change came meanwhile
    ([REFUSED_BY_ONE, MOVED_ON], [BUSY], 1),
]


@pytest.mark.parametrize(("views", "rollbacks", "asked"), SCRIPTS)
async def test_the_judge_waits_for_the_database_and_never_raises(
    views: list[Any], rollbacks: list[Any], asked: int
) -> None:
    fleet, runner = Script(views), Runner(rollbacks)

    async def view() -> dict[str, Any]:
        answer: dict[str, Any] = fleet.next()
        return answer

    decided = ReloadOperation(
        operation_id="reload", success=True, new_config_hash=NEW, previous_config_hash=OLD
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            judge_in(task_group, runner, view, wait=5.0).judge_later(decided)
    assert len(runner.verdicts) == asked
    [verdict, *_] = runner.verdicts
    assert verdict is not None
    assert (verdict.applied, verdict.failed, verdict.waiting) == (1, 1, 0)


WAIT = 5.0


def change(decided_by: str, kept: FleetVerdict | None = None, *, ago: float = WAIT) -> DesiredChange:
    """The desired change, decided ``ago`` seconds before now (by default its wait is just over)."""
    decided_at = datetime.now(UTC) - timedelta(seconds=ago)
    return DesiredChange(
        hash=NEW,
        position=7,
        operation_id="reload-1",
        previous_hash=OLD,
        kind="reload",
        decided_by=decided_by,
        decided_at=decided_at,
        kept=kept,
    )


def fleet_of(**states: str) -> dict[str, Any]:
    return {
        "desired_hash": NEW,
        "instances": [{"instance_id": name, "state": state} for name, state in states.items()],
    }


# (the change's decider, its kept verdict, seconds since it was decided, the fleet view, what "b" does:
# rolled back / kept / nothing); b's own answer is in_sync; the time to be seen gone is GONE_AFTER
STANDING_BY = [
    # the decider stopped; b is the live instance with the smallest id; c refused: rolled back
    ("a", None, WAIT, fleet_of(a="gone", b="in_sync", c="drifted"), "rolled back"),
    # the same with everyone applied: kept, and the verdict recorded for the others to see
    ("a", None, WAIT, fleet_of(a="gone", b="in_sync", c="in_sync"), "kept"),
    # a live instance that has not answered counts as not applied: the wait is over
    ("a", None, WAIT, fleet_of(a="gone", b="in_sync", c="lagging"), "rolled back"),
    # the decider is live: its judgement (its threshold may be off), even past the time to be seen gone
    ("a", None, WAIT, fleet_of(a="in_sync", b="in_sync", c="drifted"), "nothing"),
    # the decider is gone, but "a0" is next in line (by id): b leaves it to a0
    ("a", None, WAIT, fleet_of(a="gone", a0="in_sync", b="in_sync", c="drifted"), "nothing"),
    # ...unless a0 is gone too
    ("a", None, WAIT, fleet_of(a="gone", a0="gone", b="in_sync", c="drifted"), "rolled back"),
    # b decided it itself, in an earlier life (restarted under the same id): its own to judge
    ("b", None, WAIT, fleet_of(b="in_sync", c="drifted"), "rolled back"),
    # already judged and kept (by the decider, or another stand-in): nothing to do, nothing read
    ("a", FleetVerdict(NEW, 2, 0, 0, 1.0, operation_id="reload-1"), WAIT, AWAY, "nothing"),
    # first seen long after it was due (b started since, or turned the threshold on): it stood
    ("a", None, 3600.0, fleet_of(a="gone", b="in_sync", c="drifted"), "nothing"),
]
GONE_AFTER = 0.1


@pytest.mark.parametrize(("decided_by", "kept", "ago", "view", "expected"), STANDING_BY)
async def test_an_instance_stands_in_for_a_decider_gone_before_judging(
    decided_by: str, kept: FleetVerdict | None, ago: float, view: Any, expected: str
) -> None:
    runner = Runner([DONE])
    desired = change(decided_by, kept, ago=ago)

    async def fleet() -> dict[str, Any]:
        if isinstance(view, Exception):
            raise view
        answer: dict[str, Any] = view
        return answer

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            judge = judge_in(
                task_group,
                runner,
                fleet,
                wait=WAIT,
                instance_id="b",
                desired=lambda: desired,
                gone_after=GONE_AFTER,
            )
            judge.start()
            await anyio.sleep(GONE_AFTER * 3)
            task_group.cancel_scope.cancel()
    done = "rolled back" if runner.verdicts else "kept" if runner.recorded else "nothing"
    assert done == expected
    for verdict in runner.verdicts:
        assert verdict is not None
        assert verdict.operation_id == "reload-1"  # so a second judge is refused once this one kept it
    for payload in runner.recorded:
        assert payload == FleetChangeKept(
            hash=NEW, operation_id="reload-1", applied=2, failed=0, waiting=0, threshold=1.0
        )
