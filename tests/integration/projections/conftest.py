"""Fixtures shared by the projection tests that need a second writer on the same log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from confledger.store import EventLog


@pytest.fixture
def other_instance(database_url: str) -> Iterator[EventLog]:
    """Another instance's log on the same database: what it appends, this instance only reads."""
    other = EventLog(database_url, instance_id="other-instance")
    try:
        yield other
    finally:
        other.close()
