"""O_DIRECT reads and the I/O engines that issue a (token, layer)'s read list.

Why O_DIRECT: the point of coact is what a placement costs on the *disk*. Through the page cache, a replayed trace
would soon be served from DRAM and every placement would look equally fast. O_DIRECT bypasses the page cache; its
price is that the buffer address, the file offset and the size must be multiples of the logical block size. We use
4 KiB for all three (it covers 512 B and 4 KiB devices), with buffers from an anonymous mmap (page aligned).

Engines: an :class:`Engine` performs all the reads of one (token, layer) and returns when they are complete, which
is the unit the replay times. Three engines register themselves with :func:`register_engine` and the replay picks
them by name, unchanged; all give the same bytes and counts, only the speed differs:

- ``sync``: one blocking preadv at a time (queue depth 1), the simplest honest baseline.
- ``threads``: a fixed pool of worker threads issuing preadv in parallel (``os.preadv`` releases the GIL while the
  kernel waits for the device), so up to ``queue_depth`` requests are in flight. No per-read task objects: a submit
  publishes the read list once, wakes the workers through one lock each, and every worker (the caller included)
  claims the next read index from a shared ``itertools.count`` (atomic under the GIL) until the list is exhausted.
  Why parallel requests at all: flash is an array of parallel units; "LLM in a flash" (Alizadeh et al., 2024, §3.1,
  Fig. 2) shows random-read throughput grows with the number of outstanding requests, which is why their runtime
  reads with 32 threads.
- ``uring``: io_uring (Axboe, 2019) through the Python binding ``liburing`` **2024.5.3** (Cython over the C liburing;
  built from its sdist). One thread keeps up to ``queue_depth`` reads in flight with one ``io_uring_enter`` per
  batch of completions instead of one syscall per read. What was tried, and why this exact version:

  * ``liburing`` 2026.3.30 (the newest, a Zig rewrite shipped as a manylinux wheel): it imports, but constructing a
    ``Ring`` dies with SIGILL (illegal instruction): its wheel is compiled with AVX-512 instructions
    (``vmovups %zmm0`` in ``Ring.__new__``, found with gdb), and this machine's CPU (AMD EPYC, AVX2, no AVX-512)
    cannot run them. It cannot be caught from Python (the process is killed), so :func:`uring_status` refuses
    that API instead of probing it.
  * ``liburing`` 2024.5.3 (Cython API: ``io_uring``, ``io_uring_get_sqe``, ``io_uring_prep_read``, ...): builds from
    source here (needs a C compiler) and works with O_DIRECT reads into our mmap buffers. Its
    ``io_uring_peek_batch_cqe`` writes ``count`` pointers into a single pointer field, so this module reaps
    completions one at a time with ``io_uring_wait_cqe`` + ``io_uring_cq_advance`` (no syscall when one is ready).

  When no working binding is installed, ``get_engine("uring", ...)`` raises :class:`EngineUnavailable` with the
  reason, and :func:`engine_status` says why, so tests skip it cleanly.

Page cache: every engine opens the file with O_DIRECT (checked by :func:`has_o_direct` through ``fcntl(F_GETFL)``);
:func:`drop_page_cache` evicts the file's clean cached pages (``posix_fadvise(DONTNEED)``) and
:func:`resident_pages` counts the file's pages that are in the page cache (``mincore(2)`` on a mapping of the
file), so a test or a benchmark can show that O_DIRECT reads did not fill the page cache, and therefore could not
have been served from it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import mmap
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from runtime._closing import Closing

ALIGN = 4096
O_DIRECT: int | None = getattr(os, "O_DIRECT", None)


class DirectIOUnsupported(OSError):
    """The platform or the file system does not support O_DIRECT reads (e.g. tmpfs before Linux 6.6)."""


def _unsupported(path: str | os.PathLike[str], why: str) -> DirectIOUnsupported:
    return DirectIOUnsupported(
        f"O_DIRECT reads are not supported on {path} ({why}); put the pack file on a real disk file system "
        f"(ext4, xfs, btrfs), not tmpfs/overlay-on-tmpfs"
    )


def _open_direct(path: str | os.PathLike[str]) -> int:
    if O_DIRECT is None:
        raise _unsupported(path, "this platform has no os.O_DIRECT")
    try:
        return os.open(path, os.O_RDONLY | O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise _unsupported(path, "open with O_DIRECT failed with EINVAL") from None
        raise


def direct_io_supported(path: str | os.PathLike[str]) -> bool:
    """Whether O_DIRECT reads work on `path` (a file, or a directory: a probe file is created and removed)."""
    try:
        require_direct_io(path)
    except DirectIOUnsupported:
        return False
    return True


def require_direct_io(path: str | os.PathLike[str]) -> None:
    """Raise :class:`DirectIOUnsupported` with a clear message unless an aligned O_DIRECT read works on `path`."""
    p = Path(path)
    if p.is_dir():
        fd, probe = tempfile.mkstemp(prefix=".coact-odirect-", dir=p)
        try:
            os.write(fd, b"\0" * ALIGN)
            os.close(fd)
            _probe_read(probe, shown=p)
        finally:
            os.unlink(probe)
    else:
        _probe_read(p, shown=p)


def _probe_read(path: str | os.PathLike[str], *, shown: Path) -> None:
    try:
        fd = _open_direct(path)
    except DirectIOUnsupported:
        raise _unsupported(shown, "open with O_DIRECT failed") from None
    try:
        buf = mmap.mmap(-1, ALIGN)
        try:
            os.preadv(fd, [buf], 0)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise _unsupported(shown, "an aligned O_DIRECT read failed with EINVAL") from None
            raise
        finally:
            buf.close()
    finally:
        os.close(fd)


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """File system type of the mount holding `path` (from /proc/self/mounts; None if unknown).

    Why: since Linux 6.6 tmpfs accepts O_DIRECT, so a replay on /tmp or /dev/shm "works" but measures RAM, not the
    disk. Reports record the type so such a measurement is visible.
    """
    try:
        target = os.path.realpath(path)
        best, fstype = "", None
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, fields[2]
        return fstype
    except OSError:
        return None


class DirectFile(Closing):
    """A file opened with O_RDONLY|O_DIRECT plus one reusable page-aligned buffer.

    `read(offset, nbytes)` returns a memoryview into the buffer, valid until the next read (the replay discards
    the bytes; tests compare them with a buffered read).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd: int | None = _open_direct(self.path)
        self.size = os.fstat(self._fd).st_size
        self._buf: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._cap = 0
        self.ensure_capacity(1 << 20)

    def ensure_capacity(self, nbytes: int) -> None:
        """Grow the aligned buffer to hold at least `nbytes` (rounded up to a power of two, >= 4 KiB)."""
        if nbytes <= self._cap:
            return
        cap = max(ALIGN, 1 << (int(nbytes) - 1).bit_length())
        # The old mapping is dropped, not closed: a caller may still hold a view of the previous read.
        self._buf = mmap.mmap(-1, cap)
        self._view = memoryview(self._buf)
        self._cap = cap

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("closed DirectFile")
        return self._fd

    def buffer_view(self) -> memoryview:
        """The whole aligned buffer (for engines issuing their own preadv); replaced when the buffer grows."""
        assert self._view is not None
        return self._view

    def read(self, offset: int, nbytes: int) -> memoryview:
        """Read `nbytes` at `offset` (both multiples of 4096); returns fewer bytes only at end of file."""
        if self._fd is None:
            raise ValueError("read on a closed DirectFile")
        if offset % ALIGN or nbytes % ALIGN or offset < 0 or nbytes < 0:
            raise ValueError(f"O_DIRECT read must be {ALIGN}-aligned: offset={offset} nbytes={nbytes}")
        self.ensure_capacity(nbytes)
        assert self._view is not None
        done = 0
        while done < nbytes:
            got = os.preadv(self._fd, [self._view[done:nbytes]], offset + done)
            if got <= 0:
                break
            done += got
            if done % ALIGN:  # a short, unaligned read only happens at end of file
                break
        return self._view[:done]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None



