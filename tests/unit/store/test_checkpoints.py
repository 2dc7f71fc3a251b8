"""store.checkpoints without a database: the MAC a save makes holds for the state as the column gives it
back."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from confledger.store import Checkpoint
from confledger.store.canonical import canonical_json
from confledger.store.checkpoints import _mac_text, checkpoint_holds
from confledger.store.integrity import IntegrityKeys

KEYS = IntegrityKeys(b"k" * 32, origin="test")


def as_read_back(state: Any) -> Any:
    """What the JSON column gives back for ``state``: it stores the engine's serializer's text."""
    return json.loads(canonical_json(state))


@pytest.mark.parametrize(
    "state",
    [
        {},  # an empty fold
        {"total": 3, "rates": [0.5, 1e-9, 12345678901234567890]},  # floats and a big int as stored
        {"ops": [("a", 1), ("b", [2, (3,)])]},  # tuples come back as lists
        {"name": "naïve ☃ \u2028", "nested": {"z": None, "a": True}},  # text beyond ASCII, keys unsorted
        {"version": 99, "state": "x", "name": "inner"},  # the envelope's own member names, one level down
    ],
)
def test_the_mac_made_at_save_is_the_mac_of_the_state_read_back(state: dict[str, Any]) -> None:
    saved = Checkpoint("history", 3, 120, state)
    read_back = Checkpoint("history", 3, 120, as_read_back(state))
    # The text a save MACs is the canonical JSON of the whole checkpoint as read back.
    envelope = {"name": "history", "version": 3, "position": 120, "state": read_back.state}
    assert _mac_text(saved, canonical_json(state)) == canonical_json(envelope)
    mac = KEYS.record_mac("checkpoint", envelope)
    assert checkpoint_holds(read_back, mac, KEYS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "stats"),  # another projection's checkpoint
        ("version", 4),  # a state model it was not made with
        ("position", 121),  # a position it did not reach
        ("state", {"total": 4}),  # an edited state
    ],
)
def test_a_mac_does_not_hold_for_a_checkpoint_changed_in_any_field(field: str, value: Any) -> None:
    original = Checkpoint("history", 3, 120, {"total": 3})
    mac = KEYS.record_mac_of_text("checkpoint", _mac_text(original, canonical_json(original.state)))
    assert checkpoint_holds(original, mac, KEYS)
    changed = dataclasses.replace(original, **{field: value})
    assert not checkpoint_holds(changed, mac, KEYS)
    assert not checkpoint_holds(original, None, KEYS)
    assert checkpoint_holds(changed, None, None)  # a keyless log takes any checkpoint
