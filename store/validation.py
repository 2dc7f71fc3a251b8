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

from store.canonical import config_hash
from store.secrets import ConfigPath, find_secret_paths

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
        python_form = config.model_dump(mode="python", round_trip=True)
        revealed = _reveal(python_form)
    else:
        revealed = _reveal(config)
    result = to_jsonable_python(revealed)
    if not isinstance(result, dict):
        raise TypeError("a config must dump to a JSON object")
    return result


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
        self, body: Mapping[str, Any], *, tracer: trace.Tracer | None = None
    ) -> ValidationOutcome:
        tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        started = time.perf_counter()
        with tracer.start_as_current_span("confledger.validation", record_exception=False) as span:
            with tracer.start_as_current_span(
                "confledger.validator", attributes={"confledger.validator": "model"}, record_exception=False
            ) as model_span:
                config, normalised, errors = self.parse(body)
                _close_validator_span(model_span, len(errors), 0)
            warnings: list[str] = []
            validator_ms: dict[str, float] = {}
            secret_paths: frozenset[ConfigPath] = frozenset()
            digest: str | None = None
            if config is not None and normalised is not None:
                secret_paths = frozenset(find_secret_paths(config))
                digest = config_hash(normalised)
                for spec in self.validators:
                    with tracer.start_as_current_span(
                        "confledger.validator",
                        attributes={"confledger.validator": spec.name},
                        record_exception=False,
                    ) as validator_span:
                        found_errors, found_warnings, elapsed = await self._run_one(spec, config)
                        _close_validator_span(validator_span, len(found_errors), len(found_warnings))
                    errors.extend(found_errors)
                    warnings.extend(found_warnings)
                    validator_ms[spec.name] = elapsed
            span.set_attributes({"confledger.errors": len(errors), "confledger.warnings": len(warnings)})
            if errors:
                span.set_status(trace.Status(trace.StatusCode.ERROR, "validation_failed"))
        secrets = values_at(normalised, secret_paths)
        return ValidationOutcome(
            config=config,
            body=normalised,
            hash=digest,
            secret_paths=secret_paths,
            # Validators are user code and may echo the value they dislike; secrets are scrubbed here,
            # before anything can reach an event, a response or a log line.
            errors=tuple(scrub(line, secrets) for line in errors),
            warnings=tuple(scrub(line, secrets) for line in warnings),
            duration_ms=(time.perf_counter() - started) * 1000,
            validator_ms=validator_ms,
        )

    async def _run_one(self, spec: ValidatorSpec, config: Any) -> tuple[list[str], list[str], float]:
        started = time.perf_counter()
        try:
            # move_on_after, not fail_after: a TimeoutError the validator raises itself (a socket
            # timeout) is its error, not this deadline expiring.
            with anyio.move_on_after(spec.timeout) as deadline:
                if inspect.iscoroutinefunction(spec.function):
                    result = await spec.function(config)
                else:
                    result = await anyio.to_thread.run_sync(spec.function, config, abandon_on_cancel=True)
                    if inspect.isawaitable(result):
                        result = await result
        except Exception as exc:
            return [f"validator {spec.name} raised {type(exc).__name__}: {exc}"], [], _ms(started)
        if deadline.cancelled_caught:
            return [f"validator {spec.name} timed out after {spec.timeout:g}s"], [], _ms(started)
        errors, warnings = _normalise_result(spec.name, result)
        return errors, warnings, _ms(started)


def _close_validator_span(span: trace.Span, errors: int, warnings: int) -> None:
    span.set_attributes({"confledger.errors": errors, "confledger.warnings": warnings})
    if errors:
        span.set_status(trace.Status(trace.StatusCode.ERROR, "validation_failed"))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _normalise_result(name: str, result: Any) -> tuple[list[str], list[str]]:
    # The seed's shape is {"errors": [...], "warnings": [...]}; a (errors, warnings) pair and None
    # (nothing found) are accepted too. Anything else is the validator's bug, reported as an error.
    if result is None:
        return [], []
    if isinstance(result, Mapping):
        unknown = set(result) - {"errors", "warnings"}
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
