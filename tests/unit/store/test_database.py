"""store.database without a database: what a JSON column's value decodes to, and what a spent pool is."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from confledger.store.database import UnreadableJSON, _json_or_unreadable, translate_errors
from confledger.store.errors import StoreUnavailable


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


def test_a_pool_that_stays_spent_is_an_unavailable_store_not_an_internal_error() -> None:
    """SQLAlchemy's pool timeout (every connection in use for the whole wait) answers 503 as an outage
    does, naming the settings that size the pool and never the password."""
    url = make_url("postgresql+psycopg://app:s3cret@db.internal:5432/confledger")
    with pytest.raises(StoreUnavailable) as raised, translate_errors(url):
        raise sa_exc.TimeoutError("QueuePool limit of size 3 overflow 0 reached, connection timed out")
    assert raised.value.code == "store_unavailable"
    assert "CONFLEDGER_DATABASE_POOL_SIZE" in raised.value.message
    assert "s3cret" not in str(raised.value)
