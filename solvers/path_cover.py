"""`path-cover`: maximum-weight path cover from a fractional 2-matching, then paths chained end to end.

A placement is a Hamiltonian path; dropping the "one path" requirement leaves a *path cover* (a subgraph with
every degree <= 2 and no cycle), which is what this solver builds first, then it joins the paths.

Method (exact steps):

1. **Fractional maximum-weight 2-matching with subtour cuts.** Solve the LP of :mod:`solvers.bounds` (degree <= 2
   per node, 0 <= x_e <= 1, at most N-1 edges, subtour cuts on the components of the support) with HiGHS, by
   column generation over all stored pairs (starting from every neuron's top-8 partners). Basic optimal solutions
   of the plain 2-matching LP are half-integral (Balinski 1965): x_e = 1 edges form paths and cycles, x_e = 1/2
   edges odd cycles; the cuts remove most cycles (on SmolLM2 layers ~1,510 of the ~1,535 path edges end up at
   x_e = 1). The LP gets ``lp_share`` of the time limit; the last solution in time is used.
2. **Rounding = greedy b-matching with cycle breaking** (the greedy for maximum-weight b-matching, Avis 1983
   "A survey of heuristics for the weighted matching problem", i.e. the Kruskal-style path merging also used by
   Ripple, Wang et al. 2024): scan edges in a given order and keep an edge if both ends still have degree < 2 and
   it does not close a cycle (union-find; the shared walk of :mod:`solvers.paths`). Within an integral cycle of
   the LP this drops exactly its lightest edge. Two orders are tried: (a) LP value descending, ties by count
   descending; (b) the LP's support edges by count descending.
3. **Chaining**: continue the same greedy over *all* stored pairs by decreasing count (only path endpoints can
   still take an edge, so this joins paths by their end-to-end weights); paths that share no co-activation are
   concatenated, longest first.

A third candidate is the plain greedy on counts (steps 2-3 without the LP = the Ripple greedy with count weights);
the best candidate (by the objective) is kept, so `path-cover` is never worse than that greedy. With ``polish``
(default) it is finished by the 2-opt/Or-opt local search of :mod:`solvers.local_search` in the time left (this is
better than the chain `path-cover+local-search`, whose even time split starves the LP).
``method="greedy"`` skips the LP. If HiGHS fails, only the greedy candidate remains.

Measured (N = 1,536 SmolLM2 layers): 0.1-0.5 % below the LP bound in ~5-10 s, vs ~2.3 % for the Ripple greedy.
At 7B shape (N = 11,008, candidate graph of the top-32 partners, ~350k pairs) one layer takes ~6-12 s, the LP
(warm-started HiGHS, :mod:`solvers.bounds`) most of it; on a candidate graph the LP runs without the dropped-pair
columns (``dropped_columns=False``), which would only thin out the pair values it rounds.
"""
from __future__ import annotations

import time

import numpy as np

from solvers.base import ProgressFn, SolverBase, register
from solvers.bounds import solve_two_matching_lp
from solvers.candidates import candidate_lists
from solvers.errors import SolverError
from solvers.graph import CoactGraph, csr_arrays
from solvers.local_search import improve, path_weight
from solvers.paths import cover_to_perm, edges_by_weight, merge_edges, new_cover

DEFAULT_TIME_LIMIT = 10.0


@register("path-cover")
class PathCoverSolver(SolverBase):
    """Max-weight path cover (LP 2-matching rounded by greedy b-matching with cycle breaking), paths chained.

    Parameters:
        method: ``"lp"`` (default) or ``"greedy"`` (no LP: the greedy on counts, then the polish if enabled).
        k: the LP's starting columns are every neuron's top-k partners (column generation adds what is needed).
        cuts: add subtour cuts to the LP before rounding (default; fewer LP cycles to break, better paths).
        lp_rounds: at most this many LP solves (pricing + cut rounds; see :mod:`solvers.bounds`).
        lp_share: fraction of the time limit the LP may use (the last LP solution in time is rounded).
        polish: finish with :mod:`solvers.local_search`'s 2-opt/Or-opt (usually < 0.2 s; +0.0-0.1 %).
        time_limit: default budget in seconds.
    """

    name = "path-cover"
    optimises = "max adjacency objective via a max-weight path cover (LP 2-matching + greedy b-matching), chained"

    def __init__(self, method: str = "lp", k: int = 8, cuts: bool = True, lp_rounds: int = 30,
                 lp_share: float = 0.6, polish: bool = True, time_limit: float = DEFAULT_TIME_LIMIT):
        if method not in ("lp", "greedy"):
            raise SolverError(f"path-cover method must be 'lp' or 'greedy', got {method!r}")
        self.method = method
        self.k = int(k)
        self.cuts = bool(cuts)
        self.lp_rounds = int(lp_rounds)
        self.lp_share = float(lp_share)
        self.polish = bool(polish)
        self.time_limit = float(time_limit)
        self.lp_status = ""

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        t0 = time.perf_counter()
        limit = float(time_limit)  # SolverBase passes self.time_limit when the caller gives none
        n = int(graph.n)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        u_all, v_all, _ = edges_by_weight(graph.counts)
        orders: list[tuple[np.ndarray, np.ndarray]] = []
        self.lp_status = "skipped"
        if self.method == "lp" and graph.counts.nnz:
            try:
                res = solve_two_matching_lp(graph, k=self.k, cuts=self.cuts, max_rounds=self.lp_rounds,
                                            time_limit=max(0.2, self.lp_share * limit), price_tol=1e-4,
                                            dropped_columns=False)
                self.lp_status = res.status
            except Exception as exc:  # HiGHS failure: fall back to the greedy (documented)
                res = None
                self.lp_status = f"failed: {exc}"
            if res is not None and res.x is not None and res.x.size:
                es = res.edges
                x = np.round(res.x * 2) / 2  # half-integral in theory; clean solver noise
                sel = np.flatnonzero(x > 0)
                su, sv, sw, sx = es.u[sel], es.v[sel], es.w[sel], x[sel]
                o = np.lexsort((sv, su, -sw, -sx))  # LP value first, then count
                orders.append((su[o], sv[o]))
                o = np.lexsort((sv, su, -sw))  # LP support by count
                orders.append((su[o], sv[o]))
        orders.append((u_all[:0], v_all[:0]))  # plain greedy on counts (a safety net, cheap)
        csr = csr_arrays(graph)
        best, best_obj = None, -1
        for ou, ov in orders:
            nbr, deg, parent = new_cover(n)
            merge_edges(nbr, deg, parent, ou, ov)
            # chaining: the same greedy over all pairs by count joins path ends
            merge_edges(nbr, deg, parent, u_all, v_all)
            perm = cover_to_perm(nbr, deg)
            obj = int(path_weight(perm, *csr))
            if obj > best_obj:
                best, best_obj = perm, obj
        if self.polish and n >= 3:
            left = max(0.0, limit - (time.perf_counter() - t0))
            best = improve(best, csr, candidate_lists(csr, 10), time_limit=left)
        return best
