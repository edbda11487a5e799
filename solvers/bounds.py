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
whose internal LP weight exceeds |S| - 1 gives a violated cut. The LP is solved by HiGHS, kept alive between
rounds (columns and cut rows are added and each solve warm-starts from the previous basis: ~3-15 s per 11,008-neuron
candidate layer, where a cold ``scipy.optimize.linprog`` solve per round took ~200 s); ``linprog`` is the fallback.

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

**Candidate graphs (dropped edges).** At 7B scale the statistics keep only each neuron's top-k partners (a
*candidate graph*, :attr:`solvers.graph.CoactGraph.excluded_max`): every pair (u, v) that is not stored has
``c_uv <= b_uv := min(xm_u, xm_v)`` with ``xm = excluded_max``. Both bounds stay upper bounds on the objective of
*every* permutation on the *full* graph:

*Degree bound.* Any Hamiltonian path P uses at most two edges at each node v, each either stored (weight one of
v's stored counts) or not (weight <= xm_v). So the two path edges at v weigh at most top2_v := the sum of the two
largest values of the multiset {stored counts at v} ∪ {xm_v, xm_v}, and since every edge has two ends,
W(P) = 1/2 sum_v (weight of P's edges at v) <= 1/2 sum_v top2_v.  (The "N-1 heaviest edges" cap of the complete
case is only applied when nothing was dropped.)

*LP (Lagrangian) bound plus a correction.* Let x be the 0/1 incidence vector of P over *all* pairs, and λ, μ, π >= 0
any duals (here: HiGHS's duals of the LP on the stored pairs). Since x satisfies the degree, edge-count and subtour
constraints, W(P) = sum_e c_e x_e <= L0 + sum_e r_e x_e with L0 = 2 sum λ + (N-1) μ + sum_S (|S|-1) π_S and
r_e = c_e - λ_u - λ_v - μ - sum_{S ⊇ e} π_S; hence W(P) <= L0 + sum_{stored e} max(0, r_e) + D, where D bounds
sum_{e ∈ P, e not stored} max(0, r_e). For a non-stored e = (u, v), π >= 0 gives
r_e <= b_uv - λ_u - λ_v - μ =: ρ_uv, and two per-node bounds hold:
  (a) b_uv <= (xm_u + xm_v)/2, so max(0, ρ_uv) <= g_u + g_v with g_v = max(0, xm_v/2 - λ_v - μ/2);
  (b) b_uv <= xm_u and λ_v >= λ_min, so max(0, ρ_uv) <= h_u with h_u = max(0, xm_u - λ_u - λ_min - μ), and
      likewise <= h_v; charge the edge to either end.
P has at most two edges at every node, so D <= min(2 sum_v g_v, 2 sum_v h_v) =: correction. The returned bound is
``floor(min over rounds of (Lagrangian value + correction))``, capped by the degree bound above; with nothing dropped
(xm = 0) the correction is 0 and everything is exactly as before. The correction is small when the duals are large
compared with the best excluded weights (λ_v is roughly half of the weight of v's path edges, xm_v is v's (k+1)-th
best count), which is why a modest k (16-32) keeps the bound tight.

**Why that is not enough on flat graphs, and the exact-count certificate.** Any bound that knows only the stored
pairs and ``excluded_max`` must also hold for the *worst completion* (every dropped pair (u, v) weighing
min(xm_u, xm_v)). When a neuron's (k+1)-th partner co-fires almost as often as its first (the synthetic 7B
workload: medians 3,534 vs 3,673), that completion has a Hamiltonian path of about sum_v xm_v, so such a bound is
stuck near the degree bound (N = 2,048 synthetic layer: 3.70 M for the candidate LP, 2.08 M for the dense LP,
path-cover on the candidate graph 2.077 M on the dense counts: the gap was the bound, not the solver). The way out
is to look at the exact counts once more: ``solve_two_matching_lp(graph, exact=C)`` takes the layer's full count
matrix C (any integer dtype, e.g. recounted from the trace by ``coact.bitcount``; only ~N² x 4 bytes, never a CSR
of all pairs) and bounds what the pairs NOT in the LP's edge set add by
D = min(sum of max(0, ρ_uv), 1/2 sum_v (v's two largest max(0, ρ_uv))), ρ_uv = C_uv - λ_u - λ_v - μ (the second
form because a path has at most two edges at each node), or by the ``excluded_max`` correction when that is smaller
(it still covers every pair outside the candidate graph). D comes from one compiled O(N²) pass per round
(:func:`_dense_pass`), which also prices those pairs: each node's ``price_r`` best positive ones join the edge set
and the LP (column generation over the full matrix, as for a dense graph but without materialising it). Cut duals are left out of D (π >= 0 only
lowers reduced costs), so the Lagrangian argument above holds as is and the bound is proven for the full graph.

**When the certificate does not converge.** :attr:`LPResult.duals` (degree duals of the best round, μ folded in)
warm-start the Held-Karp 1-tree bound of :mod:`solvers.held_karp`, which is proven for ANY multipliers and needs
only the dense count matrix: a run that hit the time limit still ends with a tight number (synthetic 7B layer 1,
LP stopped after 4 rounds at 107.7 M, Held-Karp from its duals 55.7 M in 29 iterations). Where the LP did converge
(layer 23: 70.04 M) the 1-tree value at its duals equals the LP bound and subgradient steps do not lower it, i.e.
the subtour LP is reached. ``blossoms=True`` adds 2-matching blossom inequalities (:class:`_Blossoms`, odd-component
heuristic) for the half-integral odd cycles the subtour cuts leave; proven (brute-force tests), it closes small
cases but moved layer 23 by only 104 (70,044,400 -> 70,044,296), so it is off by default.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from numba import njit
from scipy.sparse.csgraph import connected_components

try:  # scipy's bundled HiGHS binding (private API; without it the LP falls back to linprog, see _highs_core)
    from scipy.optimize._highspy import _core as _HIGHS_CORE
except ImportError:  # pragma: no cover - other scipy versions
    _HIGHS_CORE = None

from common.executors import get_executor
from common.progress import ProgressFn
from solvers.candidates import insert_top_k, top_k_per_row
from solvers.errors import SolverError
from solvers.graph import as_graph, resolve_graph

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


def _excluded(graph: Any) -> np.ndarray | None:
    """``excluded_max`` of a candidate graph, None for a complete one (see the module docstring)."""
    xm = getattr(graph, "excluded_max", None)
    return None if xm is None or not np.any(xm > 0) else np.asarray(xm, dtype=np.int64)


def degree_bound(counts: Any) -> float:
    """sum_v (largest + second largest count at v) / 2 (a dropped pair at v counts as ``excluded_max[v]``, see the
    module docstring), also capped by the N-1 heaviest edges when nothing was dropped."""
    g = as_graph(counts)
    c = g.counts
    n = c.shape[0]
    xm = _excluded(g)
    if n < 2 or (c.nnz == 0 and xm is None):
        return 0.0
    _, vals = top_k_per_row(np.asarray(c.indptr, dtype=np.int64), np.asarray(c.data, dtype=np.int64), 2)
    if xm is not None:  # two more candidates per node: xm_v, xm_v
        both = np.concatenate([vals, np.repeat(xm[:, None], 2, axis=1)], axis=1)
        vals = -np.sort(-both, axis=1)[:, :2]
    tot = int(vals.sum())
    if xm is not None:
        return float(tot // 2)
    heavy = np.sort(sp.triu(c, k=1).data)[::-1][: n - 1].sum()
    return float(min(tot // 2, int(heavy)))


def excluded_correction(xm: np.ndarray | None, lam: np.ndarray, mu: float) -> float:
    """D of the module docstring: an upper bound on what the dropped pairs of a candidate graph can add to the
    Lagrangian value with degree duals ``lam`` and edge-count dual ``mu`` (0 for a complete graph)."""
    if xm is None:
        return 0.0
    x = xm.astype(np.float64)
    g = np.maximum(0.0, x - 2.0 * lam - mu).sum()  # = 2 sum_v g_v
    h = 2.0 * np.maximum(0.0, x - lam - float(lam.min(initial=0.0)) - mu).sum()
    return float(min(g, h))


@njit(cache=True, boundscheck=False)
def _dense_pass(C, n, lam, mu, indptr, indices, r, cand, vals):  # pragma: no cover - compiled
    """Over every pair (i, j), i != j, that is NOT in the CSR pattern (indptr, indices) of the LP's edge set:
    returns sum_{i<j} max(0, C[i, j] - lam_i - lam_j - mu) (D of the module docstring), and fills cand[i, :] /
    vals[i, :] with row i's ``r`` largest positive reduced costs (partner ids, -1 padded; best first)."""
    mark = np.zeros(n, dtype=np.bool_)
    tot = 0.0
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            mark[indices[e]] = True
        li = lam[i] + mu
        m = 0
        for j in range(n):
            if j == i or mark[j]:
                continue
            red = np.float64(C[i, j]) - li - lam[j]
            if red <= 0.0:
                continue
            if j > i:
                tot += red
            m = insert_top_k(vals, cand, i, m, r, red, j)
        for e in range(indptr[i], indptr[i + 1]):
            mark[indices[e]] = False
    return tot


def _check_exact(exact: Any, es: EdgeSet) -> np.ndarray:
    """The full count matrix of ``exact=`` as an [n, n] view; it must agree with every stored count."""
    C = np.asarray(exact)
    n = es.n
    if C.ndim != 2 or C.shape[0] < n or C.shape[1] < n or not np.issubdtype(C.dtype, np.integer):
        raise SolverError(f"exact counts must be an integer matrix of at least [{n}, {n}], got {C.dtype} {C.shape}")
    C = C[:n, :n]
    if es.u.size and not np.array_equal(C[es.u, es.v].astype(np.int64), es.w):
        raise SolverError("exact counts disagree with the graph's stored counts (another layer or token range?)")
    return C


def _sym_pattern(es: EdgeSet) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the symmetric pattern of ``es`` (for :func:`_dense_pass`)."""
    ptr, _ = incidence(es)
    other = np.concatenate([es.v, es.u])[np.argsort(np.concatenate([es.u, es.v]), kind="stable")]
    return ptr, other.astype(np.int64)


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
    #: degree duals of the round that gave ``bound`` with the edge-count dual folded in (λ_v + μ/2: the same reduced
    #: costs c_uv - λ'_u - λ'_v), a warm start for :func:`solvers.held_karp.held_karp_bound`; None without a solve
    duals: np.ndarray | None = None


def _in_components(parts: list[tuple[np.ndarray, np.ndarray]], u: np.ndarray,
                   v: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each partition ``(lab, row)`` (component label per node, constraint index per label or -1): the positions
    of the edges (u, v) with both ends in one component that has a constraint, and that constraint's index. Shared by
    the subtour cuts and the blossom handles."""
    es, rs = [], []
    for lab, row in parts:
        lu = lab[u]
        r = np.where(lab[v] == lu, row[lu], -1)
        hit = np.flatnonzero(r >= 0)
        es.append(hit)
        rs.append(r[hit])
    return es, rs


class _Cuts:
    """Subtour cuts, stored as the partitions they came from: each separation yields disjoint components, so a cut
    is (partition p, component c) and "edge e lies inside cut" is ``lab_p[u] == lab_p[v]`` with ``row_p[lab_p[u]]``
    its LP row: O(edges) per partition instead of O(edges x cuts) with one mask per cut (1,000+ cuts at N = 11k)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # (lab int64[n], row int64[ncomp], -1 = no cut)
        self.sizes: list[int] = []  # |S| per cut, in row order
        self.seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.sizes)

    def add_partition(self, lab: np.ndarray, comps: np.ndarray) -> list[int]:
        """Register the components ``comps`` of labelling ``lab`` not seen before; returns their cut indices (cut i
        is LP row n + 1 + i)."""
        row = np.full(int(lab.max()) + 1, -1, dtype=np.int64)
        new: list[int] = []
        for comp in comps:
            S = lab == comp
            key = np.packbits(S).tobytes()
            if key in self.seen:
                continue
            self.seen.add(key)
            row[comp] = len(self.sizes)
            new.append(len(self.sizes))
            self.sizes.append(int(S.sum()))
        if new:
            self.parts.append((lab, row))
        return new

    def membership(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(edge positions, cut indices) for every (edge, cut containing it)."""
        es, rs = _in_components(self.parts, u, v)
        if not es:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(es), np.concatenate(rs)


class _Blossoms:
    """2-matching blossom inequalities (Edmonds 1965): for a handle H and an odd set T of pairwise disjoint edges
    (teeth) with exactly one end in H, every 2-matching, hence every Hamiltonian path, has
    x(E(H)) + x(T) <= |H| + (|T| - 1) / 2. They cut off the half-integral odd cycles that the subtour cuts leave
    (layer 23 of the synthetic 7B trace: 1,107 pairs at x = 1/2 in 202 odd components at the LP optimum).
    Handles come as components of a partition (like :class:`_Cuts`), teeth as sorted pair keys u * n + v."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # (lab int64[n], blossom index per label, -1 = none)
        self.rhs: list[float] = []
        self.tooth_key = np.zeros(0, dtype=np.int64)  # sorted keys of all teeth
        self.tooth_of = np.zeros(0, dtype=np.int64)  # their blossom indices

    def __len__(self) -> int:
        return len(self.rhs)

    def add(self, lab: np.ndarray, comps: list[int], teeth: list[np.ndarray], sizes: list[int]) -> list[int]:
        """Register blossoms (handle = component ``comps[i]`` of ``lab``, teeth keys ``teeth[i]``); their indices."""
        row = np.full(int(lab.max()) + 1, -1, dtype=np.int64)
        new = []
        for c, t, sz in zip(comps, teeth, sizes):
            row[c] = len(self.rhs)
            new.append(len(self.rhs))
            self.rhs.append(sz + (t.size - 1) / 2.0)
            self.tooth_key = np.concatenate([self.tooth_key, t])
            self.tooth_of = np.concatenate([self.tooth_of, np.full(t.size, new[-1], dtype=np.int64)])
        o = np.argsort(self.tooth_key, kind="stable")
        self.tooth_key, self.tooth_of = self.tooth_key[o], self.tooth_of[o]
        self.parts.append((lab, row))
        return new

    def membership(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(edge positions, blossom indices) for every (edge, blossom whose handle or teeth contain it)."""
        es, rs = _in_components(self.parts, u, v)
        if self.tooth_key.size:
            key = np.minimum(u, v) * self.n + np.maximum(u, v)
            lo = np.searchsorted(self.tooth_key, key, side="left")
            hi = np.searchsorted(self.tooth_key, key, side="right")
            cnt = hi - lo
            pos = np.repeat(np.arange(key.size), cnt)
            idx = np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
            es.append(pos)
            rs.append(self.tooth_of[idx])
        if not es:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(es), np.concatenate(rs)


def _separate_blossoms(n: int, au: np.ndarray, av: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, list, list,
                                                                                        list]:
    """Odd-component heuristic (Padberg & Rao's exact separation is not needed here): handles = components of the
    fractional support {0 < x < 1}; teeth = the x = 1 pairs with one end in the handle, minus pairs of teeth that
    share their outer end; kept if the tooth count is odd and the inequality is violated.
    Returns (labels, handle components, teeth keys, handle sizes)."""
    frac = (x > 1e-6) & (x < 1 - 1e-6)
    one = x >= 1 - 1e-6
    gs = sp.csr_array((np.ones(int(frac.sum())), (au[frac], av[frac])), shape=(n, n))
    ncomp, lab = connected_components(gs, directed=False)
    lab = lab.astype(np.int64)
    size = np.bincount(lab, minlength=ncomp)
    inside = lab[au] == lab[av]
    xin = np.bincount(lab[au][inside], weights=x[inside], minlength=ncomp)
    ou, ov = au[one], av[one]
    cross = lab[ou] != lab[ov]
    comps, teeth, sizes = [], [], []
    tu, tv = ou[cross], ov[cross]
    # each crossing x = 1 pair is a candidate tooth of both its ends' components
    cand_c = np.concatenate([lab[tu], lab[tv]])
    cand_out = np.concatenate([tv, tu])
    key = np.minimum(tu, tv) * n + np.maximum(tu, tv)
    cand_k = np.concatenate([key, key])
    big = np.flatnonzero(size >= 3)
    o = np.lexsort((cand_out, cand_c))
    cand_c, cand_out, cand_k = cand_c[o], cand_out[o], cand_k[o]
    starts = np.searchsorted(cand_c, big, side="left")
    ends = np.searchsorted(cand_c, big, side="right")
    for c, a, b in zip(big.tolist(), starts.tolist(), ends.tolist()):
        outs, keys = cand_out[a:b], cand_k[a:b]
        if outs.size:
            _, inv, cnt = np.unique(outs, return_inverse=True, return_counts=True)
            keys = keys[cnt[inv] == 1]  # teeth must be disjoint: drop teeth sharing an outer end
        t = int(keys.size)
        if t % 2 == 0:
            continue
        if xin[c] + t > size[c] + (t - 1) / 2.0 + 1e-6:
            comps.append(c)
            teeth.append(np.sort(keys))
            sizes.append(int(size[c]))
    return lab, comps, teeth, sizes


def _highs_core() -> Any:
    """The HiGHS binding that ships inside scipy (``scipy.optimize._highspy._core``: the same HiGHS as ``linprog``,
    the ``highspy`` API, no extra dependency and no banner on stdout). It is private to scipy, so any import
    problem or missing name just selects the ``linprog`` backend."""
    core = _HIGHS_CORE
    if core is None or not all(hasattr(core, a) for a in ("_Highs", "kHighsInf", "HighsModelStatus")):
        return None
    return core



def _packed_index(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """HiGHS's packed sparse format of index lists: (int32 start of each list, int32 concatenated indices)."""
    lens = np.array([x.size for x in lists], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int32)
    return starts, np.concatenate(lists).astype(np.int32)

class _HighsLP:
    """The LP kept alive in HiGHS between rounds: columns and cut rows are *added*, and each re-solve starts from
    the previous basis (dual simplex warm start), which is what makes the LP usable at N = 11k (a cold ``linprog``
    solve per round took ~9 s there; the whole warm-started LP ~3 s)."""

    def __init__(self, n: int, core: Any) -> None:
        self.hp = core
        h = core._Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("presolve", "off")  # presolve would discard the warm-start basis
        inf = core.kHighsInf
        up = np.concatenate([np.full(n, 2.0), [n - 1.0]])
        h.addRows(n + 1, np.full(n + 1, -inf), up, 0, np.zeros(n + 1, dtype=np.int32), np.zeros(0, np.int32),
                  np.zeros(0))
        self.h = h
        self.n_rows = n + 1

    def add_cols(self, cost: np.ndarray, col_rows: list[np.ndarray], upper: np.ndarray | None = None,
                 values: list[np.ndarray] | None = None) -> None:
        m = len(col_rows)
        if m == 0:
            return
        starts, idx = _packed_index(col_rows)
        val = np.ones(idx.size) if values is None else np.concatenate(values).astype(np.float64)
        self.h.addCols(m, np.asarray(cost, dtype=np.float64), np.zeros(m), np.ones(m) if upper is None else upper,
                       int(idx.size), starts, idx, val)

    def add_rows(self, upper: list[float], row_cols: list[np.ndarray]) -> None:
        r = len(row_cols)
        if r == 0:
            return
        starts, idx = _packed_index(row_cols)
        self.h.addRows(r, np.full(r, -self.hp.kHighsInf), np.asarray(upper, dtype=np.float64), int(idx.size), starts,
                       idx, np.ones(idx.size))
        self.n_rows += r

    def solve(self, time_left: float | None) -> tuple[bool, str, np.ndarray, np.ndarray, float]:
        """(optimal, status text, x, row duals as in linprog's marginals (<= 0), objective)."""
        self.h.setOptionValue("time_limit", float(time_left) if time_left is not None else self.hp.kHighsInf)
        self.h.run()
        st = self.h.getModelStatus()
        ok = st == self.hp.HighsModelStatus.kOptimal
        sol = self.h.getSolution()
        return (ok, self.h.modelStatusToString(st), np.asarray(sol.col_value), np.asarray(sol.row_dual),
                float(self.h.getInfo().objective_function_value))


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
    backend: str = "auto",
    dropped_columns: bool = True,
    exact: Any = None,
    blossoms: bool = False,
) -> LPResult:
    """Solve the (cut-strengthened) fractional 2-matching LP over *all* stored pairs by column generation.

    The LP starts on the union of every node's top-k partners (all pairs if `k` is None). After each HiGHS solve,
    the duals (λ_v >= 0 per degree row, μ >= 0 for the edge-count row, π_S >= 0 per cut) price every stored pair:
    reduced cost r_e = c_e - λ_u - λ_v - μ - sum_{S ⊇ e} π_S. The Lagrangian value
    ``2 sum λ + (N-1) μ + sum π_S (|S|-1) + sum_e max(0, r_e)`` (+ the correction for dropped pairs of a candidate
    graph, module docstring) is an upper bound on every Hamiltonian path for any non-negative duals (weak duality
    over the full edge set), so each round yields a valid bound; the best (lowest) is kept. Pairs with r_e > 0 join
    the LP (per node, its `price_r` largest reduced costs); pricing stops when the Lagrangian value is within
    max(1, `price_tol` x bound) of the LP value (objectives are integers). Then the LP optimum over all pairs is
    reached (to that tolerance) and subtour cuts are separated (if `cuts`), until nothing is violated,
    `max_rounds`, `time_limit`, or `stall_rounds` rounds without the bound dropping by max(1, 1e-5 x bound).

    ``backend``: ``"highs"`` (a persistent HiGHS model, warm-started between rounds; :func:`_highs_core`),
    ``"linprog"`` (a cold ``scipy.optimize.linprog`` solve per round), ``"auto"`` (highs when available).
    ``dropped_columns``: on a candidate graph (highs backend), put the per-node dropped-pair columns into the LP
    (tighter bound); ``path-cover`` turns them off because it rounds the LP's pair values, which they would thin
    out. The bound stays proven either way (the correction is then added after the solve).
    ``blossoms``: with ``cuts`` and the highs backend, also separate 2-matching blossom inequalities
    (:class:`_Blossoms`) in every cut round; their duals enter the Lagrangian value like the cuts'.
    """
    t0 = time.perf_counter()
    graph = as_graph(counts)
    es = all_edges(graph)
    n = es.n
    m_all = es.u.size
    xm = _excluded(graph)
    if n < 2 or m_all == 0:
        return LPResult(degree_bound(graph) if xm is not None else 0.0, np.zeros(m_all), es, 0, 0, 0, "trivial")
    if backend not in ("auto", "highs", "linprog"):
        raise SolverError(f"unknown LP backend {backend!r}; expected auto, highs or linprog")
    core = _highs_core() if backend != "linprog" else None
    if backend == "highs" and core is None:
        raise SolverError("the 'highs' LP backend needs scipy's bundled HiGHS binding (scipy >= 1.15)")
    C = _check_exact(exact, es) if exact is not None else None
    wf = es.w.astype(np.float64)
    scale = float(max(wf.max(), np.max(C) if C is not None and C.size else 0))
    inc = None
    if k is None:
        active = np.arange(m_all)
    else:
        # Starting columns: per node, the top-k pairs by w_uv - (s_u + s_v) / 2 with s = second-largest incident
        # weight, a cheap guess of the LP duals (plain top-k by count would all point at a few hub neurons).
        inc = incidence(es)
        s2 = _second_largest(es, inc)
        active = per_node_top(es, wf - 0.5 * (s2[es.u] + s2[es.v]), int(k), inc=inc)
    cutset = _Cuts(n)
    lp = _HighsLP(n, core) if core is not None else None
    bls = _Blossoms(n)
    sub_row: list[int] = []  # LP row (after the n + 1 fixed ones) of every subtour cut / blossom
    bl_row: list[int] = []
    n_y = 0
    if lp is not None and xm is not None and dropped_columns and C is None:
        # Candidate graph: one "dropped-pair" column y_v in [0, 2] per node (how many of v's path edges are not
        # stored), worth xm_v / 2 each, in v's degree row and (1/2) in the edge-count row. Every path is feasible
        # (a dropped pair (u, v) weighs <= min(xm_u, xm_v) <= xm_u/2 + xm_v/2), and its Lagrangian term is exactly
        # the correction (a) of the module docstring, so the duals now trade stored pairs against dropped ones.
        n_y = n
        lp.add_cols(-xm.astype(np.float64) / 2.0 / scale, [np.array([v, n]) for v in range(n)],
                    upper=np.full(n, 2.0), values=[np.array([1.0, 0.5])] * n)
    order: list[np.ndarray] = []  # edge ids in LP column order (highs backend)
    new_cols = active
    best = math.inf
    x_full = None
    best_duals = None
    status = "ok"
    rounds = 0
    last_gain = 0
    while True:
        rounds += 1
        left = None
        if time_limit is not None:
            left = time_limit - (time.perf_counter() - t0)
            if left <= 0.05 and math.isfinite(best):
                status = "time"
                break
            left = max(left, 0.05)
        if lp is not None:
            if new_cols.size:
                nu, nv = es.u[new_cols], es.v[new_cols]
                ep, rr = cutset.membership(nu, nv)
                extra = [[] for _ in range(new_cols.size)]
                for e_, r_ in zip(ep.tolist(), rr.tolist()):
                    extra[e_].append(sub_row[r_])
                bep, brr = bls.membership(nu, nv)
                for e_, r_ in zip(bep.tolist(), brr.tolist()):
                    extra[e_].append(bl_row[r_])
                col_rows = [np.array([a, b, n] + [n + 1 + r for r in x], dtype=np.int64)
                            for a, b, x in zip(nu.tolist(), nv.tolist(), extra)]
                order.append(new_cols)
                lp.add_cols(-wf[new_cols] / scale, col_rows)
            ok, msg, xcol, rdual, fun = lp.solve(left)
            cols_edges = np.concatenate(order)
            if not ok:
                status = f"highs: {msg}"
                break
            x_act = xcol[n_y:]
            act_ids = cols_edges
            y = np.maximum(-rdual, 0.0) * scale
            lp_val = -fun * scale
        else:
            act_ids = active
            m = active.size
            au, av = es.u[active], es.v[active]
            er = np.arange(m, dtype=np.int64)
            ep, rr = cutset.membership(au, av)
            r_ = np.concatenate([au, av, np.full(m, n, dtype=np.int64), n + 1 + rr])
            c_ = np.concatenate([er, er, er, ep])
            nrows = n + 1 + len(cutset)
            A = sp.csr_array((np.ones(r_.size), (r_, c_)), shape=(nrows, m))
            b = np.concatenate([np.full(n, 2.0), [n - 1.0], np.asarray(cutset.sizes, dtype=np.float64) - 1.0])
            opts: dict[str, Any] = {"presolve": True}
            if left is not None:
                opts["time_limit"] = left
            # costs scaled to max 1 (HiGHS runs ~2x faster on this LP than with raw counts); duals scaled back
            res = linprog(-wf[active] / scale, A_ub=A, b_ub=b, bounds=(0.0, 1.0), method="highs", options=opts)
            if res.status != 0 or res.x is None or getattr(res, "ineqlin", None) is None:
                status = f"highs status {res.status}: {res.message}"
                break
            x_act = res.x
            y = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0) * scale
            lp_val = -float(res.fun) * scale
        lam, mu, pi_all = y[:n], y[n], y[n + 1:]
        pi = pi_all[np.asarray(sub_row, dtype=np.int64)] if lp is not None else pi_all
        pib = pi_all[np.asarray(bl_row, dtype=np.int64)]
        red = wf - lam[es.u] - lam[es.v] - mu
        # cut duals only lower reduced costs, and only positive ones matter (bound and pricing)
        hot = np.flatnonzero(red > 0)
        ep, rr = cutset.membership(es.u[hot], es.v[hot])
        np.subtract.at(red, hot[ep], pi[rr])
        bep, brr = bls.membership(es.u[hot], es.v[hot])
        np.subtract.at(red, hot[bep], pib[brr])
        sizes = np.asarray(cutset.sizes, dtype=np.float64)
        ub = 2.0 * lam.sum() + (n - 1) * mu + float((pi * (sizes - 1.0)).sum())
        ub += float((pib * np.asarray(bls.rhs, dtype=np.float64)).sum())
        ub += float(np.maximum(red, 0.0).sum())
        corr = excluded_correction(xm, lam, mu)  # what dropped pairs could add (module docstring)
        if C is not None:  # exact: what the pairs outside the edge set add, and each node's best ones to price in
            ptr_s, idx_s = _sym_pattern(es)
            r_ = max(2, int(price_r))
            dc = np.full((n, r_), -1, dtype=np.int64)
            dv = np.zeros((n, r_))
            d_all = float(_dense_pass(C, n, lam, float(mu), ptr_s, idx_s, r_, dc, dv))
            # a path has <= 2 edges at a node: half the sum of each node's two best positive ones also bounds them
            corr = min(corr if xm is not None else math.inf, d_all, 0.5 * float(dv[:, :2].sum()))
            dc = dc[:, :max(0, int(price_r))]
        ub += corr
        log.debug("round %d: %d columns, %d cuts, value %.1f, bound %.1f", rounds, act_ids.size, len(cutset), lp_val,
                  ub)
        if ub < best - max(1.0, 1e-5 * ub):
            last_gain = rounds
        if ub < best:
            best_duals = lam + 0.5 * mu
        best = min(best, ub)
        x_full = np.zeros(m_all)
        x_full[act_ids] = x_act
        if rounds >= max_rounds:
            break
        if rounds - last_gain >= stall_rounds:
            status = "stalled"
            break
        # pricing
        if C is not None and corr > 0 and ub - lp_val > max(1.0, price_tol * abs(ub)):
            # pairs outside the edge set with positive reduced cost join it (exact counts), then are priced below
            rows = np.repeat(np.arange(n, dtype=np.int64), dc.shape[1])
            cols = dc.ravel()
            ok = cols >= 0
            a_, b_ = np.minimum(rows[ok], cols[ok]), np.maximum(rows[ok], cols[ok])
            key = np.unique(a_ * n + b_)
            if key.size:
                nu_, nv_ = key // n, key % n
                nw_ = np.asarray(C[nu_, nv_], dtype=np.int64)
                es = EdgeSet(n, np.concatenate([es.u, nu_]), np.concatenate([es.v, nv_]),
                             np.concatenate([es.w, nw_]))
                nwf = nw_.astype(np.float64)
                wf = np.concatenate([wf, nwf])
                red = np.concatenate([red, nwf - lam[nu_] - lam[nv_] - mu])
                m_all = es.u.size
                inc = incidence(es) if inc is not None else None
                x_full = np.concatenate([x_full, np.zeros(key.size)])
        in_active = np.zeros(m_all, dtype=bool)
        in_active[act_ids] = True
        pos = np.flatnonzero((red > 1e-7 * scale) & ~in_active)
        if pos.size and ub - (0.0 if n_y or C is not None else corr) - lp_val > max(1.0, price_tol * abs(ub)):
            # per node, its `price_r` most positive reduced costs (global top-r would pile onto a few hubs)
            pos = per_node_top(es, red, price_r, (red > 1e-7 * scale) & ~in_active, inc=inc)
            new_cols = pos
            active = np.sort(np.concatenate([active, pos]))
            continue
        new_cols = np.zeros(0, dtype=np.int64)
        if not cuts:
            break
        # separation on the support graph and on {x > 1/2}
        au, av = es.u[act_ids], es.v[act_ids]
        added = 0
        for thr in (1e-6, 0.5):
            sel = x_act > thr
            if not sel.any():
                continue
            gs = sp.csr_array((np.ones(int(sel.sum())), (au[sel], av[sel])), shape=(n, n))
            ncomp, lab = connected_components(gs, directed=False)
            lab = lab.astype(np.int64)
            size = np.bincount(lab, minlength=ncomp)
            inside = lab[au] == lab[av]
            wsum = np.bincount(lab[au][inside], weights=x_act[inside], minlength=ncomp)
            comps = np.flatnonzero((size >= 3) & (wsum > size - 1 + 1e-6))
            new_ids = cutset.add_partition(lab, comps)
            if not new_ids:
                continue
            added += len(new_ids)
            if lp is not None:
                # rows of the new cuts (consecutive cut ids) over the current columns, grouped in one pass
                lu = lab[au]
                rowid = np.where(lab[av] == lu, cutset.parts[-1][1][lu], -1)
                hit = np.flatnonzero(rowid >= 0) + n_y  # LP column ids (after the y columns)
                hit = hit[np.argsort(rowid[hit - n_y], kind="stable")]
                bounds_ = np.searchsorted(rowid[hit - n_y], np.asarray(new_ids + [new_ids[-1] + 1]))
                lp.add_rows([cutset.sizes[ci] - 1.0 for ci in new_ids],
                            [hit[bounds_[i]:bounds_[i + 1]] for i in range(len(new_ids))])
                sub_row.extend(range(len(sub_row) + len(bl_row), len(sub_row) + len(bl_row) + len(new_ids)))
        if blossoms and lp is not None:  # every cut round: subtour cuts alone tail off for dozens of rounds
            lab, comps, teeth, bsz = _separate_blossoms(n, au, av, x_act)
            if comps:
                new_b = bls.add(lab, comps, teeth, bsz)
                bep, brr = bls.membership(au, av)  # rows over the current LP columns (after the y columns)
                o = np.argsort(brr, kind="stable")
                bep, brr = bep[o] + n_y, brr[o]
                cuts_at = np.searchsorted(brr, np.asarray(new_b + [new_b[-1] + 1]))
                lp.add_rows([bls.rhs[b] for b in new_b], [bep[cuts_at[i]:cuts_at[i + 1]] for i in range(len(new_b))])
                bl_row.extend(range(len(sub_row) + len(bl_row), len(sub_row) + len(bl_row) + len(new_b)))
                added += len(new_b)
        if added == 0:
            break
    if not math.isfinite(best):
        return LPResult(degree_bound(graph), None, es, len(cutset) + len(bls), rounds, int(active.size), status)
    bound = math.floor(best * (1 + 1e-9) + 1e-6)  # float summation slack before rounding down
    return LPResult(float(min(bound, degree_bound(graph))), x_full, es, len(cutset) + len(bls), rounds,
                    int(active.size),
                    status, best_duals)


def adjacency_upper_bound(counts: Any, *, method: str = "lp", k: int | None = DEFAULT_K, cuts: bool = True,
                          max_rounds: int = 40, time_limit: float | None = 60.0, exact: Any = None) -> float:
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
        exact: the full count matrix of a candidate graph's layer (see :func:`solve_two_matching_lp`): a bound
            certified against every pair, not only against ``excluded_max``.
    """
    if method == "degree":
        return degree_bound(counts)
    if method != "lp":
        raise SolverError(f"unknown bound method {method!r}; expected 'lp' or 'degree'")
    return solve_two_matching_lp(counts, k=k, cuts=cuts, max_rounds=max_rounds, time_limit=time_limit,
                                 exact=exact).bound


def _bound_job(job: tuple[Any, dict[str, Any]]) -> float:
    """One layer's bound for an executor (module level so it pickles)."""
    item, kw = job
    return float(adjacency_upper_bound(resolve_graph(item), **kw))


def bound_layers(graphs: Iterable[Any], *, executor: Any = None, progress: ProgressFn | None = None,
                 n_layers: int | None = None, **kw: Any) -> list[float]:
    """:func:`adjacency_upper_bound` of every layer (items as in :func:`solvers.graph.resolve_graph`: graphs,
    ``(counts, freq)`` pairs or lazy loaders), through ``executor`` (:func:`common.executors.get_executor` spec or
    object; None = serial in this process). ``kw`` go to :func:`adjacency_upper_bound`. A bound depends only on its
    layer, so the list is identical whichever executor computes it (with ``time_limit`` a slower machine may stop
    earlier: still a proven bound, possibly a looser one)."""
    ex = get_executor(executor if executor is not None else "serial")
    owned = ex is not executor
    try:
        return ex.map(_bound_job, ((g, kw) for g in graphs), progress=progress, description="bound",
                      total=n_layers if n_layers is not None else (len(graphs) if hasattr(graphs, "__len__") else None))
    finally:
        if owned:
            ex.close()


def gap_to_bound(obj: float, bound: float) -> float:
    """How far `obj` is below `bound`, in percent of the bound (0 when the bound is 0)."""
    if bound <= 0:
        return 0.0
    return 100.0 * (float(bound) - float(obj)) / float(bound)
