"""O_DIRECT primitives: opening and probing files for direct reads, aligned buffers, and page-cache checks.

Why O_DIRECT: the point of coact is what a placement costs on the *disk*. Through the page cache, a replayed trace
would soon be served from DRAM and every placement would look equally fast. O_DIRECT bypasses the page cache; its
price is that the buffer address, the file offset and the size must be multiples of the logical block size. We use
4 KiB for all three (it covers 512 B and 4 KiB devices), with buffers from an anonymous mmap (page aligned).

Why a module of its own: the I/O engines (:mod:`runtime.engines`), the device profiler (:mod:`runtime.device`) and
the fio reference (:mod:`runtime.fio`) all need the same few primitives, and none of them needs the engines'
registry to get them.

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
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

from runtime._closing import Closing
from runtime.errors import DirectIOUnsupported

ALIGN = 4096
O_DIRECT: int | None = getattr(os, "O_DIRECT", None)


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


def aligned_buffer(nbytes: int) -> tuple[mmap.mmap, memoryview]:
    """A page-aligned anonymous mapping of at least `nbytes` (a power of two >= 4 KiB) and a view of it.

    Why mmap: an anonymous mapping starts on a page boundary, which is what O_DIRECT demands of the buffer address;
    a power-of-two size lets a buffer grow rarely as larger reads arrive.
    """
    cap = max(ALIGN, 1 << (int(nbytes) - 1).bit_length())
    buf = mmap.mmap(-1, cap)
    return buf, memoryview(buf)


def aligned_slots(nbytes: int, depth: int) -> tuple[list[mmap.mmap], list[memoryview], int]:
    """One aligned buffer per in-flight slot (queue-depth engines): buffers, their views, and the slot size.

    Why one per slot: reads in flight complete in any order, so each needs memory of its own.
    """
    pairs = [aligned_buffer(nbytes) for _ in range(depth)]
    return [b for b, _ in pairs], [v for _, v in pairs], len(pairs[0][0])


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes at `offset` into `view`, retrying partial reads; returns the bytes read (fewer only
    at end of file).

    Why a loop: a pread may return fewer bytes than asked without being at the end of the file (a signal, a device
    limit); the engines' fast paths issue one preadv and fall back here when it came back short. An unaligned
    partial count only happens at end of file, and O_DIRECT would refuse the unaligned follow-up read, so it stops.
    """
    n = len(view)
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:n]], offset + done)
        if got <= 0:
            break
        done += got
        if done % ALIGN:
            break
    return done


def short_read_error(path: str | os.PathLike[str], off: int, n: int) -> OSError:
    """The error every engine raises when a read returns fewer bytes than asked (only past the end of the file)."""
    return OSError(f"short read at offset {off}: fewer than {n} bytes ({path})")


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
        # The old mapping is dropped, not closed: a caller may still hold a view of the previous read.
        self._buf, self._view = aligned_buffer(nbytes)
        self._cap = len(self._buf)

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
        return self._view[: pread_full(self._fd, self._view[:nbytes], offset)]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None



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

