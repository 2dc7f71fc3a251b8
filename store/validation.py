"""Validating a loaded config: the user's pydantic model, then custom validators, sync or async.

A validator that raises or overruns its timeout produces an error, never a crash: a reload must end in
a recorded outcome whatever user code does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
from opentelemetry import trace
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic_core import to_jsonable_python

from confledger.store.batch import (
    NO_SPANS,
    CallOutcome,
    SyncCall,
    finish_awaitable,
    run_in_worker,
    span_starter,
)
from confledger.store.canonical import config_hash
from confledger.store.secrets import ConfigPath, find_secret_paths

__all__ = [
    "ConfigValidator",
    "ValidationOutcome",
    "ValidationPipeline",
    "ValidatorSpec",
    "dump_revealed",
    "format_validation_error",
    "scrub",
    "values_at",
]

ValidatorResult = Mapping[str, Iterable[str]] | tuple[Iterable[str], Iterable[str]] | None
ConfigValidator = Callable[[Any], ValidatorResult | Awaitable[ValidatorResult]]


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, SecretBytes):
        return value.get_secret_value().decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(key): _reveal(child) for key, child in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_reveal(child) for child in value]
    if isinstance(value, Enum):
        return _reveal(value.value)
    return value


def dump_revealed(config: Any) -> dict[str, Any]:
    """The JSON form of a validated config with secret values shown.

    Hashing the masked dump (``'**********'``) would make a rotated API key look like no change at all,
    so the config hash is always computed from this form.
    """
    if isinstance(config, BaseModel):
        result = _jsonable(config.model_dump(mode="python", round_trip=True))
    else:
        result = _jsonable(config)
    if not isinstance(result, dict):
        raise TypeError("a config must dump to a JSON object")
    return result


# Exactly these types (no subclasses): what to_jsonable_python gives back unchanged.
_JSON_LEAVES = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: Any) -> Any:
    """``to_jsonable_python(_reveal(value))``: the hash stands on that form, byte for byte.

    A model's dump is nearly all dicts, lists and plain leaves, which both steps would copy unchanged
    (keys aside: ``str(key)``); they are copied here, and only other values take the two steps. Calling
    to_jsonable_python on a part gives what it gives on the part inside the whole: it converts each
    value by its own type.
    """
    kind = type(value)
    if kind is dict:
        return {
            key if type(key) is str else str(key): child if type(child) in _JSON_LEAVES else _jsonable(child)
            for key, child in value.items()
        }
    if kind is list:
        return [child if type(child) in _JSON_LEAVES else _jsonable(child) for child in value]
    if kind in _JSON_LEAVES:
        return value
    if kind is SecretStr:
        secret = value.get_secret_value()
        if type(secret) is str:
            return secret
    return to_jsonable_python(_reveal(value))


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: where and what, never the offending value (it may be a secret)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{location}: {item['msg']}")
    return lines


def scrub(text: str, secret_values: Iterable[str], *, limit: int = 500) -> str:
    """Remove known secret values from free text (user error messages) and bound its length."""
    for value in sorted({v for v in secret_values if v and len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, "**********")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class ValidatorSpec:
    name: str
    function: ConfigValidator
    timeout: float = 5.0
    # Asked once: inspect.iscoroutinefunction costs more per validation than a no-op validator does.
    is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.function))


@dataclass(frozen=True, slots=True)
class ValidationOutcome:
    """The result of validating one body: the typed config (when the model accepted it) and findings."""

    config: Any | None
    body: dict[str, Any] | None
    hash: str | None
    secret_paths: frozenset[ConfigPath]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    duration_ms: float
    validator_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and self.config is not None

    def secret_values(self) -> list[str]:
        return values_at(self.body, self.secret_paths)


def values_at(body: Mapping[str, Any] | None, paths: Iterable[ConfigPath]) -> list[str]:
    values: list[str] = []
    if body is None:
        return values
    for path in paths:
        node: Any = body
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if node is not None:
            values.append(str(node))
    return values


class ValidationPipeline:
    """Model validation, then each custom validator in order, each under its own timeout."""

    def __init__(
        self,
        model: type[BaseModel] | None = None,
        validators: Sequence[ConfigValidator | ValidatorSpec] = (),
        *,
        validator_timeout: float = 5.0,
    ) -> None:
        self.model = model
        self.validators: list[ValidatorSpec] = [
            spec
            if isinstance(spec, ValidatorSpec)
            else ValidatorSpec(str(getattr(spec, "__name__", "validator")), spec, validator_timeout)
            for spec in validators
        ]

    def add(self, validator: ConfigValidator, *, name: str | None = None, timeout: float = 5.0) -> None:
        label = name or str(getattr(validator, "__name__", "validator"))
        self.validators.append(ValidatorSpec(label, validator, timeout))

    def parse(self, body: Mapping[str, Any]) -> tuple[Any | None, dict[str, Any] | None, list[str]]:
        """Run only the model: (typed config, normalised revealed body, errors)."""
        if self.model is None:
            plain = dict(body)
            return plain, dump_revealed(plain), []
        try:
            config = self.model.model_validate(dict(body))
        except ValidationError as exc:
            return None, None, format_validation_error(exc)
        return config, dump_revealed(config), []

    async def validate(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        load: SyncCall | None = None,
        tracer: trace.Tracer | None = None,
    ) -> ValidationOutcome:
        """Validate ``body``, or what ``load`` returns: the model first, then each validator in order.

        ``load`` runs in the same worker-thread hop as the model and the sync validators after it (one
        hop instead of one per step); if it raises, that exception propagates and nothing is validated.
        """
        if (body is None) == (load is None):
            raise TypeError("pass either a body or a load call")
        tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        started = time.perf_counter()
        parsed = _Parsed()

        def parse() -> object:
            if parsed.body is None:
                raise TypeError("nothing was loaded")
            config, normalised, errors = self.parse(parsed.body)
            parsed.config, parsed.normalised, parsed.errors = config, normalised, errors
            if config is None or normalised is None:
                raise _ModelRejected
            # Both walk the whole config: done here, off the loop, with the model.
            parsed.secret_paths = frozenset(find_secret_paths(config))
            parsed.digest = config_hash(normalised)
            return None

        def finish_model(span: trace.Span, outcome: CallOutcome) -> None:
            _close_validator_span(span, len(parsed.errors), 0)

        calls: list[SyncCall] = []
        if load is None:
            parsed.body = body
        else:
            calls.append(_storing(load, parsed))
        calls.append(
            SyncCall(
                parse,
                stop_on_error=True,
                start_span=_validator_span(tracer, "model"),
                finish_span=finish_model,
            )
        )
        # The sync validators up to the first async one join the same hop; they read the typed config
        # the model call leaves behind (the batch stops before them if the model refused the body).
        leading = self._leading_sync_validators()
        head = len(calls)
        calls += [_validator_call(spec, lambda: parsed.config, tracer) for spec in leading]
        outcomes = await run_in_worker(calls)
        load_ms = 0.0
        if load is not None:
            if outcomes[0].error is not None:
                raise outcomes[0].error
            load_ms = outcomes[0].duration_ms
        model = outcomes[head - 1]
        if model.error is not None and not isinstance(model.error, _ModelRejected):
            raise model.error

        errors = list(parsed.errors)
        warnings: list[str] = []
        validator_ms: dict[str, float] = {}
        if parsed.config is not None and parsed.normalised is not None:
            found = [
                (*_findings(spec, outcome), outcome.duration_ms, spec.name)
                for spec, outcome in zip(leading, outcomes[head:], strict=True)
            ]
            found += await self._run_validators(parsed.config, tracer, start=len(leading))
            for found_errors, found_warnings, elapsed, name in found:
                errors.extend(found_errors)
                warnings.extend(found_warnings)
                validator_ms[name] = elapsed
        if errors or warnings:
            trace.get_current_span().set_attributes(
                {"confledger.validation.errors": len(errors), "confledger.validation.warnings": len(warnings)}
            )
        secret_paths = parsed.secret_paths
        secrets = values_at(parsed.normalised, secret_paths)
        return ValidationOutcome(
            config=parsed.config,
            body=parsed.normalised,
            hash=parsed.digest,
            secret_paths=secret_paths,
            # Validators are user code and may echo the value they dislike; secrets are scrubbed here,
            # before anything can reach an event, a response or a log line.
            errors=tuple(scrub(line, secrets) for line in errors),
            warnings=tuple(scrub(line, secrets) for line in warnings),
            # The load shares the first hop but is not validation: its own time is reported apart.
            duration_ms=(time.perf_counter() - started) * 1000 - load_ms,
            validator_ms=validator_ms,
        )

    def _leading_sync_validators(self) -> list[ValidatorSpec]:
        leading: list[ValidatorSpec] = []
        for spec in self.validators:
            if spec.is_async:
                break
            leading.append(spec)
        return leading

    async def _run_validators(
        self, config: Any, tracer: trace.Tracer, *, start: int = 0
    ) -> list[tuple[list[str], list[str], float, str]]:
        """Each validator's (errors, warnings, ms, name), in order; consecutive sync ones share a hop."""
        found: list[tuple[list[str], list[str], float, str]] = []
        index = start
        while index < len(self.validators):
            spec = self.validators[index]
            if spec.is_async:
                if tracer is NO_SPANS:
                    errors, warnings, elapsed = await self._run_async(spec, config)
                else:
                    with tracer.start_as_current_span(
                        "confledger.validator",
                        attributes={"confledger.validator": spec.name},
                        record_exception=False,
                    ) as span:
                        errors, warnings, elapsed = await self._run_async(spec, config)
                        _close_validator_span(span, len(errors), len(warnings))
                found.append((errors, warnings, elapsed, spec.name))
                index += 1
                continue
            run: list[ValidatorSpec] = []
            while index < len(self.validators) and not self.validators[index].is_async:
                run.append(self.validators[index])
                index += 1
            calls = [_validator_call(spec, lambda: config, tracer) for spec in run]
            for spec, outcome in zip(run, await run_in_worker(calls), strict=True):
                errors, warnings = _findings(spec, outcome)
                found.append((errors, warnings, outcome.duration_ms, spec.name))
        return found

    async def _run_async(self, spec: ValidatorSpec, config: Any) -> tuple[list[str], list[str], float]:
        started = time.perf_counter()
        value: object = None
        error: Exception | None = None
        try:
            # move_on_after, not fail_after: a TimeoutError the validator raises itself (a socket
            # timeout) is its error, not this deadline expiring.
            with anyio.move_on_after(spec.timeout) as deadline:
                value = await spec.function(config)  # type: ignore[misc]
        except Exception as exc:
            error = exc
        outcome = CallOutcome(value, error, deadline.cancelled_caught, _ms(started))
        errors, warnings = _findings(spec, outcome)
        return errors, warnings, outcome.duration_ms


