"""Canonical JSON and the hashes built on it: one byte form, whatever the key order or round trip."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confledger.store.canonical import (
    _reject_non_finite,
    canonical_json,
    config_hash,
    sha256_hex,
)
from confledger.store.errors import CanonicalizationError

# --- strategies -----------------------------------------------------------------------------------------

keys = st.text(max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=30,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)
# Siblings around a planted bad value only need to be valid, not big.
small_json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=2) | st.dictionaries(keys, children, max_size=2),
    max_leaves=4,
)


def reinserted(value: Any, rng: random.Random) -> Any:
    """An equal value whose dicts (at every depth) were built with their keys in a shuffled order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: reinserted(child, rng) for key, child in items}
    if isinstance(value, list):
        return [reinserted(child, rng) for child in value]
    return value


def _placed_in_list(inner: Any, siblings: list[Any], index: int) -> list[Any]:
    return [*siblings[:index], inner, *siblings[index:]]


def _placed_in_dict(inner: Any, siblings: dict[str, Any], key: str) -> dict[str, Any]:
    return {**siblings, key: inner}


def nested_somewhere(bad: Any) -> st.SearchStrategy[Any]:
    """Valid JSON trees holding exactly one ``bad`` leaf at a random depth, among valid siblings."""
    return st.recursive(
        st.just(bad),
        lambda inner: (
            st.builds(_placed_in_list, inner, st.lists(small_json_values, max_size=3), st.integers(0, 3))
            | st.builds(_placed_in_dict, inner, st.dictionaries(keys, small_json_values, max_size=3), keys)
        ),
        max_leaves=8,
    )


# --- config_hash ---------------------------------------------------------------------------------------


@given(body=json_objects, seed=st.integers())
def test_config_hash_does_not_depend_on_key_insertion_order(body: dict[str, Any], seed: int) -> None:
    shuffled = reinserted(body, random.Random(seed))
    assert shuffled == body
    assert config_hash(shuffled) == config_hash(body)
    assert canonical_json(shuffled) == canonical_json(body)


@given(body=json_objects)
def test_config_hash_survives_a_json_dump_and_load_round_trip(body: dict[str, Any]) -> None:
    reloaded = json.loads(canonical_json(body))
    assert config_hash(reloaded) == config_hash(body)
    # And the canonical form is a fixed point: canonicalising the reloaded value gives the same text.
    assert canonical_json(reloaded) == canonical_json(body)


@given(body=json_objects)
def test_config_hash_is_the_sha256_of_the_utf8_canonical_text(body: dict[str, Any]) -> None:
    text = canonical_json(body)
    assert config_hash(body) == sha256_hex(text.encode("utf-8"))
    assert len(config_hash(body)) == 64


def test_canonical_json_is_compact_sorted_and_not_ascii_escaped() -> None:
    assert canonical_json({"b": 1, "a": [1, 2], "é": "ü"}) == '{"a":[1,2],"b":1,"é":"ü"}'


NON_FINITE_FLOATS = [
    float("nan"),  # NaN: not equal to itself, so two "equal" configs would differ
    float("inf"),  # Infinity: JSON has no literal for it
    float("-inf"),  # -Infinity: likewise
]

NON_STRING_KEYS = [
    1,  # json.dumps would silently turn it into "1" and collide with a real "1" key
    2.5,  # likewise "2.5"
    True,  # likewise "true"
    None,  # likewise "null"
    ("a", "b"),  # a tuple has no key form at all
]


@given(data=st.data(), non_finite=st.sampled_from(NON_FINITE_FLOATS))
def test_non_finite_floats_are_refused_at_any_depth(data: st.DataObject, non_finite: float) -> None:
    tree = data.draw(nested_somewhere(non_finite))
    with pytest.raises(CanonicalizationError, match="no JSON representation"):
        canonical_json(tree)
    with pytest.raises(CanonicalizationError):
        config_hash({"root": tree})


@given(data=st.data(), non_string_key=st.sampled_from(NON_STRING_KEYS))
def test_non_string_keys_are_refused_at_any_depth(data: st.DataObject, non_string_key: Any) -> None:
    tree = data.draw(nested_somewhere({non_string_key: "value"}))
    with pytest.raises(CanonicalizationError, match="non-string key"):
        canonical_json(tree)


@pytest.mark.parametrize(
    "not_json",
    [
        {1, 2},  # a set has no JSON form
        b"bytes",  # neither do bytes
        object(),  # nor an arbitrary object
    ],
)
def test_values_with_no_json_form_are_refused(not_json: Any) -> None:
    with pytest.raises(CanonicalizationError, match="not plain JSON"):
        config_hash({"x": not_json})


