"""The ``uring`` engine: io_uring (Axboe, 2019) through the Python binding ``liburing`` **2024.5.3**.

Why io_uring: one thread keeps up to ``queue_depth`` reads in flight with one ``io_uring_enter`` per batch of
completions instead of one syscall (and one thread) per read, which is how a production runtime would issue them.

The binding is an optional dependency, imported only when a ``uring`` engine is opened or probed, so ``import
runtime`` works without it. What was tried, and why this exact version:

* ``liburing`` 2026.3.30 (the newest, a Zig rewrite shipped as a manylinux wheel): it imports, but constructing a
  ``Ring`` dies with SIGILL (illegal instruction): its wheel is compiled with AVX-512 instructions
  (``vmovups %zmm0`` in ``Ring.__new__``, found with gdb), and this machine's CPU (AMD EPYC, AVX2, no AVX-512)
  cannot run them. It cannot be caught from Python (the process is killed), so :func:`uring_status` refuses
  that API instead of probing it.
* ``liburing`` 2024.5.3 (Cython API: ``io_uring``, ``io_uring_get_sqe``, ``io_uring_prep_read``, ...): builds from
  source here (needs a C compiler) and works with O_DIRECT reads into our mmap buffers. Its
  ``io_uring_peek_batch_cqe`` writes ``count`` pointers into a single pointer field, so this module reaps
  completions one at a time with ``io_uring_wait_cqe`` + ``io_uring_cq_advance`` (no syscall when one is ready).

When no working binding is installed, ``get_engine("uring", ...)`` raises :class:`runtime.errors.EngineUnavailable`
with the reason, and ``engine_status("uring")`` says why, so tests skip it cleanly.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from runtime.direct import pread_full, short_read_error
from runtime.engines.base import SlotEngine, check_queue_depth, register_engine
from runtime.errors import EngineUnavailable

_URING_STATUS: tuple[bool, str] | None = None


def uring_status() -> tuple[bool, str]:
    """(usable, reason) for the ``uring`` engine: a Cython ``liburing`` binding is importable and a ring opens.

    Only the Cython API (liburing 2024.5.x: ``liburing.io_uring``) is used; the Zig rewrite (``liburing.Ring``,
    2026.x) is refused without being touched, because on CPUs without AVX-512 constructing a ring kills the
    process with SIGILL (see the module docstring).
    """
    global _URING_STATUS
    if _URING_STATUS is not None:
        return _URING_STATUS
    try:
        import liburing  # type: ignore[import-not-found]
    except Exception as e:  # ImportError, or a broken binary
        _URING_STATUS = (False, f"the Python io_uring binding is not installed (pip install 'liburing==2024.5.3'): "
                                f"{type(e).__name__}: {e}")
        return _URING_STATUS
    if not hasattr(liburing, "io_uring") or not hasattr(liburing, "io_uring_prep_read"):
        _URING_STATUS = (False, "installed liburing has the Zig API (2026.x) whose wheel needs AVX-512 and crashes "
                                "with SIGILL on CPUs without it; install 'liburing==2024.5.3' (Cython API)")
        return _URING_STATUS
    try:
        ring = liburing.io_uring()
        liburing.io_uring_queue_init(2, ring, 0)
        liburing.io_uring_queue_exit(ring)
    except Exception as e:  # kernel without io_uring, io_uring_disabled sysctl, seccomp, ...
        _URING_STATUS = (False, f"io_uring_queue_init failed: {type(e).__name__}: {e}")
        return _URING_STATUS
    _URING_STATUS = (True, f"liburing {getattr(liburing, '__version__', '2024.5.x')} (Cython API)")
    return _URING_STATUS


class _Ticket:
    """One asynchronous batch of :meth:`UringEngine.start`: its reads, how many entered the ring and completed."""

    __slots__ = ("id", "offsets", "sizes", "out", "n", "sent", "done", "short", "error")

    def __init__(self, tid: int, offsets: list[int], sizes: list[int], out: list[Any]):
        self.id, self.offsets, self.sizes, self.out = tid, offsets, sizes, out
        self.n = len(sizes)
        self.sent = self.done = 0
        self.short: list[int] = []
        self.error: BaseException | None = None


@register_engine("uring", "io_uring through liburing 2024.5.3: queue_depth reads in flight from one thread")
class UringEngine(SlotEngine):
    """io_uring reads: one thread keeps up to `queue_depth` O_DIRECT reads in flight.

    A submit fills free slots with ``io_uring_prep_read`` SQEs (each slot owns an aligned buffer; ``user_data`` is
    the read index + 1 and the slot), enters the kernel once with ``io_uring_submit_and_wait(ring, 1)``, reaps every
    completion that is ready, refills the freed slots, and repeats until all reads completed. A completion with a
    negative result raises ``OSError(-res)``; a short read is retried synchronously (only end of file is short).
    """

    name = "uring"
    status = staticmethod(uring_status)  # engine_status("uring") asks this

    def __init__(self, path: str | os.PathLike[str], queue_depth: int = 32):
        ok, why = uring_status()
        if not ok:
            raise EngineUnavailable(f"uring engine unavailable: {why}")
        import liburing  # type: ignore[import-not-found]

        k = check_queue_depth(queue_depth, high=4096)
        super().__init__(path, k)
        self._lu = liburing
        self._ring = liburing.io_uring()
        liburing.io_uring_queue_init(max(2, 1 << (k - 1).bit_length()), self._ring, 0)
        self._cqe = liburing.io_uring_cqe()
        self._open = True
        self._tickets: dict[int, _Ticket] = {}  # asynchronous batches not finished yet, by id
        self._queue: list[_Ticket] = []  # tickets with reads not yet in the ring, FIFO
        self._inflight = 0  # asynchronous reads in the ring
        self._next_id = 1

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray,
               out: Sequence[Any] | None = None) -> None:
        n = len(sizes)
        if n == 0:
            return
        if not self._open:
            raise ValueError("submit on a closed UringEngine")
        if out is not None:  # into the caller's buffers: the asynchronous path, waited for at once
            self.finish(self.start([int(x) for x in offsets], [int(x) for x in sizes], out))
            return
        while self._inflight:  # the slot loop below owns the ring: let started batches complete first
            self._reap(block=True)
        biggest = int(max(sizes))
        if biggest > self._cap:
            self._grow(biggest)
        lu, ring, cqe, fd, views = self._lu, self._ring, self._cqe, self._fd, self._views
        get_sqe, prep_read, set_data = lu.io_uring_get_sqe, lu.io_uring_prep_read, lu.io_uring_sqe_set_data64
        submit_and_wait, cq_ready, wait_cqe, cq_advance = (lu.io_uring_submit_and_wait, lu.io_uring_cq_ready,
                                                           lu.io_uring_wait_cqe, lu.io_uring_cq_advance)
        qd = self.queue_depth
        free = list(range(qd))
        nxt = inflight = 0
        short: list[int] = []
        while nxt < n or inflight:
            while nxt < n and free:
                slot = free.pop()
                sqe = get_sqe(ring)
                prep_read(sqe, fd, views[slot] if out is None else out[nxt], int(sizes[nxt]), int(offsets[nxt]))
                set_data(sqe, ((nxt + 1) << 12) | slot)
                nxt += 1
                inflight += 1
            submit_and_wait(ring, 1)
            for _ in range(cq_ready(ring)):
                rc = wait_cqe(ring, cqe)
                if rc < 0:
                    raise OSError(-rc, f"io_uring_wait_cqe failed: {os.strerror(-rc)}")
                res, data = cqe.res, cqe.user_data
                cq_advance(ring, 1)
                j, slot = (data >> 12) - 1, data & 0xFFF
                free.append(slot)
                inflight -= 1
                if res != sizes[j]:
                    if res < 0:
                        self._drain_quietly(inflight)
                        raise OSError(-res, f"io_uring read at offset {offsets[j]} failed: {os.strerror(-res)}")
                    short.append(j)
        for j in short:  # a short read only happens at end of file: retry synchronously to be sure
            view = self._views[0] if out is None else memoryview(out[j])
            if pread_full(self._fd, view[: int(sizes[j])], int(offsets[j])) != sizes[j]:
                raise short_read_error(self.path, int(offsets[j]), int(sizes[j]))

    # ------------------------------------------------------------------------------------------ asynchronous
    def start(self, offsets: Sequence[int], sizes: Sequence[int], out: Sequence[Any]) -> "_Ticket":
        """Put the reads of one batch in flight (up to ``queue_depth`` reads of all started batches at a time) and
        return at once; :meth:`finish` waits for them. Why: the online engine starts a layer's speculative reads
        and computes attention meanwhile on the same thread, with no I/O thread competing for the GIL or a core.
        Reads land in ``out[j]`` (caller's page-aligned buffers, required). Reads beyond the queue depth enter the
        ring as earlier ones complete, whenever :meth:`poll` or :meth:`finish` runs."""
        if not self._open:
            raise ValueError("start on a closed UringEngine")
        t = _Ticket(self._next_id, list(offsets), list(sizes), list(out))
        self._next_id = self._next_id % 0xFFFFF + 1
        if t.n:
            self._tickets[t.id] = t
            self._queue.append(t)
            self._fill()
            self._lu.io_uring_submit(self._ring)
        return t

    def _fill(self) -> None:
        """Move queued reads into free ring slots (no syscall; the caller submits)."""
        lu, ring, qd = self._lu, self._ring, self.queue_depth
        get_sqe, prep_read, set_data = lu.io_uring_get_sqe, lu.io_uring_prep_read, lu.io_uring_sqe_set_data64
        fd = self._fd
        while self._queue and self._inflight < qd:
            t = self._queue[0]
            room = min(qd - self._inflight, t.n - t.sent)
            offs, sizes, out, tid = t.offsets, t.sizes, t.out, t.id
            for j in range(t.sent, t.sent + room):
                sqe = get_sqe(ring)
                prep_read(sqe, fd, out[j], sizes[j], offs[j])
                set_data(sqe, (tid << 32) | j)
            t.sent += room
            self._inflight += room
            if t.sent == t.n:
                self._queue.pop(0)

    def _reap(self, block: bool) -> None:
        """Take every ready completion (and, if ``block``, wait for at least one), refill and submit."""
        lu, ring, cqe = self._lu, self._ring, self._cqe
        if block:
            rc = lu.io_uring_wait_cqe(ring, cqe)
            if rc < 0:
                raise OSError(-rc, f"io_uring_wait_cqe failed: {os.strerror(-rc)}")
        n = lu.io_uring_cq_ready(ring)
        for _ in range(n):
            lu.io_uring_wait_cqe(ring, cqe)  # one is ready: no syscall
            res, data = cqe.res, cqe.user_data
            lu.io_uring_cq_advance(ring, 1)
            self._inflight -= 1
            t = self._tickets.get(data >> 32)
            if t is None:  # pragma: no cover - a read of a synchronous submit cannot be in the ring here
                continue
            j = data & 0xFFFFFFFF
            t.done += 1
            if res != t.sizes[j]:
                if res < 0:
                    t.error = t.error or OSError(-res, f"io_uring read at offset {t.offsets[j]} failed: "
                                                       f"{os.strerror(-res)}")
                else:
                    t.short.append(j)
        if self._queue:
            self._fill()
            lu.io_uring_submit(ring)

    def poll(self) -> None:
        """Reap ready completions and refill the ring from started batches; never blocks."""
        if self._inflight:
            self._reap(block=False)

    def ready(self, t: "_Ticket") -> bool:
        """Whether every read of batch ``t`` completed (after a non-blocking :meth:`poll`)."""
        self.poll()
        return t.done >= t.n

    def finish(self, t: "_Ticket") -> None:
        """Wait until every read of batch ``t`` completed (raises its first error)."""
        while t.done < t.n:
            self._reap(block=True)
        self._tickets.pop(t.id, None)
        for j in t.short:  # a short read only happens at end of file: retry synchronously to be sure
            if pread_full(self._fd, memoryview(t.out[j])[: t.sizes[j]], t.offsets[j]) != t.sizes[j]:
                raise short_read_error(self.path, t.offsets[j], t.sizes[j])
        if t.error is not None:
            raise t.error

    def _drain_quietly(self, inflight: int) -> None:
        lu = self._lu
        while inflight > 0:
            if lu.io_uring_wait_cqe(self._ring, self._cqe) < 0:
                return
            lu.io_uring_cq_advance(self._ring, 1)
            inflight -= 1

    def close(self) -> None:
        if self._open:
            while self._inflight:  # the kernel must not write into buffers the caller may free
                self._reap(block=True)
            self._open = False
            self._lu.io_uring_queue_exit(self._ring)
            self.file.close()
