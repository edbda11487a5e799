"""fio as the reference for how fast a read list *can* be issued: export, run, compare.

Why: a replay measures the disk through our Python engines; if an engine were slow, every placement would look
I/O-bound for the wrong reason. fio (Axboe's Flexible I/O tester) replaying the *same* requests in the *same* order
at the *same* queue depth with O_DIRECT is the yardstick: docs/DESIGN.md §6 asks that a replay issue a read list at
>= 80 % of fio's speed on the same list.

- :func:`write_iolog`: fio's trace format v2 ("fio version 2 iolog"; fio(1), section TRACE FILE FORMAT): the file is
  added and opened, then one ``FILE read OFFSET LENGTH`` line per request, in issue order, then closed.
- :func:`run_fio`: ``fio --read_iolog=LOG --direct=1 --ioengine=psync`` (queue depth 1) or ``libaio`` with
  ``--iodepth=q``, JSON output; returns fio's own runtime of the job (ms resolution: use lists that take
  seconds) and its counts, and checks that fio issued exactly the requests of the log.
- :func:`compare_with_fio`: the same list through one of our engines and through fio, interleaved, page cache
  dropped before each run; ``runtime_over_fio`` = our time / fio's time (<= 1.25 meets the 80 % target).

One difference is inherent: a replay waits for all reads of a (token, layer) before the next layer's (the model
needs them), while an iolog has no barriers, so fio at q > 1 keeps q requests in flight across layer boundaries.
:func:`compare_with_fio` therefore reports both our *batched* time (as in a replay) and our *flat* time (the whole
list in one submit, the like-for-like comparison with fio); at queue depth 1 the two are the same thing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from runtime.direct import drop_page_cache
from runtime.engines import get_engine
from runtime.errors import FioError
from runtime.report import spread

IOLOG_HEADER = "fio version 2 iolog"


def fio_binary() -> str | None:
    """Path of the fio executable, or None when fio is not installed (``apt-get install fio``)."""
    return shutil.which("fio")


def flatten_reads(batches: Iterable[tuple[Sequence[int], Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (offsets, sizes) batches (as recorded by ``replay(read_log=...)``) into two int64 arrays."""
    offs: list[int] = []
    sizes: list[int] = []
    for o, s in batches:
        offs.extend(int(x) for x in o)
        sizes.extend(int(x) for x in s)
    return np.asarray(offs, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def write_iolog(path: str | os.PathLike[str], target: str | os.PathLike[str], offsets: Sequence[int] | np.ndarray,
                sizes: Sequence[int] | np.ndarray) -> Path:
    """Write the reads (in order) of file `target` as a fio iolog v2 at `path`.

    The target is written as an absolute path (fio requires it); offsets and sizes as decimal byte counts.
    """
    o = np.asarray(offsets, dtype=np.int64).reshape(-1)
    s = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if o.shape != s.shape:
        raise ValueError("offsets and sizes must have the same length")
    if (o < 0).any() or (s <= 0).any():
        raise ValueError("offsets must be >= 0 and sizes > 0")
    name = str(Path(target).resolve())
    if any(c.isspace() for c in name):
        raise FioError(f"fio iologs cannot name a file with white space: {name!r}")
    lines = [IOLOG_HEADER, f"{name} add", f"{name} open"]
    lines.extend(f"{name} read {a} {b}" for a, b in zip(o.tolist(), s.tolist()))
    lines.append(f"{name} close")
    p = Path(path)
    p.write_text("\n".join(lines) + "\n")
    return p


def read_iolog(path: str | os.PathLike[str]) -> tuple[str, np.ndarray, np.ndarray]:
    """Parse an iolog v2 written by :func:`write_iolog`: (target, offsets, sizes)."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].strip() != IOLOG_HEADER:
        raise FioError(f"{path}: not a fio v2 iolog (first line {lines[0] if lines else ''!r})")
    target = None
    offs: list[int] = []
    sizes: list[int] = []
    for ln in lines[1:]:
        parts = ln.split()
        if len(parts) == 2 and parts[1] in ("add", "open", "close"):
            target = target or parts[0]
        elif len(parts) == 4 and parts[1] == "read":
            offs.append(int(parts[2]))
            sizes.append(int(parts[3]))
        elif parts:
            raise FioError(f"{path}: unexpected iolog line {ln!r}")
    if target is None:
        raise FioError(f"{path}: iolog names no file")
    return target, np.asarray(offs, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def run_fio(iolog: str | os.PathLike[str], *, queue_depth: int = 1, ioengine: str | None = None,
            timeout: float = 600.0, expect_reads: int | None = None) -> dict[str, Any]:
    """Replay an iolog with fio, O_DIRECT, at `queue_depth`; returns fio's numbers.

    `ioengine` defaults to ``psync`` at depth 1 and ``libaio`` above (both with ``--direct=1``).
    Returns a dict: ``seconds`` (fio's job runtime), ``reads``, ``bytes``, ``iops``, ``bandwidth`` (bytes/s),
    ``lat_mean_us``, ``command``, ``wall_s`` (the whole fio process, start-up included).
    Raises :class:`runtime.errors.FioError` if fio is missing or fails, or if it issued a different number of reads
    than expected.
    """
    exe = fio_binary()
    if exe is None:
        raise FioError("fio is not installed (apt-get install -y fio)")
    q = int(queue_depth)
    if q < 1:
        raise FioError(f"queue_depth must be >= 1, got {q}")
    engine = ioengine or ("psync" if q == 1 else "libaio")
    cmd = [exe, "--name=coact-replay", f"--read_iolog={Path(iolog).resolve()}", f"--ioengine={engine}",
           f"--iodepth={q}", "--direct=1", "--replay_no_stall=1", "--output-format=json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout).split())[:400]
        raise FioError(f"fio failed (exit {proc.returncode}): {msg}")
    out = proc.stdout
    doc = json.loads(out[out.index("{"):])  # fio may print notes before the JSON
    job = doc["jobs"][0]
    rd = job["read"]
    reads = int(rd.get("total_ios", 0))
    if expect_reads is not None and reads != int(expect_reads):
        raise FioError(f"fio issued {reads} reads, the iolog holds {expect_reads}")
    seconds = float(rd.get("runtime", 0)) / 1e3
    return {
        "seconds": seconds,
        "reads": reads,
        "bytes": int(rd.get("io_bytes", 0)),
        "iops": float(rd.get("iops", 0.0)),
        "bandwidth": float(rd.get("bw_bytes", 0.0)),
        "lat_mean_us": float(rd.get("lat_ns", {}).get("mean", 0.0)) / 1e3,
        "ioengine": engine,
        "queue_depth": q,
        "command": " ".join(cmd),
        "wall_s": wall,
    }


def _time_engine(engine: str, path: str | os.PathLike[str], batches: list[tuple[list[int], list[int]]],
                 queue_depth: int, flat: bool) -> float:
    params = {} if engine == "sync" else {"queue_depth": int(queue_depth)}
    eng = get_engine(engine, path, **params)
    clock = time.perf_counter_ns
    try:
        if flat:
            offs = [o for b in batches for o in b[0]]
            sizes = [s for b in batches for s in b[1]]
            t0 = clock()
            eng.submit(offs, sizes)
            return (clock() - t0) / 1e9
        total = 0
        submit = eng.submit
        for o, s in batches:
            t0 = clock()
            submit(o, s)
            total += clock() - t0
        return total / 1e9
    finally:
        eng.close()


def compare_with_fio(
    path: str | os.PathLike[str],
    batches: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    engine: str = "sync",
    queue_depth: int = 1,
    repeats: int = 3,
    fio_engine: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Issue the same read list through our `engine` and through fio at the same queue depth, interleaved.

    Args:
        path: the file the reads are for (a pack file).
        batches: (offsets, sizes) per (token, layer), in issue order (``replay(..., read_log=batches)``).
        engine: ``sync`` (depth 1), ``threads`` or ``uring``; `queue_depth` applies to ours and fio's.
        repeats: each repeat runs ours (batched), ours (flat) and fio, page cache dropped before each.

    Returns a dict with per-repeat seconds and min/median/max of ``runtime_batched_s``, ``runtime_flat_s``,
    ``fio_s``, and the ratios ``runtime_over_fio`` (flat, like for like) and ``batched_over_fio`` (medians).
    """
    bl = [([int(x) for x in o], [int(x) for x in s]) for o, s in batches if len(s)]
    offs, sizes = flatten_reads(bl)
    if offs.size == 0:
        raise FioError("empty read list: the trace range issues no reads")
    runs: dict[str, list[float]] = {"runtime_batched_s": [], "runtime_flat_s": [], "fio_s": []}
    fio_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="coact-fio-", dir=workdir) as d:
        log = write_iolog(Path(d) / "replay.iolog", path, offs, sizes)
        for _ in range(int(repeats)):
            drop_page_cache(path)
            runs["runtime_batched_s"].append(_time_engine(engine, path, bl, queue_depth, flat=False))
            drop_page_cache(path)
            runs["runtime_flat_s"].append(_time_engine(engine, path, bl, queue_depth, flat=True))
            drop_page_cache(path)
            fio_info = run_fio(log, queue_depth=queue_depth, ioengine=fio_engine, expect_reads=int(offs.size))
            runs["fio_s"].append(fio_info["seconds"])

    med = {k: float(np.median(v)) for k, v in runs.items()}
    return {
        "engine": engine,
        "queue_depth": int(queue_depth),
        "fio_ioengine": fio_info.get("ioengine"),
        "reads": int(offs.size),
        "bytes": int(sizes.sum()),
        "batches": len(bl),
        "repeats": int(repeats),
        "runs": runs,
        **{k: spread(v) for k, v in runs.items()},
        "runtime_over_fio": med["runtime_flat_s"] / med["fio_s"] if med["fio_s"] > 0 else None,
        "batched_over_fio": med["runtime_batched_s"] / med["fio_s"] if med["fio_s"] > 0 else None,
        "fio_command": fio_info.get("command"),
    }
