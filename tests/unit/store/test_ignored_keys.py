from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal, TypedDict

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from confledger.store.ignored_keys import _may_hold_model, ignored_keys
from confledger.store.validation import ValidationPipeline


class Database(BaseModel):
    pool_size: int = 20
    url: str = Field("sqlite://", alias="dbUrl")
    password: str = Field("", exclude=True)


class KeepsExtras(BaseModel):
    model_config = ConfigDict(extra="allow")
    level: int = 1


class Rewrites(BaseModel):
    size: int = 1

    @model_validator(mode="before")
    @classmethod
    def renamed(cls, data: Any) -> Any:
        return {"size": data.pop("old_size")} if isinstance(data, dict) and "old_size" in data else data


class Chooses(BaseModel):
    size: int = Field(1, validation_alias=AliasChoices("size", "Size"))


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Service(BaseModel):
    database: Database = Database()
    pools: dict[str, Database] = {}
    replicas: list[Database] = []
    extras: KeepsExtras = KeepsExtras()
    rewrites: Rewrites = Rewrites()
    chooses: Chooses = Chooses()
    pet: Cat | Dog = Field(Cat(kind="cat"), discriminator="kind")
    labels: dict[str, str] = {}
    standby: list[Database] | None = None
    flags: dict[str, dict[str, int | str | bool]] = {}


@pytest.mark.parametrize(
    ("body", "ignored"),
    [
        # A misspelt key, at the top and nested: the config runs on the default.
        ({"databse": {}}, ["databse"]),
        ({"database": {"pool_szie": 40}}, ["database.pool_szie"]),
        # Aliases and excluded fields are fields: read, not ignored.
        ({"database": {"dbUrl": "x", "password": "p"}}, []),
        # Under a dict field and in a list, the path says which entry.
        ({"pools": {"main": {"size": 1}}}, ["pools.main.size"]),
        ({"replicas": [{"pool_size": 1}, {"poolsize": 2}]}, ["replicas[1].poolsize"]),
        # A dict field's own keys are its data, never ignored.
        ({"labels": {"anything": "goes"}}, []),
        # extra="allow" keeps the key, so nothing is lost.
        ({"extras": {"level": 2, "colour": "red"}}, []),
        # A before-validator or an alias choice maps input to fields in ways not judged: no guess.
        ({"rewrites": {"old_size": 3}}, []),
        ({"chooses": {"Size": 3, "unknown": 1}}, []),
        # The union member the discriminator chose is the model walked.
        ({"pet": {"kind": "dog", "good": False, "lives": 3}}, ["pet.lives"]),
        ({"pet": {"kind": "cat", "lives": 3}}, []),
        # Models under an optional list are walked; a dict of flags holds none and is not.
        ({"standby": [{"pool_size": 1, "spare": True}]}, ["standby[0].spare"]),
        ({"flags": {"new_ui": {"on": True, "owner": "web"}}}, []),
    ],
)
def test_ignored_keys(body: dict[str, Any], ignored: list[str]) -> None:
    assert ignored_keys(Service.model_validate(body), body) == ignored


def test_a_dropped_key_is_a_warning_of_the_model_check_not_an_error() -> None:
    pipeline = ValidationPipeline(Service, validator_timeout=1.0, max_items=50)
    result = pipeline.check_model({"database": {"pool_szie": 40}})
    assert result.errors == ()
    assert result.config is not None
    assert result.warnings == ("database.pool_szie: not a field of Service, ignored",)
    outcome = pipeline.outcome(result, [], 0.0)
    assert outcome.ok
    assert outcome.warnings == result.warnings


def test_a_model_that_forbids_extras_refuses_instead() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = 1

    result = ValidationPipeline(Strict, validator_timeout=1.0, max_items=50).check_model({"sise": 2})
    assert result.config is None
    assert result.warnings == ()
    assert result.errors


class Colour(enum.Enum):
    RED = "red"


class Settings(TypedDict):
    database: Database


@pytest.mark.parametrize(
    ("annotation", "may_hold"),
    [
        # Scalars, and containers of nothing but scalars, hold no model: their values are not walked.
        (int, False),
        (str | None, False),
        (datetime, False),
        (Colour, False),
        (Literal["a", "b"], False),
        (dict[str, dict[str, int | str | bool]], False),
        (tuple[int, ...], False),
        (Annotated[int, Field(gt=0)], False),
        # A model anywhere in the type: in a union, a container, an Annotated.
        (Database, True),
        (Database | None, True),
        (dict[str, list[Database]], True),
        (Annotated[list[Database], Field(min_length=1)], True),
        # Whatever is not known for certain may hold one: walked, as every value was before.
        (Any, True),
        (object, True),
        (dict, True),
        (Settings, True),
        ("Database", True),
    ],
)
def test_may_hold_model(annotation: Any, may_hold: bool) -> None:
    assert _may_hold_model(annotation) is may_hold