@runtime_checkable
class Engine(Protocol):
    """Issues the reads of one (token, layer).

    `submit(offsets, sizes)` performs every read (4 KiB aligned offsets and sizes) and returns only when all are
    complete; the replay times exactly this call. Engines own their file handle; `close()` releases it.
    """

    name: str

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray) -> None: ...

    def close(self) -> None: ...


EngineFactory = Callable[..., Engine]
_ENGINES: dict[str, EngineFactory] = {}


class EngineUnavailable(RuntimeError):
    """A registered engine cannot run here (e.g. no working io_uring binding); the message says why."""


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Class/function decorator adding an engine factory `factory(path, **params) -> Engine` under `name`."""

    def deco(factory: EngineFactory) -> EngineFactory:
        _ENGINES[name] = factory
        return factory

    return deco


def available_engines() -> list[str]:
    """Registered engine names (an engine may still be unavailable on this machine: see :func:`engine_status`)."""
    return sorted(_ENGINES)


def parse_engine(spec: str) -> tuple[str, dict[str, Any]]:
    """``"threads"`` -> ("threads", {}); ``"threads:16"`` -> ("threads", {"queue_depth": 16}) (CLI shorthand)."""
    name, _, qd = str(spec).partition(":")
    if not qd:
        return name, {}
    try:
        depth = int(qd)
    except ValueError:
        raise ValueError(f"bad engine spec {spec!r}: the part after ':' must be a queue depth (an integer)") from None
    if depth < 1:
        raise ValueError(f"bad engine spec {spec!r}: queue depth must be >= 1")
    return name, {"queue_depth": depth}


def get_engine(name: str, path: str | os.PathLike[str], **params: Any) -> Engine:
    """Open engine `name` (or ``name:queue_depth``) on the file at `path`.

    Raises ValueError for an unknown name and :class:`EngineUnavailable` when the engine cannot run here.
    """
    base, extra = parse_engine(name)
    try:
        factory = _ENGINES[base]
    except KeyError:
        raise ValueError(f"unknown I/O engine {base!r}; available: {', '.join(available_engines())}") from None
    return factory(path, **{**extra, **params})


def engine_status(name: str) -> tuple[bool, str]:
    """(usable here, reason) for a registered engine, without opening a file."""
    if name not in _ENGINES:
        return False, f"unknown I/O engine {name!r}"
    if name == "uring":
        return uring_status()
    return True, "ok"


def engine_queue_depth(engine: Engine) -> int:
    """Requests an engine keeps in flight (1 for engines that do not say)."""
    return int(getattr(engine, "queue_depth", 1) or 1)


# --------------------------------------------------------------------------------------------- page-cache checks


def open_flags(fd: int) -> int:
    """The status flags of an open file descriptor (``fcntl(fd, F_GETFL)``)."""
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def has_o_direct(fd: int) -> bool:
    """Whether `fd` was opened with O_DIRECT (so its reads bypass the page cache)."""
    return O_DIRECT is not None and bool(open_flags(fd) & O_DIRECT)


def drop_page_cache(path: str | os.PathLike[str]) -> None:
    """Ask the kernel to drop the file's clean cached pages (``posix_fadvise(POSIX_FADV_DONTNEED)``).

    Why: a file just written (a pack, the profiling file) sits in the page cache; buffered readers would be served
    from DRAM. O_DIRECT readers are not, but dropping makes :func:`resident_pages` a clean before/after check.
    Dirty pages are written back first (fdatasync), since DONTNEED only drops clean pages.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fdatasync(fd)
        except OSError:
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc: Any = None


