"""Atomic writes of files and folders: the one helper every artefact writer uses (layouts, packs, exports, cost
models, statistics, the model cache).

Why: an artefact that is half written (crash, Ctrl-C, full disk) must never be mistaken for a good one, and the
previous good artefact must survive until the new one is complete. Writers therefore fill a temporary file or
folder in the *same directory* (so the final rename cannot cross a file system), flush it to disk, and only then
move it onto the destination: ``os.replace`` for files, and for folders the Linux ``renameat2(RENAME_EXCHANGE)``
swap, so there is no moment where neither the old nor the new folder exists (a plain two-rename fallback is used
where the swap is unsupported). Temporaries carry the marker ``.coact-tmp-`` in their names so that stale ones left
by a killed run are recognisably ours.

Permissions follow the user's umask, like any other tool's output (``mkstemp``/``mkdtemp`` create 0600/0700).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

TMP_MARK = ".coact-tmp-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a written file (or a folder's entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}{TMP_MARK}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on normal exit fsync it and move it onto ``path``.

    On an exception the temporary file is removed and the destination is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(dest), suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where the call is unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: file system or kernel without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fix_modes(root: Path) -> None:
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on normal exit fsync its files and put it in place of ``path``.

    An existing folder at ``path`` is swapped out atomically and then deleted. The caller decides beforehand
    whether ``path`` may be replaced at all (only an artefact of the same kind may be). On an exception the
    temporary folder is removed and ``path`` is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), dir=dest.parent))
    try:
        yield tmp
        _fix_modes(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_path(f)
        if dest.exists() or dest.is_symlink():
            if not dest.is_dir() or dest.is_symlink():
                raise FileExistsError(f"{dest} exists and is not a folder")
            if _exchange(tmp, dest):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
            else:
                old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), dir=dest.parent))
                os.replace(dest, old / "old")
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_path(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
