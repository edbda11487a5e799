"""Atomic writes of files and folders: the one helper every artefact writer uses (layouts, packs, exports, cost
models, statistics, the model cache).

Why: an artefact that is half written (crash, Ctrl-C, full disk) must never be mistaken for a good one, and the
previous good artefact must survive until the new one is complete. Writers therefore fill a temporary file or
folder in the *same directory* (so the final rename cannot cross a file system), flush it to disk, and only then
move it onto the destination: ``os.replace`` for files, and for folders the Linux ``renameat2(RENAME_EXCHANGE)``
swap, so there is no moment where neither the old nor the new folder exists (a plain two-rename fallback is used
where the swap is unsupported). Temporaries carry the marker ``.coact-tmp-`` in their names so that stale ones left
by a killed run are recognisably ours.

Stale temporaries: a run killed with SIGKILL (or a power cut) cannot clean up. Every temporary is named
``.{dest}.coact-tmp-{pid}-{random}`` (the writing process's pid), and every later write into the same directory
first removes the temporaries of our naming whose owning process is dead (:func:`clean_stale`). A temporary whose
pid is alive (a concurrent writer, or an unrelated process that reused the pid) is left alone.

Output paths (:func:`check_output`): a writer may replace only an artefact of its own kind (recognised by its
metadata); an unrelated file or folder, or a symbolic link (dangling or not), is refused with
:class:`common.errors.OutputExistsError` *before* any work starts.

Permissions follow the user's umask, like any other tool's output (``mkstemp``/``mkdtemp`` create 0600/0700).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from common.errors import OutputExistsError

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
    return f".{dest.name}{TMP_MARK}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of our naming in ``folder`` whose owning process is dead (left by a killed run)."""
    out = []
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        _, mark, rest = name.partition(TMP_MARK)
        if not mark or not name.startswith("."):
            continue
        pid_text = rest.split("-", 1)[0]
        if not pid_text.isdigit():
            continue  # an old-style name without a pid: we cannot tell whether its writer still runs
        if not _pid_alive(int(pid_text)):
            out.append(Path(folder) / name)
    return out


def clean_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the stale temporaries of :func:`stale_temporaries`; return what was removed (best effort)."""
    removed = []
    for p in stale_temporaries(folder):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def check_output(
    path: str | os.PathLike[str],
    *,
    kind: str,
    is_kind: Callable[[Path], bool],
    folder: bool = False,
    inputs: tuple[str | os.PathLike[str], ...] = (),
) -> Path:
    """Check that ``path`` may be written by a writer of artefacts of ``kind``; return it as a Path.

    Allowed: a missing path (its parent may be missing too), an existing artefact of the same kind
    (``is_kind(path)`` true, e.g. a stats folder with ``meta.json`` saying ``coact-stats``), and for folder
    artefacts an empty folder. Refused with :class:`OutputExistsError` (one line): a symbolic link (dangling or
    not: the write would land somewhere else than where the user looks), anything else that exists, and any of
    ``inputs`` (the files the run reads, e.g. the trace being counted) or a folder containing one of them.
    """
    p = Path(path)
    if p.is_symlink():
        state = "dangling " if not p.exists() else ""
        raise OutputExistsError(f"{p} is a {state}symbolic link; give the real output path")
    for src in inputs:
        try:
            s, o = Path(src).resolve(), p.resolve()
        except OSError:
            continue
        if s == o or o in s.parents:
            raise OutputExistsError(f"{p} is (or contains) an input of this run ({src}); choose another output")
    if not os.path.lexists(p):
        return p
    try:
        st = os.stat(p)
    except OSError as e:
        raise OutputExistsError(f"{p} cannot be inspected ({e.strerror}); choose another output") from None
    if folder and stat.S_ISDIR(st.st_mode):
        try:
            empty = not any(True for _ in os.scandir(p))
        except OSError:
            empty = False
        if empty or is_kind(p):
            return p
        raise OutputExistsError(f"{p} exists and is not a coact {kind} (refusing to replace it); remove it or "
                                "choose another output")
    if not folder and stat.S_ISREG(st.st_mode) and is_kind(p):
        return p
    what = "a folder" if stat.S_ISDIR(st.st_mode) else "a file" if stat.S_ISREG(st.st_mode) else "not a regular file"
    raise OutputExistsError(f"{p} exists ({what}) and is not a coact {kind} (refusing to replace it); remove it "
                            "or choose another output")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on normal exit fsync it and move it onto ``path``.

    On an exception the temporary file is removed and the destination is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest.parent)
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
    clean_stale(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), dir=dest.parent))
    try:
        yield tmp
        _fix_modes(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_path(f)
        fsync_path(tmp)
        _install_dir(tmp, dest)
        fsync_path(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install_dir(tmp: Path, dest: Path) -> None:
    """Put folder ``tmp`` in place of ``dest``: a rename when ``dest`` is missing, else an atomic exchange.

    Concurrent writers race safely: if ``dest`` appears between the check and the rename (another writer won),
    the rename fails with ENOTEMPTY/EEXIST and the exchange path is taken; the last writer's folder wins whole.
    """
    for _ in range(100):
        if os.path.lexists(dest):
            if not dest.is_dir() or dest.is_symlink():
                raise FileExistsError(f"{dest} exists and is not a folder")
            try:
                swapped = _exchange(tmp, dest)
            except FileNotFoundError:  # dest vanished meanwhile (another writer's two-rename fallback)
                continue
            if swapped:
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
                return
            # No exchange on this file system: two renames (a short moment without ``dest``).
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), dir=dest.parent))
            try:
                os.replace(dest, old / "old")
            except FileNotFoundError:
                shutil.rmtree(old, ignore_errors=True)
                continue
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(tmp, dest)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise OSError(errno.EBUSY, "too many concurrent writers", str(dest))  # pragma: no cover
