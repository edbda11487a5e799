"""Held-Karp (1-tree Lagrangian) upper bound on the maximum-weight Hamiltonian path, over a full count matrix.

WHY: the column-generation certificate (:func:`solvers.bounds.solve_two_matching_lp` with ``exact=``) only gives a
tight number once its LP has converged over all N²/2 pairs; at N = 11,008 it often stalls, and its bound between
rounds charges *every* pair with a positive reduced cost. The Held & Karp (1970, 1971) bound needs no LP: it is valid
for ANY multipliers λ, each evaluation is one maximum spanning tree of the complete graph (dense Prim, O(N²), no
edge list), and subgradient steps drive λ towards the optimum, which equals the subtour-elimination LP. A run
stopped at any iteration still returns a proven bound (the lowest value seen).

**The bound.** Add a dummy node d joined to every neuron by a weight-0 edge. A Hamiltonian path P of the neurons
plus the two dummy edges to its ends is a Hamiltonian tour H of the N+1 nodes, with W(H) = W(P). Every node of a
tour has degree 2, so for any real λ (λ_d = 0):

    W(P) = sum_{e ∈ H} (c_e - λ_u - λ_v) + 2 sum_v λ_v.

H is a *1-tree* w.r.t. d (removing d leaves the path, a spanning tree of the neurons; d has two edges), so

    W(P) <= L(λ) := 2 sum_v λ_v + maxST(c_uv - λ_u - λ_v) - λ_a - λ_b,

where maxST is the maximum spanning tree of the neurons and a, b are the two neurons of smallest λ (d's two best
edges weigh -λ_a, -λ_b). λ may have either sign. L(λ) is convex in λ with subgradient g_v = 2 - deg_v (degrees in
the maximising 1-tree); if g = 0 the 1-tree is a Hamiltonian path and L(λ) is its weight (optimal).

**Rigour.** Prim's algorithm is exact; float64 rounding of ~N terms of size <= 2^32 is far below the relative slack
of 1e-9 used before rounding down (objectives are integers), as in :mod:`solvers.bounds`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from solvers.errors import SolverError


@njit(cache=True, boundscheck=False)
def _max_tree(C, lam, deg, par):  # pragma: no cover - compiled
    """Maximum spanning tree of the complete graph on n = lam.size nodes, edge (u, v) weighing C[u, v] - lam[u] -
    lam[v] (dense Prim, one pass over the remaining nodes per added node). Fills deg (tree degrees) and par (parent,
    -1 for the root 0); returns the tree's weight."""
    n = lam.size
    best = np.empty(n)
    rem = np.empty(n - 1, dtype=np.int64)
    for v in range(n):
        deg[v] = 0
        par[v] = -1
    nxt = -1
    bv = -np.inf
    l0 = lam[0]
    for k in range(n - 1):
        v = k + 1
        rem[k] = v
        w = np.float64(C[0, v]) - l0 - lam[v]
        best[v] = w
        par[v] = 0
        if w > bv:
            bv = w
            nxt = k
    m = n - 1
    total = 0.0
    while m > 0:
        u = rem[nxt]
        total += best[u]
        deg[u] += 1
        deg[par[u]] += 1
        m -= 1
        rem[nxt] = rem[m]
        lu = lam[u]
        bv = -np.inf
        nxt = -1
        for k in range(m):
            v = rem[k]
            w = np.float64(C[u, v]) - lu - lam[v]
            if w > best[v]:
                best[v] = w
                par[v] = u
            if best[v] > bv:
                bv = best[v]
                nxt = k
    return total


def one_tree_value(C: Any, lam: np.ndarray) -> tuple[float, np.ndarray]:
    """(L(λ), 1-tree degrees incl. the dummy edges) of the module docstring; L(λ) is an upper bound for every λ."""
    C = np.asarray(C)
    lam = np.ascontiguousarray(lam, dtype=np.float64)
    n = lam.size
    deg = np.zeros(n, dtype=np.int64)
    if n == 1:
        return 2.0 * float(lam[0]) - 2.0 * float(lam[0]), deg + 2
    par = np.empty(n, dtype=np.int64)
    tree = _max_tree(C, lam, deg, par)
    ab = np.argpartition(lam, 1)[:2]
    deg[ab] += 1
    return 2.0 * float(lam.sum()) + float(tree) - float(lam[ab].sum()), deg


