"""A named collection of builders of one kind (models, data sources), as in timm's registry.

Adding under a taken name is an error (two modules silently replacing each other's entry is a
bug), and looking up an unknown name lists the registered ones: the message is what a user sees
after a typo in a config.

A built-in entry is *declared* by name and the module that registers it (as timm maps model
names to modules): the name is listed, and a config naming it validates, without importing that
module, which for a model or a dataset means torch (seconds, for a read command that only
validates a study file); the first :meth:`Registry.get` imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name; ``kind`` names them in error messages ("model")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._declared: dict[str, str] = {}  # name -> the module that registers it

    def declare(self, name: str, module: str) -> None:
        """Name an entry that importing ``module`` registers; it is imported on first use."""
        if name in self._entries or name in self._declared:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._declared[name] = module

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds its target under ``name`` and returns it unchanged."""

        def decorator(entry: T) -> T:
            # A declared name is its module's (registering from within it, it is being
            # imported); from anywhere else the declared entry comes first, so the clash shows.
            module = self._declared.get(name)
            if module is not None and module not in sys.modules:
                importlib.import_module(module)
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        """The registered and declared names, sorted."""
        return sorted({*self._entries, *self._declared})

    def in_order(self) -> list[str]:
        """The registered names in the order they were registered (display order), then the
        declared ones not imported yet."""
        return [*self._entries, *(n for n in self._declared if n not in self._entries)]

    def get(self, name: str) -> T:
        """The entry under ``name`` (importing its module if it is declared); a ValueError
        listing the names if there is none."""
        if name not in self._entries and name in self._declared:
            importlib.import_module(self._declared[name])
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]
