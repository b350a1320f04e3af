"""The base of every raysisa config: frozen pydantic models whose validation errors become
one-line :class:`~raysisa.errors.ConfigError` messages naming the field."""

from __future__ import annotations

import contextvars
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from raysisa.errors import ConfigError

__all__ = ["ConfigModel", "validate", "registered"]

_INIT_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("raysisa_config_depth", default=0)


def _describe(exc: ValidationError, where: str = "") -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (where, *err["loc"]) if p != "")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        problems.append(f"{loc or 'config'}: {err['msg']}{got}")
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


def registered(registry: Any, value: str) -> str:
    if value not in registry:
        raise ValueError(registry.unknown(value))
    return value


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

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return validate(cls, data)
