"""The base of every raysisa config: frozen pydantic models whose validation errors become
one-line :class:`~raysisa.errors.ConfigError` messages naming the field."""

from __future__ import annotations

import contextvars
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from raysisa.errors import ConfigError
from raysisa.registry import Registry

__all__ = ["ConfigModel", "validate", "registered"]

_INIT_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("raysisa_config_depth", default=0)


def _is_field_path(text: str) -> bool:
    return all(part.isidentifier() or part.isdigit() for part in text.split("."))


def _describe(exc: ValidationError, where: str = "") -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (where, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "value_error" and ": " in msg and _is_field_path(msg.split(": ", 1)[0]):
            field, msg = msg.split(": ", 1)  # a model validator naming the field (``a.b.c`` for a nested one)
            loc = f"{loc}.{field}" if loc else field
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        problems.append(f"{loc or 'config'}: {msg}{got}")
    return "invalid configuration: " + "; ".join(problems)


def validate(cls: type[BaseModel], data: Any, where: str = "") -> Any:
    """Build ``cls`` from ``data``, turning pydantic's error into a one-line ConfigError."""
    depth = _INIT_DEPTH.set(_INIT_DEPTH.get() + 1)  # nested sections must not translate
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    finally:
        _INIT_DEPTH.reset(depth)


def registered(registry: Registry[Any], value: str) -> str:
    """``value`` when ``registry`` holds it; otherwise a ValueError listing the valid names.

    The registries live in :mod:`raysisa.registry`, below config: config never imports the
    modules that fill them."""
    if value not in registry:
        raise ValueError(registry.unknown(value))
    return value


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a bool where ``annotation`` wants an int or a float (pydantic's
    lax mode would read ``true`` as 1)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _bool_for_number(args[0], value)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, bool) and bool in args:
            return False
        return all(_bool_for_number(a, value) for a in args if a is not type(None)) if isinstance(value, bool) else any(
            _bool_for_number(a, value) for a in args if a is not type(None)
        )
    if isinstance(value, bool):
        return annotation in (int, float)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list | tuple):
        return any(_bool_for_number(args[0], v) for v in value) if args else False
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return any(_bool_for_number(args[1], v) for v in value.values())
    return False


class ConfigModel(BaseModel):
    """Base of every config: frozen, no unknown keys, errors raised as :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        # Pydantic calls __init__ of nested sections too: only the outermost call translates.
        depth = _INIT_DEPTH.set(_INIT_DEPTH.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if _INIT_DEPTH.get() > 1:
                raise
            raise ConfigError(_describe(exc)) from None
        finally:
            _INIT_DEPTH.reset(depth)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if name in data and _bool_for_number(field.annotation, data[name]):
                    raise ValueError(f"{name}: expected a number, got a boolean ({data[name]!r})")
        return data

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return validate(cls, data)
