"""Statistics that scale (coact.stats.count_stats, coact.bitcount): candidate graphs equal the dense counts on their
edges, excluded_max is exact, narrow count types never overflow, sharded folders load one layer alone, merge."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coact import bitcount
from coact.graph import layer_graph
from coact.stats import (CoactStats, LayerJob, StatsError, check_dense_fits, compute_stats, count_layer, count_stats,
                         merge)
from common.bits import pack_bits


def random_packed(rng: np.random.Generator, T: int, L: int, N: int) -> np.ndarray:
    """Packed sets with per-neuron rates (some hot, some never firing) so top-k ties and zero rows occur."""
    rates = rng.choice([0.0, 0.05, 0.3, 0.9], size=(L, N))
    return pack_bits(rng.random((T, L, N)) < rates[None])


def excluded_max_bruteforce(dense: np.ndarray, graph) -> np.ndarray:
    """max over j != i, (i, j) not stored, of dense[i, j] (0 if none), by a plain loop."""
    n = dense.shape[0]
    adj = graph.counts.toarray() > 0
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        vals = [dense[i, j] for j in range(n) if j != i and not adj[i, j]]
        out[i] = max(vals, default=0)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 150), L=st.integers(1, 2), N=st.integers(1, 45), k=st.integers(1, 6), seed=st.integers(0, 99))
def test_candidate_counts_equal_dense_on_their_edges(T: int, L: int, N: int, k: int, seed: int) -> None:
    packed = random_packed(np.random.default_rng(seed), T, L, N)
    dense = compute_stats(packed, n_neurons=N, progress=False)
    cand = count_stats(packed, n_neurons=N, top_k=k, candidates="count", progress=False)
    assert cand.kind == "candidate" and cand.top_k == k and cand.candidate_score == "count"
    np.testing.assert_array_equal(cand.freq, dense.freq)
    for l in range(L):
        g = layer_graph(cand, l)
        want = layer_graph(dense, l).candidate_graph(k)  # solvers' reference construction from a complete graph
        assert (g.counts != want.counts).nnz == 0
        rows = np.repeat(np.arange(N), np.diff(g.counts.indptr))
        np.testing.assert_array_equal(g.counts.data, dense.coact[l][rows, g.counts.indices])  # exact counts
        xm = cand.excluded_max(l)
        np.testing.assert_array_equal(xm, want.excluded_max if want.excluded_max is not None else 0)
        np.testing.assert_array_equal(xm, excluded_max_bruteforce(dense.coact[l], g))
    assert count_stats(packed, n_neurons=N, dense=True, progress=False).digest == dense.digest


def test_bitcount_matches_matmul_on_odd_shapes() -> None:
    rng = np.random.default_rng(3)
    for T, N in ((1, 1), (63, 5), (64, 4), (65, 9), (300, 131)):
        act = rng.random((T, N)) < 0.4
        bits = np.zeros((bitcount.padded_rows(N), bitcount.n_words(T)), np.uint64)
        bitcount.transpose_bits(pack_bits(act[: T // 3]), N, bits, 0)
        bitcount.transpose_bits(pack_bits(act[T // 3:]), N, bits, T // 3)
        x = act.astype(np.int64)
        np.testing.assert_array_equal(bitcount.pair_counts(bits, np.dtype(np.uint16))[:N, :N], x.T @ x)


@pytest.mark.parametrize("T, dtype", [(65535, np.uint16), (65536, np.uint32)])
def test_narrow_count_type_never_overflows(T: int, dtype: type) -> None:
    assert bitcount.count_dtype(T) == np.dtype(dtype)
    N = 6
    act = np.ones((T, N), dtype=bool)
    act[::7, 5] = False  # one neuron a little below the others
    job = LayerJob(pack_bits(act), 0, 0, T, N, None)
    res = count_layer(job)
    assert res["coact"].dtype == np.dtype(dtype)
    assert int(res["coact"][0, 1]) == T and int(res["coact"][0, 0]) == T  # at the type's limit, not wrapped
    assert int(res["coact"][0, 5]) == T - len(range(0, T, 7))
    cand = count_layer(LayerJob(pack_bits(act), 0, 0, T, N, 2))
    assert cand["counts"].max() == T and cand["counts"].dtype == np.dtype(dtype)
    assert bitcount.count_dtype(2**32) == np.dtype(np.uint64)


def test_sharded_folder_loads_one_layer_alone(tmp_path: Path) -> None:
    packed = random_packed(np.random.default_rng(0), 120, 3, 40)
    st_ = count_stats(packed, n_neurons=40, top_k=5, progress=False)
    st_.meta.update(model_id="toy")
    out = st_.save(tmp_path / "s")
    assert sorted(p.name for p in (out / "layers").iterdir()) == [f"{l:05d}.safetensors" for l in range(3)]
    full = CoactStats.load(out)
    assert full.digest == st_.digest and full.kind == "candidate" and full.top_k == 5
    for l in range(3):
        one = CoactStats.load_layer(out, l)
        ref = st_.layer(l)
        assert (one.coact != ref.coact).nnz == 0 and (full.layer(l).coact != ref.coact).nnz == 0
        np.testing.assert_array_equal(one.excluded_max, ref.excluded_max)
        np.testing.assert_array_equal(one.freq, ref.freq)
    # a pickled lazily-loaded object carries the folder, not the layers (what executor workers receive)
    clone = pickle.loads(pickle.dumps(CoactStats.load(out)))
    assert clone.digest == st_.digest and (clone.layer(2).coact != st_.layer(2).coact).nnz == 0
    # corrupting layer 1 is caught when layer 1 is read; layer 0 still loads alone
    f = out / "layers" / "00001.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01
    f.write_bytes(bytes(raw))
    lazy = CoactStats.load(out)
    lazy.layer(0)
    with pytest.raises(StatsError, match="digest"):
        lazy.layer(1)
    with pytest.raises(StatsError, match="digest"):
        CoactStats.load(out).verify_layers()
    from coact.verify import verify_artefact

    with pytest.raises(StatsError, match="digest"):
        verify_artefact(out)
    # editing the provenance in meta.json breaks the folder digest at load
    meta = json.loads((out / "meta.json").read_text())
    meta["meta"]["model_id"] = "other"
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StatsError, match="digest"):
        CoactStats.load(out)


def test_layer_graph_min_count_keeps_the_bound(tmp_path: Path) -> None:
    packed = random_packed(np.random.default_rng(1), 200, 1, 30)
    dense = compute_stats(packed, n_neurons=30, progress=False)
    cand = count_stats(packed, n_neurons=30, top_k=4, progress=False)
    for st_ in (dense, cand):
        g = layer_graph(st_, 0, min_count=20)
        assert g.counts.nnz == 0 or g.counts.data.min() >= 20
        C = dense.coact[0].copy()
        np.fill_diagonal(C, 0)
        stored = g.counts.toarray() > 0
        xm = np.zeros(30, np.int64) if g.excluded_max is None else g.excluded_max
        assert np.all(np.where(stored, 0, C) <= xm[:, None])  # every dropped pair is bounded


def test_merge_is_a_weighted_sum_and_refuses_candidates() -> None:
    rng = np.random.default_rng(2)
    a = compute_stats(random_packed(rng, 50, 2, 16), n_neurons=16, progress=False)
    b = compute_stats(random_packed(rng, 70, 2, 16), n_neurons=16, progress=False)
    m = merge([a, b], weights=[2, 1])
    assert m.n_tokens == 170
    np.testing.assert_array_equal(m.coact[1], 2 * a.coact[1] + b.coact[1])
    np.testing.assert_array_equal(m.freq, 2 * a.freq + b.freq)
    assert (a + b).digest == merge([a, b]).digest
    with pytest.raises(StatsError, match="weights"):
        merge([a, b], weights=[1])
    c = count_stats(random_packed(rng, 50, 2, 16), n_neurons=16, top_k=3, progress=False)
    with pytest.raises(StatsError, match="candidate"):
        merge([c, c])


def test_dense_is_refused_when_it_does_not_fit() -> None:
    check_dense_fits(30, 1536, available=16 << 30)
    with pytest.raises(StatsError, match="--dense"):
        check_dense_fits(32, 11008, available=24 << 30)


def test_layer_jobs_read_their_layer_from_the_trace_folder(tmp_path: Path) -> None:
    """Per-layer jobs open the trace folder themselves (what a pool or Ray worker does) and give the counts of the
    packed array; dense counts of a token range equal compute_stats'. (Executors returning identical results is
    tests/test_executors.py's job; a pool costs seconds of worker start-up, so this test stays serial.)"""
    from coact.synth import write_synthetic_trace

    tr = write_synthetic_trace(tmp_path / "t", n_layers=3, n_neurons=40, n_tokens=300, seed=5, progress=False)
    serial = count_stats(tr, top_k=6, executor="serial", progress=False)
    pooled = count_stats(tmp_path / "t", top_k=6, executor="serial", progress=False)
    assert pooled.digest == serial.digest
    raw = count_stats(tr.packed(), n_neurons=40, top_k=6, progress=False)
    for l in range(3):
        assert (raw.layer(l).coact != serial.layer(l).coact).nnz == 0
    part = count_stats(tr, start=100, stop=250, dense=True, progress=False)
    assert part.digest == compute_stats(tr, start=100, stop=250, progress=False).digest
