"""What an operation would apply: the candidate read, validated, and judged against the current config.

Step 1 of ``OperationRunner``'s straight line (``store.operations``): a reload reads its source
(``config.loaded`` | ``config.load_failed``), a rollback the stored body of its target, each put
through the model and the validators (``validation.passed`` | ``validation.failed``); ``change`` then
says whether there is a change to tell the services of, or raises ``Ended`` with the events that close
the operation (validation failed, no change, a pinned config, a dry run). Kept apart from the runner
because it needs none of its operation slot or fleet state: only the log, the pipeline and the pins.
Reading is blocking code, run in the operation's worker thread (``store.steps``); it yields only to
have the custom validators called.
"""

from __future__ import annotations

import dataclasses

from opentelemetry import trace

from confledger.store import failpoints
from confledger.store.diff import changed_paths
from confledger.store.errors import (
    ConfigBodyMismatch,
    ConfigLookupError,
    NotAllowed,
    SecretKeyError,
    SourceError,
)
from confledger.store.events import (
    ConfigApplied,
    ConfigLoaded,
    ConfigLoadFailed,
    ConfigUnchanged,
    FleetChangeKept,
    OperationKind,
    OperationStatus,
    ValidationFailed,
    ValidationPassed,
)
from confledger.store.log import EventLog
from confledger.store.operation_record import (
    ActiveConfig,
    Candidate,
    Change,
    Ended,
    Operation,
)
from confledger.store.pins import PINNED_REASON, Pin, RollbackPins
from confledger.store.services import ServiceRegistry
from confledger.store.sources.reading import SourceGuard, load_source
from confledger.store.steps import Steps, validated
from confledger.store.targets import resolve_target
from confledger.store.validation import ModelResult, ValidationOutcome, ValidationPipeline, capped, clip

__all__ = ["CandidateReader", "Fetched"]

# A reload's source as read: the candidate, or why it could not be read.
Fetched = Candidate | SourceError | NotAllowed

INITIAL_CHANGE = "initial_configuration"
NO_CHANGES_MESSAGE = "No configuration changes detected"


