"""store.sources.reading.quiet_remaining: how much longer a file must stay still before a SIGHUP reads it.

Real files; the figures asserted have seconds of slack, so a slow machine cannot make them flaky.
"""

from __future__ import annotations

import os
from pathlib import Path

from confledger.store.sources.reading import quiet_remaining


def test_a_file_just_written_is_not_yet_quiet_and_the_wait_is_bounded_by_the_quiet_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n", encoding="utf-8")
    left = quiet_remaining(path, 30.0)
    assert 0 < left <= 30.0


def test_the_change_time_through_a_symlink_is_the_target_file_s(tmp_path: Path) -> None:
    # A ConfigMap's config.yaml is a symlink into a timestamped directory: the file read is the target.
    target = tmp_path / "..2026_01_01" / "config.yaml"
    target.parent.mkdir()
    target.write_text("a: 1\n", encoding="utf-8")
    link = tmp_path / "config.yaml"
    link.symlink_to(os.path.relpath(target, tmp_path))
    assert 0 < quiet_remaining(link, 30.0) <= 30.0


def test_a_file_that_cannot_be_stat_ed_is_left_for_the_read_to_report(tmp_path: Path) -> None:
    assert quiet_remaining(tmp_path / "missing.yaml", 30.0) == 0.0
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    assert quiet_remaining(dangling, 30.0) == 0.0


def test_no_quiet_time_asked_means_no_wait(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n", encoding="utf-8")
    assert quiet_remaining(path, 0.0) == 0.0
