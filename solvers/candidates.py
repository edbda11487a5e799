"""Top-k candidates per row: the one routine behind every "k best partners of each neuron" in the solvers.

Why one routine: local search only tries moves towards a neuron's best partners (candidate-neighbour lists,
Johnson & McGeoch 1997, "The TSP: a case study in local optimization"), ``rcm`` and ``leiden`` run on the graph
of those partners, :meth:`solvers.graph.CoactGraph.top_k` exposes them, and the LP bound of :mod:`solvers.bounds`
picks per node its best incident edges (starting columns, and columns priced in). All of them are the same
selection: in each row of a CSR-like layout, the k entries with the largest score, ties by position in the row
(rows store neighbours in ascending id, so ties go to the smaller id). :func:`top_k_per_row` does it once, in one
compiled pass over the entries with a k-slot insertion buffer per row — O(nnz x k) time, O(n x k) memory, no sort
of the whole matrix (a lexsort of all ~1 M pairs of a dense layer costs more than the selection itself).

The LP bound's variant (select *edges* by a score that changes every pricing round, within a mask of edges not yet
in the LP) is the same routine on the node -> incident-edge layout: it passes the positions back and maps them to
edge ids itself.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numba import njit


@njit(cache=True, inline="always")
def insert_top_k(vals, ids, i, m, k, s, item):  # pragma: no cover - compiled
    """Offer ``item`` with score ``s`` to row i's k-slot buffer (``vals[i, :m]`` sorted descending, ``ids`` beside
    it; equal scores never overtake, so the earlier offer wins a tie); returns the new fill count. The one insertion
    step behind every per-row top-k here and in the LP bound's pricing (:mod:`solvers.bounds`)."""
    if k == 0 or (m == k and s <= vals[i, k - 1]):
        return m
    p = m if m < k else k - 1
    while p > 0 and vals[i, p - 1] < s:
        vals[i, p] = vals[i, p - 1]
        ids[i, p] = ids[i, p - 1]
        p -= 1
    vals[i, p] = s
    ids[i, p] = item
    return m + 1 if m < k else m


@njit(cache=True)
def _top_k_kernel(indptr, score, mask, k, pos, vals):
    """Fill pos[i, :] / vals[i, :] with row i's k best entries (score descending, ties by position); pos = -1 and
    vals = 0 where a row has fewer than k entries in the mask."""
    n = indptr.shape[0] - 1
    for i in range(n):
        m = 0  # filled slots, kept sorted by score descending; equal scores never overtake (earlier entry first)
        for e in range(indptr[i], indptr[i + 1]):
            if mask[e]:
                m = insert_top_k(vals, pos, i, m, k, score[e], e)


def top_k_per_row(indptr: np.ndarray, score: np.ndarray, k: int,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a CSR-like layout, the positions of its ``k`` highest-``score`` entries.

    Args:
        indptr: int64 [n + 1]; row i owns entries ``indptr[i]:indptr[i + 1]``.
        score: [nnz] entry scores (any real dtype; the values come back in that dtype).
        k: slots per row (>= 0).
        mask: optional bool [nnz]; entries where it is False are skipped.

    Returns:
        ``(pos, vals)``: int64 [n, k] entry positions, best first, ties by position, -1 padded; and [n, k] their
        scores, 0 padded.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    score = np.asarray(score)
    n = indptr.shape[0] - 1
    k = int(k)
    pos = np.full((n, k), -1, dtype=np.int64)
    vals = np.zeros((n, k), dtype=score.dtype)
    if k <= 0 or score.size == 0:
        return pos, vals
    m = np.ones(score.size, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    _top_k_kernel(indptr, score, m, k, pos, vals)
    return pos, vals


def top_k_neighbours(indptr: np.ndarray, indices: np.ndarray, score: np.ndarray, k: int,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """int64 [n, k]: per row of a CSR matrix, the column ids of its k best entries (see :func:`top_k_per_row`),
    -1 padded. With sorted column indices, ties go to the smaller id."""
    pos, _ = top_k_per_row(indptr, score, k, mask)
    out = np.full(pos.shape, -1, dtype=np.int64)
    ok = pos >= 0
    out[ok] = np.asarray(indices, dtype=np.int64)[pos[ok]]
    return out


def candidate_lists(graph_or_csr: Any, k: int = 10) -> np.ndarray:
    """int64 [n, k]: each neuron's k most co-activated partners (descending count, ties by smaller id), -1 padded.

    ``graph_or_csr``: a :class:`solvers.graph.CoactGraph` or an ``(indptr, indices, data)`` triple with sorted
    indices (:func:`solvers.graph.csr_arrays`). Only partners with a positive count are listed; ``k`` is at least 1.
    """
    if isinstance(graph_or_csr, tuple):
        indptr, indices, data = graph_or_csr
    else:
        c = graph_or_csr.counts
        indptr, indices, data = c.indptr, c.indices, c.data
    data = np.asarray(data)
    return top_k_neighbours(indptr, indices, data, max(1, int(k)), data > 0)


def candidate_pattern(graph: Any, k: int) -> sp.csr_array:
    """int64 0/1 symmetric [n, n]: pairs where one neuron is among the other's top-k partners (the *candidate
    graph*: the few pairs that matter for adjacency, instead of the ~N²/2 of a dense layer)."""
    n = int(graph.n)
    cand = candidate_lists(graph, int(k))
    rows = np.repeat(np.arange(n, dtype=np.int64), cand.shape[1])
    cols = cand.ravel()
    ok = cols >= 0
    keep = sp.csr_array((np.ones(int(ok.sum()), dtype=np.int64), (rows[ok], cols[ok])), shape=(n, n))
    return sp.csr_array(((keep + keep.T) > 0).astype(np.int64))
