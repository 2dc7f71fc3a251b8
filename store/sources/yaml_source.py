"""YAML: PyYAML's safe loader, with the node graph inspected before anything is constructed.

One loader, :class:`GuardedLoader`: ``yaml.CSafeLoader`` where PyYAML was built with libyaml, the pure
``yaml.SafeLoader`` otherwise. Composing is the loader's own (in C with libyaml): an alias becomes a second
reference to its anchor's node, never a copy, so composing costs what the text costs however the aliases
multiply. The graph is then inspected once (aliases, expansion through them, self-reference, depth, tags,
keys) before SafeConstructor builds any value, with constructors that refuse what JSON cannot hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from confledger.store.sources.limits import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_YAML_ALIASES,
    YAML_EXPANSION_FACTOR,
    YAML_EXPANSION_FLOOR,
    Refusal,
    is_int_limit_error,
    safe_name,
)

__all__ = ["GuardedLoader", "parse_yaml"]

_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _YAML + name for name in ("str", "int", "float", "bool", "null", "timestamp", "merge", "value")
)
_CONTAINER_TAGS = frozenset({_YAML + "seq", _YAML + "map"})
# Standard YAML types that SafeLoader builds but JSON cannot hold.
_NON_JSON_TAGS = frozenset(_YAML + name for name in ("binary", "set", "omap", "pairs"))
_KEY_TAGS = frozenset({_YAML + "str", _YAML + "value"})
_SAFE_TAG = re.compile(r"[A-Za-z0-9_.:/!\-]{1,80}")

if TYPE_CHECKING:
    # CSafeLoader is SafeLoader with libyaml's reader, scanner, parser and composer; the stubs do not say
    # so, so type checkers are shown the pure loader, whose constructor methods are the ones used.
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


def _line(node: Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


class GuardedLoader(_SafeLoader):
    """The safe loader whose constructors refuse what JSON cannot hold; ``_load`` inspects the composed
    graph before any Python object is built."""


def _inspect_graph(root: Node) -> None:
    """Check the composed node graph once per distinct node, before anything is constructed.

    Aliases make the graph a DAG (or, with a self-referring anchor, a cycle). Memoised post-order gives
    each node's expanded size and height without ever expanding it, so billion-laughs costs a few
    hundred steps. Keys are checked here, on the raw graph, because SafeConstructor's merge handling
    (``<<``) rewrites mapping nodes in place and would make merged keys look like duplicates.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    in_progress: set[int] = set()
    edges = 0
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        node_id = id(node)
        if children_done:
            children = _children(node)
            size[node_id] = 1 + sum(size[id(child)] for child in children)
            height[node_id] = 1 + max((height[id(child)] for child in children), default=0)
            in_progress.discard(node_id)
            continue
        if node_id in size:
            continue
        if node_id in in_progress:
            # Everything above a node's marker on the stack is its own subtree, so meeting it again
            # before it is finished means an alias inside an anchor refers to that anchor.
            raise Refusal("alias_bomb", f"YAML alias at {_line(node)} refers to a node that contains it")
        _check_node(node)
        if isinstance(node, ScalarNode):
            size[node_id] = 1
            height[node_id] = 0
            continue
        in_progress.add(node_id)
        stack.append((node, True))
        children = _children(node)
        edges += len(children)
        stack.extend((child, False) for child in children)

    distinct = len(size)
    # Every node but the root is reached once by the edge that made it; each further edge is an alias.
    aliases = edges - (distinct - 1)
    if aliases > MAX_YAML_ALIASES:
        raise Refusal("alias_bomb", f"YAML document uses more than {MAX_YAML_ALIASES} aliases")
    expanded = size[id(root)]
    limit = max(YAML_EXPANSION_FACTOR * distinct, YAML_EXPANSION_FLOOR)
    if expanded > limit:
        raise Refusal(
            "alias_bomb",
            f"YAML aliases would expand {distinct} nodes to {expanded} (at most {limit} allowed)",
        )
    if height[id(root)] > MAX_DEPTH:
        raise Refusal(
            "too_deep", f"YAML nests deeper than {MAX_DEPTH} levels at {_line(_too_deep(root, height))}"
        )


def _too_deep(root: Node, height: dict[int, int]) -> Node:
    """The first container past MAX_DEPTH on the deepest path (aliases expanded): where to look."""
    node, depth = root, 1
    while depth <= MAX_DEPTH:
        node = max(_children(node), key=lambda child: height[id(child)])
        depth += 1
    return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_node(node: Node) -> None:
    tag = node.tag
    if tag in _NON_JSON_TAGS:
        kind = tag.removeprefix(_YAML)
        raise Refusal("invalid_value", f"YAML !!{kind} at {_line(node)} has no JSON form")
    allowed = _SCALAR_TAGS if isinstance(node, ScalarNode) else _CONTAINER_TAGS
    if tag not in allowed:
        if tag in _SCALAR_TAGS or tag in _CONTAINER_TAGS:
            raise Refusal("invalid_value", f"YAML tag at {_line(node)} does not fit its value")
        short = "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag
        shown = repr(short) if _SAFE_TAG.fullmatch(short) else "(not shown)"
        raise Refusal(
            "yaml_tag_refused", f"YAML tag {shown} at {_line(node)} refused: only plain YAML types are loaded"
        )
    if not isinstance(node, MappingNode):
        return
    seen: set[str] = set()
    for key_node, _value in node.value:
        if key_node.tag == _YAML + "merge":
            continue
        if not isinstance(key_node, ScalarNode) or key_node.tag not in _KEY_TAGS:
            raise Refusal(
                "non_string_key",
                f"YAML key at {_line(key_node)} is not a string (quote it if it should be one)",
            )
        # For str-tagged scalars the constructed key is exactly the node's text.
        key = str(key_node.value)
        if key in seen:
            raise Refusal("duplicate_key", f"duplicate key {safe_name(key)} at {_line(key_node)}")
        seen.add(key)