class _ModelRejected(Exception):
    """The model refused the body: the validators after it have nothing to check."""


@dataclass(slots=True)
class _Parsed:
    body: Mapping[str, Any] | None = None
    config: Any | None = None
    normalised: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    secret_paths: frozenset[ConfigPath] = frozenset()
    digest: str | None = None


def _storing(load: SyncCall, parsed: _Parsed) -> SyncCall:
    def call() -> object:
        body = load.function()
        if not isinstance(body, Mapping):
            raise TypeError("a load call must return the config body")
        parsed.body = body
        return body

    return SyncCall(
        call,
        timeout=load.timeout,
        stop_on_error=True,
        start_span=load.start_span,
        finish_span=load.finish_span,
    )


def _validator_span(tracer: trace.Tracer, name: str) -> Callable[[], trace.Span] | None:
    return span_starter(tracer, "confledger.validator", {"confledger.validator": name})


def _counts(errors: int, warnings: int) -> dict[str, int]:
    # Only what was found: a clean validator's span carries its name alone (attributes cost per span).
    counts = {}
    if errors:
        counts["confledger.errors"] = errors
    if warnings:
        counts["confledger.warnings"] = warnings
    return counts


def _validator_call(spec: ValidatorSpec, config_of: Callable[[], Any], tracer: trace.Tracer) -> SyncCall:
    def call() -> object:
        result = spec.function(config_of())
        # What validators return (a dict, a pair, None) is never awaitable: no need to ask inspect.
        return result if type(result) in _NOT_AWAITABLE else finish_awaitable(result)

    def finish(span: trace.Span, outcome: CallOutcome) -> None:
        errors, warnings = _findings(spec, outcome)
        _close_validator_span(span, len(errors), len(warnings))

    return SyncCall(
        call, timeout=spec.timeout, start_span=_validator_span(tracer, spec.name), finish_span=finish
    )


