"""Name -> entry registries: datasets, split protocols, samplers, backbones, classifiers, methods, calibrations.

A newcomer adds an entry with one decorator::

    @BACKBONES.register("resnet32")
    def resnet32() -> nn.Module: ...  # an encoder; glmc.models.base puts the GLMC heads on it
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from glmc.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> None:
        """Remove an entry (a plugin's, or a test's); an unknown name raises ConfigError."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    return f"unknown {kind} {name!r}{close_matches(name, known)} (known: {', '.join(known)})"


def close_matches(name: str, known: list[str]) -> str:
    """"; did you mean 'a', 'b'?" for the names of `known` close to `name`, or ""."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
