"""The ``threads`` engine: a fixed pool of worker threads issuing preadv in parallel.

Why parallel requests at all: flash is an array of parallel units; "LLM in a flash" (Alizadeh et al., 2024, §3.1,
Fig. 2) shows random-read throughput grows with the number of outstanding requests, which is why their runtime
reads with 32 threads. ``os.preadv`` releases the GIL while the kernel waits for the device, so plain threads keep
up to ``queue_depth`` requests in flight without any binding beyond the standard library.

Why no per-read task objects: a submit publishes the read list once, wakes the workers through one lock each, and
every worker (the caller included) claims the next read index from a shared ``itertools.count`` (atomic under the
GIL) until the list is exhausted; a Future per read would cost more than a 4 KiB read on a fast disk.
"""
from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Sequence

import numpy as np

from runtime.direct import pread_full, short_read_error
from runtime.engines.base import SlotEngine, check_queue_depth, register_engine


@register_engine("threads", "a pool of threads issuing blocking preadv in parallel (queue_depth in flight)")
class ThreadsEngine(SlotEngine):
    """A fixed pool of threads issuing blocking preadv calls in parallel: up to `queue_depth` reads in flight.

    The caller's thread is one of the `queue_depth` workers, so a pool of depth k starts k-1 threads. Each worker
    owns a page-aligned buffer (O_DIRECT needs aligned memory; separate buffers because reads complete in any
    order). A submit:

    1. publishes (offsets, sizes, a fresh ``itertools.count``) in one attribute,
    2. releases the start lock of min(k-1, n-1) workers (a one-read list is served inline, no wake-up),
    3. drains the list in the caller's thread too: every worker loops ``j = next(counter)`` and reads entry j
       until ``j >= n`` (claiming is atomic under the GIL; the preadv itself runs without the GIL),
    4. acquires each woken worker's done lock, then re-raises the first worker error, if any.

    So there is no Future, task or queue item per read: the hot path per read is one ``next``, two list
    indexings and the preadv. Results are identical to :class:`SyncEngine` (the same bytes are requested); only
    the order of completion differs.
    """

    name = "threads"

    def __init__(self, path: str | os.PathLike[str], queue_depth: int = 8):
        k = check_queue_depth(queue_depth)
        super().__init__(path, k)
        self._job: tuple[Any, Any, Any, int, Any] = ([], [], itertools.count(), 0, None)
        self._errors: list[BaseException] = []
        self._stop = False
        self._go = [threading.Lock() for _ in range(k - 1)]
        self._done = [threading.Lock() for _ in range(k - 1)]
        for lock in (*self._go, *self._done):
            lock.acquire()
        self._threads = [threading.Thread(target=self._worker, args=(i,), name=f"coact-io-{i}", daemon=True)
                         for i in range(k - 1)]
        for t in self._threads:
            t.start()

    def _grow(self, nbytes: int) -> bool:
        grown = super()._grow(nbytes)
        if grown:  # per slot: size -> [view[:size]], one-element iovec lists reused across reads
            self._iovs: list[dict[int, list[memoryview]]] = [{} for _ in self._bufs]
        return grown

    def _worker(self, slot: int) -> None:
        go, done = self._go[slot], self._done[slot]
        while True:
            go.acquire()
            if self._stop:
                done.release()
                return
            try:
                if self._job[4] is None:
                    self._drain(slot)
                else:
                    self._drain_into()
            except BaseException as e:  # reported by submit() in the caller's thread
                self._errors.append(e)
            done.release()

    def _drain(self, slot: int) -> None:
        offsets, sizes, claim, n, _ = self._job
        fd, view, preadv, iovs = self._fd, self._views[slot], os.preadv, self._iovs[slot]
        for j in claim:
            if j >= n:
                return
            size = sizes[j]
            iov = iovs.get(size)
            if iov is None:
                iov = iovs[size] = [view[:size]]
            if preadv(fd, iov, offsets[j]) != size and pread_full(fd, view[:size], int(offsets[j])) != size:
                raise short_read_error(self.path, int(offsets[j]), int(size))

    def _drain_into(self) -> None:
        """Like :meth:`_drain`, into the caller's buffers (``submit(..., out=...)``)."""
        offsets, sizes, claim, n, out = self._job
        for j in claim:
            if j >= n:
                return
            size = int(sizes[j])
            if pread_full(self._fd, memoryview(out[j])[:size], int(offsets[j])) != size:
                raise short_read_error(self.path, int(offsets[j]), size)

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray,
               out: Sequence[Any] | None = None) -> None:
        n = len(sizes)
        if n == 0:
            return
        if self._fd is None or self._stop:
            raise ValueError("submit on a closed ThreadsEngine")
        biggest = int(max(sizes))
        if biggest > self._cap:
            self._grow(biggest)
        self._job = (offsets, sizes, itertools.count(), n, out)
        wake = min(self.queue_depth - 1, n - 1)
        go = self._go
        for i in range(wake):
            go[i].release()
        try:
            if out is None:
                self._drain(self.queue_depth - 1)  # the caller's own slot is the last buffer
            else:
                self._drain_into()
        finally:
            done = self._done
            for i in range(wake):
                done[i].acquire()
        if self._errors:
            err = self._errors[0]
            self._errors.clear()
            raise err

    def close(self) -> None:
        if self._stop:
            return
        self._stop = True
        for lock in self._go:
            lock.release()
        for t in self._threads:
            t.join()
        self.file.close()
