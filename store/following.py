"""Following the fleet: applying here what other instances decided (``OperationRunner.follow``).

``store.follower.LogFollower`` decides when to follow (the doorbell, the poll interval); this is what a
turn does: every ``config.applied`` after the runner's position (``followed``), in order, put through
this instance's model and validators, handed to its services and answered with ``instance.applied``.
An operation takes the same turn (``_take_turn``: the fleet lock, then what to catch up on) before it
decides. A mixin of ``OperationRunner`` rather than a collaborator: following reads and moves the
runner's current config (``active``), its position and known head, and shares its apply lock, its
append path and its notifications, which is most of the runner's state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import trace

from confledger.store import failpoints
from confledger.store.calls import UserCalls
from confledger.store.candidate import Fetch, Fetched
from confledger.store.errors import ConfledgerError
from confledger.store.events import ConfigApplied, InstanceApplied, NewEvent, RecordedEvent
from confledger.store.fleet import FleetLease, FleetLock
from confledger.store.log import EventLog, PreparedConfig
from confledger.store.operation_record import ActiveConfig, failures_of, notified
from confledger.store.services import NotifyResult, ServiceRegistry, ServiceSpec
from confledger.store.validation import ModelResult, ValidationPipeline

__all__ = ["FleetFollowing", "ReadAhead"]

# What it logs is the runner's, under the runner's logger as before it moved here.
logger = logging.getLogger("confledger.store.operations")

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
    calls: UserCalls
    tracer: trace.Tracer
    active: ActiveConfig | None
    followed: int
    fleet_lock: FleetLock
    fleet_lock_wait: float
    after_follow: Callable[[], object] | None
    _apply_lock: anyio.Lock
    _known_head: int
    _unrecorded: list[NewEvent]

    if TYPE_CHECKING:

        async def _append(
            self,
            events: Sequence[NewEvent],
            *,
            expected_head: int | None = None,
            configs: Sequence[PreparedConfig] = (),
        ) -> list[RecordedEvent]: ...

        async def _notify(
            self, services: Sequence[ServiceSpec], old: Any, new: Any, secrets: list[str], direction: str
        ) -> list[NotifyResult]: ...

    async def follow(self, ahead: ReadAhead | None = None) -> int:
        """Apply here what other instances decided since the last call; returns the position followed to.

        ``ahead``: ``read_ahead``'s result, taken by the doorbell's thread as it woke (so the turn saves
        the thread hop of its own read). It stands only if nothing was followed since it was read: an
        operation of this instance that ran meanwhile has followed those changes itself.
        """
        async with self._apply_lock:
            pending = ahead.pending if ahead is not None and ahead.after == self.followed else None
            await self._follow_to_head(pending)
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

    def _take_turn(
        self, holder: str, prefetch: Fetch | None = None
    ) -> tuple[FleetLease, _Pending, Fetched | None]:
        """The fleet lock, then what the fleet decided since ``followed`` (blocking: one thread hop).

        ``prefetch`` (a reload's read of its source) runs in the same hop, given the head just read,
        unless a change decided elsewhere is to be followed first: that could change the config the
        reload starts from, so the source is then read after it (None returned)."""
        lease = self.fleet_lock.acquire(holder, self.fleet_lock_wait)
        try:
            pending = self._applied_since(self.followed)
            head, applied = pending
            if prefetch is None or any(event.instance_id != self.log.instance_id for event, _ in applied):
                return lease, pending, None
            return lease, pending, prefetch(head)
        except BaseException:
            lease.release()
            raise

    async def _follow_to_head(self, pending: _Pending | None = None) -> None:
        """Every ``config.applied`` after ``followed`` (``pending``: as already read), in order; then
        the projections (``after_follow``) unless an append of this instance already folded them (its
        listener catches up on a gap)."""
        appended = False
        if self._unrecorded:
            await self._append(self._unrecorded)
            self._unrecorded, appended = [], True
        if pending is None:
            pending = await anyio.to_thread.run_sync(self._applied_since, self.followed)
        head, applied = pending
        for event, model in applied:
            if event.instance_id != self.log.instance_id:
                await self._follow_one(event, model)
                appended = True
            self.followed = event.position
        moved = head > self.followed
        self.followed = max(self.followed, head)
        self._known_head = max(self._known_head, head)
        if (moved or applied) and not appended and self.after_follow is not None:
            await anyio.to_thread.run_sync(self.after_follow)

    async def _follow_one(self, event: RecordedEvent, model: ModelResult | ConfledgerError) -> None:
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
            await self._append([NewEvent(answer(outcome="applied"))])
            return
        if isinstance(model, ConfledgerError):
            await self._append([NewEvent(answer(outcome="invalid", errors=(model.message,)))])
            return
        outcome = await self.pipeline.run_validators(model, calls=self.calls, tracer=self.tracer)
        if not outcome.ok or outcome.body is None:
            errors = outcome.errors[: self.pipeline.max_items] or ("the config model refused the body",)
            logger.warning(
                "config %s decided by %s does not pass this instance's validation: %s",
                payload.hash[:16],
                event.instance_id,
                "; ".join(errors[:3]),
            )
            await self._append([NewEvent(answer(outcome="invalid", errors=errors))])
            return
        new = ActiveConfig(payload.hash, outcome.config, outcome.body, outcome.secret_paths)
        secrets = [*new.secret_values(), *([] if previous is None else previous.secret_values())]
        results = await self._notify(
            self.services.ordered(),
            None if previous is None else previous.config,
            new.config,
            secrets,
            "forward",
        )
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
        self.followed = max(self.followed, event.position)
        batch = [NewEvent(notified(result, "forward", new.hash)) for result in results]
        batch.append(NewEvent(answer(outcome="failed" if failures else "applied", failures=failures)))
        try:
            await self._append(batch)
        except BaseException:
            self._unrecorded = batch
            raise
