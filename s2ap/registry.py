"""A named collection of builders of one kind (models, data sources), as in timm's registry.

Adding under a taken name is an error (two modules silently replacing each other's entry is a
bug), and looking up an unknown name lists the registered ones: the message is what a user sees
after a typo in a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name; ``kind`` names them in error messages ("model")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds its target under ``name`` and returns it unchanged."""

        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The registered names in the order they were registered (display order)."""
        return list(self._entries)

    def get(self, name: str) -> T:
        """The entry under ``name``; a ValueError listing the registered names if there is none."""
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]
