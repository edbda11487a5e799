"""One registry helper for every family of interchangeable parts (solvers, caches, engines, pipelines,
sparsifiers, model families).

Why one helper: users pick parts by name on the command line (``--solver ripple``, ``--policy s3fifo``,
``--engine threads:16``), third parties add their own, and ``--help`` lists what is there. Every family behaves the
same: a name maps to a factory, a duplicate name is refused (a silent overwrite would make a plug-in replace a
built-in without anyone noticing), each entry carries a one-line description, an unknown name lists the known ones,
and a typo in a parameter name is a user error rather than a ``TypeError`` traceback. In the spirit of fsspec's
``register_implementation`` and ``scipy.optimize.minimize(method=...)``.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from common.errors import RegistryError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    """One registered implementation."""

    name: str
    factory: Callable[..., Any]
    description: str


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[F]):
    """name -> factory, for one kind of part.

    Args:
        kind: what the entries are, used in messages ("solver", "cache policy", "I/O engine", ...).
        modules: modules imported (by name, with importlib) before the first lookup; they register the built-ins.
            Lazy loading keeps the module that defines the registry free of imports of its implementations, so
            ``base <- implementation`` is the only import edge and there is no cycle (as fsspec does).
    """

    def __init__(self, kind: str, *, modules: tuple[str, ...] | list[str] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._modules = tuple(modules)
        self._loaded = not self._modules

    # -- registration ---------------------------------------------------------------------------------------------
    def register(self, name: str, description: str | None = None) -> Callable[[F], F]:
        """Decorator: add ``factory`` under ``name``; ``description`` defaults to the first docstring line."""

        def deco(factory: F) -> F:
            self.add(name, factory, description)
            return factory

        return deco

    def add(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None:
        """Add ``factory`` under ``name``; a name already taken is refused."""
        name = str(name)
        if not name or name != name.strip():
            raise RegistryError(f"bad {self.kind} name {name!r}")
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = Entry(name, factory, description if description is not None else _first_line(factory))

    # -- lookup ---------------------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in self._modules:
                importlib.import_module(m)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises :class:`RegistryError` listing the known ones."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``."""
        return self.entry(name).factory

    def check_params(self, name: str, *args: Any, **params: Any) -> None:
        """Refuse parameters the factory does not take (a user error, not a TypeError traceback)."""
        factory = self.get(name)
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):  # no signature (builtins): let the call itself complain
            return
        try:
            sig.bind(*args, **params)
        except TypeError as e:
            raise RegistryError(f"bad parameters for {self.kind} {name!r}: {e}") from None

    def create(self, name: str, *args: Any, **params: Any) -> Any:
        """``factory(*args, **params)`` for ``name``, after checking the parameters bind."""
        self.check_params(name, *args, **params)
        return self.get(name)(*args, **params)

    def describe(self) -> dict[str, str]:
        """{name: one-line description}, sorted by name."""
        self._ensure_loaded()
        return {n: self._entries[n].description for n in sorted(self._entries)}

    def help_text(self) -> str:
        """One line per entry, ``name: description``, for ``--help``."""
        return "; ".join(f"{n}: {d}" if d else n for n, d in self.describe().items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
