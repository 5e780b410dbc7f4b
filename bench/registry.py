"""One registry per axis, filled by decorators (timm's `register_model` is the model to follow).

Each entry has a name, the object that does the work (a factory function or a plugin class), the typed config
dataclass its YAML parameters are parsed into, and free-form capabilities the matrix uses for skip rules.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from bench.errors import UnknownNameError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """Config of a plugin that takes no parameters."""


@dataclasses.dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    config_cls: type
    capabilities: dict[str, Any]
    doc: str = ""


class Registry(Generic[T]):
    """Name -> plugin for one axis (models, datasets, recipes, compressions, runtimes, attacks)."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, Entry[T]] = {}
        self._fallbacks: list[Callable[[str], Entry[T] | None]] = []

    def register(self, name: str, *, config: type = NoConfig, **capabilities: Any) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("mlp", config=MLPConfig)` above a factory or a class."""

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.axis} '{name}' is registered twice")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, config, dict(capabilities), doc[0] if doc else "")
            return obj

        return decorate

    def add_fallback(self, resolver: Callable[[str], Entry[T] | None]) -> None:
        """A resolver for names outside the registry (e.g. any torchvision model, `pkg.mod:fn`)."""
        self._fallbacks.append(resolver)

    def get(self, name: str) -> Entry[T]:
        if name in self._entries:
            return self._entries[name]
        for resolve in self._fallbacks:
            entry = resolve(name)
            if entry is not None:
                return entry
        raise UnknownNameError(self.axis, name, self.names())

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self):
        return iter(self._entries.values())