@dataclass
class HeldKarpResult:
    """The proven bound (lowest L(λ) seen, rounded down), the λ that gave it, and how the run ended."""

    bound: float
    lam: np.ndarray
    iterations: int
    status: str  # "path" (1-tree is a path: optimal), "gap" (within tol of `lower`), "iterations", "time", "step"
    seconds: float
    history: list[float] = field(default_factory=list)


def held_karp_bound(C: Any, lam0: np.ndarray | None = None, *, lower: float | None = None, max_iter: int = 300,
                    time_limit: float | None = None, alpha: float = 1.0, patience: int = 5,
                    tol: float = 1e-4) -> HeldKarpResult:
    """Minimise L(λ) by projected-free subgradient steps (Polyak step towards ``lower``, halved after ``patience``
    iterations without a new best) from ``lam0`` (e.g. the LP duals :attr:`solvers.bounds.LPResult.duals`; default:
    half of each neuron's second-largest count, a cheap guess of the dual).

    ``C``: the full symmetric count matrix [N, N] (any integer dtype; the diagonal is ignored). ``lower``: a known
    objective (e.g. the solver's placement); only the step size and the early stop use it, never the bound. The run
    stops when the bound is within max(1, tol x bound) of ``lower``, after ``max_iter`` evaluations, after
    ``time_limit`` seconds, or when the step has shrunk to nothing. Any stop returns a proven bound."""
    t0 = time.perf_counter()
    C = np.asarray(C)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or not np.issubdtype(C.dtype, np.integer):
        raise SolverError(f"Held-Karp needs a square integer count matrix, got {C.dtype} {C.shape}")
    n = C.shape[0]
    if n < 2:
        return HeldKarpResult(0.0, np.zeros(n), 0, "path", 0.0)
    if lam0 is None:
        # half of each neuron's second-largest off-diagonal count (what a path edge at v is roughly worth)
        off = np.array(C, dtype=np.float64, copy=True)
        np.fill_diagonal(off, -np.inf)
        lam = 0.5 * np.partition(off, n - 2, axis=1)[:, n - 2] if n > 2 else np.zeros(n)
        lam[~np.isfinite(lam)] = 0.0
        del off
    else:
        lam = np.array(lam0, dtype=np.float64, copy=True)
        if lam.shape != (n,):
            raise SolverError(f"lam0 must have shape ({n},), got {lam.shape}")
    best, best_lam, best_g = math.inf, lam.copy(), None
    hist: list[float] = []
    status, it, stale = "iterations", 0, 0
    target = None if lower is None else float(lower)
    while it < max_iter:
        if time_limit is not None and it > 0 and time.perf_counter() - t0 >= time_limit:
            status = "time"
            break
        it += 1
        val, deg = one_tree_value(C, lam)
        hist.append(val)
        g = (2 - deg).astype(np.float64)
        stale = 0 if val < best - max(1.0, 1e-7 * abs(val)) else stale + 1
        if val < best:
            best, best_lam, best_g = val, lam.copy(), g
        if not g.any():
            status = "path"
            break
        if target is not None and best - target <= max(1.0, tol * abs(best)):
            status = "gap"
            break
        if stale >= patience:  # halve the step and go on from the best multipliers
            alpha *= 0.5
            stale = 0
            if alpha < 1e-4:
                status = "step"
                break
            val, lam, g = best, best_lam.copy(), best_g
        tgt = target if target is not None else 0.99 * best
        step = alpha * max(val - tgt, 1e-3 * abs(val) / n) / float(g @ g)
        lam = lam - step * g
    bound = math.floor(best * (1 + 1e-9) + 1e-6)
    return HeldKarpResult(float(bound), best_lam, it, status, time.perf_counter() - t0, hist)
