"""Ripple / Neuralink greedy placement (Wang et al., "Ripple: Accelerating LLM Inference on Smartphones with
Correlation-Aware Neuron Management", 2024; extended as Neuralink, 2025) — docs/DESIGN.md §5's main baseline.

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

from typing import Any

import numpy as np

from solvers.base import ProgressFn, SolverBase, register
from solvers.errors import SolverError
from solvers.graph import CoactGraph, as_graph
from solvers.paths import concat_paths, merge_edges, new_cover, walk_paths


def _sorted_pairs(graph: CoactGraph, weight: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _chain_fragments(order: np.ndarray, starts: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Orient every fragment from its more active end (ties: smaller id) and chain the fragments by total activation
    count, descending (ties: by their first neuron id)."""
    first, last = order[starts[:-1]], order[starts[1:] - 1]
    flip = (freq[last] > freq[first]) | ((freq[last] == freq[first]) & (last < first))
    lens = np.diff(starts)
    for i in np.flatnonzero(flip & (lens > 1)):
        order[starts[i]:starts[i + 1]] = order[starts[i]:starts[i + 1]][::-1].copy()
    total = np.add.reduceat(freq[order], starts[:-1]) if lens.size else np.zeros(0, np.int64)
    return concat_paths(order, starts, np.lexsort((order[starts[:-1]], -total)))


@register("ripple")
class RippleSolver(SolverBase):
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

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        n = graph.n
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        u, v = _sorted_pairs(graph, self.weight, seed)
        nbr, deg, parent = new_cover(n)
        merge_edges(nbr, deg, parent, u.astype(np.int64), v.astype(np.int64))
        order, starts = walk_paths(nbr, deg)
        return _chain_fragments(order, starts, np.asarray(graph.freq, dtype=np.int64))


def default_start(counts: Any, seed: int = 0) -> np.ndarray:
    """The Ripple greedy placement: the start of the improvement solvers (``local-search``, ``ortools``,
    ``collapse-ls``) when they get no ``init`` — fast (well under a second per layer) and already close to the
    best known placements, so the search spends its time on the last few per cent."""
    return RippleSolver().solve(as_graph(counts), seed=seed)
