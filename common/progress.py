"""Progress reporting through a callback, so that `solvers/` and `runtime/` never import a display library.

Why a callback: long loops (solving 30 layers, packing, replaying) live in packages that must stay free of UI
code; the application (``coact/progress.py``) turns the callback into rich progress bars, a notebook can pass its
own, and ``None`` means silence. The callback is called as ``progress(description, done, total)``: ``done`` steps
of ``total`` (``None`` if unknown) are complete; a call with ``done == total`` ends that task.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

ProgressFn = Callable[[str, int, Optional[int]], None]


def tracked(seq: Iterable[T], progress: ProgressFn | None, description: str, total: int | None = None) -> Iterator[T]:
    """Yield the items of ``seq`` and report each completed one to ``progress`` (nothing when it is None or
    False, so that callers written for the older ``progress: bool`` flag stay silent)."""
    if not progress:
        yield from seq
        return
    if total is None:
        try:
            total = len(seq)  # type: ignore[arg-type]
        except TypeError:
            total = None
    progress(description, 0, total)
    done = 0
    for item in seq:
        yield item
        done += 1
        progress(description, done, total)
    if total is None:
        progress(description, done, done)


def notify(progress: ProgressFn | None, description: str, done: int, total: int | None) -> None:
    """Report one step to ``progress`` when there is one (None or False: silent)."""
    if progress:
        progress(description, done, total)
