"""Differences between config bodies: dotted paths for ``changes_applied``, redacted values for display."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confledger.store import canonical_json, config_hash
from confledger.store.diff import Change, _same, _same_texts, _walk, changed_paths, diff_bodies
from confledger.store.secrets import REDACTED, dotted

OLD: dict[str, Any] = {
    "app": "docs",
    "database": {"url": "sqlite://", "pool_size": 5, "password": "old-password"},
    "origins": ["a", "b"],
    "cache": {"ttl": 60},
}


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        # nothing changed
        (OLD, []),
        # one nested leaf
        ({**OLD, "database": {**OLD["database"], "pool_size": 6}}, ["database.pool_size"]),
        # a top-level key added, another removed
        ({key: value for key, value in OLD.items() if key != "app"} | {"debug": True}, ["app", "debug"]),
        # a list is compared whole: an insertion is one change, not one per shifted item
        ({**OLD, "origins": ["z", "a", "b"]}, ["origins"]),
        # a section replaced by a scalar
        ({**OLD, "cache": None}, ["cache"]),
        # a secret's path, never its value
        ({**OLD, "database": {**OLD["database"], "password": "new-password"}}, ["database.password"]),
    ],
)
def test_changed_paths(new: dict[str, Any], expected: list[str]) -> None:
    assert changed_paths(OLD, new) == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"n": 1}, {"n": 1.0}),  # int and float: equal in Python, different in JSON
        ({"flag": True}, {"flag": 1}),  # bool and int
        ({"x": 0.0}, {"x": -0.0}),  # signed zero
        ({"items": [1, 2]}, {"items": [1.0, 2]}),  # inside a list compared whole
        ({"items": [{"on": True}]}, {"items": [{"on": 1}]}),  # deeper inside a list
    ],
)
def test_values_that_hash_differently_are_changes(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert config_hash(old) != config_hash(new)
    assert changed_paths(old, new) == [next(iter(old))]


def test_against_nothing_each_top_level_key_is_one_change() -> None:
    assert changed_paths(None, {"a": {"b": 1, "c": [1]}, "d": "x"}) == ["a", "d"]


def test_any_mapping_is_walked_into_not_only_a_dict() -> None:
    old = {"a": MappingProxyType({"b": 1, "c": 2})}
    assert changed_paths(old, {"a": MappingProxyType({"b": 1, "c": 3})}) == ["a.c"]
    assert changed_paths(old, {"a": {"b": 1, "c": 2}}) == []


def test_a_list_of_sections_is_one_leaf() -> None:
    # Paths come from dict keys only; a list is one leaf, so its path is the key that holds it.
    assert changed_paths({"servers": [{"host": "a"}]}, {"servers": [{"host": "b"}]}) == ["servers"]


def test_diff_bodies_gives_kind_old_and_new() -> None:
    new = {key: value for key, value in OLD.items() if key != "app"} | {"debug": True, "cache": {"ttl": 120}}
    changes = diff_bodies(OLD, new)
    assert [change.as_dict() for change in changes] == [
        {"path": "app", "kind": "removed", "old": "docs", "new": None},
        {"path": "cache.ttl", "kind": "changed", "old": 60, "new": 120},
        {"path": "debug", "kind": "added", "old": None, "new": True},
    ]
    assert all(isinstance(change, Change) for change in changes)


def test_diff_bodies_redacts_secret_values() -> None:
    new = {**OLD, "database": {**OLD["database"], "password": "new-password"}}
    [change] = diff_bodies(OLD, new, secret_paths=[("database", "password")])
    assert change.as_dict() == {
        "path": "database.password",
        "kind": "changed",
        "old": REDACTED,
        "new": REDACTED,
    }


@pytest.mark.parametrize(
    ("old", "new", "secret_paths"),
    [
        # a section that appears with a secret inside it
        ({"db": None}, {"db": {"host": "h", "password": "p4ssw0rd-plain"}}, [("db", "password")]),
        # a whole section removed
        ({"db": {"password": "p4ssw0rd-plain"}}, {}, [("db", "password")]),
        # a list of sections, compared whole, with a secret in one item
        (
            {"servers": [{"host": "a", "token": "t0ken-plain-a"}]},
            {"servers": [{"host": "b", "token": "p4ssw0rd-plain"}]},
            [("servers", 0, "token")],
        ),
    ],
)
def test_a_secret_inside_a_changed_section_or_list_is_redacted(
    old: dict[str, Any], new: dict[str, Any], secret_paths: list[tuple[str | int, ...]]
) -> None:
    changes = diff_bodies(old, new, secret_paths=secret_paths)
    shown = json.dumps([change.as_dict() for change in changes])
    assert "p4ssw0rd-plain" not in shown
    assert "t0ken-plain" not in shown
    assert REDACTED in shown
    assert "host" in shown or "removed" in shown  # the rest of the section is still shown


def test_diff_bodies_keeps_the_inputs_untouched() -> None:
    old = {"db": {"password": "p4ssw0rd-plain"}}
    before = json.dumps(old)
    diff_bodies(old, {"db": None}, secret_paths=[("db", "password")])
    assert json.dumps(old) == before


# --- properties ------------------------------------------------------------------------------------------

leaves = (
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=3)
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("abcd"), children, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from("abcde"), json_values, max_size=4)


@given(bodies)
def test_a_body_never_differs_from_itself(body: dict[str, Any]) -> None:
    assert changed_paths(body, body) == []
    assert changed_paths(body, json.loads(json.dumps(body))) == []


@given(bodies, bodies)
def test_no_changes_exactly_when_the_hashes_agree(old: dict[str, Any], new: dict[str, Any]) -> None:
    # changes_applied is empty only for a config with the same hash: never a new hash with no paths.
    assert (changed_paths(old, new) == []) == (config_hash(old) == config_hash(new))


@given(bodies, bodies)
def test_paths_are_unique_symmetric_and_match_diff_bodies(old: dict[str, Any], new: dict[str, Any]) -> None:
    paths = changed_paths(old, new)
    assert len(paths) == len(set(paths))
    assert [change.path for change in diff_bodies(old, new)] == paths
    assert set(changed_paths(new, old)) == set(paths)


# --- the leaf comparison: the answer comparing canonical texts gives, without serialising -------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 1.0, 1])
    | st.text(max_size=4)
)
any_json = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=12,
)


def _flipped(value: Any, data: st.DataObject) -> Any:
    """Equal to ``value`` in Python; its canonical text may differ (1 -> 1.0, 0.0 -> -0.0) or not."""
    if isinstance(value, list | tuple):
        return tuple(value) if isinstance(value, list) else list(value)
    if isinstance(value, bool):
        return data.draw(st.sampled_from([int(value), float(value)]))
    if isinstance(value, int) and abs(value) < 2**53:
        return float(value)
    if isinstance(value, float) and value == 0:
        return data.draw(st.sampled_from([-value, 0]))
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _twin(value: Any, data: st.DataObject) -> Any:
    """A copy of ``value`` with at most one node flipped, so that one node decides the answer."""
    nodes = [0]

    def count(item: Any) -> None:
        nodes[0] += 1
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else ()
        for child in children:
            count(child)

    count(value)
    target = data.draw(st.integers(0, nodes[0]))  # nodes[0] itself: no change at all
    seen = [0]

    def rebuild(item: Any) -> Any:
        here = seen[0]
        seen[0] += 1
        if isinstance(item, dict):
            item = {key: rebuild(child) for key, child in item.items()}
        elif isinstance(item, list | tuple):
            item = type(item)(rebuild(child) for child in item)
        return _flipped(item, data) if here == target else item

    return rebuild(value)


@given(any_json, any_json)
def test_leaves_are_the_same_exactly_when_their_canonical_texts_are(old: Any, new: Any) -> None:
    assert _same(old, new) == (canonical_json(old) == canonical_json(new))


@given(any_json, st.data())
def test_near_twins_are_the_same_exactly_when_their_canonical_texts_are(
    old: Any, data: st.DataObject
) -> None:
    new = _twin(old, data)
    assert _same(old, new) == (canonical_json(old) == canonical_json(new))
    assert _same(new, old) == _same(old, new)


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        (1, 1.0, False),
        (True, 1, False),
        (0.0, -0.0, False),
        ([0.0], [-0.0], False),
        ([1, "a"], (1, "a"), True),  # one JSON text
        ({"a": [1, {"b": None}]}, {"a": (1, {"b": None})}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ("x", "x", True),
        (10**400, 10**400, True),
    ],
)
def test_leaf_comparison_cases(old: Any, new: Any, same: bool) -> None:
    assert _same(old, new) is same
    assert _same_texts(old, new) is same


class _Text(str):
    pass


nan = float("nan")
inf = float("inf")


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        # No canonical text: Python's equality and the type decide, as they always did.
        ([inf], [inf], True),
        ([inf], (inf,), False),  # one text if there were one, but a list is not a tuple to Python
        ([nan, 1], [nan, 1.0], True),  # the very same NaN object, and 1 == 1.0
        ([nan], [float("nan")], False),
        ({1: "a"}, {True: "a"}, True),  # non-string keys, equal to Python
        ({1: 1}, {1: 1.0}, True),
        (["\ud800", 0.0], ["\ud800", -0.0], True),
        ([10**5000, 1], [10**5000, 1.0], True),
        ([b"x", 1], [b"x", 1.0], True),
        # Not plain types, yet with a canonical text: the texts decide.
        (_Text("a"), "a", True),
        ([_Text("a")], ["a"], True),
        ({"a": _Text("b")}, {"a": "c"}, False),
    ],
)
def test_values_without_a_plain_text_keep_their_old_answer(old: Any, new: Any, same: bool) -> None:
    assert _same_texts(old, new) is same
    assert _same(old, new) is same


odd_leaves = st.sampled_from(
    [nan, float("inf"), float("-inf"), "\ud800", b"raw", frozenset({1}), _Text("1"), 1, 1.0, -0.0]
) | st.builds(pow, st.just(10), st.just(5000))  # too long for json (built, so no repr is needed)
odd_json = st.recursive(
    json_leaves | odd_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=2) | st.sampled_from([1, True, None, 1.0]), children, max_size=3)
    ),
    max_leaves=10,
)


@given(odd_json, st.data())
def test_values_that_are_not_plain_json_get_the_answer_they_always_got(old: Any, data: st.DataObject) -> None:
    # Comparing canonical texts, falling back on type and Python equality where a value has none.
    new = data.draw(st.sampled_from([_twin(old, data), data.draw(odd_json)]))
    assert _same(old, new) == _same_texts(old, new)


# --- changed_paths: plain dicts and leaves settled in place, the rest by _walk ---------------------------


def _reference_changed_paths(old: Any, new: Any) -> list[str]:
    """What changed_paths gave when it was _walk and dotted."""
    raw: list[tuple[tuple[str | int, ...], Any, Any]] = []
    _walk(old if old is not None else {}, new, (), raw)
    return [dotted(path) for path, _, _ in raw]


mixed_leaves = st.sampled_from([None, True, False, 0, 1, 1.0, 0.0, -0.0, 2.5, nan, inf, "", "a", _Text("a")])
mixed_values = st.recursive(
    mixed_leaves,
    lambda children: (
        st.lists(children, max_size=2)
        | st.lists(children, max_size=2).map(tuple)
        | st.dictionaries(st.sampled_from(["", "a", "b", "c"]), children, max_size=3)
        | st.dictionaries(st.sampled_from(["", "a", "b"]), children, max_size=2).map(MappingProxyType)
    ),
    max_leaves=8,
)
mixed_bodies = st.dictionaries(st.sampled_from(["", "a", "b", "c"]), mixed_values, max_size=4)


def _similar(body: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """``body`` with its keys in another order, one top-level value perhaps replaced."""
    items: list[tuple[str, Any]] = data.draw(st.permutations(list(body.items())))
    shuffled = dict(items)
    replace: bool = data.draw(st.booleans())
    if shuffled and replace:
        shuffled[data.draw(st.sampled_from(sorted(shuffled)))] = data.draw(mixed_values)
    return shuffled


@given(mixed_bodies, st.data())
def test_changed_paths_gives_what_walking_every_key_gave(old: dict[str, Any], data: st.DataObject) -> None:
    new = data.draw(st.sampled_from([_similar(old, data), data.draw(mixed_bodies)]))
    assert changed_paths(old, new) == _reference_changed_paths(old, new)
    assert changed_paths(None, new) == _reference_changed_paths(None, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # the same keys in another order: paths still come sorted
        ({"b": {"y": 1, "x": 1}, "a": 1}, {"a": 2, "b": {"x": 2, "y": 2}}),
        # an empty key adds no dot, as dotted() never did
        ({"": {"a": 1}}, {"": {"a": 2}}),
        # keys that are not strings
        ({1: {"a": 1}, 2: 1}, {1: {"a": 2}, 2: 2}),
        # a mapping that is not a dict, at the top and further down
        (MappingProxyType({"a": 1}), {"a": 2}),
        ({"a": MappingProxyType({"b": {"c": 1}})}, {"a": {"b": {"c": 2}}}),
        # floats: one text per non-zero value, two for zero
        ({"f": 1.5, "z": 0.0, "n": nan}, {"f": 1.5, "z": -0.0, "n": nan}),
    ],
)
def test_changed_paths_odd_cases(old: Any, new: Any) -> None:
    assert changed_paths(old, new) == _reference_changed_paths(old, new)
    assert changed_paths(old, new)  # each case has a change


# A secret mapping under a secret name: its keys are part of the secret (an API key used as a key).
KEYED = {"app": "docs", "credentials": {"sk-live-OLDKEY-1111": "service-a"}}
SECRET_PATHS = [("credentials",)]


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        # (the new body, the changed paths): the secret mapping is one path whatever changed inside it
        ({**KEYED, "credentials": {"sk-live-NEWKEY-2222": "service-a"}}, ["credentials"]),
        ({**KEYED, "credentials": {"sk-live-OLDKEY-1111": "service-b"}}, ["credentials"]),
        ({**KEYED, "app": "other"}, ["app"]),
        (KEYED, []),
    ],
)
def test_a_secret_mapping_changes_as_one_path_and_its_keys_never_show(
    new: dict[str, Any], expected: list[str]
) -> None:
    assert changed_paths(KEYED, new, SECRET_PATHS) == expected
    changes = diff_bodies(KEYED, new, secret_paths=SECRET_PATHS)
    assert [change.path for change in changes] == expected
    assert "KEY" not in json.dumps([change.as_dict() for change in changes])
