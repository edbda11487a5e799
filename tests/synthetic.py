"""Synthetic co-activation instances with a planted (known) good placement — shared by the solver tests.

Why planted instances: on real traces nobody knows the optimal placement, so a solver test can only compare solvers
with each other. Here neurons are grouped into hidden *chains*; every token activates contiguous windows of a few
chains (the structure Ripple / Neuralink observe in real LLMs: co-activated neurons form "segments"), then neuron ids
are shuffled. A good solver must rediscover the chain order: the planted adjacent pairs are the ground truth, and the
fraction of them that end up adjacent in a placement (:func:`recovery`) measures it. Chance level is about 2/n.

Two generators:

- :func:`planted_chains`: draws an actual bit-packed trace [T, 1, nb] (so it also exercises
  :func:`coact.stats.compute_stats`) and its graph. Dense statistics: keep n small (<= a few thousand).
- :func:`planted_chain_graph`: builds a sparse :class:`~solvers.graph.CoactGraph` directly (no trace, no N x N
  matrix), for scale tests at N = 16,384 (docs/DESIGN.md §6).

Plus :func:`random_graph` (unstructured instances) and :func:`brute_objective`, re-exported from
:mod:`solvers.testing` (the conformance suite needs them and cannot import tests/).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from common.bits import pack_bits
from coact.graph import layer_graph
from coact.stats import CoactStats, compute_stats
from solvers.graph import CoactGraph
from solvers.testing import brute_objective, random_graph, salted_rng as _rng

__all__ = ["PlantedInstance", "adjacent_pairs", "brute_objective", "planted_chain_graph", "planted_chains",
           "random_graph", "recovery"]


@dataclass
class PlantedInstance:
    """A synthetic instance with its hidden answer.

    Attributes:
        graph: the co-activation graph (layer 0).
        true_order: int64 [n], the planted placement (``true_order[position] = neuron``); chain c occupies positions
            ``c*chain_len .. (c+1)*chain_len - 1``, background neurons (if any) come last.
        pairs: planted adjacent pairs ``(min(a, b), max(a, b))`` — consecutive neurons inside a chain.
        chains: neuron ids of each chain, in chain order.
        packed: uint8 [T, 1, ceil(n/8)] bit-packed trace (:func:`planted_chains` only, else None).
        stats: the :class:`CoactStats` of ``packed`` (:func:`planted_chains` only, else None).
    """

    graph: CoactGraph
    true_order: np.ndarray
    pairs: set[tuple[int, int]]
    chains: list[np.ndarray]
    packed: np.ndarray | None = None
    stats: CoactStats | None = None
    params: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.graph.n


def _chain_pairs(true_order: np.ndarray, n_chains: int, chain_len: int) -> tuple[set[tuple[int, int]], list[np.ndarray]]:
    chains = [true_order[c * chain_len : (c + 1) * chain_len].copy() for c in range(n_chains)]
    pairs = {(int(min(a, b)), int(max(a, b))) for ch in chains for a, b in zip(ch[:-1], ch[1:])}
    return pairs, chains


def planted_chains(
    n: int = 256,
    n_chains: int = 16,
    chain_len: int = 16,
    n_tokens: int = 2000,
    seed: int = 0,
    noise: float = 0.01,
    *,
    window: tuple[int, int] = (2, 6),
    chains_per_token: tuple[int, int] = (1, 3),
) -> PlantedInstance:
    """Draw a trace whose tokens activate contiguous windows of hidden chains, with shuffled neuron ids.

    Args:
        n: neurons; the first ``n_chains * chain_len`` hidden positions form the chains, the rest are background
            neurons that fire only through noise.
        n_chains, chain_len: chain structure (``n_chains * chain_len <= n``).
        n_tokens: tokens T.
        seed: everything is drawn from ``numpy.random.default_rng([seed, salt])`` (salted: see :func:`_rng`).
        noise: probability that any neuron fires independently on a token (blurs the structure).
        window: inclusive range of window lengths (clipped to ``chain_len``).
        chains_per_token: inclusive range of how many distinct chains one token touches.
    """
    if n_chains * chain_len > n:
        raise ValueError(f"{n_chains} chains of {chain_len} do not fit in {n} neurons")
    rng = _rng(seed)
    true_order = rng.permutation(n).astype(np.int64)
    T = int(n_tokens)
    active = rng.random((T, n)) < noise
    kmin, kmax = chains_per_token
    kmax = min(kmax, n_chains)
    kmin = min(kmin, kmax)
    wmin, wmax = min(window[0], chain_len), min(window[1], chain_len)
    if n_chains > 0 and kmax > 0 and T > 0:
        pick = np.argsort(rng.random((T, n_chains)), axis=1)[:, :kmax]  # distinct chains per token
        k = rng.integers(kmin, kmax + 1, size=T)
        use = np.arange(kmax)[None, :] < k[:, None]
        w = rng.integers(wmin, wmax + 1, size=(T, kmax))
        s = (rng.random((T, kmax)) * (chain_len - w + 1)).astype(np.int64)
        tok = np.broadcast_to(np.arange(T)[:, None], (T, kmax))
        for o in range(wmax):
            m = use & (o < w)
            pos = pick[m] * chain_len + s[m] + o
            active[tok[m], true_order[pos]] = True
    packed = pack_bits(active)[:, None, :]
    stats = compute_stats(packed, n_neurons=n, progress=False)
    graph = layer_graph(stats, 0)
    pairs, chains = _chain_pairs(true_order, n_chains, chain_len)
    params = dict(n=n, n_chains=n_chains, chain_len=chain_len, n_tokens=T, seed=seed, noise=noise, window=window)
    return PlantedInstance(graph, true_order, pairs, chains, packed=packed, stats=stats, params=params)


def planted_chain_graph(
    n: int,
    chain_len: int = 16,
    *,
    seed: int = 0,
    reach: int = 3,
    base: int = 40,
    noise_degree: int = 8,
    noise_max: int = 8,
) -> PlantedInstance:
    """A sparse planted graph built directly (no trace): for large-N scale tests.

    All ``n // chain_len`` chains are planted (leftover neurons are background). Inside a chain, neurons at hidden
    distance d <= ``reach`` get count ~ Poisson(base * (reach + 1 - d)) (closer = stronger, like windowed
    activations); on top, each neuron gets ~``noise_degree`` random partners with counts uniform in
    [1, noise_max]. ``freq`` is the largest incident count plus a Poisson(base) margin, so freq >= every count.
    """
    rng = _rng(seed)
    n_chains = n // chain_len
    true_order = rng.permutation(n).astype(np.int64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    pos = np.arange(n_chains * chain_len)
    for d in range(1, reach + 1):
        a = pos[(pos % chain_len) + d < chain_len]
        if a.size == 0:
            continue
        rows.append(true_order[a])
        cols.append(true_order[a + d])
        vals.append(rng.poisson(base * (reach + 1 - d), size=a.size) + 1)
    m = n * noise_degree // 2
    if m and n > 1:
        a = rng.integers(0, n, size=m)
        b = rng.integers(0, n, size=m)
        keep = a != b
        rows.append(a[keep])
        cols.append(b[keep])
        vals.append(rng.integers(1, noise_max + 1, size=int(keep.sum())))
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals).astype(np.int64) if vals else np.zeros(0, np.int64)
    upper = sp.coo_array((v, (np.minimum(r, c), np.maximum(r, c))), shape=(n, n)).tocsr()  # duplicates add
    counts = upper + upper.T
    rowmax = np.zeros(n, dtype=np.int64)
    coo = counts.tocoo()
    np.maximum.at(rowmax, coo.row, coo.data.astype(np.int64))
    freq = rowmax + rng.poisson(base, size=n)
    graph = CoactGraph(counts=counts, freq=freq, n_tokens=int(freq.max(initial=0)) * 4 + 1)
    pairs, chains = _chain_pairs(true_order, n_chains, chain_len)
    params = dict(n=n, chain_len=chain_len, seed=seed, reach=reach, base=base, noise_degree=noise_degree)
    return PlantedInstance(graph, true_order, pairs, chains, params=params)


def adjacent_pairs(perm: np.ndarray) -> set[tuple[int, int]]:
    """Unordered neighbour pairs of a placement, as ``(min, max)`` tuples."""
    p = np.asarray(perm, dtype=np.int64)
    a, b = np.minimum(p[:-1], p[1:]), np.maximum(p[:-1], p[1:])
    return set(zip(a.tolist(), b.tolist()))


def recovery(perm: np.ndarray, pairs: set[tuple[int, int]]) -> float:
    """Fraction of the planted ``pairs`` that are adjacent in ``perm`` (1.0 = every planted adjacency kept)."""
    if not pairs:
        return 1.0
    p = np.asarray(perm, dtype=np.int64)
    inv = np.empty_like(p)
    inv[p] = np.arange(p.size)
    pa = np.array(sorted(pairs), dtype=np.int64)
    return float(np.mean(np.abs(inv[pa[:, 0]] - inv[pa[:, 1]]) == 1))
