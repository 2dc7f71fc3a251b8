"""Operations as the seed's ``ReloadOperation`` shows them, newest first.

The projection keeps a window of recent operations in memory (what the API pages through most); older
pages are folded on demand from the log with the same ``build_operation``, so both answer alike.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from projections.base import Projection, event_from_state, event_to_state
from store.events import OperationCompleted, OperationRejected, OperationStarted, RecordedEvent
from store.log import EventLog
from store.outcome import ReloadOperation, build_operation

__all__ = ["HistoryProjection", "history_page"]


class HistoryProjection(Projection):
    name = "history"
    version = 1

    def __init__(self, window: int = 500) -> None:
        self.window = window
        super().__init__()

    def reset(self) -> None:
        # Keyed by operation id, in order of each operation's first event.
        self.operations: OrderedDict[str, ReloadOperation] = OrderedDict()
        self._open: dict[str, list[RecordedEvent]] = {}

    def fold(self, event: RecordedEvent) -> None:
        if event.operation_id is None:
            return
        key = str(event.operation_id)
        events = self._open.setdefault(key, [])
        events.append(event)
        if isinstance(event.payload, OperationCompleted | OperationRejected):
            del self._open[key]
            self.operations[key] = build_operation(events)
            while len(self.operations) > self.window:
                self.operations.popitem(last=False)

    def in_progress(self) -> list[ReloadOperation]:
        return [build_operation(events) for events in self._open.values()]

    def recent(self) -> list[ReloadOperation]:
        """Every operation in the window, newest first, including any still running."""
        running = self.in_progress()
        done = list(reversed(self.operations.values()))
        return sorted([*running, *done], key=lambda op: op.first_position, reverse=True)

    @property
    def oldest_position(self) -> int:
        """First position of the oldest operation in the window (0 when the window is empty)."""
        if not self.operations:
            return 0
        return next(iter(self.operations.values())).first_position

    def snapshot(self) -> dict[str, Any]:
        return {
            "operations": [
                op.model_dump(mode="json", exclude_defaults=True) for op in self.operations.values()
            ],
            "open": {key: [event_to_state(e) for e in events] for key, events in self._open.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        for data in state.get("operations", []):
            operation = ReloadOperation.model_validate(data)
            self.operations[operation.operation_id] = operation
        for key, events in state.get("open", {}).items():
            self._open[key] = [event_from_state(e) for e in events]


_SCAN_BATCH = 200


def history_page(
    history: HistoryProjection,
    log: EventLog,
    limit: int,
    *,
    before: int | None = None,
    trigger: str | None = None,
    status: str | None = None,
) -> list[ReloadOperation]:
    """Operations newest first; ``before`` is a position cursor (an operation's ``first_position``).

    Served from the in-memory window when it reaches far enough back; older operations are folded from
    the log with the same ``build_operation``. Reads the log (blocking) only past the window.
    """

    def keep(op: ReloadOperation) -> bool:
        return (
            (before is None or op.first_position < before)
            and (trigger is None or op.trigger.value == trigger)
            and (status is None or op.status.value == status)
        )

    found = [op for op in history.recent() if keep(op)][:limit]
    window_full = len(history.operations) >= history.window
    if len(found) >= limit or not window_full:
        return found
    cursor = history.oldest_position if not found else found[-1].first_position
    if before is not None:
        cursor = min(cursor, before)
    while len(found) < limit:
        starts = log.read_reverse(
            cursor, _SCAN_BATCH, types=[OperationStarted.event_type, OperationRejected.event_type]
        )
        for start in starts:
            if start.operation_id is None:
                continue
            operation = build_operation(log.read_operation(start.operation_id))
            if keep(operation):
                found.append(operation)
                if len(found) >= limit:
                    break
        if len(starts) < _SCAN_BATCH:
            break
        cursor = starts[-1].position
    return found