class CandidateReader:
    """Reads and validates the candidate of each operation for one ``OperationRunner``."""

    def __init__(
        self,
        log: EventLog,
        *,
        pipeline: ValidationPipeline,
        services: ServiceRegistry,
        pins: RollbackPins,
        max_source_bytes: int,
    ) -> None:
        self.log = log
        self.pipeline = pipeline
        self.services = services
        self.pins = pins
        self.max_source_bytes = max_source_bytes
        # Sources that had content when last read: an empty read of one is most likely a rewrite in
        # progress, which ``load_source`` waits out.
        self._had_content: dict[str, bool] = {}

    def source_steps(self, operation: Operation, span: trace.Span) -> Steps[ValidationOutcome]:
        """A reload's candidate: its source read (with the pins folded up to the head the operation
        started from), parsed, and through the model and the validators."""
        request, previous = operation.request, operation.previous
        operation.pending.append(
            operation.started_event(source=request.source, force=request.force, dry_run=request.dry_run)
        )
        source = request.source
        if source is None:
            raise Ended(
                ConfigLoadFailed(reason="no_source", message="no config source configured or given"),
                operation.completed(OperationStatus.FAILED, "No config source", error="no config source"),
            )
        current = None if previous is None or request.force else previous.hash
        expect_content = self._had_content.get(source, False)
        fetched = self._fetch(source, expect_content, request.guard, current, operation.expected_head)
        if isinstance(fetched, SourceError | NotAllowed):
            # NotAllowed: the file opened for a client lies outside the allowed directories.
            exc = fetched
            span.add_event("confledger.load", {"confledger.source": source, "confledger.reason": exc.code})
            raise Ended(
                ConfigLoadFailed(
                    reason=exc.code,
                    message=exc.message,
                    source=source,
                    # A file that did not load may hold secrets nobody found: see _input_digest.
                    input_sha256=None if self._keyed() else getattr(exc, "input_sha256", None),
                    size_bytes=getattr(exc, "size_bytes", None),
                ),
                operation.completed(
                    OperationStatus.FAILED,
                    "Configuration could not be loaded",
                    error=exc.message,
                    reason=exc.code,
                ),
            )
        candidate = fetched
        loaded = candidate.loaded
        self._had_content[source] = loaded.size_bytes > 0
        span.add_event(
            "confledger.load",
            {
                "confledger.source": source,
                "confledger.size_bytes": loaded.size_bytes,
                "confledger.format": loaded.format,
            },
        )
        outcome = yield from self._validate(operation, candidate.model, span)
        operation.pending.append(
            ConfigLoaded(
                hash=outcome.hash,
                source=source,
                size_bytes=loaded.size_bytes,
                load_ms=loaded.load_ms,
                input_sha256=self._input_digest(loaded.raw_sha256, outcome),
                format=loaded.format,
            )
        )
        if candidate.seal_error is not None:
            # Secrets with no key to seal them cannot be stored: a recorded failure.
            raise Ended(
                ValidationFailed(
                    hash=outcome.hash,
                    errors=(candidate.seal_error.message,),
                    warnings=outcome.warnings,
                    duration_ms=outcome.duration_ms,
                ),
                operation.completed(
                    OperationStatus.FAILED,
                    "Configuration could not be stored",
                    error=candidate.seal_error.message,
                    reason=candidate.seal_error.code,
                ),
            )
        if candidate.sealed is not None:
            # A body is stored in the transaction of the first event that names its hash.
            operation.configs.append(candidate.sealed)
        return outcome

    def _fetch(
        self, source: str, expect_content: bool, guard: SourceGuard | None, current: str | None, head: int
    ) -> Fetched:
        """``_read_source``, with a source that cannot be read returned rather than raised (its refusal
        is recorded as the load's)."""
        try:
            return self._read_source(source, expect_content, guard, current, head)
        except (SourceError, NotAllowed) as exc:
            return exc

    def _read_source(
        self, source: str, expect_content: bool, guard: SourceGuard | None, current: str | None, head: int
    ) -> Candidate:
        """Read, parse, model-check and seal a source: the blocking part of a reload, in one thread.

        A config other than ``current`` (None: forced, or nothing applied) may be pinned: the pins are
        folded here up to ``head``, the head read under the fleet lock this operation holds.
        """
        loaded = load_source(
            source, max_bytes=self.max_source_bytes, expect_content=expect_content, guard=guard
        )
        model = self.pipeline.check_model(loaded.body)
        failpoints.hit("after_parse")
        if current is not None and model.hash not in (None, current):
            self.pins.catch_up(self.log, head=head)
        if model.body is None:
            return Candidate(loaded, model)
        try:
            # The model check hashed the body with this log's hash_config: not hashed (nor encoded) again.
            sealed = self.log.prepare_config(
                model.body,
                model.secret_paths,
                hashed=model.hash,
                digested=model.digested_paths,
                text=model.text,
            )
            return Candidate(loaded, model, sealed=sealed)
        except SecretKeyError as exc:
            return Candidate(loaded, model, seal_error=exc)

    def target_steps(self, operation: Operation, span: trace.Span) -> Steps[ValidationOutcome]:
        """A rollback's candidate: the stored body of its target, through the model and the validators."""
        request, previous = operation.request, operation.previous
        started = operation.started_event
        # A rollback moves the fleet: "current" and "previous" are the fleet's, the newest config.applied
        # (read under the fleet's lock, caught up), which this instance runs unless its own model refused
        # it. From what such an instance runs, "the previous config" would be the very one it refused, and
        # a rollback to what it runs would change nothing for the fleet.
        current = self._fleet_current(None if previous is None else previous.hash)
        try:
            if request.target is None:
                self.pins.catch_up(self.log)  # "the previous config" skips those rolled back away from
            target = resolve_target(
                self.log, request.target, current, lambda found: self.pins.get(found) is not None
            )
        except ConfigLookupError as exc:
            reference = None if request.target is None else request.target[:80]
            operation.pending.append(started(target_hash=None, source=reference))
            raise Ended(
                operation.completed(
                    OperationStatus.FAILED, "Rollback failed", error=exc.message, reason=exc.code
                )
            ) from None
        operation.pending.append(started(target_hash=target, source=f"log:{target[:16]}"))
        verdict = request.fleet_verdict
        if verdict is not None and current != verdict.hash:
            # Checked here, under the fleet's lock and caught up: a change after the verdict stands.
            raise Ended(
                operation.completed(
                    OperationStatus.FAILED,
                    "Rollback not made",
                    error=f"the fleet's config is no longer {verdict.hash[:16]}: a change came after the verdict",
                    reason="fleet_moved_on",
                )
            )
        if verdict is not None and verdict.operation_id is not None and self._kept(verdict.operation_id):
            # Another instance judged the change first (one standing in for a decider it took for gone, or
            # the decider itself, slow but alive) and kept it: one verdict per change, the first recorded.
            raise Ended(
                operation.completed(
                    OperationStatus.FAILED,
                    "Rollback not made",
                    error=f"the change to {verdict.hash[:16]} was judged and kept by the fleet threshold",
                    reason="fleet_change_kept",
                )
            )
        if target == current:
            raise Ended(
                ConfigUnchanged(hash=target),
                operation.completed(OperationStatus.SUCCESS, f"Configuration is already {target[:16]}"),
            )
        try:
            # Reading the stored body unseals its secrets: that needs the key they were sealed with. It
            # is re-hashed too: a body edited in the database is refused, the current config unchanged.
            model = self._read_stored(target)
            if model.body is not None and model.hash is not None and model.hash != target:
                # The model made another config of the stored body (the model changed since): that is
                # what would apply, so it is stored under its own hash, as a reloaded config would be.
                operation.configs.append(
                    self.log.prepare_config(model.body, model.secret_paths, digested=model.digested_paths)
                )
        except (SecretKeyError, ConfigBodyMismatch) as exc:
            raise Ended(
                operation.completed(
                    OperationStatus.FAILED, "Rollback failed", error=exc.message, reason=exc.code
                )
            ) from None
        return (yield from self._validate(operation, model, span))

    def _fleet_current(self, running: str | None) -> str | None:
        """The hash of the newest ``config.applied`` (``running``, what this instance runs, if none)."""
        newest = self.log.last_of_type(ConfigApplied.event_type)
        return (
            newest.payload.hash
            if newest is not None and isinstance(newest.payload, ConfigApplied)
            else running
        )

    def _kept(self, operation_id: str) -> bool:
        """Whether ``fleet.change_kept`` was recorded for the change ``operation_id`` made."""
        kept = self.log.last_of_type(FleetChangeKept.event_type)
        return (
            kept is not None
            and isinstance(kept.payload, FleetChangeKept)
            and (kept.payload.operation_id == operation_id)
        )

    def _read_stored(self, target: str) -> ModelResult:
        """The stored body of ``target``, re-hashed before anything uses it (``ConfigBodyMismatch``), then
        through the model. A body the model leaves as it is keeps the hash it is stored under, whatever
        that hash's scheme (an old log's plain hashes roll back to themselves)."""
        stored = self.log.get_config(target)
        model = self.pipeline.check_model(stored.body)
        if model.body is not None and model.hash != target:
            again = self.log.hash_config_as(model.body, model.digested_paths, stored.hash_version)
            if again == target:
                model = dataclasses.replace(model, hash=target)
        return model

    def _keyed(self) -> bool:
        # The key, not the key record: a log's first keyed append writes the record, and it may be this one.
        return self.log.integrity().keys is not None

    def _input_digest(self, raw_sha256: str, outcome: ValidationOutcome) -> str | None:
        """The file's sha256 as ``config.loaded`` records it, unless the file holds secrets (or may: its
        model refused it) on a keyed log. Anyone who can read the log knows the rest of such a file from
        the config shown, and a plain digest of its bytes would let them test guesses at the secrets
        offline, which the config's own hash (secrets as keyed digests) was made not to allow."""
        if self._keyed() and (outcome.hash is None or outcome.secret_paths):
            return None
        return raw_sha256

    def _validate(
        self, operation: Operation, model: ModelResult, span: trace.Span
    ) -> Steps[ValidationOutcome]:
        # The model's verdict is an event on the operation span; each custom validator has its own span.
        span.add_event("confledger.model", {"confledger.errors": len(model.errors)})
        outcome = yield from validated(self.pipeline, model)
        operation.validation_ms = outcome.duration_ms
        found = {
            "confledger.validation.errors": len(outcome.errors),
            "confledger.validation.warnings": len(outcome.warnings),
        }
        span.set_attributes({key: count for key, count in found.items() if count})
        return outcome

    def pin_for(self, operation: Operation, outcome: ValidationOutcome) -> Pin | None:
        """The rollback pin on the config a reload (not forced) would apply (pins read by _read_source)."""
        request = operation.request
        if request.kind is not OperationKind.RELOAD or request.force or not outcome.ok:
            return None
        return self.pins.get(outcome.hash)

    def change(self, operation: Operation, outcome: ValidationOutcome, pin: Pin | None) -> Change:
        """The validated change, or ``Ended`` when the validation failed, nothing changed, the config
        was rolled back away from (``pin``), or a dry run."""
        if not outcome.ok or outcome.hash is None or outcome.body is None:
            raise Ended(
                ValidationFailed(
                    hash=outcome.hash,
                    errors=outcome.errors,
                    warnings=outcome.warnings,
                    duration_ms=outcome.duration_ms,
                    errors_omitted=outcome.errors_omitted,
                    warnings_omitted=outcome.warnings_omitted,
                ),
                operation.completed(
                    OperationStatus.FAILED,
                    f"{operation.noun} validation failed",
                    error=f"validation failed: {outcome.error_count} error(s)",
                    reason="validation_failed",
                ),
            )
        request, previous = operation.request, operation.previous
        unchanged = previous is not None and outcome.hash == previous.hash
        if request.kind is OperationKind.RELOAD and unchanged and not request.force:
            raise Ended(
                ConfigUnchanged(hash=outcome.hash),
                operation.completed(OperationStatus.SUCCESS, NO_CHANGES_MESSAGE),
            )
        operation.pending.append(
            ValidationPassed(
                hash=outcome.hash,
                warnings=outcome.warnings,
                duration_ms=outcome.duration_ms,
                warnings_omitted=outcome.warnings_omitted,
            )
        )
        if pin is not None:
            refusal = pin.refusal()
            raise Ended(
                operation.completed(OperationStatus.FAILED, refusal, error=refusal, reason=PINNED_REASON)
            )
        paths = (
            [INITIAL_CHANGE]
            if previous is None
            else changed_paths(previous.body, outcome.body, previous.secret_paths | outcome.secret_paths)
        )
        changes, omitted = capped(paths, self.pipeline.max_items)
        if request.dry_run:
            names = ", ".join(self.services.names()) or "no services"
            listed = ", ".join(clip(path, 100) for path in changes[:20])
            raise Ended(
                operation.completed(
                    OperationStatus.SUCCESS,
                    f"Dry run: {len(paths)} change(s) ({listed}); would notify {names}",
                )
            )
        active = ActiveConfig(outcome.hash, outcome.config, outcome.body, outcome.secret_paths)
        return Change(active, changes, omitted)
