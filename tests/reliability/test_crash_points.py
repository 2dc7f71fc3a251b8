"""A real ``confledger serve`` dies at each crash point of an operation; its restart loses nothing.

Each case starts the service (three services registered: alpha, beta, gamma, each keeping the pool size
of the config it runs in a file) with one crash point armed, asks for a reload or a rollback over HTTP,
and the process ends at that point with ``os._exit`` (exit status 86; the request gets no answer). The
services' files then show how far the change got. A restart without the point must:

- close an operation the crash left open as ``interrupted`` (and leave none open); one that never
  reached the log stays absent; one whose outcome was committed keeps it;
- serve the last applied config, and hand it to every service again (``notify_on_start``), so no
  service keeps a half-applied change;
- keep the log whole (positions 1..N, ``verify``), and apply the next reload;
- and hold "nothing lost" (``tests.reliability.invariants``) on the dead process's log (an operation may
  be open only because its writer is dead) and after the restart (every rule, the restarted service's
  /status, /stats, /history and /backups against a fresh fold).

The armed hit (``point:n``) counts the start-up too: an empty log's first start applies the initial
config through the same path (one parse, one start append, two gaps between three callbacks, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from confledger.store.events import OperationCompleted, OperationStarted, OperationStatus
from confledger.store.failpoints import FAILPOINT_EXIT_CODE
from tests.integration.api.service_harness import ADMIN_TOKEN
from tests.reliability.crash_harness import Deployment, Serve, body_with, check_fleet_after_crashes, wait_for
from tests.reliability.crash_services import REFUSED_TTL, SERVICES
from tests.reliability.invariants import (
    HttpObserver,
    Reply,
    check_log,
    check_nothing_lost,
    reply_from_response,
    wait_until_settled,
)

INITIAL, NEW, REFUSED, NEXT = 20, 21, 22, 23  # the pool sizes that mark each version of the config


@dataclass(frozen=True)
class Case:
    failpoint: str  # armed as CONFLEDGER_FAILPOINT
    action: str  # "reload" to NEW, "refused" (gamma refuses: automatic rollback), "rollback" (after NEW)
    recorded: str  # what the log holds of the crashed operation: "absent", "interrupted" or "success"
    at_crash: tuple[int, int, int]  # the pool size alpha, beta, gamma run when the process died
    after: int  # the pool size served (and handed to every service) after the restart


CASES = {
    # source read and parsed, nothing recorded: the operation never happened
    "after_parse": Case("after_parse:2", "reload", "absent", (INITIAL,) * 3, INITIAL),
    # about to record the start: nothing durable, no service told
    "before_start_append": Case("before_start_append:2", "reload", "absent", (INITIAL,) * 3, INITIAL),
    # the start is durable, no service told yet
    "after_start_append": Case("after_start_append:2", "reload", "interrupted", (INITIAL,) * 3, INITIAL),
    # alpha runs the new config, beta and gamma the old (start-up met the point twice)
    "between_callbacks": Case(
        "between_callbacks:3", "reload", "interrupted", (NEW, INITIAL, INITIAL), INITIAL
    ),
    # every service accepted, the outcome was not recorded: the log's config stays the old one
    "before_outcome_commit": Case("before_outcome_commit:2", "reload", "interrupted", (NEW,) * 3, INITIAL),
    # the outcome is recorded: the new config is the current one, though nobody heard the answer
    "after_outcome_commit": Case("after_outcome_commit:2", "reload", "success", (NEW,) * 3, NEW),
    # gamma refused; beta got the old config back, alpha not yet
    "mid_rollback": Case("mid_rollback:1", "refused", "interrupted", (REFUSED, INITIAL, INITIAL), INITIAL),
    # a manual rollback from NEW to INITIAL: alpha went back, beta and gamma still run NEW (the reload
    # to NEW met the point twice more)
    "between_callbacks_of_a_rollback": Case(
        "between_callbacks:5", "rollback", "interrupted", (INITIAL, NEW, NEW), NEW
    ),
}


def operations(deployment: Deployment) -> dict[str, OperationStatus | None]:
    """Each operation's id and its completion status (None: still open), from the log itself."""
    found: dict[str, OperationStatus | None] = {}
    with deployment.open_log() as log:
        recorded = list(log.iter_events())
        assert [event.position for event in recorded] == list(range(1, len(recorded) + 1))
        report = log.verify()
        assert report.ok, report.reason
    for event in recorded:
        if isinstance(event.payload, OperationStarted):
            found[str(event.operation_id)] = None
        elif isinstance(event.payload, OperationCompleted):
            assert found.get(str(event.operation_id), "absent") is None, "a second completion"
            found[str(event.operation_id)] = event.payload.status
    return found


