"""Named choices of one kind (critique formats, critique rewards, ...): a config field names one."""

from __future__ import annotations

from typing import Generic, TypeVar

from llmac.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one ``kind`` by name. Registering a name again is allowed only for an item of the
    same qualified name (a reloaded module), so two different items never silently share a name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        known = self._items.get(name)
        if known is not None and _qualname(known) != _qualname(item):
            raise ValueError(f"{self.kind} {name!r} is already registered to {_qualname(known)}")
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}: choose one of {self.names()}")
        return self._items[name]


def _qualname(item: object) -> str:
    return getattr(item, "__qualname__", None) or type(item).__qualname__
