"""The one text form of a moment in what confledger answers: UTC, ending in ``Z``.

pydantic writes an aware UTC datetime that way (``2026-12-07T18:06:17.838118Z``), so every typed answer
already does; the documents built as plain dicts (the timeline, ``confledger status --json``, a
message naming a time) are written with this, so one answer never mixes ``Z`` and ``+00:00``.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc_text"]


def utc_text(moment: datetime | str, timespec: str = "auto") -> str:
    """``moment`` (a datetime, or text ``datetime.fromisoformat`` reads) in UTC, ending in ``Z``.

    A naive value is taken as UTC: that is how the log stores every time (SQLite hands it back without
    a zone).
    """
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"
