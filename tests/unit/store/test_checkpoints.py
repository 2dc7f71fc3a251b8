"""store.checkpoints without a database: the MAC a save makes holds for the row as stored, it is checked
on the stored text as it is, and it fails for a checkpoint changed in any field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from confledger.store import Checkpoint
from confledger.store.canonical import canonical_json
from confledger.store.checkpoints import StoredCheckpoint, _mac_text
from confledger.store.integrity import IntegrityKeys

KEYS = IntegrityKeys(b"k" * 32, origin="test")


def as_stored(checkpoint: Checkpoint, keys: IntegrityKeys | None = KEYS) -> StoredCheckpoint:
    """The row ``save_checkpoint`` writes for ``checkpoint``: the state's canonical text and its MAC."""
    text = canonical_json(checkpoint.state)
    mac = None if keys is None else keys.record_mac_of_text("checkpoint", _mac_text(checkpoint, text))
    return StoredCheckpoint(checkpoint.name, checkpoint.version, checkpoint.position, text, mac)


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
def test_the_mac_made_at_save_holds_for_the_row_as_stored(state: dict[str, Any]) -> None:
    saved = Checkpoint("history", 3, 120, state)
    stored = as_stored(saved)
    read_back = json.loads(stored.state_text)
    # The text a save MACs is the canonical JSON of the whole checkpoint as read back.
    envelope = {"name": "history", "version": 3, "position": 120, "state": read_back}
    assert _mac_text(saved, stored.state_text) == canonical_json(envelope)
    assert stored.mac == KEYS.record_mac("checkpoint", envelope)
    assert stored.holds(KEYS)
    assert stored.decoded() == Checkpoint("history", 3, 120, read_back)


@pytest.mark.parametrize(
    "respace",
    [
        lambda text: text.replace(",", ", ").replace(":", ": "),  # json.dumps' default separators
        lambda text: json.dumps(json.loads(text), indent=2),  # pretty-printed by hand
        lambda text: f" {text}\n",  # surrounding white space
    ],
)
def test_the_same_state_stored_with_other_spacing_holds(respace: Any) -> None:
    stored = as_stored(Checkpoint("stats", 1, 9, {"total": 3, "by": {"api": [1, 2]}}))
    respaced = dataclasses.replace(stored, state_text=respace(stored.state_text))
    assert respaced.state_text != stored.state_text
    assert respaced.holds(KEYS)
    assert respaced.decoded() == stored.decoded()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "stats"),  # another projection's checkpoint
        ("version", 4),  # a state model it was not made with
        ("position", 121),  # a position it did not reach
        ("state_text", '{"total":4}'),  # an edited state
        ("state_text", '{"total": 3'),  # a state cut short: not JSON at all
        ("mac", None),  # the MAC removed
        ("mac", "0" * 64),  # a MAC made up
    ],
)
def test_a_mac_does_not_hold_for_a_checkpoint_changed_in_any_field(field: str, value: Any) -> None:
    original = as_stored(Checkpoint("history", 3, 120, {"total": 3}))
    assert original.holds(KEYS)
    changed = dataclasses.replace(original, **{field: value})
    assert not changed.holds(KEYS)
    assert changed.holds(None)  # a keyless log takes any checkpoint


def test_a_state_that_is_not_json_cannot_be_decoded() -> None:
    stored = StoredCheckpoint("stats", 1, 9, '{"total": 3', None)
    with pytest.raises(ValueError):
        stored.decoded()
