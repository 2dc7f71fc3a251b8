"""``api.workers``: what the supervisor of ``serve --workers`` does with a SIGHUP."""

from __future__ import annotations

import pytest

from confledger.api.workers import WorkerConfig, WorkerPlan, WorkerSupervisor


def supervisor(*, reload_on_hup: bool) -> WorkerSupervisor:
    plan = WorkerPlan(overrides={}, log_level="info", instance_id="host:1/w0")
    return WorkerSupervisor(
        [WorkerConfig(plan, request_timeout=1.0, workers=1)], [], reload_on_hup=reload_on_hup
    )


@pytest.mark.parametrize(
    ("reload_on_hup", "said"),
    [
        # (the signal handler on, what the supervisor logs with no worker started yet)
        (True, "no worker is ready to reload"),
        (False, "the signal handler is off (--no-signal-handler); ignored"),  # never "reloading through"
    ],
)
def test_a_sighup_says_what_the_supervisor_did_with_it(
    reload_on_hup: bool, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The supervisor speaks as uvicorn's does (its "uvicorn.error" logger, which uvicorn's own logging
    # set-up, made as the config is built, writes to standard error).
    supervisor(reload_on_hup=reload_on_hup).handle_hup()
    printed = capsys.readouterr().err
    assert said in printed
    assert "reloading through" not in printed
