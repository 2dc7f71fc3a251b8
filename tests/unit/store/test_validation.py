"""The validation pipeline: the user's model, then custom validators (sync or async) under timeouts."""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import threading
import uuid
from types import MappingProxyType
from typing import Any, Literal

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from pydantic import (
    BaseModel,
    RootModel,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from confledger.store import config_hash
from confledger.store.calls import TurnPlan, UserCalls
from confledger.store.canonical import canonical_json
from confledger.store.steps import RunValidators, Steps, Work, drive, validated
from confledger.store.validation import (
    MAX_ITEM_CHARS,
    ValidationOutcome,
    ValidationPipeline,
    ValidatorSpec,
    _reveal,
    capped,
    dump_revealed,
    format_validation_error,
    scrub,
    values_at,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Database(BaseModel):
    url: str = "sqlite://"
    pool_size: int = 5
    password: SecretStr | None = None


class Service(BaseModel):
    name: str
    debug: bool = False
    database: Database = Database()


BODY: dict[str, Any] = {"name": "svc", "database": {"pool_size": 7, "password": "hunter2-secret"}}


def make_pipeline(
    model: type[BaseModel] | None = None,
    validators: Any = (),
    *,
    validator_timeout: float = 5.0,
    max_items: int = 50,
) -> ValidationPipeline:
    return ValidationPipeline(model, validators, validator_timeout=validator_timeout, max_items=max_items)


async def validate(pipeline: ValidationPipeline, body: dict[str, Any]) -> Any:
    """``body`` through the model and the validators, as an operation's straight line validates it."""
    calls = UserCalls(4)

    tracer = trace.get_tracer("test")

    async def perform(work: Work) -> Any:
        assert isinstance(work, RunValidators)
        return await pipeline.call_validators(work.model, calls=calls, tracer=tracer)

    def plan(work: Work) -> TurnPlan | None:
        assert isinstance(work, RunValidators)
        return pipeline.turn_plan(work.model, tracer)

    def line() -> Steps[ValidationOutcome]:
        return (yield from validated(pipeline, pipeline.check_model(body)))

    shortest = min((pipeline.timeout_of(spec) for spec in pipeline.validators), default=math.inf)
    return await drive(line(), perform, plan, calls, shortest=shortest)


# --- the model ---------------------------------------------------------------------------------------


async def test_a_valid_body_gives_the_typed_config_its_revealed_body_and_hash() -> None:
    outcome = await validate(make_pipeline(Service), BODY)

    assert outcome.ok
    assert outcome.config == Service.model_validate(BODY)
    assert outcome.body == {
        "name": "svc",
        "debug": False,
        "database": {"url": "sqlite://", "pool_size": 7, "password": "hunter2-secret"},
    }
    assert outcome.hash == config_hash(outcome.body)
    assert outcome.secret_paths == frozenset({("database", "password")})
    assert outcome.secret_values() == ["hunter2-secret"]
    assert outcome.errors == ()
    assert outcome.duration_ms > 0


async def test_a_changed_secret_changes_the_hash() -> None:
    # The seed hashed the masked dump ('**********'), so a rotated key looked like no change.
    pipeline = make_pipeline(Service)
    one = await validate(pipeline, BODY)
    two = await validate(pipeline, {**BODY, "database": {**BODY["database"], "password": "rotated-key"}})
    assert one.hash != two.hash


async def test_defaults_filled_in_by_the_model_hash_like_explicit_values() -> None:
    pipeline = make_pipeline(Service)
    implicit = await validate(pipeline, {"name": "svc"})
    explicit = await validate(pipeline, {"name": "svc", "debug": False, "database": {"pool_size": 5}})
    assert implicit.hash == explicit.hash


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # a wrong type, with its location
        ({"name": "svc", "database": {"pool_size": "lots"}}, "database.pool_size: "),
        # a missing required field
        ({"debug": True}, "name: Field required"),
        # a body that is not an object of the model's shape at all
        ({"name": ["a", "list"]}, "name: Input should be a valid string"),
    ],
)
async def test_model_errors_name_the_location_and_fail(body: dict[str, Any], expected: str) -> None:
    outcome = await validate(make_pipeline(Service), body)
    assert not outcome.ok
    assert outcome.config is None
    assert outcome.body is None
    assert outcome.hash is None
    assert any(line.startswith(expected) for line in outcome.errors), outcome.errors


