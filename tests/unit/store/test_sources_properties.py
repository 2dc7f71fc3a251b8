"""store.sources, property tests: every format, arbitrary bytes and arbitrary values.

Whatever a file holds, ``load_source`` gives a JSON-compatible mapping or a SourceError with one of the
reason codes, never another exception; JSON and YAML carry the same body; and a JSON body, which skips the
tree check every other format's body gets, is one that check would leave as it is.
"""

from __future__ import annotations

import copy
import json
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confledger.store.errors import SourceError
from confledger.store.sources import MAX_DEPTH, MAX_INT_DIGITS, REASON_CODES, load_source
from confledger.store.sources import reading as sources_reading
from confledger.store.sources.limits import Refusal
from confledger.store.sources.tree import check_tree

from .test_sources import write

# --------------------------------------------------------------------------------------------------
# Property: JSON and YAML carry the same body
# --------------------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _scalars
    child = _values(depth - 1)
    return _scalars | st.lists(child, max_size=3) | st.dictionaries(st.text(max_size=8), child, max_size=3)


# The top-level mapping plus four more levels: nesting <= 5.
_bodies = st.dictionaries(st.text(max_size=8), _values(4), max_size=4)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_json_and_yaml_round_trip_the_same_body(tmp_path: Path, body: dict[str, Any]) -> None:
    as_json = load_source(write(tmp_path, "p.json", json.dumps(body)))
    as_yaml = load_source(write(tmp_path, "p.yaml", yaml.safe_dump(body)))
    assert as_json.body == body
    assert as_yaml.body == body


# --------------------------------------------------------------------------------------------------
# Property: whatever the bytes, in every format, a JSON-compatible mapping or a SourceError with a code
# --------------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
_any_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**MAX_INT_DIGITS) + 1, max_value=10**MAX_INT_DIGITS - 1)  # what str() writes
    | st.floats()
    | _text
    | st.dates()
    | st.datetimes()
    | st.times()
)
_any_values = st.recursive(
    _any_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=15,
)
_any_documents = st.dictionaries(_text, _any_values, max_size=4)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (
            f"{json.dumps(key, ensure_ascii=False)} = {_toml_value(item)}" for key, item in value.items()
        )
        return "{" + ", ".join(pairs) + "}"
    if value is None or isinstance(value, str):
        return json.dumps(value or "", ensure_ascii=False)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


class _Dumper(yaml.SafeDumper):
    """SafeDumper, with a time of day written as text (YAML has no such type)."""


_Dumper.add_representer(dt_time, lambda dumper, value: dumper.represent_str(value.isoformat()))

# How each format writes a document of arbitrary values (some of which it must then refuse).
WRITERS: dict[str, Any] = {
    "p.json": lambda body: json.dumps(body, default=str, ensure_ascii=False),
    "p.yaml": lambda body: yaml.dump(body, Dumper=_Dumper, allow_unicode=True),
    "p.toml": lambda body: "".join(
        f"{json.dumps(key, ensure_ascii=False)} = {_toml_value(value)}\n" for key, value in body.items()
    ),
    ".env": lambda body: "".join(f"{key}={json.dumps(str(value))}\n" for key, value in body.items()),
}


def _json_compatible(value: Any, depth: int = 1) -> bool:
    if isinstance(value, dict):
        return depth <= MAX_DEPTH and all(
            isinstance(key, str) and _json_compatible(item, depth + 1) for key, item in value.items()
        )
    if isinstance(value, list):
        return depth <= MAX_DEPTH and all(_json_compatible(item, depth + 1) for item in value)
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, int) and not isinstance(value, bool):
        return len(str(abs(value))) <= MAX_INT_DIGITS
    return value is None or isinstance(value, str | bool)


def assert_loads_or_refuses(directory: Path, name: str, content: bytes) -> None:
    path = write(directory, name, content)
    try:
        body = load_source(path).body
    except SourceError as error:
        code = error.code
    else:
        code = None
    if code is not None:
        assert code in REASON_CODES
        return
    assert isinstance(body, dict)
    assert _json_compatible(body)
    assert json.loads(json.dumps(body, allow_nan=False)) == body


FILE_NAMES = list(WRITERS)
_fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", FILE_NAMES)
@_fast
@given(content=st.binary(max_size=120))
def test_arbitrary_bytes_load_or_are_refused(tmp_path: Path, name: str, content: bytes) -> None:
    assert_loads_or_refuses(tmp_path, name, content)


@pytest.mark.parametrize("name", FILE_NAMES)
@_fast
@given(body=_any_documents)
def test_arbitrary_values_load_or_are_refused(tmp_path: Path, name: str, body: dict[str, Any]) -> None:
    assert_loads_or_refuses(tmp_path, name, WRITERS[name](body).encode("utf-8"))


@pytest.mark.parametrize("name", FILE_NAMES)
@_fast
@given(body=_any_documents, data=st.data())
def test_damaged_documents_load_or_are_refused(
    tmp_path: Path, name: str, body: dict[str, Any], data: st.DataObject
) -> None:
    # A written document with a few bytes replaced: mostly almost-valid input, where parsers have corners.
    content = bytearray(WRITERS[name](body).encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(content)))
        content[at : at + data.draw(st.integers(0, 2))] = data.draw(st.binary(max_size=3))
    assert_loads_or_refuses(tmp_path, name, bytes(content))


# --------------------------------------------------------------------------------------------------
# JSON bodies skip the tree check: its hooks and depth scan must leave it nothing to refuse or change
# --------------------------------------------------------------------------------------------------


def _passes_check_tree_untouched(text: str) -> None:
    try:
        body = sources_reading._parse(text.encode("utf-8"), "json")
    except Refusal:
        return
    walked = copy.deepcopy(body)
    check_tree(walked)
    assert json.dumps(walked) == json.dumps(body)


def _json_nested(depth: int) -> str:
    """An object holding ``depth - 1`` nested lists: ``depth`` containers."""
    return '{"a": ' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


@pytest.mark.parametrize(
    "text",
    [
        # depth at, and one past, the limit
        _json_nested(MAX_DEPTH),
        _json_nested(MAX_DEPTH + 1),
        # integers at, and one past, the digit limit
        '{"a": ' + "9" * MAX_INT_DIGITS + "}",
        '{"a": -' + "9" * MAX_INT_DIGITS + "}",
        '{"a": ' + "9" * (MAX_INT_DIGITS + 1) + "}",
        # the largest and smallest floats, one that overflows, a negative zero
        '{"a": 1e308, "b": -1e308, "c": 1e400, "d": -0.0, "e": 5e-324}',
        '{"a": NaN}',
        '{"a": -Infinity}',
        # brackets inside strings, an escaped NUL
        '{"a": "[[[[{{{{", "b": "\\u0000"}',
    ],
)
def test_json_bodies_at_the_limits_pass_check_tree_untouched(text: str) -> None:
    _passes_check_tree_untouched(text)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _json_values, max_size=4))
def test_json_bodies_pass_check_tree_untouched(body: dict[str, Any]) -> None:
    _passes_check_tree_untouched(json.dumps(body))
