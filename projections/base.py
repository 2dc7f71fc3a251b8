"""The projection contract: a named fold over the log that can be checkpointed and rebuilt from zero."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from confledger.store.canonical import canonical_json
from confledger.store.events import DEFAULT_REGISTRY, EventPayload, PayloadTable, RecordedEvent

__all__ = [
    "ConfigHashText",
    "Folder",
    "Handler",
    "IsoTimeText",
    "Projection",
    "StateModel",
    "UuidText",
    "event_from_state",
    "event_to_state",
]

Handler = Callable[[RecordedEvent], None]


class StateModel(BaseModel):
    """Base of the models that describe a projection's checkpoint state (``Projection.state_model``).

    Strict: a checkpoint's state is JSON that its own projection wrote, so a value of another JSON type
    than the one written (a number as text, a boolean for a count) means the row is not what it was.
    Keys the model does not name are ignored.
    """

    model_config = ConfigDict(strict=True, frozen=True)


def _uuid_text(text: str) -> str:
    uuid.UUID(text)
    return text


def _iso_time_text(text: str) -> str:
    datetime.fromisoformat(text)
    return text


# Text forms that checkpoint states keep and that are parsed again when the state is used.
UuidText = Annotated[str, AfterValidator(_uuid_text)]
IsoTimeText = Annotated[str, AfterValidator(_iso_time_text)]
ConfigHashText = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Projection(ABC):
    """Folds events in position order. ``version`` goes up whenever the state's shape or meaning
    changes, which makes an old checkpoint unusable: it is then ignored and the projection rebuilt.

    A projection either overrides ``fold`` (it sees every event) or names, in ``handlers``, the payload
    types it reads and a method for each: an event of any other type leaves its state as it was, so a
    ``Folder`` hands it nothing but the position."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    # The shape of ``snapshot()``'s value, as a ``StateModel``: a checkpoint whose state does not fit it
    # is not handed to ``restore`` (``projections.runner.restore_projections``). None: ``restore`` alone
    # judges a state, by raising on one it cannot take.
    state_model: ClassVar[type[StateModel] | None] = None

    def __init__(self) -> None:
        self.position = 0
        self._dispatch: PayloadTable[Handler] | None = None
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Return to the state of an empty log."""

    def handlers(self) -> Mapping[type[EventPayload], Handler] | None:
        """The payload types this projection folds, each with its handler; None: ``fold`` sees every event."""
        return None

    def handler_for(self, payload_type: type[EventPayload]) -> Handler | None:
        """What folds a payload of this type (as ``isinstance`` matches: a subclass goes to its base's
        handler); None when this projection ignores the type."""
        dispatch = self._dispatch
        if dispatch is None:
            table = self.handlers()
            if table is None:
                if type(self).fold is Projection.fold:
                    raise TypeError(f"{type(self).__name__} overrides neither fold nor handlers")
                table = {EventPayload: self.fold}  # every payload is an EventPayload
            dispatch = self._dispatch = PayloadTable(table)
        return dispatch[payload_type]

    def fold(self, event: RecordedEvent) -> None:
        """Apply one event; called once per event, in position order."""
        handler = self.handler_for(type(event.payload))
        if handler is not None:
            handler(event)

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the state, for a checkpoint."""

    def encoded_snapshot(self) -> tuple[dict[str, Any], str]:
        """``snapshot()`` and its canonical JSON. A projection whose state is mostly parts that never
        change once made keeps their text and joins it (history), where encoding the whole state again
        at every checkpoint was most of the checkpoint's cost."""
        state = self.snapshot()
        return state, canonical_json(state)

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Load a state written by ``snapshot`` of the same version; raise if it cannot be read (it is then
        discarded, and the projection folds from position 0)."""

    def settle(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called after a batch is folded: a place for work worth doing once per batch, not per event."""

    def apply(self, event: RecordedEvent) -> bool:
        if event.position <= self.position:
            return False
        self.fold(event)
        self.position = event.position
        return True


def _common_position(projections: Sequence[Projection]) -> int | None:
    """The position every projection has reached, or None while they stand at different ones."""
    if not projections:
        return 0
    position = projections[0].position
    for projection in projections:
        if projection.position != position:
            return None
    return position


class Folder:
    """Folds events into several projections exactly as ``apply`` on each of them in turn would.

    Cheaper per event: while the projections stand at one position, an event goes through a table from
    its payload type to the handlers that read it (built once per type), so a projection that ignores
    the type costs nothing, and positions are written once per call, not once per event and projection.
    Projections at different positions (a checkpoint older than the others) take ``apply`` until they
    meet. If a handler raises, every projection is left at the position ``apply`` would have left it at.
    The projections are fixed at construction.
    """

    def __init__(self, projections: Sequence[Projection]) -> None:
        self.projections = tuple(projections)
        self._routes: dict[type[EventPayload], tuple[tuple[int, Handler], ...]] = {}

    def _route(self, payload_type: type[EventPayload]) -> tuple[tuple[int, Handler], ...]:
        route = tuple(
            (index, handler)
            for index, projection in enumerate(self.projections)
            if (handler := projection.handler_for(payload_type)) is not None
        )
        self._routes[payload_type] = route
        return route

    def fold(self, events: Iterable[RecordedEvent]) -> int:
        """Fold ``events`` (in position order); returns how many were read."""
        projections = self.projections
        routes = self._routes
        found = _common_position(projections)
        synced, common = found is not None, found or 0
        # While synced, positions live in ``common`` and are written back once ("pending"); ``index`` is
        # the projection whose handler runs for the current event (0 between events).
        pending = False
        index = 0
        read = 0
        event: RecordedEvent | None = None
        try:
            for event in events:
                read += 1
                position = event.position
                if synced and position > common:
                    payload_type = type(event.payload)
                    route = routes.get(payload_type)
                    if route is None:
                        route = self._route(payload_type)
                    for index, handler in route:  # noqa: B007 - the except clause reads index
                        handler(event)
                    index = 0
                    common = position
                    pending = True
                    continue
                if pending:
                    for projection in projections:
                        projection.position = common
                    pending = False
                for projection in projections:
                    projection.apply(event)
                found = _common_position(projections)
                synced, common = found is not None, found or 0
        except BaseException:
            if pending:
                for projection in projections:
                    projection.position = common
            if index and event is not None:
                # Those before the failing handler's projection had taken this event, as ``apply`` does.
                for projection in projections[:index]:
                    projection.position = event.position
            raise
        if pending:
            for projection in projections:
                projection.position = common
        return read


def event_to_state(event: RecordedEvent) -> dict[str, Any]:
    return {
        "position": event.position,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
        "type": event.type,
        "schema_version": type(event.payload).schema_version,
        "operation_id": None if event.operation_id is None else str(event.operation_id),
        "instance_id": event.instance_id,
        "actor": event.actor,
        "payload": event.payload.model_dump(mode="json"),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def event_from_state(state: dict[str, Any]) -> RecordedEvent:
    data = dict(state)
    data["payload"] = DEFAULT_REGISTRY.decode(data["type"], int(data["schema_version"]), data["payload"])
    return RecordedEvent.model_validate(data)
