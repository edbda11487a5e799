"""Simulate or really replay a trace against a layout: what a placement costs in runs, reads, bytes and time.

Both paths share one planning function, :func:`plan_chunk`: active sets -> cache -> load sets -> positions through
the layout inverse -> runs -> access collapse -> 4 KiB-aligned byte ranges, vectorised over a chunk of tokens per
layer. :func:`simulate` only counts; :func:`replay` additionally issues the byte ranges with O_DIRECT through an
I/O engine, token by token and layer by layer, timing each (token, layer) submit. Because the layer regions of a
pack are 4 KiB aligned, planning relative to offset 0 (simulate) or to the real layer offset (replay) gives the
same requests, so replay's counts equal simulate's exactly.

Planning is done a chunk of tokens at a time *before* that chunk's timed loop, so the timed region holds nothing
but the engine call.

Units (mixture-of-experts, layers of different widths): a "layer" here is a placement unit of the layout (an MoE
layer is one unit per expert, each with its own N and its own pack region), so every count is per unit; when the
layout lists units, the report's per-layer rows carry each unit's decoder layer and expert
(:meth:`runtime.report.Report.expert_reads`: reads per expert). A token that was not routed to an expert has an
empty active set there and reads nothing from it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.bits import unpack_bits
from common.progress import ProgressFn, notify
from runtime.caches import Cache, NoCache, load_masks
from runtime.direct import aligned_buffer, drop_page_cache, filesystem_type, has_o_direct
from runtime.engines import engine_queue_depth, get_engine
from runtime.errors import PackError, PlanError
from runtime.layout import Layout
from runtime.pack import PackFile, bundle_crcs, check_layout_matches
from runtime.planner import (
    ALIGN,
    DENSE_CHUNK,
    batch_byte_ranges,
    batch_collapse,
    batch_runs,
    dense_plan,
    segment_sums,
)
from runtime.report import Report, TraceCounts

_CHUNK_BOOL_BUDGET = 32 << 20  # bytes of unpacked active sets held per chunk


@dataclass
class LayerRanges:
    """The I/O requests of one layer for a chunk of tokens: requests of token t are [ptr[t], ptr[t+1])."""

    ptr: list[int]
    offsets: list[int]
    sizes: list[int]


def _check_inputs(layout: Layout, packed_active: np.ndarray, layers: Sequence[int] | None) -> list[int]:
    pa = packed_active
    if pa.ndim != 3:
        raise PlanError(f"packed_active must be uint8 [T, L, nb], got shape {pa.shape}")
    if pa.dtype != np.uint8:
        raise PlanError(f"packed_active must be uint8 (bit-packed), got {pa.dtype}")
    if pa.shape[1] != layout.n_layers:
        raise PlanError(f"packed_active has {pa.shape[1]} layers, the layout {layout.n_layers}")
    need = (max(layout.n_neurons, default=0) + 7) // 8
    if pa.shape[2] < need:
        raise PlanError(f"packed_active has {pa.shape[2]} bytes per set, {need} needed for N={max(layout.n_neurons)}")
    sel = list(range(layout.n_layers)) if layers is None else [int(x) for x in layers]
    for x in sel:
        if not 0 <= x < layout.n_layers:
            raise PlanError(f"layer {x} out of range (layout has {layout.n_layers} layers)")
    return sel


def _chunk_tokens(layout: Layout, layers: list[int], chunk_tokens: int | None) -> int:
    if chunk_tokens:
        return max(1, int(chunk_tokens))
    per_token = 2 * sum(layout.n_neurons[x] for x in layers) or 1  # active + load matrices
    return int(max(1, min(512, _CHUNK_BOOL_BUDGET // per_token)))


def plan_chunk(
    layout: Layout,
    packed_chunk: np.ndarray,
    layers: list[int],
    *,
    bundle_bytes: int,
    collapse_gap: int = 0,
    cache: Cache | None = None,
    bases: Sequence[int] | None = None,
    align: int = ALIGN,
    dense: bool = False,
    dense_chunk: int = DENSE_CHUNK,
    keep_ranges: bool = False,
) -> tuple[TraceCounts, list[LayerRanges] | None]:
    """Counts (and optionally the byte ranges) of a chunk of tokens, packed_chunk uint8 [Tc, L, nb].

    The cache is consulted token by token, layers in order (its state carries over between chunks); the rest is
    vectorised over the chunk per layer. `bases` are the layers' region offsets (multiples of `align`; zeros for a
    simulation).
    """
    Tc = int(packed_chunk.shape[0])
    Ls = len(layers)
    bases = [0] * layout.n_layers if bases is None else list(bases)
    counts = {f: np.zeros((Tc, Ls), dtype=np.int64) for f in
              ("active", "loaded", "runs", "collapsed_reads", "reads", "bytes_requested", "bytes_read")}
    ranges: list[LayerRanges] | None = [] if keep_ranges else None
    bb = int(bundle_bytes)

    if dense:
        for j, layer in enumerate(layers):
            n = layout.n_neurons[layer]
            off, nb = dense_plan(n, bb, bases[layer], chunk_bytes=dense_chunk, align=align)
            counts["active"][:, j] = n
            counts["loaded"][:, j] = n
            counts["runs"][:, j] = 1 if n else 0
            counts["collapsed_reads"][:, j] = 1 if n else 0
            counts["reads"][:, j] = off.size
            counts["bytes_requested"][:, j] = n * bb
            counts["bytes_read"][:, j] = int(nb.sum())
            if ranges is not None:
                k = off.size
                ranges.append(LayerRanges([t * k for t in range(Tc + 1)], off.tolist() * Tc, nb.tolist() * Tc))
        return TraceCounts(list(layers), **counts), ranges

    active = [unpack_bits(packed_chunk[:, layer, :], layout.n_neurons[layer]) for layer in layers]
    for j, a in enumerate(active):
        counts["active"][:, j] = a.sum(axis=1)

    if cache is None or isinstance(cache, NoCache):
        load = active
    else:
        load = load_masks(cache, active, layers, layout.inverses)

    for j, layer in enumerate(layers):
        in_place_order = load[j][:, layout.perms[layer]]  # column p = neuron perm[p]
        tok, pos = np.nonzero(in_place_order)  # row-major: grouped by token, positions sorted
        counts["loaded"][:, j] = np.bincount(tok, minlength=Tc)
        seg, st, ln = batch_runs(tok, pos, check=False)
        counts["runs"][:, j] = np.bincount(seg, minlength=Tc)
        seg, st, ln = batch_collapse(seg, st, ln, collapse_gap)
        counts["collapsed_reads"][:, j] = np.bincount(seg, minlength=Tc)
        seg, off, nb = batch_byte_ranges(seg, st, ln, bases[layer], bb, align)
        counts["reads"][:, j] = np.bincount(seg, minlength=Tc)
        counts["bytes_read"][:, j] = segment_sums(seg, nb, Tc)
        if ranges is not None:
            ptr = np.searchsorted(seg, np.arange(Tc + 1))
            ranges.append(LayerRanges(ptr.tolist(), off.tolist(), nb.tolist()))
    counts["bytes_requested"] = counts["loaded"] * bb
    return TraceCounts(list(layers), **counts), ranges


def resolve_collapse(collapse_gap: int | str, *, bundle_bytes: int, cost_model: Any = None,
                     queue_depth: int = 1) -> int:
    """An integer gap from ``collapse_gap``: an int (>= 0) as given, or ``"auto"``: the cost model's largest gap
    for which reading the gap bundles is cheaper than one more request at `queue_depth`
    (:meth:`runtime.device.CostModel.collapse_gap`)."""
    if isinstance(collapse_gap, str):
        if collapse_gap.strip().lower() != "auto":
            try:
                return resolve_collapse(int(collapse_gap), bundle_bytes=bundle_bytes)
            except ValueError:
                raise PlanError(f"collapse gap must be an integer >= 0 or 'auto', got {collapse_gap!r}") from None
        if cost_model is None:
            raise PlanError("collapse 'auto' needs a device cost model (coact device-profile PATH --out cost.json)")
        return int(cost_model.collapse_gap(bundle_bytes, queue_depth))
    gap = int(collapse_gap)
    if gap < 0:
        raise PlanError(f"collapse gap must be >= 0, got {gap}")
    return gap


def modelled_latency_ns(counts: TraceCounts, cost_model: Any, queue_depth: int = 1) -> np.ndarray:
    """int64 [T, L] modelled I/O time of every (token, layer): ``cost_model.batch_time(reads, bytes_read, qd)``."""
    t = cost_model.batch_time(counts.reads, counts.bytes_read, queue_depth)
    return np.rint(np.asarray(t, dtype=np.float64) * 1e9).astype(np.int64)


def _config(
    layout: Layout,
    *,
    bundle_bytes: int,
    collapse_gap: int,
    cache: Cache | None,
    engine: str | None,
    pack_path: str | None,
    align: int,
    dense: bool,
    layers: list[int],
) -> dict[str, Any]:
    return {
        "layout_solver": layout.solver,
        "layout_digest": layout.digest,
        "model_id": layout.model_id,
        "plan": "dense" if dense else "sparse",
        "cache": (cache.describe() if cache is not None else {"policy": "none", "budget_bytes": 0}),
        "collapse_gap": int(collapse_gap),
        "engine": engine,
        "pack_path": pack_path,
        "bundle_bytes": int(bundle_bytes),
        "align": int(align),
        "layers": layers,
        **({"units": [u.to_dict() for u in layout.units]} if layout.units is not None else {}),
    }


def simulate(
    layout: Layout,
    packed_active: np.ndarray,
    n_neurons: int | Sequence[int],
    *,
    bundle_bytes: int,
    collapse_gap: int | str = 0,
    cache: Cache | None = None,
    layers: Sequence[int] | None = None,
    dense: bool = False,
    align: int = ALIGN,
    chunk_tokens: int | None = None,
    progress: ProgressFn | None = None,
    cost_model: Any = None,
    queue_depth: int = 1,
) -> Report:
    """Count runs, reads and bytes of a trace under `layout` without touching the disk.

    With a `cost_model` (:class:`runtime.device.CostModel`) the report also carries *modelled* I/O latency per
    token (each (token, layer)'s reads and bytes through ``cost_model.batch_time`` at `queue_depth`, summed over
    layers), so latency fields are filled and ``config["latency"] == "modelled"``.

    Args:
        packed_active: uint8 [T, L, ceil(N/8)] bit-packed active sets (little bit order, :mod:`common.bits`).
        n_neurons: the model's N (one int or one per layer); must match the layout.
        bundle_bytes: bytes per bundle (as in the pack file that would be read).
        collapse_gap: access-collapse threshold in bundles (0 = off), or ``"auto"`` (needs `cost_model`).
        cache: a fresh :class:`runtime.caches.Cache` (stateful: do not reuse one across runs), or None.
        layers: subset of layers to plan (default all).
        dense: plan the `dense` baseline (every layer's whole region, in 1 MiB reads) instead.
        progress: called as ``progress("simulate", tokens_done, n_tokens)`` (None: silent).
    """
    sizes = [int(n_neurons)] * layout.n_layers if isinstance(n_neurons, (int, np.integer)) else list(n_neurons)
    if [int(n) for n in sizes] != layout.n_neurons:
        raise PlanError(f"n_neurons {sizes[:4]}... does not match the layout's layer sizes")
    sel = _check_inputs(layout, packed_active, layers)
    if dense and cache is not None and not isinstance(cache, NoCache):
        raise PlanError("the dense plan reads whole layers; it takes no cache")
    collapse_gap = resolve_collapse(collapse_gap, bundle_bytes=bundle_bytes, cost_model=cost_model,
                                    queue_depth=queue_depth)
    step = _chunk_tokens(layout, sel, chunk_tokens)
    T = packed_active.shape[0]
    parts = []
    notify(progress, "simulate", 0, T)
    for a in range(0, T, step):
        c, _ = plan_chunk(layout, np.asarray(packed_active[a : a + step]), sel, bundle_bytes=bundle_bytes,
                          collapse_gap=collapse_gap, cache=cache, align=align, dense=dense)
        parts.append(c)
        notify(progress, "simulate", a + c.n_tokens, T)
    cfg = _config(layout, bundle_bytes=bundle_bytes, collapse_gap=collapse_gap, cache=cache, engine=None,
                  pack_path=None, align=align, dense=dense, layers=sel)
    counts = TraceCounts.concat(parts, sel)
    latency = None
    if cost_model is not None:
        latency = modelled_latency_ns(counts, cost_model, queue_depth)
        cfg.update(latency="modelled", queue_depth=int(queue_depth), cost_model=cost_model.summary())
    return Report.from_counts(counts, mode="simulate", plan=cfg["plan"], config=cfg, latency_ns=latency)


def _check_read(path: str, crcs: np.ndarray, layer: int, base: int, n: int, bb: int, offsets: Sequence[int],
                sizes: Sequence[int], views: Sequence[memoryview]) -> None:
    """Check every bundle wholly inside the ranges read against its crc32 (``crcs`` of the layer, by position)."""
    for off, size, view in zip(offsets, sizes, views):
        first = max(0, -(-(int(off) - base) // bb))
        last = min(n, (int(off) + int(size) - base) // bb)
        if last <= first:
            continue
        start = base + first * bb - int(off)
        got = bundle_crcs(view[start : start + (last - first) * bb], bb)
        bad = np.nonzero(got != crcs[first:last])[0]
        if bad.size:
            raise PackError(f"{path}: layer {layer}: bundle at position {first + int(bad[0])} fails its checksum "
                            "(file corrupt)")


def replay(
    pack_path: str | os.PathLike[str],
    layout: Layout,
    packed_active: np.ndarray,
    *,
    collapse_gap: int | str = 0,
    engine: str = "sync",
    cache: Cache | None = None,
    layers: Sequence[int] | None = None,
    dense: bool = False,
    chunk_tokens: int | None = None,
    progress: ProgressFn | None = None,
    cost_model: Any = None,
    engine_params: dict[str, Any] | None = None,
    read_log: list[tuple[np.ndarray, np.ndarray]] | None = None,
    drop_cache: bool = True,
    verify: bool = False,
) -> Report:
    """Replay a trace with real O_DIRECT reads of the pack file; same counts as :func:`simulate` plus I/O times.

    Per token, layers in order: load set -> positions -> reads -> byte ranges relative to the layer's region ->
    ``engine.submit``; each submit is timed with ``time.perf_counter_ns`` and a token's latency is the sum over its
    layers. Raises :class:`runtime.errors.DirectIOUnsupported` if the file system has no O_DIRECT (e.g. tmpfs) and
    :class:`runtime.errors.PackError` if `layout` is not the pack's layout.

    `engine` is a registered engine name, optionally with a queue depth (``"threads:16"``); `engine_params` go to
    its factory. ``collapse_gap="auto"`` resolves through `cost_model` at the engine's queue depth. When
    `read_log` is a list, the (offsets, sizes) of every submitted (token, layer) batch are appended to it in
    issue order (for :mod:`runtime.fio`; outside the timed region). With `drop_cache` (default) the pack's pages
    are dropped from the page cache (``posix_fadvise(DONTNEED)``) after its header is read, so neither the
    buffered header read's read-ahead nor an earlier buffered reader leaves bundle pages cached.

    With `verify`, the engine reads into buffers of ours and, after each timed submit (outside the timed region),
    every bundle wholly inside the bytes read is checked against the pack's crc32 table; a mismatch raises
    :class:`runtime.errors.PackError` naming the layer and position. ``config["verified"]`` records it.
    """
    path = Path(pack_path)
    with PackFile(path) as pack:
        check_layout_matches(pack, layout)
        bb = pack.bundle_bytes
        bases = [pack.layer_offset(x) for x in range(pack.n_layers)]
        crcs = [pack.bundle_crcs(x) for x in range(pack.n_layers)] if verify else None
    if drop_cache:
        drop_page_cache(path)
    sel = _check_inputs(layout, packed_active, layers)
    if dense and cache is not None and not isinstance(cache, NoCache):
        raise PlanError("the dense plan reads whole layers; it takes no cache")
    step = _chunk_tokens(layout, sel, chunk_tokens)
    T, Ls = packed_active.shape[0], len(sel)
    latency = np.zeros((T, Ls), dtype=np.int64)
    parts = []
    clock = time.perf_counter_ns
    vbuf = aligned_buffer(1 << 20) if verify else (None, memoryview(b""))
    pack_check = str(path)
    eng = get_engine(engine, path, **(engine_params or {}))
    qd = engine_queue_depth(eng)
    try:
        collapse_gap = resolve_collapse(collapse_gap, bundle_bytes=bb, cost_model=cost_model, queue_depth=qd)
        fileno = getattr(eng, "fileno", None)
        if fileno is not None and not has_o_direct(fileno()):
            raise RuntimeError(f"engine {engine!r} did not open {path} with O_DIRECT")
        notify(progress, "replay", 0, T)
        for a in range(0, T, step):
            counts, ranges = plan_chunk(layout, np.asarray(packed_active[a : a + step]), sel, bundle_bytes=bb,
                                        collapse_gap=collapse_gap, cache=cache, bases=bases, dense=dense,
                                        keep_ranges=True)
            assert ranges is not None
            parts.append(counts)
            lat = latency[a : a + counts.n_tokens]
            submit = eng.submit
            for t in range(counts.n_tokens):
                row = lat[t]
                for j, r in enumerate(ranges):
                    lo, hi = r.ptr[t], r.ptr[t + 1]
                    if lo == hi:
                        continue
                    offs, sizes = r.offsets[lo:hi], r.sizes[lo:hi]
                    if crcs is None:
                        t0 = clock()
                        submit(offs, sizes)
                        row[j] = clock() - t0
                    else:
                        total = int(sum(sizes))
                        if len(vbuf[1]) < total:
                            vbuf = aligned_buffer(total)
                        views, at = [], 0
                        for n in sizes:  # sizes are 4 KiB multiples, so every slice stays aligned
                            views.append(vbuf[1][at : at + n])
                            at += n
                        t0 = clock()
                        submit(offs, sizes, views)
                        row[j] = clock() - t0
                        layer = sel[j]
                        _check_read(pack_check, crcs[layer], layer, bases[layer], layout.n_neurons[layer], bb,
                                    offs, sizes, views)
                    if read_log is not None:
                        read_log.append((offs, sizes))
            notify(progress, "replay", a + counts.n_tokens, T)
    finally:
        eng.close()
    cfg = _config(layout, bundle_bytes=bb, collapse_gap=collapse_gap, cache=cache, engine=engine,
                  pack_path=str(path), align=ALIGN, dense=dense, layers=sel)
    cfg["pack_fs"] = filesystem_type(path)
    cfg["queue_depth"] = qd
    cfg["o_direct"] = True
    cfg["verified"] = bool(verify)
    if cost_model is not None:
        cfg["cost_model"] = cost_model.summary()
    return Report.from_counts(TraceCounts.concat(parts, sel), mode="replay", plan=cfg["plan"], config=cfg,
                              latency_ns=latency)