async def test_model_errors_never_echo_the_offending_value() -> None:
    outcome = await validate(
        make_pipeline(Service), {"name": "svc", "database": {"pool_size": "sk-live-1234-secret-looking"}}
    )
    assert outcome.errors
    assert all("sk-live-1234" not in line for line in outcome.errors)


async def test_validators_do_not_run_when_the_model_rejects() -> None:
    ran: list[str] = []
    pipeline = make_pipeline(Service, [lambda config: ran.append("x")])
    outcome = await validate(pipeline, {"debug": "not a bool"})
    assert not outcome.ok
    assert ran == []


async def test_without_a_model_any_json_object_is_accepted() -> None:
    body = {"anything": [1, 2, {"nested": True}], "api_key": "abcd-1234"}
    outcome = await validate(make_pipeline(), body)
    assert outcome.ok
    assert outcome.config == body
    assert outcome.body == body
    assert outcome.hash == config_hash(body)
    assert outcome.secret_paths == frozenset({("api_key",)})  # found by its name


def test_parse_runs_only_the_model() -> None:
    config, body, errors = make_pipeline(Service, [lambda c: {"errors": ["never"]}]).parse(BODY)
    assert isinstance(config, Service)
    assert body is not None
    assert body["database"]["password"] == "hunter2-secret"
    assert errors == []


@pytest.mark.parametrize(
    ("body", "keeps_text"),
    [
        # Nothing digested: the hash is the text's, and the text is kept for the log to store.
        ({"name": "svc"}, True),
        ({"name": "svc", "database": {"pool_size": 7}}, True),
        # A password the hash digests: no text of the plain body is what the log would store.
        (BODY, False),
    ],
)
def test_check_model_keeps_the_text_it_hashed_when_nothing_is_digested(
    body: dict[str, Any], keeps_text: bool
) -> None:
    model = make_pipeline(Service).check_model(body)
    assert model.body is not None
    if keeps_text:
        assert model.text == canonical_json(model.body)
        assert model.hash == config_hash(model.body)
    else:
        assert model.text is None
        assert model.digested_paths


def test_dump_revealed_shows_secret_values_in_json_form() -> None:
    class WithEnum(BaseModel):
        token: SecretStr
        tags: set[str] = {"b"}

    assert dump_revealed(WithEnum(token=SecretStr("t0ken-value"))) == {"token": "t0ken-value", "tags": ["b"]}


# --- custom validators ------------------------------------------------------------------------------------


def seed_shape(config: Service) -> dict[str, list[str]]:
    errors = ["database.pool_size: must be at most 10"] if config.database.pool_size > 10 else []
    return {"errors": errors, "warnings": ["debug is on"] if config.debug else []}


async def async_seed_shape(config: Service) -> dict[str, list[str]]:
    await anyio.sleep(0)
    return seed_shape(config)


def pair_shape(config: Service) -> tuple[list[str], list[str]]:
    found = seed_shape(config)
    return found["errors"], found["warnings"]


@pytest.mark.parametrize(
    "validator",
    [
        seed_shape,  # sync, the seed's {"errors": [...], "warnings": [...]}
        async_seed_shape,  # async, same shape
        pair_shape,  # sync, an (errors, warnings) pair
    ],
)
async def test_validator_errors_fail_and_warnings_pass(validator: Any) -> None:
    pipeline = make_pipeline(Service, [validator])

    warned = await validate(pipeline, {**BODY, "debug": True})
    assert warned.ok
    assert warned.warnings == ("debug is on",)

    failed = await validate(pipeline, {**BODY, "database": {"pool_size": 50}})
    assert not failed.ok
    assert failed.config is not None  # the model accepted it; a validator did not
    assert failed.errors == ("database.pool_size: must be at most 10",)


async def test_a_validator_returning_none_found_nothing() -> None:
    outcome = await validate(make_pipeline(Service, [lambda config: None]), BODY)
    assert outcome.ok


