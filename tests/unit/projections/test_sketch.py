"""The quantile sketch behind the duration percentiles: accurate to 2%, and exact across a checkpoint."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confledger.projections.sketch import QuantileSketch

durations = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
quantiles = st.floats(min_value=0.0, max_value=1.0)


def sketch_of(values: list[float]) -> QuantileSketch:
    sketch = QuantileSketch()
    for value in values:
        sketch.add(value)
    return sketch


def exact(values: list[float], q: float) -> float:
    """The sorted-list percentile the sketch approximates: the value at rank floor(q * (n - 1))."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@given(st.lists(durations, min_size=1, max_size=300), quantiles)
def test_quantiles_are_within_two_percent_of_the_sorted_list(values: list[float], q: float) -> None:
    assert sketch_of(values).quantile(q) == pytest.approx(exact(values, q), rel=0.02)


@given(st.lists(durations, min_size=1, max_size=300))
def test_the_usual_percentiles_are_within_two_percent(values: list[float]) -> None:
    sketch = sketch_of(values)
    for q in (0.5, 0.95, 0.99):
        assert sketch.quantile(q) == pytest.approx(exact(values, q), rel=0.02)


@given(st.lists(durations | st.floats(min_value=0.0, max_value=9e-4), min_size=1, max_size=100), quantiles)
def test_sub_microsecond_values_count_as_zero(values: list[float], q: float) -> None:
    assert sketch_of(values).quantile(q) == pytest.approx(exact(values, q), rel=0.02, abs=1e-3)


@given(st.lists(durations, min_size=1, max_size=100))
def test_count_mean_max_and_order(values: list[float]) -> None:
    sketch = sketch_of(values)
    assert sketch.count == len(values)
    assert sketch.mean == pytest.approx(sum(values) / len(values))
    assert sketch.max == max(values)
    estimates = [sketch.quantile(q) for q in (0.0, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)]
    assert estimates == sorted(estimates)
    assert estimates[-1] <= sketch.max


def test_an_empty_sketch_answers_zero() -> None:
    sketch = QuantileSketch()
    assert (sketch.count, sketch.mean, sketch.max, sketch.quantile(0.5)) == (0, 0.0, 0.0, 0.0)


@given(st.lists(durations | st.just(0.0), max_size=100), st.lists(durations, max_size=20))
def test_state_round_trips_through_json_and_folds_on_identically(
    values: list[float], more: list[float]
) -> None:
    original = sketch_of(values)
    restored = QuantileSketch.from_state(json.loads(json.dumps(original.to_state())))
    assert restored == original
    assert restored.to_state() == original.to_state()
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert restored.quantile(q) == original.quantile(q)

    # Folding on after a restore equals folding everything without one (what a checkpoint relies on).
    for value in more:
        restored.add(value)
    assert restored == sketch_of([*values, *more])


def test_sketches_are_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(QuantileSketch())
