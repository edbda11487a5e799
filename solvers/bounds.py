"""Proven upper bounds on the adjacency objective (docs/DESIGN.md §2, §6 "within 2 % of a
proven upper bound").

The objective of a placement is the weight of a Hamiltonian path in the co-activation graph. Every Hamiltonian
path is a set of N-1 edges in which every node has degree <= 2 and every node subset S spans at most |S|-1 edges
(no cycles). Dropping integrality gives the LP

    maximise   sum_e c_e x_e
    subject to sum_{e ∋ v} x_e <= 2              for every node v           (fractional 2-matching)
               sum_e x_e <= N - 1
               sum_{e ⊆ S} x_e <= |S| - 1        for the subsets S found by separation (subtour cuts)
               0 <= x_e <= 1

whose optimum bounds the objective from above (the 2-matching relaxation of the TSP, Held & Karp 1970 with
subtour elimination added by cutting planes as in Dantzig, Fulkerson & Johnson 1954). Separation is the cheap
heuristic one: connected components of the support graph {e : x_e > eps} and of {e : x_e > 1/2}; a component
whose internal LP weight exceeds |S| - 1 gives a violated cut. The LP is solved by HiGHS through
``scipy.optimize.linprog`` with a sparse constraint matrix.

**Large graphs: column generation.** A dense co-activation graph has ~N²/2 pairs (1.1 M for N = 1536), too many
for one LP. The LP starts on the union of every node's top-k partners; after each solve the duals price *every*
stored pair and the pairs with positive reduced cost join the LP (see :func:`solve_two_matching_lp`). When none is
left, the LP optimum over all pairs has been reached. No pair is ever dropped from the bound: each round's
Lagrangian value (below) already sums the positive reduced costs of every pair outside the LP.

**Rigour against solver tolerances.** The returned number is not HiGHS's primal objective but the Lagrangian
(weak-duality) bound built from the dual values λ >= 0 HiGHS reports:
``2 sum_v λ_v + (N-1) μ + sum_S (|S|-1) π_S + sum_e max(0, c_e - λ_u - λ_v - μ - sum_{S ⊇ e} π_S)`` over all
stored pairs, which is an upper bound for *any* λ, μ, π >= 0, so an inexact LP solve can only make the bound
looser, never invalid. Since objectives are integers, the result is rounded down.

``method="degree"`` gives the trivial bound sum_v (top1_v + top2_v) / 2 (each node touches at most two path
edges); it is also the fallback when HiGHS fails or runs out of time.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.sparse.csgraph import connected_components

from solvers.candidates import top_k_per_row
from solvers.errors import SolverError
from solvers.graph import as_graph

#: Initial LP edge set: the union of every node's top-k partners (column generation adds the rest as needed).
DEFAULT_K = 8
log = logging.getLogger(__name__)


@dataclass
class EdgeSet:
    """Unordered edges u < v (int64) with their counts."""

    n: int
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray


def all_edges(counts: Any) -> EdgeSet:
    """Every stored unordered pair once (u < v), sorted by (u, v). ``counts``: anything :func:`as_graph` takes."""
    g = as_graph(counts)
    u, v, w = g.edges("count")
    return EdgeSet(g.n, u, v, w.astype(np.int64))


def incidence(es: EdgeSet) -> tuple[np.ndarray, np.ndarray]:
    """(ptr int64[n+1], eids int64[2m]): the edges incident to node v are eids[ptr[v]:ptr[v+1]] (first those where v
    is the smaller end, then those where it is the larger; each group by ascending edge id)."""
    node = np.concatenate([es.u, es.v])
    order = np.argsort(node, kind="stable")
    eids = np.concatenate([np.arange(es.u.size, dtype=np.int64)] * 2)[order]
    ptr = np.zeros(es.n + 1, dtype=np.int64)
    np.cumsum(np.bincount(node, minlength=es.n), out=ptr[1:])
    return ptr, eids


def _incident_top(es: EdgeSet, inc: tuple[np.ndarray, np.ndarray], score: np.ndarray, r: int,
                  mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node, its ``r`` best-``score`` incident edges within ``mask`` (ties: incidence order): the shared top-k
    routine (:func:`solvers.candidates.top_k_per_row`) on the node -> incident-edge layout. Returns (edge ids
    selected by at least one end, scores [n, r] best first, 0 padded)."""
    ptr, eids = inc
    pos, vals = top_k_per_row(ptr, np.asarray(score, dtype=np.float64)[eids], int(r), np.asarray(mask)[eids])
    sel = np.zeros(es.u.size, dtype=np.bool_)
    sel[eids[pos[pos >= 0]]] = True
    return np.flatnonzero(sel), vals


