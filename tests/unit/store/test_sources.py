"""store.sources: reading config files once and refusing bad ones by reason code, in every format.

Every test uses real files under tmp_path: the point of the module is what it does with real bytes on disk.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from confledger.store import sources
from confledger.store.errors import SourceError
from confledger.store.sources import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    REASON_CODES,
    LoadedSource,
    detect_format,
    load_source,
    reading,
)

SECRET = "sk-SECRET-123"


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def refusal(path: Path, **kwargs: Any) -> SourceError:
    with pytest.raises(SourceError) as info:
        load_source(path, **kwargs)
    return info.value


def billion_laughs() -> str:
    # The classic shape: ten aliases per level, nine levels, about 10**9 "lol"s once expanded.
    lines = ['lol0: &lol0 "lol"']
    for level in range(1, 10):
        refs = ", ".join([f"*lol{level - 1}"] * 10)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "\n".join(lines) + "\n"


def nested_json(depth: int) -> str:
    # depth counts containers, the top-level object included.
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


# --------------------------------------------------------------------------------------------------
# Realistic configs load
# --------------------------------------------------------------------------------------------------

SERVICE_BODY: dict[str, Any] = {
    "service": {"name": "billing", "port": 8080, "debug": False, "ratio": 0.25},
    "database": {"url": "postgresql://db/billing", "pool_size": 10, "replicas": ["db-a", "db-b"]},
    "features": {"new_checkout": True, "banner": None},
}

LOADS = [
    # JSON: objects, arrays, every scalar type, unicode, a leading BOM is tolerated
    ("app.json", json.dumps(SERVICE_BODY, indent=2), SERVICE_BODY),
    ("bom.json", "\ufeff" + json.dumps({"name": "café ☕"}), {"name": "café ☕"}),
    ("upper.JSON", '{"a": 1}', {"a": 1}),
    # exactly MAX_INT_DIGITS digits is still fine
    ("bigint.json", '{"n": ' + "9" * MAX_INT_DIGITS + "}", {"n": int("9" * MAX_INT_DIGITS)}),
    # exactly MAX_DEPTH containers is fine
    ("deep-ok.json", nested_json(MAX_DEPTH), json.loads(nested_json(MAX_DEPTH))),
    # YAML, both suffixes; the same body as the JSON file
    ("app.yaml", yaml.safe_dump(SERVICE_BODY), SERVICE_BODY),
    ("app.yml", yaml.safe_dump(SERVICE_BODY, default_flow_style=True), SERVICE_BODY),
    # YAML merge keys override, which is not a duplicate; anchors/aliases are shared blocks
    (
        "merge.yaml",
        "defaults: &defaults {timeout: 5, retries: 3}\n"
        "billing:\n  <<: *defaults\n  timeout: 10\n"
        "search:\n  <<: *defaults\n",
        {
            "defaults": {"timeout": 5, "retries": 3},
            "billing": {"timeout": 10, "retries": 3},
            "search": {"timeout": 5, "retries": 3},
        },
    ),
    # YAML timestamps become ISO 8601 strings (a config body is JSON)
    (
        "dates.yaml",
        "day: 2024-03-01\nat: 2024-03-01T12:30:00Z\nlocal: 2024-03-01 12:30:00\nquoted: '2024-03-01'\n",
        {
            "day": "2024-03-01",
            "at": "2024-03-01T12:30:00+00:00",
            "local": "2024-03-01T12:30:00",
            "quoted": "2024-03-01",
        },
    ),
    # "<<" and "=" as values are plain text
    ("odd.yaml", "a: <<\nb: =\n", {"a": "<<", "b": "="}),
    # YAML depth boundary: top-level mapping + 63 lists = MAX_DEPTH
    ("deep-ok.yaml", "a: " + "[" * 63 + "]" * 63 + "\n", yaml.safe_load("a: " + "[" * 63 + "]" * 63)),
    # TOML: tables, arrays of tables, inline tables; dates and times become ISO strings
    (
        "app.toml",
        '[service]\nname = "billing"\nport = 8080\ndebug = false\nratio = 0.25\n'
        '[database]\nurl = "postgresql://db/billing"\npool_size = 10\nreplicas = ["db-a", "db-b"]\n'
        "[features]\nnew_checkout = true\n",
        {
            "service": {"name": "billing", "port": 8080, "debug": False, "ratio": 0.25},
            "database": {"url": "postgresql://db/billing", "pool_size": 10, "replicas": ["db-a", "db-b"]},
            "features": {"new_checkout": True},
        },
    ),
    (
        "times.toml",
        "[[window]]\nday = 2024-03-01\nstart = 07:30:00\nat = 1979-05-27T07:32:00-08:00\n"
        "[[window]]\nlocal = 1979-05-27T07:32:00\nlimits = {cpu = 2, mem = '1Gi'}\n",
        {
            "window": [
                {"day": "2024-03-01", "start": "07:30:00", "at": "1979-05-27T07:32:00-08:00"},
                {"local": "1979-05-27T07:32:00", "limits": {"cpu": 2, "mem": "1Gi"}},
            ]
        },
    ),
    # TOML depth boundary: root table + 63 arrays = MAX_DEPTH; brackets inside strings do not count
    ("deep-ok.toml", "a = " + "[" * 63 + "]" * 63 + "\n", tomllib.loads("a = " + "[" * 63 + "]" * 63)),
    (
        "brackets.toml",
        's = "' + "[" * 100 + '"\nt = """' + "{" * 100 + '"""\n',
        {"s": "[" * 100, "t": "{" * 100},
    ),
    # .env: comments, export, quotes, escapes, inline comments, keys kept exactly as written
    (
        ".env",
        "# billing service\n"
        "SERVICE_NAME=billing\n"
        "export PORT=8080\n"
        'GREETING="hello\\n\\"world\\"\\\\"  # double quotes understand escapes\n'
        "RAW='no $expansion \\n here'\n"
        "SPACED = padded value   # trailing comment\n"
        "HASH=#not-a-comment\n"
        "EMPTY=\n"
        "mixed_Case=kept\n"
        'WINPATH="C:\\dir\\file"\n'
        "\n",
        {
            "SERVICE_NAME": "billing",
            "PORT": "8080",
            "GREETING": 'hello\n"world"\\',
            "RAW": "no $expansion \\n here",
            "SPACED": "padded value",
            "HASH": "#not-a-comment",
            "EMPTY": "",
            "mixed_Case": "kept",
            "WINPATH": "C:\\dir\\file",
        },
    ),
    # any file ending in .env is an env file; CRLF line endings are fine
    ("prod.env", "A=1\r\nB=two\r\n", {"A": "1", "B": "two"}),
]


@pytest.mark.parametrize(("name", "content", "expected"), LOADS, ids=[row[0] for row in LOADS])
def test_realistic_configs_load(tmp_path: Path, name: str, content: str, expected: dict[str, Any]) -> None:
    path = write(tmp_path, name, content)
    loaded = load_source(path)
    assert loaded.body == expected
    assert loaded.format == detect_format(name)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.json", "json"),
        ("a.yaml", "yaml"),
        ("a.yml", "yaml"),
        ("A.YML", "yaml"),
        ("a.toml", "toml"),
        (".env", "env"),
        ("prod.env", "env"),
        ("/etc/app/.env", "env"),
        ("a.txt", None),
        ("a", None),
        (".env.local", None),  # not ending in .env: refused rather than guessed
        ("json", None),
        # as os.path.splitext reads them: leading dots start a name, not a suffix
        (".yaml", None),
        ("..yaml", None),
        (".a.yaml", "yaml"),
        ("a..yaml", "yaml"),
        ("a.", None),
        ("dir.yaml/config", None),
        ("a.yaml.bak", None),
    ],
)
def test_detect_format(name: str, fmt: str | None) -> None:
    assert detect_format(name) == fmt


def test_loaded_source_records_the_bytes_it_parsed(tmp_path: Path) -> None:
    content = b'{"service": {"port": 8080}}\n'
    path = write(tmp_path, "app.json", content)
    loaded = load_source(str(path))
    assert loaded == LoadedSource(
        path=str(path),
        format="json",
        body={"service": {"port": 8080}},
        raw_sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        load_ms=loaded.load_ms,
    )
    assert loaded.load_ms > 0  # measured: a read and a parse take time
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.body = {}  # type: ignore[misc]


@pytest.mark.parametrize("name", ["a.json", "a.yaml", "a.toml", "a.env"])
def test_sha256_is_of_the_exact_file_bytes(tmp_path: Path, name: str) -> None:
    # CRLF, a BOM and trailing spaces all stay in the hash even though the parser ignores them.
    content = {
        "a.json": b'\xef\xbb\xbf{"k": "v"}  \r\n',
        "a.yaml": b"\xef\xbb\xbfk: v  \r\n",
        "a.toml": b'\xef\xbb\xbfk = "v"  \r\n',
        "a.env": b"\xef\xbb\xbfk=v  \r\n",
    }[name]
    loaded = load_source(write(tmp_path, name, content))
    assert loaded.raw_sha256 == hashlib.sha256(content).hexdigest()
    assert loaded.size_bytes == len(content)
    assert loaded.body == {"k": "v"}


# --------------------------------------------------------------------------------------------------
# Refusals by reason code
# --------------------------------------------------------------------------------------------------

BILLION_LAUGHS = billion_laughs()

REFUSALS: list[tuple[str, str | bytes, str]] = [
    # ---- syntax_error
    ("a.json", '{"a": 1,}', "syntax_error"),  # trailing comma
    ("a.json", '{"a": 1', "syntax_error"),  # unterminated object
    ("a.json", "{'a': 1}", "syntax_error"),  # single quotes are not JSON
    ("a.json", '{"a": 1} {"b": 2}', "syntax_error"),  # two documents
    ("a.json", '{"a": "\\q"}', "syntax_error"),  # invalid escape
    ("a.yaml", "a: [1, 2\n", "syntax_error"),  # unclosed flow sequence
    ("a.yaml", "a: 1\n b: 2\n", "syntax_error"),  # bad indentation
    ("a.yaml", "a: 1\n---\nb: 2\n", "syntax_error"),  # more than one document
    ("a.yaml", 'a: "bell\x07"\n', "syntax_error"),  # control character (PyYAML's reader refuses it)
    ("a.toml", "a 1\n", "syntax_error"),  # missing =
    ("a.toml", 'a = "unterminated\n', "syntax_error"),  # unterminated string
    ("a.toml", "a = [1, 2\n", "syntax_error"),  # unclosed array
    (".env", "JUST_A_WORD\n", "syntax_error"),  # no =
    (".env", "MY-KEY=1\n", "syntax_error"),  # invalid variable name
    (".env", "1KEY=1\n", "syntax_error"),  # names cannot start with a digit
    (".env", 'A="unterminated\n', "syntax_error"),  # unterminated double quote
    (".env", "A='unterminated\n", "syntax_error"),  # unterminated single quote
    (".env", 'A="x" y\n', "syntax_error"),  # text after the closing quote
    (".env", "export A\n", "syntax_error"),  # export without assignment
    # ---- duplicate_key
    ("a.json", '{"a": 1, "a": 2}', "duplicate_key"),  # top level
    ("a.json", '{"a": {"b": 1, "b": 1}}', "duplicate_key"),  # nested, even with equal values
    ("a.json", '{"a": [{"x": 1, "x": 2}]}', "duplicate_key"),  # inside an array
    ("a.yaml", "a: 1\na: 2\n", "duplicate_key"),  # top level
    ("a.yaml", "a:\n  b: 1\n  b: 2\n", "duplicate_key"),  # nested block mapping
    ("a.yaml", "a: {b: 1, b: 2}\n", "duplicate_key"),  # flow mapping
    ("a.yaml", 'a: 1\n"a": 2\n', "duplicate_key"),  # quoted and plain spelling of one key
    ("a.toml", "a = 1\na = 2\n", "duplicate_key"),  # key twice
    ("a.toml", "[t]\nx = 1\n[t]\ny = 2\n", "duplicate_key"),  # table twice
    ("a.toml", "a = {b = 1, b = 2}\n", "duplicate_key"),  # inline table key twice
    ("a.toml", "a.b = 1\na = 2\n", "duplicate_key"),  # dotted key then plain key
    ("a.toml", "[t]\nx = 1\n[t.x]\n", "duplicate_key"),  # value redefined as a table
    (".env", "A=1\nA=2\n", "duplicate_key"),  # variable twice
    (".env", "A=1\nexport A=1\n", "duplicate_key"),  # export does not make it a new variable
    # ---- non_finite_number
    ("a.json", '{"a": NaN}', "non_finite_number"),
    ("a.json", '{"a": Infinity}', "non_finite_number"),
    ("a.json", '{"a": [-Infinity]}', "non_finite_number"),
    ("a.json", '{"a": 1e400}', "non_finite_number"),  # overflows to inf without being a constant
    ("a.yaml", "a: .nan\n", "non_finite_number"),
    ("a.yaml", "a: .inf\n", "non_finite_number"),
    ("a.yaml", "a: [-.Inf]\n", "non_finite_number"),
    ("a.yaml", "a: 1.0e+400\n", "non_finite_number"),
    ("a.toml", "a = nan\n", "non_finite_number"),
    ("a.toml", "a = inf\n", "non_finite_number"),
    ("a.toml", "a = [-inf]\n", "non_finite_number"),
    ("a.toml", "a = 1e400\n", "non_finite_number"),
    # ---- too_deep (MAX_DEPTH + 1 containers, and absurd depths that must not recurse)
    ("a.json", nested_json(MAX_DEPTH + 1), "too_deep"),
    ("a.json", nested_json(100_000), "too_deep"),
    ("a.json", "[" * 100_000, "too_deep"),  # unclosed too: depth is checked before syntax
    ("a.yaml", "a: " + "[" * 64 + "]" * 64 + "\n", "too_deep"),
    ("a.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n", "too_deep"),
    ("a.yaml", "".join("  " * i + f"k{i}:\n" for i in range(70)) + "  " * 70 + "v: 1\n", "too_deep"),
    # depth that only appears once an alias is expanded: 1 + 40 + 40 levels
    ("a.yaml", "x: &x " + "[" * 40 + "]" * 40 + "\ny: " + "[" * 40 + "*x" + "]" * 40 + "\n", "too_deep"),
    ("a.toml", "a = " + "[" * 64 + "]" * 64 + "\n", "too_deep"),
    ("a.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n", "too_deep"),
    ("a.toml", "a = " + "{b = " * 100 + "1" + "}" * 100 + "\n", "too_deep"),  # inline tables
    ("a.toml", ".".join(f"k{i}" for i in range(70)) + " = 1\n", "too_deep"),  # dotted keys nest too
    ("a.toml", "[" + ".".join(f"k{i}" for i in range(64)) + "]\n", "too_deep"),  # an empty table, 65 deep
    # ---- integer_too_long
    ("a.json", '{"a": ' + "1" * (MAX_INT_DIGITS + 1) + "}", "integer_too_long"),
    ("a.json", '{"a": -' + "1" * (MAX_INT_DIGITS + 1) + "}", "integer_too_long"),
    ("a.yaml", "a: " + "1" * (MAX_INT_DIGITS + 1) + "\n", "integer_too_long"),
    ("a.yaml", "a: 0x" + "f" * 3600 + "\n", "integer_too_long"),  # hex: no int() limit, magnitude check
    ("a.yaml", "a: 0b" + "1" * 14_300 + "\n", "integer_too_long"),  # binary, ~4305 decimal digits
    ("a.toml", "a = " + "1" * (MAX_INT_DIGITS + 1) + "\n", "integer_too_long"),
    ("a.toml", "a = 0x" + "f" * 3600 + "\n", "integer_too_long"),
    # ---- yaml_tag_refused (only plain YAML types are ever constructed)
    ("a.yaml", 'a: !!python/object/apply:os.system ["true"]\n', "yaml_tag_refused"),
    ("a.yaml", "a: !!python/name:os.system\n", "yaml_tag_refused"),
    ("a.yaml", "a: !!python/object/new:collections.OrderedDict [[]]\n", "yaml_tag_refused"),
    ("a.yaml", "!!python/object:collections.OrderedDict {}\n", "yaml_tag_refused"),  # on the root
    ("a.yaml", "a: !!python/tuple [1, 2]\n", "yaml_tag_refused"),
    ("a.yaml", "a: !vault encrypted\n", "yaml_tag_refused"),  # custom local tag
    ("a.yaml", "a: !include other.yaml\n", "yaml_tag_refused"),
    ("a.yaml", "a: !<tag:example.com,2024:thing> x\n", "yaml_tag_refused"),  # verbatim tag
    ("a.yaml", "%TAG !e! tag:example.com,2024:\n---\na: !e!thing x\n", "yaml_tag_refused"),  # %TAG
    ("a.yaml", "a: !custom [1]\n", "yaml_tag_refused"),  # on a sequence
    # ---- alias_bomb
    ("a.yaml", BILLION_LAUGHS, "alias_bomb"),
    ("a.yaml", "a: &a [*a]\n", "alias_bomb"),  # an anchor that contains itself
    ("a.yaml", "a: &a {b: *a}\n", "alias_bomb"),  # the same, through a mapping
    ("a.yaml", "x: &x 1\nl: [" + ", ".join(["*x"] * 1001) + "]\n", "alias_bomb"),  # too many aliases
    # ---- not_a_mapping
    ("a.json", "[1, 2]", "not_a_mapping"),
    ("a.json", '"text"', "not_a_mapping"),
    ("a.json", "42", "not_a_mapping"),
    ("a.json", "null", "not_a_mapping"),
    ("a.yaml", "- a\n- b\n", "not_a_mapping"),
    ("a.yaml", "just a string\n", "not_a_mapping"),
    ("a.yaml", "# only a comment\n", "not_a_mapping"),  # not blank bytes, but no document
    ("a.yaml", "~\n", "not_a_mapping"),
    # ---- non_string_key (YAML is the only format whose keys can be anything else)
    ("a.yaml", "1: x\n", "non_string_key"),
    ("a.yaml", "null: x\n", "non_string_key"),
    ("a.yaml", "true: x\n", "non_string_key"),
    ("a.yaml", "on: push\n", "non_string_key"),  # YAML 1.1 boolean
    ("a.yaml", "1.5: x\n", "non_string_key"),
    ("a.yaml", "2024-01-01: x\n", "non_string_key"),
    ("a.yaml", "a:\n  ? [x, y]\n  : z\n", "non_string_key"),  # sequence as key
    ("a.yaml", "? {x: 1}\n: z\n", "non_string_key"),  # mapping as key
    # ---- invalid_value (standard YAML types JSON cannot hold)
    ("a.yaml", "a: !!binary aGVsbG8=\n", "invalid_value"),
    ("a.yaml", "a: !!set {x, y}\n", "invalid_value"),
    ("a.yaml", "a: !!omap [{x: 1}]\n", "invalid_value"),
    ("a.yaml", "a: !!pairs [{x: 1}]\n", "invalid_value"),
    ("a.yaml", "a: 2024-13-45\n", "invalid_value"),  # looks like a date, is not one
    ("a.yaml", "a: !!int twelve\n", "invalid_value"),
    ("a.yaml", "a: !!float x\n", "invalid_value"),
    ("a.yaml", "a: !!bool maybe\n", "invalid_value"),
    ("a.yaml", "a: !!str [1]\n", "invalid_value"),  # a scalar tag on a sequence
    ("a.yaml", "a:\n  <<: 1\n", "invalid_value"),  # merge of something that is not a mapping
    # ---- invalid_utf8
    ("a.json", b'{"a": "\xff"}', "invalid_utf8"),
    ("a.yaml", b"a: \xc3\x28\n", "invalid_utf8"),
    ("a.toml", b'a = "\xed\xa0\x80"\n', "invalid_utf8"),  # an encoded surrogate
    (".env", b"A=\xfe\n", "invalid_utf8"),
    # ---- empty (expect_content=False fails at once)
    ("a.json", "", "empty"),
    ("a.yaml", "  \n\t\n", "empty"),
    ("a.toml", "\n", "empty"),
    (".env", b"\xef\xbb\xbf \n", "empty"),  # a BOM and whitespace is still empty
]


@pytest.mark.parametrize(
    ("name", "content", "code"),
    REFUSALS,
    ids=[f"{row[2]}-{row[0]}-{index}" for index, row in enumerate(REFUSALS)],
)
def test_refusals(tmp_path: Path, name: str, content: str | bytes, code: str) -> None:
    path = write(tmp_path, name, content)
    raw = path.read_bytes()
    error = refusal(path)
    assert error.code == code, str(error)
    assert code in REASON_CODES
    message = str(error)
    assert message
    assert "\n" not in message
    assert len(message) < 300
    # Every refusal after the read carries the facts config.load_failed records.
    assert error.input_sha256 == hashlib.sha256(raw).hexdigest()
    assert error.size_bytes == len(raw)


@pytest.mark.parametrize(
    ("name", "content", "offset"),
    [
        ("a.json", b'{"a": "\xff"}', 7),
        ("a.yaml", b"a: ok\nb: \xc3\x28\n", 9),
        ("a.toml", b'a = "\x80"\n', 5),
        (".env", b"A=1\nB=\xfe\n", 6),
    ],
)
def test_invalid_utf8_names_the_byte_offset(tmp_path: Path, name: str, content: bytes, offset: int) -> None:
    error = refusal(write(tmp_path, name, content))
    assert error.code == "invalid_utf8"
    assert f"byte offset {offset}" in str(error)


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("a.json", '{\n  "a": 1,\n  "b" 2\n}', "line 3, column 7"),
        ("a.yaml", "a: 1\nb: [1, 2\n", "line 3, column 1"),
        ("a.toml", "a = 1\nb 2\n", "line 2, column 3"),
        (".env", "A=1\n\n# c\nnot valid\n", "line 4"),
        ("a.yaml", "a: 1\nb: 2\na: 3\n", "line 3, column 1"),  # duplicate key, YAML knows where
        ("a.toml", "a = 1\nb = 2\na = 3\n", "line 3"),
        (".env", "A=1\nB=2\nA=3\n", "lines 1 and 3"),
        # Numbers JSON cannot hold and nesting past MAX_DEPTH: every format names the path to them.
        ("a.json", '{"perf": {"ratio": NaN}}', "$.perf.ratio"),
        ("a.json", '{"perf": [1, 1e400]}', "$.perf[1]"),
        ("a.toml", "[perf]\nratio = inf\n", "$.perf.ratio"),
        ("a.json", '{"a": ' + "[" * 70 + "]" * 70 + "}", "levels (at ..."),
        ("a.toml", "a = " + "[" * 70 + "]" * 70 + "\n", "levels (at ..."),
    ],
)
def test_errors_name_where(tmp_path: Path, name: str, content: str, where: str) -> None:
    assert where in str(refusal(write(tmp_path, name, content)))


SECRET_DOCUMENTS = [
    # JSON
    ("a.json", f'{{"token": "{SECRET}" "next": 1}}'),  # missing comma right after the secret
    ("a.json", f'{{"token": "{SECRET}'),  # unterminated string holding the secret
    ("a.json", f'{{"token": "{SECRET}\\q"}}'),  # bad escape inside the secret
    ("a.json", f'{{"token": "{SECRET}", "token": "{SECRET}"}}'),  # duplicate
    ("a.json", f'{{"token": "{SECRET}", "n": NaN}}'),  # non-finite next to the secret
    ("a.json", f'["{SECRET}"]'),  # not a mapping
    # YAML (PyYAML's own messages quote the document: none of them may pass through)
    ("a.yaml", f'token: "{SECRET}\n  bad: [\n'),
    ("a.yaml", f"token: {SECRET}\n bad: x: y\n"),
    ("a.yaml", f"token: {SECRET}\n\t- tab\n"),
    ("a.yaml", f"token: {SECRET}\ntoken: {SECRET}\n"),  # duplicate
    ("a.yaml", f"token: !secret {SECRET}\n"),  # unknown tag
    ("a.yaml", f"token: !!timestamp {SECRET}\n"),  # wrong type for a standard tag
    ("a.yaml", f"token: !!int {SECRET}\n"),
    ("a.yaml", f'token: "{SECRET}\x07"\n'),  # control character
    ("a.yaml", f"{SECRET}\n"),  # not a mapping
    ("a.yaml", f"a: &{SECRET} [*{SECRET}]\n"),  # recursive alias named like the secret
    # TOML
    ("a.toml", f'token = "{SECRET}\n'),
    ("a.toml", f"token = {SECRET}\n"),
    ("a.toml", f'token = "{SECRET}"\ntoken = "{SECRET}"\n'),  # duplicate
    ("a.toml", f'token = "{SECRET}\x01"\n'),  # illegal character (tomllib quotes it)
    ("a.toml", f"[{SECRET}]\n[{SECRET}]\n"),  # table declared twice, tomllib names it
    # .env
    ("a.env", f"{SECRET}\n"),
    ("a.env", f'TOKEN="{SECRET}\n'),
    ("a.env", f'TOKEN="{SECRET}" junk\n'),
    ("a.env", f"{SECRET}=value\n"),
    ("a.env", f"TOKEN={SECRET}\nTOKEN={SECRET}\n"),
]


@pytest.mark.parametrize(("name", "content"), SECRET_DOCUMENTS)
def test_messages_never_contain_document_text(tmp_path: Path, name: str, content: str) -> None:
    error = refusal(write(tmp_path, name, content))
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert "SECRET" not in error.message


# --------------------------------------------------------------------------------------------------
# The file itself: missing, not a file, unreadable, too large, unsupported
# --------------------------------------------------------------------------------------------------


def test_not_found(tmp_path: Path) -> None:
    assert refusal(tmp_path / "missing.json").code == "not_found"
    # a path through a regular file is as missing as anything else
    write(tmp_path, "file", "x")
    assert refusal(tmp_path / "file" / "x.json").code == "not_found"


def test_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d.json").mkdir()
    error = refusal(tmp_path / "conf.d.json")
    assert error.code == "not_a_file"
    assert error.input_sha256 is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_a_file_and_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert refusal(fifo).code == "not_a_file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.toml", "a = 1\n")
    path.chmod(0)
    try:
        assert refusal(path).code == "permission_denied"
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission_denied"),  # also covers root runs
        (IsADirectoryError(errno.EISDIR, "Is a directory"), "not_a_file"),  # how some platforms say it
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), "not_found"),
        (OSError(errno.ELOOP, "Too many levels of symbolic links"), "read_error"),  # anything else
        (OSError(errno.EIO, "Input/output error"), "read_error"),
    ],
)
def test_open_errors_map_to_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: OSError, code: str
) -> None:
    path = write(tmp_path, "app.json", "{}")

    def failing_open(*args: Any, **kwargs: Any) -> int:
        raise raised

    monkeypatch.setattr(os, "open", failing_open)
    error = refusal(path)
    assert error.code == code
    assert "\n" not in str(error)


@pytest.mark.parametrize("name", ["app.txt", "app", "app.ini", ".env.local", "app.json.bak"])
def test_unsupported_format(tmp_path: Path, name: str) -> None:
    error = refusal(write(tmp_path, name, '{"a": 1}'))
    assert error.code == "unsupported_format"
    assert ".json" in str(error)  # says what is accepted


def test_too_large_is_refused_without_reading_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "huge.json", b'{"a": "' + b"x" * (5 * 1024 * 1024) + b'"}')
    read_sizes: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        chunk = real_read(fd, n)
        read_sizes.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "read", counting_read)
    error = refusal(path)
    assert error.code == "too_large"
    assert "1048576" in str(error)  # names the cap
    assert error.size_bytes == path.stat().st_size
    assert sum(read_sizes) <= sources.DEFAULT_MAX_BYTES + 1


def test_file_that_grows_past_the_cap_is_read_only_to_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fstat said small (the file grew after it): the read itself must stop one byte past the cap.
    path = write(tmp_path, "growing.yaml", "a: " + "x" * 10_000 + "\n")
    real_fstat, real_read = os.fstat, os.read
    read_sizes: list[int] = []

    def stale_fstat(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        fields = list(info[:10])
        fields[6] = 0  # st_size
        return os.stat_result(fields)

    def counting_read(fd: int, n: int) -> bytes:
        chunk = real_read(fd, n)
        read_sizes.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "fstat", stale_fstat)
    monkeypatch.setattr(os, "read", counting_read)
    error = refusal(path, max_bytes=1000)
    assert error.code == "too_large"
    assert "1000-byte cap" in str(error)
    assert sum(read_sizes) == 1001


def test_a_file_exactly_at_the_cap_loads(tmp_path: Path) -> None:
    content = '{"a": "' + "x" * 91 + '"}'
    assert len(content) == 100
    assert load_source(write(tmp_path, "a.json", content), max_bytes=100).size_bytes == 100
    assert refusal(write(tmp_path, "b.json", content + " "), max_bytes=100).code == "too_large"


# --------------------------------------------------------------------------------------------------
# Empty files: a writer may have truncated the file and not yet written it
# --------------------------------------------------------------------------------------------------


def test_empty_file_without_expected_content_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("must not wait for content nobody promised")

    monkeypatch.setattr(time, "sleep", no_sleep)
    error = refusal(write(tmp_path, "a.yaml", ""), empty_retry_s=5)
    assert error.code == "empty"
    assert error.size_bytes == 0
    assert error.input_sha256 == hashlib.sha256(b"").hexdigest()


def test_empty_file_filled_while_waiting_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, "app.json", "")

    def writer() -> None:
        time.sleep(0.1)
        staging = write(tmp_path, "staging.tmp", '{"port": 8080}')
        os.replace(staging, path)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        loaded = load_source(path, expect_content=True, empty_retry_s=10, empty_retry_interval_s=0.01)
    finally:
        thread.join()
    assert loaded.body == {"port": 8080}
    assert loaded.raw_sha256 == hashlib.sha256(b'{"port": 8080}').hexdigest()


class SteppedClock:
    """``time`` for the source reader, whose monotonic clock moves on by what it sleeps and nothing else:
    how many times it reads again does not depend on how long a loaded machine took over each sleep."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_file_still_empty_after_the_grace_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(reading, "time", clock)
    error = refusal(
        write(tmp_path, ".env", " \n"), expect_content=True, empty_retry_s=0.15, empty_retry_interval_s=0.03
    )
    assert error.code == "empty"
    assert "0.15" in str(error)
    assert len(clock.sleeps) >= 2
    assert all(seconds <= 0.03 for seconds in clock.sleeps)


