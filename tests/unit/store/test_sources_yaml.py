"""store.sources.yaml_source: what the guarded YAML loader makes of documents as people write them, and of
hostile ones. Every refusal here is also a refusal with the same code on the pure-Python loader PyYAML
falls back to without libyaml.

(The cases common to every format are in test_sources; these are YAML's own corners.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from confledger.store.sources import MAX_DEPTH, MAX_YAML_ALIASES, load_source, reading
from confledger.store.sources.yaml_source import GuardedLoader

from .test_sources import BILLION_LAUGHS, LOADS, REFUSALS, refusal, write

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"


def loaded(tmp_path: Path, text: str) -> dict[str, Any]:
    return load_source(write(tmp_path, "a.yaml", text)).body


def refused(tmp_path: Path, text: str) -> str:
    return refusal(write(tmp_path, "a.yaml", text)).code


def nested_block(depth: int, leaf: str = "x: 1") -> str:
    """``depth`` block mappings, one inside the other, the innermost holding ``leaf``."""
    lines = [" " * level + f"k{level}:" for level in range(depth - 1)]
    return "\n".join([*lines, " " * (depth - 1) + leaf]) + "\n"


def nested_value(depth: int, leaf: Any) -> dict[str, Any]:
    """What ``nested_block(depth, leaf)`` holds, with ``leaf`` the innermost mapping."""
    value: Any = leaf
    for level in reversed(range(depth - 1)):
        value = {f"k{level}": value}
    return value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# Documents as people write them
# --------------------------------------------------------------------------------------------------

LOADED = [
    # YAML 1.1 integers: octal, hex, binary, underscores, sexagesimal; 0o is not an octal prefix in 1.1
    (
        "i: 0\nj: -5\nk: +3\nl: 0777\nm: 0x1F\nn: 0b101\no: 1_000\np: 1:30\nq: 12345678901234567890\nr: 0o17\n",
        {"i": 0, "j": -5, "k": 3, "l": 511, "m": 31, "n": 5, "o": 1000, "p": 90, "q": 12345678901234567890}
        | {"r": "0o17"},
    ),
    # floats need a dot in 1.1 (1e3 is text), a version number is text
    (
        "f: 1.5\ng: -0.5\nh: 1.0e+3\ni: .5\nj: 1:30.5\nk: 1e3\nl: 1.4.0\n",
        {"f": 1.5, "g": -0.5, "h": 1000.0, "i": 0.5, "j": 90.5, "k": "1e3", "l": "1.4.0"},
    ),
    # booleans and nulls; single letters are text
    (
        "b1: yes\nb2: No\nb3: TRUE\nb4: off\nb5: n\nb6: y\nn1: ~\nn2: null\nn3: Null\nn4:\n",
        {"b1": True, "b2": False, "b3": True, "b4": False, "b5": "n", "b6": "y"}
        | {"n1": None, "n2": None, "n3": None, "n4": None},
    ),
    # timestamps become ISO strings
    (
        "t1: 2024-01-01\nt2: 2001-12-14t21:59:43.10-05:00\nt3: 2001-12-14 21:59:43.10\n",
        {"t1": "2024-01-01", "t2": "2001-12-14T21:59:43.100000-05:00", "t3": "2001-12-14T21:59:43.100000"},
    ),
    # plain text with indicators inside it; "<<" and "=" as values
    (
        "v: <<\nw: =\nx: a:b\ny: a#b\nz: http://h:80/p?q=1#f\n",
        {"v": "<<", "w": "=", "x": "a:b", "y": "a#b", "z": "http://h:80/p?q=1#f"},
    ),
    # quoted scalars stay text
    (
        "q1: 'yes'\nq2: \"1\"\nq3: ''\nq4: \"\"\nq5: 'it''s'\nq6: \"a # b\"\nq7: 'x: y'\n",
        {"q1": "yes", "q2": "1", "q3": "", "q4": "", "q5": "it's", "q6": "a # b", "q7": "x: y"},
    ),
    # empty collections, sequences of mappings at the key's own column, empty entries
    ("e1: []\ne2: {}\ne3:\n  - []\n  - {}\n", {"e1": [], "e2": {}, "e3": [[], {}]}),
    ("a:\n- x: 1\n  y: 2\n- z: 3\nb: 4\n", {"a": [{"x": 1, "y": 2}, {"z": 3}], "b": 4}),
    ("a:\n  -\n    - 1\n    - 2\n  -\n  - 3\n", {"a": [[1, 2], None, 3]}),
    # comments deeper than anything, a key with nothing under it
    ("a:   # nothing here\n  # a comment deeper than anything\nb: 2\n", {"a": None, "b": 2}),
    # block scalars, continuation lines
    ("s: |\n  block\n  text\nf: >\n  folded\n  text\n", {"s": "block\ntext\n", "f": "folded text\n"}),
    ("a: b\n  c\n", {"a": "b c"}),
    # CRLF and lone CR line breaks
    ("a: 1\r\nb: 2\r\n", {"a": 1, "b": 2}),
    ("a: 1\rb: 2\n", {"a": 1, "b": 2}),
    # document markers and directives around one document; an explicit key
    ("---\na: 1\n...\n", {"a": 1}),
    ("%YAML 1.1\n---\na: 1\n", {"a": 1}),
    ("? a\n: 1\n", {"a": 1}),
    ("=: 1\n", {"=": 1}),
    # standard tags that fit their value, a %TAG handle for the standard prefix
    (
        "a: !!str 1\nb: !!int '2'\nc: !!float 3\nd: !!map {x: 1}\ne: !!seq [1]\n",
        {"a": "1", "b": 2, "c": 3.0, "d": {"x": 1}, "e": [1]},
    ),
    ("%TAG !e! tag:yaml.org,2002:\n---\na: !e!str 1\n", {"a": "1"}),
    # anchors on keys and scalars, aliases in lists, an alias as a key
    ("&k a: 1\nb: *k\nc: &v hi\nd: [*v, *v]\n", {"a": 1, "b": "a", "c": "hi", "d": ["hi", "hi"]}),
    ("a: &k x\n*k : 2\n", {"a": "x", "x": 2}),
]


@pytest.mark.parametrize(("text", "expected"), LOADED, ids=[f"doc{index}" for index in range(len(LOADED))])
def test_documents_load(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    assert loaded(tmp_path, text) == expected


def test_key_order_and_the_sign_of_zero_are_kept(tmp_path: Path) -> None:
    body = loaded(tmp_path, "z: 1\na: -0.0\nm: 0.0\n")
    assert list(body) == ["z", "a", "m"]
    assert str(body["a"]) == "-0.0"
    assert str(body["m"]) == "0.0"


def test_the_example_config_loads() -> None:
    body = load_source(EXAMPLE).body
    assert body["database"]["pool_size"] == 20
    assert body["security"]["allowed_origins"] == ["https://docs.example.com"]
    assert body["version"] == "1.4.0"


# --------------------------------------------------------------------------------------------------
# Merge keys
# --------------------------------------------------------------------------------------------------

MERGES = [
    # explicit keys win; merged keys come first in order
    ("a: &A {xx: 1, yy: 2}\nc: {z: 0, xx: 9, <<: *A}\n", {"xx": 9, "yy": 2, "z": 0}),
    (
        "base: &base\n  image: app\n  replicas: 2\nsvc:\n  name: web\n  <<: *base\n  replicas: 3\n",
        {"image": "app", "replicas": 3, "name": "web"},
    ),
    # an inline mapping, a list of an alias and an inline mapping, empty merges
    ("c: {<<: {xx: 1, yy: 2}, yy: 3}\n", {"xx": 1, "yy": 3}),
    ("a: &A {xx: 1}\nc: {<<: [*A, {zz: 3}]}\n", {"xx": 1, "zz": 3}),
    ("a: &A {xx: 1}\nc: {<<: [], <<: {}, k: 1}\n", {"k": 1}),
    # a merged mapping merged again
    ("l0: &l0 {k0: 0}\nl1: &l1 {<<: *l0, k1: 1}\nc: {<<: *l1, k2: 2}\n", {"k0": 0, "k1": 1, "k2": 2}),
    # a pair a merge skips is never built, so its .inf is not refused
    ("c: {<<: [{x: 1}, {x: .inf}]}\n", {"x": 1}),
]


@pytest.mark.parametrize(("text", "merged"), MERGES, ids=[f"merge{index}" for index in range(len(MERGES))])
def test_merge_keys(tmp_path: Path, text: str, merged: dict[str, Any]) -> None:
    body = loaded(tmp_path, text)
    assert body["c" if "c" in body else "svc"] == merged
    assert list(body["c" if "c" in body else "svc"]) == list(merged)


# --------------------------------------------------------------------------------------------------
# Refusals: YAML's own corners (the common ones are test_sources.REFUSALS)
# --------------------------------------------------------------------------------------------------

YAML_REFUSALS = [
    # merging what is not a mapping
    ("a: &A 1\nc: {<<: *A}\n", "invalid_value"),
    ("a: &A {xx: 1}\nc: {<<: [*A, 1]}\n", "invalid_value"),
    ("c: {<<: }\n", "invalid_value"),
    ("a: &A [1]\nc: {<<: [*A]}\n", "invalid_value"),
    # anchors and aliases: undefined, defined twice, referring to a node that contains them
    ("a: *nope\n", "syntax_error"),
    ("a: &x 1\nb: &x 2\n", "syntax_error"),
    ("a: &a {b: [1, {c: *a}]}\n", "alias_bomb"),
    # one alias more than the cap, each of a scalar (nothing to expand): counted on the composed graph
    ("x: &x 1\nl: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n", "alias_bomb"),
    # one key written two ways; a sequence as a key
    ("'=': 1\n=: 2\n", "duplicate_key"),
    ("? [a]\n: 1\n", "non_string_key"),
    # characters YAML refuses, or reads as a line break where a value cannot break
    ("a: x\x07y\n", "syntax_error"),
    ("a: 1 # bell \x07\n", "syntax_error"),
    ("a: x\x9fy\n", "syntax_error"),
    ("a: x\ufffey\n", "syntax_error"),
    ("a:\n\t- 1\n", "syntax_error"),  # a tab is never indentation
    ("a: 1\n- 2\n", "syntax_error"),
    # nesting past the limit by indentation alone, by one empty collection, or through compact sequences
    (nested_block(MAX_DEPTH + 1), "too_deep"),
    (nested_block(MAX_DEPTH, "x: []"), "too_deep"),
    (nested_block(MAX_DEPTH, "x: {}"), "too_deep"),
    (nested_block(MAX_DEPTH, "x:\n" + " " * MAX_DEPTH + "- 1"), "too_deep"),
    ("- " * 100_000 + "x\n", "too_deep"),
    # depth that appears only once an alias is expanded: 1 + 31 + 33 levels
    ("x: &x " + "[" * 33 + "]" * 33 + "\ny: " + "[" * 31 + "*x" + "]" * 31 + "\n", "too_deep"),
]


@pytest.mark.parametrize(
    ("text", "code"), YAML_REFUSALS, ids=[f"{row[1]}-{index}" for index, row in enumerate(YAML_REFUSALS)]
)
def test_yaml_refusals(tmp_path: Path, text: str, code: str) -> None:
    assert refused(tmp_path, text) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # MAX_DEPTH mappings, and MAX_DEPTH - 1 holding an empty list
        (nested_block(MAX_DEPTH), nested_value(MAX_DEPTH, {"x": 1})),
        (nested_block(MAX_DEPTH - 1, "x: []"), nested_value(MAX_DEPTH - 1, {"x": []})),
        # 1 + 31 + 32 levels once the alias is expanded
        (
            "x: &x " + "[" * 32 + "]" * 32 + "\ny: " + "[" * 31 + "*x" + "]" * 31 + "\n",
            yaml.safe_load("x: " + "[" * 32 + "]" * 32 + "\ny: " + "[" * 63 + "]" * 63 + "\n"),
        ),
        # exactly MAX_YAML_ALIASES aliases
        (
            "x: &x 1\nl: [" + ", ".join(["*x"] * MAX_YAML_ALIASES) + "]\n",
            {"x": 1, "l": [1] * MAX_YAML_ALIASES},
        ),
    ],
    ids=["block-depth", "block-depth-empty-list", "alias-depth", "alias-count"],
)
def test_limits_at_their_edge_load(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    assert loaded(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # by indentation: the 65th mapping opens on line 65 (one line per level), after 64 spaces
        (nested_block(MAX_DEPTH + 1), "line 65, column 65"),
        # through an alias: root, 31 levels of y, then the anchor's 33 brackets (from column 7): the 33rd
        ("x: &x " + "[" * 33 + "]" * 33 + "\ny: " + "[" * 31 + "*x" + "]" * 31 + "\n", "line 1, column 39"),
    ],
    ids=["block", "alias"],
)
def test_too_deep_says_where_the_limit_is_passed(tmp_path: Path, text: str, where: str) -> None:
    refused_with = refusal(write(tmp_path, "a.yaml", text))
    assert refused_with.code == "too_deep"
    assert where in str(refused_with)


def test_merges_that_copy_too_much_are_an_alias_bomb(tmp_path: Path) -> None:
    # Each merge copies its source's pairs: 200 merges of 2000 pairs expand the document far past the
    # nodes it has, with only 200 aliases.
    keys = ", ".join(f"k{index}: {index}" for index in range(2000))
    text = f"base: &b {{{keys}}}\n" + "".join(f"m{index}: {{<<: *b}}\n" for index in range(200))
    assert refused(tmp_path, text) == "alias_bomb"


# --------------------------------------------------------------------------------------------------
# The loader: libyaml where PyYAML has it, the pure-Python loader otherwise, with the same guards
# --------------------------------------------------------------------------------------------------


def test_the_loader_is_libyamls_where_pyyaml_was_built_with_it() -> None:
    assert issubclass(GuardedLoader, yaml.CSafeLoader) is yaml.__with_libyaml__
    assert issubclass(GuardedLoader, yaml.SafeLoader) is not yaml.__with_libyaml__


@pytest.fixture
def pure_python_yaml(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A second instance of yaml_source, built as it is where PyYAML has no libyaml, in use for .yaml."""
    module_path = Path(reading.__file__).with_name("yaml_source.py")
    spec = importlib.util.spec_from_file_location("pure_python_yaml_source", module_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert not issubclass(module.GuardedLoader, yaml.CSafeLoader)
    monkeypatch.setitem(reading._PARSERS, "yaml", module.parse_yaml)
    return module


YAML_LOADS = [(content, expected) for name, content, expected in LOADS if name.endswith((".yaml", ".yml"))]
YAML_REFUSALS_EVERYWHERE = [
    (content, code)
    for name, content, code in REFUSALS
    if name.endswith((".yaml", ".yml")) and code not in ("invalid_utf8", "empty")
] + YAML_REFUSALS


@pytest.mark.parametrize(
    ("text", "expected"),
    YAML_LOADS + LOADED,
    ids=[f"doc{index}" for index in range(len(YAML_LOADS + LOADED))],
)
def test_the_pure_python_loader_loads_the_same_documents(
    pure_python_yaml: ModuleType, tmp_path: Path, text: str, expected: dict[str, Any]
) -> None:
    assert loaded(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    YAML_REFUSALS_EVERYWHERE,
    ids=[f"{row[1]}-{index}" for index, row in enumerate(YAML_REFUSALS_EVERYWHERE)],
)
def test_the_pure_python_loader_refuses_hostile_documents_alike(
    pure_python_yaml: ModuleType, tmp_path: Path, text: str, code: str
) -> None:
    assert refused(tmp_path, text) == code


def test_billion_laughs_is_refused_by_the_pure_python_loader_too(
    pure_python_yaml: ModuleType, tmp_path: Path
) -> None:
    assert refused(tmp_path, BILLION_LAUGHS) == "alias_bomb"
