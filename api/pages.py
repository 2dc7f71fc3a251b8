"""Rendered pages: the JSON of a read, kept while what it shows stays as it was, and its entity tag.

A history page is the same bytes until the log moves: the projections fold every event in position
order and publish immutable values, so the positions they have reached name what any page built from
them holds. A dashboard polling ``/history`` between two reloads is then served the page it was given
before, instead of building and encoding 20 operations (about 15 KB) again for each request.

Each rendered body carries a strong entity tag (``ETag``, a digest of the body), and a request whose
``If-None-Match`` names it is answered ``304 Not Modified`` with no body: a service or sidecar polling
``/current`` learns that nothing changed without being sent the config again (RFC 9110, 13.1.2).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response, status

from confledger.projections.runner import ProjectionSet

__all__ = [
    "CONDITIONAL",
    "NOT_MODIFIED",
    "Rendered",
    "RenderedPages",
    "conditional_response",
    "if_none_match",
    "not_modified",
    "rendered",
]

# How a conditional read is documented in each route's OpenAPI: its answer with no body, and the header
# (``openapi_extra``; see ``if_none_match`` for why it is no header parameter).
NOT_MODIFIED: dict[int | str, dict[str, object]] = {
    304: {"description": "If-None-Match named this ETag: nothing changed, no body"}
}
# Clients revalidate every time (a config is never served stale from a cache), and no shared cache keeps
# an answer given to a token.
_CACHE_CONTROL = "private, no-cache"


def if_none_match(request: Request) -> str | None:
    """The ETags a conditional read names (``If-None-Match``), read off the request as is: as a header
    parameter FastAPI would convert and validate it on every read (18 against 7 us a request on a bare
    route, for a comparison of about 1 us). ``CONDITIONAL`` documents it."""
    return request.headers.get("if-none-match")


CONDITIONAL: dict[str, Any] = {
    "parameters": [
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "the ETag of the page the caller holds (several comma-separated, or *): 304 if unchanged",
        }
    ]
}


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response body as served, and its strong entity tag."""

    body: bytes
    tag: str


def rendered(body: bytes) -> Rendered:
    """``body`` with its entity tag: the first 128 bits of its SHA-256, quoted. The tag names the bytes,
    so two instances serving the same page give the same tag."""
    return Rendered(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (weak comparison: ``W/`` is ignored) or is ``*``."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # Splitting on commas misreads only a tag with a comma inside its quotes, which is never one of ours:
    # such a tag does not match, as it would not anyway.
    return any(candidate.strip().removeprefix("W/") == tag for candidate in if_none_match.split(","))


def conditional_response(page: Rendered, if_none_match: str | None) -> Response:
    """``page`` as JSON with its ``ETag``, or 304 with no body when ``If-None-Match`` names it."""
    headers = {"ETag": page.tag, "Cache-Control": _CACHE_CONTROL}
    if not_modified(if_none_match, page.tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(page.body, media_type="application/json", headers=headers)


class RenderedPages:
    """A lifecycle's rendered reads: pages keyed by the request's query and the projections' positions
    (a bounded cache), and the page of the current config, keyed by its snapshot.

    Used from the event loop only (no lock). The projections fold on appending threads and write their
    positions once a batch is folded: a page built mid-batch is kept under the positions before the
    batch, which they never return to, and a page during which they moved is not kept at all.
    """

    def __init__(self, projections: ProjectionSet, *, size: int = 64) -> None:
        self._projections = projections
        self._size = size
        self._pages: OrderedDict[Hashable, tuple[tuple[int, ...], Rendered]] = OrderedDict()
        self._of_snapshot: tuple[object, Rendered] | None = None

    def of_snapshot(self, snapshot: object, render: Callable[[], bytes]) -> Rendered:
        """The page showing ``snapshot``, an immutable value a projection published (the current config):
        rendered once per snapshot, not per position, since events that leave it as it is do not
        change the page. Swapped in one assignment: a request holding the old pair answers consistently.
        """
        kept = self._of_snapshot
        if kept is not None and kept[0] is snapshot:
            return kept[1]
        page = rendered(render())
        self._of_snapshot = (snapshot, page)
        return page

    def _positions(self) -> tuple[int, ...]:
        return tuple(projection.position for projection in self._projections.projections)

    def get(self, query: Hashable) -> tuple[tuple[int, ...], Rendered | None]:
        """The projections' positions now, and the page for ``query`` if it was rendered at them."""
        positions = self._positions()
        kept = self._pages.get(query)
        if kept is None or kept[0] != positions:
            return positions, None
        self._pages.move_to_end(query)
        return positions, kept[1]

    def keep(self, query: Hashable, positions: tuple[int, ...], page: Rendered) -> None:
        """Keep ``page``, built from projections at ``positions``, unless they have moved since."""
        if self._positions() != positions:
            return
        self._pages[query] = (positions, page)
        self._pages.move_to_end(query)
        while len(self._pages) > self._size:
            self._pages.popitem(last=False)
