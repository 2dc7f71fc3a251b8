"""Reading a config source: one read of the file's bytes and a strict parse.

``load_source`` is the only place confledger turns a file into a config body. It reads the bytes once
(capped, so a huge file is never read whole), hashes exactly those bytes and parses exactly those bytes,
so the ``input_sha256`` in ``config.loaded`` / ``config.load_failed`` always describes what was parsed,
even while an editor or a deploy tool rewrites the file underneath.

Every refusal is a :class:`~store.errors.SourceError` whose ``code`` is one of :data:`REASON_CODES`
and whose message is one line written here. Config files hold secrets, so no message ever carries
document text or a parser's own message (PyYAML's, for one, quotes a snippet of the document): only
line/column numbers, byte offsets, limits, and key names that look like plain identifiers.

Reason codes
    ``unsupported_format``  the file name has no known suffix (.json, .yaml/.yml, .toml, .env)
    ``not_found``           no such file
    ``not_a_file``          a directory, FIFO, device, ...
    ``permission_denied``   the process may not read it
    ``read_error``          any other OS error while opening or reading
    ``too_large``           more than ``max_bytes``
    ``empty``               0 bytes or only whitespace (after a grace period if ``expect_content``)
    ``invalid_utf8``        not UTF-8; the message names the byte offset
    ``syntax_error``        the parser refused it; line/column when known
    ``duplicate_key``       a key (or .env variable) defined twice in one mapping
    ``non_finite_number``   NaN or an infinity (JSON has no such numbers; canonical hashing refuses them)
    ``too_deep``            more than :data:`MAX_DEPTH` nested containers
    ``integer_too_long``    an integer with more than :data:`MAX_INT_DIGITS` decimal digits
    ``yaml_tag_refused``    a YAML tag that would construct an object (``!!python/...``, ``!custom``)
    ``alias_bomb``          YAML aliases that expand too far, are too many, or refer to themselves
    ``not_a_mapping``       the top level is not an object/mapping
    ``non_string_key``      a mapping key that is not a string (YAML ``1: x``, ``null: x``, ``on: x``)
    ``invalid_value``       a value with no JSON form (YAML ``!!binary``, ``!!set``, an impossible date)

Value choices the caller should know
    * Dates, datetimes and times (YAML timestamps, TOML date/time values) become ISO 8601 strings
      (``datetime.isoformat()``): a config body is JSON, and a string is friendlier than a refusal.
    * PyYAML resolves YAML 1.1 scalars: ``yes``/``no``/``on``/``off`` are booleans. As keys they are
      therefore refused with ``non_string_key`` rather than silently becoming ``True``.
      Likewise YAML 1.1 reads ``1:30`` as the integer 90 and ``0777`` as octal; quote such values.
    * A leading UTF-8 byte order mark is ignored (Windows editors write one).
    * ``empty`` is about bytes (nothing but whitespace). A YAML file holding only comments, or ``~``,
      parses to null and is ``not_a_mapping``; an ``.env`` file of only comments is ``{}``.
    * ``.env`` files give a flat ``dict[str, str]``, keys exactly as written (no lowercasing, no
      ``A__B`` nesting): simple and predictable, and validation models can map them. See
      :func:`_parse_env` for the accepted syntax.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from hashlib import sha256
from typing import Any, NoReturn

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from confledger.store.errors import SourceError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_YAML_ALIASES",
    "REASON_CODES",
    "SUPPORTED_FORMATS",
    "YAML_EXPANSION_FACTOR",
    "YAML_EXPANSION_FLOOR",
    "LoadedSource",
    "detect_format",
    "load_source",
]

DEFAULT_MAX_BYTES = 1_048_576
# Containers, counting the top-level mapping as 1. Deep enough for any real config, shallow enough that
# no recursive consumer downstream (json, pydantic, canonicalisation) gets near the recursion limit.
MAX_DEPTH = 64
# CPython's default int/str conversion limit: canonical JSON could not serialise a longer integer.
MAX_INT_DIGITS = 4300
# The expansion check below is what stops billion-laughs; this cap only bounds the work of a document
# that is all aliases. Real configs that use ``<<: *defaults`` stay far below it.
MAX_YAML_ALIASES = 1000
# A YAML document may expand (through aliases) to at most FACTOR times its distinct node count, or FLOOR
# nodes, whichever is larger: the floor keeps small documents with a few shared blocks legal.
YAML_EXPANSION_FACTOR = 10
YAML_EXPANSION_FLOOR = 10_000

SUPPORTED_FORMATS = ("json", "yaml", "toml", "env")

REASON_CODES = frozenset(
    {
        "unsupported_format",
        "not_found",
        "not_a_file",
        "permission_denied",
        "read_error",
        "too_large",
        "empty",
        "invalid_utf8",
        "syntax_error",
        "duplicate_key",
        "non_finite_number",
        "too_deep",
        "integer_too_long",
        "yaml_tag_refused",
        "alias_bomb",
        "not_a_mapping",
        "non_string_key",
        "invalid_value",
    }
)

_INT_LIMIT = 10**MAX_INT_DIGITS
_BOM = b"\xef\xbb\xbf"
_READ_CHUNK = 1 << 20
# Names (keys, tags, suffixes) are echoed in messages only when they look like identifiers, so a value
# pasted where a key belongs can never leak through a "duplicate key" message.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SAFE_TAG = re.compile(r"[A-Za-z0-9_.:/!\-]{1,80}")


@dataclass(frozen=True, slots=True)
class LoadedSource:
    """One successful read: the parsed body and the facts ``config.loaded`` records."""

    path: str
    format: str
    body: dict[str, Any]
    raw_sha256: str
    size_bytes: int
    load_ms: float


class _Refusal(Exception):
    """Raised inside parsers and hooks; not a ValueError, so no parser's ``except ValueError`` eats it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _name(value: object) -> str:
    if isinstance(value, str) and _SAFE_NAME.fullmatch(value):
        return repr(value)
    return "(name not shown)"


def _where(path: str) -> str:
    # Paths to deep values get long; the tail is the part an operator needs to find it.
    return path if len(path) <= 80 else "..." + path[-77:]


