"""Validating a loaded config: the user's pydantic model, then custom validators, sync or async.

The model runs in a worker thread (it walks the whole config, and hashing follows); each custom validator
runs through ``store.calls`` under its own timeout, with a span of its own (consecutive sync validators in
one worker thread, ``UserCalls.call_in_turn``). A validator that raises or
overruns its timeout produces an error, never a crash: a reload must end in a recorded outcome whatever
user code does.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, get_args, get_origin

from opentelemetry import trace
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic_core import to_jsonable_python
from pydantic_core.core_schema import ErrorType

from confledger.store.calls import CallOutcome, TurnCall, TurnPlan, UserCalls
from confledger.store.canonical import canonical_json, config_hash
from confledger.store.durations import elapsed_ms
from confledger.store.ignored_keys import ignored_keys
from confledger.store.integrity import CONFIG_HASH_KEYED, config_hash_as
from confledger.store.secrets import ConfigPath, classify_secrets, digested_paths, find_secret_paths

__all__ = [
    "MAX_ITEM_CHARS",
    "ConfigValidator",
    "Findings",
    "ValidationOutcome",
    "ValidationPipeline",
    "ValidatorSpec",
    "capped",
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

    Keys are field names, never aliases (even under a model's ``serialize_by_alias``): the secret paths
    (``find_secret_paths``) are field names, and a secret found under a key the body does not have would
    be stored and shown in plain text. ``ValidationPipeline.parse`` reads such a body back by name.
    """
    if isinstance(config, BaseModel):
        result = _jsonable(config.model_dump(mode="python", round_trip=True, by_alias=False))
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


def format_validation_error(
    error: ValidationError, body: Mapping[str, Any] | None = None, model: type[BaseModel] | None = None
) -> list[str]:
    """One line per problem: where and what, never the offending value (it may be a secret).

    pydantic's own messages never quote the input (it is left out here). A model's own
    ``field_validator`` or ``model_validator`` is user code and may (``f"must start with sk- (got
    {v.get_secret_value()})"``): its messages are scrubbed of ``body``'s secrets, the values ``model``
    types ``SecretStr``/``SecretBytes`` and those under secret-looking names, found here because a model
    that refused its config made no config to find them in."""
    secrets: list[str] | None = None
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] not in _PYDANTIC_OWN_ERRORS:
            if secrets is None:
                secrets = secret_texts_of(body, model)
            message = scrub(message, secrets)
        lines.append(f"{location}: {message}")
    return lines


# pydantic's own error types, whose messages say what was expected, never what was given. The rest
# (value_error, assertion_error, a PydanticCustomError's own type) come from the model's validators.
_PYDANTIC_OWN_ERRORS = frozenset(get_args(ErrorType)) - {"value_error", "assertion_error"}


def secret_texts_of(body: Mapping[str, Any] | None, model: type[BaseModel] | None) -> list[str]:
    """The texts of ``body``'s secrets before any model made a config of it: values under
    secret-looking names, and the values ``model``'s ``SecretStr``/``SecretBytes`` fields would hold."""
    if body is None:
        return []
    texts = values_at(body, find_secret_paths(dict(body)))
    if model is not None:
        _typed_secret_texts(model, body, texts, 0)
    return texts


def _typed_secret_texts(annotation: Any, value: Any, texts: list[str], depth: int) -> None:
    """Walk ``value`` (raw input) along ``annotation`` (a field's type), collecting what a secret type
    would hold. Unions and containers are looked through; anything else is not a secret by type."""
    if value is None or depth > 32:
        return
    if annotation in (SecretStr, SecretBytes):
        texts.extend(_secret_texts(value))
        return
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(value, Mapping):
            for name, field_info in annotation.model_fields.items():
                key = field_info.alias if field_info.alias in value else name
                _typed_secret_texts(field_info.annotation, value.get(key), texts, depth + 1)
    elif origin in (list, tuple, set, frozenset, Sequence) and isinstance(value, list | tuple):
        for argument in get_args(annotation):
            for child in value:
                _typed_secret_texts(argument, child, texts, depth + 1)
    elif origin in (dict, Mapping) and isinstance(value, Mapping):
        arguments = get_args(annotation)
        for child in value.values():
            _typed_secret_texts(arguments[-1] if arguments else Any, child, texts, depth + 1)
    elif origin is not None:  # a union, Optional, Annotated: any of its types may apply
        for argument in get_args(annotation):
            _typed_secret_texts(argument, value, texts, depth + 1)