async def test_findings_of_several_validators_add_up_in_order() -> None:
    pipeline = make_pipeline(
        Service,
        [
            lambda c: {"errors": ["first"], "warnings": ["w1"]},
            lambda c: {"errors": ["second"], "warnings": ["w2"]},
        ],
    )
    outcome = await validate(pipeline, BODY)
    assert outcome.errors == ("first", "second")
    assert outcome.warnings == ("w1", "w2")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        # a dict with keys the seed's shape does not have
        ({"errors": [], "problems": ["x"]}, "validator odd returned unknown keys ['problems']"),
        # neither a dict, a pair nor None
        (["just", "a", "list"], "validator odd returned list, expected {'errors': [...], 'warnings': [...]}"),
        # a bool is not a finding either
        (True, "validator odd returned bool, expected {'errors': [...], 'warnings': [...]}"),
    ],
)
async def test_a_validator_returning_the_wrong_shape_is_an_error(result: Any, expected: str) -> None:
    pipeline = make_pipeline(Service)
    pipeline.add(lambda config: result, name="odd")
    outcome = await validate(pipeline, BODY)
    assert outcome.errors == (expected,)


@pytest.mark.parametrize(
    ("result", "errors", "warnings"),
    [
        # (what the validator returned, the errors and the warnings it found)
        ({"errors": "n too big"}, ("n too big",), ()),  # a lone text is one error, not nine
        ({"errors": ["a", "b"], "warnings": "w"}, ("a", "b"), ("w",)),
        (("one error", None), ("one error",), ()),  # the (errors, warnings) pair
        ({"errors": None, "warnings": []}, (), ()),
    ],
)
async def test_a_validator_s_findings_are_read_as_meant(
    result: Any, errors: tuple[str, ...], warnings: tuple[str, ...]
) -> None:
    pipeline = make_pipeline(Service)
    pipeline.add(lambda config: result, name="odd")
    outcome = await validate(pipeline, BODY)
    assert (outcome.errors, outcome.warnings) == (errors, warnings)


async def test_a_validator_that_raises_is_an_error_not_a_crash() -> None:
    def broken(config: Service) -> None:
        raise ValueError("cannot reach the schema registry")

    outcome = await validate(make_pipeline(Service, [broken]), BODY)
    assert outcome.errors == ("validator broken raised ValueError: cannot reach the schema registry",)
    assert list(outcome.validator_ms) == ["broken"]
    assert outcome.validator_ms["broken"] > 0


async def test_a_validator_that_raises_timeout_error_itself_is_reported_as_raising() -> None:
    # Its own TimeoutError (a socket timeout, say) is not the pipeline's deadline expiring.
    def connects(config: Service) -> None:
        raise TimeoutError("connect to registry timed out")

    outcome = await validate(make_pipeline(Service, [connects], validator_timeout=30), BODY)
    assert outcome.errors == ("validator connects raised TimeoutError: connect to registry timed out",)


@pytest.mark.parametrize(
    "asynchronous",
    [
        False,  # a sync validator in a worker thread, abandoned at the deadline
        True,  # an async validator, cancelled at the deadline
    ],
)
async def test_a_validator_past_its_timeout_is_an_error(asynchronous: bool) -> None:
    release = threading.Event()

    def slow_sync(config: Service) -> None:
        release.wait(10)

    async def slow_async(config: Service) -> None:
        await anyio.sleep(10)

    pipeline = make_pipeline(Service)
    pipeline.add(slow_async if asynchronous else slow_sync, name="slow", timeout=0.05)
    try:
        outcome = await validate(pipeline, BODY)
    finally:
        release.set()
    assert outcome.errors == ("validator slow timed out after 0.05s",)


async def test_validator_messages_never_carry_a_secret() -> None:
    def echoes(config: Service) -> dict[str, list[str]]:
        secret = config.database.password.get_secret_value()  # type: ignore[union-attr]
        return {"errors": [f"password {secret} is weak"], "warnings": [f"saw {secret}"]}

    def raises(config: Service) -> None:
        raise RuntimeError(f"bad {config.database.password.get_secret_value()}")  # type: ignore[union-attr]

    outcome = await validate(make_pipeline(Service, [echoes, raises]), BODY)
    assert outcome.errors == (
        "password ********** is weak",
        "validator raises raised RuntimeError: bad **********",
    )
    assert outcome.warnings == ("saw **********",)


