"""Time-ordered ids for events and operations: UUID version 7 (RFC 9562).

Event and operation ids are keys of B-tree indexes (``events.event_id`` is unique, ``operation_id`` is
indexed). A random (version 4) id lands on a random leaf page, so each event of a batch dirties a page of
its own in the unique index, and with ``synchronous=FULL`` every dirty page is written to the WAL and
synced at commit. A version 7 id starts with the millisecond it was made in, so the ids of a batch land
together on the rightmost leaf: fewer pages per commit. On this project's VMs a reload's commits took
0.88x the median and 0.78x the mean time they take with random ids (tests/benchmarks/bench_event_ids.py).
Each id still carries 62 random bits, so ids stay unique across processes and hosts.

Within one process ids are strictly increasing: in the same millisecond the 12-bit field after the
version counts up (RFC 9562, method 1), and a clock that steps back never makes an id sort before an
earlier one. Python 3.14's ``uuid.uuid7`` has this layout; this module serves 3.11 to 3.13 as well.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["uuid7", "uuid7_texts"]

_VERSION_BITS = 0x7 << 76
_VARIANT_BITS = 0b10 << 62
_RANDOM_62 = (1 << 62) - 1
_COUNTER_MAX = 0xFFF
# A new millisecond starts its counter below half the range, so a burst of ids in that millisecond can
# count up without running out.
_COUNTER_SEED_MAX = 0x7FF
_MS_MASK = 0xFFFF_FFFF_FFFF
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

# Random bits come from the OS a pool at a time: an append made an id in a new millisecond each time, and
# drew twice (its 62 bits and the millisecond's counter seed), two getrandom calls for a few bytes.
_POOL_BYTES = 4096

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_pool = b""
_pool_at = 0


def _forget_pool() -> None:
    # A forked child must not hand out the bits its parent does: it draws a pool of its own.
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def _random_bytes(count: int) -> bytes:
    """``count`` bytes from the OS's random source (the caller holds ``_lock``)."""
    global _pool, _pool_at
    if _pool_at + count > len(_pool):
        _pool, _pool_at = os.urandom(max(_POOL_BYTES, count)), 0
    drawn = _pool[_pool_at : _pool_at + count]
    _pool_at += count
    return drawn


def _next_slots(count: int) -> list[tuple[int, int]]:
    """``count`` (millisecond, counter) pairs, each sorting after the one before, across all threads."""
    global _last_ms, _counter
    slots: list[tuple[int, int]] = []
    # Under a lock: two threads reading the same millisecond must not hand out the same counter.
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        for _ in range(count):
            if now_ms > _last_ms:
                _last_ms = now_ms
                _counter = int.from_bytes(_random_bytes(2), "big") & _COUNTER_SEED_MAX
            else:
                # The same millisecond, or the clock stepped back: count up; past the counter's range,
                # borrow the next millisecond rather than wrap (the order matters more than the clock).
                _counter += 1
                if _counter > _COUNTER_MAX:
                    _last_ms += 1
                    _counter = 0
            slots.append((_last_ms, _counter))
    return slots


def uuid7() -> uuid.UUID:
    """A new version 7 UUID, sorting after every id this process made before it."""
    [(ms, counter)] = _next_slots(1)
    with _lock:
        random_62 = int.from_bytes(_random_bytes(8), "big") & _RANDOM_62
    return uuid.UUID(int=(ms & _MS_MASK) << 80 | _VERSION_BITS | counter << 64 | _VARIANT_BITS | random_62)


def uuid7_texts(count: int) -> list[str]:
    """``count`` new ids as ``str(uuid7())`` would write them, in increasing order, without UUID objects.

    Written as text directly: the append path stores and hashes the text, and building a UUID per event
    only to format it costs more than the rest of making the id.
    """
    with _lock:
        random_hex = _random_bytes(8 * count).hex()
    texts: list[str] = []
    for index, (ms, counter) in enumerate(_next_slots(count)):
        time_hex = f"{ms & _MS_MASK:012x}"
        tail = random_hex[16 * index : 16 * index + 16]
        # The variant's two bits replace the top two of the first random digit.
        texts.append(
            f"{time_hex[:8]}-{time_hex[8:]}-7{counter:03x}-{_VARIANT_DIGIT[tail[0]]}{tail[1:4]}-{tail[4:]}"
        )
    return texts
