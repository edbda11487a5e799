"""Streaming FFN bundles from a pack file during inference: the flash side of "run the model from flash".

Why a module of its own: the replay (:mod:`runtime.replay`) issues the reads of a *recorded* trace and discards the
bytes; an inference engine needs the bytes of the neurons the model asks for *now*, one (token, layer) at a time,
decoded into weights, with a DRAM cache that really holds bundle data and reads that can start before the exact
set is known. :class:`FlashFFNReader` is that, with no torch dependency (numpy in, numpy out), so any inference
engine can use it; :mod:`coact.online` wires it into a transformers model.

Per (token, layer), :meth:`FlashFFNReader.fetch` does (docs/DESIGN.md §2):

1. ``S = cache.filter(layer, A)``: the load set (hits are served from the cache's DRAM slots);
2. waits for the layer's prefetch, if one is in flight (:meth:`prefetch`), and takes from it the bundles of S it
   read; the rest of S (the *misses* of the prediction) is read now: positions through the pack's layout inverse
   -> runs -> access collapse (:func:`runtime.planner.plan_reads`) -> 4 KiB aligned byte ranges
   (:func:`runtime.planner.byte_ranges`) -> one ``engine.submit`` with O_DIRECT (:mod:`runtime.engines`);
3. ``cache.admit(layer, S, run_lengths)``; the admitted bundles are copied into the cache's slot pool;
4. returns the bundles of exactly the requested neurons: :meth:`FlashFFNReader.fetch_raw` in the pack's dtype
   (what :mod:`coact.online` uses: it widens them with one vectorised torch cast), :meth:`FlashFFNReader.fetch`
   as float32 ``[k, parts, d_model]`` (fp16 packs are widened exactly); gap bundles read by collapse and alignment
   are discarded.

**Memory.** The cache's data live in one slot pool of ``capacity = budget_bytes // bundle_bytes`` bundles in the
pack dtype (the DRAM budget, exactly), plus two layer-sized read buffers: a layer in flight owns one from its
first prefetch until its fetch returns (its prefetches and misses land in it), so at most two layers are in flight
(the one being fetched and a look-ahead of the next). Each read buffer mirrors a layer's region in the pack (byte ``b`` of the region at byte ``b`` of the
buffer), so a read lands where its bundles belong and decoding is a row gather, ``region[positions]``.

**Slots follow the cache.** The cache protocol only says *which* bundles are resident (``filter``, ``resident``);
the reader keeps a ``[layer, neuron] -> slot`` table. A slot is taken when a loaded bundle becomes resident and is
given back lazily: when the free list runs out, one sweep over ``cache.resident(l)`` of every layer frees the slots
of bundles the policy evicted (the pool is one budget for all layers, so evictions may hit any layer). Policies
that are resident from the start (``pinned``) are read once at construction (:attr:`warmup`).

**Prefetch.** ``prefetch(layer, predicted)`` hands the predicted neurons that the cache does not hold to a worker
thread that reads them (same planning, its own buffer) while the caller computes (attention). The next
``fetch(layer, ...)`` waits for it; the time it waited is *I/O wait*, the rest of the prefetch's read time was
*hidden* behind compute. Prefetched bundles that are not in the true load set are discarded (counted as wasted
bytes); the cache only ever sees the true load set, so prefetch never changes the cache's state nor the result.

**Look-ahead.** Prefetches of two layers may be in flight: the model asks for layer l+1's predicted bundles
before it fetches layer l (:mod:`coact.online`, ``lookahead``). The worker runs prefetches in issue order, in
submits of ``prefetch_chunk`` requests; while the caller waits for layer l (its prefetch, then its misses) the
worker starts no read of another layer, so a look-ahead delays the reads needed now by at most one chunk.
``fetch(l)`` keeps a prefetch of the layer after l in flight and gives up any other. In dense mode,
:attr:`FlashFFNReader.lookahead` puts the next layer's whole region in flight behind the current one's (after the
last layer: the first, for the next token).

**Asynchronous engines** (``uring``: ``start``/``finish``/``ready``): the prefetch is put in flight and the call
returns, with no worker thread (no GIL hand-offs with the model's thread); at :meth:`FlashFFNReader.fetch` the
miss reads go in flight *together with* the rest of the prefetch, and the hits are copied from the pool while both
are in flight. Its I/O time is measured from issue to the first observed completion (:meth:`poll` at the end of
attention, else the wait), an upper bound when the reads completed before anyone looked. Measured on this
machine's virtual disk (2 shared cores), it was *not* faster than ``threads:16``: io_uring issues the O_DIRECT
reads inside the submitting thread's system call, so the block-layer work of ~4,000 small reads per token lands
on the model's thread instead of on I/O threads (bench/results/online_targets.md).

**Read log.** ``read_log = []`` records every batch issued (``[offsets, sizes, ns]``, in issue order): the exact
request lists, to replay them with fio (:func:`runtime.fio.compare_with_fio`, bench/bench_online.py ``--fio``).

**Dense mode** (``dense=True``, the ``dense`` baseline of docs/DESIGN.md §5): every fetch reads the layer's whole
region in 1 MiB requests (no cache, no prefetch) and decodes the requested neurons from it.
"""
from __future__ import annotations

