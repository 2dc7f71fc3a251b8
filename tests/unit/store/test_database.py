"""store.database without a database: what a JSON column's value decodes to."""

from __future__ import annotations

from typing import Any

import pytest

from confledger.store.database import UnreadableJSON, _json_or_unreadable


@pytest.mark.parametrize(
    ("stored", "decoded"),
    [
        ('{"a": [1, 2.5, null]}', {"a": [1, 2.5, None]}),  # an object, as every writer stores one
        ("[]", []),  # other JSON decodes as it is: whoever reads it checks the shape
        ('"text"', "text"),
        (b'{"a": 1}', {"a": 1}),  # a driver may hand bytes
    ],
)
def test_json_text_decodes_as_json(stored: str | bytes, decoded: Any) -> None:
    value = _json_or_unreadable(stored)
    assert value == decoded
    assert not isinstance(value, UnreadableJSON)


@pytest.mark.parametrize(
    "stored",
    [
        '{"name": "sh',  # cut short, as a torn write leaves it
        "{bad}",  # edited by hand
        "",  # emptied
        b"\xff\xfe{",  # not even text
    ],
)
def test_text_that_is_not_json_is_handed_on_as_unreadable(stored: str | bytes) -> None:
    value = _json_or_unreadable(stored)
    assert isinstance(value, UnreadableJSON)
    assert not isinstance(value, dict)  # so every reader's "an object where one belongs" check refuses it
