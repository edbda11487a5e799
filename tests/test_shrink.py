"""Weighted mixtures, shrinkage toward independence and the held-out choices of coact/shrink.py (issue 13)."""
from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coact.shrink import (ShrinkError, ShrunkStats, choose_alpha, choose_strength, layer_counts, maxmin_weights,
                          mean_run_length, mixture, pair_loglik, parse_strength, run_stats, shrink, shrunk_graphs,
                          simplex_grid, solve_shrunk, to_graph, worst_case_weights)
from common.bits import pack_bits
from solvers import get_solver


def _planted(seed: int, T: int, n: int = 64, groups: int = 8, noise: float = 0.03) -> np.ndarray:
    """Packed active sets where groups of n/groups neurons (scattered ids) fire together."""
    rng = np.random.default_rng(seed)
    ids = np.random.default_rng(99).permutation(n)
    g = rng.random((T, groups)) < rng.uniform(0.1, 0.5, groups)
    m = np.repeat(g, n // groups, axis=1)[:, np.argsort(ids)]
    m ^= rng.random(m.shape) < noise
    return pack_bits(m)


def test_layer_counts_are_exact() -> None:
    pk = _planted(0, 200)
    lc = layer_counts(pk, 64)
    from common.bits import unpack_bits

    x = unpack_bits(pk, 64).astype(np.int64)
    assert np.array_equal(lc.coact, x.T @ x) and np.array_equal(lc.freq, x.sum(0)) and lc.n_tokens == 200


def test_shrink_moves_toward_the_product_of_marginals() -> None:
    lc = layer_counts(_planted(1, 300), 64)
    assert shrink(lc, 0.0) is lc
    s = shrink(lc, 1.0)
    prior = np.outer(lc.freq, lc.freq) / lc.n_tokens
    off = ~np.eye(64, dtype=bool)
    assert np.allclose(s.coact[off], (lc.coact[off] + prior[off]) / 2)
    assert np.array_equal(np.diagonal(s.coact), lc.freq) and np.allclose(s.coact, s.coact.T)
    big = shrink(lc, 1e9)
    assert np.allclose(big.coact[off], prior[off], rtol=1e-6)
    with pytest.raises(ShrinkError):
        shrink(lc, -0.1)


def test_mixture_weights_are_shares_not_token_counts() -> None:
    a, b = layer_counts(_planted(2, 100), 64), layer_counts(_planted(3, 400), 64)
    plain = mixture([a, b])  # proportional to tokens: the plain sum
    assert np.allclose(plain.coact, a.coact + b.coact) and plain.n_tokens == 500
    eq = mixture([a, b], [1, 1])
    assert np.allclose(eq.coact / eq.n_tokens, 0.5 * a.coact / 100 + 0.5 * b.coact / 400)
    assert np.allclose(mixture([a, b], [0.2, 0.8]).coact, mixture([a, b], [1, 4]).coact)
    for bad in ([1], [-1, 2], [0, 0], [np.nan, 1]):
        with pytest.raises(ShrinkError):
            mixture([a, b], bad)


def test_to_graph_is_a_solver_input() -> None:
    lc = shrink(mixture([layer_counts(_planted(4, 200), 64), layer_counts(_planted(5, 50), 64)], [0.5, 0.5]), 0.3)
    g = to_graph(lc)
    assert g.counts.dtype == np.int64 and g.n == 64
    assert abs(g.counts[0, 1] / 1000 - lc.coact[0, 1]) <= 0.0005 + 1e-9
    perm = get_solver("ripple").solve(g)
    assert sorted(perm.tolist()) == list(range(64))


def test_run_stats_match_the_simulator() -> None:
    from runtime.layout import Layout
    from runtime.replay import simulate

    pk = _planted(6, 120)
    perm = np.random.default_rng(0).permutation(64)
    loaded, runs = run_stats(perm, pk, 64)
    rep = simulate(Layout([perm]), pk[:, None, :], 64, bundle_bytes=2304)
    assert (loaded, runs) == (rep.loaded, rep.runs)


def test_solved_layout_beats_a_random_one_on_held_out_tokens() -> None:
    lc = layer_counts(_planted(7, 400), 64)
    perm = get_solver("ripple").solve(to_graph(lc))
    held = _planted(8, 200)
    assert mean_run_length(perm, held, 64) > 1.5 * mean_run_length(np.random.default_rng(1).permutation(64), held, 64)


def test_choose_alpha_scores_every_strength() -> None:
    train = [layer_counts(_planted(9, 30), 64)]  # few tokens: noisy
    val = [_planted(10, 300)]
    best, scores = choose_alpha(train, val, [0.0, 0.3, 3.0], lambda g: get_solver("ripple").solve(g))
    assert set(scores) == {0.0, 0.3, 3.0} and scores[best] == max(scores.values())
    best_ll, ll = choose_alpha(train, val, [0.0, 0.3, 3.0], None, criterion="loglik")  # type: ignore[arg-type]
    # zero counts give log(eps) under alpha = 0: some shrinkage must fit unseen pairs better
    assert best_ll > 0 and ll[best_ll] > ll[0.0]
    assert pair_loglik(train[0], layer_counts(val[0], 64)) == pytest.approx(ll[0.0])
    with pytest.raises(ShrinkError):
        choose_alpha(train, val, [0.0], None, criterion="nope")  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5), k=st.sampled_from([1, 2, 4, 5, 10]))
def test_simplex_grid(n: int, k: int) -> None:
    grid = simplex_grid(n, 1.0 / k)
    assert len(grid) == comb(k + n - 1, n - 1) == len(set(grid))
    assert all(len(w) == n and abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)


