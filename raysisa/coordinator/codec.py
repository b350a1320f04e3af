"""Checked reads of the JSON objects the coordinator stores (plans, snapshots, receipts,
overlay manifests): a malformed object raises :class:`~raysisa.errors.StoreError` naming
it, never a ``KeyError`` from deep inside the coordinator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysisa.errors import StoreError

__all__ = ["obj", "req", "opt", "ints", "strs"]

_MISSING = object()


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
                        "list": "a list", "dict": "an object"}.get(k.__name__, k.__name__) for k in kinds)


def obj(data: Any, where: str) -> Mapping[str, Any]:
    """``data`` as a JSON object."""
    if not isinstance(data, Mapping):
        raise StoreError(f"{where} is malformed: expected a JSON object, found {type(data).__name__}")
    return data


def _check(value: Any, kind: type | tuple[type, ...], where: str, key: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # JSON true is no integer here
        ok = False
    elif float in kinds and isinstance(value, int):
        ok = True
    else:
        ok = isinstance(value, kinds)
    if not ok:
        raise StoreError(f"{where} is malformed: {key!r} should be {_name(kind)}, found {value!r:.60}")
    return float(value) if float in kinds and int not in kinds and not isinstance(value, bool) else value


def req(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """The required field ``key`` of type ``kind``."""
    value = obj(data, where).get(key, _MISSING)
    if value is _MISSING:
        raise StoreError(f"{where} is malformed: it has no {key!r}")
    return _check(value, kind, where, key)


def opt(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """The optional field ``key`` (``None`` or absent: ``default``)."""
    value = obj(data, where).get(key)
    return default if value is None else _check(value, kind, where, key)


def ints(data: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    """A required list of integers, as a tuple."""
    values = req(data, key, list, where)
    for value in values:
        _check(value, int, where, f"{key}[]")
    return tuple(values)


def strs(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """A required list of strings, as a tuple."""
    values = req(data, key, list, where)
    for value in values:
        _check(value, str, where, f"{key}[]")
    return tuple(values)
