"""api.paths: the allow-list a client-supplied config path must pass before anything reads it.

Every test uses real directories, files and symlinks under tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from confledger.api.paths import resolve_source
from confledger.store.errors import NotAllowed, SourceNotAllowed
from confledger.store.sources import load_source


def write(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    conf = tmp_path / "conf"
    write(conf, "app.yaml", "a: 1\n")
    write(conf, "sub/nested.json", "{}")
    write(tmp_path / "conf-evil", "x.yaml", "a: 1\n")  # shares the string prefix "…/conf"
    write(tmp_path / "outside", "secret.yaml", "a: 1\n")
    write(tmp_path / "more", "extra.toml", "a = 1\n")
    (conf / "link.yaml").symlink_to(tmp_path / "outside" / "secret.yaml")
    (conf / "dirlink").symlink_to(tmp_path / "outside")
    (conf / "alias.yaml").symlink_to(conf / "app.yaml")
    return {"root": tmp_path, "conf": conf, "more": tmp_path / "more"}


def traversal_requests(root: Path) -> list[str]:
    conf = root / "conf"
    return [
        "../etc/passwd",  # plain traversal
        "../../../../../../etc/passwd",
        "%2e%2e%2fetc%2fpasswd",  # percent-encoded traversal
        "%2E%2E/etc/passwd",
        "%252e%252e%252fetc%252fpasswd",  # double encoding
        "%25252e%25252e%25252f",  # triple encoding
        "/etc/passwd",  # absolute, outside
        str(root / "conf-evil" / "x.yaml"),  # sibling directory sharing the string prefix
        str(root / "outside" / "secret.yaml"),
        str(conf) + "/../outside/secret.yaml",  # absolute with ..
        "sub/../app.yaml",  # .. that would land inside is refused too
        "sub/../../outside/secret.yaml",
        "..\\outside\\secret.yaml",  # Windows separators
        "a\x00b",  # NUL byte
        "app.yaml\x00.json",
        "a%00b",  # encoded NUL
        "link.yaml",  # symlink inside pointing outside
        "dirlink/secret.yaml",  # symlinked directory pointing outside
        "",  # empty
        "   ",
        "%20",  # encoded blank
        "..",
        "/",
    ]


def test_resolve_source_refuses_traversal(layout: dict[str, Path]) -> None:
    for request in traversal_requests(layout["root"]):
        with pytest.raises(SourceNotAllowed) as info:
            resolve_source(request, allowed_dirs=[layout["conf"]])
        assert info.value.code == "source_not_allowed", request
        assert isinstance(info.value, NotAllowed)


@pytest.mark.parametrize(
    ("request_of", "expected_of"),
    [
        # a plain relative name, relative to the first allowed directory
        (lambda d: "app.yaml", lambda d: d["conf"] / "app.yaml"),
        # an absolute path inside
        (lambda d: str(d["conf"] / "app.yaml"), lambda d: d["conf"] / "app.yaml"),
        # a subdirectory
        (lambda d: "sub/nested.json", lambda d: d["conf"] / "sub" / "nested.json"),
        # single percent-encoding is decoded once
        (lambda d: "sub%2Fnested.json", lambda d: d["conf"] / "sub" / "nested.json"),
        # ./ is harmless
        (lambda d: "./app.yaml", lambda d: d["conf"] / "app.yaml"),
        # a symlink that stays inside resolves to its target
        (lambda d: "alias.yaml", lambda d: d["conf"] / "app.yaml"),
        # the second allowed directory, by absolute path
        (lambda d: str(d["more"] / "extra.toml"), lambda d: d["more"] / "extra.toml"),
        # a file that does not exist yet still resolves (load_source says not_found)
        (lambda d: "new.yaml", lambda d: d["conf"] / "new.yaml"),
    ],
)
def test_resolve_source_accepts_paths_inside(
    layout: dict[str, Path], request_of: Any, expected_of: Any
) -> None:
    resolved = resolve_source(request_of(layout), allowed_dirs=[layout["conf"], str(layout["more"])])
    assert resolved.path == os.path.realpath(expected_of(layout))
    # the allowed directories travel with the path, as real paths, for the load to check what it opens
    assert resolved.guard.roots == (os.path.realpath(layout["conf"]), os.path.realpath(layout["more"]))


def test_resolve_source_relative_to_base_dir(layout: dict[str, Path]) -> None:
    resolved = resolve_source(
        "extra.toml", allowed_dirs=[layout["conf"], layout["more"]], base_dir=layout["more"]
    )
    assert resolved.path == os.path.realpath(layout["more"] / "extra.toml")
    # base_dir does not widen the allow-list
    with pytest.raises(SourceNotAllowed):
        resolve_source("secret.yaml", allowed_dirs=[layout["conf"]], base_dir=layout["root"] / "outside")


def test_resolve_source_message_is_short(layout: dict[str, Path]) -> None:
    request = "A" * 5000 + "/../x"
    with pytest.raises(SourceNotAllowed) as info:
        resolve_source(request, allowed_dirs=[layout["conf"]])
    assert len(str(info.value)) < 200
    # the real location of a symlink target is not revealed either
    with pytest.raises(SourceNotAllowed) as info:
        resolve_source("link.yaml", allowed_dirs=[layout["conf"]])
    assert str(layout["root"]) not in str(info.value)


def test_resolve_source_needs_a_list_of_dirs(layout: dict[str, Path]) -> None:
    with pytest.raises(TypeError):
        resolve_source("app.yaml", allowed_dirs=str(layout["conf"]))
    with pytest.raises(SourceNotAllowed):
        resolve_source("app.yaml", allowed_dirs=[])


def test_a_path_that_cannot_be_resolved_is_refused_not_raised(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What realpath raises when a link it has just seen is swapped for a directory (readlink: EINVAL):
    # a refusal with a reason, never an OSError (an HTTP 500).
    def swapped(path: Any, *args: Any, **kwargs: Any) -> str:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os.path, "realpath", swapped)
    with pytest.raises(SourceNotAllowed, match="could not be resolved"):
        resolve_source("app.yaml", allowed_dirs=[layout["conf"]])


def test_a_symlink_swapped_in_after_the_check_is_refused_by_the_load(layout: dict[str, Path]) -> None:
    # The check of the name passes; then the file is replaced by a link to a file outside. The load
    # checks the file it opened, so it refuses instead of reading the outside file.
    resolved = resolve_source("app.yaml", allowed_dirs=[layout["conf"]])
    target = Path(resolved.path)
    target.unlink()
    target.symlink_to(layout["root"] / "outside" / "secret.yaml")
    with pytest.raises(SourceNotAllowed) as info:
        load_source(resolved)
    assert info.value.code == "source_not_allowed"
    assert str(layout["root"] / "outside") not in str(info.value)