# (model errors, validator errors, validator warnings, max_items) -> kept and counted
FINDING_CAPS = [
    # 100,000 unknown keys refused by the model: the first few kept, the rest counted
    (100_000, 0, 0, 50),
    # a validator's long lists, errors and warnings capped each on its own
    (0, 1_000, 300, 50),
    # under the cap: all kept, nothing counted
    (0, 3, 2, 50),
    # a cap of one
    (0, 2, 2, 1),
]


class Strict(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = "svc"


@pytest.mark.parametrize(("model_errors", "errors", "warnings", "max_items"), FINDING_CAPS)
async def test_errors_and_warnings_are_capped_and_the_rest_counted(
    model_errors: int, errors: int, warnings: int, max_items: int
) -> None:
    def many(config: Any) -> dict[str, list[str]]:
        return {"errors": [f"e{n}" for n in range(errors)], "warnings": [f"w{n}" for n in range(warnings)]}

    body = {f"K{n:06d}": "1" for n in range(model_errors)}
    outcome = await validate(make_pipeline(Strict, [many], max_items=max_items), body)

    total_errors = model_errors + errors
    assert len(outcome.errors) == min(total_errors, max_items)
    assert outcome.errors_omitted == total_errors - len(outcome.errors)
    assert outcome.error_count == total_errors
    assert len(outcome.warnings) == min(warnings, max_items)
    assert outcome.warnings_omitted == warnings - len(outcome.warnings)
    assert outcome.ok is (total_errors == 0)


async def test_a_long_message_is_scrubbed_before_it_is_clipped() -> None:
    # A secret straddling the clip would leave a piece scrub can no longer recognise.
    def echoes(config: Service) -> dict[str, list[str]]:
        secret = config.database.password.get_secret_value()  # type: ignore[union-attr]
        return {"errors": ["x" * (MAX_ITEM_CHARS - 5) + secret + "y" * 100]}

    outcome = await validate(make_pipeline(Service, [echoes]), BODY)
    (error,) = outcome.errors
    assert len(error) == MAX_ITEM_CHARS
    assert "hunt" not in error  # clipped first, it would end in the secret's first four letters


def test_capped_keeps_the_first_items_clipped() -> None:
    assert capped(["a", "b", "c"], 2) == (("a", "b"), 1)
    assert capped(["a"], 5) == (("a",), 0)
    (long,), omitted = capped(["z" * 10_000], 1)
    assert (len(long), omitted) == (MAX_ITEM_CHARS, 0)


def test_a_pipeline_needs_room_for_one_item() -> None:
    with pytest.raises(ValueError, match="max_items"):
        make_pipeline(Service, max_items=0)


async def test_validator_specs_keep_their_name_and_timeout() -> None:
    spec = ValidatorSpec("named", lambda c: {"errors": ["no"]}, timeout=1.0)
    pipeline = make_pipeline(Service, [spec, seed_shape])
    # None: the pipeline's timeout (the settings' CONFLEDGER_VALIDATOR_TIMEOUT), applied when it runs.
    assert [(s.name, s.timeout) for s in pipeline.validators] == [("named", 1.0), ("seed_shape", None)]
    assert pipeline.validator_timeout == 5.0
    outcome = await validate(pipeline, BODY)
    assert set(outcome.validator_ms) == {"named", "seed_shape"}


# --- helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        # every occurrence, longest value first so a prefix never leaves a tail behind
        ("key abcd and abcdef", ["abcd", "abcdef"], "key ********** and **********"),
        # values under 4 characters are too common to scrub
        ("a b abc", ["abc"], "a b abc"),
        # empty values are ignored
        ("nothing", [""], "nothing"),
    ],
)
def test_scrub(text: str, secrets: list[str], expected: str) -> None:
    assert scrub(text, secrets) == expected


