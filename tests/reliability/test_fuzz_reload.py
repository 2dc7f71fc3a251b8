"""Fuzzing the whole reload path, every source format: never an unhandled exception, never a change on
failure.

Hypothesis writes a config file (YAML, JSON, TOML or .env) holding arbitrary bytes, arbitrary nested
values in that format's syntax, or the example config damaged (cut short, a byte changed, bytes
inserted, a line repeated), and one long-lived ``ConfigReloader`` per backend reloads it. Every reload
returns an operation (no exception escapes). One that failed left the current hash, the live config
object and what the registered service last accepted exactly as they were; one that succeeded applied
the hash of the file's own validated body, and the service accepted that config. When the run ends,
``check_nothing_lost`` holds for the whole log.

The parsers' own properties (every byte string loads or is refused with a reason code) are
``tests/unit/store/test_sources_properties.py``; this is the same input through the reloader and the log.

Size knob ``CONFLEDGER_TEST_SCALE`` (float, default 1): examples per backend ``round(100 * SCALE)``;
full scale is 20 (2,000 per backend).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import SecretCipher
from confledger.store.errors import SourceError
from confledger.store.secrets import classify_secrets, digested_paths
from confledger.store.sources import load_source
from confledger.store.validation import dump_revealed
from tests.conftest import _pg_admin_engine, make_pg_schema_url, require_postgres
from tests.integration.api.service_harness import BASE
from tests.reliability.invariants import ReloaderObserver, check_nothing_lost, wait_until_settled
from tests.scale import SCALE

EXAMPLES = max(10, round(100 * SCALE))
FORMATS = ["yaml", "json", "toml", "env"]
FILE_NAMES = {"yaml": "config.yaml", "json": "config.json", "toml": "config.toml", "env": "config.env"}

# --- what a file may hold -----------------------------------------------------------------------------------

# Keys of the model mixed with arbitrary ones, so some documents validate and most do not.
_keys = st.sampled_from(
    ["app_name", "version", "debug", "environment", "database", "cache", "pool_size", "ttl_seconds"]
) | st.text(max_size=8)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=16)
    | st.sampled_from(["production", "staging", "true", "1e400", "-0", "~", "null"])
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)
_documents = st.dictionaries(_keys, _values, max_size=6)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf and nan are TOML too: the tree check refuses them
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, or a refused one (a lone surrogate escape)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, dict):
        pairs = (
            f"{json.dumps(key)} = {_toml_value(item)}" for key, item in value.items() if item is not None
        )
        return "{" + ", ".join(pairs) + "}"
    return '""'


def render(body: dict[str, Any], fmt: str) -> bytes:
    """``body`` in ``fmt``'s syntax (as well as the format can hold it: .env is flat strings)."""
    if fmt == "json":
        return json.dumps(body, default=str).encode("utf-8", "surrogatepass")
    if fmt == "yaml":
        return yaml.safe_dump(body, allow_unicode=True).encode("utf-8", "surrogatepass")
    if fmt == "toml":
        lines = [
            f"{json.dumps(key)} = {_toml_value(value)}" for key, value in body.items() if value is not None
        ]
        return "\n".join(lines).encode("utf-8", "surrogatepass")
    flat = {key: value for key, value in body.items() if not isinstance(value, dict | list)}
    return "\n".join(
        f"{key}={json.dumps(value) if isinstance(value, str) else value}" for key, value in flat.items()
    ).encode("utf-8", "surrogatepass")


def _example(ttl: int) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["cache"]["ttl_seconds"] = ttl
    return body


@st.composite
def damaged_examples(draw: st.DrawFn, fmt: str) -> bytes:
    """The example config in ``fmt`` (a new value each time), then damaged or not."""
    body = _example(draw(st.integers(0, 10**6)))
    if fmt == "env":
        body = {"app_name": body["app_name"], "debug": "false", "environment": "staging"}
    data = bytearray(render(body, fmt))
    damage = draw(st.sampled_from(["none", "cut", "flip", "insert", "repeat_line"]))
    if damage == "cut":
        del data[draw(st.integers(0, len(data))) :]
    elif damage == "flip" and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif damage == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif damage == "repeat_line":
        lines = bytes(data).split(b"\n")
        at = draw(st.integers(0, len(lines) - 1))
        lines.insert(at, lines[at])
        data = bytearray(b"\n".join(lines))
    return bytes(data)


