"""Device model: what one read of a given size costs on *this* disk, at a given queue depth.

Why: whether two runs should be merged into one read (access collapse), how a placement's reads turn into
milliseconds without touching the disk (the simulator), and what the physical limit of a pipeline is (bytes that
must be loaded at the disk's peak sequential bandwidth) all depend on the device, not on the placement. "LLM in a
flash" (Alizadeh et al., 2024, §3.1 and Fig. 2) measures random-read throughput against read size and thread count
and shows both matter by an order of magnitude on flash; Ripple (Wang et al., 2024) and Neuralink (Wang et al.,
2025) motivate access collapse with the same per-request overhead (IOPS bound). This module measures that grid here
and fits a small model to it.

- :func:`profile_device`: O_DIRECT random reads (4 KiB aligned offsets, uniformly spread over a file of random
  data, page cache dropped with ``posix_fadvise(DONTNEED)`` first) of sizes 4 KiB ... 1 MiB at queue depths
  1 ... 32; the queue depth is realised with that many threads each issuing blocking ``os.preadv`` (which releases
  the GIL), exactly like the ``threads`` engine. Per cell: reads, bytes, wall time, throughput, latency
  mean/p50/p99. Plus the peak *sequential* bandwidth (large contiguous reads at a few queue depths).
- :func:`fit_cost_model`: per queue depth q, a least-squares line ``t = a_q + b_q * bytes`` through the cells'
  amortised time per request (wall time / reads at that depth), fitted on *relative* error (every size counts the
  same, from 4 KiB to 1 MiB) with a_q, b_q >= 0 (non-negative least squares), refitted once without the cells
  more than 50 % off the first line (stalls of a shared disk). Also the single-request latency line per depth,
  for information.
- :class:`CostModel`: ``read_time(bytes, qd)``, ``batch_time(reads, bytes, qd)``, ``collapse_gap(bundle_bytes, qd)``
  and ``physical_limit_s(bytes)``; saved and loaded as JSON.
- :func:`plot_profile`: throughput vs read size, one line per queue depth (the shape of "LLM in a flash" Fig. 2),
  with the sequential peak as a reference line.

The random data matters: a sparse (hole) or all-zero file could be served without reading the medium.
"""
from __future__ import annotations

import json
import mmap
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy.optimize import nnls

from common.atomic import atomic_path, check_output
from common.progress import ProgressFn, notify
from runtime.direct import ALIGN, DirectFile, drop_page_cache, filesystem_type, has_o_direct
from runtime.errors import DeviceError

KiB = 1024
MiB = 1024 * KiB
DEFAULT_SIZES: tuple[int, ...] = tuple(4 * KiB << i for i in range(9))  # 4 KiB ... 1 MiB
DEFAULT_QDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
QUICK_SIZES: tuple[int, ...] = (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB)
QUICK_QDS: tuple[int, ...] = (1, 4, 16)
PROFILE_FILE = "coact-device-profile.bin"
FORMAT_NAME = "coact-cost-model"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------- the test file


def ensure_test_file(path: str | os.PathLike[str], file_bytes: int, *, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> Path:
    """`path` as a file of at least `file_bytes` random bytes (created or extended; a directory gets
    ``coact-device-profile.bin`` inside). Written with buffered I/O, fsynced, then dropped from the page cache."""
    p = Path(path)
    if p.is_dir():
        p = p / PROFILE_FILE
    need = -(-int(file_bytes) // ALIGN) * ALIGN
    have = p.stat().st_size if p.exists() else 0
    if have < need:
        if log:
            log(f"writing {need / MiB:.0f} MiB of random data to {p}")
        rng = np.random.default_rng(seed)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "r+b" if p.exists() else "wb") as f:
            f.seek(have - have % ALIGN)
            left = need - (have - have % ALIGN)
            while left > 0:
                chunk = min(left, 8 * MiB)
                f.write(rng.bytes(chunk))
                left -= chunk
            f.flush()
            os.fsync(f.fileno())
    drop_page_cache(p)
    return p


# ------------------------------------------------------------------------------------------------------ measuring


@dataclass
class Cell:
    """One (read size, queue depth) measurement. Times in seconds, throughput in bytes/s."""

    size: int
    queue_depth: int
    reads: int
    bytes: int
    wall_s: float
    throughput: float
    iops: float
    per_request_s: float  # amortised: wall / reads
    latency_mean_s: float
    latency_p50_s: float
    latency_p99_s: float


def _measure(fd: int, offsets: np.ndarray, size: int, qd: int, deadline_s: float) -> tuple[int, float, np.ndarray]:
    """Issue reads of `size` at `offsets` with `qd` threads until all are done or `deadline_s` passed.

    Returns (reads done, wall seconds, latencies in seconds of the reads done).
    """
    n = int(offsets.size)
    lat = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    offs = offsets.tolist()
    claim = iter(range(n))
    errors: list[BaseException] = []
    clock = time.perf_counter_ns
    stop_at = [0]

    def work() -> None:
        buf = memoryview(mmap.mmap(-1, max(ALIGN, size)))[:size]
        preadv = os.preadv
        try:
            for j in claim:
                t0 = clock()
                if t0 > stop_at[0]:
                    return
                got = preadv(fd, [buf], offs[j])
                lat[j] = clock() - t0
                done[j] = True
                if got != size:
                    raise OSError(f"short read of {got} bytes at offset {offs[j]}")
        except BaseException as e:  # re-raised below in the caller
            errors.append(e)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(qd - 1)]
    start = clock()
    stop_at[0] = start + int(deadline_s * 1e9)
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    wall = (clock() - start) / 1e9
    if errors:
        raise errors[0]
    return int(done.sum()), wall, lat[done] / 1e9