_NOT_AWAITABLE = frozenset({dict, tuple, list, type(None)})


def _findings(spec: ValidatorSpec, outcome: CallOutcome) -> tuple[list[str], list[str]]:
    if outcome.timed_out:
        return [f"validator {spec.name} timed out after {spec.timeout:g}s"], []
    if outcome.error is not None:
        return [f"validator {spec.name} raised {type(outcome.error).__name__}: {outcome.error}"], []
    return _normalise_result(spec.name, outcome.value)


def _close_validator_span(span: trace.Span, errors: int, warnings: int) -> None:
    counts = _counts(errors, warnings)
    if counts:
        span.set_attributes(counts)
    if errors:
        span.set_status(trace.Status(trace.StatusCode.ERROR, "validation_failed"))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


_RESULT_KEYS = frozenset({"errors", "warnings"})


def _normalise_result(name: str, result: Any) -> tuple[list[str], list[str]]:
    # The seed's shape is {"errors": [...], "warnings": [...]}; a (errors, warnings) pair and None
    # (nothing found) are accepted too. Anything else is the validator's bug, reported as an error.
    if result is None:
        return [], []
    if type(result) is dict or isinstance(result, Mapping):
        unknown = set(result) - _RESULT_KEYS
        if unknown:
            return [f"validator {name} returned unknown keys {sorted(unknown)}"], []
        return [str(e) for e in result.get("errors", ()) or ()], [
            str(w) for w in result.get("warnings", ()) or ()
        ]
    if isinstance(result, tuple) and len(result) == 2:
        return [str(e) for e in result[0] or ()], [str(w) for w in result[1] or ()]
    return [
        f"validator {name} returned {type(result).__name__}, expected {{'errors': [...], 'warnings': [...]}}"
    ], []