def per_node_top(es: EdgeSet, score: np.ndarray, r: int, mask: np.ndarray | None = None,
                 inc: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Ids of the edges that are among the `r` highest-`score` edges (within `mask`) of one of their ends
    (ties: by :func:`incidence` order). The score changes every pricing round, which is why this selects on the
    node -> incident-edge layout rather than on a fixed neighbour matrix."""
    if es.u.size == 0 or r <= 0:
        return np.zeros(0, dtype=np.int64)
    m = np.ones(es.u.size, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    return _incident_top(es, incidence(es) if inc is None else inc, score, r, m)[0]


def _second_largest(es: EdgeSet, inc: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Second largest incident weight of every node (0 if fewer than two edges)."""
    _, vals = _incident_top(es, incidence(es) if inc is None else inc, es.w, 2, np.ones(es.u.size, dtype=np.bool_))
    return vals[:, 1].copy()


def degree_bound(counts: Any) -> float:
    """sum_v (largest + second largest count at v) / 2, also capped by the N-1 heaviest edges."""
    c = as_graph(counts).counts
    n = c.shape[0]
    if n < 2 or c.nnz == 0:
        return 0.0
    tot = 0
    for i in range(n):
        d = c.data[c.indptr[i]:c.indptr[i + 1]]
        if d.size > 2:
            d = np.partition(d, d.size - 2)[-2:]
        tot += int(d.sum())
    heavy = np.sort(sp.triu(c, k=1).data)[::-1][: n - 1].sum()
    return float(min(tot // 2, int(heavy)))


@dataclass
class LPResult:
    """The LP bound and the data behind it (used by :mod:`solvers.path_cover`).

    `x` is the LP solution on the edges of `edges` (all stored pairs; 0 for edges never priced in).
    """

    bound: float
    x: np.ndarray | None
    edges: EdgeSet
    n_cuts: int
    rounds: int
    n_active: int
    status: str


def solve_two_matching_lp(
    counts: Any,
    *,
    k: int | None = DEFAULT_K,
    cuts: bool = True,
    max_rounds: int = 40,
    time_limit: float | None = 60.0,
    price_r: int = 4,
    price_tol: float = 1e-5,
    stall_rounds: int = 8,
) -> LPResult:
    """Solve the (cut-strengthened) fractional 2-matching LP over *all* stored pairs by column generation.

    The LP starts on the union of every node's top-k partners (all pairs if `k` is None). After each HiGHS solve,
    the duals (λ_v >= 0 per degree row, μ >= 0 for the edge-count row, π_S >= 0 per cut) price every stored pair:
    reduced cost r_e = c_e - λ_u - λ_v - μ - sum_{S ⊇ e} π_S. The Lagrangian value
    ``2 sum λ + (N-1) μ + sum π_S (|S|-1) + sum_e max(0, r_e)`` is an upper bound on every Hamiltonian path for any
    non-negative duals (weak duality over the full edge set), so each round yields a valid bound; the best (lowest)
    is kept. Pairs with r_e > 0 join the LP (per node, its `price_r` largest reduced costs); pricing stops when the
    Lagrangian value is within max(1, `price_tol` x bound) of the LP value (objectives are integers). Then the LP
    optimum over all pairs is reached (to that tolerance) and subtour cuts are separated (if `cuts`), until nothing
    is violated, `max_rounds`, `time_limit`, or `stall_rounds` rounds without the bound dropping by
    max(1, 1e-5 x bound).
    """
    t0 = time.perf_counter()
    graph = as_graph(counts)
    es = all_edges(graph)
    n = es.n
    m_all = es.u.size
    if n < 2 or m_all == 0:
        return LPResult(0.0, np.zeros(m_all), es, 0, 0, 0, "trivial")
    wf = es.w.astype(np.float64)
    scale = float(wf.max())
    inc = None
    if k is None:
        active = np.arange(m_all)
    else:
        # Starting columns: per node, the top-k pairs by w_uv - (s_u + s_v) / 2 with s = second-largest incident
        # weight, a cheap guess of the LP duals (plain top-k by count would all point at a few hub neurons).
        inc = incidence(es)
        s2 = _second_largest(es, inc)
        active = per_node_top(es, wf - 0.5 * (s2[es.u] + s2[es.v]), int(k), inc=inc)
    cut_sets: list[np.ndarray] = []  # bool[n] membership of each cut
    seen: set[bytes] = set()
    best = math.inf
    x_full = None
    status = "ok"
    rounds = 0
    last_gain = 0
    while True:
        rounds += 1
        m = active.size
        au, av = es.u[active], es.v[active]
        er = np.arange(m, dtype=np.int64)
        rows = [au, av, np.full(m, n, dtype=np.int64)]
        cols = [er, er, er]
        for ci, S in enumerate(cut_sets):
            inside = np.flatnonzero(S[au] & S[av])
            rows.append(np.full(inside.size, n + 1 + ci, dtype=np.int64))
            cols.append(inside)
        nrows = n + 1 + len(cut_sets)
        r_ = np.concatenate(rows)
        A = sp.csr_array((np.ones(r_.size), (r_, np.concatenate(cols))), shape=(nrows, m))
        b = np.concatenate([np.full(n, 2.0), [n - 1.0], [float(S.sum() - 1) for S in cut_sets]])
        opts = {"presolve": True}
        if time_limit is not None:
            left = time_limit - (time.perf_counter() - t0)
            if left <= 0.05 and math.isfinite(best):
                status = "time"
                break
            opts["time_limit"] = max(left, 0.05)
        # costs scaled to max 1 (HiGHS runs ~2x faster on this LP than with raw counts); duals scaled back
        _t = time.perf_counter()
        res = linprog(-wf[active] / scale, A_ub=A, b_ub=b, bounds=(0.0, 1.0), method="highs", options=opts)
        if res.status != 0 or res.x is None or getattr(res, "ineqlin", None) is None:
            status = f"highs status {res.status}: {res.message}"
            break
        y = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0) * scale
        log.debug("round %d: %d columns, %d cuts, LP %.2fs, value %.1f", rounds, m, len(cut_sets),
                  time.perf_counter() - _t, -res.fun * scale)
        lam, mu, pi = y[:n], y[n], y[n + 1:]
        red = wf - lam[es.u] - lam[es.v] - mu
        # cut duals only lower reduced costs, and only positive ones matter (bound and pricing)
        hot = np.flatnonzero(red > 0)
        for ci in np.flatnonzero(pi > 0):
            S = cut_sets[ci]
            red[hot[S[es.u[hot]] & S[es.v[hot]]]] -= pi[ci]
        ub = 2.0 * lam.sum() + (n - 1) * mu + sum(float(pi[i]) * (cut_sets[i].sum() - 1) for i in range(pi.size))
        ub += float(np.maximum(red, 0.0).sum())
        if ub < best - max(1.0, 1e-5 * ub):
            last_gain = rounds
        best = min(best, ub)
        x_full = np.zeros(m_all)
        x_full[active] = res.x
        if rounds >= max_rounds:
            break
        if rounds - last_gain >= stall_rounds:
            status = "stalled"
            break
        # pricing
        in_active = np.zeros(m_all, dtype=bool)
        in_active[active] = True
        lp_val = -float(res.fun) * scale
        log.debug("  Lagrangian bound %.1f, LP %.1f", ub, lp_val)
        pos = np.flatnonzero((red > 1e-7 * scale) & ~in_active)
        if pos.size and ub - lp_val > max(1.0, price_tol * abs(ub)):
            # per node, its `price_r` most positive reduced costs (global top-r would pile onto a few hubs)
            pos = per_node_top(es, red, price_r, (red > 1e-7 * scale) & ~in_active, inc=inc)
            active = np.sort(np.concatenate([active, pos]))
            continue
        if not cuts:
            break
        # separation on the support graph and on {x > 1/2}
        x = res.x
        new = 0
        for thr in (1e-6, 0.5):
            sel = x > thr
            if not sel.any():
                continue
            gs = sp.csr_array((np.ones(int(sel.sum())), (au[sel], av[sel])), shape=(n, n))
            ncomp, lab = connected_components(gs, directed=False)
            size = np.bincount(lab, minlength=ncomp)
            inside = lab[au] == lab[av]
            wsum = np.bincount(lab[au][inside], weights=x[inside], minlength=ncomp)
            for comp in np.flatnonzero((size >= 3) & (wsum > size - 1 + 1e-6)):
                S = lab == comp
                key = np.packbits(S).tobytes()
                if key in seen:
                    continue
                seen.add(key)
                cut_sets.append(S)
                new += 1
        if new == 0:
            break
    if not math.isfinite(best):
        return LPResult(degree_bound(graph), None, es, len(cut_sets), rounds, int(active.size), status)
    bound = math.floor(best * (1 + 1e-9) + 1e-6)  # float summation slack before rounding down
    return LPResult(float(min(bound, degree_bound(graph))), x_full, es, len(cut_sets), rounds, int(active.size),
                    status)


def adjacency_upper_bound(counts: Any, *, method: str = "lp", k: int | None = DEFAULT_K, cuts: bool = True,
                          max_rounds: int = 40, time_limit: float | None = 60.0) -> float:
    """A proven upper bound on `objective(perm, counts)` over all permutations of the neurons.

    Args:
        counts: a :class:`CoactGraph` or a symmetric count matrix (anything :func:`as_graph` takes).
        method: ``"lp"`` (fractional 2-matching LP over all pairs with subtour cuts, HiGHS, column generation;
            see the module docstring) or ``"degree"`` (sum of each node's two heaviest counts, halved).
        k: partners per node in the LP's starting edge set (speed only; the bound covers all pairs);
            None = start with every pair.
        cuts: add subtour-elimination cuts (tighter; a few more LP solves).
        max_rounds: LP solves at most (pricing + cut rounds).
        time_limit: seconds; a truncated run still returns a valid (looser) bound.
    """
    if method == "degree":
        return degree_bound(counts)
    if method != "lp":
        raise SolverError(f"unknown bound method {method!r}; expected 'lp' or 'degree'")
    return solve_two_matching_lp(counts, k=k, cuts=cuts, max_rounds=max_rounds, time_limit=time_limit).bound


def gap_to_bound(obj: float, bound: float) -> float:
    """How far `obj` is below `bound`, in percent of the bound (0 when the bound is 0)."""
    if bound <= 0:
        return 0.0
    return 100.0 * (float(bound) - float(obj)) / float(bound)
