"""One registry per axis, filled by decorators (timm's `register_model` is the model to follow).

Each entry has a name, the object that does the work (a factory function or a plugin class), the typed config
dataclass its YAML parameters are parsed into, and the capabilities it declares (what kind of attack it is, what
dtype a compression leaves, ...), which the rest of the harness reads instead of testing names or types.

Plugins are discovered, not listed: the first time a registry is read, every module of its axis package is imported
(a file dropped into `bench/attacks/` registers itself), then every module named by the `bench.plugins` entry-point
group of any installed distribution, so a user's own package adds members without a fork:

    [project.entry-points."bench.plugins"]
    my_plugins = "my_package.bench_plugins"     # a module whose decorators register into the axes
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from bench.errors import UnknownNameError

log = logging.getLogger(__name__)

T = TypeVar("T")
ENTRY_POINT_GROUP = "bench.plugins"
_entry_points_loaded = False


def import_package_modules(package: str) -> list[str]:
    """Import every module of `package` whose name does not start with `_`; returns their names."""
    pkg = importlib.import_module(package)
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def load_entry_points() -> list[str]:
    """Import the modules of the `bench.plugins` entry points (once per process); returns their names.

    A plugin that fails to import is logged and skipped: one broken package must not stop every run, and a suite
    that names one of its members fails with the list of the members that did load.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    loaded = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
            loaded.append(ep.name)
        except Exception as exc:  # a third-party plugin's own error: reported, not fatal
            log.warning("bench plugin '%s' (%s) failed to load: %s", ep.name, ep.value, exc)
    return loaded


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

    def __init__(
        self, axis: str, package: str | None = None, allowed: dict[str, tuple[Any, ...]] | None = None
    ) -> None:
        """`package`: the axis package whose modules are imported (discovered) when the registry is first read.
        `allowed`: capability -> the values a plugin may declare for it (checked when it registers)."""
        self.axis = axis
        self._allowed = allowed or {}
        self._entries: dict[str, Entry[T]] = {}
        self._fallbacks: list[Callable[[str], Entry[T] | None]] = []
        self._package = package
        self._discovered = False

    def discover(self) -> None:
        """Import the axis package's modules and the entry-point plugins (once; registering is their side effect)."""
        if self._discovered:
            return
        self._discovered = True  # first: a plugin module that reads this registry while importing must not recurse
        if self._package:
            import_package_modules(self._package)
        load_entry_points()

    def register(self, name: str, *, config: type = NoConfig, **capabilities: Any) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("mlp", config=MLPConfig)` above a factory or a class."""

        for key, values in self._allowed.items():
            if capabilities.get(key) not in values:
                valid = ", ".join(map(repr, values))
                raise ValueError(
                    f"{self.axis} '{name}' declares {key}={capabilities.get(key)!r}; expected one of {valid}"
                )

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
        self.discover()
        if name in self._entries:
            return self._entries[name]
        for resolve in self._fallbacks:
            entry = resolve(name)
            if entry is not None:
                return entry
        raise UnknownNameError(self.axis, name, self.names())

    def entry_for(self, obj: Any) -> Entry[T] | None:
        """The entry registered for `obj` (a plugin class or factory), or None."""
        self.discover()
        return next((e for e in self._entries.values() if e.obj is obj), None)

    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry[T]]:
        self.discover()
        return iter(list(self._entries.values()))
