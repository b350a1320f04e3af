"""A small name -> object registry, shared by data sources, models, quantization schemes,
policies, aggregators and unlearning methods: duplicates fail, unknown names fail listing
the valid ones.

The registries whose names a config field may take live here, at the bottom of the package,
so that :mod:`raysisa.config` validates those names without importing the modules that fill
them (which sit above it). Importing :mod:`raysisa` imports those modules, so every
built-in name is registered before any config is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "SOURCES", "MODELS", "SCHEMES", "POLICIES"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one ``kind`` (e.g. "model") by name.

    Example:
        >>> colours = Registry[int]("colour")
        >>> @colours.register("red")
        ... def red() -> int:
        ...     return 1
        >>> colours.names()
        ['red']
        >>> colours.get("blue")
        Traceback (most recent call last):
        ...
        KeyError: "unknown colour 'blue'; valid colours: red"
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an object under ``name``. A duplicate name raises ValueError."""

        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorate

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def unknown(self, name: str) -> str:
        """The message for an unknown ``name``."""
        return f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}"

    def get(self, name: str) -> T:
        """The object registered as ``name``; KeyError listing the valid names otherwise."""
        if name not in self._items:
            raise KeyError(self.unknown(name))
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items


# Names that configs validate; filled by the modules named in the comments.
SOURCES: Registry[Any] = Registry("data source")  # raysisa.data.sources, raysisa.data.torchvision_sources
MODELS: Registry[Any] = Registry("model")  # raysisa.models
SCHEMES: Registry[Any] = Registry("quantization scheme")  # raysisa.quant.schemes
POLICIES: Registry[Any] = Registry("policy", "policies")  # raysisa.coordinator.policy
