"""store.sources: the YAML line reader gives exactly what the composing loaders give, or steps aside.

``_yaml_from_lines`` reads plain block-style documents a line at a time, ahead of the event builder. As
for the event builder (test_sources_yaml_events), the property that matters is: whatever it returns is
what the composing loaders return, it never returns a value for a document they refuse, and ``_parse``
(which then skips ``_check_tree``) gives what the loaders followed by ``_check_tree`` give.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confledger.store import sources
from confledger.store.sources import MAX_DEPTH, MAX_INT_DIGITS

from .test_sources_yaml_events import EXAMPLE, YAML_CASES, composed, composer_alone, parsed, shape

pytestmark = pytest.mark.skipif(sources._CParser is None, reason="PyYAML built without libyaml")

_YAML = "tag:yaml.org,2002:"


def lined(text: str) -> tuple[Any, ...]:
    """The line reader on its own: a shape, or why it gave none."""
    try:
        return ("body", shape(sources._yaml_from_lines(text)))
    except sources._NotFast:
        return ("stepped aside",)
    except (yaml.YAMLError, sources._Refusal):
        return ("refused",)


def agrees(text: str) -> None:
    mine = lined(text)
    theirs = composer_alone(text)
    if mine[0] == "body":
        assert mine == theirs
    if theirs[0] == "refused":
        assert mine[0] != "body"
    assert parsed(text) == composed(text)


def nested_block(depth: int, leaf: str = "x: 1") -> str:
    """``depth`` mappings, one inside the other, the innermost holding ``leaf``."""
    lines = [" " * level + f"k{level}:" for level in range(depth - 1)]
    return "\n".join([*lines, " " * (depth - 1) + leaf]) + "\n"


# --------------------------------------------------------------------------------------------------
# Fixed documents
# --------------------------------------------------------------------------------------------------

ORDINARY_BLOCK = [
    EXAMPLE.read_text(encoding="utf-8"),
    "a: 1\n",
    "a: 1",  # no newline at the end
    "a:\n",  # null
    "a:\nb: 2\n",
    "a:   # nothing here\n  # a comment deeper than anything\nb: 2\n",
    "# top\n\n   \na: 1  # trailing\n#end\n",
    "a:\n  b:\n    c: 1\n  d: 2\ne: 3\n",
    "a:\n    b: 1\n    c:\n     d: 2\n",  # any indentation step
    # sequences: indented, at the key's own column, of mappings, of sequences, empty entries
    "a:\n  - 1\n  - x\nb: 2\n",
    "a:\n- 1\n- 2\nb:\n- 3\n",
    "a:\n- x: 1\n  y: 2\n- z: 3\nb: 4\n",
    "a:\n  -   x: 1\n      y:\n      - p\n      - q\n  - z\n",
    "a:\n  -\n    - 1\n    - 2\n  -\n  - 3\n",
    "a:\n  - # empty\n  -\nb: 1\n",
    "a:\n  - x:\n    y: 1\n",
    "l:\n- a:\n  - b\n  c: 1\n- d\n",
    # scalars as YAML 1.1 resolves them
    "i: 0\nj: -5\nk: +3\nl: 0777\nm: 0x1F\nn1: 0b101\no1: 1_000\np: 1:30\nq: 12345678901234567890\n",
    "f: 1.5\ng: -0.0\nh: 1.0e+3\ni: .5\nj: 1:30.5\n",
    "b1: yes\nb2: No\nb3: TRUE\nb4: off\nb5: n\nb6: y\nn1: ~\nn2: null\nn3: Null\n",
    "t1: 2024-01-01\nt2: 2001-12-14t21:59:43.10-05:00\nt3: 2001-12-14 21:59:43.10\n",
    "v: <<\nw: =\nx: a:b\ny: a#b\nz: http://h:80/p?q=1#f\n",
    "s: x, y [z] {w} 'q' \"d\" !a &b *c |d >e %f @g `h\n",
    "t: -.5\nu: é ü \u00a0x\nv: x  y\nw: emoji \U0001f600\n",
    "q1: 'yes'\nq2: \"1\"\nq3: ''\nq4: \"\"\nq5: 'it''s'\nq6: \"a # b\"\nq7: 'x: y'\n",
    "e1: []\ne2: {}\ne3:\n  - []\n  - {}\n",
    "Key-With.Dots/And_1: x\n_: y\n1a: z\n",
    "k" * 256 + ": 1\n",
    nested_block(MAX_DEPTH),
    nested_block(MAX_DEPTH - 1, "x: []"),
]

STEPS_ASIDE = [
    "",
    "# only a comment\n",
    "\n\n",
    "- a\n- b\n",  # not a mapping
    "x\n",
    " a: 1\n",  # the root indented
    "---\na: 1\n",
    "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "a: 1\n---\nb: 2\n",
    # what the line reader leaves to the event builder
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "a: !custom x\n",
    "a: [1, 2]\n",
    "a: {b: 1}\n",
    "a: |\n  text\n",
    "a: >\n  text\n",
    'a: "x\\ty"\n',
    "'a': 1\n",
    '"a": 1\n',
    "? a\n: 1\n",
    "a: - b\n",
    "a: -\n",
    "a: ?x\n",
    "a: :x\n",
    "- - a\n",
    "a:\n  - - 1\n",
    "a: 'x'#c\n",
    "a b: 1\n",
    "k" * 257 + ": 1\n",
    "é: 1\n",
    # continuation lines, and indentation that does not line up
    "a: b\n  c\n",
    "a:\n  b\n",
    "a:\n  -\n    x\n",
    "a:\n  b: 1\n c: 2\n",
    "a:\n  - 1\n  b: 2\n",
    "a:\n- 1\n b: 2\n",
    "a: 1\n- 2\n",
    # characters: tab, CR, NEL, LS, PS, a BOM past the start, C0 and C1 controls, also in comments
    "a:\t1\n",
    "a:\n\t- 1\n",
    "a: 1\r\nb: 2\r\n",
    "a: 1\rb: 2\n",
    "a: x\x85y\n",
    "a: x\u2028y\n",
    "a: x\u2029y\n",
    "a: 1\n\ufeffb: 2\n",
    "a: x\x07y\n",
    "a: 1 # bell \x07\n",
    "a: x\x9fy\n",
    "a: x\ufffey\n",
    # refused by the loaders, or by _check_tree after them
    "a: 1\na: 2\n",
    "1: x\n",
    "on: x\n",
    "null: x\n",
    "a: .inf\n",
    "a: -.Inf\n",
    "a: .NaN\n",
    "a: 1.0e+400\n",
    "a: 2024-13-45\n",
    "a: " + "1" * 4301 + "\n",
    "a: 0x" + "f" * 3600 + "\n",
    nested_block(MAX_DEPTH + 1),
    nested_block(MAX_DEPTH, "x: []"),
    nested_block(MAX_DEPTH, "x: {}"),
    nested_block(MAX_DEPTH, "x:\n" + " " * MAX_DEPTH + "- 1"),
]

LINE_CASES = ORDINARY_BLOCK + STEPS_ASIDE


def _ids(cases: list[str], name: str) -> list[str]:
    return [f"{name}{index}" for index in range(len(cases))]


@pytest.mark.parametrize("text", LINE_CASES + YAML_CASES, ids=_ids(LINE_CASES + YAML_CASES, "doc"))
def test_the_line_reader_returns_only_what_the_composer_returns(text: str) -> None:
    agrees(text)


@pytest.mark.parametrize("text", ORDINARY_BLOCK, ids=_ids(ORDINARY_BLOCK, "block"))
def test_plain_block_documents_are_read_a_line_at_a_time(text: str) -> None:
    assert lined(text)[0] == "body"


@pytest.mark.parametrize("text", STEPS_ASIDE, ids=_ids(STEPS_ASIDE, "aside"))
def test_the_line_reader_steps_aside_for_what_it_does_not_vouch_for(text: str) -> None:
    assert lined(text)[0] != "body"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("a: 1\na: 2\n", "duplicate_key"),
        ("1: x\n", "non_string_key"),
        ("a: .inf\n", "non_finite_number"),
        ("a: 2024-13-45\n", "invalid_value"),
        ("a: " + "1" * 4301 + "\n", "integer_too_long"),
        ("a: 0x" + "f" * 3600 + "\n", "integer_too_long"),
        (nested_block(MAX_DEPTH + 1), "too_deep"),
        (nested_block(MAX_DEPTH, "x: []"), "too_deep"),
        ("a: x\x07y\n", "syntax_error"),
        ("a: 1\n- 2\n", "syntax_error"),
        ("- a\n", "not_a_mapping"),
        ("# only a comment\n", "not_a_mapping"),
    ],
)
def test_refusals_are_the_loaders_words(text: str, code: str) -> None:
    result = parsed(text)
    assert result[:2] == ("refused", code)
    assert result == composed(text)


# --------------------------------------------------------------------------------------------------
# What the fast paths vouch for: _check_tree runs only after the loaders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "checked"),
    [
        (EXAMPLE.read_text(encoding="utf-8"), False),  # the line reader
        ("a: &x {b: 1}\nc: *x\n", False),  # the event builder
        ("a: !!str 1\n", True),  # the composing loader
        ("a: 0x" + "f" * 3600 + "\n", True),
    ],
)
def test_check_tree_runs_after_the_loaders_only(text: str, checked: bool) -> None:
    with mock.patch.object(sources, "_check_tree", wraps=sources._check_tree) as check:
        parsed(text)
    assert check.called is checked


def test_check_tree_does_not_walk_json_again() -> None:
    with mock.patch.object(sources, "_check_tree", wraps=sources._check_tree) as check:
        sources._parse(json.dumps({"a": [1, 2.5, {"b": None}]}).encode("utf-8"), "json")
    assert not check.called


def _untouched_by_check_tree(text: str, fmt: str) -> None:
    try:
        body = sources._parse(text.encode("utf-8"), fmt)
    except sources._Refusal:
        return
    walked = copy.deepcopy(body)
    sources._check_tree(walked)
    assert shape(walked) == shape(body)


def _json_nested(depth: int) -> str:
    """An object holding ``depth - 1`` nested lists: ``depth`` containers."""
    return '{"a": ' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


@pytest.mark.parametrize(
    "text",
    [
        _json_nested(1),
        _json_nested(MAX_DEPTH),
        _json_nested(MAX_DEPTH + 1),
        '{"a": ' + "9" * MAX_INT_DIGITS + "}",
        '{"a": -' + "9" * MAX_INT_DIGITS + "}",
        '{"a": ' + "9" * (MAX_INT_DIGITS + 1) + "}",
        '{"a": 1e308, "b": -1e308, "c": 1e400, "d": -0.0, "e": 5e-324}',
        '{"a": NaN}',
        '{"a": -Infinity}',
        '{"a": "[[[[{{{{", "b": "\\u0000"}',
    ],
)
def test_json_bodies_at_the_limits_pass_check_tree_untouched(text: str) -> None:
    _untouched_by_check_tree(text, "json")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _json_values, max_size=4))
def test_json_bodies_pass_check_tree_untouched(body: dict[str, Any]) -> None:
    _untouched_by_check_tree(json.dumps(body), "json")


def test_scalar_value_leaves_a_bool_it_cannot_build_to_the_loaders() -> None:
    with pytest.raises(sources._NotFast):
        sources._scalar_value("maybe", _YAML + "bool")


@pytest.mark.parametrize(
    "built",
    [float("inf"), float("nan"), datetime.date(2024, 1, 1), b"bytes", 10**4300],
    ids=["inf", "nan", "date", "bytes", "long_int"],
)
def test_scalar_value_leaves_what_check_tree_would_change_or_refuse_to_the_loaders(built: object) -> None:
    tag = _YAML + "float"
    with (
        mock.patch.dict(sources._GuardedLoader.yaml_constructors, {tag: lambda loader, node: built}),
        pytest.raises(sources._NotFast),
    ):
        sources._scalar_value("1.5", tag)


def test_scalar_value_builds_what_the_constructors_build() -> None:
    assert sources._scalar_value("2024-01-02", _YAML + "timestamp") == "2024-01-02"
    assert sources._scalar_value("0x1F", _YAML + "int") == 31
    assert repr(sources._scalar_value("-0.0", _YAML + "float")) == "-0.0"


# --------------------------------------------------------------------------------------------------
# Resolvers added at run time are followed, or left to the loaders
# --------------------------------------------------------------------------------------------------


def _with_resolver(first: str | None, tag: str, pattern: str) -> Any:
    resolvers = {key: list(value) for key, value in sources._GuardedLoader.yaml_implicit_resolvers.items()}
    resolvers.setdefault(first, []).insert(0, (tag, re.compile(pattern)))
    return mock.patch.object(sources._GuardedLoader, "yaml_implicit_resolvers", resolvers)


@pytest.mark.parametrize(
    "text", ["kk: 1\n", "a: kk\n", "a:\n- kk\n- k\n", "a: kkk\n", EXAMPLE.read_text(encoding="utf-8")]
)
def test_a_resolver_added_for_a_first_character_is_followed(text: str) -> None:
    with _with_resolver("k", _YAML + "null", r"^kk$"):
        agrees(text)
        if text == "a: kk\n":
            assert lined(text) == ("body", ("dict", [("str", "a", ("NoneType", None))]))


def test_a_resolver_for_every_first_character_is_left_to_the_event_builder() -> None:
    with _with_resolver(None, _YAML + "int", r"^kk$"):
        assert lined("a: 1\n") == ("stepped aside",)
        assert parsed("a: kk\n") == composed("a: kk\n")


def test_resolvers_by_path_are_left_to_the_composer() -> None:
    with mock.patch.object(sources._GuardedLoader, "yaml_path_resolvers", {("x",): "y"}):
        assert lined("a: 1\n") == ("stepped aside",)


# --------------------------------------------------------------------------------------------------
# The two line patterns
# --------------------------------------------------------------------------------------------------

LINE_ALPHABET = " -:#'\"ab1._/[]{}&*!|>?%@`\\é\u00a0\t"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=LINE_ALPHABET, max_size=24))
def test_the_key_line_pattern_reads_lines_as_the_line_pattern_does(line: str) -> None:
    quick = sources._KEY_LINE.fullmatch(line)
    if quick is not None:
        full = sources._LINE.fullmatch(line)
        assert full is not None
        indent, key, plain = quick.groups()
        assert full.groups() == (indent, None, key, plain, None, None, None)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=LINE_ALPHABET, max_size=24), st.sampled_from(["a: ", "- ", "a:\n  - ", "a:\n  b: "]))
def test_single_lines_read_as_the_composer_reads_them(line: str, prefix: str) -> None:
    agrees(prefix + line + "\n")


# --------------------------------------------------------------------------------------------------
# Generated block-style documents
# --------------------------------------------------------------------------------------------------

SAFE_SCALARS = [
    *("a", "bb", "x y", "é", "<<", "=", "~", "null", "yes", "On", "n", "TRUE", "a:b", "a#b", "x, y]"),
    *("1", "0", "-5", "+3", "0777", "0o17", "0x1F", "0b101", "1_000", "1:30", "12345678901234567890"),
    *("1.5", "-0.0", "1e3", "1.0e+3", "1.4.0", "2024-01-01", "2001-12-14 21:59:43.10", "-.5"),
    *("'yes'", "'it''s'", "''", '""', '"d # e"', "[]", "{}"),
]
ODD_SCALARS = [
    *(".inf", "-.Inf", ".NaN", "1.0e+400", "2024-13-45", "0x" + "f" * 3600, "1" * 4301),
    *("-", "-x", "- x", "a: b", "#c", "?x", ":x", "@x", "`x", "%x", "&a x", "*a", "!x y", "!!str x"),
    *("|", ">", "[a]", "{a: 1}", '"a\\tb"', "'a' b", "'open", "a\tb", "x\x85y", "x\x07"),
]
SAFE_KEYS = ["a", "b", "c", "xx", "long_key", "with-dash", "dot.ted", "sl/ash", "1a", "_", "y"]
ODD_KEYS = ["on", "1", "null", "~", "a b", "é", "<<", "=", "'q'", '"d"', "-a", "?a", "k" * 300]
TAILS = ["", "", "", "  ", " # c"]
ODD_TAILS = ["\t", "# c", " #\x07"]


def _key(pair: tuple[str, Any]) -> str:
    return pair[0]


@st.composite
def block_nodes(draw: st.DrawFn, odd: bool, depth: int = 0) -> Any:
    kinds = ["scalar", "scalar"] + (["map", "seq"] if depth < 4 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        pool = SAFE_SCALARS + ODD_SCALARS if odd and draw(st.integers(0, 9)) == 0 else SAFE_SCALARS
        return ("scalar", draw(st.sampled_from(pool)))
    if kind == "map":
        keys = st.sampled_from(SAFE_KEYS + ODD_KEYS if odd and draw(st.integers(0, 9)) == 0 else SAFE_KEYS)
        # A key written twice comes from the perturbations below, now and then.
        pairs = st.lists(st.tuples(keys, block_nodes(odd, depth + 1)), max_size=4, unique_by=_key)
        return ("map", draw(pairs))
    return ("seq", draw(st.lists(block_nodes(odd, depth + 1), max_size=4)))


class _Writer:
    """Block style with the choices a person makes: indentation steps, sequences at their key's column
    or further right, a mapping's first key on its dash's line or below it, comments, blank lines."""

    def __init__(self, draw: st.DrawFn, odd: bool) -> None:
        self.draw = draw
        self.odd = odd
        self.lines: list[str] = []

    def emit(self, line: str) -> None:
        odd = self.odd and self.draw(st.integers(0, 19)) == 0
        tail = self.draw(st.sampled_from(ODD_TAILS if odd else TAILS))
        self.lines.append(line + tail)
        roll = self.draw(st.integers(0, 9))
        if roll == 0:
            self.lines.append(" " * self.draw(st.integers(0, 6)) + "# note")
        elif roll == 1:
            self.lines.append(" " * self.draw(st.integers(0, 3)))

    def step(self) -> int:
        return self.draw(st.integers(1, 4))

    def pair(self, column: int, key: str, node: Any, prefix: str | None = None) -> None:
        head = (prefix if prefix is not None else " " * column) + key + ":"
        kind, content = node
        if kind == "scalar":
            self.emit(head + " " + content)
        elif not content:
            self.emit(head + (" {}" if kind == "map" else " []"))
        elif kind == "map":
            self.emit(head)
            self.mapping(column + self.step(), content)
        else:
            self.emit(head)
            compact = self.draw(st.booleans())
            self.sequence(column if compact else column + self.step(), content)

    def mapping(self, column: int, pairs: list[tuple[str, Any]], prefix: str | None = None) -> None:
        for index, (key, node) in enumerate(pairs):
            self.pair(column, key, node, prefix if index == 0 else None)

    def sequence(self, column: int, items: list[Any]) -> None:
        for kind, content in items:
            dash = " " * column + "-" + " " * self.draw(st.integers(1, 3))
            if kind == "scalar":
                self.emit(dash + content)
            elif not content:
                self.emit(dash + ("{}" if kind == "map" else "[]"))
            elif kind == "map" and self.draw(st.booleans()):
                self.mapping(len(dash), content, prefix=dash)  # "- key: ..."
            else:
                self.emit(dash.rstrip())
                inner = column + self.step()
                if kind == "map":
                    self.mapping(inner, content)
                else:
                    self.sequence(inner, content)


PERTURBATIONS = ["indent", "dedent", "tab", "cr", "nel", "marker", "twice", "swap", "glue"]


@st.composite
def block_documents(draw: st.DrawFn, odd: bool) -> str:
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(SAFE_KEYS), block_nodes(odd)), min_size=1, max_size=5, unique_by=_key
        )
    )
    writer = _Writer(draw, odd)
    writer.mapping(0, pairs)
    lines = writer.lines
    if odd and draw(st.integers(0, 2)) == 0:
        index = draw(st.integers(0, len(lines) - 1))
        change = draw(st.sampled_from(PERTURBATIONS))
        line = lines[index]
        if change == "indent":
            lines[index] = " " + line
        elif change == "dedent":
            lines[index] = line.removeprefix(" ")
        elif change == "tab":
            at = draw(st.integers(0, len(line)))
            lines[index] = line[:at] + "\t" + line[at:]
        elif change in ("cr", "nel"):
            lines[index] = line + ("\r" if change == "cr" else "\x85")
        elif change == "marker":
            lines.insert(index, draw(st.sampled_from(["---", "...", "%YAML 1.1"])))
        elif change == "twice":
            lines.insert(index, line)
        elif change == "swap" and index + 1 < len(lines):
            lines[index], lines[index + 1] = lines[index + 1], line
        elif change == "glue" and index + 1 < len(lines):
            lines[index : index + 2] = [line + " " + lines[index + 1].lstrip(" ")]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_documents(odd=True))
def test_generated_block_documents_read_as_the_composer_reads_them(text: str) -> None:
    agrees(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_documents(odd=False))
def test_generated_plain_block_documents_are_read_a_line_at_a_time(text: str) -> None:
    mine = lined(text)
    assert mine[0] == "body"
    assert mine == composer_alone(text)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(
                    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), children, max_size=3
                )
            ),
            max_leaves=12,
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(1, 6),
)
def test_dumped_block_documents_read_as_the_composer_reads_them(body: dict[str, Any], indent: int) -> None:
    text = yaml.safe_dump(body, default_flow_style=False, allow_unicode=True, sort_keys=False, indent=indent)
    agrees(text)
