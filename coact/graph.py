"""The co-activation graph of one layer, built from statistics.

Why this module is thin: the graph itself (:class:`solvers.graph.CoactGraph`) is the solvers' input format and lives
in ``solvers/``, which never imports ``coact/`` (docs/ARCHITECTURE.md). What only the statistics side knows — how to
cut one layer out of a :class:`coact.stats.CoactStats` and prune rare pairs — is :func:`layer_graph` here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from solvers.graph import WEIGHT_KINDS, CoactGraph, GraphError

__all__ = ["WEIGHT_KINDS", "CoactGraph", "GraphError", "layer_graph"]


def layer_graph(stats: Any, layer: int, *, min_count: int = 1, block: int = 1024) -> CoactGraph:
    """The graph of layer ``layer`` of ``stats``, keeping pairs with count >= ``min_count`` (>= 1).

    ``stats`` is duck-typed: ``stats.layer(l) -> (freq, dense_counts, n_tokens)`` (dense counts with the diagonal =
    freq) and ``stats.meta`` (a dict). A larger ``min_count`` prunes rare pairs: they carry little signal (a pair
    seen once in 20k tokens is noise) and dominate the edge count, so pruning speeds every solver. Rows are
    sparsified in blocks of ``block`` so the temporary memory stays O(block x N) even for N = 16k.
    """
    if int(min_count) < 1:
        raise GraphError(f"min_count must be >= 1, got {min_count}")
    freq, dense, n_tokens = stats.layer(layer)
    n = dense.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    idx_parts: list[np.ndarray] = []
    dat_parts: list[np.ndarray] = []
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        sub = dense[r0:r1]
        mask = sub >= int(min_count)
        ar = np.arange(r1 - r0)
        mask[ar, ar + r0] = False  # the diagonal is freq, not an edge
        rows, cols = np.nonzero(mask)
        idx_parts.append(cols.astype(np.int64))
        dat_parts.append(sub[rows, cols].astype(np.int64))
        indptr[r0 + 1 : r1 + 1] = np.cumsum(np.bincount(rows, minlength=r1 - r0))
        indptr[r0 + 1 : r1 + 1] += indptr[r0]
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    data = np.concatenate(dat_parts) if dat_parts else np.zeros(0, np.int64)
    counts = sp.csr_array((data, indices, indptr), shape=(n, n))
    meta = {k: stats.meta[k] for k in ("model_id", "sparsifier", "corpus") if k in stats.meta}
    meta.update(layer=int(layer), min_count=int(min_count))
    return CoactGraph(counts=counts, freq=np.array(freq, dtype=np.int64), n_tokens=n_tokens, meta=meta)
