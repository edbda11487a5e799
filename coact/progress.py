"""Progress bars for the application side: rich bars on stderr, and the adapter that turns them into the plain
``common.progress.ProgressFn`` callback that `solvers/` and `runtime/` report to.

Why stderr: ``--json`` output on stdout must stay parseable while long work shows its progress.
Why an adapter: the libraries below `coact/` must not import a display library (docs/ARCHITECTURE.md); they call
``progress(description, done, total)`` and this module draws it.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from common.progress import ProgressFn

T = TypeVar("T")

_STDERR = Console(stderr=True)


def make_progress(disable: bool = False) -> Progress:
    """A rich progress display on stderr with an ETA column (one look for every long loop)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_STDERR,
        disable=disable,
        transient=False,
    )


def track(seq: Iterable[T], *, description: str = "", total: int | None = None, disable: bool = False) -> Iterator[T]:
    """Iterate ``seq`` with a progress bar (``disable=True``: silently)."""
    if total is None:
        try:
            total = len(seq)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with make_progress(disable) as prog:
        task = prog.add_task(description, total=total)
        for item in seq:
            yield item
            prog.advance(task)


class RichProgress:
    """A ``ProgressFn`` drawing one bar per description; the display starts with the first report and stops when
    every bar it shows is complete."""

    def __init__(self) -> None:
        self._prog: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._open: set[str] = set()

    def __call__(self, description: str, done: int, total: Optional[int]) -> None:
        if self._prog is None:
            self._prog = make_progress()
            self._prog.start()
        if description not in self._tasks or (description not in self._open and done == 0):
            self._tasks[description] = self._prog.add_task(description, total=total)
        self._open.add(description)
        self._prog.update(self._tasks[description], completed=done, total=total)
        if total is not None and done >= total:
            self._open.discard(description)
            if not self._open:
                self.close()

    def close(self) -> None:
        if self._prog is not None:
            self._prog.stop()
            self._prog = None
            self._tasks.clear()
            self._open.clear()


def bars(enabled: bool = True) -> ProgressFn | None:
    """A progress callback that draws rich bars on stderr, or None (silence) when ``enabled`` is false."""
    return RichProgress() if enabled else None
