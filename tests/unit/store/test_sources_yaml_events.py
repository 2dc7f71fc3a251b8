"""store.sources: the YAML event builder gives exactly what the composing loaders give, or steps aside.

``_yaml_from_events`` builds values straight from libyaml's events. Every document it does not vouch for
goes to the composing loaders, which also word every refusal; so the property that matters is: whatever
it returns is what the composing loaders return (types, key order, float signs, shared containers),
and it never returns a value for a document they refuse. The tests compare ``_parse`` with the builder
against ``_parse`` with the fast paths switched off, and check the builder on its own (the line reader
ahead of it has tests of its own, in test_sources_speed_paths).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode

from confledger.store import sources
from confledger.store.sources import MAX_DEPTH, MAX_YAML_ALIASES

from .test_sources import BILLION_LAUGHS, LOADS, REFUSALS

pytestmark = pytest.mark.skipif(sources._CParser is None, reason="PyYAML built without libyaml")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"


def shape(value: Any, seen: dict[int, int] | None = None) -> Any:
    """Everything a body shows: types, key order, float signs, and which containers are one object."""
    if seen is None:
        seen = {}
    if isinstance(value, dict | list):
        if id(value) in seen:
            return ("shared", seen[id(value)])
        seen[id(value)] = len(seen)
        if isinstance(value, dict):
            return ("dict", [(type(key).__name__, key, shape(item, seen)) for key, item in value.items()])
        return ("list", [shape(item, seen) for item in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def parsed(text: str) -> tuple[Any, ...]:
    """What ``_parse`` makes of the text: the body's shape, or the refusal's code and message."""
    try:
        return ("body", shape(sources._parse(text.encode("utf-8"), "yaml")))
    except sources._Refusal as refusal:
        return ("refused", refusal.code, refusal.message)


def composed(text: str) -> tuple[Any, ...]:
    """``parsed`` as it was before the fast paths (line reader, event builder): the composing loaders
    alone, and ``_check_tree`` after them."""
    with (
        mock.patch.object(sources, "_yaml_from_lines", side_effect=sources._NotFast),
        mock.patch.object(sources, "_yaml_from_events", side_effect=sources._NotFast),
    ):
        return parsed(text)


def built(text: str) -> tuple[Any, ...]:
    """The event builder on its own: a shape, or why it gave none."""
    try:
        return ("body", shape(sources._yaml_from_events(text)))
    except sources._NotFast:
        return ("stepped aside",)
    except (yaml.YAMLError, sources._Refusal):
        return ("refused",)


def composer_alone(text: str) -> tuple[Any, ...]:
    try:
        return ("body", shape(sources._load_yaml(sources._GuardedCLoader(text))))
    except (yaml.YAMLError, sources._Refusal, RecursionError):
        return ("refused",)


# --------------------------------------------------------------------------------------------------
# Fixed documents: every YAML case test_sources has, and the merge and alias corners
# --------------------------------------------------------------------------------------------------

MERGES = [
    # PyYAML 6.0.4 skips a merged pair whose key is the same *object* as an earlier one: CPython caches
    # one-character strings, so "x" keeps the first mapping's value while "xx" takes the later one's.
    "a: &A {x: 1}\nb: &B {x: 2}\nc: {<<: [*A, *B]}\n",
    "a: &A {xx: 1}\nb: &B {xx: 2}\nc: {<<: [*A, *B]}\n",
    "a: &A {xx: 1, yy: 0}\nb: &B {<<: *A, xx: 2}\nc: {<<: [*B, *A]}\nd: {<<: [*A, *B]}\n",
    "a: &A {xx: 1, y: 0}\nb: &B {<<: *A, y: 2}\nc: {<<: [*B, *A], y: 3}\nd: {<<: *B}\n",
    # explicit keys win, merged keys come first in order
    "a: &A {xx: 1, yy: 2}\nc: {z: 0, xx: 9, <<: *A}\n",
    "base: &base\n  image: app\n  replicas: 2\nsvc:\n  name: web\n  <<: *base\n  replicas: 3\n",
    # two merge keys in one mapping; merge of an inline mapping, an inline list, an aliased list
    "a: &A {xx: 1}\nb: &B {xx: 2, yy: 3}\nc:\n  <<: *A\n  <<: *B\n",
    "c: {<<: {xx: 1, yy: 2}, yy: 3}\n",
    "a: &A {xx: 1}\nc: {<<: [*A, {xx: 2, zz: 3}]}\n",
    "a: &A {xx: 1}\nb: &B {xx: 2}\ns: &S [*A, *B]\nc: {<<: *S}\n",
    "a: &A {xx: 1}\nc: {<<: [], <<: {}, k: 1}\n",
    # a merged mapping merged again, several levels down
    "l0: &l0 {k0: 0, kk: a}\nl1: &l1 {<<: *l0, k1: 1, kk: b}\nl2: &l2 {<<: [*l1, *l0], k2: 2}\nl3: {<<: *l2, kk: c}\n",
    # not mergeable (MERGES[MERGEABLE:]): refused by the composing loader
    "a: &A 1\nc: {<<: *A}\n",
    "a: &A {xx: 1}\nc: {<<: [*A, 1]}\n",
    "c: {<<: }\n",
    "a: &A [1]\nc: {<<: [*A]}\n",
]
MERGEABLE = 12

ORDINARY = [
    # scalars as YAML 1.1 resolves them
    "i: [0, 7, -5, +3, 0777, 0o17, 0x1F, 0b101, 1_000, '1', 1:30, 190:20:30, 12345678901234567890]\n",
    "f: [1.5, -0.0, 0.0, 1.0e+3, 6.8523015e+5, .5, 1_0.5, 1:30.5]\n",
    "b: [yes, No, TRUE, off, On, n, y]\nn: [~, null, Null, '', ]\ne: \n",
    "t: [2024-01-01, 2001-12-14t21:59:43.10-05:00, 2001-12-14 21:59:43.10, 2002-12-14]\n",
    "s:\n  - 'yes'\n  - \"1\"\n  - '~'\n  - é\n  - 'x: y'\n  - |\n    block\n    text\n  - >\n    folded\n    text\n",
    "odd: [<<, =]\n'=': 1\n",
    "=: 1\n",
    # anchors on keys and scalars; aliases in lists; a shared container
    "&k a: 1\nb: *k\nc: &v hello\nd: [*v, *v]\n",
    "a: &shared {x: [1, 2]}\nb: *shared\nc: [*shared, *shared]\n",
    # documents and directives
    "",
    "# only a comment\n",
    "~\n",
    "---\na: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "- a\n- b\n",
    # the limits, at their edge
    "x: &x 1\nl: [" + ", ".join(["*x"] * MAX_YAML_ALIASES) + "]\n",
    "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n",
    "x: &x " + "[" * 31 + "]" * 31 + "\ny: " + "[" * 31 + "*x" + "]" * 31 + "\n",
    "base: &base {image: app, replicas: 2}\n"
    + "".join(f"svc{i}:\n  <<: *base\n  name: svc{i}\n" for i in range(50)),
]

CORNERS = [
    *ORDINARY,
    # A pair a merge skips is never constructed by SafeConstructor, so its .inf is never refused there;
    # the builder constructs every scalar, refuses, and the composer gives the answer.
    "c: {<<: [{x: 1}, {x: .inf}]}\n",
    "'=': 1\n=: 2\n",  # one key written twice
    "a: &k x\n*k : 2\n",  # an alias as a key (here a duplicate)
    "%TAG !e! tag:yaml.org,2002:\n---\na: !e!str 1\n",
    "a: 1\n---\nb: 2\n",
    "? a\n: 1\n",
    "? [a]\n: 1\n",
    # tags: plain ones the builder leaves to the composer, and refused ones
    "a: !!str 1\nb: !!int '2'\nc: !!float 3\nd: !!map {x: 1}\ne: !!seq [1]\nf: ! 5\n",
    "a: !!binary aGVsbG8=\n",
    "a: !custom x\n",
    "a: !!python/tuple [1]\n",
    # aliases: undefined, twice-defined anchors, self-reference, the alias cap at its edge
    "a: *nope\n",
    "a: &x 1\nb: &x 2\n",
    "a: &x [1, &x 2]\n",
    "a: &x [1, &x [2]]\n",  # the second anchor opens while the first is still open
    "a: &x {b: &x {c: 1}}\n",
    "a: &a [*a]\n",
    "a: &a {b: [1, {c: *a}]}\n",
    "x: &x 1\nl: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n",
    BILLION_LAUGHS,
    # depth past the limit, directly and through an alias
    "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n",
    "x: &x " + "[" * 32 + "]" * 32 + "\ny: " + "[" * 31 + "*x" + "]" * 31 + "\n",
    # integers past the digit limit: decimal (refused while constructing), hex (by _check_tree)
    "a: " + "1" * 4301 + "\n",
    "a: 0x" + "f" * 3600 + "\n",
]

YAML_CASES = (
    [content for name, content, _ in LOADS if name.endswith((".yaml", ".yml"))]
    + [
        content
        for name, content, _ in REFUSALS
        if name.endswith((".yaml", ".yml")) and isinstance(content, str)
    ]
    + MERGES
    + CORNERS
    + [EXAMPLE.read_text(encoding="utf-8")]
)


@pytest.mark.parametrize("text", YAML_CASES, ids=[f"doc{index}" for index in range(len(YAML_CASES))])
def test_parse_gives_what_the_composing_loaders_give(text: str) -> None:
    assert parsed(text) == composed(text)


@pytest.mark.parametrize("text", YAML_CASES, ids=[f"doc{index}" for index in range(len(YAML_CASES))])
def test_the_builder_returns_only_what_the_composer_returns(text: str) -> None:
    mine = built(text)
    if mine[0] == "body":
        assert mine == composer_alone(text)
    if composer_alone(text)[0] == "refused":
        assert mine[0] != "body"


@pytest.mark.parametrize(
    "text",
    [
        EXAMPLE.read_text(encoding="utf-8"),
        *MERGES[:MERGEABLE],
        *ORDINARY,
    ],
)
def test_ordinary_documents_do_not_step_aside(text: str) -> None:
    # The point of the builder: configs as people write them never need the composer.
    assert built(text)[0] == "body"


@pytest.mark.parametrize(
    "text",
    [
        "- " * 100_000 + "x\n",  # stops at MAX_DEPTH + 1 open containers
        "a: " + "[" * 500 + "]" * 500 + "\n",
        BILLION_LAUGHS,
        "a: &a [*a]\n",
        "x: &x 1\nl: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n",
        "a: 1\na: 2\n",
        "1: x\n",
        "on: x\n",
        "a: !!str x\n",
        "a: &x 1\nb: &x 2\n",
        "a: 1\n---\nb: 2\n",
    ],
)
def test_the_builder_steps_aside_for_what_it_does_not_vouch_for(text: str) -> None:
    assert built(text) == ("stepped aside",)


def test_deep_nesting_is_left_after_max_depth_events() -> None:
    # The depth guard acts as a container opens: the builder reads MAX_DEPTH + a few events, not 200000.
    # (Compact block sequences: libyaml streams them, where it refuses 1000 open brackets by itself.)
    text = "- " * 100_000 + "x\n"
    parser = sources._CParser(text)
    events = itertools.count()
    original = parser.get_event

    def counted() -> Any:
        next(events)
        return original()

    with mock.patch.object(sources, "_CParser", return_value=mock.Mock(get_event=counted)):
        assert built(text) == ("stepped aside",)
    parser.dispose()
    assert next(events) < MAX_DEPTH + 10


def test_merges_that_copy_too_much_step_aside_early_and_are_refused_by_the_composer() -> None:
    # Each merge copies its source's pairs; far more copying than the document has nodes is an alias
    # bomb of its own, refused by the expansion check once composed. The builder stops copying early:
    # about 25 merges of 2000 pairs reach the bound, not all 200.
    keys = ", ".join(f"k{index}: {index}" for index in range(2000))
    text = f"base: &b {{{keys}}}\n" + "".join(f"m{index}: {{<<: *b}}\n" for index in range(200))
    with mock.patch.object(sources, "_merge_into", wraps=sources._merge_into) as merges:
        assert built(text) == ("stepped aside",)
    assert merges.call_count < 30
    assert parsed(text)[:2] == ("refused", "alias_bomb")


def test_the_documents_called_unmergeable_are_refused() -> None:
    assert all(composed(text)[0] == "body" for text in MERGES[:MERGEABLE])
    assert all(composed(text)[:2] == ("refused", "invalid_value") for text in MERGES[MERGEABLE:])


def test_the_installed_pyyaml_merges_as_the_builder_does() -> None:
    # Otherwise every document with << would go to the composer: correct, but the slow way.
    assert sources._MERGES_FOLLOW_THE_COMPOSER


def test_a_composer_that_merges_differently_is_noticed() -> None:
    original = SafeConstructor.flatten_mapping

    def merged_the_other_way(self: SafeConstructor, node: MappingNode) -> None:
        original(self, node)
        node.value.reverse()

    with mock.patch.object(SafeConstructor, "flatten_mapping", merged_the_other_way):
        assert not sources._merges_follow_the_composer()


@pytest.mark.parametrize("text", MERGES, ids=[f"merge{index}" for index in range(len(MERGES))])
def test_when_merges_differ_documents_with_merges_go_to_the_composer(text: str) -> None:
    with mock.patch.object(sources, "_MERGES_FOLLOW_THE_COMPOSER", False):
        assert built(text)[0] != "body"
        assert parsed(text) == composed(text)


# --------------------------------------------------------------------------------------------------
# Generated documents: flow style, anchors and aliases, merges, tags, YAML 1.1 scalars, bad keys
# --------------------------------------------------------------------------------------------------

TOKENS = [
    *("a", "bb", "x y", "é", "<<", "=", ""),
    *("1", "0", "-5", "+3", "0777", "0o17", "0x1F", "0b101", "1_000", "1:30", "12345678901234567890"),
    *("1.5", "-0.0", "1e3", "1.0e+3", ".inf", "-.Inf", ".NaN", "1.0e+400"),
    *("yes", "On", "off", "TRUE", "n", "null", "~"),
    *("2024-01-01", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10", "2024-13-45"),
]
# Mostly string keys, from a pool small enough that merged keys overlap (and sometimes collide).
KEY_TOKENS = ["a", "b", "c", "d", "x", "xx", "yy", "zz", "long_key", "key two", "=", ""]
ODD_KEYS = ["1", "on", "null", "*a0", "[k]", "{k: 1}", "!!str k", "&a5 k", "<<"]
STYLES = ["plain", "plain", "single", "double"]


def _written(token: str, style: str) -> str:
    if style == "plain":
        return token if token else '""'
    if style == "single":
        return "'" + token.replace("'", "''") + "'"
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def flow_keys(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 24)) == 0:
        return draw(st.sampled_from(ODD_KEYS))
    return _written(draw(st.sampled_from(KEY_TOKENS)), draw(st.sampled_from(STYLES)))


# ``known`` is how many of a0, a1, a2 (mappings) and a3 (anything) are defined where the node stands.
ALL_KNOWN = 4


@st.composite
def aliases(draw: st.DrawFn, known: int) -> str:
    if draw(st.integers(0, 59)) == 0:
        return "*a4"  # defined in the body only by chance: mostly undefined (refused), sometimes shared
    return f"*a{draw(st.integers(0, known - 1))}"


@st.composite
def merge_values(draw: st.DrawFn, depth: int, known: int) -> str:
    roll = draw(st.integers(0, 5)) if known else 5
    if roll < 3:
        return draw(aliases(known))
    if roll < 5:
        return "[" + ", ".join(draw(st.lists(aliases(known), max_size=3))) + "]"
    return draw(flow_nodes(depth + 1, known, kind="map"))


@st.composite
def flow_pairs(draw: st.DrawFn, depth: int, known: int) -> str:
    if draw(st.integers(0, 4)) == 0:
        return f"<<: {draw(merge_values(depth, known))}"
    return f"{draw(flow_keys())}: {draw(flow_nodes(depth + 1, known))}"


@st.composite
def flow_nodes(
    draw: st.DrawFn, depth: int = 0, known: int = ALL_KNOWN, kind: str | None = None, anchor: str = ""
) -> str:
    if kind is None:
        kinds = (
            ["scalar", "scalar"] + (["alias"] if known else []) + (["seq", "map", "map"] if depth < 4 else [])
        )
        kind = draw(st.sampled_from(kinds))
    if kind == "alias":
        return draw(aliases(known))
    if not anchor and draw(st.integers(0, 7)) == 0:
        # Mostly names of their own; now and then a0, defined twice (refused).
        anchor = "&" + draw(st.sampled_from(["a4", "a5", "a6", "a7", "a8", "a9", "a0"])) + " "
    if kind == "scalar":
        written = _written(draw(st.sampled_from(TOKENS)), draw(st.sampled_from(STYLES)))
        if draw(st.integers(0, 15)) == 0:
            written = draw(st.sampled_from(["!!str ", "!!int ", "!!binary ", "!custom ", "! "])) + written
        return anchor + written
    if kind == "seq":
        return anchor + "[" + ", ".join(draw(st.lists(flow_nodes(depth + 1, known), max_size=4))) + "]"
    return anchor + "{" + ", ".join(draw(st.lists(flow_pairs(depth, known), max_size=4))) + "}"


@st.composite
def yaml_documents(draw: st.DrawFn) -> str:
    # Anchors defined up front (each may use the ones before it), so most aliases below resolve.
    lines = []
    if draw(st.integers(0, 9)) > 0:
        defined = [draw(flow_nodes(2, index, kind="map", anchor=f"&a{index} ")) for index in range(3)]
        last = draw(st.sampled_from(["map", "seq", "scalar"]))
        defined.append(draw(flow_nodes(2, 3, kind=last, anchor="&a3 ")))
        lines.append("defs: [" + ", ".join(defined) + "]")
        known = ALL_KNOWN
    else:
        known = 0
    lines.extend(draw(st.lists(flow_pairs(0, known), max_size=5)))
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_documents())
def test_generated_documents_parse_as_the_composing_loaders_parse_them(text: str) -> None:
    mine = built(text)
    if mine[0] == "body":
        assert mine == composer_alone(text)
    assert parsed(text) == composed(text)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.dates(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _values, max_size=5), st.booleans())
def test_dumped_documents_parse_as_the_composing_loaders_parse_them(body: dict[str, Any], flow: bool) -> None:
    text = yaml.safe_dump(body, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    assert parsed(text) == composed(text)
