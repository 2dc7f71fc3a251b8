"""The suites' size knob (``tests/scale.py``): how ``CONFLEDGER_TEST_SCALE`` is read."""

from __future__ import annotations

import pytest

from tests.scale import read_scale


@pytest.mark.parametrize(
    ("value", "scale"),
    [
        # unset or empty: CI's size
        (None, 1.0),
        ("", 1.0),
        # a whole number, as the suites' READMEs show it
        ("20", 20.0),
        # the proof under faults at the full size: 200 kill loops is 30 x 6.67
        ("6.67", 6.67),
        # smaller than CI's, for a quick look
        ("0.5", 0.5),
    ],
)
def test_the_scale_is_a_positive_number(value: str | None, scale: float) -> None:
    assert read_scale(value) == scale


@pytest.mark.parametrize(
    ("value", "says"),
    [
        # not a number
        ("full", "must be a number"),
        # nothing to run, or less than nothing
        ("0", "positive"),
        ("-2", "positive"),
        # not a size
        ("nan", "positive"),
        ("inf", "positive"),
    ],
)
def test_a_scale_that_is_no_size_is_refused_by_name(value: str, says: str) -> None:
    with pytest.raises(ValueError, match="CONFLEDGER_TEST_SCALE") as refused:
        read_scale(value)
    assert says in str(refused.value)