# --------------------------------------------------------------------------------------------------
# Bombs terminate
# --------------------------------------------------------------------------------------------------


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    # No timing assertion: if the aliases were ever expanded this would not finish (or run out of
    # memory); finishing with the right code is the proof.
    error = refusal(write(tmp_path, "laughs.yaml", BILLION_LAUGHS))
    assert error.code == "alias_bomb"


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    body = "base: &base {image: app, replicas: 2}\n" + "".join(
        f"svc{i}:\n  <<: *base\n  name: svc{i}\n" for i in range(50)
    )
    loaded = load_source(write(tmp_path, "compose.yaml", body))
    assert loaded.body["svc49"] == {"image": "app", "replicas": 2, "name": "svc49"}


@pytest.mark.parametrize("name", ["deep.json", "deep.yaml", "deep.toml"])
def test_absurd_nesting_is_refused_without_recursion_error(tmp_path: Path, name: str) -> None:
    opener = {"deep.json": '{"a": ', "deep.yaml": "a: ", "deep.toml": "a = "}[name]
    closer = "}" if name == "deep.json" else ""
    path = write(tmp_path, name, opener + "[" * 100_000 + "]" * 100_000 + closer)
    # pytest.raises(SourceError) would let a RecursionError through as a failure.
    assert refusal(path).code == "too_deep"


# --------------------------------------------------------------------------------------------------
# Every reason code is exercised somewhere in this file
# --------------------------------------------------------------------------------------------------


def test_every_reason_code_is_covered() -> None:
    covered = {code for _name, _content, code in REFUSALS}
    covered |= {
        "not_found",
        "not_a_file",
        "permission_denied",
        "read_error",
        "too_large",
        "unsupported_format",
    }
    assert covered == REASON_CODES