import mmap
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from runtime._closing import Closing
from runtime.caches import Cache, NoCache
from runtime.direct import drop_page_cache, has_o_direct
from runtime.engines import Engine, engine_queue_depth, get_engine
from runtime.errors import FlashError, PlanError
from runtime.pack import PackFile
from runtime.planner import ALIGN, byte_ranges, dense_plan, load_run_lengths, plan_reads

_I64 = np.int64


class StreamError(FlashError, ValueError):
    """Bad input to the streaming reader (neuron ids out of range, a closed reader)."""


@dataclass
class TokenIO:
    """What the flash side did for one token (all layers). Times in nanoseconds.

    - ``active``: bundles requested (Σ|A|); ``hits``: served by the DRAM cache; ``loaded``: Σ|S| (read from flash,
      by the prefetch or after it);
    - ``reads``/``bytes_read``: I/O requests issued and bytes transferred (prefetch included, 4 KiB aligned,
      collapse gaps included); ``bytes_requested`` = loaded x bundle_bytes;
    - ``io_ns``: wall time of every submit (prefetch and misses); ``wait_ns``: time the caller was blocked on I/O
      (miss reads plus waiting for the prefetch); ``hidden_ns`` = prefetch read time the caller did not wait for;
    - ``predicted``: bundles the prefetch read (predicted and not cached); ``prefetch_used``: those in the load set
      (precision = used / predicted, recall = used / loaded); ``wasted_bytes``: bytes of unused prefetched bundles;
    - ``covered``: loaded bundles that needed no read of their own: a prefetch of the layer read their bytes anyway
      (4 KiB alignment, collapse gaps) into the layer's region buffer.
    """

    active: int = 0
    hits: int = 0
    loaded: int = 0
    reads: int = 0
    bytes_read: int = 0
    bytes_requested: int = 0
    io_ns: int = 0
    wait_ns: int = 0
    hidden_ns: int = 0
    predicted: int = 0
    prefetch_used: int = 0
    wasted_bytes: int = 0
    covered: int = 0

    def add(self, other: "TokenIO") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Prefetch:
    """One prefetch in flight: the layer, the positions it reads (sorted) and, when done, its timings."""

    __slots__ = ("layer", "neurons", "positions", "reads", "bytes_read", "io_ns", "error", "done", "ticket",
                 "t_start", "t_done", "log", "buf", "cancelled", "plan", "next")

    def __init__(self, layer: int, neurons: np.ndarray, positions: np.ndarray):
        self.layer = layer
        self.neurons = neurons
        self.positions = positions
        self.reads = 0
        self.bytes_read = 0
        self.io_ns = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.ticket: Any = None  # asynchronous engines: the batch in flight (no worker thread)
        self.t_start = 0
        self.t_done = 0  # when its completion was first observed (asynchronous engines)
        self.log: list | None = None
        self.buf = 0  # index of the region buffer it reads into (its layer's)
        self.cancelled = False  # given up: the worker skips its remaining chunks
        self.plan: tuple[list, list, list] | None = None  # (offsets, sizes, destinations), planned by the worker
        self.next = 0  # index of the first request not yet submitted


