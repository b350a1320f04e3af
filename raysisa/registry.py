"""A small name -> object registry, shared by data sources, models, aggregators and (later)
unlearning methods: duplicates fail, unknown names fail listing the valid ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

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
