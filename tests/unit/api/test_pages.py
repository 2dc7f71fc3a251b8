"""api.pages: a rendered page is served again only while the projections stand where it was built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest

from confledger.api.pages import RenderedPages
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
    pages.keep("q", positions, b"page")
    if moved_after is not None:
        standing.move(*moved_after)
    assert (pages.get("q")[1] == b"page") is served_again


def test_each_query_has_its_own_page() -> None:
    pages = pages_over(Standing())
    positions, _ = pages.get("one")
    pages.keep("one", positions, b"first")
    pages.keep("two", positions, b"second")
    assert pages.get("one")[1] == b"first"
    assert pages.get("two")[1] == b"second"
    assert pages.get("three")[1] is None


def test_the_least_recently_read_page_goes_first_when_full() -> None:
    pages = pages_over(Standing(), size=2)
    positions, _ = pages.get("a")
    pages.keep("a", positions, b"a")
    pages.keep("b", positions, b"b")
    pages.get("a")  # read: now the most recent
    pages.keep("c", positions, b"c")
    assert [pages.get(query)[1] for query in ("a", "b", "c")] == [b"a", None, b"c"]
