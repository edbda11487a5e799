"""The co-activation graph of one layer, built from statistics.

Why this module is thin: the graph itself (:class:`solvers.graph.CoactGraph`) is the solvers' input format and lives
in ``solvers/``, which never imports ``coact/`` (docs/ARCHITECTURE.md). What only the statistics side knows — how to
cut one layer out of a :class:`coact.stats.CoactStats` (dense or candidate), prune rare pairs and keep the bound on
what was dropped (``excluded_max``) — is :func:`layer_graph` here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from solvers.graph import WEIGHT_KINDS, CoactGraph, GraphError

__all__ = ["WEIGHT_KINDS", "CoactGraph", "GraphError", "layer_graph"]


def _prune(counts: sp.csr_array, min_count: int) -> tuple[sp.csr_array, np.ndarray]:
    """Drop stored pairs with count < ``min_count``; return the kept CSR and per row the largest dropped count."""
    n = counts.shape[0]
    drop = counts.data < min_count
    dropped_max = np.zeros(n, dtype=np.int64)
    if drop.any():
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(counts.indptr))
        np.maximum.at(dropped_max, rows[drop], counts.data[drop].astype(np.int64))
        keep = ~drop
        counts = sp.csr_array((counts.data[keep], (rows[keep], counts.indices[keep])), shape=(n, n))
    return counts, dropped_max


def layer_graph(stats: Any, layer: int, *, min_count: int = 1, block: int = 1024,
                top_k: int | None = None) -> CoactGraph:
    """The graph of layer ``layer`` of ``stats``, keeping pairs with count >= ``min_count`` (>= 1).

    ``stats`` is duck-typed: ``stats.layer(l)`` gives ``(freq, counts, n_tokens)`` — dense counts with the diagonal =
    freq, or (candidate statistics) a sparse symmetric matrix plus ``.excluded_max`` — and ``stats.meta`` (a dict).
    A larger ``min_count`` prunes rare pairs: they carry little signal (a pair seen once in 20k tokens is noise) and
    dominate the edge count, so pruning speeds every solver. Rows of a dense layer are sparsified in blocks of
    ``block`` so the temporary memory stays O(block x N) even for N = 16k. ``top_k`` turns a complete layer into its
    raw-count candidate graph (:meth:`solvers.graph.CoactGraph.candidate_graph`; ``coact stats`` ranks partners by
    :data:`coact.stats.DEFAULT_CANDIDATES` instead, see :func:`coact.bitcount.candidates`).

    Whenever pairs are missing (candidate statistics, ``min_count`` > 1, ``top_k``), the graph carries
    ``excluded_max[i]`` >= every dropped count of i, so the bounds of :mod:`solvers.bounds` stay proven.
    """
    min_count = int(min_count)
    if min_count < 1:
        raise GraphError(f"min_count must be >= 1, got {min_count}")
    ls = stats.layer(layer)
    freq, counts, n_tokens = ls[0], ls[1], ls[2]
    excluded = getattr(ls, "excluded_max", None)
    if sp.issparse(counts):
        csr = sp.csr_array(counts)
        csr.setdiag(0)
        csr.eliminate_zeros()
        csr.sort_indices()
        counts, dropped = _prune(csr, min_count)
        n = counts.shape[0]
    else:
        dense = counts
        n = dense.shape[0]
        indptr = np.zeros(n + 1, dtype=np.int64)
        idx_parts: list[np.ndarray] = []
        dat_parts: list[np.ndarray] = []
        dropped = np.zeros(n, dtype=np.int64)
        for r0 in range(0, n, block):
            r1 = min(r0 + block, n)
            sub = dense[r0:r1]
            mask = sub >= min_count
            ar = np.arange(r1 - r0)
            mask[ar, ar + r0] = False  # the diagonal is freq, not an edge
            if min_count > 1:
                low = np.where(mask, 0, sub).astype(np.int64)
                low[ar, ar + r0] = 0
                dropped[r0:r1] = low.max(axis=1, initial=0)
            rows, cols = np.nonzero(mask)
            idx_parts.append(cols.astype(np.int64))
            dat_parts.append(sub[rows, cols].astype(np.int64))
            indptr[r0 + 1 : r1 + 1] = np.cumsum(np.bincount(rows, minlength=r1 - r0))
            indptr[r0 + 1 : r1 + 1] += indptr[r0]
        indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
        data = np.concatenate(dat_parts) if dat_parts else np.zeros(0, np.int64)
        counts = sp.csr_array((data, indices, indptr), shape=(n, n))
    xm = None
    if excluded is not None and np.any(excluded) or np.any(dropped):
        xm = dropped if excluded is None else np.maximum(np.asarray(excluded, dtype=np.int64), dropped)
    meta = {k: stats.meta[k] for k in ("model_id", "sparsifier", "corpus") if k in stats.meta}
    meta.update(layer=int(layer), min_count=min_count)
    if getattr(stats, "top_k", None):
        meta["top_k"] = int(stats.top_k)
        meta["candidates"] = str(getattr(stats, "candidate_score", None) or "count")
    g = CoactGraph(counts=counts, freq=np.array(freq, dtype=np.int64), n_tokens=n_tokens, meta=meta,
                   excluded_max=xm)
    return g.candidate_graph(int(top_k)) if top_k is not None else g
