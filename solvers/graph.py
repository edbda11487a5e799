"""The co-activation graph of one layer: neurons are nodes, co-activation counts are edge weights.

Why it lives in ``solvers/``: it is the solvers' input format and needs nothing from the statistics side; the
statistics side builds it (``coact.graph.layer_graph``), so ``solvers/`` never imports ``coact/``
(docs/ARCHITECTURE.md). Solvers take plain data (a count matrix and activation counts, scikit-learn style);
:func:`as_graph` converts it once and passes an already validated :class:`CoactGraph` through unchanged.

Why a scipy CSR matrix is the core representation: solvers need three things from the graph — the edge list sorted
by weight (Ripple's greedy, Wang et al. 2024), per-node neighbour lists (local search, path cover, spectral and RCM
orderings) and sparse matrix algebra (Laplacians for spectral ordering, ``scipy.sparse.csgraph.reverse_cuthill_mckee``).
CSR gives all three as flat numpy arrays (``indptr``/``indices``/``data``) that numba kernels consume directly,
costs 12-16 bytes per stored pair, and scales to the synthetic 16,384-neuron layers of docs/DESIGN.md §6 where a dense
N x N float matrix (2 GB) or a Python object graph would not. networkx (readable reference algorithms, exact
small-instance checks) and igraph (Leiden community detection, fast C routines) are *views* built on demand by
:meth:`CoactGraph.to_networkx` / :meth:`CoactGraph.to_igraph`: convenient for the solvers that want them, never the
source of truth.

``counts`` is a ``scipy.sparse.csr_array`` (note: ``*`` is element-wise on sparse arrays; use ``@`` for matmul),
int64, symmetric, with an empty diagonal (a neuron's own activation count is ``freq``, not a self-loop), canonical
(sorted indices, no duplicates, no explicit zeros).

Weight kinds (:meth:`CoactGraph.weights`), all defined on the stored edges only:

- ``count``: c_ij, the number of tokens where i and j fire together (docs/DESIGN.md §2 objective weight).
- ``p``: P(ij) = c_ij / sum over unordered pairs {k, l} of c_kl — Ripple's co-activation share; sums to 1 over
  the edges.
- ``distance``: 1 - P(ij), Ripple's distance (smaller = place closer). Pairs that never co-activate are not stored
  (their distance would be 1).
- ``jaccard``: c_ij / (f_i + f_j - c_ij) — co-activation normalised by how often either fires, which discounts
  pairs that are only frequent because both neurons are hot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from solvers.candidates import candidate_pattern, top_k_neighbours
from solvers.errors import GraphError

if TYPE_CHECKING:  # pragma: no cover
    import igraph
    import networkx

__all__ = ["WEIGHT_KINDS", "CoactGraph", "GraphError", "as_graph", "csr_arrays", "resolve_graph"]

WEIGHT_KINDS = ("count", "p", "distance", "jaccard")


def _canonical_csr(m: Any, n: int) -> sp.csr_array:
    """int64 CSR with sorted indices, no duplicates, no explicit zeros and no diagonal entries."""
    a = sp.csr_array(m, shape=(n, n))
    a.sum_duplicates()
    d = a.data
    if d.size and np.issubdtype(d.dtype, np.floating) and not np.all(d == np.round(d)):
        raise GraphError("co-activation counts must be integers")
    if d.dtype != np.int64 or (d.size and (np.any(d == 0) or np.any(a.diagonal() != 0))):
        coo = a.tocoo()
        keep = (coo.row != coo.col) & (coo.data != 0)
        a = sp.csr_array((coo.data[keep].astype(np.int64), (coo.row[keep], coo.col[keep])), shape=(n, n))
        a.sum_duplicates()
    a.indptr = a.indptr.astype(np.int64, copy=False)
    a.indices = a.indices.astype(np.int64, copy=False)
    return a


@dataclass(eq=False)  # arrays: identity equality
class CoactGraph:
    """Co-activation graph of one layer (see the module docstring for why CSR).

    Attributes:
        counts: ``scipy.sparse.csr_array`` int64 [n, n], symmetric, zero diagonal; ``counts[i, j]`` = tokens where
            neurons i and j are both active.
        freq: int64 [n]; tokens where neuron i is active.
        n_tokens: tokens counted.
        meta: free-form provenance (layer, model id, stats digest, ...).
        excluded_max: None when every co-activating pair is stored (a *complete* graph); for a *candidate graph*
            (only each neuron's top-k partners stored, see ``coact.stats``), int64 [n] with ``excluded_max[i]`` >=
            the count of every pair (i, j) that is NOT stored. Solvers ignore it (they see only the stored pairs);
            the bounds of :mod:`solvers.bounds` need it to stay proven upper bounds on the full graph.
        n: number of neurons (property, ``counts.shape[0]``).

    The constructor canonicalises ``counts`` (int64, sorted, no explicit zeros, diagonal dropped) and checks
    symmetry; use :func:`as_graph` / :meth:`from_dense` (or ``coact.graph.layer_graph`` for statistics) rather than
    building one by hand.
    """

    counts: sp.csr_array
    freq: np.ndarray
    n_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)
    excluded_max: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = getattr(self.counts, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] != shape[1]:
            raise GraphError(f"counts must be a square matrix, got shape {shape}")
        n = int(shape[0])
        self.counts = _canonical_csr(self.counts, n)
        if self.counts.nnz and self.counts.data.min() < 0:
            raise GraphError("co-activation counts must be non-negative")
        if (self.counts != self.counts.T).nnz:
            raise GraphError("co-activation counts must be symmetric")
        self.freq = np.asarray(self.freq).astype(np.int64, copy=False).reshape(-1)
        if self.freq.shape != (n,):
            raise GraphError(f"freq has shape {self.freq.shape}, expected ({n},)")
        self.n_tokens = int(self.n_tokens)
        self.meta = dict(self.meta)
        if self.excluded_max is not None:
            xm = np.asarray(self.excluded_max).reshape(-1)
            if xm.shape != (n,) or not np.issubdtype(xm.dtype, np.integer) or (xm.size and xm.min() < 0):
                raise GraphError(f"excluded_max must be non-negative integers of shape ({n},)")
            self.excluded_max = xm.astype(np.int64, copy=False)

    @property
    def is_candidate(self) -> bool:
        """True when some co-activating pairs may be missing (``excluded_max`` given and not all zero)."""
        return self.excluded_max is not None and bool(np.any(self.excluded_max > 0))

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of unordered pairs with a non-zero count."""
        return int(self.counts.nnz // 2)

    # -- constructors --------------------------------------------------------------------------------------------

    @classmethod
    def from_dense(
        cls,
        counts: Any,
        freq: Any | None = None,
        n_tokens: int | None = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> "CoactGraph":
        """A graph from a symmetric count matrix (dense array-like or scipy sparse) — for tests and synthetic data.

        Args:
            counts: [n, n] non-negative integer counts, symmetric. The diagonal is not an edge.
            freq: activation counts; default: the diagonal of ``counts`` if it has any non-zero entry, else the
                row maxima (the smallest freq consistent with the counts, since f_i >= c_ij).
            n_tokens: default: the largest freq (the smallest consistent value).
        """
        if sp.issparse(counts):
            m = sp.csr_array(counts)
            diag = np.asarray(m.diagonal())
        else:
            m = np.asarray(counts)
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise GraphError(f"counts must be a square matrix, got shape {m.shape}")
            diag = np.diagonal(m).copy()
        n = m.shape[0]
        c = _canonical_csr(m, n)
        if freq is None:
            if np.any(diag != 0):
                freq = diag
            else:
                freq = np.zeros(n, dtype=np.int64)
                np.maximum.at(freq, np.repeat(np.arange(n), np.diff(c.indptr)), c.data)
        freq = np.asarray(freq, dtype=np.int64).reshape(-1)
        if n_tokens is None:
            n_tokens = int(freq.max(initial=0))
        return cls(counts=c, freq=freq, n_tokens=int(n_tokens), meta=dict(meta or {}))

    # -- weights and views ---------------------------------------------------------------------------------------

    def edges(self, kind: str = "count") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each stored unordered pair once, as ``(u, v, w)`` with ``u < v`` (int64, int64, float64 / int64 for count).

        Sorted by (u, v). ``kind="count"`` returns the integer counts; other kinds as in :meth:`weights`.
        """
        c = self.counts
        rows = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(c.indptr))
        keep = rows < c.indices
        u, v = rows[keep], c.indices[keep]
        if kind == "count":
            return u, v, c.data[keep].copy()
        return u, v, self.weights(kind).data[keep]

    def weights(self, kind: str = "count") -> sp.csr_array:
        """Edge weights as a float64 CSR with the same sparsity pattern as ``counts`` (see the module docstring)."""
        c = self.counts
        d = c.data.astype(np.float64)
        if kind == "count":
            w = d
        elif kind in ("p", "distance"):
            total = d.sum() / 2.0  # each unordered pair is stored twice
            p = d / total if total > 0 else d
            w = p if kind == "p" else 1.0 - p
        elif kind == "jaccard":
            rows = np.repeat(np.arange(self.n), np.diff(c.indptr))
            f = self.freq.astype(np.float64)
            denom = f[rows] + f[c.indices] - d
            w = d / np.maximum(denom, d)  # guards inconsistent input (f_i < c_ij) from dividing by <= 0
        else:
            raise GraphError(f"unknown weight kind {kind!r}; expected one of {', '.join(WEIGHT_KINDS)}")
        return sp.csr_array((w, c.indices.copy(), c.indptr.copy()), shape=c.shape)

    def to_networkx(self, kind: str = "count") -> "networkx.Graph":
        """An undirected ``networkx.Graph`` on nodes 0..n-1 (isolated ones included), edge attribute ``weight``,
        node attribute ``freq``."""
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from((i, {"freq": int(f)}) for i, f in enumerate(self.freq))
        u, v, w = self.edges(kind)
        g.add_weighted_edges_from(zip(u.tolist(), v.tolist(), w.tolist()), weight="weight")
        g.graph.update(n_tokens=self.n_tokens, kind=kind)
        return g

    def to_igraph(self, kind: str = "count") -> "igraph.Graph":
        """An undirected ``igraph.Graph`` with n vertices, edge attribute ``weight`` and vertex attribute ``freq``."""
        import igraph as ig

        u, v, w = self.edges(kind)
        g = ig.Graph(n=self.n, edges=np.column_stack([u, v]).tolist(), directed=False)
        g.es["weight"] = w.tolist()
        g.vs["freq"] = self.freq.tolist()
        return g

    def top_k(self, k: int, kind: str = "count") -> np.ndarray:
        """Candidate neighbours for local search: int64 [n, k], row i = the k closest neighbours of i — largest
        weight, or smallest for ``kind="distance"`` — ties by smaller id, padded with -1 when i has fewer than k
        neighbours."""
        k = int(k)
        if k < 0:
            raise GraphError(f"k must be >= 0, got {k}")
        c = self.counts
        w = c.data if kind == "count" else self.weights(kind).data
        if kind == "distance":
            w = -w  # closest = smallest distance
        return top_k_neighbours(c.indptr, c.indices, w, k)

    def candidate_graph(self, k: int) -> "CoactGraph":
        """The *candidate graph*: only the pairs where one neuron is among the other's top-``k`` partners (by count,
        ties by smaller id), with exact counts, and ``excluded_max[i]`` = the largest count of a pair of ``i`` that
        is dropped (0 if none; combined with any existing ``excluded_max``). What ``coact.stats`` builds without the
        dense matrix; here from a complete graph, for tests and small layers."""
        keep = candidate_pattern(self, int(k))
        c = self.counts
        kept = sp.csr_array(c * keep)
        dropped = sp.csr_array(c - kept)
        xm = np.zeros(self.n, dtype=np.int64)
        if dropped.nnz:
            dropped.eliminate_zeros()
            rows = np.repeat(np.arange(self.n), np.diff(dropped.indptr))
            np.maximum.at(xm, rows, dropped.data.astype(np.int64))
        if self.excluded_max is not None:
            xm = np.maximum(xm, self.excluded_max)
        return CoactGraph(counts=kept, freq=self.freq, n_tokens=self.n_tokens, meta=dict(self.meta, k=int(k)),
                          excluded_max=xm)

    def subgraph(self, nodes: Any) -> "CoactGraph":
        """The graph induced on ``nodes`` (new ids 0..len(nodes)-1 in the given order), same ``n_tokens``."""
        nodes = np.asarray(nodes, dtype=np.int64)
        xm = None if self.excluded_max is None else self.excluded_max[nodes]
        return CoactGraph(counts=self.counts[nodes][:, nodes], freq=self.freq[nodes], n_tokens=self.n_tokens,
                          meta=dict(self.meta), excluded_max=xm)

    def __repr__(self) -> str:
        kind = ", candidate" if self.is_candidate else ""
        return f"CoactGraph(n={self.n}, edges={self.n_edges}, n_tokens={self.n_tokens}{kind})"


def as_graph(counts: Any, freq: Any | None = None, n_tokens: int | None = None) -> CoactGraph:
    """The one conversion from plain data to a validated :class:`CoactGraph`; a CoactGraph comes back unchanged.

    Args:
        counts: symmetric co-activation count matrix [n, n] (scipy sparse or dense array-like; the diagonal is not
            an edge), or a :class:`CoactGraph`.
        freq: per-neuron activation counts (int [n]); defaults as in :meth:`CoactGraph.from_dense`. With a
            CoactGraph it must be None or equal to the graph's.
        n_tokens: tokens counted; default the largest freq.
    """
    if isinstance(counts, CoactGraph):
        if freq is not None and not np.array_equal(np.asarray(freq).reshape(-1), counts.freq):
            raise GraphError("freq given with a CoactGraph differs from the graph's own freq")
        return counts
    return CoactGraph.from_dense(counts, freq, n_tokens)


def resolve_graph(item: Any) -> CoactGraph:
    """One layer item of the per-layer loops (:func:`solvers.base.solve_layers`, :func:`solvers.bounds.bound_layers`)
    as a graph: a CoactGraph, a ``(counts, freq)`` pair, or a zero-argument callable returning either (a lazy
    loader, called where the layer is processed, so an executor's worker loads its own layer)."""
    if callable(item) and not isinstance(item, CoactGraph):
        item = item()
    return item if isinstance(item, CoactGraph) else as_graph(*item)


def csr_arrays(counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, data)`` of the counts as int64 arrays, sorted indices, no zeros, no diagonal — what the
    numba kernels take. ``counts``: anything :func:`as_graph` accepts; a CoactGraph's own arrays, no copy."""
    c = as_graph(counts).counts
    return (np.asarray(c.indptr, dtype=np.int64), np.asarray(c.indices, dtype=np.int64), np.asarray(c.data))
