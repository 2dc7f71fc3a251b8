"""Keys of a source that its model dropped without a word.

A pydantic model ignores a key it has no field for unless it says otherwise (``extra="forbid"`` refuses
it, ``extra="allow"`` keeps it): with the default, a misspelt key (``pool_szie: 40``) or one a model
does not know of validates, and the config runs on the field's default as if the file said nothing. A
reload cannot tell that from intent, so it applies, but it says so: each such key is a validation
warning, recorded with the operation and shown in its answer.

The walk follows the validated model beside the source body, so a field excluded from dumps, a
discriminated union's chosen member and a dict field's own keys are seen as they are. Where the source
cannot be matched to fields with certainty (a model validator that rewrites its input, an alias path or
choice), that model's keys are not judged: a warning that is wrong would teach operators to ignore them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel

from confledger.store.secrets import ConfigPath, dotted

__all__ = ["ignored_keys"]

# Per model class: its input key -> (field name, whether a model may lie in that field's value), or
# None when its keys cannot be judged (see above).
_KEYS: dict[type[BaseModel], dict[str, tuple[str, bool]] | None] = {}
_MAX_CLASSES = 512


def ignored_keys(config: BaseModel, body: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the keys of ``body`` that ``config`` (validated from it) neither holds nor keeps."""
    return [dotted(path) for path in _walk(config, body, ())]


# Only a model drops keys, so the walk goes down only where one may lie: by the field's type under a
# model (a dict of a thousand flags is not walked at all, where it took a generator per flag and per
# value, 2.3 ms a reload), else by the value's own type (a leaf never is).
_HOLDS_MODELS = (BaseModel, Mapping, list, tuple)


def _walk(value: Any, source: Any, path: ConfigPath) -> Iterator[ConfigPath]:
    if isinstance(value, BaseModel):
        if not isinstance(source, Mapping):
            return
        keys = _input_keys(type(value))
        if keys is None:
            return
        keeps_extras = type(value).model_config.get("extra") == "allow"
        for key, child in source.items():
            field = keys.get(key) if isinstance(key, str) else None
            if field is None:
                if not keeps_extras:
                    yield (*path, str(key))
                continue
            name, may_hold_model = field
            held = getattr(value, name, None) if may_hold_model else None
            if isinstance(held, _HOLDS_MODELS):
                yield from _walk(held, child, (*path, key))
    elif isinstance(value, Mapping):
        if isinstance(source, Mapping):
            for key, child in source.items():
                if key in value and isinstance(value[key], _HOLDS_MODELS):
                    yield from _walk(value[key], child, (*path, key))
    elif isinstance(value, list | tuple) and isinstance(source, list | tuple) and len(value) == len(source):
        for index, (item, child) in enumerate(zip(value, source, strict=True)):
            if isinstance(item, _HOLDS_MODELS):
                yield from _walk(item, child, (*path, index))


def _input_keys(model: type[BaseModel]) -> dict[str, tuple[str, bool]] | None:
    if model not in _KEYS:
        if len(_KEYS) >= _MAX_CLASSES:
            _KEYS.clear()  # classes made on the fly must not pile up
        _KEYS[model] = _keys_of(model)
    return _KEYS[model]


def _keys_of(model: type[BaseModel]) -> dict[str, tuple[str, bool]] | None:
    validators = model.__pydantic_decorators__.model_validators.values()
    if any(validator.info.mode in ("before", "wrap") for validator in validators):
        return None
    keys: dict[str, tuple[str, bool]] = {}
    for name, field in model.model_fields.items():
        if field.validation_alias is not None and not isinstance(field.validation_alias, str):
            return None
        entry = (name, _may_hold_model(field.annotation))
        keys[name] = entry
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                keys[alias] = entry
    return keys


def _may_hold_model(annotation: Any) -> bool:
    """Whether a value of type ``annotation`` may have a model in it. Only a type that is certainly none
    (a scalar, or a container of scalars: ``dict[str, int | str]``) says no; whatever is not known for
    certain (``Any``, a forward reference, a ``TypedDict``, a container class of its own) says yes."""
    arguments = get_args(annotation)
    if arguments:  # a generic (list[...], dict[...], a union, Annotated[...], Literal[...])
        origin = get_origin(annotation)
        if origin is Literal:
            return False
        if origin is Annotated:
            return _may_hold_model(arguments[0])  # the rest is metadata (Field(...), a validator)
        return any(_may_hold_model(argument) for argument in arguments)
    if annotation is None or annotation is type(None) or annotation is Ellipsis:
        return False
    if annotation is Any or not isinstance(annotation, type):
        return True  # Any (a class since Python 3.11), a TypeVar, a forward reference
    if issubclass(annotation, BaseModel | Mapping | list | tuple | set | frozenset):
        return True  # a model, or a container whose items are not named here
    return annotation is object
