"""solvers.graph (CSR core, weight kinds by hand, networkx/igraph views, top-k neighbour lists, as_graph) and
coact.graph.layer_graph (the graph of one layer of statistics)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import coact.graph
from common.bits import pack_bits
from common.errors import UserError
from coact.graph import layer_graph
from coact.stats import CoactStats, compute_stats
from solvers.errors import SolverError
from solvers.graph import CoactGraph, GraphError, as_graph, csr_arrays

# 4 neurons; diagonal = freq. Pairs: 01:4, 02:2, 12:1, 23:3; neuron 3 only pairs with 2.
C = np.array(
    [
        [6, 4, 2, 0],
        [4, 5, 1, 0],
        [2, 1, 7, 3],
        [0, 0, 3, 3],
    ],
    dtype=np.int64,
)
FREQ = np.array([6, 5, 7, 3])
PAIRS = {(0, 1): 4, (0, 2): 2, (1, 2): 1, (2, 3): 3}
TOTAL = 10  # sum over unordered pairs


@pytest.fixture
def g() -> CoactGraph:
    return CoactGraph.from_dense(C, n_tokens=9)


def test_core_representation(g):
    assert g.n == 4 and g.n_edges == 4 and g.n_tokens == 9
    assert isinstance(g.counts, sp.csr_array)
    assert g.counts.dtype == np.int64
    np.testing.assert_array_equal(g.freq, FREQ)  # default freq = diagonal
    dense = g.counts.toarray()
    np.testing.assert_array_equal(dense, dense.T)
    assert not np.diagonal(dense).any()
    assert g.counts.has_canonical_format
    for (i, j), c in PAIRS.items():
        assert dense[i, j] == c


@pytest.mark.parametrize(
    "kind,fn",
    [
        ("count", lambda i, j, c: c),
        ("p", lambda i, j, c: c / TOTAL),
        ("distance", lambda i, j, c: 1 - c / TOTAL),
        ("jaccard", lambda i, j, c: c / (FREQ[i] + FREQ[j] - c)),
    ],
)
def test_weights_by_hand(g, kind, fn):
    w = g.weights(kind)
    assert w.dtype == np.float64
    dense = w.toarray()
    assert (w != w.T).nnz == 0
    assert w.nnz == 8  # same pattern as counts: only stored edges, no diagonal
    for (i, j), c in PAIRS.items():
        assert dense[i, j] == pytest.approx(fn(i, j, c))
    assert dense[0, 3] == 0 and dense[3, 3] == 0


def test_p_sums_to_one(g):
    assert g.weights("p").sum() / 2 == pytest.approx(1.0)


def test_unknown_kind(g):
    with pytest.raises(GraphError):
        g.weights("cosine")
    assert issubclass(GraphError, SolverError) and issubclass(GraphError, UserError)
    assert issubclass(GraphError, ValueError)


def test_edges(g):
    u, v, w = g.edges()
    assert {(a, b): c for a, b, c in zip(u.tolist(), v.tolist(), w.tolist())} == PAIRS
    assert np.all(u < v)
    _, _, d = g.edges("distance")
    assert d.tolist() == pytest.approx([1 - PAIRS[k] / TOTAL for k in zip(u.tolist(), v.tolist())])


def test_networkx_view(g):
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == 4 and nxg.number_of_edges() == 4
    assert {tuple(sorted(e)): d["weight"] for *e, d in nxg.edges(data=True)} == PAIRS
    assert nxg.nodes[2]["freq"] == 7
    nxp = g.to_networkx("p")
    assert nxp[0][1]["weight"] == pytest.approx(0.4)


def test_networkx_keeps_isolated_nodes():
    c = np.zeros((5, 5), dtype=np.int64)
    c[0, 1] = c[1, 0] = 2
    nxg = CoactGraph.from_dense(c).to_networkx()
    assert nxg.number_of_nodes() == 5 and nxg.number_of_edges() == 1


def test_igraph_view(g):
    ig = g.to_igraph("jaccard")
    assert ig.vcount() == 4 and ig.ecount() == 4 and not ig.is_directed()
    got = {tuple(sorted(e.tuple)): e["weight"] for e in ig.es}
    assert got == pytest.approx({k: c / (FREQ[k[0]] + FREQ[k[1]] - c) for k, c in PAIRS.items()})
    assert ig.vs["freq"] == FREQ.tolist()
    assert {tuple(sorted(e.tuple)): e["weight"] for e in g.to_igraph().es} == PAIRS


def test_top_k(g):
    np.testing.assert_array_equal(g.top_k(2), [[1, 2], [0, 2], [3, 0], [2, -1]])
    np.testing.assert_array_equal(g.top_k(0), np.zeros((4, 0)))
    t = g.top_k(5)
    assert t.shape == (4, 5) and t.dtype == np.int64
    np.testing.assert_array_equal(t[3], [2, -1, -1, -1, -1])
    # node 2 by jaccard: neighbour 3 = 3/7 > neighbour 0 = 2/11 > neighbour 1 = 1/11 (by count it is 3, 0, 1 too)
    np.testing.assert_array_equal(g.top_k(3, "jaccard")[2], [3, 0, 1])
    for kind in ("p", "distance"):  # same ranking as count
        np.testing.assert_array_equal(g.top_k(3, kind), g.top_k(3))


def test_top_k_jaccard_differs_from_count():
    # neuron 1 is hot (freq 100): more co-activations with 0 than neuron 2, but a much smaller Jaccard.
    c = np.array([[10, 5, 4], [5, 100, 0], [4, 0, 4]])
    g = CoactGraph.from_dense(c)
    np.testing.assert_array_equal(g.top_k(2)[0], [1, 2])
    np.testing.assert_array_equal(g.top_k(2, "jaccard")[0], [2, 1])


def test_top_k_ties_by_id():
    c = np.zeros((4, 4), dtype=np.int64)
    c[0, 3] = c[3, 0] = 5
    c[0, 1] = c[1, 0] = 5
    c[0, 2] = c[2, 0] = 1
    np.testing.assert_array_equal(CoactGraph.from_dense(c).top_k(3)[0], [1, 3, 2])


def test_layer_graph_min_count():
    stats = CoactStats(freq=FREQ[None, :], coact=[C], n_tokens=9, meta={"model_id": "m", "other": 1})
    g1 = layer_graph(stats, 0)
    np.testing.assert_array_equal(g1.counts.toarray(), C - np.diag(FREQ))
    np.testing.assert_array_equal(g1.freq, FREQ)
    assert g1.n_tokens == 9 and g1.meta["layer"] == 0 and g1.meta["model_id"] == "m"
    g3 = layer_graph(stats, 0, min_count=3)
    u, v, w = g3.edges()
    assert list(zip(u.tolist(), v.tolist(), w.tolist())) == [(0, 1, 4), (2, 3, 3)]
    np.testing.assert_array_equal(g3.freq, FREQ)  # freq never pruned
    with pytest.raises(GraphError):
        layer_graph(stats, 0, min_count=0)


def test_layer_graph_blocks_match_dense():
    rng = np.random.default_rng(0)
    packed = pack_bits(rng.random((200, 2, 37)) < 0.2)
    stats = compute_stats(packed, n_neurons=37, progress=False)
    for layer in range(2):
        want = stats.coact[layer] - np.diag(stats.freq[layer])
        for block in (1, 5, 1024):
            g = layer_graph(stats, layer, block=block)
            np.testing.assert_array_equal(g.counts.toarray(), want)
            assert g.counts.indices.dtype == np.int64


def test_from_dense_defaults_and_validation():
    c = np.array([[0, 3, 0], [3, 0, 1], [0, 1, 0]])
    g = CoactGraph.from_dense(c)
    np.testing.assert_array_equal(g.freq, [3, 3, 1])  # zero diagonal -> row maxima
    assert g.n_tokens == 3
    g2 = CoactGraph.from_dense(sp.csr_matrix(c), freq=[5, 5, 5], n_tokens=10)
    np.testing.assert_array_equal(g2.counts.toarray(), c)
    assert g2.n_tokens == 10
    with pytest.raises(GraphError):
        CoactGraph.from_dense(np.array([[0, 1], [2, 0]]))  # asymmetric
    with pytest.raises(GraphError):
        CoactGraph.from_dense(np.array([[0, -1], [-1, 0]]))
    with pytest.raises(GraphError):
        CoactGraph.from_dense(np.zeros((2, 3)))
    with pytest.raises(GraphError):
        CoactGraph.from_dense(np.array([[0, 0.5], [0.5, 0]]))
    with pytest.raises(GraphError):
        CoactGraph.from_dense(c, freq=[1, 2])


def test_empty_and_tiny_graphs():
    for n in (0, 1, 3):
        g = CoactGraph.from_dense(np.zeros((n, n), dtype=np.int64))
        assert g.n == n and g.n_edges == 0
        for kind in ("count", "p", "distance", "jaccard"):
            assert g.weights(kind).nnz == 0
        assert g.to_networkx().number_of_nodes() == n
        assert g.to_igraph().vcount() == n
        assert g.top_k(2).shape == (n, 2)


def test_as_graph_converts_once():
    g = CoactGraph.from_dense(C, n_tokens=9)
    assert as_graph(g) is g  # an already validated graph passes through unchanged
    assert as_graph(g, FREQ) is g
    with pytest.raises(GraphError):
        as_graph(g, FREQ + 1)  # a freq that contradicts the graph's
    for counts in (C, sp.csr_array(C), sp.csr_matrix(C)):
        h = as_graph(counts, FREQ, 9)
        np.testing.assert_array_equal(h.counts.toarray(), g.counts.toarray())
        np.testing.assert_array_equal(h.freq, FREQ)
        assert h.n_tokens == 9
    np.testing.assert_array_equal(as_graph(C).freq, FREQ)  # freq defaults to the diagonal
    with pytest.raises(GraphError):
        as_graph(np.array([[0, 1], [2, 0]]))


def test_csr_arrays_and_subgraph(g):
    indptr, indices, data = csr_arrays(g)
    assert indptr is g.counts.indptr or np.shares_memory(indptr, g.counts.indptr)  # no copy of a graph's arrays
    assert indices.dtype == data.dtype == np.int64
    np.testing.assert_array_equal(csr_arrays(C)[2], data)
    sub = g.subgraph([2, 0, 3])
    np.testing.assert_array_equal(sub.counts.toarray(), [[0, 2, 3], [2, 0, 0], [3, 0, 0]])
    np.testing.assert_array_equal(sub.freq, [7, 6, 3])
    assert sub.n_tokens == g.n_tokens


def test_coact_graph_reexports_solvers_graph():
    assert coact.graph.CoactGraph is CoactGraph and coact.graph.GraphError is GraphError