class _RegionBuffer:
    """A page-aligned buffer that mirrors one layer region of the pack (grown to the largest region)."""

    def __init__(self, nbytes: int):
        self._mm = mmap.mmap(-1, max(-(-int(nbytes) // ALIGN) * ALIGN, ALIGN))  # page aligned, exact size
        self.view = memoryview(self._mm)

    def region(self, n: int, parts: int, d: int, dtype: np.dtype) -> np.ndarray:
        """The buffer as bundles [n, parts, d] (bundle p of the region at row p)."""
        return np.frombuffer(self.view, dtype=dtype, count=n * parts * d).reshape(n, parts, d)


class FlashFFNReader(Closing):
    """Reads the FFN bundles a model asks for from a pack file, through a DRAM cache, with O_DIRECT.

    Args:
        pack_path: a pack file (:mod:`runtime.pack`).
        cache: a fresh :class:`runtime.caches.Cache` over this pack's bundle size (None: no cache). Its budget is
            the DRAM the reader uses for cached bundles.
        engine: engine spec (``"threads:16"``, ``"sync"``, ``"uring:32"``); the reader owns the engine.
        collapse_gap: access-collapse threshold in bundles (0: off).
        dense: read whole layer regions (the ``dense`` baseline); takes no cache and no prefetch.
        drop_cache: drop the pack's pages from the page cache first (so no read is served from DRAM by the kernel).
        engine_params: extra engine parameters.

    Use per token: :meth:`begin_token`, then per layer optionally :meth:`prefetch` and always :meth:`fetch`;
    :attr:`tokens` holds one :class:`TokenIO` per token.
    """

    #: Dense mode: > 0 reads the next layer's whole region (after the last layer: the first one, for the next
    #: token) in the background while the caller computes with this one (look-ahead; off by default).
    lookahead: int = 0
    #: Requests per submit of a prefetch (threaded engines; 0: a whole prefetch at once). Smaller chunks let the
    #: reads the caller waits for overtake a look-ahead sooner, at one queue drain per chunk.
    prefetch_chunk: int = 0

    def __init__(self, pack_path: str | os.PathLike[str], *, cache: Cache | None = None, engine: str = "threads:16",
                 collapse_gap: int = 0, dense: bool = False, drop_cache: bool = True,
                 engine_params: dict[str, Any] | None = None):
        self.path = Path(pack_path)
        self._engine: Engine | None = None
        self._worker: threading.Thread | None = None
        with PackFile(self.path) as pf:
            self.header = dict(pf.header)
            self.dtype = pf.dtype
            self.np_dtype = pf.np_dtype
            self.bundle = pf.bundle
            self.schema: tuple[str, ...] = tuple(pf.header["schema"])
            self.parts = pf.parts
            self.d_model = pf.d_model
            self.width = pf.width  # d_model, + 1 when the bundles carry per-neuron biases (runtime.pack)
            self.bundle_bytes = pf.bundle_bytes
            self.n_layers = pf.n_layers
            self.model_id = pf.model_id
            self.layout_digest = pf.layout_digest
            self.sizes = [pf.n_neurons(x) for x in range(pf.n_layers)]
            self.bases = [pf.layer_offset(x) for x in range(pf.n_layers)]
            self.ffn_bytes = sum(pf.layer_nbytes(x) for x in range(pf.n_layers))
            self.inverses = [pf.inverse(x) for x in range(pf.n_layers)]
        if int(collapse_gap) < 0:
            raise PlanError(f"collapse gap must be >= 0, got {collapse_gap}")
        self.collapse_gap = int(collapse_gap)
        self.dense = bool(dense)
        if dense and cache is not None and not isinstance(cache, NoCache):
            raise PlanError("the dense plan reads whole layers; it takes no cache")
        self.cache: Cache = cache if cache is not None else NoCache(0, self.bundle_bytes)
        if int(self.cache.bundle_bytes) != self.bundle_bytes:
            raise StreamError(f"cache bundle_bytes {self.cache.bundle_bytes} != pack bundle_bytes {self.bundle_bytes}")
        self._wants_runs = bool(getattr(self.cache, "wants_runs", False))
        if drop_cache:
            drop_page_cache(self.path)
        self._engine = get_engine(engine, self.path, **(engine_params or {}))
        self.engine_spec = engine
        self.queue_depth = engine_queue_depth(self._engine)
        fileno = getattr(self._engine, "fileno", None)
        if fileno is not None and not has_o_direct(fileno()):
            raise RuntimeError(f"engine {engine!r} did not open {self.path} with O_DIRECT")
        region = max((-(-n * self.bundle_bytes // ALIGN)) * ALIGN for n in self.sizes)
        self._miss_buf = _RegionBuffer(region)
        self._pf_buf = _RegionBuffer(region)
        self.capacity = int(getattr(self.cache, "capacity", int(self.cache.budget_bytes) // self.bundle_bytes))
        self._pool = np.empty((self.capacity, self.parts, self.width), dtype=self.np_dtype)
        self._slot = np.full((self.n_layers, max(self.sizes, default=0)), -1, dtype=_I64)
        self._free: list[int] = list(range(self.capacity - 1, -1, -1))
        self.tokens: list[TokenIO] = []
        self.warmup = TokenIO()
        self._pending: list[_Prefetch] = []  # prefetches not yet consumed, in issue order (any layers)
        self._bufs = [self._pf_buf, self._miss_buf]  # region buffers; a layer in flight owns one
        self._buf_of: dict[int, int] = {}
        self._lock = threading.Lock()
        self._go = threading.Condition(self._lock)
        self._queue: list[_Prefetch] = []  # the worker's FIFO (threaded engines)
        self._urgent: int | None = None  # a layer whose reads run first: the worker starts nothing else
        self._stop = False
        self._io_lock = threading.Lock()  # one submit at a time on the engine
        #: Engines with ``start``/``finish`` (``uring``) put reads in flight and return: prefetches and miss reads
        #: then need no thread at all (no GIL hand-offs with the model's thread, no core taken from it).
        self.asynchronous = callable(getattr(self._engine, "start", None)) and callable(
            getattr(self._engine, "finish", None))
        #: When a list, every batch of reads issued is appended as ``[offsets, sizes, submit_ns]`` in issue order
        #: (``submit_ns``: time from issue to observed completion), e.g. to replay the very same lists with fio.
        self.read_log: list | None = None
        nmax = max(self.sizes, default=0)
        self._mark = np.zeros(nmax, dtype=bool)  # scratch flags over one layer's neurons (reset after each use)
        self._row_of = np.zeros(nmax, dtype=_I64)
        if not self.asynchronous:
            self._worker = threading.Thread(target=self._prefetch_loop, name="coact-prefetch", daemon=True)
            self._worker.start()
        self._warm()

    # ------------------------------------------------------------------------------------------------ accounting
    @property
    def dram_bytes(self) -> int:
        """DRAM the reader holds for weights: the cache's slot pool plus the two layer-sized read buffers."""
        return int(self._pool.nbytes + len(self._miss_buf.view) + len(self._pf_buf.view))

    @property
    def cache_bytes(self) -> int:
        """Bytes of the cache's slot pool (= budget rounded down to whole bundles)."""
        return int(self._pool.nbytes)

    def begin_token(self) -> TokenIO:
        """Start the accounting of a new token; returns its :class:`TokenIO` (also appended to :attr:`tokens`)."""
        t = TokenIO()
        self.tokens.append(t)
        return t

    def _cur(self) -> TokenIO:
        return self.tokens[-1] if self.tokens else self.begin_token()

    def describe(self) -> dict[str, Any]:
        return {"pack": str(self.path), "dtype": self.dtype, "bundle": self.bundle, "bundle_bytes": self.bundle_bytes,
                "engine": self.engine_spec, "queue_depth": self.queue_depth, "collapse_gap": self.collapse_gap,
                "dense": self.dense, "cache": self.cache.describe(), "cache_bytes": self.cache_bytes,
                "dram_bytes": self.dram_bytes, "ffn_bytes": self.ffn_bytes,
                # a pack "layer" is a placement unit: one per dense layer, one per expert of an MoE layer
                "units": self.n_layers,
                "expert_units": sum(u.get("expert") is not None for u in self.header.get("units") or [])}

    # ------------------------------------------------------------------------------------------------ planning
    def _check(self, layer: int, neurons: Any) -> np.ndarray:
        if self._engine is None:
            raise StreamError("reader is closed")
        if not 0 <= int(layer) < self.n_layers:
            raise StreamError(f"layer {layer} out of range (pack has {self.n_layers} layers/units)")
        ids = np.asarray(neurons, dtype=_I64).reshape(-1)
        n = self.sizes[int(layer)]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise StreamError(f"neuron ids out of range [0, {n}) for layer {layer}")
        return ids

    def _plan(self, layer: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Byte ranges (absolute offsets, sizes) reading sorted unique `positions` of `layer`."""
        base = self.bases[layer]
        if self.dense:
            return dense_plan(self.sizes[layer], self.bundle_bytes, base)
        if positions.size == 0:
            return np.empty(0, dtype=_I64), np.empty(0, dtype=_I64)
        starts, lengths = plan_reads(positions, self.collapse_gap)
        return byte_ranges(starts, lengths, base, self.bundle_bytes)

    def _member(self, items: np.ndarray, members: np.ndarray) -> np.ndarray:
        """Boolean mask of which ``items`` (neuron ids of one layer) are in ``members``: the hot path's ``np.isin``,
        as a flag scatter and gather on reused scratch flags (reset before returning)."""
        mark = self._mark
        mark[members] = True
        try:
            return mark[items]  # fancy indexing: a copy, unaffected by the reset
        finally:
            mark[members] = False

    def _requests(self, layer: int, positions: np.ndarray, buf: _RegionBuffer) -> tuple[list, list, list]:
        """(offsets, sizes, destination views) of the reads of sorted `positions` of `layer` into `buf`."""
        offs, sizes = self._plan(layer, positions)
        base = self.bases[layer]
        v = buf.view
        o, s = offs.tolist(), sizes.tolist()
        return o, s, [v[a - base : a - base + b] for a, b in zip(o, s)]

    def _logged(self, offs: list, sizes: list) -> list | None:
        if self.read_log is None or not offs:
            return None
        entry = [offs, sizes, 0]
        self.read_log.append(entry)
        return entry

    def _read(self, layer: int, positions: np.ndarray, buf: _RegionBuffer) -> tuple[int, int, int]:
        """Read `positions` of `layer` into `buf` (region mirror) and wait: (requests, bytes, submit ns)."""
        offs, sizes, out = self._requests(layer, positions, buf)
        if not offs:
            return 0, 0, 0
        entry = self._logged(offs, sizes)
        assert self._engine is not None
        with self._io_lock:
            t0 = time.perf_counter_ns()
            self._engine.submit(offs, sizes, out=out)
            dt = time.perf_counter_ns() - t0
        if entry is not None:
            entry[2] = dt
        return len(offs), int(sum(sizes)), dt

    def _region(self, layer: int, buf: _RegionBuffer) -> np.ndarray:
        return buf.region(self.sizes[layer], self.parts, self.width, self.np_dtype)

    # ------------------------------------------------------------------------------------------------ prefetch
    def _prefetch_loop(self) -> None:
        """The worker of threaded engines: runs queued prefetches one submit of ``prefetch_chunk`` requests at a
        time (0: a whole prefetch per submit), in FIFO order, except that while :attr:`_urgent` names a layer (the
        model waits for that layer's bytes: its prefetch and misses) it runs only that layer's prefetches and
        starts nothing else: a look-ahead never delays the reads the model needs now by more than the chunk
        already in flight. Given-up prefetches are ended first."""
        while True:
            with self._go:
                while True:
                    if self._stop:
                        return
                    job = self._runnable()
                    if job is not None:
                        break
                    self._go.wait()
            try:
                finished = self._run_chunk(job)
            except BaseException as e:  # re-raised by the caller in wait()
                job.error = e
                finished = True
            if finished:
                with self._go:
                    self._queue.remove(job)
                job.done.set()

    def _runnable(self) -> _Prefetch | None:
        """The queued prefetch the worker runs next (called under the lock), or None."""
        q = self._queue
        for j in q:
            if j.cancelled:
                return j
        if self._urgent is not None:
            return next((j for j in q if j.layer == self._urgent), None)
        return q[0] if q else None

    def _run_chunk(self, job: _Prefetch) -> bool:
        """Submit the next chunk of ``job``'s reads; True when it has no more."""
        if job.cancelled:
            return True
        offs, sizes, out = self._plan_of(job)
        i = job.next
        step = self.prefetch_chunk if self.prefetch_chunk > 0 else max(1, len(offs))
        o, s = offs[i : i + step], sizes[i : i + step]
        if o:
            entry = self._logged(o, s)
            assert self._engine is not None
            with self._io_lock:
                t0 = time.perf_counter_ns()
                self._engine.submit(o, s, out=out[i : i + step])
                dt = time.perf_counter_ns() - t0
            if entry is not None:
                entry[2] = dt
            job.reads += len(o)
            job.bytes_read += int(sum(s))
            job.io_ns += dt
        job.next = i + step
        return job.next >= len(offs)

    def _buffer(self, layer: int) -> int:
        """The region buffer of ``layer`` (its prefetches and misses all land there): the one it holds, else a free
        one; with both held by other layers, the oldest layer in flight is given up (its prefetch waited for and
        counted as wasted)."""
        b = self._buf_of.get(layer)
        if b is not None:
            return b
        while len(self._buf_of) >= len(self._bufs):
            oldest = next((j.layer for j in self._pending if j.layer != layer), None)
            if oldest is None:  # a buffer held without a prefetch in flight (cannot happen between fetches)
                oldest = next(x for x in self._buf_of if x != layer)
            self._drop(oldest)
        b = next(i for i in range(len(self._bufs)) if i not in self._buf_of.values())
        self._buf_of[layer] = b
        return b

    def _drop(self, layer: int) -> None:
        """Give up the prefetches of ``layer`` (cancel their remaining reads, wait, count them as wasted) and its
        buffer."""
        jobs = [j for j in self._pending if j.layer == layer]
        if jobs:
            for j in jobs:
                j.cancelled = True
            with self._go:
                self._go.notify_all()
            self._wait_jobs(jobs)
        self._cur().wasted_bytes += sum(int(j.neurons.size) for j in jobs) * self.bundle_bytes
        self._buf_of.pop(layer, None)

    def _issue(self, layer: int, ids: np.ndarray, positions: np.ndarray) -> None:
        """Put one prefetch of ``layer`` in flight (``ids``: the neurons it is for; ``positions``: what it reads)."""
        job = _Prefetch(layer, ids, positions)
        job.buf = self._buffer(layer)
        self._pending.append(job)
        if self.asynchronous:
            offs, sizes, out = job.plan = self._plan_of(job)
            job.reads, job.bytes_read = len(offs), int(sum(sizes))
            job.log = self._logged(offs, sizes)
            job.t_start = time.perf_counter_ns()
            job.ticket = self._engine.start(offs, sizes, out)  # type: ignore[union-attr]
            return
        with self._go:
            self._queue.append(job)
            self._go.notify_all()

    def prefetch(self, layer: int, neurons: Any) -> int:
        """Start reading the bundles of `neurons` of `layer` that the cache does not hold and that no prefetch in
        flight already reads, in the background (into the layer's region buffer).

        Returns the number of bundles it will read. Prefetches of several layers may be in flight (a look-ahead
        reads layer l+1 while layer l is still fetched); they run in issue order, and at most two layers hold a
        buffer (a third one gives up the oldest). No-op in dense mode (there, :attr:`lookahead` reads ahead).
        """
        ids = self._check(layer, neurons)
        if self.dense or ids.size == 0:
            return 0
        layer = int(layer)
        ids = np.unique(ids)
        res = self.cache.resident(layer)
        if res.size:
            ids = ids[~self._member(ids, res)]
        mine = [j for j in self._pending if j.layer == layer]
        if mine and ids.size:  # not what a prefetch in flight reads anyway
            ids = ids[~self._member(ids, np.concatenate([j.neurons for j in mine]))]
            ids = ids[~self._covered(layer, self.inverses[layer][ids], mine)]
        if ids.size == 0:
            return 0
        self._issue(layer, ids, np.sort(self.inverses[layer][ids]))
        return int(ids.size)

    def _plan_of(self, job: _Prefetch) -> tuple[list, list, list]:
        """``job``'s requests, planned by whoever needs them first (the worker when it starts the job, or the
        caller in :meth:`_covered`); both compute the same plan, so a race only plans twice."""
        plan = job.plan
        if plan is None:
            plan = job.plan = self._requests(job.layer, job.positions, self._bufs[job.buf])
        return plan

    def _covered(self, layer: int, positions: np.ndarray, jobs: list[_Prefetch]) -> np.ndarray:
        """Which bundle ``positions`` of ``layer`` lie wholly inside a byte range that ``jobs`` (prefetches of the
        layer) read into its region buffer: their bytes arrive anyway (page alignment, collapse gaps)."""
        out = np.zeros(positions.size, dtype=bool)
        if not positions.size:
            return out
        bb, base = self.bundle_bytes, self.bases[layer]
        lo = positions.astype(_I64) * bb + base
        for j in jobs:
            plan = self._plan_of(j)
            offs, sizes = np.asarray(plan[0], dtype=_I64), np.asarray(plan[1], dtype=_I64)
            if not offs.size:
                continue
            k = np.searchsorted(offs, lo, side="right") - 1  # plans are sorted by offset
            ok = k >= 0
            out[ok] |= lo[ok] + bb <= offs[k[ok]] + sizes[k[ok]]
        return out

    def poll(self) -> None:
        """Note whether the prefetches in flight have completed (asynchronous engines; cheap, never blocks): the
        model calls it when attention ends, which bounds a prefetch's I/O time by the attention time when its
        reads are already complete there (else :meth:`wait` observes the completion)."""
        for job in self._pending:
            if job.ticket is not None and not job.t_done:
                if self._engine.ready(job.ticket):  # type: ignore[union-attr]
                    job.t_done = time.perf_counter_ns()

    def wait(self, layer: int | None = None) -> list[_Prefetch]:
        """Wait for the prefetches in flight (all, or those of ``layer``) and return them (no longer pending; the
        layer keeps its buffer until its fetch); their errors are raised here."""
        jobs = [j for j in self._pending if layer is None or j.layer == int(layer)]
        self._wait_jobs(jobs)
        return jobs

    def _wait_jobs(self, jobs: list[_Prefetch]) -> None:
        """Wait for ``jobs`` (pending prefetches) and account their I/O to the current token: the time waited is
        I/O wait, the rest of each one's read time was hidden behind compute."""
        err: BaseException | None = None
        for job in jobs:
            self._pending.remove(job)
            t0 = time.perf_counter_ns()
            if job.ticket is not None:
                try:
                    self._engine.finish(job.ticket)  # type: ignore[union-attr]
                except BaseException as e:
                    job.error = e
                t1 = time.perf_counter_ns()
                waited = t1 - t0
                # I/O time of an asynchronous batch: issue to first observed completion (an upper bound when it was
                # complete before anyone looked).
                job.io_ns = (job.t_done or t1) - job.t_start
                if job.log is not None:
                    job.log[2] = job.io_ns
            else:
                job.done.wait()
                waited = time.perf_counter_ns() - t0
            tok = self._cur()
            tok.wait_ns += waited
            tok.io_ns += job.io_ns
            tok.hidden_ns += max(0, job.io_ns - waited)
            tok.reads += job.reads
            tok.bytes_read += job.bytes_read
            tok.predicted += int(job.neurons.size)
            err = err or job.error
        if err is not None:
            raise err

    # ---------------------------------------------------------------------------------------------------- fetch
    @contextmanager
    def _priority(self, layer: int) -> Iterator[None]:
        """Within the block the worker runs only ``layer``'s prefetches (the model is waiting for that layer)."""
        with self._go:
            self._urgent = layer
        try:
            yield
        finally:
            with self._go:
                self._urgent = None
                self._go.notify_all()

    def _blocking_read(self, tok: "TokenIO", layer: int, positions: np.ndarray, buf: _RegionBuffer) -> None:
        """Read ``positions`` of ``layer`` into ``buf`` now; the caller waits for all of it (the worker starts no
        prefetch of another layer meanwhile: these reads are needed now, a look-ahead only later)."""
        with self._priority(layer):
            nreq, nbytes, dt = self._read(layer, positions, buf)
        tok.reads += nreq
        tok.bytes_read += nbytes
        tok.io_ns += dt
        tok.wait_ns += dt

    def _start_miss(self, layer: int, positions: np.ndarray,
                    buf: _RegionBuffer) -> tuple[Any, list | None, int, int, int]:
        """Asynchronous engines: put the miss reads in flight now (ticket, log entry, requests, bytes, t0)."""
        offs, sizes, out = self._requests(layer, positions, buf)
        entry = self._logged(offs, sizes)
        t0 = time.perf_counter_ns()
        return self._engine.start(offs, sizes, out), entry, len(offs), int(sum(sizes)), t0  # type: ignore[union-attr]

    def fetch(self, layer: int, neurons: Any) -> np.ndarray:
        """The bundles of `neurons` (ids of `layer`, unique, any order) as float32 ``[k, parts, d_model]``, in the
        order given; part j of row i is ``schema[j]`` of neuron ``neurons[i]`` (``down`` is column i of down)."""
        return self.fetch_raw(layer, neurons).astype(np.float32)

    def _ahead(self, layer: int) -> int:
        """The layer expected after ``layer`` (the next one; the first one of the next token after the last)."""
        return (layer + 1) % self.n_layers

    def fetch_raw(self, layer: int, neurons: Any) -> np.ndarray:
        """Like :meth:`fetch`, in the pack's dtype (``[k, parts, width]``; fp16 packs stay fp16): the caller widens
        them where it is cheapest (numpy's fp16 -> fp32 cast is scalar code, torch's is vectorised), and the cache
        pool, the read buffers and this result share one dtype, so every copy here is a plain gather.

        Prefetches of ``layer`` are used; those of the layer after it (a look-ahead) stay in flight; any other
        layer's are given up (wasted). With :attr:`lookahead` in dense mode, the next layer's whole region is put
        in flight here, behind this layer's (the dense plan knows the next layer's set exactly)."""
        ids = self._check(layer, neurons)
        layer = int(layer)
        tok = self._cur()
        for x in {j.layer for j in self._pending} | set(self._buf_of):
            if x not in (layer, self._ahead(layer)):
                self._drop(x)
        jobs = [j for j in self._pending if j.layer == layer]
        b = self._buffer(layer)
        buf = self._bufs[b]
        try:
            return self._fetch_into(tok, layer, ids, jobs, buf)
        finally:
            self._drop(layer)  # the buffer is free again (after an error: once no read of it is in flight)

    def _fetch_into(self, tok: TokenIO, layer: int, ids: np.ndarray, jobs: list[_Prefetch],
                    buf: _RegionBuffer) -> np.ndarray:
        k = ids.size
        out = np.empty((k, self.parts, self.width), dtype=self.np_dtype)
        tok.active += k
        if self.dense:
            ahead = self._ahead(layer)
            read_ahead = self.lookahead > 0 and ahead != layer and ahead not in self._buf_of
            if jobs:
                if read_ahead:  # queued behind this layer's read
                    self._issue(ahead, np.empty(0, dtype=_I64), np.empty(0, dtype=_I64))
                with self._priority(layer):
                    self._wait_jobs(jobs)
            else:
                self._blocking_read(tok, layer, np.empty(0, dtype=_I64), buf)
                if read_ahead:
                    self._issue(ahead, np.empty(0, dtype=_I64), np.empty(0, dtype=_I64))
            tok.loaded += k
            tok.bytes_requested += k * self.bundle_bytes
            if k:
                np.take(self._region(layer, buf), self.inverses[layer][ids], axis=0, out=out)
            return out
        pf = np.concatenate([j.neurons for j in jobs]) if jobs else np.empty(0, dtype=_I64)
        if k == 0:
            if jobs:
                self._wait_jobs(jobs)
                tok.wasted_bytes += int(pf.size) * self.bundle_bytes
            return out
        load = np.asarray(self.cache.filter(layer, ids), dtype=_I64)
        inv = self.inverses[layer]
        # loads: from the prefetches where they read them, else read now (into the same region buffer)
        if jobs:
            used = self._member(load, pf)
            miss = load[~used]
            if miss.size:  # bytes a prefetch of the layer reads anyway need no read of their own
                cov = self._covered(layer, inv[miss], jobs)
                tok.covered += int(cov.sum())
                miss = miss[~cov]
            n_used = int(used.sum())
            tok.prefetch_used += n_used
            tok.wasted_bytes += (int(pf.size) - n_used) * self.bundle_bytes
        else:
            miss = load
        pending_miss = None
        if miss.size:
            miss_pos = np.sort(inv[miss])
            if self.asynchronous:  # in flight together with the rest of the prefetch
                pending_miss = self._start_miss(layer, miss_pos, buf)
            else:
                with self._priority(layer):  # the worker finishes this layer's prefetch, then nothing else
                    self._wait_jobs(jobs)
                    jobs = []
                    self._blocking_read(tok, layer, miss_pos, buf)
        # hits: served from the slot pool (while the reads are in flight)
        hit_rows = np.flatnonzero(~self._member(ids, load))
        if hit_rows.size:
            slots = self._slot[layer, ids[hit_rows]]
            if np.any(slots < 0):  # pragma: no cover - the warm-up reads every initially resident bundle
                raise RuntimeError(f"cache reported a hit without data (layer {layer})")
            out[hit_rows] = self._pool[slots]
        tok.hits += int(hit_rows.size)
        tok.loaded += int(load.size)
        tok.bytes_requested += int(load.size) * self.bundle_bytes
        row_of = self._row_of
        row_of[ids] = np.arange(k)
        if jobs:
            self._wait_jobs(jobs)
        if pending_miss is not None:
            ticket, entry, nreq, nbytes, t0 = pending_miss
            f0 = time.perf_counter_ns()
            self._engine.finish(ticket)  # type: ignore[union-attr]
            f1 = time.perf_counter_ns()
            if entry is not None:
                entry[2] = f1 - t0
            tok.reads += nreq
            tok.bytes_read += nbytes
            tok.io_ns += f1 - t0  # in flight from its issue (overlapping the hits' copy and the prefetch's end)
            tok.wait_ns += f1 - f0
        if load.size:  # prefetched and missed bundles alike: the layer's region buffer mirrors the pack
            out[row_of[load]] = self._region(layer, buf)[inv[load]]
        self._admit(layer, load, row_of, out)
        return out

    # ---------------------------------------------------------------------------------------------------- cache
    def _admit(self, layer: int, load: np.ndarray, row_of: np.ndarray, out: np.ndarray) -> None:
        if isinstance(self.cache, NoCache) or load.size == 0:
            return
        runs = load_run_lengths(self.inverses[layer], load) if self._wants_runs else None
        self.cache.admit(layer, load, runs)
        if self.capacity == 0:
            return
        res = self.cache.resident(layer)
        new = load[self._member(load, res)]
        new = new[self._slot[layer, new] < 0]
        if new.size == 0:
            return
        if new.size > len(self._free):
            self._sweep()
        if new.size > len(self._free):  # pragma: no cover - a policy over its budget
            raise RuntimeError(f"cache {self.cache.name!r} holds more than its capacity of {self.capacity} bundles")
        slots = np.array(self._free[-new.size:], dtype=_I64)
        del self._free[-new.size:]
        self._slot[layer, new] = slots
        self._pool[slots] = out[row_of[new]]  # exact: the values came from the pack dtype (same dtype here)

    def _sweep(self) -> None:
        """Give back the slots of bundles the policy no longer holds (any layer)."""
        for x in range(self.n_layers):
            held = np.flatnonzero(self._slot[x] >= 0)
            if held.size == 0:
                continue
            res = self.cache.resident(x)
            gone = held[~self._member(held, res)]
            if gone.size:
                self._free.extend(self._slot[x, gone].tolist())
                self._slot[x, gone] = -1

    def _warm(self) -> None:
        """Read the bundles a policy holds before any use (pinned hot sets) into the slot pool."""
        if isinstance(self.cache, NoCache) or self.capacity == 0:
            return
        for x in range(self.n_layers):
            res = np.asarray(self.cache.resident(x), dtype=_I64)
            if res.size == 0:
                continue
            nreq, nbytes, dt = self._read(x, np.sort(self.inverses[x][res]), self._miss_buf)
            self.warmup.reads += nreq
            self.warmup.bytes_read += nbytes
            self.warmup.io_ns += dt
            self.warmup.loaded += int(res.size)
            if res.size > len(self._free):  # pragma: no cover
                raise RuntimeError("pinned set larger than the cache capacity")
            slots = np.array([self._free.pop() for _ in range(res.size)], dtype=_I64)
            self._slot[x, res] = slots
            self._pool[slots] = self._region(x, self._miss_buf)[self.inverses[x][res]]

    # ---------------------------------------------------------------------------------------------------- close
    def close(self) -> None:
        if getattr(self, "_worker", None) is not None:
            with self._go:
                self._stop = True
                self._go.notify()
            self._worker.join()  # type: ignore[union-attr]
            self._worker = None
        if getattr(self, "_engine", None) is not None:
            self._engine.close()  # type: ignore[union-attr]
            self._engine = None

    def __repr__(self) -> str:
        return (f"FlashFFNReader({str(self.path)!r}, bundle={self.bundle}, dtype={self.dtype}, "
                f"cache={self.cache.name}, engine={self.engine_spec}, collapse={self.collapse_gap})")


def summarize(tokens: Sequence[TokenIO]) -> dict[str, Any]:
    """Totals and per-token means of a list of :class:`TokenIO`, plus prefetch precision/recall and hit rate."""
    tot = TokenIO()
    for t in tokens:
        tot.add(t)
    n = max(1, len(tokens))
    out: dict[str, Any] = {"tokens": len(tokens), "total": tot.to_dict()}
    out["per_token"] = {k: v / n for k, v in tot.to_dict().items()}
    out["hit_rate"] = tot.hits / tot.active if tot.active else None
    out["prefetch_precision"] = tot.prefetch_used / tot.predicted if tot.predicted else None
    out["prefetch_recall"] = tot.prefetch_used / tot.loaded if tot.loaded else None
    out["hidden_fraction"] = tot.hidden_ns / tot.io_ns if tot.io_ns else None
    return out
