"""Atomic file writes shared by the layout, export and pack writers.

Why: a layout or pack file that is half written (crash, Ctrl-C, full disk) must never be mistaken for a good one.
Every writer therefore writes to a temporary file in the *same directory* (so the final rename cannot cross a file
system) and `os.replace`s it over the destination only after the data is flushed to disk.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on normal exit fsync it and move it onto `path`.

    On an exception the temporary file is removed and the destination is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; artefacts are meant to be shared like any normal output file
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a written file to stable storage (so the rename never exposes unwritten blocks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