# The longest message, or listed item, an event records: user code and user input write them.
MAX_ITEM_CHARS = 500


def clip(text: str, limit: int = MAX_ITEM_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scrub(text: str, secret_values: Iterable[str], *, limit: int = MAX_ITEM_CHARS) -> str:
    """Remove known secret values from free text (user error messages) and bound its length."""
    for value in sorted({v for v in secret_values if v and len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, "**********")
    return clip(text, limit)


def capped(items: Sequence[str], limit: int) -> tuple[tuple[str, ...], int]:
    """The first ``limit`` items, each clipped to ``MAX_ITEM_CHARS``, and how many were left out.

    A list that user input can make as long as it likes (100,000 unknown keys, 100,000 changed paths)
    is recorded this way, so one bad file cannot make a multi-megabyte event. Text that may hold a
    secret is scrubbed first (``scrub`` clips after replacing).
    """
    kept = tuple(clip(item) for item in items[:limit])
    return kept, max(len(items) - limit, 0)


@dataclass(frozen=True, slots=True)
class ValidatorSpec:
    name: str
    function: ConfigValidator
    # None: the pipeline's validator timeout (``CONFLEDGER_VALIDATOR_TIMEOUT``).
    timeout: float | None = None
    # Asked once, at registration, rather than for every validation.
    is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.function))


@dataclass(frozen=True, slots=True)
class Findings:
    """What one custom validator found, and how long it took."""

    validator: str
    errors: list[str]
    warnings: list[str]
    duration_ms: float


@dataclass(frozen=True, slots=True)
class ModelResult:
    """What the model made of a body: the typed config, its revealed JSON form and hash, or errors."""

    config: Any | None
    body: dict[str, Any] | None
    hash: str | None
    secret_paths: frozenset[ConfigPath]
    errors: tuple[str, ...]
    duration_ms: float
    # Keys of the source the model dropped (``store.ignored_keys``): warnings, not errors.
    warnings: tuple[str, ...] = ()
    # Those of ``secret_paths`` the hash takes as keyed digests (``store.secrets.classify_secrets``).
    digested_paths: frozenset[ConfigPath] = frozenset()
    # The body's canonical text, when the hash was made of it (nothing digested): what the log stores.
    text: str | None = None


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
    model_errors: int = 0
    validator_ms: dict[str, float] = field(default_factory=dict)
    # Beyond the pipeline's ``max_items``: counted, not kept.
    errors_omitted: int = 0
    warnings_omitted: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and self.config is not None

    @property
    def error_count(self) -> int:
        return len(self.errors) + self.errors_omitted

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
            values.extend(_secret_texts(node))
    return values


def _secret_texts(node: Any) -> Iterator[str]:
    """The texts a secret ``node`` could be quoted by: each leaf inside a list or mapping under a secret
    name (and each key of such a mapping: it is part of the secret too), besides the whole."""
    yield str(node)
    if isinstance(node, Mapping):
        for key, child in node.items():
            yield str(key)
            yield from _secret_texts(child)
    elif isinstance(node, list | tuple):
        for child in node:
            yield from _secret_texts(child)


def _plain_hash(body: Mapping[str, Any], _secret_paths: frozenset[ConfigPath]) -> str:
    return config_hash(body)


