"""Operations as the seed's ``ReloadOperation`` shows them, newest first.

The projection keeps a window of recent operations in memory (what the API pages through most); older
pages are folded on demand from the log with the same ``build_operation``, so both answer alike. Each
operation shows at most ``listed`` validation errors, warnings and changed paths (the rest counted), so
a page stays small whatever a bad file recorded.
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Annotated, Any

from pydantic import Field

from confledger.projections.base import Projection, StateModel, UuidText, event_from_state, event_to_state
from confledger.store.canonical import canonical_json
from confledger.store.events import (
    OperationCompleted,
    OperationRejected,
    OperationStarted,
    PayloadTable,
    RecordedEvent,
)
from confledger.store.log import EventLog
from confledger.store.outcome import (
    DEFAULT_LISTED,
    ReloadOperation,
    build_operation,
    operation_fields,
    operation_of,
)

__all__ = ["HistoryProjection", "history_page", "window_page"]

# The payloads that end an operation.
_ENDS: PayloadTable[bool] = PayloadTable({OperationCompleted: True, OperationRejected: True})
_by_first_position = attrgetter("first_position")


class _State(StateModel):
    # Each operation and event is validated by its own model as it is restored.
    operations: list[dict[str, Any]]
    # A running operation has at least its start.
    open: dict[UuidText, Annotated[list[dict[str, Any]], Field(min_length=1)]]


class HistoryProjection(Projection):
    name = "history"
    # 2: a manual rollback reads rolled_back (store.outcome.reported_status); older states said success.
    # 3: lists capped at ``listed`` items; an older state may hold a list as long as a bad file made it.
    version = 3
    state_model = _State

    def __init__(self, window: int, *, listed: int = DEFAULT_LISTED) -> None:
        self.window = window
        self.listed = listed
        super().__init__()

    def reset(self) -> None:
        # Keyed by operation id, in order of each operation's first event. A plain dict, which keeps
        # that order too: every page of the window copies it (``finished``), and copying an OrderedDict
        # walks its linked list (22 us for a window of 500, against 2 us).
        self.operations: dict[str, ReloadOperation] = {}
        # Events of operations still running, keyed by the id's integer (hashing it is far cheaper
        # than formatting the id as text, and this runs for every event).
        self._open: dict[int, list[RecordedEvent]] = {}
        # Operations that ended since the last ``settle``, in the order they ended: the fields of their
        # answers (``operation_fields``), made into models at ``settle``, once per batch, so a fold of
        # many operations (a rebuild folds the whole log in one batch) makes models only of those left
        # in the window. Making one for every operation of the log to keep the last few hundred was
        # three quarters of the history's share of a rebuild. The fields, not the events: a window of
        # operations' events (hundreds of objects each) held until they fall off cost a rebuild more
        # in cache misses and collections than the fold it saved. Readers see them meanwhile
        # (``finished``). Beyond a window, the oldest falls off: ``settle`` would drop it anyway.
        self._ended: deque[dict[str, Any]] = deque(maxlen=self.window)
        # Each operation's checkpoint form and its canonical JSON, kept while it is in the window: a
        # finished operation never changes, so a checkpoint dumps and encodes only those that finished
        # since the last one (``encoded_snapshot``).
        self._dumped: dict[str, tuple[ReloadOperation, dict[str, Any], str]] = {}

    def fold(self, event: RecordedEvent) -> None:
        operation_id = event.operation_id
        if operation_id is None:
            return
        key = operation_id.int
        events = self._open.get(key)
        if events is None:
            events = self._open[key] = [event]
        else:
            events.append(event)
        if _ENDS[type(event.payload)]:
            del self._open[key]
            self._ended.append(operation_fields(events, listed=self.listed))

    def settle(self) -> None:
        ended = self._ended
        if not ended:
            return
        operations = self.operations
        for fields in ended:
            # Keyed by the id as the operation gives it: formatting the id once per operation is enough.
            operation = operation_of(fields)
            operations[operation.operation_id] = operation
        while len(operations) > self.window:
            del operations[next(iter(operations))]
        # A new deque, not clear(): a reader holding the old one still finds these (``finished``).
        self._ended = deque(maxlen=self.window)

    def finished(self) -> list[ReloadOperation]:
        """The finished operations of the window, oldest first (in the order they finished): those
        settled, then those that ended since (built here, for this reader, not kept)."""
        # Ended first: an operation settled after this read is then in ``operations`` read below, and
        # one settled before it is not among these, so none is missed and none is listed twice.
        ended = list(self._ended)
        settled = list(self.operations.values())
        if not ended:
            return settled
        known = {operation.operation_id for operation in settled[-len(ended) :]}
        built = (operation_of(fields) for fields in ended)
        return [*settled, *(operation for operation in built if operation.operation_id not in known)]

    def in_progress(self) -> list[ReloadOperation]:
        # list() copies in one step, so a fold on another thread cannot change the dict mid-iteration.
        return [build_operation(events, listed=self.listed) for events in list(self._open.values())]

    def recent(self) -> list[ReloadOperation]:
        """Every operation in the window, newest first, including any still running."""
        running = self.in_progress()
        done = list(reversed(self.finished()))
        return sorted([*running, *done], key=lambda op: op.first_position, reverse=True)

    @property
    def oldest_position(self) -> int:
        """First position of the oldest operation in the window (0 when the window is empty)."""
        finished = self.finished()
        if not finished:
            return 0
        return finished[0].first_position

    def snapshot(self) -> dict[str, Any]:
        return self._parts()[0]

    def encoded_snapshot(self) -> tuple[dict[str, Any], str]:
        state, texts = self._parts()
        # Canonical JSON nests as it stands alone (sorted keys, the same separators): the whole is its
        # members' texts joined, "open" sorting before "operations".
        open_text = canonical_json(state["open"])
        return state, '{"open":' + open_text + ',"operations":[' + ",".join(texts) + "]}"

    def _parts(self) -> tuple[dict[str, Any], list[str]]:
        """The state, and each operation's canonical JSON in the order of its ``operations``."""
        # Operations ended since the last settle (a fold that failed part-way is not settled) go into
        # the window first: the checkpoint's position is past their ends, so "open" must not hold them.
        self.settle()
        dumped: dict[str, tuple[ReloadOperation, dict[str, Any], str]] = {}
        for key, operation in self.operations.items():
            cached = self._dumped.get(key)
            if cached is None or cached[0] is not operation:
                dump = operation.model_dump(mode="json", exclude_defaults=True)
                cached = (operation, dump, canonical_json(dump))
            dumped[key] = cached
        # Rebuilt from the window each time, so it never holds more than the window does.
        self._dumped = dumped
        state = {
            "operations": [dump for _, dump, _ in dumped.values()],
            "open": {
                str(events[0].operation_id): [event_to_state(e) for e in events]
                for events in self._open.values()
            },
        }
        return state, [text for _, _, text in dumped.values()]

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        for data in state.get("operations", []):
            operation = ReloadOperation.model_validate(data)
            self.operations[operation.operation_id] = operation
        for key, events in state.get("open", {}).items():
            self._open[uuid.UUID(key).int] = [event_from_state(e) for e in events]