def test_a_lone_surrogate_from_json_loads_is_refused_not_crashing_utf8() -> None:
    # json.loads accepts the escape "\ud800"; its result has no UTF-8 form.
    body = json.loads('{"name": "\\ud800"}')
    with pytest.raises(CanonicalizationError, match="surrogate"):
        config_hash(body)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # keys json.dumps would quietly turn into strings (colliding with real "1", "true", "null" keys)
        ({1: "x"}, "non-string key 1 at $"),
        ({"a": {True: "x"}}, "non-string key True at $.a"),
        ({"a": [{None: 1}]}, "non-string key None at $.a[0]"),
        ({"a": {2.5: 1}}, "non-string key 2.5 at $.a"),
        ({"a": 1, 2: "b"}, "non-string key 2 at $"),  # mixed with str keys: json fails sorting instead
        ({"a": OrderedDict([(1, "x")])}, "non-string key 1 at $.a"),  # inside a dict subclass
        ({"a": {("t",): 1}}, "non-string key ('t',) at $.a"),  # a key with no JSON form at all
        ({float("nan"): 1}, "non-string key nan at $"),
        # non-finite numbers, at their path
        ({"a": [1.0, float("nan")]}, "nan at $.a[1] has no JSON representation"),
        ({"a": {"b": float("-inf")}}, "-inf at $.a.b has no JSON representation"),
        ({"a": ("x", float("inf"))}, "inf at $.a[1] has no JSON representation"),
        # a mapping json cannot encode: the path-naming refusal still comes first, as it always did
        ({"a": MappingProxyType({"b": float("nan")})}, "nan at $.a.b has no JSON representation"),
        # strings with no UTF-8 form, as a value or as a key
        ({"a": ["ok", "x\ud800"]}, "lone surrogate"),
        ({"\udc80": 1}, "lone surrogate"),
        # no JSON form at all
        ({"a": MappingProxyType({"b": 1})}, "not plain JSON"),
    ],
)
def test_refusals_name_the_problem_and_its_path(value: Any, message: str) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_json(value)
    assert message in str(caught.value)


class _Key(str):
    pass


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({_Key("b"): 1, "a": 2}, '{"a":2,"b":1}'),  # a str subclass is a string key
        (OrderedDict([("b", 1), ("a", (1, 2))]), '{"a":[1,2],"b":1}'),  # dict subclass, tuple
        ([{"x": -0.0}, 1.0, True, None], '[{"x":-0.0},1.0,true,null]'),
    ],
)
def test_string_keys_and_json_shaped_values_are_accepted(value: Any, text: str) -> None:
    assert canonical_json(value) == text


def _walk_then_dump(value: Any) -> str:
    """canonical_json as it was first written: the path-naming walk always, then json.dumps."""
    _reject_non_finite(value)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CanonicalizationError(f"value is not plain JSON: {exc}") from exc
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(
            f"string holds a lone surrogate {text[exc.start]!r}, which has no UTF-8 form"
        ) from exc
    return text


odd_leaves = st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), "\ud800", b"raw", -0.0, _Key("k"), (1, "t")]
)
odd_keys = keys | st.sampled_from([1, True, None, 2.5, "\udfff", _Key("k")])
odd_values = st.recursive(
    scalars | odd_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(odd_keys, children, max_size=3)
        | st.dictionaries(odd_keys, children, max_size=2).map(OrderedDict)
    ),
    max_leaves=10,
)


def _outcome(function: Any, value: Any) -> str:
    try:
        return "text:" + function(value)
    except CanonicalizationError as exc:
        return "refused:" + str(exc)


@given(value=odd_values)
def test_the_fast_path_answers_exactly_as_walking_first_did(value: Any) -> None:
    # Same text, or the same refusal with the same message, for plain and odd values alike.
    assert _outcome(canonical_json, value) == _outcome(_walk_then_dump, value)


@given(value=json_values)
def test_canonical_json_is_json_dumps_with_the_fixed_options(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda: (lambda d: (d.__setitem__("self", d), d)[1])({}),  # a dict that contains itself
        lambda: (lambda x: (x.append(x), x)[1])([]),  # a list that contains itself
        lambda: (lambda d: (d.__setitem__("n", [float("nan"), d]), d)[1])({}),  # a cycle next to NaN
    ],
    ids=["dict-cycle", "list-cycle", "cycle-and-nan"],
)
def test_a_value_that_contains_itself_is_refused_not_walked_for_ever(make: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(make())


def test_a_refused_value_leaves_nothing_behind_for_the_next_one() -> None:
    # json's circular-reference markers are per call: a failure half-way through a container must not
    # make that container look circular the next time it is encoded.
    inner = {"k": [1, float("nan")]}
    with pytest.raises(CanonicalizationError, match="no JSON representation"):
        canonical_json({"a": inner})
    inner["k"][1] = 2
    assert canonical_json({"a": inner, "b": inner}) == '{"a":{"k":[1,2]},"b":{"k":[1,2]}}'
