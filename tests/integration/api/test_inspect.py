"""``LogInspector``: what the CLI reads from a log, here the diff of two stored configs with and without
the key (on both backends)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from confledger.api.inspect import CANNOT_COMPARE, LogInspector
from confledger.api.reloader import ConfigReloader
from confledger.store import EventLog, SecretCipher

pytestmark = pytest.mark.anyio

SECRET = "tok-very-secret-1111"  # looked for in the output


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


VERSIONS: dict[str, dict[str, Any]] = {
    "first": {"level": 1, "upstreams": [{"name": "a", "token": SECRET}]},
    "level": {"level": 2, "upstreams": [{"name": "a", "token": SECRET}]},
    "renamed": {"level": 2, "upstreams": [{"name": "b", "token": SECRET}]},
    "rotated": {"level": 2, "upstreams": [{"name": "b", "token": "tok-rotated-2222"}]},
}


async def stored(database_url: str, tmp_path: Path, cipher: SecretCipher) -> dict[str, str]:
    """Each of ``VERSIONS`` applied in turn (untyped: the token is a secret by its name); their hashes."""
    hashes = {}
    with EventLog(database_url, cipher=cipher, instance_id="inspect-test") as log:
        reloader = ConfigReloader(log)
        await reloader.start()
        try:
            for name, body in VERSIONS.items():
                source = tmp_path / f"{name}.json"
                source.write_text(json.dumps(body), encoding="utf-8")
                operation = await reloader.reload_config(config_source=source)
                assert operation.success, operation.error_message
                assert reloader.current_hash is not None
                hashes[name] = reloader.current_hash
        finally:
            await reloader.stop()
    return hashes


@pytest.mark.parametrize(
    ("older", "newer", "keyed", "keyless"),
    [
        # (from, to, {path: kind} with the key, {path: kind} without it)
        # The list holds a secret and is compared whole: without the key a fresh seal of the same token
        # cannot be told from another token, so it is not comparable; it is no visible change.
        ("first", "level", {"level": "changed"}, {"level": "changed", "upstreams": "unknown"}),
        # A visible change inside the list is a change either way.
        ("level", "renamed", {"upstreams": "changed"}, {"upstreams": "changed"}),
        ("renamed", "rotated", {"upstreams": "changed"}, {"upstreams": "unknown"}),
        ("first", "first", {}, {}),  # one stored version against itself: one seal, nothing to compare
    ],
)
async def test_a_diff_without_the_key_says_what_it_cannot_compare_and_never_calls_it_a_change(
    database_url: str,
    tmp_path: Path,
    older: str,
    newer: str,
    keyed: dict[str, str],
    keyless: dict[str, str],
) -> None:
    cipher = SecretCipher([SecretCipher.generate_key()])
    hashes = await stored(database_url, tmp_path, cipher)
    with LogInspector.open(database_url) as inspector:
        with_key = inspector.diff(hashes[older], hashes[newer], cipher)
        without = inspector.diff(hashes[older], hashes[newer], None)
    assert {change["path"]: change["kind"] for change in with_key["changes"]} == keyed
    assert {change["path"]: change["kind"] for change in without["changes"]} == keyless
    for change in without["changes"]:
        if change["kind"] == "unknown":
            assert change["old"] == change["new"] == CANNOT_COMPARE
    assert SECRET not in json.dumps([with_key, without], default=str)


def _times_in(document: object, path: str = "") -> list[tuple[str, str]]:
    """Every (path, text) of ``document`` that is a time, outside config bodies."""
    if isinstance(document, dict):
        return [
            found
            for key, value in document.items()
            if key != "config"
            for found in _times_in(value, f"{path}.{key}")
        ]
    if isinstance(document, list):
        return [
            found for index, value in enumerate(document) for found in _times_in(value, f"{path}[{index}]")
        ]
    if isinstance(document, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", document):
        return [(path, document)]
    return []


async def test_every_time_the_inspector_answers_is_written_one_way(database_url: str, tmp_path: Path) -> None:
    # The typed parts (pydantic) end in Z; the parts built as dicts ended in +00:00, within one document.
    hashes = await stored(database_url, tmp_path, SecretCipher([SecretCipher.generate_key()]))
    with LogInspector.open(database_url) as inspector:
        documents = {
            "status": inspector.status(),
            "timeline": inspector.timeline(datetime(2000, 1, 1, tzinfo=UTC), None),
            "until_hash": inspector.replay_until_hash(hashes["level"]),
        }
    times = [found for name, document in documents.items() for found in _times_in(document, name)]
    assert {path.split(".")[0] for path, _ in times} == set(documents)
    assert [found for found in times if not found[1].endswith("Z")] == []
