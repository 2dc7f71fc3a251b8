"""Which config a rollback returns to: a hash (any unique prefix of 7+ hex digits) or the previous one.

The previous one is the newest config applied before, other than the current one and those rolled back
away from (pinned, ``store.pins``): rolling back twice goes two configs back, as an operator undoing
changes expects, rather than toggling between the last two and bringing back what the first rollback
undid.
"""

from __future__ import annotations

from collections.abc import Callable

from confledger.store.errors import ConfigLookupError
from confledger.store.events import ConfigApplied
from confledger.store.log import EventLog

__all__ = ["resolve_target"]

_SCAN = 200


def resolve_target(
    log: EventLog,
    reference: str | None,
    current_hash: str | None,
    rolled_back_from: Callable[[str], bool] = lambda _hash: False,
) -> str:
    """The full hash of an applied config ``reference`` names; None names the newest one neither current
    nor ``rolled_back_from`` (pinned).

    Blocking (it reads the log). Raises ``ConfigLookupError`` (with its reason code) when the reference
    names nothing, is ambiguous, was never applied, or there is no earlier config.
    """
    if reference is None:
        found = _previous_distinct_hash(log, current_hash, rolled_back_from)
        if found is None:
            raise ConfigLookupError(
                "no previous configuration to roll back to: none was applied before the current one but "
                "those rolled back away from (name its hash to return to one of them)",
                code="no_previous_config",
            )
        return found
    full = log.resolve_hash(reference)
    if not log.was_applied(full):
        raise ConfigLookupError(
            f"config {full[:16]} was never applied; rollback can only return to an applied config",
            code="unknown_config_hash",
        )
    return full


def _previous_distinct_hash(
    log: EventLog, current_hash: str | None, rolled_back_from: Callable[[str], bool]
) -> str | None:
    before: int | None = None
    while True:
        batch = log.read_reverse(before, _SCAN, types=[ConfigApplied.event_type])
        for event in batch:
            if not isinstance(event.payload, ConfigApplied):
                continue
            found = event.payload.hash
            if found != current_hash and not rolled_back_from(found):
                return found
        if len(batch) < _SCAN:
            return None
        before = batch[-1].position
