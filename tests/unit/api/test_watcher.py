"""The file watcher (``api/watcher.py``) on real files: each way a file changes reaches ``on_change`` once,
with the file whole when it is read, and a writer that pauses longer than the settle time is waited for.

Every case runs with inotify's own events (Linux) and with watchfiles polling, the two ways the watcher
learns of a change; what ``on_change`` reads is recorded at the moment it is called, as a reload would.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from confledger.api.watcher import FileWatcher, changed_since

pytestmark = pytest.mark.anyio

WHOLE = b"name: whole\n" + b"".join(b"key_%d: %d\n" % (n, n) for n in range(40))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def in_place(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(WHOLE)


def in_place_at_the_far_end(path: Path) -> None:
    # Through the symlinks, in pieces: no event of the watched directory reaches the watcher.
    with open(os.path.realpath(path), "r+b") as file:
        file.truncate(0)
        for start in range(0, len(WHOLE), 64):
            file.write(WHOLE[start : start + 64])
            file.flush()
            time.sleep(0.01)


def in_place_with_a_long_pause(path: Path) -> None:
    # Paused four times the settle time between two halves, the file open all along: only its close
    # says the write is done.
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(WHOLE[:100])
        file.flush()
        time.sleep(0.4)
        file.write(WHOLE[100:])


def renamed_over(path: Path) -> None:
    spare = path.with_name(f".{path.name}.tmp")
    spare.write_bytes(WHOLE)
    os.replace(spare, path)


def written_then_appended(path: Path) -> None:
    # A script's ``echo ... > file`` then ``echo ... >> file``: two writers, one after the other.
    half = WHOLE.index(b"key_20")
    path.write_bytes(WHOLE[:half])
    with open(path, "ab") as file:
        file.write(WHOLE[half:])


def deleted_and_recreated(path: Path) -> None:
    path.unlink()
    time.sleep(0.05)
    path.write_bytes(WHOLE)


def moved_to_a_backup_then_written(path: Path) -> None:
    # An editor's save: the old file renamed to its backup name, a new one written in its place.
    os.replace(path, path.with_name(path.name + "~"))
    with open(path, "wb") as file:
        file.write(WHOLE[:100])
        file.flush()
        time.sleep(0.02)
        file.write(WHOLE[100:])


def symlink_swapped(path: Path) -> None:
    # A ConfigMap's ``..data`` link replaced by one to a fresh directory, atomically.
    root = path.parent
    fresh = root / "..2026_02"
    fresh.mkdir()
    (fresh / path.name).write_bytes(WHOLE)
    (root / "..data_tmp").symlink_to(fresh.name)
    os.replace(root / "..data_tmp", root / "..data")


INOTIFY = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")

CHANGES = [
    # (case, the change, whether the watched file is a ConfigMap-style symlink, the watcher's modes)
    ("in place", in_place, False, ("inotify", "polling")),
    # Polling can only wait for the file to be still: a writer's pause longer than that is its limit.
    ("in place, paused longer than the settle time", in_place_with_a_long_pause, False, ("inotify",)),
    ("renamed over", renamed_over, False, ("inotify", "polling")),
    ("written then appended", written_then_appended, False, ("inotify", "polling")),
    ("deleted and recreated", deleted_and_recreated, False, ("inotify", "polling")),
    ("moved to a backup, then written anew", moved_to_a_backup_then_written, False, ("inotify", "polling")),
    ("ConfigMap symlink swap", symlink_swapped, True, ("inotify", "polling")),
    ("ConfigMap, rewritten in place at its far end", in_place_at_the_far_end, True, ("inotify", "polling")),
]

CASES = [
    pytest.param(
        change,
        configmap,
        mode == "polling",
        id=f"{case}-{mode}",
        marks=[INOTIFY] if mode == "inotify" else [],
    )
    for case, change, configmap, modes in CHANGES
    for mode in modes
]


def layout(directory: Path, configmap: bool) -> Path:
    path = directory / "config.yaml"
    if not configmap:
        path.write_bytes(b"name: first\n")
        return path
    first = directory / "..2026_01"
    first.mkdir()
    (first / path.name).write_bytes(b"name: first\n")
    (directory / "..data").symlink_to(first.name)
    path.symlink_to(f"..data/{path.name}")
    return path


@pytest.mark.parametrize(("change", "configmap", "force_polling"), CASES)
async def test_a_change_reaches_on_change_once_and_whole(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[Path], None],
    configmap: bool,
    force_polling: bool,
) -> None:
    path = layout(tmp_path, configmap)
    read: list[bytes] = []
    arrived = anyio.Event()

    async def on_change() -> None:
        read.append(path.read_bytes())
        if read[-1] == WHOLE:
            arrived.set()

    watcher = FileWatcher(path, on_change, poll_interval=0.1, force_polling=force_polling)
    async with anyio.create_task_group() as group:
        await group.start(watcher.run)
        await anyio.sleep(0.1)  # watchfiles arms its watch after ``run`` has started
        writer = threading.Thread(target=change, args=(path,))
        writer.start()
        with anyio.fail_after(15):
            await arrived.wait()
        await anyio.to_thread.run_sync(writer.join)
        await anyio.sleep(0.5)  # a second, late call would land here
        watcher.stop()
    assert read == [WHOLE]
    # A file gone for a moment, on its way to being replaced, is not reported as gone.
    assert "disappeared" not in caplog.text


async def test_stop_ends_the_watch_at_once(tmp_path: Path) -> None:
    path = layout(tmp_path, configmap=False)

    async def on_change() -> None:
        raise AssertionError("nothing changed")

    # A recheck far away: only stop() can end the wait in time (the time allowed is for a loaded machine
    # to start the watch; it is well short of the recheck).
    watcher = FileWatcher(path, on_change, poll_interval=60)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            await group.start(watcher.run)
            await anyio.sleep(0.05)
            watcher.stop()
    assert not watcher.running


async def test_a_directory_replaced_is_watched_afresh(tmp_path: Path) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    path = layout(directory, configmap=False)
    seen = anyio.Event()

    async def on_change() -> None:
        if path.read_bytes() == WHOLE:
            seen.set()

    watcher = FileWatcher(path, on_change, poll_interval=0.5)
    async with anyio.create_task_group() as group:
        await group.start(watcher.run)
        await anyio.sleep(0.05)
        # Deleted and recreated under the same name: the old watch follows the old inode.
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()
        await anyio.sleep(0.1)
        directory.mkdir()
        (directory / "config.yaml").write_bytes(WHOLE)
        with anyio.fail_after(15):
            await seen.wait()
        watcher.stop()


@pytest.mark.parametrize(
    ("asked_before_the_change", "fails_first", "reloads"),
    [
        (True, False, 1),  # changed after the moment it was asked to watch from: reloaded as it starts
        (True, True, 2),  # that reload failed: retried at the next check, as any failed reload is
        (False, False, 0),  # changed before that moment: not this watcher's to reload
    ],
)
async def test_a_watcher_reloads_a_change_made_since_the_moment_it_watches_from(
    tmp_path: Path, asked_before_the_change: bool, fails_first: bool, reloads: int
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(WHOLE)
    moment = datetime.now(UTC) + (timedelta(seconds=-5) if asked_before_the_change else timedelta(seconds=5))
    calls: list[bytes] = []

    async def on_change() -> None:
        calls.append(path.read_bytes())
        if fails_first and len(calls) == 1:
            raise RuntimeError("the log is away")

    # No change happens while it runs: only the one made before it started can be reloaded.
    watcher = FileWatcher(path, on_change, poll_interval=0.5, changed_after=moment)
    async with anyio.create_task_group() as group:
        await group.start(watcher.run)
        # The reloads expected, however long a loaded machine takes to the next check; then three more
        # checks, in which a reload too many would land.
        with anyio.fail_after(15):
            while len(calls) < reloads:
                await anyio.sleep(0.01)
        await anyio.sleep(1.5)
        watcher.stop()
    assert calls == [WHOLE] * reloads


def test_changed_since_counts_a_change_at_or_after_the_moment_and_one_just_before_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    written = datetime.fromtimestamp(config.stat().st_ctime_ns / 1e9, UTC)
    assert changed_since(config, written)
    assert changed_since(config, written + timedelta(milliseconds=20))  # the kernel's clock is coarse
    assert not changed_since(config, written + timedelta(seconds=1))
    assert not changed_since(tmp_path / "missing.yaml", written)


def test_changed_since_sees_a_symlink_swapped_to_a_file_made_before_the_moment(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("a: 1\n")
    new.write_text("a: 2\n")
    link = tmp_path / "config.yaml"
    link.symlink_to(old)
    swapped = tmp_path / ".config.yaml.tmp"
    swapped.symlink_to(new)
    time.sleep(0.2)  # both files are older than the moment by more than the clock's slack
    moment = datetime.now(UTC)
    assert not changed_since(link, moment)
    os.replace(swapped, link)  # the swap is the change: the file it now names is as old as before
    assert changed_since(link, moment)
