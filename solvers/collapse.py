"""Objectives beyond adjacency: what the runtime pays with access collapse and with a DRAM cache.

**Reads with collapse** (docs/DESIGN.md §2, Ripple's access collapse): a token's active neurons occupy positions
``inverse[A]``; neighbouring runs whose gap (unrequested bundles between them) is at most ``gap`` merge into one
read. :func:`reads_with_collapse` counts the reads of a token sample — the same count as
``runtime.planner.plan_reads`` per token, summed. With ``gap=0`` it is the number of runs, and on the profiling
trace ``runs = sum |A| - adjacency objective``; with ``gap > 0`` a placement that keeps co-activated neurons *near*
each other (not only adjacent) pays fewer reads, which the adjacency objective does not see.

**`collapse-ls`**: local search on that objective over a token sample. Cost of a token, for its sorted positions
p_1 < ... < p_m: every position whose nearest active left neighbour is more than ``gap + 1`` away (or absent) starts
a read and costs 1; any other position costs ``bundle_cost x`` (the unrequested bundles between it and that
neighbour). So the cost is ``reads + bundle_cost x (gap bundles read)``; ``bundle_cost=0`` (default) counts reads
only. Moves: **swap** neuron x with the neuron sitting just before/after one of x's top-k co-activated partners
(k=8). A swap only changes tokens that contain exactly one of the two neurons, and each such token changes only
inside windows of ``gap + 1`` positions around the two positions, so the exact delta costs O(gap) per affected
token on a position-occupancy bitmap (tokens x positions, uint8). Only strictly improving swaps are applied; nodes
are revisited through the queue of :mod:`solvers.worklist`, as in :mod:`solvers.local_search`; the search stops at
a local optimum or at the time limit. Compiled with numba.

The sample: ``sample=`` (constructor or ``solve`` keyword) takes a list of active-index arrays, a bool array
[T, n] or a bit-packed uint8 array [T, ceil(n/8)] (``Trace.layer_packed``). **Without a sample** (plain protocol
call, e.g. from ``coact solve``) the solver draws a *pseudo-sample* from the graph: each pseudo-token picks a seed
neuron i with probability proportional to freq_i, then adds every partner j independently with probability
c_ij / f_i (the empirical P(j | i)). That matches the pairwise conditional statistics of the seed neuron, not the
higher-order structure of real tokens: useful, but a real sample is better.

**Cache-aware placement**: :func:`exclude_resident` removes the neurons a DRAM budget keeps resident (they are never
read from flash, so their flash neighbours do not matter) before solving; :func:`solve_excluding_resident` solves
the rest and places the resident neurons at the end; :func:`resident_by_frequency` picks the hottest neurons for a
budget.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from numba import njit

from common.bits import unpack_bits
from solvers.base import ProgressFn, Solver, SolverBase, check_permutation, get_solver, register
from solvers.candidates import candidate_lists
from solvers.errors import SolverError
from solvers.graph import CoactGraph, as_graph, csr_arrays
from solvers.ripple import default_start
from solvers.worklist import new_queue, pop, push

DEFAULT_TIME_LIMIT = 10.0


# --------------------------------------------------------------------------------------------- samples


def sample_to_bool(sample: Any, n: int) -> np.ndarray:
    """bool [T, n] from a list of index arrays, a bool/0-1 array [T, n] or a packed uint8 array [T, ceil(n/8)]."""
    if isinstance(sample, np.ndarray) and sample.ndim == 2:
        if sample.dtype == np.uint8 and sample.shape[1] == (n + 7) // 8 and sample.shape[1] != n:
            return unpack_bits(sample, n)
        if sample.shape[1] == n:
            return sample.astype(bool, copy=False)
        raise SolverError(f"sample has shape {sample.shape}; expected [T, {n}] bool or [T, {(n + 7) // 8}] packed")
    rows = list(sample)
    out = np.zeros((len(rows), n), dtype=bool)
    for t, a in enumerate(rows):
        a = np.asarray(a, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= n):
            raise SolverError("sample has neuron ids out of range")
        out[t, a] = True
    return out


def reads_with_collapse(perm: np.ndarray, sample: Any, gap: int = 0, *, n: int | None = None) -> int:
    """Total reads of a token sample under placement `perm` when runs separated by <= `gap` bundles merge.

    Args:
        perm: placement (``perm[position] = neuron``).
        sample: active sets — list of index arrays, bool [T, n], or bit-packed uint8 [T, ceil(n/8)].
        gap: collapse gap in bundles (0 = plain runs).
        n: number of neurons (default ``len(perm)``).
    """
    perm = np.asarray(perm, dtype=np.int64)
    n = perm.size if n is None else int(n)
    if gap < 0:
        raise SolverError(f"collapse gap must be >= 0, got {gap}")
    act = sample_to_bool(sample, n)
    occ = act[:, perm]  # occ[t, position]
    t, p = np.nonzero(occ)  # sorted by token, then position
    if t.size == 0:
        return 0
    new = np.empty(t.size, dtype=bool)
    new[0] = True
    new[1:] = (t[1:] != t[:-1]) | ((p[1:] - p[:-1] - 1) > gap)
    return int(new.sum())


@njit(cache=True)
def _pseudo_sample(indptr, indices, data, freq, n_tok, seed):
    np.random.seed(seed)
    n = freq.shape[0]
    cum = np.cumsum(freq.astype(np.float64))
    out = np.zeros((n_tok, n), dtype=np.bool_)
    if n == 0 or cum[-1] <= 0:
        return out
    for t in range(n_tok):
        r = np.random.random() * cum[-1]
        i = np.searchsorted(cum, r, side="right")
        if i >= n:
            i = n - 1
        out[t, i] = True
        fi = max(freq[i], 1)
        for e in range(indptr[i], indptr[i + 1]):
            if np.random.random() * fi < data[e]:
                out[t, indices[e]] = True
    return out


def pseudo_sample(counts: Any, n_tokens: int = 2000, seed: int = 0) -> np.ndarray:
    """bool [n_tokens, n] pseudo-tokens drawn from the graph (see the module docstring); ``counts``: a
    :class:`CoactGraph` (or anything :func:`as_graph` takes)."""
    graph = as_graph(counts)
    indptr, indices, data = csr_arrays(graph)
    freq = np.maximum(np.asarray(graph.freq, dtype=np.int64), 0)
    return _pseudo_sample(indptr, indices, data, freq, int(n_tokens), int(seed))


# --------------------------------------------------------------------------------------------- the kernel


@njit(cache=True)
def _psi(row, p, g, beta):
    """Cost of occupied position p in a token row: 1 if no occupied position in [p-g-1, p-1], else beta*gap."""
    lo = p - g - 1
    if lo < 0:
        lo = 0
    q = p - 1
    while q >= lo:
        if row[q]:
            return beta * (p - q - 1)
        q -= 1
    return 1.0


@njit(cache=True)
def _next_occ(row, p, g, n):
    hi = p + g + 1
    if hi > n - 1:
        hi = n - 1
    for q in range(p + 1, hi + 1):
        if row[q]:
            return q
    return -1


@njit(cache=True)
def _delta_remove(row, a, g, beta, n):
    """Cost change of clearing occupied position a (row unchanged on return)."""
    d = -_psi(row, a, g, beta)
    r = _next_occ(row, a, g, n)
    if r >= 0:
        old = beta * (r - a - 1)
        row[a] = 0
        new = _psi(row, r, g, beta)
        row[a] = 1
        d += new - old
    return d


@njit(cache=True)
def _delta_insert(row, b, g, beta, n):
    """Cost change of setting free position b (row unchanged on return)."""
    d = _psi(row, b, g, beta)
    r = _next_occ(row, b, g, n)
    if r >= 0:
        old = _psi(row, r, g, beta)
        d += beta * (r - b - 1) - old
    return d


@njit(cache=True)
def _swap_delta(occ, tok_ptr, tok_idx, x, y, a, b, g, beta, n):
    """Cost change of swapping neuron x (position a) and y (position b)."""
    d = 0.0
    for e in range(tok_ptr[x], tok_ptr[x + 1]):
        t = tok_idx[e]
        row = occ[t]
        if row[b]:
            continue  # y is active too: the occupied set does not change
        d += _delta_remove(row, a, g, beta, n)
        row[a] = 0
        d += _delta_insert(row, b, g, beta, n)
        row[a] = 1
    for e in range(tok_ptr[y], tok_ptr[y + 1]):
        t = tok_idx[e]
        row = occ[t]
        if row[a]:
            continue
        d += _delta_remove(row, b, g, beta, n)
        row[b] = 0
        d += _delta_insert(row, a, g, beta, n)
        row[b] = 1
    return d


@njit(cache=True)
def _apply_swap(occ, tok_ptr, tok_idx, perm, pos, x, y):
    a = pos[x]
    b = pos[y]
    for e in range(tok_ptr[x], tok_ptr[x + 1]):
        occ[tok_idx[e], a] = 0
    for e in range(tok_ptr[y], tok_ptr[y + 1]):
        occ[tok_idx[e], b] = 0
    for e in range(tok_ptr[x], tok_ptr[x + 1]):
        occ[tok_idx[e], b] = 1
    for e in range(tok_ptr[y], tok_ptr[y + 1]):
        occ[tok_idx[e], a] = 1
    perm[a] = y
    perm[b] = x
    pos[x] = b
    pos[y] = a


@njit(cache=True)
def _collapse_kernel(perm, pos, occ, tok_ptr, tok_idx, cand, queue, inq, qstate, max_nodes, g, beta, reach):
    n = perm.shape[0]
    k = cand.shape[1]
    total = 0.0
    processed = 0
    while qstate[1] > 0 and processed < max_nodes:
        x = pop(queue, inq, qstate)
        processed += 1
        if tok_ptr[x + 1] == tok_ptr[x]:
            continue  # never active in the sample: moving it changes nothing
        a = pos[x]
        best = -1e-9
        by = -1
        for t in range(k):
            nb = cand[x, t]
            if nb < 0:
                break
            q = pos[nb]
            for off in range(1, reach + 1):
                for sgn in range(2):
                    b = q - off if sgn == 0 else q + off
                    if b < 0 or b >= n or b == a:
                        continue
                    y = perm[b]
                    d = _swap_delta(occ, tok_ptr, tok_idx, x, y, a, b, g, beta, n)
                    if d < best:
                        best = d
                        by = y
        if by >= 0:
            b = pos[by]
            _apply_swap(occ, tok_ptr, tok_idx, perm, pos, x, by)
            total += best
            for z in (x, by, perm[a - 1] if a > 0 else -1, perm[a + 1] if a + 1 < n else -1,
                      perm[b - 1] if b > 0 else -1, perm[b + 1] if b + 1 < n else -1):
                push(z, queue, inq, qstate)
    return total


@njit(cache=True)
def _total_cost(occ, g, beta):
    T, n = occ.shape
    s = 0.0
    for t in range(T):
        row = occ[t]
        for p in range(n):
            if row[p]:
                s += _psi(row, p, g, beta)
    return s


def collapse_cost(perm: np.ndarray, sample: Any, gap: int = 0, bundle_cost: float = 0.0) -> float:
    """``reads + bundle_cost x gap bundles`` of a sample under `perm` (the `collapse-ls` objective)."""
    perm = np.asarray(perm, dtype=np.int64)
    act = sample_to_bool(sample, perm.size)
    occ = np.ascontiguousarray(act[:, perm]).astype(np.uint8)
    return float(_total_cost(occ, int(gap), float(bundle_cost)))


@register("collapse-ls")
class CollapseLocalSearch(SolverBase):
    """Swap local search minimising reads with access collapse (+ optional cost per gap bundle) on a token sample.

    Parameters:
        gap: collapse gap in bundles (runs separated by <= gap unrequested bundles are one read).
        bundle_cost: cost of one unrequested (gap) bundle relative to one read (0 = count reads only).
        sample: active sets (see the module docstring); None = pseudo-sample drawn from the graph.
        n_sample: pseudo-sample size (tokens) when no sample is given; a given sample longer than `max_sample`
            tokens is subsampled (seeded) to `max_sample`.
        k: co-activated partners per neuron whose neighbourhood is tried.
        time_limit: default budget in seconds.
    """

    name = "collapse-ls"
    optimises = "min reads with access collapse (gap g) on a token sample (+ bundle_cost per gap bundle), swap local search"

    def __init__(self, gap: int = 2, bundle_cost: float = 0.0, sample: Any = None, n_sample: int = 2000,
                 max_sample: int = 8000, k: int = 8, time_limit: float = DEFAULT_TIME_LIMIT):
        if gap < 0 or bundle_cost < 0 or k < 1 or n_sample < 1:
            raise SolverError("collapse-ls needs gap >= 0, bundle_cost >= 0, k >= 1, n_sample >= 1")
        self.gap = int(gap)
        self.bundle_cost = float(bundle_cost)
        self.sample = sample
        self.n_sample = int(n_sample)
        self.max_sample = int(max_sample)
        self.k = int(k)
        self.time_limit = float(time_limit)
        self.history: list[float] = []

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None, sample: Any = None) -> np.ndarray:
        """``sample`` (keyword of ``solve``) overrides the constructor's sample for this call."""
        t0 = time.perf_counter()
        limit = float(time_limit)  # SolverBase passes self.time_limit when the caller gives none
        n = int(graph.n)
        self.history = []
        if n <= 1:
            return np.arange(n, dtype=np.int64)
        perm = (default_start(graph, seed=seed) if init is None else init).copy()
        sample = self.sample if sample is None else sample
        if sample is None:
            act = pseudo_sample(graph, self.n_sample, seed)
        else:
            act = sample_to_bool(sample, n)
            if act.shape[0] > self.max_sample:
                rows = np.sort(np.random.default_rng(seed).choice(act.shape[0], self.max_sample, replace=False))
                act = act[rows]
        if not act.any() or graph.counts.nnz == 0:
            return perm
        occ = np.ascontiguousarray(act[:, perm]).astype(np.uint8)
        # tokens of each neuron (CSR neuron -> token ids)
        tt, nn = np.nonzero(act)
        o = np.argsort(nn, kind="stable")
        tok_idx = tt[o].astype(np.int64)
        tok_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(nn, minlength=n), out=tok_ptr[1:])
        cand = candidate_lists(csr_arrays(graph), self.k)
        pos, queue, inq, qstate = new_queue(perm)
        cur = float(_total_cost(occ, self.gap, self.bundle_cost))
        self.history.append(cur)
        reach = self.gap + 1
        while qstate[1] > 0:
            if time.perf_counter() - t0 >= limit:
                break
            cur += _collapse_kernel(perm, pos, occ, tok_ptr, tok_idx, cand, queue, inq, qstate, 64, self.gap,
                                    self.bundle_cost, reach)
            self.history.append(cur)
        return perm