def _short_repr(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


# --------------------------------------------------------------------------------------------------
# Format detection and reading
# --------------------------------------------------------------------------------------------------


_SUFFIX_FORMATS = {"json": "json", "yaml": "yaml", "yml": "yaml", "toml": "toml"}


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """The format a file name implies, or None. ``.env``, ``app.env`` and ``prod.env`` are all env."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".env"):
        return "env"
    stem, _, suffix = name.rpartition(".")
    if not stem.strip("."):
        return None  # no suffix, as os.path.splitext says of "yaml" or ".yaml"
    return _SUFFIX_FORMATS.get(suffix)


def _os_refusal(exc: OSError, shown: str) -> _Refusal:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return _Refusal("not_found", f"config source {shown} does not exist")
    if isinstance(exc, IsADirectoryError):
        return _Refusal("not_a_file", f"config source {shown} is a directory, not a file")
    if isinstance(exc, PermissionError):
        return _Refusal("permission_denied", f"config source {shown} is not readable by this process")
    reason = exc.strerror or type(exc).__name__
    return _Refusal("read_error", f"config source {shown} could not be read: {reason}")


def _read_capped(path: str, max_bytes: int, shown: str) -> bytes:
    # O_NONBLOCK: if the path is (or was swapped for) a FIFO, opening it must not hang the worker thread
    # waiting for a writer; the fstat below then refuses it.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_refusal(exc, shown) from exc
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise _os_refusal(exc, shown) from exc
        if not stat.S_ISREG(info.st_mode):
            raise _Refusal("not_a_file", f"config source {shown} is not a regular file")
        if info.st_size > max_bytes:
            # Known from the inode: refuse without reading a byte.
            raise _TooLarge(info.st_size)
        chunks: list[bytes] = []
        remaining = max_bytes + 1  # one byte more than allowed is enough to know it grew past the cap
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, _READ_CHUNK))
            except OSError as exc:
                raise _os_refusal(exc, shown) from exc
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise _TooLarge(max(len(data), info.st_size))
        return data
    finally:
        os.close(fd)


class _TooLarge(Exception):
    """Internal signal carrying the size seen; converted to SourceError by load_source."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _is_blank(data: bytes) -> bool:
    return not data.removeprefix(_BOM).strip()


def load_source(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_content: bool = False,
    empty_retry_s: float = 0.5,
    empty_retry_interval_s: float = 0.05,
) -> LoadedSource:
    """Read, hash and parse one config file; raise :class:`SourceError` with a reason code on refusal.

    Synchronous and blocking (it may sleep while waiting for an empty file to fill): async callers run
    it in a worker thread. ``expect_content=True`` says the file had content before, so an empty file is
    most likely being rewritten in place: it is re-read every ``empty_retry_interval_s`` for up to
    ``empty_retry_s`` before failing with ``empty``. ``load_ms`` includes that wait.
    """
    started = time.perf_counter()
    path_str = os.fspath(path)
    shown = _short_repr(path_str, 200)
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    fmt = detect_format(path_str)
    if fmt is None:
        suffix = os.path.splitext(os.path.basename(path_str))[1]
        shown_suffix = repr(suffix) if _SAFE_NAME.fullmatch(suffix) else "(none)"
        raise SourceError(
            f"unsupported config format {shown_suffix}: expected .json, .yaml, .yml, .toml or .env",
            code="unsupported_format",
        )

    deadline = time.monotonic() + max(empty_retry_s, 0.0)
    while True:
        try:
            data = _read_capped(path_str, max_bytes, shown)
        except _Refusal as refusal:
            raise SourceError(refusal.message, code=refusal.code) from refusal
        except _TooLarge as too_large:
            raise SourceError(
                f"config source is larger than the {max_bytes}-byte cap ({too_large.size} bytes or more)",
                code="too_large",
                size_bytes=too_large.size,
            ) from None
        if not _is_blank(data):
            break
        remaining = deadline - time.monotonic()
        if not expect_content or remaining <= 0:
            waited = f" after waiting {empty_retry_s:g} s for content" if expect_content else ""
            raise SourceError(
                f"config source is empty{waited}",
                code="empty",
                input_sha256=sha256(data).hexdigest(),
                size_bytes=len(data),
            )
        time.sleep(min(max(empty_retry_interval_s, 0.001), remaining))

    digest = sha256(data).hexdigest()
    try:
        body = _parse(data, fmt)
    except _Refusal as refusal:
        raise SourceError(
            refusal.message, code=refusal.code, input_sha256=digest, size_bytes=len(data)
        ) from refusal
    return LoadedSource(
        path=path_str,
        format=fmt,
        body=body,
        raw_sha256=digest,
        size_bytes=len(data),
        load_ms=(time.perf_counter() - started) * 1000,
    )


def _parse(data: bytes, fmt: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"config source is not valid UTF-8 (byte offset {exc.start})"
        raise _Refusal("invalid_utf8", message) from None
    text = text.removeprefix("\ufeff")
    checked = False
    try:
        if fmt == "yaml":
            body, checked = _parse_yaml(text)
        elif fmt == "json":
            # Its hooks refuse all _check_tree would (NaN, infinities, long integers; keys are strings)
            # and its pre-scan bounds the depth: a second walk would find nothing.
            body, checked = _parse_json(text), True
        elif fmt == "toml":
            body = _parse_toml(text)
        else:
            body = _parse_env(text)
    except RecursionError:
        # The pre-scans should make this unreachable; kept so a parser's recursion can never escape as
        # an internal error.
        raise _Refusal("too_deep", f"{fmt.upper()} document nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        kind = "empty (null)" if body is None else f"a {_json_kind(body)}"
        raise _Refusal("not_a_mapping", f"the top level of the config is {kind}; expected a mapping")
    if not checked:
        _check_tree(body)
    return body


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _is_int_limit_error(exc: ValueError) -> bool:
    # CPython's wording for sys.int_info.str_digits_check_threshold; the limit itself may be set lower
    # than ours (-X int_max_str_digits), so the parser can hit it before our own check does.
    return "Exceeds the limit" in str(exc) and "digits" in str(exc)


# (container, depth, parent frame or None, slot in the parent): paths are only spelled out on refusal, so
# the walk allocates nothing per value on the happy path.
_Frame = tuple[Any, int, Any, Any]


def _segment(slot: object) -> str:
    if isinstance(slot, int):
        return f"[{slot}]"
    return f".{slot}" if isinstance(slot, str) and _SAFE_NAME.fullmatch(slot) else ".?"


def _frame_path(frame: _Frame, slot: object = None) -> str:
    segments = [] if slot is None else [_segment(slot)]
    current: _Frame | None = frame
    while current is not None and current[2] is not None:
        segments.append(_segment(current[3]))
        current = current[2]
    return _where("$" + "".join(reversed(segments)))


def _check_tree(body: dict[str, Any]) -> None:
    """One iterative pass over the parsed body: the rules every format shares.

    Iterative on purpose: the body may be as deep as MAX_DEPTH + 1 before we know it is too deep, and for
    TOML (nested tables via dotted keys) this is the only depth check.
    """
    stack: list[_Frame] = [(body, 1, None, None)]
    while stack:
        frame = stack.pop()
        container, depth = frame[0], frame[1]
        if depth > MAX_DEPTH:
            raise _Refusal(
                "too_deep", f"config nests deeper than {MAX_DEPTH} levels (at {_frame_path(frame)})"
            )
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(container, dict):
            for key in container:
                if not isinstance(key, str):
                    where = _frame_path(frame)
                    kind = _json_kind(key)
                    raise _Refusal(
                        "non_string_key", f"mapping key at {where} is a {kind}; keys must be strings"
                    )
            pairs = container.items()
        else:
            pairs = enumerate(container)
        replacements: list[tuple[Any, object]] = []
        for slot, value in pairs:
            if value is None or isinstance(value, str | bool):
                continue
            if isinstance(value, dict | list):
                # An empty container can only break the depth rule.
                if value or depth >= MAX_DEPTH:
                    stack.append((value, depth + 1, frame, slot))
                continue
            replacement = _check_scalar(value, frame, slot)
            if replacement is not value:
                replacements.append((slot, replacement))
        for slot, replacement in replacements:
            container[slot] = replacement


def _check_scalar(value: object, frame: _Frame, slot: object) -> object:
    if isinstance(value, int):
        if abs(value) >= _INT_LIMIT:
            where = _frame_path(frame, slot)
            raise _Refusal("integer_too_long", f"integer at {where} has more than {MAX_INT_DIGITS} digits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            where = _frame_path(frame, slot)
            raise _Refusal("non_finite_number", f"number at {where} is NaN or infinite; JSON has neither")
        return value
    if isinstance(value, datetime | date | dt_time):
        # See the module docstring: ISO strings rather than a refusal.
        return value.isoformat()
    where = _frame_path(frame, slot)
    raise _Refusal("invalid_value", f"value at {where} is a {type(value).__name__}, which has no JSON form")


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------

# Strings are skipped whole so brackets inside them do not count. ``\\.?`` and ``\Z`` let an
# unterminated string or a trailing backslash still match, which keeps the scan linear.
_JSON_DEPTH_TOKEN = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)

# json's problems are fixed strings, except a few that quote the document (the pure-Python scanner's
# "Invalid \\escape: 'x'"); only these known ones are repeated, in our words.
_JSON_PROBLEMS = {
    "Expecting value": "expected a value",
    "Expecting property name enclosed in double quotes": "expected a key in double quotes",
    "Expecting ':' delimiter": "expected ':'",
    "Expecting ',' delimiter": "expected ','",
    "Unterminated string starting at": "unterminated string",
    "Invalid control character at": "control character inside a string",
    "Invalid \\escape": "invalid escape sequence",
    "Invalid \\uXXXX escape": "invalid \\u escape",
    "Extra data": "extra data after the document",
    "Illegal trailing comma before end of object": "trailing comma",
    "Illegal trailing comma before end of array": "trailing comma",
}


def _bracket_depth_exceeds(text: str, token: re.Pattern[str], base: int) -> bool:
    depth = base
    for match in token.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth = max(depth - 1, base)
    return False


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refusal("duplicate_key", f"duplicate key {_name(key)} in a JSON object")
        result[key] = value
    return result


def _json_constant(name: str) -> NoReturn:
    raise _Refusal("non_finite_number", f"JSON contains {name}, which is not a JSON number")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf without ever reaching parse_constant
        raise _Refusal("non_finite_number", "JSON contains a number too large to be finite")
    return value


def _json_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _Refusal("integer_too_long", f"JSON contains an integer with more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_json(text: str) -> object:
    # json's C scanner recurses once per container: check depth first, so a 100000-deep document is a
    # clean refusal instead of a RecursionError (or worse, on a thread with a small stack).
    if _bracket_depth_exceeds(text, _JSON_DEPTH_TOKEN, base=0):
        raise _Refusal("too_deep", f"JSON document nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(
            text,
            object_pairs_hook=_json_object,
            parse_constant=_json_constant,
            parse_float=_json_float,
            parse_int=_json_int,
        )
    except json.JSONDecodeError as exc:
        detail = _JSON_PROBLEMS.get(exc.msg)
        suffix = f": {detail}" if detail else ""
        raise _Refusal(
            "syntax_error", f"JSON syntax error at line {exc.lineno}, column {exc.colno}{suffix}"
        ) from None
    except ValueError as exc:
        if _is_int_limit_error(exc):
            raise _Refusal(
                "integer_too_long", "JSON contains an integer longer than this interpreter converts"
            ) from None
        raise _Refusal("syntax_error", "JSON could not be parsed") from None


# --------------------------------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------------------------------

# Comments and all four string kinds are skipped so only real array/inline-table brackets count. Table
# headers ([a], [[a]]) count briefly too, which only makes the guard a little stricter.
_TOML_DEPTH_TOKEN = re.compile(
    r"""
      \#[^\n]*+
    | \"\"\"(?:[^"\\]++|\\.?|"(?!""))*+(?:\"\"\"|\Z)
    | '''(?:[^']++|'(?!''))*+(?:'''|\Z)
    | "(?:[^"\\\n]++|\\.?)*+(?:"|\Z|(?=\n))
    | '[^'\n]*+(?:'|\Z|(?=\n))
    | [\[\]{}]
    """,
    re.VERBOSE | re.DOTALL,
)
_TOML_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$| \(at end of document\)$")
_TOML_DUPLICATE_MARKERS = ("twice", "Cannot overwrite", "Cannot mutate", "Cannot redefine", "Duplicate")
_TOML_PROBLEMS = {
    "Invalid statement": "invalid statement",
    "Expected '=' after a key in a key/value pair": "expected '=' after a key",
    "Unclosed array": "unclosed array",
    "Unclosed inline table": "unclosed inline table",
    "Invalid value": "invalid value",
    "Unterminated string": "unterminated string",
    "Invalid initial character for a key part": "invalid character in a key",
    "Expected ']' at the end of a table declaration": "expected ']' after a table name",
    "Expected ']]' at the end of an array declaration": "expected ']]' after an array-of-tables name",
    "Invalid date or datetime": "invalid date or datetime",
    "Invalid hex value": "invalid hex escape",
    "Unescaped '\\' in a string": "unescaped backslash in a string",
}


def _toml_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refusal("non_finite_number", "TOML contains nan or inf, which JSON cannot represent")
    return value


def _parse_toml(text: str) -> object:
    # tomllib (3.11) recurses per nested array/inline table and has no depth limit of its own.
    if _bracket_depth_exceeds(text, _TOML_DEPTH_TOKEN, base=1):
        raise _Refusal("too_deep", f"TOML document nests deeper than {MAX_DEPTH} levels")
    try:
        return tomllib.loads(text, parse_float=_toml_float)
    except tomllib.TOMLDecodeError as exc:
        raw = str(exc)
        position = _TOML_POSITION.search(raw)
        problem = raw[: position.start()] if position else raw
        where = ""
        if position and position.group(1):
            where = f" at line {position.group(1)}, column {position.group(2)}"
        elif position:
            where = " at the end of the document"
        if any(marker in problem for marker in _TOML_DUPLICATE_MARKERS):
            raise _Refusal("duplicate_key", f"TOML defines a key or table twice{where}") from None
        detail = _TOML_PROBLEMS.get(problem)
        suffix = f": {detail}" if detail else ""
        raise _Refusal("syntax_error", f"TOML syntax error{where}{suffix}") from None
    except ValueError as exc:
        # tomllib lets int()'s own limit error through unwrapped.
        if _is_int_limit_error(exc):
            raise _Refusal(
                "integer_too_long", f"TOML contains an integer with more than {MAX_INT_DIGITS} digits"
            ) from None
        raise _Refusal("syntax_error", "TOML could not be parsed") from None


# --------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------

_YAML = "tag:yaml.org,2002:"
_YAML_SCALAR_TAGS = frozenset(
    _YAML + name for name in ("str", "int", "float", "bool", "null", "timestamp", "merge", "value")
)
_YAML_CONTAINER_TAGS = frozenset({_YAML + "seq", _YAML + "map"})
# Standard YAML types that SafeLoader builds but JSON cannot hold.
_YAML_NON_JSON_TAGS = frozenset(_YAML + name for name in ("binary", "set", "omap", "pairs"))
_YAML_KEY_TAGS = frozenset({_YAML + "str", _YAML + "value"})


def _line(node: Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader with limits applied while composing, before any Python object is built."""

    def __init__(self, stream: str) -> None:
        self._depth = 0
        self._aliases = 0
        super().__init__(stream)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _Refusal("alias_bomb", f"YAML document uses more than {MAX_YAML_ALIASES} aliases")
            return super().compose_node(parent, index)
        # The composer recurses per container; counting here refuses a deep document before the
        # recursion gets anywhere near Python's limit.
        container = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if container:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                # The next event is the container's start; libyaml's parser keeps no current_event.
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                where = f"line {mark.line + 1}, column {mark.column + 1}"
                raise _Refusal("too_deep", f"YAML nests deeper than {MAX_DEPTH} levels at {where}")
        try:
            return super().compose_node(parent, index)
        finally:
            if container:
                self._depth -= 1


def _inspect_yaml_graph(root: Node) -> None:
    """Check the composed node graph once per distinct node, before anything is constructed.

    Aliases make the graph a DAG (or, with a self-referring anchor, a cycle). Memoised post-order gives
    each node's expanded size and height without ever expanding it, so billion-laughs costs a few
    hundred steps. Keys are checked here, on the raw graph, because SafeConstructor's merge handling
    (``<<``) rewrites mapping nodes in place and would make merged keys look like duplicates.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        node_id = id(node)
        if children_done:
            children = _yaml_children(node)
            size[node_id] = 1 + sum(size[id(child)] for child in children)
            height[node_id] = 1 + max((height[id(child)] for child in children), default=0)
            in_progress.discard(node_id)
            continue
        if node_id in size:
            continue
        if node_id in in_progress:
            # Everything above a node's marker on the stack is its own subtree, so meeting it again
            # before it is finished means an alias inside an anchor refers to that anchor.
            raise _Refusal("alias_bomb", f"YAML alias at {_line(node)} refers to a node that contains it")
        _check_yaml_node(node)
        if isinstance(node, ScalarNode):
            size[node_id] = 1
            height[node_id] = 0
            continue
        in_progress.add(node_id)
        stack.append((node, True))
        stack.extend((child, False) for child in _yaml_children(node))

    distinct = len(size)
    expanded = size[id(root)]
    limit = max(YAML_EXPANSION_FACTOR * distinct, YAML_EXPANSION_FLOOR)
    if expanded > limit:
        raise _Refusal(
            "alias_bomb",
            f"YAML aliases would expand {distinct} nodes to {expanded} (at most {limit} allowed)",
        )
    if height[id(root)] > MAX_DEPTH:
        raise _Refusal("too_deep", f"YAML nests deeper than {MAX_DEPTH} levels once aliases are expanded")


def _yaml_children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_yaml_node(node: Node) -> None:
    tag = node.tag
    if tag in _YAML_NON_JSON_TAGS:
        kind = tag.removeprefix(_YAML)
        raise _Refusal("invalid_value", f"YAML !!{kind} at {_line(node)} has no JSON form")
    allowed = _YAML_SCALAR_TAGS if isinstance(node, ScalarNode) else _YAML_CONTAINER_TAGS
    if tag not in allowed:
        if tag in _YAML_SCALAR_TAGS or tag in _YAML_CONTAINER_TAGS:
            raise _Refusal("invalid_value", f"YAML tag at {_line(node)} does not fit its value")
        short = "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag
        shown = repr(short) if _SAFE_TAG.fullmatch(short) else "(not shown)"
        raise _Refusal(
            "yaml_tag_refused",
            f"YAML tag {shown} at {_line(node)} refused: only plain YAML types are loaded",
        )
    if not isinstance(node, MappingNode):
        return
    seen: set[str] = set()
    for key_node, _value in node.value:
        if key_node.tag == _YAML + "merge":
            continue
        if not isinstance(key_node, ScalarNode) or key_node.tag not in _YAML_KEY_TAGS:
            raise _Refusal(
                "non_string_key",
                f"YAML key at {_line(key_node)} is not a string (quote it if it should be one)",
            )
        # For str-tagged scalars the constructed key is exactly the node's text.
        key = str(key_node.value)
        if key in seen:
            raise _Refusal("duplicate_key", f"duplicate key {_name(key)} at {_line(key_node)}")
        seen.add(key)


def _guarded(
    construct: Callable[[yaml.SafeLoader, ScalarNode], object], kind: str
) -> Callable[[_GuardedLoader, ScalarNode], object]:
    # SafeConstructor's scalar constructors raise bare ValueError/KeyError/AttributeError on values an
    # explicit tag forces onto them (``!!int abc``, ``!!timestamp x``, ``2024-13-45``).
    def constructor(loader: _GuardedLoader, node: ScalarNode) -> object:
        try:
            return construct(loader, node)
        except ValueError as exc:
            if _is_int_limit_error(exc):
                raise _Refusal(
                    "integer_too_long", f"YAML integer at {_line(node)} has more than {MAX_INT_DIGITS} digits"
                ) from None
            raise _Refusal("invalid_value", f"YAML value at {_line(node)} is not a valid {kind}") from None
        except (KeyError, AttributeError, TypeError, IndexError):
            raise _Refusal("invalid_value", f"YAML value at {_line(node)} is not a valid {kind}") from None

    return constructor


def _yaml_int(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    digits = str(node.value).lstrip("+-").replace("_", "")
    # Only decimal text is limited by int(); binary/octal/hex are caught by the magnitude check later.
    if digits.isdigit() and not digits.startswith("0") and len(digits) > MAX_INT_DIGITS:
        raise _Refusal(
            "integer_too_long", f"YAML integer at {_line(node)} has more than {MAX_INT_DIGITS} digits"
        )
    return loader.construct_yaml_int(node)


def _yaml_float(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise _Refusal("non_finite_number", f"YAML number at {_line(node)} is NaN or infinite")
    return value


def _yaml_timestamp(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    return loader.construct_yaml_timestamp(node).isoformat()


def _yaml_bool(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    return loader.construct_yaml_bool(node)


def _yaml_plain_text(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    # ``<<`` and ``=`` resolve to the merge/value tags wherever they stand; as keys SafeConstructor
    # rewrites them, as values they are just text (plain SafeLoader would fail to construct them).
    return loader.construct_scalar(node)


def _yaml_refuse_tag(loader: _GuardedLoader, node: Node) -> NoReturn:
    # Unreachable after _inspect_yaml_graph; a second line of defence so no unknown tag is ever built.
    raise _Refusal("yaml_tag_refused", f"YAML tag at {_line(node)} refused: only plain YAML types are loaded")


_GuardedLoader.add_constructor(_YAML + "int", _guarded(_yaml_int, "integer"))
_GuardedLoader.add_constructor(_YAML + "float", _guarded(_yaml_float, "number"))
_GuardedLoader.add_constructor(_YAML + "timestamp", _guarded(_yaml_timestamp, "date or datetime"))
_GuardedLoader.add_constructor(_YAML + "bool", _guarded(_yaml_bool, "boolean"))
_GuardedLoader.add_constructor(_YAML + "merge", _yaml_plain_text)
_GuardedLoader.add_constructor(_YAML + "value", _yaml_plain_text)
for _tag in _YAML_NON_JSON_TAGS:
    _GuardedLoader.add_constructor(_tag, _yaml_refuse_tag)
_GuardedLoader.add_constructor(None, _yaml_refuse_tag)


_CParser: Any
try:  # libyaml's scanner and parser, with the guarded Python composer on top (4x faster, same limits)
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None

if _CParser is not None:

    class _GuardedCLoader(_CParser, _GuardedLoader):  # type: ignore[misc]
        """Events from libyaml; composing (with the depth and alias guards), checks and construction
        exactly as ``_GuardedLoader`` does them."""

        def __init__(self, stream: str) -> None:
            self._depth = 0
            self._aliases = 0
            _CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

        # CParser composes in C, past compose_node's guards: compose in Python over its events instead.
        check_node = yaml.composer.Composer.check_node
        get_node = yaml.composer.Composer.get_node
        get_single_node = yaml.composer.Composer.get_single_node
        compose_document = yaml.composer.Composer.compose_document
        compose_node = _GuardedLoader.compose_node
        compose_scalar_node = yaml.composer.Composer.compose_scalar_node
        compose_sequence_node = yaml.composer.Composer.compose_sequence_node
        compose_mapping_node = yaml.composer.Composer.compose_mapping_node


# --------------------------------------------------------------------------------------------------
# YAML fast path: values straight from libyaml's events
# --------------------------------------------------------------------------------------------------
#
# Composing a node graph in Python, inspecting it and running SafeConstructor over it cost several
# method calls per event; for an ordinary config most of a reload went there. _yaml_from_events builds
# the values in one loop over the C parser's events, with an explicit stack. It takes only what it can
# vouch for: every rule of _GuardedLoader and _inspect_yaml_graph is applied (depth before the stack
# grows, the alias cap, expansion and height through aliases, self-reference, tags, key types,
# duplicate keys), but as a reason to step aside (_NotFast), never as a refusal. Whatever it steps aside
# for, or any error, goes to the composing loaders, unchanged, which then give the answer and word it.


class _NotFast(Exception):
    """The event builder leaves this document to the composing loaders."""


_STR_TAG = _YAML + "str"
_NULL_TAG = _YAML + "null"
_BOOL_TAG = _YAML + "bool"
_INT_TAG = _YAML + "int"
_MERGE_TAG = _YAML + "merge"
# As values, all three are their own text (see _yaml_plain_text).
_TEXT_TAGS = frozenset({_STR_TAG, _MERGE_TAG, _YAML + "value"})
# Built by the same guarded constructors the loaders use (a ScalarNode is made for them).
_CONSTRUCTED_TAGS = frozenset({_INT_TAG, _YAML + "float", _YAML + "timestamp"})
# The scalar constructors read no loader state: one instance serves every thread.
_SCALAR_CONSTRUCTOR: Any = SafeConstructor()
_BOOL_VALUES: dict[str, bool] = SafeConstructor.bool_values
_NO_MARK = yaml.error.Mark("<fast path>", 0, 0, 0, "", 0)
# Set from _merges_follow_the_composer() once the loaders are defined (below _load_yaml).
_MERGES_FOLLOW_THE_COMPOSER = True
# Slots of an open container: a mapping waiting for a key, a sequence, a mapping waiting for the value
# of ``<<`` (a str in that slot is the key waiting for its value).
_NEXT_KEY: Any = object()
_NEXT_ITEM: Any = object()
_NEXT_MERGE: Any = object()


class _Open:
    """A mapping or sequence whose end event has not come yet."""

    __slots__ = ("anchor", "height", "merged", "merged_ids", "size", "slot", "value")

    def __init__(self, value: Any, slot: Any, anchor: str | None) -> None:
        self.value = value
        self.slot = slot
        self.anchor = anchor
        self.size = 1  # nodes once aliases are expanded, as _inspect_yaml_graph counts them
        self.height = 0  # of the tallest child
        self.merged: list[tuple[Any, Any]] | None = None
        self.merged_ids: set[int] = set()


def _yaml_from_events(text: str) -> object:
    if _GuardedLoader.yaml_path_resolvers:
        raise _NotFast  # tags chosen by position: only the composer applies those
    parser = _CParser(text)
    try:
        next_event: Callable[[], Any] = parser.get_event
        if type(next_event()) is not StreamStartEvent:
            raise _NotFast
        event = next_event()
        if type(event) is StreamEndEvent:
            return None  # no document at all, as get_single_node says
        if type(event) is not DocumentStartEvent:
            raise _NotFast
        root = _yaml_document(next_event)
        if type(next_event()) is not DocumentEndEvent or type(next_event()) is not StreamEndEvent:
            raise _NotFast  # a second document: the composer words the refusal
        return root
    finally:
        parser.dispose()


def _yaml_document(next_event: Callable[[], Any]) -> object:
    resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = _GuardedLoader.yaml_implicit_resolvers
    wildcard = resolvers.get(None, [])
    anchors: dict[str, tuple[Any, int, int]] = {}
    open_anchors: set[str] = set()
    # Mappings built with ``<<``: the pairs a later merge of them must replay (see _merge_into).
    merged_pairs: dict[int, tuple[dict[str, Any], list[tuple[Any, Any]], dict[str, Any]]] = {}
    stack: list[_Open] = []
    distinct = 0  # nodes in the graph, as _inspect_yaml_graph counts them
    aliases = 0
    copied = 0  # pairs replayed by merges: work that grows with aliases, so it is bounded too
    value: Any
    while True:
        event = next_event()
        kind = type(event)
        wants_key = bool(stack) and stack[-1].slot is _NEXT_KEY
        if kind is ScalarEvent:
            if event.tag is not None:
                raise _NotFast
            distinct += 1
            scalar: str = event.value
            tag = _STR_TAG
            if event.implicit[0]:  # plain: resolved exactly as BaseResolver.resolve does it
                candidates = resolvers.get(scalar[0] if scalar else "", [])
                for candidate, pattern in candidates + wildcard if wildcard else candidates:
                    if pattern.match(scalar):
                        tag = candidate
                        break
            if wants_key:
                top = stack[-1]
                if tag == _MERGE_TAG:
                    top.slot = _NEXT_MERGE
                elif tag in _YAML_KEY_TAGS:
                    if scalar in top.value:
                        raise _NotFast  # duplicate key
                    top.slot = scalar
                else:
                    raise _NotFast  # a key that is not a string
                top.size += 1
                if event.anchor is not None:
                    _anchor(anchors, open_anchors, event.anchor, (scalar, 1, 0))
                continue
            value = _scalar_value(scalar, tag)
            size, height = 1, 0
            if event.anchor is not None:
                _anchor(anchors, open_anchors, event.anchor, (value, 1, 0))
        elif kind is AliasEvent:
            aliases += 1
            if aliases > MAX_YAML_ALIASES or wants_key:
                raise _NotFast
            target = anchors.get(event.anchor)
            if target is None:
                raise _NotFast  # undefined, or an alias inside its own anchor
            value, size, height = target
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            # Checked before the stack grows, so a deep document costs MAX_DEPTH steps.
            if event.tag is not None or wants_key or len(stack) >= MAX_DEPTH:
                raise _NotFast
            if event.anchor is not None:
                if event.anchor in anchors or event.anchor in open_anchors:
                    raise _NotFast
                open_anchors.add(event.anchor)
            distinct += 1
            if kind is MappingStartEvent:
                stack.append(_Open({}, _NEXT_KEY, event.anchor))
            else:
                stack.append(_Open([], _NEXT_ITEM, event.anchor))
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            done = stack.pop()
            value, size, height = done.value, done.size, done.height + 1
            if done.merged is not None:
                # SafeConstructor.flatten_mapping: merged pairs first, then the mapping's own.
                combined: dict[str, Any] = {}
                for key, item in done.merged:
                    combined[key] = item
                combined.update(value)
                merged_pairs[id(combined)] = (combined, done.merged, value)
                value = combined
            if done.anchor is not None:
                open_anchors.discard(done.anchor)
                anchors[done.anchor] = (value, size, height)
        else:
            raise _NotFast

        if not stack:
            limit = max(YAML_EXPANSION_FACTOR * distinct, YAML_EXPANSION_FLOOR)
            if size > limit or height > MAX_DEPTH:
                raise _NotFast
            return value
        parent = stack[-1]
        parent.size += size
        if height > parent.height:
            parent.height = height
        slot = parent.slot
        if slot is _NEXT_ITEM:
            parent.value.append(value)
            continue
        parent.slot = _NEXT_KEY
        if slot is _NEXT_MERGE:
            copied += _merge_into(parent, value, merged_pairs)
            if copied > max(YAML_EXPANSION_FACTOR * distinct, YAML_EXPANSION_FLOOR):
                raise _NotFast
        else:
            parent.value[slot] = value


def _scalar_value(scalar: str, tag: str) -> Any:
    """A plain scalar's value, given its resolved tag, as the guarded loaders construct it."""
    if tag == _INT_TAG and scalar.isdigit() and len(scalar) < 19 and scalar[0] != "0":
        return int(scalar)  # plain decimal: what construct_yaml_int returns for it
    if tag in _TEXT_TAGS:
        return scalar
    if tag == _NULL_TAG:
        return None
    if tag == _BOOL_TAG:
        flag = _BOOL_VALUES.get(scalar.lower())
        if flag is None:
            raise _NotFast  # a bool resolver added elsewhere: SafeConstructor words its KeyError
        return flag
    if tag in _CONSTRUCTED_TAGS:
        # Marks only word a refusal, and the fast paths leave every refusal to the loaders.
        node = ScalarNode(tag, scalar, _NO_MARK, _NO_MARK)
        value = _GuardedLoader.yaml_constructors[tag](_SCALAR_CONSTRUCTOR, node)
        # What _check_tree would refuse (a long hex, octal or sexagesimal integer) or change is left to
        # the loaders, after which _check_tree words it.
        if type(value) is int:
            if abs(value) >= _INT_LIMIT:
                raise _NotFast
        elif not (type(value) is str or (type(value) is float and math.isfinite(value))):
            raise _NotFast
        return value
    raise _NotFast


def _anchor(
    anchors: dict[str, tuple[Any, int, int]], open_anchors: set[str], name: str, entry: tuple[Any, int, int]
) -> None:
    if name in anchors or name in open_anchors:
        raise _NotFast  # the composer refuses a second anchor of one name
    anchors[name] = entry


def _merge_into(
    mapping: _Open,
    value: Any,
    merged_pairs: dict[int, tuple[dict[str, Any], list[tuple[Any, Any]], dict[str, Any]]],
) -> int:
    """Queue the pairs ``<<: value`` brings in, as SafeConstructor.flatten_mapping (PyYAML 6.0.4) does.

    A mapping brings its own flattened pairs; a sequence of mappings brings theirs, in order. A pair is
    skipped when a pair with the same key *object* was queued already: PyYAML compares ``id()`` of the
    key strings, so identical objects (an alias's, or CPython's cached one-character strings) keep
    their first value while equal copies let the later one win. The event builder keeps every key as
    the parser's own string object, so the ids relate exactly as the composed nodes' would.
    """
    if not _MERGES_FOLLOW_THE_COMPOSER:
        raise _NotFast
    if type(value) is dict:
        sources = [value]
    elif type(value) is list and all(type(item) is dict for item in value):
        sources = value
    else:
        raise _NotFast  # a ConstructorError for the composing loader
    if mapping.merged is None:
        mapping.merged = []
    queued, seen = mapping.merged, mapping.merged_ids
    count = 0
    for source in sources:
        built = merged_pairs.get(id(source))
        pairs = [*built[1], *built[2].items()] if built is not None else list(source.items())
        count += len(pairs)
        for pair in pairs:
            if id(pair[0]) not in seen:
                seen.add(id(pair[0]))
                queued.append(pair)
    return count


# --------------------------------------------------------------------------------------------------
# YAML fastest path: plain block-style documents, line by line
# --------------------------------------------------------------------------------------------------
#
# The event builder still pays for libyaml making a Python event object (and two marks) per token:
# about half its time. Most configs are written in the plainest block style: one ``key: value`` or
# ``- item`` per line, nesting by indentation, plain or one-line quoted scalars. _yaml_from_lines reads
# those with one regular expression per line and resolves and builds each scalar as the event builder
# does. It takes only lines it fully understands (no anchors, aliases, tags, flow collections other than
# ``[]`` and ``{}``, block or multi-line scalars, explicit or quoted keys, directives, document markers,
# tabs, nor any character YAML refuses or reads as a line break) and steps aside, as the event builder
# does, for everything else, which includes every document a loader would refuse.

# Never in an accepted line: what YAML's reader refuses, what it reads as a line break (CR, NEL, LS, PS),
# tab (never indentation) and a BOM (skipped at the start of a line). X in the patterns below.
_NOT_IN_LINE = r"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff"
# A plain scalar: no indicator first ("-" only before a digit or "."), no ": " or " #" inside, no space
# last (trailing spaces are not part of it).
_PLAIN = r"""
    (?:[^-?:,\[\]{}\#&*!|>'"%@`\ X]|-(?=[0-9.]))
    [^\ :X]*+(?:(?::(?=[^\ X])|[\ ]++(?=[^\ \#X]))[^\ :X]*+)*+
"""
# A plain key; libyaml allows 1024 characters.
_KEY = r"[A-Za-z0-9_][A-Za-z0-9_./\-]{0,255}+"
# Most lines of a config: ``key: value`` or ``key:``. Read as _LINE reads them, only cheaper.
_KEY_LINE = re.compile(
    rf"([ ]*+)({_KEY}):(?:[ ]++({_PLAIN}))?[ ]*+".replace("X", _NOT_IN_LINE),
    re.VERBOSE,
)
# Every line _yaml_from_lines takes.
_LINE = re.compile(
    rf"""
    ([ ]*+)                                         # indentation
    (-(?:[ ]++|\Z))?                                # a sequence entry
    (?:({_KEY}):(?:[ ]++|\Z))?
    (?:
        ({_PLAIN})
      | '((?:[^'X]|'')*+)'                          # single-quoted
      | "([^"\\X]*+)"                               # double-quoted, no escapes
      | (\[\]|\{{\}})                               # an empty flow collection
    )?
    [ ]*+
    (?:\#(?<![^ ]\#)[^X]*+)?                        # a comment: after a space or at the start
    """.replace("X", _NOT_IN_LINE),
    re.VERBOSE,
)
_NO_SLOT: Any = object()


def _yaml_from_lines(text: str) -> dict[str, Any]:
    resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = _GuardedLoader.yaml_implicit_resolvers
    if None in resolvers or _GuardedLoader.yaml_path_resolvers:
        raise _NotFast  # resolvers for every scalar, or by position: the event builder or the composer
    candidates_for = resolvers.get
    root: dict[str, Any] = {}
    # The open containers and the column of their keys or dashes; top and top_column are the last.
    containers: list[Any] = []
    columns: list[int] = []
    top: Any = root
    top_column = 0
    # A key (or _NEXT_ITEM) with nothing after it on its line: the next line says whether it holds a
    # nested block or null.
    no_slot = pending = _NO_SLOT
    next_item = _NEXT_ITEM
    pending_column = 0
    match_key_line = _KEY_LINE.fullmatch
    match_line = _LINE.fullmatch
    for line in text.split("\n"):
        if not line:
            continue
        match = match_key_line(line)
        if match is not None:
            indent, key, plain = match.groups()
            dash = single = double = flow = None
        else:
            match = match_line(line)
            if match is None:
                raise _NotFast
            if match.lastindex == 1:
                continue  # blank, or a comment
            indent, dash, key, plain, single, double, flow = match.groups()
        column = len(indent)
        if pending is not no_slot:
            # A sequence may stand at its key's own column; anything else nested is further right.
            if column > pending_column or (
                column == pending_column and dash is not None and pending is not next_item
            ):
                if len(containers) >= MAX_DEPTH - 1:
                    raise _NotFast
                if dash is not None:
                    nested: Any = []
                elif key is not None:
                    nested = {}
                else:
                    raise _NotFast  # a scalar on the line below its key
                _put(top, pending, nested)
                containers.append(top)
                columns.append(top_column)
                top, top_column = nested, column
            else:
                _put(top, pending, _plain_value("", candidates_for))
            pending = no_slot
        while top_column > column:
            top, top_column = containers.pop(), columns.pop()
        if top_column != column:
            raise _NotFast
        if dash is not None:
            if type(top) is not list:
                raise _NotFast
            if key is not None:
                # ``- key: ...`` starts a mapping in the entry, its keys at this key's column.
                if len(containers) >= MAX_DEPTH - 1:
                    raise _NotFast
                nested = {}
                top.append(nested)
                containers.append(top)
                columns.append(top_column)
                top, top_column = nested, column + len(dash)
        elif type(top) is not dict:
            # Back at the column of a sequence that stood at its key's column: the key's mapping goes on.
            if not containers or columns[-1] != column or type(containers[-1]) is not dict:
                raise _NotFast
            top, top_column = containers.pop(), columns.pop()
        if key is not None:
            if key in top:
                raise _NotFast  # a duplicate
            candidates = candidates_for(key[0])
            if candidates is not None:
                for _tag, pattern in candidates:
                    if pattern.match(key):
                        raise _NotFast  # resolves to something other than a string
            slot = key
        elif dash is None:
            raise _NotFast  # a scalar where a key belongs
        else:
            slot = next_item
        if plain is not None:
            value: Any = plain
            candidates = candidates_for(plain[0])
            if candidates is not None:
                for tag, pattern in candidates:
                    if pattern.match(plain):
                        value = _scalar_value(plain, tag)
                        break
        elif single is not None:
            value = single.replace("''", "'")
        elif double is not None:
            value = double
        elif flow is not None:
            if len(containers) >= MAX_DEPTH - 1:
                raise _NotFast  # an empty collection one level too deep
            value = [] if flow == "[]" else {}
        else:
            pending, pending_column = slot, top_column
            continue
        if slot is next_item:
            top.append(value)
        else:
            top[slot] = value
    if pending is not no_slot:
        _put(top, pending, _plain_value("", candidates_for))
    if not root:
        raise _NotFast  # no content: null, not a mapping, as the loaders say
    return root


def _put(container: Any, slot: Any, value: Any) -> None:
    if slot is _NEXT_ITEM:
        container.append(value)
    else:
        container[slot] = value


def _plain_value(
    scalar: str, candidates_for: Callable[[str], list[tuple[str, re.Pattern[str]]] | None]
) -> Any:
    # Resolved as BaseResolver.resolve resolves a plain scalar when no resolver applies to every first
    # character, then built.
    for tag, pattern in candidates_for(scalar[:1]) or ():
        if pattern.match(scalar):
            return _scalar_value(scalar, tag)
    return scalar


def _yaml_where(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f" at line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(exc, "position", None)  # ReaderError: a character offset, no line
    if isinstance(position, int):
        return f" at character offset {position}"
    return ""


def _parse_yaml(text: str) -> tuple[object, bool]:
    """The document's value, and whether it is known to pass _check_tree unchanged.

    The fast paths only return values that do: string keys, JSON scalars (timestamps already ISO
    strings, floats finite, integers within MAX_INT_DIGITS) and at most MAX_DEPTH nested containers.
    """
    try:
        return _yaml_from_lines(text), True
    except (yaml.YAMLError, _Refusal, _NotFast):
        pass  # not plain block style, or refused: the event builder or the loaders decide
    if _CParser is not None:
        try:
            return _yaml_from_events(text), True
        except (yaml.YAMLError, _Refusal, _NotFast):
            pass  # stepped aside or refused: the loaders below decide, and say why
        try:
            return _load_yaml(_GuardedCLoader(text)), False
        except (yaml.YAMLError, _Refusal, RecursionError):
            pass  # refused: the pure-Python loader says why, with the same reason code and position
    try:
        return _load_yaml(_GuardedLoader(text)), False
    except ConstructorError as exc:
        # e.g. a merge key whose value is not a mapping, or a tag on the wrong kind of node.
        raise _Refusal("invalid_value", f"YAML value{_yaml_where(exc)} cannot be constructed") from None
    except yaml.YAMLError as exc:
        raise _Refusal("syntax_error", f"YAML syntax error{_yaml_where(exc)}") from None


def _load_yaml(loader: _GuardedLoader) -> object:
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _inspect_yaml_graph(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


# PyYAML's merge rules differ between the releases ``pyyaml>=6.0`` admits (6.0.4 keeps the first pair per
# key object; earlier ones reverse a list of merges and keep the last), and _merge_into follows 6.0.4.
# These documents tell the rules apart; if the installed composer reads any of them differently, every
# document with ``<<`` is left to it.
_MERGE_PROBES = (
    "a: &A {x: 1, xx: 1}\nb: &B {x: 2, xx: 2, yy: 2}\nc: {<<: [*A, *B], z: 0}\n",
    "a: &A {xx: 1, y: 0}\nb: &B {<<: *A, y: 2, xx: 2}\nc: {<<: [*B, *A], y: 3}\nd: {<<: *B, <<: *A}\n",
)


def _merges_follow_the_composer() -> bool:
    for probe in _MERGE_PROBES:
        try:
            mine = _yaml_from_events(probe)
            theirs = _load_yaml(_GuardedCLoader(probe))
        except (yaml.YAMLError, _Refusal, _NotFast):
            return False
        if json.dumps(mine) != json.dumps(theirs):  # key order matters as much as values
            return False
    return True


if _CParser is not None:
    _MERGES_FOLLOW_THE_COMPOSER = _merges_follow_the_composer()


# --------------------------------------------------------------------------------------------------
# .env
# --------------------------------------------------------------------------------------------------

_ENV_ASSIGNMENT = re.compile(r"[ \t]*(?:export[ \t]+)?([^=\s]*)[ \t]*=(.*)")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_ENV_INLINE_COMMENT = re.compile(r"[ \t]#")


def _env_tail_ok(tail: str) -> bool:
    stripped = tail.strip()
    return not stripped or stripped.startswith("#")


def _env_value(raw: str, line_no: int) -> str:
    value = raw.lstrip(" \t")
    if value.startswith('"'):
        out: list[str] = []
        index = 1
        while index < len(value):
            char = value[index]
            if char == "\\" and index + 1 < len(value):
                following = value[index + 1]
                # Unknown escapes stay literal so Windows paths ("C:\dir") survive double quotes.
                out.append(_ENV_ESCAPES.get(following, "\\" + following))
                index += 2
                continue
            if char == '"':
                if not _env_tail_ok(value[index + 1 :]):
                    raise _Refusal("syntax_error", f".env line {line_no}: text after the closing quote")
                return "".join(out)
            out.append(char)
            index += 1
        raise _Refusal("syntax_error", f".env line {line_no}: unterminated double-quoted value")
    if value.startswith("'"):
        end = value.find("'", 1)
        if end < 0:
            raise _Refusal("syntax_error", f".env line {line_no}: unterminated single-quoted value")
        if not _env_tail_ok(value[end + 1 :]):
            raise _Refusal("syntax_error", f".env line {line_no}: text after the closing quote")
        return value[1:end]
    comment = _ENV_INLINE_COMMENT.search(raw)
    if comment is not None:
        raw = raw[: comment.start()]
    return raw.strip(" \t")


def _parse_env(text: str) -> dict[str, str]:
    """Parse dotenv text into a flat ``dict[str, str]``, keys exactly as written.

    Accepted, one per line: blank lines; ``# comments``; ``KEY=VALUE`` or ``export KEY=VALUE`` with
    optional spaces or tabs around ``=``; KEY matching ``[A-Za-z_][A-Za-z0-9_]*``. VALUE is unquoted
    (trimmed; `` #`` after whitespace starts a comment), ``'single-quoted'`` (literal) or
    ``"double-quoted"`` (``\\n \\r \\t \\" \\\\`` escapes; other backslashes kept). A quoted value
    ends on its line (no multi-line values). Anything else is ``syntax_error`` naming the line; a
    variable set twice is ``duplicate_key``. No ``${VAR}`` interpolation: what is written is the value.
    """
    result: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_ASSIGNMENT.fullmatch(line)
        if match is None:
            raise _Refusal("syntax_error", f".env line {line_no} is not KEY=VALUE")
        key, raw = match.group(1), match.group(2)
        if not _ENV_KEY.fullmatch(key):
            raise _Refusal(
                "syntax_error", f".env line {line_no}: variable names must match [A-Za-z_][A-Za-z0-9_]*"
            )
        if key in result:
            raise _Refusal(
                "duplicate_key",
                f".env variable {key!r} set twice (lines {first_line[key]} and {line_no})",
            )
        result[key] = _env_value(raw, line_no)
        first_line[key] = line_no
    return result