def _cell(fd: int, file_bytes: int, size: int, qd: int, reads: int, seconds: float,
          rng: np.random.Generator) -> Cell:
    slots = max(1, (file_bytes - size) // ALIGN)
    offsets = rng.integers(0, slots, size=reads, dtype=np.int64) * ALIGN
    count, wall, lat = _measure(fd, offsets, size, qd, seconds)
    count = max(count, 1)
    return Cell(
        size=int(size), queue_depth=int(qd), reads=count, bytes=count * int(size), wall_s=wall,
        throughput=count * size / wall, iops=count / wall, per_request_s=wall / count,
        latency_mean_s=float(lat.mean()) if lat.size else wall,
        latency_p50_s=float(np.percentile(lat, 50)) if lat.size else wall,
        latency_p99_s=float(np.percentile(lat, 99)) if lat.size else wall,
    )


def _sequential(fd: int, file_bytes: int, *, chunk: int, qd: int, total: int) -> float:
    """Bytes/s of contiguous `chunk`-sized reads over the first `total` bytes with `qd` threads."""
    n = max(1, min(total, file_bytes) // chunk)
    offsets = np.arange(n, dtype=np.int64) * chunk
    count, wall, _ = _measure(fd, offsets, chunk, qd, 60.0)
    return count * chunk / wall


@dataclass
class DeviceProfile:
    """The measured grid plus the sequential peak and where it was measured."""

    cells: list[Cell]
    seq_bandwidth: float
    seq_cells: list[dict[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cells": [asdict(c) for c in self.cells], "seq_bandwidth": self.seq_bandwidth,
                "seq_cells": self.seq_cells, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeviceProfile":
        return cls([Cell(**c) for c in d["cells"]], float(d["seq_bandwidth"]), list(d.get("seq_cells", [])),
                   dict(d.get("meta", {})))


def profile_device(
    path: str | os.PathLike[str],
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    queue_depths: Sequence[int] = DEFAULT_QDS,
    reads_per_cell: int = 4096,
    seconds_per_cell: float = 0.25,
    file_bytes: int = 1 << 30,
    seq_chunk: int = 4 * MiB,
    seq_bytes: int = 256 * MiB,
    seed: int = 0,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Measure O_DIRECT random-read latency and throughput for every (size, queue depth) on the file at `path`.

    Args:
        path: a file (created with random data when missing or smaller than `file_bytes`) or a directory (the file
            ``coact-device-profile.bin`` inside it). Use a path on the disk you will replay from.
        sizes: read sizes in bytes (multiples of 4096); default 4 KiB ... 1 MiB in powers of two.
        queue_depths: outstanding requests (threads) per cell.
        reads_per_cell / seconds_per_cell: a cell stops after that many reads or that much time, whichever first.
        file_bytes: size of the test file; larger than any cache in front of the device is best (the host of a VM
            may cache the virtual disk: a profile can only see what the guest sees).
        seq_chunk / seq_bytes: request size and span of the sequential-bandwidth measurement (at queue depths 1, 4
            and the largest of `queue_depths`, two passes over the same span each; the peak is kept: on a virtual
            disk the second pass may come from the host's cache, which is also what replays of a pack see).
        progress: called as ``progress("device profile", cells_done, cells_total)`` (None: silent).
    """
    for s in sizes:
        if int(s) <= 0 or int(s) % ALIGN:
            raise DeviceError(f"read sizes must be positive multiples of {ALIGN}, got {s}")
    if any(int(q) < 1 for q in queue_depths):
        raise DeviceError("queue depths must be >= 1")
    if int(file_bytes) < max(int(s) for s in sizes) + ALIGN:
        raise DeviceError("file_bytes must exceed the largest read size")
    p = ensure_test_file(path, file_bytes, seed=seed, log=log)
    fsize = p.stat().st_size
    rng = np.random.default_rng(seed)
    cells: list[Cell] = []
    seq_depths = sorted({1, 4, max(int(x) for x in queue_depths)})
    total = len(sizes) * len(queue_depths) + len(seq_depths)
    done = 0

    def advance() -> None:
        nonlocal done
        notify(progress, "device profile", done, total)
        done += 1

    with DirectFile(p) as f:
        fd = f.fileno()
        if not has_o_direct(fd):  # pragma: no cover - DirectFile always opens with O_DIRECT
            raise RuntimeError("profile file was not opened with O_DIRECT")
        advance()
        drop_page_cache(p)
        for q in queue_depths:
            for s in sizes:
                cells.append(_cell(fd, fsize, int(s), int(q), int(reads_per_cell), float(seconds_per_cell), rng))
                advance()
        seq_cells = []
        chunk = min(int(seq_chunk), fsize // 2 // ALIGN * ALIGN) or ALIGN
        for q in seq_depths:
            drop_page_cache(p)
            # two passes over the same span, the best kept: the peak the guest can see (a virtual disk may be
            # cached by its host, and a replay re-reads the same pack file token after token)
            passes = [_sequential(fd, fsize, chunk=chunk, qd=q, total=int(seq_bytes)) for _ in range(2)]
            seq_cells.append({"queue_depth": q, "chunk": chunk, "throughput": max(passes), "passes": passes})
            advance()
    meta = {
        "path": str(p), "file_bytes": fsize, "fs": filesystem_type(p), "o_direct": True,
        "sizes": [int(s) for s in sizes], "queue_depths": [int(q) for q in queue_depths],
        "reads_per_cell": int(reads_per_cell), "seconds_per_cell": float(seconds_per_cell),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "engine": "threads (blocking preadv per thread)",
    }
    return DeviceProfile(cells, max(c["throughput"] for c in seq_cells), seq_cells, meta)


# ---------------------------------------------------------------------------------------------------- cost model


def _fit_line(x: np.ndarray, t: np.ndarray, *, outlier: float = 0.5) -> tuple[float, float]:
    """(a, b) >= 0 minimising sum(((a + b x - t) / t)^2) (relative error, non-negative least squares).

    Robust to a few disturbed cells (a shared or throttled virtual disk stalls now and then): after a first fit,
    cells whose time is more than `outlier` (50 %) off the line are dropped and the line is refitted, as long as two
    distinct sizes remain.
    """
    def solve(xx: np.ndarray, tt: np.ndarray) -> tuple[float, float]:
        w = 1.0 / np.maximum(tt, 1e-12)
        sol, _ = nnls(np.column_stack([w, w * xx]), np.ones_like(tt))
        return float(sol[0]), float(sol[1])

    a, b = solve(x, t)
    rel = np.abs(a + b * x - t) / np.maximum(t, 1e-12)
    keep = rel <= outlier
    if 0 < keep.sum() < x.size and np.unique(x[keep]).size >= 2:
        a, b = solve(x[keep], t[keep])
    return a, b


@dataclass
class CostModel:
    """Per queue depth q: a request costs ``a_q + b_q * bytes`` seconds (amortised, requests issued q at a time).

    Attributes:
        queue_depths: the profiled depths, increasing.
        per_request_s: a_q, the fixed cost of one request (what access collapse saves).
        per_byte_s: b_q, the cost of one more byte (what access collapse pays for the gap).
        latency_a_s / latency_b_s: the same line fitted to the mean latency of one request at depth q.
        seq_bandwidth: peak sequential read bandwidth in bytes/s (for the physical limit).
        meta: where and how it was measured.
    """

    queue_depths: list[int]
    per_request_s: list[float]
    per_byte_s: list[float]
    latency_a_s: list[float]
    latency_b_s: list[float]
    seq_bandwidth: float
    meta: dict[str, Any] = field(default_factory=dict)

    def _index(self, qd: int) -> int:
        """The largest profiled depth <= qd (the smallest one if qd is below all)."""
        qs = self.queue_depths
        i = int(np.searchsorted(qs, int(qd), side="right")) - 1
        return max(0, min(i, len(qs) - 1))

    def coefficients(self, qd: int = 1) -> tuple[float, float]:
        """(a, b) of the profiled depth used for `qd`."""
        i = self._index(qd)
        return self.per_request_s[i], self.per_byte_s[i]

    def read_time(self, nbytes: float, qd: int = 1) -> float:
        """Seconds one request of `nbytes` costs when requests are issued `qd` at a time (amortised)."""
        a, b = self.coefficients(qd)
        return a + b * float(nbytes)

    def batch_time(self, reads: np.ndarray | int, nbytes: np.ndarray | float, qd: int = 1) -> np.ndarray | float:
        """Seconds for `reads` requests totalling `nbytes` issued with at most `qd` in flight (vectorised).

        A batch of r requests uses depth min(r, qd): ``r * a_min(r,qd) + b_min(r,qd) * nbytes``; zero reads cost 0.
        """
        r = np.asarray(reads, dtype=np.int64)
        by = np.asarray(nbytes, dtype=np.float64)
        qmax = max(1, int(qd))
        table_a = np.array([self.coefficients(max(1, q))[0] for q in range(qmax + 1)])
        table_b = np.array([self.coefficients(max(1, q))[1] for q in range(qmax + 1)])
        q = np.minimum(r, qmax)
        out = np.where(r > 0, r * table_a[q] + table_b[q] * by, 0.0)
        return out if out.ndim else float(out)

    def collapse_gap(self, bundle_bytes: int, qd: int = 1, *, max_gap: int = 1 << 16) -> int:
        """The largest gap g (in bundles) such that reading g extra bundles is no dearer than one more request.

        Merging two runs separated by g unrequested bundles saves one request (a_q) and reads g * bundle_bytes more
        (b_q per byte), so it pays while ``g * bundle_bytes * b_q <= a_q``: g = floor(a_q / (b_q * bundle_bytes)).
        Capped at `max_gap` (a device with no measurable per-byte cost would otherwise merge everything).
        """
        if int(bundle_bytes) <= 0:
            raise ValueError("bundle_bytes must be positive")
        a, b = self.coefficients(qd)
        if b <= 0:
            return int(max_gap)
        return int(min(max_gap, max(0, np.floor(a / (b * int(bundle_bytes)) + 1e-9))))

    def physical_limit_s(self, nbytes: float) -> float:
        """Seconds to read `nbytes` at the disk's peak sequential bandwidth (no request overhead at all)."""
        return float(nbytes) / self.seq_bandwidth if self.seq_bandwidth > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description for report configurations."""
        a1, b1 = self.coefficients(1)
        return {"queue_depths": self.queue_depths, "a_qd1_us": a1 * 1e6, "b_qd1_ns_per_KiB": b1 * 1e9 * 1024,
                "seq_bandwidth_MBps": self.seq_bandwidth / 1e6, "path": self.meta.get("path")}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise DeviceError(f"not a coact cost model (format {d.get('format') if isinstance(d, dict) else None!r})")
        if int(d.get("version", -1)) != FORMAT_VERSION:
            raise DeviceError(f"unsupported cost model version {d.get('version')!r}")
        qs = [int(q) for q in d["queue_depths"]]
        lists = ("per_request_s", "per_byte_s", "latency_a_s", "latency_b_s")
        if not qs or qs != sorted(set(qs)) or any(len(d[k]) != len(qs) for k in lists):
            raise DeviceError("cost model: queue_depths must be increasing and every list must match them")
        return cls(qs, *[[float(x) for x in d[k]] for k in lists], float(d["seq_bandwidth"]), dict(d.get("meta", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as JSON (atomically); an existing file is replaced only if it is a cost model."""
        check_output(path, kind="cost model", is_kind=is_cost_model_file)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CostModel":  # noqa: D102 - documented below
        """Read a model written by :meth:`save` (raises :class:`DeviceError` naming the file on a bad or missing
        file)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, ValueError) as e:  # DeviceError is a ValueError: the file name is added
            raise DeviceError(f"{path}: {' '.join(str(e).split())}") from None
        except OSError as e:
            raise DeviceError(f"{path}: cannot read cost model ({e.strerror or e})") from None

    @classmethod
    def synthetic(cls, *, per_request_s: float = 100e-6, per_byte_s: float = 1 / 1e9,
                  queue_depths: Iterable[int] = (1,), seq_bandwidth: float = 2e9) -> "CostModel":
        """A model with given coefficients at every depth (for tests and back-of-the-envelope use)."""
        qs = sorted({int(q) for q in queue_depths})
        k = len(qs)
        return cls(qs, [per_request_s] * k, [per_byte_s] * k, [per_request_s] * k, [per_byte_s] * k,
                   float(seq_bandwidth), {"synthetic": True})


def fit_cost_model(cells: Sequence[Cell | dict[str, Any]], seq_bandwidth: float | None = None,
                   meta: dict[str, Any] | None = None) -> CostModel:
    """Fit ``t = a_q + b_q * bytes`` per queue depth (see :class:`CostModel`).

    `cells` are :class:`Cell` objects or dicts with at least size, queue_depth, per_request_s and latency_mean_s.
    Each depth needs two distinct sizes. `seq_bandwidth` defaults to the best throughput among the cells.
    """
    rows = [asdict(c) if isinstance(c, Cell) else dict(c) for c in cells]
    if not rows:
        raise DeviceError("no cells to fit")
    by_q: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_q.setdefault(int(r["queue_depth"]), []).append(r)
    qs = sorted(by_q)
    a, b, la, lb = [], [], [], []
    for q in qs:
        rs = by_q[q]
        x = np.array([float(r["size"]) for r in rs])
        if np.unique(x).size < 2:
            raise DeviceError(f"queue depth {q}: need at least two distinct read sizes to fit a + b * bytes")
        ai, bi = _fit_line(x, np.array([float(r["per_request_s"]) for r in rs]))
        li, lj = _fit_line(x, np.array([float(r.get("latency_mean_s", r["per_request_s"])) for r in rs]))
        a.append(ai)
        b.append(bi)
        la.append(li)
        lb.append(lj)
    if seq_bandwidth is None:
        seq_bandwidth = max(float(r.get("throughput", r["size"] / r["per_request_s"])) for r in rows)
    return CostModel(qs, a, b, la, lb, float(seq_bandwidth), dict(meta or {}))


def cost_model_from_profile(profile: DeviceProfile) -> CostModel:
    """:func:`fit_cost_model` on a :class:`DeviceProfile`, keeping its sequential peak and metadata."""
    meta = {**profile.meta, "seq_cells": profile.seq_cells,
            "cells": [asdict(c) for c in profile.cells]}
    return fit_cost_model(profile.cells, max(profile.seq_bandwidth, max(c.throughput for c in profile.cells)), meta)


# ---------------------------------------------------------------------------------------------------------- plot


def plot_profile(profile: DeviceProfile | CostModel, path: str | os.PathLike[str]) -> Path:
    """Throughput (MB/s) vs read size, one line per queue depth, log2 x axis ("LLM in a flash" Fig. 2 style);
    the dashed line is the peak sequential bandwidth. Accepts a profile or a cost model that kept its cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(profile, CostModel):
        cells = [Cell(**c) for c in profile.meta.get("cells", [])]
        seq = profile.seq_bandwidth
        if not cells:
            raise DeviceError("this cost model does not carry its measured cells; plot the profile instead")
    else:
        cells, seq = profile.cells, profile.seq_bandwidth
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for q in sorted({c.queue_depth for c in cells}):
        cs = sorted((c for c in cells if c.queue_depth == q), key=lambda c: c.size)
        ax.plot([c.size / KiB for c in cs], [c.throughput / 1e6 for c in cs], marker="o", label=f"qd {q}")
    ax.axhline(seq / 1e6, color="k", ls="--", lw=1, label="sequential peak")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("read size (KiB)")
    ax.set_ylabel("random-read throughput (MB/s)")
    ax.set_title("O_DIRECT random reads vs size and queue depth")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def is_cost_model_file(path: Path) -> bool:
    """Whether ``path`` is a cost-model JSON written by :meth:`CostModel.save` (small, with our format name)."""
    try:
        if not path.is_file() or path.stat().st_size > (1 << 20):
            return False
        return json.loads(path.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False
