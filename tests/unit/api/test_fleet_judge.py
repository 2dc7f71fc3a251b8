"""api.fleet_judge.FleetJudge when the database is away or the log refuses writes: it waits, or gives up,
and never raises into the reloader's task group (where it would end the follower with it).

The runner and the fleet view are stand-ins here, scripted answer by answer: what the judge does with a
real runner on both backends is in ``tests/integration/api/test_fleet_reloaders.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from confledger.api.fleet_judge import FleetJudge
from confledger.store.decision import FleetVerdict
from confledger.store.errors import IntegrityFailed, StoreUnavailable
from confledger.store.events import OperationKind, Trigger
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

    async def rollback(
        self, target: str, *, trigger: Trigger, actor: str, fleet_verdict: FleetVerdict | None
    ) -> ReloadOperation:
        assert (target, trigger, actor) == (OLD, Trigger.FLEET_THRESHOLD, "system")
        self.verdicts.append(fleet_verdict)
        result: ReloadOperation = self.script.next()
        return result


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
            judge = FleetJudge(
                runner,  # type: ignore[arg-type]
                view,
                task_group,
                threshold=1.0,
                wait=5.0,
                look_every=0.01,
            )
            judge.judge_later(decided)
    assert len(runner.verdicts) == asked
    [verdict, *_] = runner.verdicts
    assert verdict is not None
    assert (verdict.applied, verdict.failed, verdict.waiting) == (1, 1, 0)
