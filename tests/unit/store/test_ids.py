"""store.ids: version 7 UUIDs, in creation order within a process."""

from __future__ import annotations

import os
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


def test_a_forked_child_draws_random_bits_of_its_own() -> None:
    uuid7_texts(1)  # the parent holds a pool of random bits now
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(writing, ",".join(uuid7_texts(8)).encode())
        os._exit(0)
    os.close(writing)
    os.waitpid(pid, 0)
    with os.fdopen(reading) as pipe:
        child = pipe.read().split(",")
    parent = uuid7_texts(8)
    # The last 62 bits of each id are random: the child's are not the parent's next ones.
    assert {text[-12:] for text in child}.isdisjoint(text[-12:] for text in parent)