@st.composite
def config_files(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(FORMATS))
    kind = draw(st.sampled_from(["bytes", "document", "example"]))
    if kind == "bytes":
        return fmt, draw(st.binary(max_size=300))
    if kind == "document":
        return fmt, render(draw(_documents), fmt)
    return fmt, draw(damaged_examples(fmt))


# --- one reloader per backend for the whole run -----------------------------------------------------------


class Fuzzed:
    def __init__(self, url: str, directory: Path, portal: BlockingPortal) -> None:
        self.directory = directory
        self.portal = portal
        self.accepted: Any = None
        source = directory / "config.yaml"
        source.write_text(yaml.safe_dump(_example(3600)), encoding="utf-8")

        async def open_reloader() -> ConfigReloader:
            reloader = ConfigReloader(
                url,
                config_model=AppConfig,
                config_source=source,
                validators=VALIDATORS,
                cipher=SecretCipher([SecretCipher.generate_key()]),
                instance_id="fuzz",
            )
            await reloader.start()
            reloader.register_config_callback("recorder", self._accept, priority=1)
            return reloader

        self.reloader = portal.call(open_reloader)
        self.accepted = self.reloader.get_config()

    def _accept(self, old: Any, new: Any) -> bool:
        self.accepted = new
        return True


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    directory = Path(tempfile.mkdtemp(prefix="confledger-fuzz-", dir=tmp_path_factory.getbasetemp()))
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'fuzz.db'}"
    else:
        require_postgres()
        schema = f"fuzz_{os.urandom(6).hex()}"
        with _pg_admin_engine().connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = make_pg_schema_url(schema)
    with start_blocking_portal("asyncio") as portal:
        state = Fuzzed(url, directory, portal)
        try:
            yield state
            observer = ReloaderObserver(state.reloader)
            wait_until_settled(observer, state.reloader.log, quiet=0)
            report = check_nothing_lost(state.reloader.log, [observer])
            assert report.operations >= EXAMPLES
        finally:
            portal.call(state.reloader.stop)
            shutil.rmtree(directory, ignore_errors=True)
            if schema is not None:
                with _pg_admin_engine().connect() as connection:
                    connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(file=config_files(), force=st.booleans())
def test_any_file_in_any_format_fails_cleanly_or_applies_exactly_its_body(
    fuzzed: Fuzzed, file: tuple[str, bytes], force: bool
) -> None:
    fmt, data = file
    path = fuzzed.directory / FILE_NAMES[fmt]
    path.write_bytes(data)
    reloader = fuzzed.reloader
    before_hash, before_config, before_accepted = (
        reloader.current_hash,
        reloader.get_config(),
        fuzzed.accepted,
    )

    operation = fuzzed.portal.call(lambda: reloader.reload_config(config_source=path, force=force))

    assert operation.completed_at is not None, operation
    event(
        f"{fmt}: {'applied' if operation.success and operation.changes_applied else operation.reason or 'same'}"
    )
    if not operation.success:
        assert reloader.current_hash == before_hash, operation
        assert reloader.get_config() is before_config, operation
        assert fuzzed.accepted is before_accepted, operation
        return
    try:
        body = load_source(path).body
    except SourceError as exc:  # pragma: no cover - reported: it succeeded on a file that does not load
        raise AssertionError(f"{operation.status} from a file that does not load: {exc.code}") from exc
    model = AppConfig.model_validate(body)
    expected = reloader.log.hash_config(dump_revealed(model), digested_paths(classify_secrets(model)))
    assert reloader.current_hash == expected, operation
    if expected != before_hash:
        assert fuzzed.accepted == reloader.get_config()
