"""store.ids: version 7 UUIDs, in creation order within a process."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from confledger import store
from confledger.store.ids import uuid7, uuid7_texts


def test_layout_is_version_7_rfc_variant_and_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000

    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    # The first 48 bits are the Unix time in milliseconds (a counter overflow may borrow one more).
    assert before <= made.int >> 80 <= after + 1


def test_texts_are_what_str_of_the_uuid_gives() -> None:
    texts = uuid7_texts(50)
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_increase_within_a_millisecond_and_a_batch() -> None:
    made = [*uuid7_texts(300), str(uuid7()), *uuid7_texts(300)]
    assert len(set(made)) == len(made)
    # Text order is numeric order for fixed-width lower-case hex: this is the order an index keeps.
    assert made == sorted(made)


def test_a_clock_stepping_back_never_orders_an_id_before_an_earlier_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = uuid7()
    monkeypatch.setattr(store.ids.time, "time_ns", lambda: 0)  # the clock jumped to 1970
    later = [uuid7() for _ in range(5000)]  # more than the 12-bit counter holds: it borrows milliseconds

    assert [first, *later] == sorted([first, *later])
    assert len({first, *later}) == 5001


def test_threads_never_share_an_id() -> None:
    found: list[list[str]] = []

    def make() -> None:
        found.append(uuid7_texts(2000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    every = [text for batch in found for text in batch]
    assert len(set(every)) == len(every) == 8000
    for batch in found:
        assert batch == sorted(batch)
