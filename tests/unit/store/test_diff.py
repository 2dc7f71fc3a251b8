"""Differences between config bodies: dotted paths for ``changes_applied``, redacted values for display."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import config_hash
from store.diff import Change, changed_paths, diff_bodies
from store.secrets import REDACTED

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
