"""A small name -> entry registry for methods, datasets and attacks, open to other packages.

Our own entries are added when their modules are imported. Other packages add theirs through Python entry points:
a registry with an entry-point ``group`` (``robustbench_zs.methods``, ``robustbench_zs.attacks``,
``robustbench_zs.datasets``) loads every entry point of that group the first time it is asked for a name, and
the entry point's name is the id a user types (``--methods NAME``), whatever the object's own name. A plugin that
fails to load, or whose name is already taken, is reported in one warning line and skipped: the rest works on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")

#: the origin of an entry that this package defines itself
BUILTIN = "robustbench_zs"


class PluginError(Exception):
    """A plugin's object is not what its registry takes; the message says what it should be."""


class Registry(Generic[T]):
    """Ordered mapping of unique names to entries, with plugins from the entry-point ``group`` after our own.

    Args:
        kind: what the entries are ("method", "dataset", ...), used in error messages.
        group: the entry-point group plugins register in; None: no plugins.
        adopt: ``adopt(name, obj) -> entry`` turns the object an entry point names into an entry under ``name``
            (checking it, and renaming it where the object carries a name of its own); raises PluginError.
    """

    def __init__(self, kind: str, group: str | None = None, adopt: Callable[[str, object], T] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._adopt = adopt
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._plugins_loaded = group is None

    def add(self, name: str, entry: T, origin: str = BUILTIN) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        self._origin[name] = origin
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(entry: T) -> T:
            return self.add(name, entry)

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plugin that looks names up while it loads does not load itself again
        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "an unknown package"
            where = f"{self.kind} plugin {ep.name!r} ({ep.value}, from {dist})"
            if ep.name in self._entries:
                warnings.warn(
                    f"{where} is skipped: {ep.name!r} is taken by {self._origin[ep.name]}; rename the entry point",
                    stacklevel=2,
                )
                continue
            try:
                obj = ep.load()
                entry = self._adopt(ep.name, obj) if self._adopt is not None else obj
            except Exception as e:  # a broken plugin must not break the rest
                text = str(e).strip().splitlines()
                warnings.warn(
                    f"{where} is skipped: it failed to load ({type(e).__name__}: {text[0] if text else ''})",
                    stacklevel=2,
                )
                continue
            if ep.name in self._entries:  # the plugin registered itself while it was imported
                continue
            self.add(ep.name, entry, origin=dist)

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self._entries)}"
            ) from None

    def origin(self, name: str) -> str:
        """Which package defines ``name``: ``robustbench_zs`` or the plugin's distribution."""
        self.get(name)
        return self._origin[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_plugins()
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)
