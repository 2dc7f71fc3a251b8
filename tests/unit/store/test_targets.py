"""store.targets.resolve_target: which applied config a rollback returns to, on a real SQLite log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from confledger.store import EventLog, NewEvent, config_hash
from confledger.store.errors import ConfigLookupError
from confledger.store.events import ConfigApplied
from confledger.store.targets import resolve_target

A, B, C = ({"n": n} for n in range(3))
H = {name: config_hash(body) for name, body in (("a", A), ("b", B), ("c", C))}


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    """Applied in order: a, b, a again, c; b is stored but so is d, never applied."""
    with EventLog(f"sqlite:///{tmp_path / 'log.db'}", instance_id="unit") as log:
        never = log.put_config({"never": True})
        H["never"] = never
        for name, body in (("a", A), ("b", B), ("a", A), ("c", C)):
            prepared = log.prepare_config(body)
            log.append(
                [NewEvent(ConfigApplied(hash=H[name], previous_hash=None), operation_id=uuid.uuid4())],
                configs=[prepared],
            )
        yield log


@pytest.mark.parametrize(
    ("reference", "current", "expected"),
    [
        # no reference: the newest applied config that is not the current one
        (None, "c", "a"),
        # the current config is skipped however often it was applied
        (None, "a", "c"),
        # a full hash of an applied config
        ("b", "c", "b"),
        # a 7-digit prefix
        ("b:7", "c", "b"),
    ],
)
def test_resolves(log: EventLog, reference: str | None, current: str, expected: str) -> None:
    if reference is not None:
        name, _, digits = reference.partition(":")
        reference = H[name][: int(digits)] if digits else H[name]
    assert resolve_target(log, reference, H[current]) == H[expected]


@pytest.mark.parametrize(
    ("reference", "current", "code"),
    [
        # stored, but never applied: not a rollback target
        ("never", "c", "unknown_config_hash"),
        # too short to be a prefix
        ("abc", "c", "invalid_hash_prefix"),
        # no stored config has it
        ("0" * 64, "c", "unknown_config_hash"),
    ],
)
def test_refuses(log: EventLog, reference: str, current: str, code: str) -> None:
    with pytest.raises(ConfigLookupError) as raised:
        resolve_target(log, H.get(reference, reference), H[current])
    assert raised.value.code == code


def test_with_nothing_earlier_there_is_no_previous_config(tmp_path: Path) -> None:
    with (
        EventLog(f"sqlite:///{tmp_path / 'empty.db'}", instance_id="unit") as log,
        pytest.raises(ConfigLookupError) as raised,
    ):
        resolve_target(log, None, None)
    assert raised.value.code == "no_previous_config"
