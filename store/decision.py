"""What the services' answers add up to: applied, failed, or rolled back. The rollback threshold lives here.

``decide`` is pure: given what each notified service answered (and whether the log refused the outcome
because another instance applied a config meanwhile), it says what the operation records and which
services get their previous config back. The runner calls it once per notified change, and once more if
the log refuses the applied outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confledger.store.events import OperationKind, OperationStatus
from confledger.store.services import NotifyResult

__all__ = ["Decision", "decide"]


@dataclass(frozen=True, slots=True)
class Decision:
    status: OperationStatus
    applies: bool  # ``config.applied`` is recorded
    automatic_rollback: bool  # ``config.rolled_back`` (reason automatic) is recorded
    compensate: tuple[str, ...]  # services to give their previous config back, in the order to call them
    success_ratio: float
    message: str
    error: str | None = None
    reason: str | None = None


def decide(
    *,
    kind: OperationKind,
    target_hash: str,
    results: Sequence[NotifyResult],
    threshold: float,
    automatic_rollback: bool,
    has_previous: bool,
    conflict: str | None = None,
) -> Decision:
    """The outcome of a change that ``results`` answered; ``conflict`` is the log's refusal, if any.

    A change applies when the share of services that accepted is at least ``threshold`` (no services:
    a share of 1). Below it, with automatic rollback on, the services that accepted are given the
    previous config back (in reverse order) and the operation is rolled back; with it off, the operation
    fails and those services keep the new config (drift, visible in the stats). A conflict fails the
    operation and compensates every service that accepted. With no previous config there is nothing to
    give back.
    """
    accepted = [result.service for result in results if result.accepted]
    ratio = len(accepted) / len(results) if results else 1.0
    noun = "Rollback" if kind is OperationKind.ROLLBACK else "Configuration"
    give_back = tuple(reversed(accepted)) if has_previous else ()
    if conflict is not None:
        return Decision(
            OperationStatus.FAILED,
            applies=False,
            automatic_rollback=False,
            compensate=give_back,
            success_ratio=ratio,
            message=f"{noun} not applied: another instance applied a config meanwhile",
            error=conflict,
            reason="concurrency_conflict",
        )
    if ratio >= threshold:
        message = (
            f"Rolled back to {target_hash[:16]}"
            if kind is OperationKind.ROLLBACK
            else "Configuration reloaded successfully"
        )
        if len(accepted) < len(results):
            message += f" ({len(accepted)}/{len(results)} services accepted)"
        return Decision(
            OperationStatus.SUCCESS,
            applies=True,
            automatic_rollback=False,
            compensate=(),
            success_ratio=ratio,
            message=message,
        )
    share = f"{len(accepted)}/{len(results)} services accepted (threshold {threshold:g})"
    failed = ", ".join(result.service for result in results if not result.accepted)
    if automatic_rollback:
        return Decision(
            OperationStatus.ROLLED_BACK,
            applies=False,
            automatic_rollback=True,
            compensate=give_back,
            success_ratio=ratio,
            message=f"{noun} rolled back automatically: {share}",
            error=f"services failed: {failed}",
            reason="services_below_threshold",
        )
    return Decision(
        OperationStatus.FAILED,
        applies=False,
        automatic_rollback=False,
        compensate=(),
        success_ratio=ratio,
        message=f"{noun} not applied: {share}; automatic rollback is off",
        error=f"services failed: {failed}",
        reason="services_below_threshold",
    )
