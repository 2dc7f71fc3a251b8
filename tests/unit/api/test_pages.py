"""api.pages: a rendered page is served again only while the projections stand where it was built."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import cast

import pytest

from confledger.api.pages import RenderedPages, conditional_response, not_modified, rendered
from confledger.projections.runner import ProjectionSet


@dataclass
class Standing:
    """What RenderedPages reads of a ProjectionSet: each projection's position."""

    @dataclass
    class At:
        position: int

    projections: list[At] = field(default_factory=lambda: [Standing.At(5), Standing.At(5)])

    def move(self, *positions: int) -> None:
        for projection, position in zip(self.projections, positions, strict=True):
            projection.position = position


PAGE = rendered(b'{"page":1}')


def pages_over(standing: Standing, size: int = 64) -> RenderedPages:
    return RenderedPages(cast(ProjectionSet, standing), size=size)


@pytest.mark.parametrize(
    ("moved_while_building", "moved_after", "served_again"),
    [
        # nothing moved: the page is served again
        (None, None, True),
        # a fold moved one projection while the page was built: not kept (it may hold part of it)
        ((6, 5), None, False),
        # kept, then the log moved on: the next read builds it again
        (None, (6, 6), False),
        # kept, then one projection moved alone (a fold that failed part-way): built again
        (None, (5, 6), False),
    ],
)
def test_a_page_is_served_again_only_at_the_positions_it_was_built_at(
    moved_while_building: tuple[int, int] | None, moved_after: tuple[int, int] | None, served_again: bool
) -> None:
    standing = Standing()
    pages = pages_over(standing)
    positions, kept = pages.get("q")
    assert kept is None
    if moved_while_building is not None:
        standing.move(*moved_while_building)
    pages.keep("q", positions, PAGE)
    if moved_after is not None:
        standing.move(*moved_after)
    assert (pages.get("q")[1] == PAGE) is served_again


def test_each_query_has_its_own_page() -> None:
    pages = pages_over(Standing())
    positions, _ = pages.get("one")
    pages.keep("one", positions, rendered(b"first"))
    pages.keep("two", positions, rendered(b"second"))
    assert pages.get("one")[1] == rendered(b"first")
    assert pages.get("two")[1] == rendered(b"second")
    assert pages.get("three")[1] is None


def test_the_least_recently_read_page_goes_first_when_full() -> None:
    pages = pages_over(Standing(), size=2)
    positions, _ = pages.get("a")
    pages.keep("a", positions, rendered(b"a"))
    pages.keep("b", positions, rendered(b"b"))
    pages.get("a")  # read: now the most recent
    pages.keep("c", positions, rendered(b"c"))
    assert [pages.get(query)[1] for query in ("a", "b", "c")] == [rendered(b"a"), None, rendered(b"c")]


def test_the_tag_names_the_bytes() -> None:
    assert rendered(b"{}").tag == rendered(b"{}").tag != rendered(b"{ }").tag
    assert re.fullmatch(r'"[0-9a-f]{32}"', rendered(b"{}").tag)


TAG = PAGE.tag


@pytest.mark.parametrize(
    ("if_none_match", "unchanged"),
    [
        # no header, or an empty one: the page is sent
        (None, False),
        ("", False),
        # the tag itself, or as a weak tag (If-None-Match compares weakly), or with spaces around it
        (TAG, True),
        ("W/" + TAG, True),
        (f"  {TAG} ", True),
        # one of several
        (f'"0000", {TAG}, "ffff"', True),
        # any tag at all
        ("*", True),
        # another page's tag, the tag unquoted, or a prefix of it
        ('"0123456789abcdef0123456789abcdef"', False),
        (TAG.strip('"'), False),
        (TAG[:-3] + '"', False),
    ],
)
def test_if_none_match(if_none_match: str | None, unchanged: bool) -> None:
    assert not_modified(if_none_match, TAG) is unchanged
    answer = conditional_response(PAGE, if_none_match)
    assert answer.headers["ETag"] == TAG
    assert answer.headers["Cache-Control"] == "private, no-cache"
    assert (answer.status_code, bytes(answer.body)) == ((304, b"") if unchanged else (200, PAGE.body))


def test_the_page_of_a_snapshot_is_rendered_once_per_snapshot() -> None:
    pages = pages_over(Standing())
    renders: list[object] = []

    def render(snapshot: object) -> bytes:
        renders.append(snapshot)
        return repr(snapshot).encode()

    first, second = object(), object()
    shown = [
        pages.of_snapshot(snapshot, lambda s=snapshot: render(s))
        for snapshot in (first, first, second, first)
    ]
    assert renders == [first, second, first]
    assert shown[0] == shown[1] == shown[3] != shown[2]