def _get_libc() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = lib
    return _libc


def resident_pages(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> tuple[int, int]:
    """(pages of the file held in the page cache, pages examined), from ``mincore(2)`` through ctypes.

    `offset` (a multiple of the page size) and `length` select a byte range (default: the whole file), e.g. one
    layer region of a pack, whose header pages a buffered reader may legitimately have cached. Mapping a file does
    not read it, and mincore only reports residency, so the check itself loads nothing.
    """
    page = mmap.PAGESIZE
    if int(offset) % page or int(offset) < 0:
        raise ValueError(f"offset must be a non-negative multiple of the page size ({page})")
    fsize = os.path.getsize(path)
    size = max(0, min(fsize - int(offset), fsize if length is None else int(length)))
    total = -(-size // page)
    if size == 0:
        return 0, 0
    libc = _get_libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, int(offset))
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vec = (ctypes.c_ubyte * total)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {path} failed")
            resident = sum(1 for v in bytes(vec) if v & 1)
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)
    return resident, total


@register_engine("sync")
class SyncEngine:
    """One blocking preadv at a time, in the order given (queue depth 1: the simplest honest baseline)."""

    name = "sync"
    queue_depth = 1

    def __init__(self, path: str | os.PathLike[str], queue_depth: int = 1):
        if int(queue_depth) != 1:
            raise ValueError("the sync engine has queue depth 1; use 'threads:N' or 'uring:N' for more")
        self.file = DirectFile(path)
        self._iov_view: memoryview | None = None
        self._iovs = {}

    def fileno(self) -> int:
        return self.file.fileno()

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray) -> None:
        # The replay's timed region is this loop: keep it to one preadv per range (the planner already
        # guarantees 4 KiB alignment; a misaligned range fails in the kernel with EINVAL).
        if len(sizes) == 0:
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
                raise OSError(f"short read at offset {off}: fewer than {n} bytes ({f.path})")

    def _reset_iovs(self, view: memoryview) -> dict[int, list[memoryview]]:
        """Per-size one-element iovec lists over the buffer, reused across reads (no allocation per read)."""
        self._iov_view = view
        self._iovs: dict[int, list[memoryview]] = {}
        return self._iovs

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "SyncEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _aligned_buffer(nbytes: int) -> tuple[mmap.mmap, memoryview]:
    """A page-aligned anonymous mapping of at least `nbytes` (a power of two >= 4 KiB) and a view of it."""
    cap = max(ALIGN, 1 << (int(nbytes) - 1).bit_length())
    buf = mmap.mmap(-1, cap)
    return buf, memoryview(buf)