def _guarded(
    construct: Callable[[GuardedLoader, ScalarNode], object], kind: str
) -> Callable[[GuardedLoader, ScalarNode], object]:
    # SafeConstructor's scalar constructors raise bare ValueError/KeyError/AttributeError on values an
    # explicit tag forces onto them (``!!int abc``, ``!!timestamp x``, ``2024-13-45``).
    def constructor(loader: GuardedLoader, node: ScalarNode) -> object:
        try:
            return construct(loader, node)
        except ValueError as exc:
            if is_int_limit_error(exc):
                raise Refusal(
                    "integer_too_long", f"YAML integer at {_line(node)} has more than {MAX_INT_DIGITS} digits"
                ) from None
            raise Refusal("invalid_value", f"YAML value at {_line(node)} is not a valid {kind}") from None
        except (KeyError, AttributeError, TypeError, IndexError):
            raise Refusal("invalid_value", f"YAML value at {_line(node)} is not a valid {kind}") from None

    return constructor


def _int(loader: GuardedLoader, node: ScalarNode) -> object:
    digits = str(node.value).lstrip("+-").replace("_", "")
    # Only decimal text is limited by int(); binary/octal/hex are caught by check_tree's magnitude check.
    if digits.isdigit() and not digits.startswith("0") and len(digits) > MAX_INT_DIGITS:
        raise Refusal(
            "integer_too_long", f"YAML integer at {_line(node)} has more than {MAX_INT_DIGITS} digits"
        )
    return loader.construct_yaml_int(node)


def _float(loader: GuardedLoader, node: ScalarNode) -> object:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise Refusal("non_finite_number", f"YAML number at {_line(node)} is NaN or infinite")
    return value


def _timestamp(loader: GuardedLoader, node: ScalarNode) -> object:
    return loader.construct_yaml_timestamp(node).isoformat()


def _bool(loader: GuardedLoader, node: ScalarNode) -> object:
    return loader.construct_yaml_bool(node)


def _plain_text(loader: GuardedLoader, node: ScalarNode) -> object:
    # ``<<`` and ``=`` resolve to the merge/value tags wherever they stand; as keys SafeConstructor
    # rewrites them, as values they are just text (plain SafeLoader would fail to construct them).
    return loader.construct_scalar(node)


def _refuse_tag(loader: GuardedLoader, node: Node) -> NoReturn:
    # Unreachable after _inspect_graph; a second line of defence so no unknown tag is ever built.
    raise Refusal("yaml_tag_refused", f"YAML tag at {_line(node)} refused: only plain YAML types are loaded")


GuardedLoader.add_constructor(_YAML + "int", _guarded(_int, "integer"))
GuardedLoader.add_constructor(_YAML + "float", _guarded(_float, "number"))
GuardedLoader.add_constructor(_YAML + "timestamp", _guarded(_timestamp, "date or datetime"))
GuardedLoader.add_constructor(_YAML + "bool", _guarded(_bool, "boolean"))
GuardedLoader.add_constructor(_YAML + "merge", _plain_text)
GuardedLoader.add_constructor(_YAML + "value", _plain_text)
for _tag in _NON_JSON_TAGS:
    GuardedLoader.add_constructor(_tag, _refuse_tag)
GuardedLoader.add_constructor(None, _refuse_tag)


# libyaml's scanner stops at 1000 open collections, before any node of them is composed: past our limit,
# so that document is too deep as well (and its composer never recurses further than that).
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"


def _where(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f" at line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(exc, "position", None)  # ReaderError: a character offset, no line
    if isinstance(position, int):
        return f" at character offset {position}"
    return ""


def parse_yaml(text: str) -> object:
    """The document's value (None for a stream with no document); refusals say only where, never what."""
    try:
        return _load(text)
    except ConstructorError as exc:
        # e.g. a merge key whose value is not a mapping, or a tag on the wrong kind of node.
        raise Refusal("invalid_value", f"YAML value{_where(exc)} cannot be constructed") from None
    except RecursionError:
        # The pure-Python composer recurses per container; libyaml stops at 1000 (below).
        raise Refusal("too_deep", f"YAML nests deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem == _LIBYAML_TOO_DEEP:
            raise Refusal("too_deep", f"YAML nests deeper than {MAX_DEPTH} levels{_where(exc)}") from None
        raise Refusal("syntax_error", f"YAML syntax error{_where(exc)}") from None


def _load(text: str) -> object:
    # The pure-Python reader checks every character as the loader is made: inside parse_yaml's handlers.
    loader = GuardedLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _inspect_graph(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()