def test_scrub_bounds_the_length() -> None:
    scrubbed = scrub("x" * 1000, [], limit=100)
    assert len(scrubbed) == 100
    assert scrubbed.endswith("…")


def test_values_at_skips_paths_that_are_missing() -> None:
    body = {"a": {"b": "one"}, "list": [{"c": 2}], "none": None}
    assert values_at(body, [("a", "b"), ("list", 0, "c"), ("a", "missing"), ("list", 5), ("none",)]) == [
        "one",
        "2",
    ]
    assert values_at(None, [("a",)]) == []


def test_a_message_quoting_a_part_of_a_secret_list_or_mapping_is_scrubbed() -> None:
    """A secret name holds a whole list or mapping: a validator quoting one item of it (or one key of it)
    must not get that item through."""
    body = {"credentials": {"user": "u", "pass": "SECRET-H1-pass"}, "tokens": ["SECRET-H2-token"]}
    secrets = values_at(body, [("credentials",), ("tokens",)])
    line = scrub("credential pass SECRET-H1-pass is revoked; token SECRET-H2-token too", secrets)
    assert "SECRET" not in line
    assert "pass" in secrets  # the mapping's own keys are part of the secret (too short to be scrubbed)


def test_format_validation_error_gives_one_line_per_problem() -> None:
    try:
        Service.model_validate({"database": {"pool_size": "x"}})
    except Exception as exc:  # pydantic.ValidationError
        lines = format_validation_error(exc)  # type: ignore[arg-type]
    else:  # pragma: no cover
        raise AssertionError("expected a ValidationError")
    assert len(lines) == 2
    assert lines[0] == "name: Field required"
    assert lines[1].startswith("database.pool_size: ")


class _Echoing(BaseModel):
    """A model whose own validators echo what they refuse, secrets included (user code does)."""

    api_key: SecretStr
    upstream: dict[str, str] = {}

    @field_validator("api_key")
    @classmethod
    def _prefixed(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("sk-"):
            raise ValueError(f"must start with sk- (got {value.get_secret_value()})")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> _Echoing:
        if self.upstream.get("token") == self.api_key.get_secret_value():
            raise ValueError(f"upstream token {self.upstream['token']} repeats the api key")
        return self


@pytest.mark.parametrize(
    ("body", "secret", "kept"),
    [
        # (the config, the text no line may hold, what the line still says)
        ({"api_key": "xx-SUPERSECRET-2222"}, "SUPERSECRET", "api_key: Value error, must start with sk- (got"),
        (
            {"api_key": "sk-SUPERSECRET-2222", "upstream": {"token": "sk-SUPERSECRET-2222"}},
            "SUPERSECRET",
            "(root): Value error, upstream token",  # a model-level error: the whole config is the input
        ),
    ],
)
def test_a_model_s_own_validator_cannot_put_the_value_it_refused_into_an_error(
    body: dict[str, Any], secret: str, kept: str
) -> None:
    try:
        _Echoing.model_validate(body)
    except ValidationError as exc:
        [line] = format_validation_error(exc, body, _Echoing)
    else:  # pragma: no cover
        raise AssertionError("expected a ValidationError")
    assert secret not in line
    assert line.startswith(kept)
    assert "**********" in line


class _Plain(BaseModel):
    provider: Literal["crawl4ai", "firecrawl"] = "crawl4ai"
    pool_size: int = 5
    database: str = "primary"

    @model_validator(mode="after")
    def _small(self) -> _Plain:
        if self.pool_size > 50:
            raise ValueError(f"pool_size {self.pool_size} too big for {self.database}")
        return self


@pytest.mark.parametrize(
    ("body", "line"),
    [
        # (the config, the line): what is not a secret is said as it is, the location included
        ({"provider": "crawl"}, "provider: Input should be 'crawl4ai' or 'firecrawl'"),
        ({"pool_size": 70}, "(root): Value error, pool_size 70 too big for primary"),
    ],
)
def test_a_refusal_that_quotes_no_secret_is_left_as_it_is(body: dict[str, Any], line: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _Plain.model_validate(body)
    assert format_validation_error(refused.value, body, _Plain) == [line]


# --- dump_revealed: plain parts copied in place, the rest as to_jsonable_python(_reveal(...)) -----------


class _Colour(enum.Enum):
    RED = "red"
    KEY = SecretStr("in-an-enum")


class _Text(str):
    pass


class _Everything(BaseModel):
    token: SecretStr = SecretStr("t0ken")
    raw: SecretBytes = SecretBytes(b"\xffbytes")
    when: datetime.datetime = datetime.datetime(2024, 1, 2, 3, 4, 5)
    amount: decimal.Decimal = decimal.Decimal("1.50")
    ident: uuid.UUID = uuid.UUID(int=7)
    colour: _Colour = _Colour.RED
    tags: set[str] = {"b", "a"}
    pair: tuple[int, float] = (1, 2.0)
    counts: dict[int, str] = {1: "one"}
    flags: frozenset[int] = frozenset({3})
    blob: bytes = b"blob"
    untyped: Any = None


_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=3)
    | st.sampled_from(
        [
            _Text("sub"),
            SecretStr("s3cret"),
            SecretStr(_Text("sub-secret")),
            SecretBytes(b"b\xff"),
            _Colour.RED,
            _Colour.KEY,
            b"bytes",
            datetime.date(2024, 5, 6),
            decimal.Decimal("2.5"),
            10**30,
        ]
    )
)
_keys = st.text(max_size=2) | st.integers(-1, 1) | st.sampled_from([True, None, 1.5, _Text("k"), _Colour.RED])
_values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(_keys, children, max_size=3)
        | st.dictionaries(st.text(max_size=2), children, max_size=2).map(MappingProxyType)
        | st.builds(lambda value: _Everything(untyped=value), children)
    ),
    max_leaves=10,
)


