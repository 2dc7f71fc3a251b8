"""Crash points: ``CONFLEDGER_FAILPOINT=<name>[:<n>]`` ends the process at a named point of an operation.

The reliability tests (tests/reliability/test_crash_points.py) start a real service with one point armed,
let the process die there the way a power cut or an OOM kill would (``os._exit``: no ``finally``, no
shutdown event, no flush), start it again without the variable and check that nothing was lost. ``<n>``
arms the n-th hit of the point (default: the first), so a test can crash the second of three callbacks.

The variable is read once, when this module is imported: unset (any production process), ``hit`` is one
comparison against None, measured as no cost at all next to a reload (tests/benchmarks/bench_reload.py
``--failpoints``). An unknown name is a ``SetupError`` at import, so a misspelt point cannot make a crash
test pass by never crashing.

The points, in the order an operation meets them:

``after_parse``
    a reload's source was read, parsed and checked against the model; nothing of the operation is in the
    log yet.
``before_start_append`` / ``after_start_append``
    around the commit of ``operation.started`` (and the load and validation events before it), which is
    made durable before the first service hears of the change (only when services are registered).
``between_callbacks``
    one service was given the new config (forward) and the next one was not yet.
``before_outcome_commit`` / ``after_outcome_commit``
    every service answered; around the transaction that records the outcome (``config.applied`` or not,
    ``operation.completed``).
``mid_rollback``
    an automatic rollback (or a conflict) is handing services their previous config back: met after each
    one got it, so the first hit is "one given back, the rest not yet"; nothing of it is recorded yet.
``mid_follow``
    a follower has told its services of a change another instance applied and recorded nothing of it
    (no ``service.notified``, no ``instance.applied``) nor made it its current config.
"""

from __future__ import annotations

import os
import sys
import threading

from confledger.store.errors import SetupError

__all__ = ["FAILPOINTS", "FAILPOINT_EXIT_CODE", "FAILPOINT_VARIABLE", "armed", "hit"]

FAILPOINT_VARIABLE = "CONFLEDGER_FAILPOINT"
# A status no other way out of confledger uses, so a test can tell "died at the point" from any crash.
FAILPOINT_EXIT_CODE = 86

FAILPOINTS = frozenset(
    {
        "after_parse",
        "before_start_append",
        "after_start_append",
        "between_callbacks",
        "before_outcome_commit",
        "after_outcome_commit",
        "mid_rollback",
        "mid_follow",
    }
)


def _parse(spec: str | None) -> tuple[str, int] | None:
    """``(name, n)`` for ``name`` or ``name:n``; None when unset or empty."""
    if spec is None or not spec.strip():
        return None
    name, _, count = spec.strip().partition(":")
    if name not in FAILPOINTS:
        raise SetupError(
            f"{FAILPOINT_VARIABLE}={spec!r} names no crash point (known: {', '.join(sorted(FAILPOINTS))})",
            code="unknown_failpoint",
        )
    if not count:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise SetupError(
            f"{FAILPOINT_VARIABLE}={spec!r}: the hit to crash at is a whole number from 1",
            code="unknown_failpoint",
        )
    return name, int(count)


_ARMED = _parse(os.environ.get(FAILPOINT_VARIABLE))
_hits = 0
_hits_lock = threading.Lock()  # the points are met on the event loop and in worker threads alike


def armed() -> tuple[str, int] | None:
    """The point this process will crash at and on which hit (None: none, the normal case)."""
    return _ARMED


def hit(name: str) -> None:
    """End the process here with ``FAILPOINT_EXIT_CODE`` if ``name`` is the armed point's n-th hit."""
    if _ARMED is None or _ARMED[0] != name:
        return
    global _hits
    with _hits_lock:
        _hits += 1
        if _hits != _ARMED[1]:
            return
        # One line on stderr (the only trace the crash leaves), then no clean-up of any kind.
        sys.stderr.write(f"confledger: crash point {name} (hit {_hits}), exiting {FAILPOINT_EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(FAILPOINT_EXIT_CODE)
