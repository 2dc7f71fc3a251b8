"""Rendered pages: the JSON of a read, kept while the projections it was built from stay where they were.

A history page is the same bytes until the log moves: the projections fold every event in position
order and publish immutable values, so the positions they have reached name what any page built from
them holds. A dashboard polling ``/history`` between two reloads is then served the page it was given
before, instead of building and encoding 20 operations (about 15 KB) again for each request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from confledger.projections.runner import ProjectionSet

__all__ = ["RenderedPages"]


class RenderedPages:
    """A bounded cache of rendered responses, keyed by the request's query and the projections' positions.

    Used from the event loop only (no lock): a fold on an appending thread may move the projections
    while a page is built, so a page is kept only when the positions after building it are the ones it
    was built at.
    """

    def __init__(self, projections: ProjectionSet, *, size: int = 64) -> None:
        self._projections = projections
        self._size = size
        self._pages: OrderedDict[Hashable, tuple[tuple[int, ...], bytes]] = OrderedDict()

    def _positions(self) -> tuple[int, ...]:
        return tuple(projection.position for projection in self._projections.projections)

    def get(self, query: Hashable) -> tuple[tuple[int, ...], bytes | None]:
        """The projections' positions now, and the page for ``query`` if it was rendered at them."""
        positions = self._positions()
        kept = self._pages.get(query)
        if kept is None or kept[0] != positions:
            return positions, None
        self._pages.move_to_end(query)
        return positions, kept[1]

    def keep(self, query: Hashable, positions: tuple[int, ...], page: bytes) -> None:
        """Keep ``page``, built from projections at ``positions``, unless they have moved since."""
        if self._positions() != positions:
            return
        self._pages[query] = (positions, page)
        self._pages.move_to_end(query)
        while len(self._pages) > self._size:
            self._pages.popitem(last=False)
