"""``store.failpoints``: off unless ``CONFLEDGER_FAILPOINT`` names a point; then the n-th hit ends the process.

Each case runs a fresh interpreter, since the variable is read once at import.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from confledger.store.failpoints import FAILPOINT_EXIT_CODE, FAILPOINTS

ROOT = Path(__file__).resolve().parents[3]

# Hits ``after_parse`` three times, ``between_callbacks`` once, printing a line after each.
HITTING = """
from confledger.store import failpoints
for name in ("after_parse", "between_callbacks", "after_parse", "after_parse"):
    failpoints.hit(name)
    print("passed", name, flush=True)
"""


def run_with(spec: str | None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "CONFLEDGER_FAILPOINT"}
    if spec is not None:
        environment["CONFLEDGER_FAILPOINT"] = spec
    return subprocess.run(
        [sys.executable, "-c", HITTING],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# (the variable, how many points are passed before the process ends, its exit status)
@pytest.mark.parametrize(
    ("spec", "passed", "status"),
    [
        (None, 4, 0),  # unset: every point is passed
        ("", 4, 0),  # empty: the same
        ("after_parse", 0, FAILPOINT_EXIT_CODE),  # the first hit
        ("after_parse:2", 2, FAILPOINT_EXIT_CODE),  # the second after_parse, past one between_callbacks
        ("after_parse:3", 3, FAILPOINT_EXIT_CODE),
        ("after_parse:4", 4, 0),  # met only three times: never fires
        ("between_callbacks", 1, FAILPOINT_EXIT_CODE),
        ("mid_rollback", 4, 0),  # armed, never met
    ],
)
def test_the_armed_point_ends_the_process_on_its_nth_hit(spec: str | None, passed: int, status: int) -> None:
    result = run_with(spec)
    assert result.returncode == status, result.stderr
    assert result.stdout.count("passed") == passed
    if spec and status == FAILPOINT_EXIT_CODE:
        assert f"crash point {spec.partition(':')[0]}" in result.stderr


# Misspelt or malformed: refused at import, so a crash test cannot pass by never crashing.
@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("after-parse", "names no crash point"),
        ("nowhere", "names no crash point"),
        ("after_parse:0", "a whole number from 1"),
        ("after_parse:x", "a whole number from 1"),
        ("after_parse:-1", "a whole number from 1"),
    ],
)
def test_an_unknown_or_malformed_point_is_refused_at_import(spec: str, said: str) -> None:
    result = run_with(spec)
    assert result.returncode == 1
    assert "SetupError" in result.stderr
    assert said in result.stderr
    assert result.stdout == ""


def test_every_declared_point_is_met_somewhere_in_the_package() -> None:
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("store", "projections", "api")
        for path in (ROOT / folder).rglob("*.py")
    )
    met = set(re.findall(r"failpoints\.hit\(\"([a-z_]+)\"\)", sources))
    assert met == FAILPOINTS  # an undeclared name could never fire; a declared one never met, the same
