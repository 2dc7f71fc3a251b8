"""Concluding an operation once its services answered: compensating, then recording the outcome.

Steps 4-5 of ``OperationRunner``'s straight line (``store.operations``): the services ``decide`` named
get their previous config back, and the outcome (``config.rolled_back``, ``config.applied`` with this
instance's ``instance.applied`` beside it, ``operation.completed``) is appended in the operation's
second transaction. When the log refuses that append (the database went away), the services that took
the change are given their previous config back and the operation's closing is kept to append first
once the log takes writes again. A mixin of ``OperationRunner`` rather than a collaborator: it moves the
runner's current config (``active``, ``_applying``) and its queue of unrecorded closings, and notifies
and records through the runner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from confledger.store import failpoints
from confledger.store.decision import Decision
from confledger.store.durations import elapsed_ms
from confledger.store.errors import ConcurrencyConflict, LogError
from confledger.store.events import (
    ConfigApplied,
    ConfigRolledBack,
    EventPayload,
    InstanceApplied,
    NewEvent,
    OperationCompleted,
    OperationKind,
    OperationStatus,
)
from confledger.store.operation_record import ActiveConfig, Change, Operation, failures_of, notified
from confledger.store.services import NotifyResult, ServiceSpec
from confledger.store.steps import Notify, Steps

__all__ = ["Concluding"]

# What it logs is the runner's, under the runner's logger as before it moved here.
logger = logging.getLogger("confledger.store.operations")


class Concluding:
    """``OperationRunner``'s last steps of an operation. The attributes are the runner's (set in its
    ``__init__``, where the comments say what each holds); the methods declared for type checking only
    are the runner's too."""

    rollback_threshold: float
    active: ActiveConfig | None
    _applying: ActiveConfig | None
    _unclosed: list[NewEvent]
    _unclosed_lock: threading.Lock

    if TYPE_CHECKING:

        def _record_now(
            self,
            operation: Operation,
            *events: EventPayload,
            expected_head: int | None = None,
            beside: Sequence[NewEvent] = (),
        ) -> None: ...

    def _conclude(
        self,
        operation: Operation,
        change: Change,
        services: Sequence[ServiceSpec],
        results: list[NotifyResult],
        decision: Decision,
        secrets: list[str],
        apply_started: float,
    ) -> Steps[None]:
        """Compensate the services ``decision`` names, then record the outcome (raises on a conflict)."""
        new, previous = change.active, operation.previous
        events: list[EventPayload] = [notified(result, "forward", new.hash) for result in results]
        if decision.compensate and previous is not None:
            by_name = {spec.name: spec for spec in services}
            compensations = yield Notify(
                [by_name[name] for name in decision.compensate],
                new.config,
                previous.config,
                secrets,
                "compensate",
            )
            events += [notified(result, "compensate", previous.hash) for result in compensations]
        previous_hash = None if previous is None else previous.hash
        answers: list[NewEvent] = []
        if decision.automatic_rollback:
            events.append(
                ConfigRolledBack(
                    from_hash=new.hash,
                    to_hash=previous_hash,
                    reason="automatic",
                    success_ratio=decision.success_ratio,
                    threshold=self.rollback_threshold,
                )
            )
        if decision.applies:
            if operation.request.kind is OperationKind.ROLLBACK:
                verdict = operation.request.fleet_verdict
                events.append(
                    ConfigRolledBack(from_hash=previous_hash, to_hash=new.hash, reason="manual")
                    if verdict is None
                    # It pins the config as a manual rollback does (``store.pins``): a stray SIGHUP
                    # must not hand the whole fleet back what most of it just refused.
                    else ConfigRolledBack(
                        from_hash=previous_hash,
                        to_hash=new.hash,
                        reason="fleet_threshold",
                        success_ratio=verdict.share,
                        threshold=verdict.threshold,
                    )
                )
            events.append(
                ConfigApplied(
                    hash=new.hash,
                    previous_hash=previous_hash,
                    changes=change.changes,
                    changes_omitted=change.changes_omitted,
                )
            )
            # Beside the operation rather than in it (no operation_id on the envelope): the operation's
            # own events stay what they were, and every instance's answer has the same shape.
            answers.append(
                NewEvent(
                    InstanceApplied(
                        hash=new.hash,
                        position=None,
                        operation_id=str(operation.id),
                        role="decided",
                        outcome="failed" if any(not result.accepted for result in results) else "applied",
                        failures=failures_of(results),
                    ),
                    actor=operation.request.actor,
                )
            )
            # The projections fold this append and take the typed config from here (config_for_hash).
            self._applying = new
        events.append(
            operation.completed(
                decision.status,
                decision.message,
                error=decision.error,
                reason=decision.reason,
                apply_ms=elapsed_ms(apply_started),
            )
        )
        failpoints.hit("before_outcome_commit")
        try:
            self._record_now(operation, *events, expected_head=operation.expected_head, beside=answers)
        except ConcurrencyConflict:
            raise
        except LogError as lost:
            yield from self._outcome_lost(
                operation, change, services, results, decision, secrets, events, lost
            )
            raise
        failpoints.hit("after_outcome_commit")
        if decision.applies:
            self.active = new

    def _outcome_lost(
        self,
        operation: Operation,
        change: Change,
        services: Sequence[ServiceSpec],
        results: list[NotifyResult],
        decision: Decision,
        secrets: list[str],
        events: list[EventPayload],
        lost: LogError,
    ) -> Steps[None]:
        """The log refused the outcome (the database went away after the start was recorded).

        The change is not the current config, since the log does not say so: the services that took it
        are given their previous config back, so none keeps running a config the log never applied
        while this instance serves the previous one. What happened is kept as the operation's closing
        (the notifications, those compensations, ``failed`` with the store's reason code), appended
        before anything else once the log takes writes again; the caller still gets the error (a 503).
        Before the start was recorded (no services: one transaction) the operation is simply absent.
        """
        self._applying = None
        if not operation.recorded:
            return
        previous = operation.previous
        closing = [
            event
            for event in events
            if not isinstance(event, ConfigApplied | ConfigRolledBack | OperationCompleted)
        ]
        if decision.applies and previous is not None:
            by_name = {spec.name: spec for spec in services}
            accepted = [by_name[result.service] for result in reversed(results) if result.accepted]
            compensations = yield Notify(
                accepted, change.active.config, previous.config, secrets, "compensate"
            )
            closing += [notified(result, "compensate", previous.hash) for result in compensations]
        closing.append(
            operation.completed(
                OperationStatus.FAILED,
                f"{operation.noun} not applied: the event log could not record the outcome",
                error="the event log was unavailable",
                reason=lost.code,
            )
        )
        logger.error(
            "%s %s: the log refused its outcome (%s); services given their previous config back, its "
            "closing is recorded once the log takes writes again",
            operation.request.kind.value,
            operation.id,
            lost.code,
        )
        actor = operation.request.actor
        with self._unclosed_lock:
            self._unclosed += [
                NewEvent(payload, actor=actor, operation_id=operation.id) for payload in closing
            ]
