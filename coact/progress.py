"""Progress bars: one helper so every long loop in coact looks the same (rich), and can be silenced."""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def make_progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


def track(seq: Iterable[T], *, description: str = "", total: int | None = None, disable: bool = False) -> Iterator[T]:
    """Iterate `seq` with a rich progress bar (stderr-friendly, disabled in non-interactive use if asked)."""
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
