"""O_DIRECT reads and the I/O engines that issue a (token, layer)'s read list.

Why O_DIRECT: the point of coact is what a placement costs on the *disk*. Through the page cache, a replayed trace
would soon be served from DRAM and every placement would look equally fast. O_DIRECT bypasses the page cache; its
price is that the buffer address, the file offset and the size must be multiples of the logical block size. We use
4 KiB for all three (it covers 512 B and 4 KiB devices), with buffers from an anonymous mmap (page aligned).

Engines: an :class:`Engine` performs all the reads of one (token, layer) and returns when they are complete, which
is the unit the replay times. `sync` issues one preadv at a time; other engines (`threads`, `uring`) register
themselves with :func:`register_engine` and the replay picks them by name, unchanged.
"""
from __future__ import annotations

import errno
import mmap
import os
import tempfile
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

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


class DirectFile:
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

    def __enter__(self) -> "DirectFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net only
        try:
            self.close()
        except Exception:
            pass


@runtime_checkable
class Engine(Protocol):
    """Issues the reads of one (token, layer).

    `submit(offsets, sizes)` performs every read (4 KiB aligned offsets and sizes) and returns only when all are
    complete; the replay times exactly this call. Engines own their file handle; `close()` releases it.
    """

    name: str

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray) -> None: ...

    def close(self) -> None: ...


EngineFactory = Callable[[str | os.PathLike[str]], Engine]
_ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Class/function decorator adding an engine factory `factory(path) -> Engine` under `name`."""

    def deco(factory: EngineFactory) -> EngineFactory:
        _ENGINES[name] = factory
        return factory

    return deco


def available_engines() -> list[str]:
    return sorted(_ENGINES)


def get_engine(name: str, path: str | os.PathLike[str]) -> Engine:
    """Open engine `name` on the file at `path` (raises ValueError for an unknown name)."""
    try:
        factory = _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown I/O engine {name!r}; available: {', '.join(available_engines())}") from None
    return factory(path)


@register_engine("sync")
class SyncEngine:
    """One blocking preadv at a time, in the order given (queue depth 1: the simplest honest baseline)."""

    name = "sync"

    def __init__(self, path: str | os.PathLike[str]):
        self.file = DirectFile(path)

    def submit(self, offsets: Sequence[int] | np.ndarray, sizes: Sequence[int] | np.ndarray) -> None:
        # The replay's timed region is this loop: keep it to one preadv per range (the planner already
        # guarantees 4 KiB alignment; a misaligned range fails in the kernel with EINVAL).
        if len(sizes) == 0:
            return
        f = self.file
        f.ensure_capacity(int(max(sizes)))
        fd, view, preadv = f.fileno(), f.buffer_view(), os.preadv
        for off, n in zip(offsets, sizes):
            if preadv(fd, [view[:n]], off) != n and len(f.read(off, n)) != n:  # retry a short read in full
                raise OSError(f"short read at offset {off}: fewer than {n} bytes ({f.path})")

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "SyncEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
