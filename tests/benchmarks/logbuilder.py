"""Building large, realistic event logs quickly, for the start-up benchmark and the start-up test.

Each operation is the sequence a successful reload with three services records:

    operation.started, config.loaded, validation.passed, service.notified x3, config.applied,
    operation.completed

cycling through a handful of distinct configs derived from ``examples/config.yaml`` (every tenth
operation has one service refusing, still above the rollback threshold). Events go in through
``EventLog.append`` (so positions, chain hashes and config rows are exactly what a live reloader
writes), many operations per transaction; callers building on SQLite open the log with
``sqlite_synchronous="OFF"`` and reopen it normally afterwards.
"""

from __future__ import annotations

import copy
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, NewEvent, ServiceOutcome, Trigger
from confledger.store.diff import changed_paths
from confledger.store.events import (
    ConfigApplied,
    ConfigLoaded,
    EventPayload,
    OperationCompleted,
    OperationKind,
    OperationStarted,
    OperationStatus,
    ServiceNotified,
    ValidationPassed,
)
from confledger.store.log import PreparedConfig
from confledger.store.secrets import classify_secrets, digested_paths
from confledger.store.validation import ValidationPipeline

__all__ = [
    "EVENTS_PER_OPERATION",
    "EXAMPLE_CONFIG",
    "BuiltLog",
    "build_log",
    "example_bodies",
    "pipeline",
]

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
EVENTS_PER_OPERATION = 8
SERVICES = (("cache", 30), ("search", 20), ("api", 10))
TRIGGERS = (Trigger.API, Trigger.MANUAL, Trigger.FILE_WATCH, Trigger.SIGNAL, Trigger.CLI)


def pipeline() -> ValidationPipeline:
    return ValidationPipeline(AppConfig, VALIDATORS, validator_timeout=5.0, max_items=50)


def example_bodies(count: int) -> list[dict[str, Any]]:
    """``count`` distinct valid variants of the example config (one of them rotates a secret)."""
    base = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    bodies = []
    for index in range(count):
        body = copy.deepcopy(base)
        body["performance"]["max_retries"] = 3 + index
        body["cache"]["ttl_seconds"] = 3600 + 60 * index
        if index % 2:
            body["embedding"]["openai_api_key"] = f"sk-demo-rotated-{index:04d}-not-a-real-key"
        bodies.append(body)
    return bodies


@dataclass(frozen=True)
class BuiltLog:
    head: int
    operations: int
    config_hashes: tuple[str, ...]
    last_applied_hash: str


def _prepare(log: EventLog, count: int) -> tuple[list[PreparedConfig], list[dict[str, Any]]]:
    checker = pipeline()
    prepared: list[PreparedConfig] = []
    normalised_bodies: list[dict[str, Any]] = []
    for body in example_bodies(count):
        config, normalised, errors = checker.parse(body)
        if config is None or normalised is None:
            raise AssertionError(f"example variant does not validate: {errors}")
        secrets = classify_secrets(config)
        prepared.append(log.prepare_config(normalised, secrets, digested=digested_paths(secrets)))
        normalised_bodies.append(normalised)
    return prepared, normalised_bodies


def build_log(
    log: EventLog,
    events: int,
    *,
    distinct_configs: int = 4,
    batch_events: int = 500,
    seed: int = 7,
    actor: str = "bench",
    first_config_once: bool = False,
) -> BuiltLog:
    """Append ``events`` (rounded down to whole operations) to an empty ``log``.

    ``first_config_once``: the first config is applied by the first operation only, the others cycle
    after it, so ``config_hashes[0]`` lies the whole log back (the far rollback target)."""
    if log.head() != 0:
        raise ValueError("build_log needs an empty log")
    rng = random.Random(seed)
    prepared, bodies = _prepare(log, distinct_configs)
    hashes = [config.hash for config in prepared]
    changes = {
        (a, b): tuple(changed_paths(bodies[a], bodies[b]))
        for a in range(distinct_configs)
        for b in range(distinct_configs)
        if a != b
    }
    operations = events // EVENTS_PER_OPERATION
    per_batch = max(1, batch_events // EVENTS_PER_OPERATION)
    previous: int | None = None
    head = 0
    done = 0
    pending_configs = list(prepared)
    while done < operations:
        batch: list[NewEvent] = []
        for _ in range(min(per_batch, operations - done)):
            if first_config_once:
                target = 0 if done == 0 else 1 + (done - 1) % (distinct_configs - 1)
            else:
                target = done % distinct_configs
            batch.extend(_operation(rng, done, previous, target, hashes, changes, head + len(batch), actor))
            previous = target
            done += 1
        positions = log.append(batch, configs=pending_configs)
        pending_configs = []
        head = positions[-1]
    return BuiltLog(
        head=head,
        operations=operations,
        config_hashes=tuple(hashes),
        last_applied_hash=hashes[previous if previous is not None else 0],
    )


def _operation(
    rng: random.Random,
    number: int,
    previous: int | None,
    target: int,
    hashes: list[str],
    changes: dict[tuple[int, int], tuple[str, ...]],
    head: int,
    actor: str,
) -> list[NewEvent]:
    operation_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    new_hash = hashes[target]
    old_hash = None if previous is None else hashes[previous]
    validation_ms = rng.uniform(0.2, 1.5)
    notified: list[EventPayload] = []
    refused = number % 10 == 9
    for index, (service, priority) in enumerate(SERVICES):
        outcome = ServiceOutcome.FAILED if refused and index == 1 else ServiceOutcome.SUCCESS
        notified.append(
            ServiceNotified(
                service=service,
                priority=priority,
                outcome=outcome,
                duration_ms=rng.uniform(0.05, 4.0),
                error="callback returned False" if outcome is ServiceOutcome.FAILED else None,
                direction="forward",
                config_hash=new_hash,
            )
        )
    apply_ms = rng.uniform(0.5, 8.0)
    message = "Configuration reloaded successfully" + (" (2/3 services accepted)" if refused else "")
    payloads: list[EventPayload] = [
        OperationStarted(
            kind=OperationKind.RELOAD,
            trigger=TRIGGERS[number % len(TRIGGERS)],
            source=str(EXAMPLE_CONFIG),
            force=number % 7 == 0,
            previous_hash=old_hash,
            expected_head=head,
        ),
        ConfigLoaded(
            hash=new_hash,
            source=str(EXAMPLE_CONFIG),
            size_bytes=900 + target,
            load_ms=rng.uniform(0.3, 3.0),
            input_sha256=f"{rng.getrandbits(256):064x}",
            format="yaml",
        ),
        ValidationPassed(
            hash=new_hash,
            warnings=("performance.max_concurrent_requests above 50 may exhaust upstream rate limits",)
            if number % 5 == 0
            else (),
            duration_ms=validation_ms,
        ),
        *notified,
        ConfigApplied(
            hash=new_hash,
            previous_hash=old_hash,
            changes=("initial_configuration",) if previous is None else changes[(previous, target)],
        ),
        OperationCompleted(
            status=OperationStatus.SUCCESS,
            message=message,
            total_ms=validation_ms + apply_ms + rng.uniform(0.5, 3.0),
            validation_ms=validation_ms,
            apply_ms=apply_ms,
        ),
    ]
    assert len(payloads) == EVENTS_PER_OPERATION
    return [NewEvent(payload, actor=actor, operation_id=operation_id) for payload in payloads]
