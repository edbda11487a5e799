"""Ripple / Neuralink greedy placement (Wang et al., "Ripple: Accelerating LLM Inference on Smartphones with
Correlation-Aware Neuron Management", 2024; extended as Neuralink, 2025) — DESIGN §5's main baseline.

The paper frames placement as a shortest Hamiltonian path: the distance between neurons i and j is 1 - P(ij), where
P(ij) is the share of co-activation counts, and a path visiting every neuron with small total distance puts
frequently co-activated neurons next to each other. Exact solution is NP-hard, so Ripple uses a Kruskal-style
greedy path merging:

1. take all pairs in increasing distance (= decreasing co-activation count, since 1 - c/total is strictly decreasing
   in c; we sort the integer counts, so float rounding can never create or break ties);
2. skip a pair if either neuron already has two path neighbours (degree 2) or both are already in the same path
   (union-find; linking them would close a cycle);
3. otherwise link them (merging two paths into one);
4. stop after N - 1 links (one Hamiltonian path) or when the pairs run out.

Pairs with equal counts are visited in a seeded random order (deterministic for a fixed ``seed``).

When the graph is sparse (pruned pairs, dead neurons) step 4 can end with several paths ("fragments", isolated
neurons being fragments of length 1). No edge can join the endpoints of two different final fragments — the greedy
would have linked it, because both endpoints had degree < 2 and lay in different paths when it was popped — so the
chaining order of the fragments cannot change the objective. We therefore chain them by **total activation frequency,
descending** (ties by first neuron id), each fragment walked from its more frequently active end. This extends the
frequency baseline (Neuralink-S) to fragments: hot material sits together at the front of the layer region and dead
neurons (frequency 0) go to the end, which helps held-out traces a little and never hurts the profiling objective.

Cost: one sort of the E stored pairs (numpy argsort of a packed integer key, O(E log E)) and a numba loop with
near-constant-time union-find, O(E alpha(N)). About 0.1-0.3 s for N = 1,536 with ~1.2M pairs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from solvers.base import SolverError, register

if TYPE_CHECKING:  # pragma: no cover
    from coact.graph import CoactGraph


@njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@njit(cache=True)
def _merge_paths(u: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy path merging over pairs already sorted best-first. Returns (nbr [n, 2] with -1 = none, deg [n], links)."""
    nbr = np.full((n, 2), -1, dtype=np.int64)
    deg = np.zeros(n, dtype=np.int64)
    parent = np.arange(n, dtype=np.int64)
    size = np.ones(n, dtype=np.int64)
    links = 0
    for e in range(u.shape[0]):
        if links >= n - 1:
            break
        a = u[e]
        b = v[e]
        if deg[a] >= 2 or deg[b] >= 2:
            continue
        ra = _find(parent, a)
        rb = _find(parent, b)
        if ra == rb:
            continue
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        nbr[a, deg[a]] = b
        deg[a] += 1
        nbr[b, deg[b]] = a
        deg[b] += 1
        links += 1
    return nbr, deg, links


@njit(cache=True)
def _walk_fragments(
    nbr: np.ndarray, deg: np.ndarray, freq: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Walk every path from an endpoint. Returns (order [n], frag_start, frag_len, frag_freq).

    Each fragment is laid out from its more active endpoint (ties: smaller id). The links form a forest of paths
    (union-find forbids cycles), so every neuron is reached from an endpoint of degree <= 1.
    """
    n = nbr.shape[0]
    order = np.empty(n, dtype=np.int64)
    visited = np.zeros(n, dtype=np.bool_)
    fs = np.empty(n, dtype=np.int64)
    fl = np.empty(n, dtype=np.int64)
    ff = np.empty(n, dtype=np.int64)
    nf = 0
    pos = 0
    for s in range(n):
        if visited[s] or deg[s] == 2:
            continue
        start = pos
        prev = -1
        cur = s
        tot = 0
        while cur != -1:
            visited[cur] = True
            order[pos] = cur
            pos += 1
            tot += freq[cur]
            nxt = nbr[cur, 0]
            if nxt == prev:
                nxt = nbr[cur, 1]
            prev = cur
            cur = nxt
        a = order[start]
        b = order[pos - 1]
        if freq[b] > freq[a] or (freq[b] == freq[a] and b < a):
            i = start
            j = pos - 1
            while i < j:
                t = order[i]
                order[i] = order[j]
                order[j] = t
                i += 1
                j -= 1
        fs[nf] = start
        fl[nf] = pos - start
        ff[nf] = tot
        nf += 1
    return order[:pos], fs[:nf], fl[:nf], ff[:nf]


def _sorted_pairs(graph: "CoactGraph", weight: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored pairs (u < v) best-first: decreasing weight, equal weights in a seeded random order."""
    u, v, c = graph.edges("count")
    m = u.size
    if m == 0:
        return u, v
    tie = np.random.default_rng(seed).permutation(m).astype(np.int64)
    if weight in ("p", "count", "distance"):
        # One packed int64 key (cheaper than lexsort): primary = decreasing count, secondary = random tie rank.
        cmax = int(c.max())
        if (cmax + 1) * m < 2**62:
            key = (cmax - c) * m + tie
            order = np.argsort(key)  # keys are unique (tie is a permutation): any sort is deterministic
        else:  # pragma: no cover - astronomically large counts
            order = np.lexsort((tie, -c))
    else:
        _, _, w = graph.edges(weight)
        order = np.lexsort((tie, -w))
    return u[order], v[order]


@register("ripple")
class RippleSolver:
    """Ripple's greedy Kruskal-style path merging on distance 1 - P(ij) (see the module docstring).

    Args:
        weight: pair ranking. ``"p"`` (default, Ripple: decreasing P(ij), i.e. decreasing count; ``"count"`` and
            ``"distance"`` are the same order) or ``"jaccard"`` (a normalised variant, c_ij / (f_i + f_j - c_ij)).

    Constructive and fast: ``time_limit`` is not needed (the greedy finishes in well under a second per layer for
    N = 1,536) and ``init`` is ignored.
    """

    name = "ripple"
    optimises = "greedy path merging on 1 - P(ij) (Ripple/Neuralink): approx. max sum of adjacent co-activation"

    def __init__(self, weight: str = "p") -> None:
        if weight not in ("p", "count", "distance", "jaccard"):
            raise SolverError(f"ripple: unknown weight {weight!r} (expected p, count, distance or jaccard)")
        self.weight = weight

    def solve(
        self,
        graph: "CoactGraph",
        *,
        seed: int = 0,
        time_limit: float | None = None,
        init: np.ndarray | None = None,
    ) -> np.ndarray:
        n = graph.n
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        u, v = _sorted_pairs(graph, self.weight, seed)
        nbr, deg, _ = _merge_paths(u.astype(np.int64), v.astype(np.int64), n)
        order, fs, fl, ff = _walk_fragments(nbr, deg, np.asarray(graph.freq, dtype=np.int64))
        # Chain fragments: total frequency descending, ties by their first neuron id.
        fo = np.lexsort((order[fs], -ff))
        lens = fl[fo]
        before = np.cumsum(lens) - lens
        idx = np.arange(n, dtype=np.int64) - np.repeat(before, lens) + np.repeat(fs[fo], lens)
        return order[idx]
