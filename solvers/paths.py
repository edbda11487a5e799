"""Kruskal-style greedy path merging: the one union-find path-cover walk shared by ``ripple``, ``path-cover`` and
``leiden``.

Why one module: Ripple's greedy (Wang et al. 2024), the rounding of ``path-cover``'s LP (the greedy for maximum-weight
b-matching, Avis 1983) and ``leiden``'s chaining of communities are the same three steps — scan pairs best-first,
**link** a pair if both ends still have fewer than two path neighbours and lie in different paths (union-find; the
link would otherwise close a cycle), then **walk** the links into paths and lay the paths out one after another.
They differ only in the order of the pairs and in how finished paths are oriented and chained, which stays with
each solver.

State of a path cover: ``nbr`` int64 [n, 2] (the path neighbours, -1 = none), ``deg`` int64 [n], ``parent`` int64
[n] (union-find forest; :func:`new_cover`). Links are never undone, so the cover is always a forest of paths.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numba import njit


@njit(cache=True)
def find(parent: np.ndarray, x: int) -> int:
    """Union-find root of ``x``, halving the path on the way (near-constant amortised time)."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True)
def link(nbr: np.ndarray, deg: np.ndarray, parent: np.ndarray, a: int, b: int) -> bool:
    """Link ``a`` and ``b`` if both have degree < 2 and lie in different paths; return whether it linked."""
    if a == b or deg[a] >= 2 or deg[b] >= 2:
        return False
    ra = find(parent, a)
    rb = find(parent, b)
    if ra == rb:
        return False
    parent[ra] = rb
    nbr[a, deg[a]] = b
    deg[a] += 1
    nbr[b, deg[b]] = a
    deg[b] += 1
    return True


@njit(cache=True)
def merge_edges(nbr: np.ndarray, deg: np.ndarray, parent: np.ndarray, eu: np.ndarray, ev: np.ndarray) -> int:
    """:func:`link` the pairs ``(eu[t], ev[t])`` in order; stop early once the cover is one path (n - 1 links: no
    later pair could link). Updates the state in place; returns the number of links added."""
    n = deg.shape[0]
    links = 0
    for v in range(n):
        links += deg[v]
    links //= 2
    added = 0
    for t in range(eu.shape[0]):
        if links >= n - 1:
            break
        if link(nbr, deg, parent, eu[t], ev[t]):
            added += 1
            links += 1
    return added


@njit(cache=True)
def walk_paths(nbr: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paths of a cover: ``(order int64[n], starts int64[n_paths + 1])``, path i = ``order[starts[i]:starts[i+1]]``.

    Paths are found from their lower-id endpoint (degree <= 1; the links form a forest of paths, so every neuron is
    reached from one) in ascending id, and walked from it.
    """
    n = deg.shape[0]
    seen = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    starts = np.zeros(n + 1, dtype=np.int64)
    k = 0
    npaths = 0
    for s in range(n):
        if seen[s] or deg[s] == 2:
            continue
        starts[npaths] = k
        npaths += 1
        prev = -1
        cur = s
        while cur != -1:
            seen[cur] = True
            order[k] = cur
            k += 1
            nxt = nbr[cur, 0]
            if nxt == prev:
                nxt = nbr[cur, 1]
            prev = cur
            cur = nxt
    starts[npaths] = k
    return order[:k], starts[: npaths + 1]


def new_cover(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty path-cover state ``(nbr, deg, parent)`` for :func:`merge_edges`."""
    return np.full((n, 2), -1, dtype=np.int64), np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64)


def concat_paths(order: np.ndarray, starts: np.ndarray, sequence: np.ndarray) -> np.ndarray:
    """The paths of :func:`walk_paths` laid out one after another in the order ``sequence`` (path indices)."""
    seq = np.asarray(sequence, dtype=np.int64)
    if seq.size == 0:
        return order[:0].astype(np.int64)
    first = starts[:-1][seq]
    lens = (starts[1:] - starts[:-1])[seq]
    before = np.cumsum(lens) - lens
    idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(before, lens) + np.repeat(first, lens)
    return np.asarray(order, dtype=np.int64)[idx]


def cover_to_perm(nbr: np.ndarray, deg: np.ndarray) -> np.ndarray:
    """Concatenate the paths of a cover, longest first (ties: smallest first node)."""
    order, starts = walk_paths(nbr, deg)
    lens = np.diff(starts)
    return concat_paths(order, starts, np.lexsort((order[starts[:-1]], -lens)))


def edges_by_weight(counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All stored unordered pairs (u < v) of a symmetric matrix (or a CoactGraph), sorted by decreasing weight
    (ties: by u, then v)."""
    tri = sp.triu(sp.csr_array(getattr(counts, "counts", counts)), k=1).tocsr().tocoo()  # canonical: by (u, v)
    u = tri.row.astype(np.int64)
    v = tri.col.astype(np.int64)
    w = tri.data
    o = np.argsort(-w, kind="stable")
    return u[o], v[o], w[o]