def _aligned_slots(nbytes: int, depth: int) -> tuple[list[mmap.mmap], list[memoryview], int]:
    """One aligned buffer per in-flight slot (queue-depth engines): buffers, their views, and the slot size."""
    pairs = [_aligned_buffer(nbytes) for _ in range(depth)]
    return [b for b, _ in pairs], [v for _, v in pairs], len(pairs[0][0])


def _short_read(path: Path, off: int, n: int) -> OSError:
    return OSError(f"short read at offset {off}: fewer than {n} bytes ({path})")


@register_engine("threads")
class ThreadsEngine(Closing):
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
        k = int(queue_depth)
        if k < 1:
            raise ValueError("queue_depth must be >= 1")
        self.queue_depth = k
        self.file = DirectFile(path)
        self.path = self.file.path
        self._fd = self.file.fileno()
        self._bufs: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._cap = 0
        self._grow(1 << 20)
        self._job: tuple[Any, Any, Any, int] = ([], [], itertools.count(), 0)
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

    def fileno(self) -> int:
        return self._fd

    def _grow(self, nbytes: int) -> None:
        if nbytes <= self._cap:
            return
        self._bufs, self._views, self._cap = _aligned_slots(nbytes, self.queue_depth)
        self._iovs: list[dict[int, list[memoryview]]] = [{} for _ in self._bufs]  # per slot: size -> [view[:size]]

    def _worker(self, slot: int) -> None:
        go, done = self._go[slot], self._done[slot]
        while True:
            go.acquire()
            if self._stop:
                done.release()
                return
            try:
                self._drain(slot)
            except BaseException as e:  # reported by submit() in the caller's thread
                self._errors.append(e)
            done.release()

    def _drain(self, slot: int) -> None:
        offsets, sizes, claim, n = self._job
        fd, view, preadv, iovs = self._fd, self._views[slot], os.preadv, self._iovs[slot]
        for j in claim:
            if j >= n:
                return
            size = sizes[j]
            iov = iovs.get(size)
            if iov is None:
                iov = iovs[size] = [view[:size]]
            if preadv(fd, iov, offsets[j]) != size:
                got = self._retry(slot, int(offsets[j]), int(size))
                if got != size:
                    raise _short_read(self.path, int(offsets[j]), int(size))

    def _retry(self, slot: int, off: int, size: int) -> int:
        view, done = self._views[slot], 0
        while done < size:
            got = os.preadv(self._fd, [view[done:size]], off + done)
            if got <= 0:
                break
            done += got
        return done

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray) -> None:
        n = len(sizes)
        if n == 0:
            return
        if self._fd is None or self._stop:
            raise ValueError("submit on a closed ThreadsEngine")
        biggest = int(max(sizes))
        if biggest > self._cap:
            self._grow(biggest)
        self._job = (offsets, sizes, itertools.count(), n)
        wake = min(self.queue_depth - 1, n - 1)
        go = self._go
        for i in range(wake):
            go[i].release()
        try:
            self._drain(self.queue_depth - 1)  # the caller's own slot is the last buffer
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


