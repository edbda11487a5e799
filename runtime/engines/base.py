"""The I/O engine protocol and registry: how the replay issues the reads of one (token, layer).

Why a protocol: an :class:`Engine` performs all the reads of one (token, layer) and returns when they are complete,
which is the unit the replay times. Engines differ only in how many requests they keep in flight and how they wait
for them; they must return the same bytes, so the replay picks one by name (``--engine threads:16``) and every
report stays comparable. Built-in engines live one per module (:mod:`runtime.engines.sync`,
:mod:`runtime.engines.threads`, :mod:`runtime.engines.uring`) and register themselves in :data:`ENGINES`, which
imports them lazily on the first lookup (so this module imports none of them: no import cycle, and the optional
``liburing`` binding is only touched when ``uring`` is used). Third parties add theirs with
:func:`register_engine`; ``runtime.testing.check_engine`` checks one against the protocol.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from common.registry import Registry
from runtime._closing import Closing
from runtime.direct import DirectFile, aligned_slots
from runtime.errors import EngineError


@runtime_checkable
class Engine(Protocol):
    """Issues the reads of one (token, layer).

    `submit(offsets, sizes)` performs every read (4 KiB aligned offsets and sizes) and returns only when all are
    complete; the replay times exactly this call and discards the bytes. With `out` (one writable, page-aligned
    buffer of at least ``sizes[j]`` bytes per read, e.g. from :func:`runtime.direct.aligned_buffer`) read j lands
    in ``out[j]``: what a real inference engine needs, and how ``runtime.testing.check_engine`` verifies that an
    engine reads the right bytes. Engines own their file handle; `close()` releases it (and may be called more than
    once). `queue_depth` (optional, default 1) is how many reads it keeps in flight.
    """

    name: str

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray,
               out: Sequence[Any] | None = None) -> None: ...

    def close(self) -> None: ...


EngineFactory = Callable[..., Engine]

#: name -> factory ``factory(path, **params) -> Engine``; the built-ins are imported on the first lookup.
ENGINES: Registry = Registry("I/O engine", modules=("runtime.engines.sync", "runtime.engines.threads",
                                                    "runtime.engines.uring"))


#: Class/function decorator adding an engine factory ``factory(path, **params) -> Engine`` under a name:
#: ``@register_engine("name", "one-line description")``; a taken name is refused
#: (:class:`common.errors.RegistryError`), the description defaults to the docstring's first line. An engine may
#: still be unusable on this machine: see :func:`engine_status`.
register_engine = ENGINES.register
#: Registered engine names, sorted.
available_engines = ENGINES.names


def parse_engine(spec: str) -> tuple[str, dict[str, Any]]:
    """``"threads"`` -> ("threads", {}); ``"threads:16"`` -> ("threads", {"queue_depth": 16}) (CLI shorthand)."""
    name, _, qd = str(spec).partition(":")
    if not qd:
        return name, {}
    try:
        depth = int(qd)
    except ValueError:
        raise EngineError(f"bad engine spec {spec!r}: the part after ':' must be a queue depth (an integer)") from None
    if depth < 1:
        raise EngineError(f"bad engine spec {spec!r}: queue depth must be >= 1")
    return name, {"queue_depth": depth}


def get_engine(name: str, path: str | os.PathLike[str], **params: Any) -> Engine:
    """Open engine `name` (or ``name:queue_depth``) on the file at `path`.

    Raises :class:`common.errors.RegistryError` for an unknown name or parameter, :class:`EngineError` for a bad
    spec and :class:`runtime.errors.EngineUnavailable` when the engine cannot run here.
    """
    base, extra = parse_engine(name)
    return ENGINES.create(base, path, **{**extra, **params})


def engine_status(name: str) -> tuple[bool, str]:
    """(usable here, reason) for a registered engine, without opening a file.

    An engine factory that may be unusable on some machines says why through a ``status()`` callable attribute
    (e.g. ``UringEngine.status``); any other engine is usable.
    """
    if name not in ENGINES:
        return False, f"unknown I/O engine {name!r}"
    status = getattr(ENGINES.get(name), "status", None)
    return status() if status is not None else (True, "ok")


def engine_queue_depth(engine: Engine) -> int:
    """Requests an engine keeps in flight (1 for engines that do not say)."""
    return int(getattr(engine, "queue_depth", 1) or 1)


def check_queue_depth(queue_depth: int, *, low: int = 1, high: int | None = None) -> int:
    """`queue_depth` as an int, or :class:`EngineError` when it is outside [low, high]."""
    k = int(queue_depth)
    if k < low or (high is not None and k > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise EngineError(f"queue_depth must be {bound}, got {k}")
    return k


class SlotEngine(Closing):
    """What the queue-depth engines (``threads``, ``uring``) share: an O_DIRECT file and one aligned buffer per
    in-flight slot, grown together when a larger read arrives.

    Why a base class: both engines keep `queue_depth` reads in flight, each into memory of its own (completions
    arrive in any order), and both must grow those buffers the same way.
    """

    def __init__(self, path: str | os.PathLike[str], queue_depth: int):
        self.queue_depth = int(queue_depth)
        self.file = DirectFile(path)
        self.path = self.file.path
        self._fd = self.file.fileno()
        self._bufs: list[Any] = []
        self._views: list[memoryview] = []
        self._cap = 0
        self._grow(1 << 20)

    def fileno(self) -> int:
        return self._fd

    def _grow(self, nbytes: int) -> bool:
        """Make every slot hold `nbytes`; True when the buffers were replaced."""
        if nbytes <= self._cap:
            return False
        self._bufs, self._views, self._cap = aligned_slots(nbytes, self.queue_depth)
        return True