def test_worst_case_weights_maximise_the_worst_domain() -> None:
    # domain scores: each domain is served by its own weight, with diminishing returns; the max-min point is the
    # one that balances them (here the first domain needs more weight for the same score)
    def score(w):
        return [np.sqrt(w[0]) * 0.8 + 1, np.sqrt(w[1]) + 1]

    w, table = worst_case_weights(score, 2, step=0.125)
    assert len(table) == 9
    assert w == max(table, key=lambda k: min(table[k]))
    assert w[0] > w[1]
    wr, _ = worst_case_weights(score, 2, step=0.125, reference=[1.8, 2.0])
    assert wr == max(table, key=lambda k: min(table[k][0] / 1.8, table[k][1] / 2.0))


def test_shrunk_graphs_of_statistics() -> None:
    from coact.stats import CoactStats

    x = np.stack([np.asarray(np.unpackbits(_planted(11, 100), axis=1, bitorder="little")[:, :64], dtype=np.int64)
                  for _ in range(2)], axis=1)
    st_ = CoactStats(freq=x.sum(0), coact=[x[:, l].T @ x[:, l] for l in range(2)], n_tokens=100)
    gs = list(shrunk_graphs(st_, 0.5))
    assert len(gs) == 2 and gs[1].meta["alpha"] == 0.5 and gs[0].n == 64


# ------------------------------------------------------------------------------ max-min weights, `solve --shrink`
def test_maxmin_weights_balance_the_worst_domain() -> None:
    # domain d's score grows with its own weight at rate c_d: the max-min point gives w_d proportional to 1 / c_d
    c = np.array([1.0, 2.0, 4.0])

    def score(w):
        return list(np.asarray(w) * c)

    w, worst, path = maxmin_weights(score, 3, step=0.25, min_step=0.01, max_evals=200)
    target = (1 / c) / (1 / c).sum()
    assert np.allclose(w, target, atol=0.03) and abs(sum(w) - 1) < 1e-5 and min(w) >= 0  # 6 decimals
    assert worst == pytest.approx(min(np.asarray(w) * c)) and worst >= min(score([1 / 3] * 3))
    assert [p[1] for p in path] == sorted(p[1] for p in path)  # only improving moves are accepted
    grid_best, table = worst_case_weights(score, 3, step=0.25)
    assert worst >= min(table[grid_best]) - 1e-9  # the ascent is at least as good as the coarse grid
    # with a reference, the worst *ratio* is maximised: equal references change nothing
    w2, _, _ = maxmin_weights(score, 3, reference=[2.0, 2.0, 2.0], step=0.25, min_step=0.01, max_evals=200)
    assert np.allclose(w2, w)


def _dense_stats(seed: int, T: int, n: int = 64, L: int = 2):
    from coact.stats import CoactStats
    from common.bits import unpack_bits

    pk = np.stack([_planted(seed + l, T, n) for l in range(L)], axis=1)
    x = np.stack([unpack_bits(pk[:, l], n) for l in range(L)], axis=1).astype(np.int64)
    st_ = CoactStats(freq=x.sum(0), coact=[x[:, l].T @ x[:, l] for l in range(L)], n_tokens=T,
                     meta={"model_id": "m"})
    return st_, pk


def test_shrunk_stats_feed_the_unchanged_solve_path(tmp_path) -> None:
    from coact.graph import layer_graph
    from runtime.layout import load_layout

    st_, _ = _dense_stats(20, 150)
    sh = ShrunkStats(st_, 0.5)
    f, c, T = st_.layer(1)
    want = to_graph(shrink(layer_counts(_planted(21, 150), 64), 0.5))
    g = layer_graph(sh, 1)
    assert np.array_equal(g.counts.toarray(), want.counts.toarray()) and np.array_equal(g.freq, want.freq)
    assert sh.digest == st_.digest and sh.meta["shrink_alpha"] == 0.5
    res, alpha, scores = solve_shrunk(st_, ["ripple"], tmp_path / "lay", shrink="0.5", progress=False)
    assert alpha == 0.5 and scores == {}
    lay = load_layout(tmp_path / "lay" / "ripple.safetensors")
    assert lay.n_layers == 2 and np.array_equal(lay.perms[1], get_solver("ripple").solve(g, seed=1))
    for bad in ("-1", "x"):
        with pytest.raises(ShrinkError):
            parse_strength(bad)
    with pytest.raises(ShrinkError, match="--validation"):
        solve_shrunk(st_, ["ripple"], None, shrink="auto", progress=False)


def test_shrink_auto_is_chosen_on_validation_tokens() -> None:
    st_, _ = _dense_stats(30, 25)  # few profiling tokens: noisy pairs
    _, val = _dense_stats(30, 300)  # same planted structure, other tokens
    best, scores = choose_strength(st_, val, alphas=(0.0, 0.3, 3.0))
    assert set(scores) == {0.0, 0.3, 3.0} and scores[best] == max(scores.values())
    res, alpha, sc = solve_shrunk(st_, ["ripple"], None, shrink="auto", validation=val, progress=False)
    assert sc and alpha in sc and sc[alpha] == max(sc.values())


def test_solve_cli_shrink(tmp_path) -> None:
    from typer.testing import CliRunner

    from coact.cli import app

    st_, val = _dense_stats(40, 120)
    st_.save(tmp_path / "s")
    r = CliRunner().invoke(app, ["solve", str(tmp_path / "s"), "--shrink", "0.3", "--out", str(tmp_path / "l"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows[0]["shrink"] == 0.3 and (tmp_path / "l" / "ripple.safetensors").is_file()
    r = CliRunner().invoke(app, ["solve", str(tmp_path / "s"), "--shrink", "auto", "--out", str(tmp_path / "l")])
    assert r.exit_code == 2 and "--validation" in r.output