@register_engine("uring")
class UringEngine(Closing):
    """io_uring reads: one thread keeps up to `queue_depth` O_DIRECT reads in flight.

    A submit fills free slots with ``io_uring_prep_read`` SQEs (each slot owns an aligned buffer; ``user_data`` is
    the read index + 1 and the slot), enters the kernel once with ``io_uring_submit_and_wait(ring, 1)``, reaps every
    completion that is ready, refills the freed slots, and repeats until all reads completed. A completion with a
    negative result raises ``OSError(-res)``; a short read is retried synchronously (only end of file is short).
    """

    name = "uring"

    def __init__(self, path: str | os.PathLike[str], queue_depth: int = 32):
        ok, why = uring_status()
        if not ok:
            raise EngineUnavailable(f"uring engine unavailable: {why}")
        import liburing  # type: ignore[import-not-found]

        k = int(queue_depth)
        if not 1 <= k <= 4096:
            raise ValueError("queue_depth must be in [1, 4096]")
        self.queue_depth = k
        self._lu = liburing
        self.file = DirectFile(path)
        self.path = self.file.path
        self._fd = self.file.fileno()
        self._ring = liburing.io_uring()
        liburing.io_uring_queue_init(max(2, 1 << (k - 1).bit_length()), self._ring, 0)
        self._cqe = liburing.io_uring_cqe()
        self._views: list[memoryview] = []
        self._bufs: list[mmap.mmap] = []
        self._cap = 0
        self._grow(1 << 20)
        self._open = True

    def fileno(self) -> int:
        return self._fd

    def _grow(self, nbytes: int) -> None:
        if nbytes <= self._cap:
            return
        self._bufs, self._views, self._cap = _aligned_slots(nbytes, self.queue_depth)

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray) -> None:
        n = len(sizes)
        if n == 0:
            return
        if not self._open:
            raise ValueError("submit on a closed UringEngine")
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
                prep_read(sqe, fd, views[slot], int(sizes[nxt]), int(offsets[nxt]))
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
            if len(self.file.read(int(offsets[j]), int(sizes[j]))) != sizes[j]:
                raise _short_read(self.path, int(offsets[j]), int(sizes[j]))

    def _drain_quietly(self, inflight: int) -> None:
        lu = self._lu
        while inflight > 0:
            if lu.io_uring_wait_cqe(self._ring, self._cqe) < 0:
                return
            lu.io_uring_cq_advance(self._ring, 1)
            inflight -= 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._lu.io_uring_queue_exit(self._ring)
            self.file.close()