# --------------------------------------------------------------------------------------------- cache-aware


def resident_by_frequency(graph: CoactGraph, budget: int | float) -> np.ndarray:
    """The hottest neurons that fit a DRAM budget: `budget` neurons (int) or a fraction of n (float in [0, 1])."""
    n = int(graph.n)
    k = int(round(budget * n)) if isinstance(budget, float) else int(budget)
    k = max(0, min(n, k))
    freq = np.asarray(graph.freq)
    order = np.lexsort((np.arange(n), -freq))
    return np.sort(order[:k]).astype(np.int64)


def exclude_resident(graph: CoactGraph, resident_neurons: Sequence[int] | np.ndarray) -> tuple[CoactGraph, np.ndarray]:
    """Remove DRAM-resident neurons: returns ``(subgraph, keep)`` where ``keep`` (int64, sorted) maps the
    subgraph's neuron ids back to the layer's (``subgraph`` neuron i is layer neuron ``keep[i]``)."""
    graph = as_graph(graph)
    n = int(graph.n)
    res = np.unique(np.asarray(resident_neurons, dtype=np.int64))
    if res.size and (res[0] < 0 or res[-1] >= n):
        raise SolverError("resident neuron ids out of range")
    mask = np.ones(n, dtype=bool)
    mask[res] = False
    keep = np.flatnonzero(mask).astype(np.int64)
    return graph.subgraph(keep), keep


def solve_excluding_resident(solver: str | Solver, graph: CoactGraph, resident_neurons: Sequence[int] | np.ndarray,
                             *, seed: int = 0, time_limit: float | None = None) -> np.ndarray:
    """Place the non-resident neurons with `solver` (a Solver or a registry spec), resident ones at the end.

    The resident neurons keep their relative order by decreasing frequency (they are read from flash only when the
    cache is cold, e.g. at start-up, so hot ones are grouped).
    """
    graph = as_graph(graph)
    if isinstance(solver, str):
        solver = get_solver(solver)
    sub, keep = exclude_resident(graph, resident_neurons)
    mask = np.ones(int(graph.n), dtype=bool)
    mask[keep] = False
    res = np.flatnonzero(mask)
    res = res[np.lexsort((res, -np.asarray(graph.freq)[res]))]
    inner = check_permutation(solver.solve(sub, seed=seed, time_limit=time_limit), sub.n) if sub.n else keep[:0]
    return np.concatenate([keep[inner], res]).astype(np.int64)