_SCAN_BATCH = 200


def _matching(
    before: int | None, trigger: str | None, status: str | None
) -> Callable[[ReloadOperation], bool]:
    def keep(op: ReloadOperation) -> bool:
        return (
            (before is None or op.first_position < before)
            and (trigger is None or op.trigger.value == trigger)
            and (status is None or op.status.value == status)
        )

    return keep


def window_page(
    history: HistoryProjection,
    limit: int,
    *,
    before: int | None = None,
    trigger: str | None = None,
    status: str | None = None,
) -> list[ReloadOperation] | None:
    """The page ``history_page`` gives, when the in-memory window holds all of it; None when it reaches
    past the window (then only ``history_page`` can answer, reading the log). Never does I/O."""
    finished = history.finished()  # once: it copies the window
    found = _newest(history, finished, limit, _matching(before, trigger, status))
    if len(found) >= limit or len(finished) < history.window:
        return found
    return None


def _newest(
    history: HistoryProjection,
    finished: list[ReloadOperation],
    limit: int,
    keep: Callable[[ReloadOperation], bool],
) -> list[ReloadOperation]:
    """The ``limit`` newest matching operations of the window (by first position), as ``recent()`` would
    order them, without sorting the whole window for each page.

    Finished operations sit in the order they finished. One that finished earlier has every event, its
    first included, before the end of the one after it; so once ``limit`` matches are held, an operation
    that finished before the oldest of them started, and every one before it, is older than all of them.
    """
    if limit <= 0:
        return []
    found = [op for op in history.in_progress() if keep(op)]
    firsts = heapq.nlargest(limit, (op.first_position for op in found))
    heapq.heapify(firsts)  # the first positions of the newest matches so far; firsts[0] is the oldest
    for op in reversed(finished):
        if len(firsts) >= limit and op.last_position < firsts[0]:
            break
        if not keep(op):
            continue
        found.append(op)
        if len(firsts) < limit:
            heapq.heappush(firsts, op.first_position)
        elif op.first_position > firsts[0]:
            heapq.heapreplace(firsts, op.first_position)
    return sorted(found, key=_by_first_position, reverse=True)[:limit]


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
    page = window_page(history, limit, before=before, trigger=trigger, status=status)
    if page is not None:
        return page
    keep = _matching(before, trigger, status)
    # Every match in the window (fewer than limit), then older operations from the log.
    found = [op for op in history.recent() if keep(op)]
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
            operation = build_operation(log.read_operation(start.operation_id), listed=history.listed)
            if keep(operation):
                found.append(operation)
                if len(found) >= limit:
                    break
        if len(starts) < _SCAN_BATCH:
            break
        cursor = starts[-1].position
    return found
