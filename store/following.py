"""Following the fleet: applying here what other instances decided (``OperationRunner.follow``).

``store.follower.LogFollower`` decides when to follow (the doorbell, the poll interval); this is what a
turn does: every ``config.applied`` after the runner's position (``followed``), in order, put through
this instance's model and validators, handed to its services and answered with ``instance.applied``.
An operation follows the same way, holding the fleet lock, before it decides. Following is blocking
code run in a worker thread (``store.steps``) that yields only to have validators and services called.
A mixin of ``OperationRunner`` rather than a collaborator: following reads and moves the
runner's current config (``active``), its position and known head, and shares its apply lock, its
append path and its notifications, which is most of the runner's state.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

from confledger.store import failpoints
from confledger.store.errors import ConfledgerError
from confledger.store.events import ConfigApplied, InstanceApplied, NewEvent, RecordedEvent
from confledger.store.log import EventLog, PreparedConfig
from confledger.store.operation_record import ActiveConfig, failures_of, notified
from confledger.store.services import ServiceRegistry
from confledger.store.steps import Notify, Steps, validated
from confledger.store.validation import ModelResult, ValidationPipeline

__all__ = ["FleetFollowing", "ReadAhead"]

# What it logs is the runner's, under the runner's logger as before it moved here.
logger = logging.getLogger("confledger.store.operations")

T = TypeVar("T")

# The log's head, and each config.applied after the follower's position with its body through the
# model (or why it could not be read).
_Pending = tuple[int, list[tuple[RecordedEvent, ModelResult | ConfledgerError]]]


@dataclass(frozen=True, slots=True)
class ReadAhead:
    """What the fleet decided after position ``after``, read before the turn to follow it began."""

    after: int
    pending: _Pending


class FleetFollowing:
    """``OperationRunner``'s following of the fleet. The attributes are the runner's (set in its
    ``__init__``, where the comments say what each holds); the methods declared for type checking only
    are the runner's too."""

    log: EventLog
    pipeline: ValidationPipeline
    services: ServiceRegistry
    active: ActiveConfig | None
    followed: int
    after_follow: Callable[[], object] | None
    _apply_lock: anyio.Lock
    _positions_lock: threading.Lock
    _known_head: int
    _unrecorded: list[NewEvent]

    if TYPE_CHECKING:

        def _append_now(
            self,
            events: Sequence[NewEvent],
            *,
            expected_head: int | None = None,
            configs: Sequence[PreparedConfig] = (),
        ) -> list[RecordedEvent]: ...

        def _drive(self, steps: Steps[T]) -> Awaitable[T]: ...

    async def follow(self, ahead: ReadAhead | None = None) -> int:
        """Apply here what other instances decided since the last call; returns the position followed to.

        ``ahead``: ``read_ahead``'s result, taken by the doorbell's thread as it woke (so the turn saves
        the thread hop of its own read). It stands only if nothing was followed since it was read: an
        operation of this instance that ran meanwhile has followed those changes itself.
        """
        async with self._apply_lock:
            pending = ahead.pending if ahead is not None and ahead.after == self.followed else None
            await self._drive(self._follow_to_head(pending))
        return self.followed

    def read_ahead(self, after: int) -> ReadAhead:
        """What the fleet decided after ``after`` (blocking: for a thread that is awake anyway)."""
        return ReadAhead(after, self._applied_since(after))

    def _applied_since(
        self, after: int
    ) -> tuple[int, list[tuple[RecordedEvent, ModelResult | ConfledgerError]]]:
        """The head, and each ``config.applied`` after ``after`` with its stored body put through this
        instance's model (or why it could not be read): the reading part of following, in one thread hop.
        """
        head, decided = self.log.decided_elsewhere(after)
        found: list[tuple[RecordedEvent, ModelResult | ConfledgerError]] = []
        for event, stored in decided:
            if stored is None:
                found.append((event, ConfledgerError("decided here", code="own")))
            elif isinstance(stored, ConfledgerError):
                found.append((event, stored))
            else:
                found.append((event, self.pipeline.check_model(stored.body)))
        return head, found

    def _followed_to(self, position: int) -> None:
        # Under the lock the appending threads move the positions with (``_noted_own``): never back.
        with self._positions_lock:
            self.followed = max(self.followed, position)

    def _follow_to_head(self, pending: _Pending | None = None) -> Steps[None]:
        """Every ``config.applied`` after ``followed`` (``pending``: as already read), in order; then
        the projections (``after_follow``) unless an append of this instance already folded them (its
        listener catches up on a gap)."""
        appended = False
        if self._unrecorded:
            self._append_now(self._unrecorded)
            self._unrecorded, appended = [], True
        if pending is None:
            pending = self._applied_since(self.followed)
        head, applied = pending
        for event, model in applied:
            if event.instance_id != self.log.instance_id:
                yield from self._follow_one(event, model)
                appended = True
            self._followed_to(event.position)
        with self._positions_lock:
            moved = head > self.followed
            self.followed = max(self.followed, head)
            self._known_head = max(self._known_head, head)
        if (moved or applied) and not appended and self.after_follow is not None:
            self.after_follow()

    def _follow_one(self, event: RecordedEvent, model: ModelResult | ConfledgerError) -> Steps[None]:
        """Validate a change another instance decided with this instance's model, tell this instance's
        services, record what they said (``service.notified``) and ``instance.applied``.

        Services that refuse are not compensated and the fleet's desired config does not move: the
        instance is drifted until a later change reaches all its services. A body this instance's own
        model or validators refuse reaches no service (outcome ``invalid``).
        """
        payload = event.payload
        assert isinstance(payload, ConfigApplied)
        answer = functools.partial(
            InstanceApplied,
            hash=payload.hash,
            position=event.position,
            operation_id=None if event.operation_id is None else str(event.operation_id),
            role="followed",
        )
        previous = self.active
        if previous is not None and previous.hash == payload.hash:
            self._append_now([NewEvent(answer(outcome="applied"))])
            return
        if isinstance(model, ConfledgerError):
            self._append_now([NewEvent(answer(outcome="invalid", errors=(model.message,)))])
            return
        outcome = yield from validated(self.pipeline, model)
        if not outcome.ok or outcome.body is None:
            errors = outcome.errors[: self.pipeline.max_items] or ("the config model refused the body",)
            logger.warning(
                "config %s decided by %s does not pass this instance's validation: %s",
                payload.hash[:16],
                event.instance_id,
                "; ".join(errors[:3]),
            )
            self._append_now([NewEvent(answer(outcome="invalid", errors=errors))])
            return
        new = ActiveConfig(payload.hash, outcome.config, outcome.body, outcome.secret_paths)
        secrets = [*new.secret_values(), *([] if previous is None else previous.secret_values())]
        services = self.services.ordered()
        old = None if previous is None else previous.config
        results = (yield Notify(services, old, new.config, secrets, "forward")) if services else []
        failpoints.hit("mid_follow")
        failures = failures_of(results)
        for failure in failures:
            logger.warning(
                "service %s did not accept config %s decided by %s: %s",
                failure.service,
                payload.hash[:16],
                event.instance_id,
                failure.error or failure.outcome.value,
            )
        # The services run it now (those that accepted): it is this instance's config from here on,
        # and this change is handled: if its record fails, ``_unrecorded`` writes it, never a second
        # answer after a second look.
        self.active = new
        self._followed_to(event.position)
        batch = [NewEvent(notified(result, "forward", new.hash)) for result in results]
        batch.append(NewEvent(answer(outcome="failed" if failures else "applied", failures=failures)))
        try:
            self._append_now(batch)
        except BaseException:
            self._unrecorded = batch
            raise
