"""Torn and swapped config files under a real ``confledger serve``: no partial file is ever applied, and
the final content is applied exactly once.

Each case rewrites the served file one way (in place in slow pieces, truncated then written, renamed
over, swapped the way Kubernetes swaps a ConfigMap's ``..data`` symlink, deleted and recreated) while a
trigger pokes the service: the file watcher alone, a SIGHUP after every piece, or ``POST /reload``.
The example YAML is the file on purpose: nearly every prefix of it that ends at a line is a valid config
of its own (every field has a default), so a half-written file read by a reload would be applied.

After each case: every ``config.applied`` since the case began names the final content's hash, exactly
once; the service runs it; and ``invariants.check_nothing_lost`` holds for the whole log.

An explicit ``POST /reload`` reads the file as it is (its caller says the file is ready), so it pokes
during atomic replacements only (a rename or a symlink swap, which no reader can see half-done) and
after an in-place rewrite; a SIGHUP waits for the file to be still (``SOURCE_QUIET_S``), so it pokes
after every piece of an in-place rewrite.

One service per backend and layout (a plain file; a ConfigMap-style symlinked directory) serves every
case of this module. Size knob ``CONFLEDGER_TEST_SCALE`` (float, default 1): rounds of each case
(``max(1, round(SCALE))``), and above 1 every change with every trigger (``FULL_SCALE_CASES``); full
scale is 20 (20 rounds of each of the 15 cases per backend).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from confledger.store.events import ConfigApplied
from tests.conftest import _pg_admin_engine, make_pg_schema_url, require_postgres
from tests.integration.api.service_harness import EXAMPLE_CONFIG, full_hash_of, variant
from tests.reliability.invariants import reply_from_response
from tests.reliability.serve_harness import Served, running_serve
from tests.scale import SCALE

ROUNDS = max(1, round(SCALE))
PIECE = 64  # bytes per in-place write: the example config takes about 15 pieces
PIECE_GAP_S = 0.02  # well under the service's settle time, so a slow write is one change in progress
_ttl = itertools.count(10_000)

Poke = Callable[[], None]


def _pieces(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


# --- the ways a file changes (each calls ``poke`` while the change is under way and once it is done) ---


def in_place_slow(served: Served, data: bytes, poke: Poke) -> None:
    """The same inode truncated and rewritten piece by piece (an editor or ``cat >``, slowly)."""
    with open(os.path.realpath(served.config), "r+b") as file:
        file.truncate(0)
        for piece in _pieces(data):
            file.write(piece)
            file.flush()
            poke()
            time.sleep(PIECE_GAP_S)


def truncate_then_write(served: Served, data: bytes, poke: Poke) -> None:
    """Emptied first (a pause with an empty file), then written in two halves."""
    with open(os.path.realpath(served.config), "r+b") as file:
        file.truncate(0)
        file.flush()
        poke()
        time.sleep(0.05)
        half = len(data) // 2
        for part in (data[:half], data[half:]):
            file.write(part)
            file.flush()
            poke()
            time.sleep(PIECE_GAP_S)


def rename_over(served: Served, data: bytes, poke: Poke) -> None:
    """A temp file in the same directory renamed over the config (atomic)."""
    target = Path(os.path.realpath(served.config))
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}")
    with open(temporary, "wb") as file:
        for piece in _pieces(data):
            file.write(piece)
            file.flush()
            poke()
            time.sleep(PIECE_GAP_S)
    os.replace(temporary, target)
    poke()


def delete_and_recreate(served: Served, data: bytes, poke: Poke) -> None:
    """Removed, missing for a moment, then created anew and written in pieces."""
    target = os.path.realpath(served.config)
    os.remove(target)
    poke()
    time.sleep(0.05)
    with open(target, "wb") as file:
        for piece in _pieces(data):
            file.write(piece)
            file.flush()
            poke()
            time.sleep(PIECE_GAP_S)


def configmap_swap(served: Served, data: bytes, poke: Poke) -> None:
    """What the kubelet does: the new files in a fresh timestamped directory, then ``..data`` (a symlink
    to the old directory) atomically replaced by a symlink to the new one, then the old one removed."""
    root = served.config.parent
    old = root / os.readlink(root / "..data")
    fresh = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
    fresh.mkdir()
    with open(fresh / served.config.name, "wb") as file:
        for piece in _pieces(data):
            file.write(piece)
            file.flush()
            poke()
            time.sleep(PIECE_GAP_S)
    link = root / "..data_tmp"
    link.symlink_to(fresh.name)
    os.replace(link, root / "..data")
    poke()
    shutil.rmtree(old)
    poke()


def _configmap_layout(directory: Path) -> Path:
    """``config.yaml -> ..data/config.yaml``, ``..data -> ..<timestamp>``, as a ConfigMap volume looks."""
    directory.mkdir(parents=True)
    first = directory / "..2026_01_01_00_00_00.000000000"
    first.mkdir()
    (first / "config.yaml").write_bytes(EXAMPLE_CONFIG.read_bytes())
    (directory / "..data").symlink_to(first.name)
    (directory / "config.yaml").symlink_to("..data/config.yaml")
    return directory / "config.yaml"


# --- one service per backend and layout, shared by the cases ------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"torn-{backend}")
    schemas: list[str] = []

    def url_for(layout: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{workdir / f'{layout}.db'}"
        schema = f"torn_{uuid.uuid4().hex[:12]}"
        with _pg_admin_engine().connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        return make_pg_schema_url(schema)

    if backend == "postgres":
        require_postgres()
    plain_dir = workdir / "plain"
    plain_dir.mkdir()
    plain = plain_dir / "config.yaml"
    plain.write_bytes(EXAMPLE_CONFIG.read_bytes())
    configmap = _configmap_layout(workdir / "configmap")
    configmap_run = workdir / "configmap-run"  # serve's output and SQLite log beside, not inside, the volume
    configmap_run.mkdir()
    try:
        with (
            running_serve(plain_dir, url_for("plain"), config=plain) as on_plain,
            running_serve(configmap_run, url_for("configmap"), config=configmap) as on_configmap,
        ):
            yield {"plain": on_plain, "configmap": on_configmap}
    finally:
        for schema in schemas:
            with _pg_admin_engine().connect() as connection:
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


CASES = [
    # (layout, how the file changes, trigger); the file watcher runs in every case
    ("plain", in_place_slow, "watch"),  # the watcher alone must wait for the last piece
    ("plain", in_place_slow, "sighup"),  # a SIGHUP after every piece: each waits for the file to be still
    ("plain", in_place_slow, "api_after"),  # an explicit reload once the writer is done
    ("plain", truncate_then_write, "sighup"),  # an empty file in between is never a config
    ("plain", rename_over, "api"),  # explicit reloads during a rename: old or new, never a mix
    ("plain", delete_and_recreate, "watch"),  # a missing file fails a reload, never empties the config
    ("configmap", configmap_swap, "watch"),  # the watcher follows the ..data swap
    ("configmap", configmap_swap, "sighup"),
]
# Above the CI size, every remaining change with every trigger.
FULL_SCALE_CASES = [
    ("plain", truncate_then_write, "watch"),
    ("plain", rename_over, "watch"),
    ("plain", rename_over, "sighup"),
    ("plain", delete_and_recreate, "sighup"),
    ("configmap", configmap_swap, "api"),
    ("configmap", in_place_slow, "sighup"),  # written in place through both symlinks
    ("configmap", in_place_slow, "watch"),
]
if SCALE > 1:
    CASES += FULL_SCALE_CASES


@pytest.mark.parametrize(
    ("layout", "change", "trigger"),
    CASES,
    ids=[f"{layout}-{change.__name__}-{trigger}" for layout, change, trigger in CASES],
)
def test_no_partial_file_is_applied_and_the_final_one_exactly_once(
    services: dict[str, Served], layout: str, change: Callable[[Served, bytes, Poke], None], trigger: str
) -> None:
    served = services[layout]
    replies = []

    def reload_by_api() -> None:
        replies.append(reply_from_response(served.client.post("/api/v1/config/reload", json={})))

    poke: Poke = {
        "watch": lambda: None,
        "sighup": served.sighup,
        "api": reload_by_api,
        "api_after": lambda: None,
    }[trigger]

    for _ in range(ROUNDS):
        served.settle()
        head = served.log.head()
        final = variant(cache__ttl_seconds=next(_ttl))
        change(served, yaml.safe_dump(final, sort_keys=False).encode(), poke)
        if trigger in ("sighup", "api_after", "api"):
            (reload_by_api if trigger != "sighup" else served.sighup)()
        served.wait_for_current(full_hash_of(final, served.log))
        served.settle()

        applied = [
            event.payload.hash
            for event in served.log.iter_events(head)
            if isinstance(event.payload, ConfigApplied)
        ]
        assert applied == [full_hash_of(final, served.log)], (
            f"applied since position {head}: {[h[:12] for h in applied]}, final {full_hash_of(final, served.log)[:12]}\n"
            + served.output()[-3000:]
        )
        served.check(replies)
    # 409: the watcher's reload of the same change was running; never a 5xx.
    assert {reply.status_code for reply in replies} <= {200, 409}, replies
