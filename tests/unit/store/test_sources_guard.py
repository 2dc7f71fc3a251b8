"""store.sources.reading's SourceGuard: a client-named file is checked by the descriptor it is read from.

Real files, directories and symlinks under tmp_path; the swap race itself is
tests/integration/api/test_source_race.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from confledger.store.errors import NotAllowed, SourceError, SourceNotAllowed
from confledger.store.sources import load_source, reading
from confledger.store.sources.reading import GuardedSource, SourceGuard


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    conf, outside = tmp_path / "conf", tmp_path / "outside"
    (conf / "sub").mkdir(parents=True)
    outside.mkdir()
    (tmp_path / "conf-evil").mkdir()
    (conf / "app.json").write_text('{"where": "inside"}', encoding="utf-8")
    (conf / "sub" / "nested.json").write_text('{"where": "nested"}', encoding="utf-8")
    (outside / "secret.json").write_text('{"where": "outside"}', encoding="utf-8")
    (tmp_path / "conf-evil" / "x.json").write_text('{"where": "sibling"}', encoding="utf-8")
    (conf / "alias.json").symlink_to(conf / "app.json")  # a link that stays inside
    (conf / "link.json").symlink_to(outside / "secret.json")  # a link that leads out
    (conf / "dirlink").symlink_to(outside, target_is_directory=True)  # a directory that leads out
    (conf / "evil.json").symlink_to(tmp_path / "conf-evil" / "x.json")  # shares the string prefix
    return {"root": tmp_path, "conf": conf, "outside": outside}


def guard_of(layout: dict[str, Path]) -> SourceGuard:
    return SourceGuard.of([layout["conf"]])


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("app.json", "inside"),  # a plain file inside
        ("sub/nested.json", "nested"),  # in a subdirectory
        ("alias.json", "inside"),  # through a link whose target is inside
    ],
)
def test_a_file_opened_inside_is_read(layout: dict[str, Path], name: str, where: str) -> None:
    loaded = load_source(layout["conf"] / name, guard=guard_of(layout))
    assert loaded.body == {"where": where}


@pytest.mark.parametrize(
    "name",
    [
        "link.json",  # a link to a file outside
        "dirlink/secret.json",  # through a linked directory outside
        "evil.json",  # a sibling directory sharing the allowed one's name as a string prefix
    ],
)
def test_a_file_opened_outside_is_refused_without_saying_where(layout: dict[str, Path], name: str) -> None:
    with pytest.raises(SourceNotAllowed) as info:
        load_source(layout["conf"] / name, guard=guard_of(layout))
    assert info.value.code == "source_not_allowed"
    assert isinstance(info.value, NotAllowed)
    assert str(layout["outside"]) not in str(info.value)
    assert "conf-evil" not in str(info.value)


def test_without_a_guard_the_configured_source_may_be_a_link_anywhere(layout: dict[str, Path]) -> None:
    # The service's own source (a ConfigMap's ..data link) is followed wherever it leads.
    assert load_source(layout["conf"] / "link.json").body == {"where": "outside"}


def test_a_guarded_source_keeps_its_guard_when_passed_as_a_path(layout: dict[str, Path]) -> None:
    source = GuardedSource(str(layout["conf"] / "link.json"), guard_of(layout))
    assert os.fspath(source) == str(source) == str(layout["conf"] / "link.json")
    with pytest.raises(SourceNotAllowed):
        load_source(source)


def test_a_missing_file_is_not_found_even_under_a_guard(layout: dict[str, Path]) -> None:
    with pytest.raises(SourceError) as info:
        load_source(layout["conf"] / "new.json", guard=guard_of(layout))
    assert info.value.code == "not_found"


def raising(*args: Any) -> str | None:
    raise OSError(2, "No such file or directory")  # /proc is not mounted


@pytest.mark.parametrize(
    "opened_path",
    [
        lambda fd: None,  # a platform that cannot tell where a descriptor's file lies
        raising,  # the lookup itself fails
        lambda fd: "anon_inode:[eventfd]",  # not a path at all
    ],
)
def test_a_file_whose_place_cannot_be_told_is_refused(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch, opened_path: Callable[[int], str | None]
) -> None:
    monkeypatch.setattr(reading, "_opened_path", opened_path)
    with pytest.raises(SourceNotAllowed, match=r"unknown|outside"):
        load_source(layout["conf"] / "app.json", guard=guard_of(layout))


@pytest.mark.parametrize(
    ("path", "admitted"),
    [
        ("/srv/conf/app.yaml", True),  # inside
        ("/srv/conf", True),  # the directory itself
        ("/srv/conf/a/b/c.yaml", True),  # deep inside
        ("/srv/conf-evil/app.yaml", False),  # a string prefix, not a path prefix
        ("/srv/app.yaml", False),  # beside it
        ("/srv/conf/app.yaml (deleted)", True),  # replaced after it was opened: still where it was
        ("relative/app.yaml", False),  # not a path the kernel gives for a file
    ],
)
def test_admits_compares_path_components(path: str, admitted: bool) -> None:
    assert SourceGuard(("/srv/conf",)).admits(path) is admitted


def test_a_guard_holds_the_real_directories(layout: dict[str, Path]) -> None:
    linked = layout["root"] / "conf-link"
    linked.symlink_to(layout["conf"], target_is_directory=True)
    assert SourceGuard.of([linked]).roots == (os.path.realpath(layout["conf"]),)


_WITHOUT_A_TERMINAL = """
import os, sys
from confledger.store.sources import load_source
from confledger.store.errors import SourceError

os.setsid()  # a session leader with no controlling terminal, as a service under systemd is
leader, follower = os.openpty()
link = os.path.join(sys.argv[1], "config.yaml")
os.symlink(os.ttyname(follower), link)
try:
    load_source(link)
except SourceError as refused:
    print(refused.code)
try:
    os.close(os.open("/dev/tty", os.O_RDONLY))
    print("took the terminal")
except OSError:
    print("no terminal")
"""


@pytest.mark.skipif(not hasattr(os, "openpty") or not hasattr(os, "setsid"), reason="POSIX terminals")
def test_a_source_that_is_a_terminal_is_refused_without_becoming_the_controlling_terminal(
    tmp_path: Path,
) -> None:
    # Its hangup would send the service SIGHUP (a reload) long after the refusal.
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_A_TERMINAL, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.split() == ["not_a_file", "no", "terminal"], result.stderr
