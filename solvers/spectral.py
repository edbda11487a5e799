"""Classic linear-arrangement baselines: `spectral` (Fiedler-vector order) and `rcm` (reverse Cuthill-McKee).

`spectral` (Fiedler 1973; Juvan & Mohar 1992 "Optimal linear labelings and eigenvalues of graphs"; normalised form
of Shi & Malik 2000): sort the neurons by the eigenvector of the second-smallest eigenvalue of the normalised
Laplacian ``I - D^-1/2 W D^-1/2`` of the count graph, mapped back as ``f = D^-1/2 v``. This minimises a continuous
relaxation of sum_ij w_ij (pos_i - pos_j)², i.e. it keeps co-activated neurons close *overall* rather than
maximising the weight of exact neighbours. Computed as the second-*largest* eigenvector of ``D^-1/2 W D^-1/2``
(``scipy.sparse.linalg.eigsh(which="LA")``, seeded start vector; dense ``eigh`` below 400 nodes), which converges
much faster than asking for the smallest Laplacian eigenvalues. Disconnected graphs: each connected component is
ordered on its own; components are placed largest first (ties: heavier total count), isolated neurons last by
decreasing frequency.

`rcm` (Cuthill & McKee 1969, reversed by George 1971): ``scipy.sparse.csgraph.reverse_cuthill_mckee`` minimises
matrix bandwidth. It ignores weights, so it runs on the **candidate graph**: every neuron's top-k partners by count
(k=8, symmetrised); on the full co-activation graph (nearly complete) the order would be meaningless.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, reverse_cuthill_mckee
from scipy.sparse.linalg import eigsh

from solvers.base import ProgressFn, SolverBase, register
from solvers.candidates import candidate_pattern
from solvers.errors import SolverError
from solvers.graph import CoactGraph

DENSE_BELOW = 400


def fiedler_order(w: sp.csr_array, seed: int = 0) -> np.ndarray:
    """Order of the nodes of ONE connected weighted graph by its normalised Fiedler vector."""
    n = w.shape[0]
    if n <= 2:
        return np.arange(n, dtype=np.int64)
    d = np.asarray(w.sum(axis=1)).ravel().astype(np.float64)
    dinv = 1.0 / np.sqrt(np.maximum(d, 1e-300))
    m = sp.diags(dinv) @ w.astype(np.float64) @ sp.diags(dinv)
    if n < DENSE_BELOW:
        vals, vecs = np.linalg.eigh(m.toarray())
        v = vecs[:, -2]
    else:
        v0 = np.random.default_rng(seed).random(n) + 0.5
        try:
            vals, vecs = eigsh(m, k=2, which="LA", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n))
            v = vecs[:, np.argsort(vals)[0]]
        except Exception:  # ARPACK no convergence: fall back to dense (n is at most a few thousand here)
            vals, vecs = np.linalg.eigh(m.toarray())
            v = vecs[:, -2]
    f = v * dinv
    # fix the sign so the result does not depend on the eigensolver's arbitrary sign
    if f[np.argmax(np.abs(f))] < 0:
        f = -f
    return np.lexsort((np.arange(n), f)).astype(np.int64)


def _components(graph: CoactGraph) -> list[np.ndarray]:
    c = sp.csr_array(graph.counts)
    ncomp, lab = connected_components(c, directed=False)
    size = np.bincount(lab, minlength=ncomp)
    strength = np.bincount(lab, weights=np.asarray(c.sum(axis=1)).ravel(), minlength=ncomp)
    comps = [np.flatnonzero(lab == k) for k in range(ncomp)]
    multi = [k for k in range(ncomp) if size[k] > 1]
    multi.sort(key=lambda k: (-size[k], -strength[k], comps[k][0]))
    single = np.array([comps[k][0] for k in range(ncomp) if size[k] == 1], dtype=np.int64)
    single = single[np.lexsort((single, -np.asarray(graph.freq)[single]))] if single.size else single
    return [comps[k] for k in multi] + ([single] if single.size else [])


@register("spectral")
class SpectralSolver(SolverBase):
    """Fiedler-vector order of the normalised Laplacian, per connected component (components largest first)."""

    name = "spectral"
    optimises = "min sum_ij count_ij (pos_i - pos_j)^2 (continuous relaxation; Fiedler vector), a linear-arrangement baseline"

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        n = int(graph.n)
        if n <= 1:
            return np.arange(n, dtype=np.int64)
        c = sp.csr_array(graph.counts)
        out = []
        comps = _components(graph)
        for nodes in comps:
            if nodes.size > 1 and c[nodes][:, nodes].nnz:
                sub = c[nodes][:, nodes]
                out.append(nodes[fiedler_order(sub, seed=seed)])
            else:
                out.append(nodes)
        return np.concatenate(out).astype(np.int64)


@register("rcm")
class RCMSolver(SolverBase):
    """Reverse Cuthill-McKee on the top-k candidate graph (bandwidth minimisation).

    Parameters:
        k: partners per neuron kept in the candidate graph (symmetrised).
    """

    name = "rcm"
    optimises = "min bandwidth of the top-k co-activation graph (reverse Cuthill-McKee), a linear-arrangement baseline"

    def __init__(self, k: int = 8):
        if k < 1:
            raise SolverError("rcm needs k >= 1")
        self.k = int(k)

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        n = int(graph.n)
        if n <= 1 or graph.counts.nnz == 0:
            return np.arange(n, dtype=np.int64)
        a = candidate_pattern(graph, self.k).astype(np.float64)
        perm = reverse_cuthill_mckee(sp.csr_matrix(a), symmetric_mode=True)
        return np.asarray(perm, dtype=np.int64)