class ValidationPipeline:
    """Model validation, then each custom validator in order, each under its own timeout.

    An outcome keeps the first ``max_items`` errors and warnings (``CONFLEDGER_MAX_RECORDED_ITEMS``) and
    counts the rest: they are recorded in an event and shown in every answer.
    """

    def __init__(
        self,
        model: type[BaseModel] | None = None,
        validators: Sequence[ConfigValidator | ValidatorSpec] = (),
        *,
        validator_timeout: float,
        max_items: int,
    ) -> None:
        if validator_timeout <= 0:
            raise ValueError("validator_timeout must be positive")
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.model = model
        # How a config is hashed: the log's own scheme (secrets as keyed digests), set by the runner
        # that owns this pipeline (``use_hasher``); until then the keyless hash.
        self.hasher: Callable[[Mapping[str, Any], frozenset[ConfigPath]], str] = _plain_hash
        self.validator_timeout = validator_timeout
        self.max_items = max_items
        self.validators: list[ValidatorSpec] = [
            spec if isinstance(spec, ValidatorSpec) else ValidatorSpec(_name_of(spec), spec)
            for spec in validators
        ]

    def use_hasher(self, hasher: Callable[[Mapping[str, Any], frozenset[ConfigPath]], str]) -> None:
        self.hasher = hasher

    def add(
        self, validator: ConfigValidator, *, name: str | None = None, timeout: float | None = None
    ) -> None:
        self.validators.append(ValidatorSpec(name or _name_of(validator), validator, timeout))

    def parse(self, body: Mapping[str, Any]) -> tuple[Any | None, dict[str, Any] | None, list[str]]:
        """Run only the model: (typed config, normalised revealed body, errors)."""
        if self.model is None:
            plain = dict(body)
            return plain, dump_revealed(plain), []
        try:
            # by_name: a stored body is keyed by field names (dump_revealed), so a model whose fields
            # have aliases must read it back by name, as it reads the file by alias.
            config = self.model.model_validate(dict(body), by_name=True)
        except ValidationError as exc:
            return None, None, format_validation_error(exc, body, self.model)
        return config, dump_revealed(config), []

    def check_model(self, body: Mapping[str, Any]) -> ModelResult:
        """The model, the secret fields it declares and the config hash (blocking: call it in a thread)."""
        started = time.perf_counter()
        config, normalised, errors = self.parse(body)
        if config is None or normalised is None:
            return ModelResult(None, None, None, frozenset(), tuple(errors), _ms_since(started))
        secrets = classify_secrets(config)
        digested = digested_paths(secrets)
        text = None
        if digested:
            digest = self.hasher(normalised, digested)
        else:
            # Nothing digested: the hash of every scheme is that of the body's canonical text, which is
            # kept for the log to store (``prepare_config``), so the body is encoded once.
            text = canonical_json(normalised)
            digest = config_hash_as(normalised, (), CONFIG_HASH_KEYED, None, plain_text=text)
        ignored = ignored_keys(config, body) if isinstance(config, BaseModel) else []
        warnings = tuple(f"{path}: not a field of {type(config).__name__}, ignored" for path in ignored)
        return ModelResult(
            config, normalised, digest, frozenset(secrets), (), _ms_since(started), warnings, digested, text
        )

    def calls_for(self, model: ModelResult) -> bool:
        """Whether validating ``model`` calls any custom validator (none runs on what the model refused)."""
        return model.config is not None and bool(self.validators)

    async def call_validators(
        self, model: ModelResult, *, calls: UserCalls, tracer: trace.Tracer | None = None
    ) -> list[Findings]:
        """What each custom validator found in ``model``'s config, in order."""
        tracer = tracer if tracer is not None else trace.get_tracer("confledger")
        findings: list[Findings] = []
        # Consecutive sync validators share one worker thread (one hop), each with its own deadline.
        for is_async, group in itertools.groupby(self.validators, key=_is_async):
            specs = list(group)
            if is_async:
                for spec in specs:
                    findings.append(Findings(spec.name, *await self._run(spec, model.config, calls, tracer)))
                continue
            findings += await calls.call_planned(self._turn_plan(specs, model.config, tracer))
        return findings

    def turn_plan(self, model: ModelResult, tracer: trace.Tracer) -> TurnPlan | None:
        """The validators as one turn of sync calls (``store.steps``), when none is async and there are
        any; None otherwise (the loop calls them, ``call_validators``)."""
        specs = self.validators
        if not specs or any(spec.is_async for spec in specs):
            return None
        return self._turn_plan(specs, model.config, tracer)

    def outcome(self, model: ModelResult, findings: Sequence[Findings], started: float) -> ValidationOutcome:
        """The outcome of validating ``model``, given what its validators found (since ``started``)."""
        errors = list(model.errors)
        warnings = list(model.warnings)
        validator_ms: dict[str, float] = {}
        for found in findings:
            errors += found.errors
            warnings += found.warnings
            validator_ms[found.validator] = found.duration_ms
        secrets = values_at(model.body, model.secret_paths)
        limit = self.max_items
        return ValidationOutcome(
            config=model.config,
            body=model.body,
            hash=model.hash,
            secret_paths=model.secret_paths,
            # Validators are user code and may echo the value they dislike; secrets are scrubbed here,
            # before anything can reach an event, a response or a log line.
            # Scrubbed before clipped: a clip must never cut a secret into a piece scrub cannot match.
            errors=tuple(scrub(line, secrets) for line in errors[:limit]),
            warnings=tuple(scrub(line, secrets) for line in warnings[:limit]),
            duration_ms=round(model.duration_ms + _ms_since(started), 3),
            model_errors=len(model.errors),
            validator_ms=validator_ms,
            errors_omitted=max(len(errors) - limit, 0),
            warnings_omitted=max(len(warnings) - limit, 0),
        )

    def timeout_of(self, spec: ValidatorSpec) -> float:
        return spec.timeout if spec.timeout is not None else self.validator_timeout

    async def _run(
        self, spec: ValidatorSpec, config: Any, calls: UserCalls, tracer: trace.Tracer
    ) -> tuple[list[str], list[str], float]:
        timeout = self.timeout_of(spec)
        with tracer.start_as_current_span(
            "confledger.validator", attributes={"confledger.validator": spec.name}, record_exception=False
        ) as span:
            outcome = await calls.call(
                _key(spec), functools.partial(spec.function, config), timeout=timeout, in_thread=False
            )
            errors, warnings = _findings(spec, timeout, outcome)
            _mark(span, errors, warnings)
        return errors, warnings, outcome.duration_ms

    def _turn_plan(self, specs: Sequence[ValidatorSpec], config: Any, tracer: trace.Tracer) -> TurnPlan:
        """Sync validators as one turn, in order, each in its span; ``_found`` makes the findings."""
        return TurnPlan(
            [
                TurnCall(
                    _key(spec),
                    functools.partial(spec.function, config),
                    self.timeout_of(spec),
                    "confledger.validator",
                    {"confledger.validator": spec.name},
                )
                for spec in specs
            ],
            functools.partial(self._found, specs),
            tracer,
        )

    def _found(
        self, specs: Sequence[ValidatorSpec], outcomes: list[tuple[CallOutcome, trace.Span]]
    ) -> list[Findings]:
        """What a turn's validators found, their spans marked and ended."""
        found = []
        for spec, (outcome, span) in zip(specs, outcomes, strict=True):
            errors, warnings = _findings(spec, self.timeout_of(spec), outcome)
            _mark(span, errors, warnings)
            span.end()
            found.append(Findings(spec.name, errors, warnings, outcome.duration_ms))
        return found


