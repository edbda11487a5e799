"""The ``sync`` engine: one blocking preadv at a time (queue depth 1).

Why keep it: it is the simplest honest baseline. Each read waits for the device before the next is issued, so its
time per (token, layer) is the sum of the requests' latencies, which is what a placement that needs fewer requests
saves; the parallel engines then show how much of that a deeper queue hides.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from runtime._closing import Closing
from runtime.direct import DirectFile, pread_full, short_read_error
from runtime.engines.base import register_engine
from runtime.errors import EngineError


@register_engine("sync", "one blocking preadv at a time (queue depth 1), the simplest baseline")
class SyncEngine(Closing):
    """One blocking preadv at a time, in the order given (queue depth 1: the simplest honest baseline)."""

    name = "sync"
    queue_depth = 1

    def __init__(self, path: str | os.PathLike[str], queue_depth: int = 1):
        if int(queue_depth) != 1:
            raise EngineError("the sync engine has queue depth 1; use 'threads:N' or 'uring:N' for more")
        self.file = DirectFile(path)
        self._iov_view: memoryview | None = None
        self._iovs: dict[int, list[memoryview]] = {}

    def fileno(self) -> int:
        return self.file.fileno()

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray,
               out: Sequence[Any] | None = None) -> None:
        # The replay's timed region is this loop: keep it to one preadv per range (the planner already
        # guarantees 4 KiB alignment; a misaligned range fails in the kernel with EINVAL).
        if len(sizes) == 0:
            return
        if out is not None:
            fd = self.file.fileno()
            for off, n, buf in zip(offsets, sizes, out):
                if pread_full(fd, memoryview(buf)[:n], off) != n:
                    raise short_read_error(self.file.path, off, n)
            return
        f = self.file
        f.ensure_capacity(int(max(sizes)))
        fd, view, preadv = f.fileno(), f.buffer_view(), os.preadv
        iovs = self._iovs if self._iov_view is view else self._reset_iovs(view)
        for off, n in zip(offsets, sizes):
            iov = iovs.get(n)
            if iov is None:
                iov = iovs[n] = [view[:n]]
            if preadv(fd, iov, off) != n and len(f.read(off, n)) != n:  # retry a short read in full
                raise short_read_error(f.path, off, n)

    def _reset_iovs(self, view: memoryview) -> dict[int, list[memoryview]]:
        """Per-size one-element iovec lists over the buffer, reused across reads (no allocation per read)."""
        self._iov_view = view
        self._iovs = {}
        return self._iovs

    def close(self) -> None:
        self.file.close()