def _reference_dump(config: Any) -> Any:
    """What dump_revealed computed before it copied plain parts itself."""
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="python", round_trip=True)
    return to_jsonable_python(_reveal(config))


@given(
    st.dictionaries(_keys, _values, max_size=4) | st.builds(lambda value: _Everything(untyped=value), _values)
)
def test_dump_revealed_gives_what_to_jsonable_python_gave(config: Any) -> None:
    # repr, not ==: 1, 1.0 and True are equal to Python but not to the config hash.
    assert _result_of(dump_revealed, config) == _result_of(_reference_dump, config)


def _result_of(function: Any, config: Any) -> str:
    try:
        return repr(function(config))
    except Exception as exc:  # a model inside an untyped dict is dumped by pydantic, which may refuse
        return f"raised {type(exc).__name__}: {exc}"


def test_dump_revealed_of_every_kind_of_field() -> None:
    dumped = dump_revealed(_Everything(untyped={1: [SecretStr("deep")], "t": (_Text("x"),)}))
    assert repr(dumped) == repr(
        _reference_dump(_Everything(untyped={1: [SecretStr("deep")], "t": (_Text("x"),)}))
    )
    assert dumped["token"] == "t0ken"
    assert dumped["untyped"] == {"1": ["deep"], "t": ["x"]}


def test_dump_revealed_refuses_a_config_that_is_not_an_object() -> None:
    class Root(RootModel[list[int]]):
        pass

    with pytest.raises(TypeError, match="JSON object"):
        dump_revealed(Root([1]))
    with pytest.raises(TypeError, match="JSON object"):
        dump_revealed([1])


# --- the validator wrappers ------------------------------------------------------------------------------


async def test_a_sync_validator_handing_back_a_coroutine_has_it_run() -> None:
    # A lambda around an async function returns a coroutine: not one of the plain results, so it runs.
    pipeline = make_pipeline(Service, [lambda config: async_seed_shape(config)])
    outcome = await validate(pipeline, {**BODY, "debug": True})
    assert outcome.warnings == ("debug is on",)


def test_a_spec_knows_once_whether_its_validator_is_async() -> None:
    spec = ValidatorSpec("a", async_seed_shape)
    assert spec.is_async
    assert not ValidatorSpec("s", seed_shape).is_async
    assert spec == ValidatorSpec("a", async_seed_shape)  # derived, so not compared
    assert "is_async" not in repr(spec)