def _is_async(spec: ValidatorSpec) -> bool:
    return spec.is_async


def _key(spec: ValidatorSpec) -> str:
    # The function's identity too: validators given as lambdas share one name.
    return f"validator:{spec.name}:{id(spec.function)}"


def _mark(span: trace.Span, errors: list[str], warnings: list[str]) -> None:
    # Only what was found: a clean validator's span carries its name alone.
    counts = {"confledger.errors": len(errors), "confledger.warnings": len(warnings)}
    span.set_attributes({key: count for key, count in counts.items() if count})
    if errors:
        span.set_status(trace.Status(trace.StatusCode.ERROR, "validation_failed"))


def _ms_since(started: float) -> float:
    return elapsed_ms(started)


def _name_of(validator: ConfigValidator) -> str:
    return str(getattr(validator, "__name__", "validator"))


def _findings(spec: ValidatorSpec, timeout: float, outcome: CallOutcome) -> tuple[list[str], list[str]]:
    if outcome.still_running:
        return [
            f"validator {spec.name} not called: its previous call overran its timeout and is still running"
        ], []
    if outcome.timed_out:
        return [f"validator {spec.name} timed out after {timeout:g}s"], []
    if outcome.error is not None:
        return [f"validator {spec.name} raised {type(outcome.error).__name__}: {outcome.error}"], []
    return _normalise_result(spec.name, outcome.value)


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
        return _items(result.get("errors")), _items(result.get("warnings"))
    if isinstance(result, tuple) and len(result) == 2:
        return _items(result[0]), _items(result[1])
    return [
        f"validator {name} returned {type(result).__name__}, expected {{'errors': [...], 'warnings': [...]}}"
    ], []


def _items(found: Any) -> list[str]:
    """Errors or warnings as listed: a lone text is one item, not one per character."""
    if not found:
        return []
    if isinstance(found, str):
        return [found]
    return [str(item) for item in found]