def crash(serve: Serve, case: Case, deployment: Deployment, replies: list[Reply]) -> None:
    """Ask for the case's operation; the process must die at the armed point without answering."""
    if case.action == "rollback":
        deployment.write_config(body_with(NEW))
        first = serve.post("/reload")
        replies.append(reply_from_response(first))
        assert first.json()["success"] is True
        assert deployment.services() == dict.fromkeys(SERVICES, NEW)
        request = ("/rollback", {})
    elif case.action == "refused":
        deployment.write_config(body_with(REFUSED, cache__ttl_seconds=REFUSED_TTL))
        request = ("/reload", {})
    else:
        deployment.write_config(body_with(NEW))
        request = ("/reload", {})
    with pytest.raises(httpx.TransportError):
        serve.post(*request)
    replies.append(Reply(None))
    assert serve.wait_exit() == FAILPOINT_EXIT_CODE, serve.printed()
    assert f"crash point {case.failpoint.partition(':')[0]}" in serve.printed()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_crash_at_each_point_is_recovered_by_the_restart(
    case: Case, database_url: str, tmp_path: Path
) -> None:
    deployment = Deployment(tmp_path, database_url, environment={"CONFLEDGER_ROLLBACK_THRESHOLD": "1.0"})
    deployment.write_config(body_with(INITIAL))
    replies: list[Reply] = []
    with deployment.serving(failpoint=case.failpoint) as serve:
        assert deployment.services() == dict.fromkeys(SERVICES, INITIAL)
        before = operations(deployment)
        crash(serve, case, deployment, replies)
    with deployment.open_log() as log:
        left = check_log(log, replies, live_instances=())
    assert left.open_operations == (1 if case.recorded == "interrupted" else 0)

    assert deployment.services() == dict(zip(SERVICES, case.at_crash, strict=True))
    crashed = {key: value for key, value in operations(deployment).items() if key not in before}
    if case.action == "rollback":
        reload_first, *rest = crashed.items()  # the reload to NEW that came first completed
        assert reload_first[1] is OperationStatus.SUCCESS
        crashed = dict(rest)
    if case.recorded == "absent":
        assert crashed == {}
    elif case.recorded == "interrupted":
        assert list(crashed.values()) == [None]  # open: its writer died
    else:
        assert list(crashed.values()) == [OperationStatus.SUCCESS]

    with deployment.serving() as restarted:
        after = operations(deployment)
        assert None not in after.values()  # nothing left open
        for operation_id in crashed:
            expected = (
                OperationStatus.INTERRUPTED if case.recorded == "interrupted" else OperationStatus.SUCCESS
            )
            assert after[operation_id] is expected
        if crashed and case.recorded == "interrupted":
            detail = restarted.get(f"/operations/{next(iter(crashed))}")
            assert detail["operation"]["status"] == "interrupted"
        assert restarted.pool_size() == case.after
        assert deployment.services() == dict.fromkeys(SERVICES, case.after)

        # The next change works, on every service.
        deployment.write_config(body_with(NEXT))
        answer = restarted.post("/reload")
        replies.append(reply_from_response(answer))
        assert answer.json()["success"] is True, answer.text
        assert restarted.pool_size() == NEXT
        assert deployment.services() == dict.fromkeys(SERVICES, NEXT)
        with deployment.open_log() as log:
            observer = HttpObserver(restarted.client, ADMIN_TOKEN)
            wait_until_settled(observer, log, quiet=0.05)
            report = check_nothing_lost(log, [observer], replies, fleet_check=check_fleet_after_crashes)
        assert report.open_operations == 0
        restarted.stop()
    assert None not in operations(deployment).values()


@pytest.mark.slow
def test_a_follower_that_dies_mid_follow_catches_up_on_restart(database_url: str, tmp_path: Path) -> None:
    """Two instances on one log: ``b`` dies after its services heard ``a``'s change and before it recorded
    anything of it; restarted, ``b`` runs the fleet's config on every service and follows the next change."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    deciding = Deployment(tmp_path / "a", database_url)
    following = Deployment(tmp_path / "b", database_url, encryption_key=deciding.encryption_key)
    for deployment in (deciding, following):
        deployment.write_config(body_with(INITIAL))
    replies: list[Reply] = []
    with deciding.serving() as a:
        with following.serving(failpoint="mid_follow") as b:
            assert following.services() == dict.fromkeys(SERVICES, INITIAL)  # handed over at start
            deciding.write_config(body_with(NEW))
            answer = a.post("/reload")
            replies.append(reply_from_response(answer))
            assert answer.json()["success"] is True, answer.text
            assert b.wait_exit() == FAILPOINT_EXIT_CODE, b.printed()
            assert "crash point mid_follow" in b.printed()
        # b's services heard of NEW; the log holds nothing of it from b.
        assert following.services() == dict.fromkeys(SERVICES, NEW)
        with following.serving() as restarted:
            assert restarted.pool_size() == NEW
            assert following.services() == dict.fromkeys(SERVICES, NEW)

            deciding.write_config(body_with(NEXT))
            answer = a.post("/reload")
            replies.append(reply_from_response(answer))
            assert answer.json()["success"] is True, answer.text
            # Its services hear of it first, then it records what they said and serves it.
            wait_for("b to follow", lambda: restarted.pool_size() == NEXT or None)
            assert following.services() == dict.fromkeys(SERVICES, NEXT)
            with deciding.open_log() as log:
                observers = [HttpObserver(serve.client, ADMIN_TOKEN) for serve in (a, restarted)]
                for observer in observers:
                    wait_until_settled(observer, log, quiet=0.2)
                check_nothing_lost(log, observers, replies, fleet_check=check_fleet_after_crashes)
            restarted.stop()
        a.stop()
