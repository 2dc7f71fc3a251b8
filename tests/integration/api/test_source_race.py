"""A client-named ``config_source`` under a swap race: the file read is the file checked (issue 13, item 5).

A thread swaps a directory inside the allowed directory with a symlink to a directory outside it, as
fast as it can, while 200 reload requests name a file in that directory. Before the fix the allow-list
checked the name and the load read whatever the name led to a moment later: 42 of 150 requests loaded
the outside file (recorded as the inside path) and 35 answered 500 from ``realpath``'s ``OSError``.
Now the load checks the descriptor it reads, so no request may load the outside file and none may
answer 500, on both backends, with either kind of swap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from confledger.store.events import ConfigApplied, ConfigLoaded, ConfigLoadFailed, OperationRejected
from tests.integration.api.service_harness import Service, full_hash_of, serving, variant, write_config

REQUESTS = 200
RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def _renameat2() -> Callable[[bytes, bytes], int] | None:
    """``renameat2(..., RENAME_EXCHANGE)`` through ctypes (glibc 2.28+ on Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda first, second: int(function(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE))


RENAMEAT2 = _renameat2()


@contextmanager
def swapping(step: Callable[[], None]) -> Iterator[Counter[str]]:
    """Run ``step`` in a loop on a thread for the duration of the block; count the swaps made."""
    stop = threading.Event()
    counts: Counter[str] = Counter()

    def loop() -> None:
        while not stop.is_set():
            step()
            counts["swaps"] += 1

    thread = threading.Thread(target=loop, name="swapper", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(timeout=10)


def exchange_step(conf: Path, outside: Path) -> Callable[[], None]:
    """``conf/sub`` (a directory) and ``conf/swap`` (a link to ``outside``) trade places atomically."""
    assert RENAMEAT2 is not None
    (conf / "swap").symlink_to(outside, target_is_directory=True)
    first, second = os.fsencode(conf / "sub"), os.fsencode(conf / "swap")

    def step() -> None:
        if RENAMEAT2(first, second) != 0:
            raise OSError(ctypes.get_errno(), "renameat2(RENAME_EXCHANGE) failed")

    return step


def relink_step(conf: Path, outside: Path) -> Callable[[], None]:
    """``conf/sub`` (a directory) is moved aside and a symlink to ``outside`` put in its place, then back.

    Two renames and a symlink, none of them an exchange: between them the name is missing (the load
    answers ``not_found``), a directory, or a link leading out.
    """
    sub, aside = conf / "sub", conf / ".sub.aside"
    state = {"linked": False}

    def step() -> None:
        if state["linked"]:
            sub.unlink()
            aside.rename(sub)
        else:
            sub.rename(aside)
            sub.symlink_to(outside, target_is_directory=True)
        state["linked"] = not state["linked"]

    return step


SWAPS = [
    # a directory and a symlink exchanged in one atomic step (the reproduction)
    pytest.param(
        exchange_step,
        id="rename-exchange",
        marks=pytest.mark.skipif(RENAMEAT2 is None, reason="renameat2 is Linux-only"),
    ),
    # the directory moved aside and a symlink made in its place, then undone (portable, not atomic)
    pytest.param(relink_step, id="symlink-swap"),
]


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[Service]:
    with serving(tmp_path, database_url) as running:
        yield running


@pytest.mark.parametrize("make_step", SWAPS)
def test_no_request_loads_a_file_swapped_in_from_outside(
    service: Service, tmp_path: Path, make_step: Callable[[Path, Path], Callable[[], None]]
) -> None:
    conf = service.source.parent
    # Neither is the config the service starts on (production): "never current" would hold for nothing
    # whenever every request met the swap and none loaded the inside file.
    inside_body, outside_body = variant(environment="staging"), variant(environment="development")
    outside = tmp_path / "outside"
    for directory in (conf / "sub", outside):
        directory.mkdir()
    write_config(conf / "sub" / "app.yaml", inside_body)
    write_config(outside / "app.yaml", outside_body)
    outside_sha = hashlib.sha256((outside / "app.yaml").read_bytes()).hexdigest()
    step = make_step(conf, outside)
    head_before = service.log.head()

    answers: Counter[int] = Counter()
    with swapping(step) as swaps:
        for _ in range(REQUESTS):
            response = service.post("/reload", json={"config_source": "sub/app.yaml"})
            answers[response.status_code] += 1
            if response.status_code == 403:
                assert "not allowed" in response.json()["detail"], response.text

    events = service.log.read(head_before)
    loaded = [e.payload for e in events if isinstance(e.payload, ConfigLoaded)]
    applied = {e.payload.hash for e in events if isinstance(e.payload, ConfigApplied)}
    refused_at_load = [
        e.payload
        for e in events
        if isinstance(e.payload, ConfigLoadFailed) and e.payload.reason == "source_not_allowed"
    ]
    refused_by_name = [e.payload for e in events if isinstance(e.payload, OperationRejected)]
    # The outside file was never read: no load of its bytes, never applied, never current.
    # (Its bytes' digest is left out of config.loaded for a config with secrets: its config hash says it.)
    assert all(payload.input_sha256 != outside_sha for payload in loaded)
    assert full_hash_of(outside_body, service.log) not in {payload.hash for payload in loaded}
    assert full_hash_of(outside_body, service.log) not in applied
    assert service.current_full_hash() != full_hash_of(outside_body, service.log)
    # Every request got a clean answer: the inside file (or not_found mid-swap), or a recorded 403.
    assert answers[500] == 0
    assert set(answers) <= {200, 403}
    assert answers[403] == len(refused_at_load) + len(refused_by_name)
    # The swaps really raced the requests: some requests met the outside directory.
    assert swaps["swaps"] > 0
    assert answers[403] > 0
    print(  # the figures of the race, shown with -s
        f"\n{REQUESTS} requests, {swaps['swaps']} swaps: {len(loaded)} loaded the inside file, "
        f"{answers[200] - len(loaded)} found no file mid-swap, {len(refused_by_name)} refused by name (403), "
        f"{len(refused_at_load)} refused at the opened file (403), {answers[500]} answered 500"
    )
