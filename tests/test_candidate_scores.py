"""Candidate graphs ranked by a normalised score (coact.bitcount.candidates, ``coact stats --candidates``): a hot
neuron that wins by raw count loses by Jaccard; for every score the stored counts are exact and ``excluded_max``
is the largest *raw* count left out (so the proven bounds of solvers.bounds hold), checked against brute force."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from coact import bitcount
from coact.cli import app
from coact.graph import layer_graph
from coact.sample import sample_dir
from coact.stats import (CANDIDATE_SCORES, DEFAULT_CANDIDATES, DEFAULT_TOP_K, CoactStats, compute_stats,
                         count_stats)
from common.bits import pack_bits
from solvers.base import objective
from solvers.bounds import degree_bound


def hot_example() -> np.ndarray:
    """100 tokens: neuron 0 hot (tokens 0-89), neuron 1 on 70-99, neuron 2 on 85-99, neuron 3 on 0-29.
    Neuron 1 co-fires 20 times with the hot neuron and 15 times with neuron 2 (which fires only 15 times)."""
    act = np.zeros((100, 4), dtype=bool)
    act[0:90, 0] = True
    act[70:100, 1] = True
    act[85:100, 2] = True
    act[0:30, 3] = True
    return act


def test_hot_neuron_wins_by_count_but_loses_by_jaccard() -> None:
    act = hot_example()
    C = act.T.astype(np.int64) @ act.astype(np.int64)
    assert C[1, 0] == 20 and C[1, 2] == 15  # by raw count the hot neuron is 1's best partner ...
    assert bitcount.top_partners(C, 4, 1, "count")[1, 0] == 0
    # ... but 20 / (30 + 90 - 20) = 0.2 < 15 / (30 + 15 - 15) = 0.5: by Jaccard it is neuron 2
    assert bitcount.top_partners(C, 4, 1, "jaccard")[1, 0] == 2
    assert bitcount.top_partners(C, 4, 1, "min")[1, 0] == 2
    assert bitcount.top_partners(C, 4, 1, "lift", 100)[1, 0] == 2
    # neuron 3 only ever fires with the hot neuron: its one partner under any score
    for score in CANDIDATE_SCORES:
        assert bitcount.top_partners(C, 4, 1, score, 100)[3, 0] == 0
    # the kept counts are exact raw counts and excluded_max is the largest raw count left out
    ip, ix, cnt, xm = bitcount.candidates(C, 4, 1, "jaccard", 100)
    stored = {(i, int(j)): int(c) for i in range(4) for j, c in zip(ix[ip[i]:ip[i + 1]], cnt[ip[i]:ip[i + 1]])}
    assert stored[(1, 2)] == 15 and stored[(0, 3)] == 30
    assert (1, 0) not in stored and xm[1] == 20  # the hot pair is out, and bounded by its raw count


def brute_force(C: np.ndarray, k: int, score: str, T: int) -> tuple[set[tuple[int, int]], np.ndarray]:
    """Union of each neuron's top-k partners (score desc, count desc, id asc; only co-firing pairs) and per neuron
    the largest raw count of a pair outside it — by plain Python loops and the formulas of the docstring."""
    n = C.shape[0]
    if "+" in score:  # a union of each score's top-k
        parts = [brute_force(C, k, p, T)[0] for p in score.split("+")]
        edges = set().union(*parts)
        xm = np.array([max([int(C[i, j]) for j in range(n) if j != i and (i, j) not in edges], default=0)
                       for i in range(n)])
        return edges, xm
    if bitcount.clique_size(score) is not None:  # every co-firing pair among the H most frequent (ties: smaller id)
        top = sorted(range(n), key=lambda i: (-int(C[i, i]), i))[:bitcount.clique_size(score)]
        edges = {(i, j) for i in top for j in top if i != j and C[i, j] > 0}
        return edges, np.zeros(n, dtype=np.int64)
    f = np.diagonal(C).astype(np.float64)
    formula = {"count": lambda c, i, j: c,
               "jaccard": lambda c, i, j: c / (f[i] + f[j] - c),
               "lift": lambda c, i, j: c * float(T) / (f[i] * f[j]),
               "cosine": lambda c, i, j: c / np.sqrt(f[i] * f[j]),
               "min": lambda c, i, j: c / min(f[i], f[j]),
               "hot": lambda c, i, j: f[j]}[score]
    edges: set[tuple[int, int]] = set()
    for i in range(n):
        part = [j for j in range(n) if j != i and C[i, j] > 0]
        part.sort(key=lambda j: (-formula(float(C[i, j]), i, j), -int(C[i, j]), j))
        for j in part[:k]:
            edges |= {(i, j), (j, i)}
    xm = np.array([max([int(C[i, j]) for j in range(n) if j != i and (i, j) not in edges], default=0)
                   for i in range(n)])
    return edges, xm


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 120), N=st.integers(1, 30), k=st.integers(1, 5), seed=st.integers(0, 99),
       score=st.sampled_from(CANDIDATE_SCORES + ("jaccard+lift", "count+min", "jaccard+clique4",
                                                    "jaccard+lift+clique12")))
def test_candidates_match_brute_force_for_every_score(T: int, N: int, k: int, seed: int, score: str) -> None:
    rng = np.random.default_rng(seed)
    rates = rng.choice([0.0, 0.05, 0.3, 0.9], size=N)  # hot, rare and dead neurons: ties and zero rows
    packed = pack_bits((rng.random((T, N)) < rates)[:, None, :])
    dense = compute_stats(packed, n_neurons=N, progress=False)
    cand = count_stats(packed, n_neurons=N, top_k=k, candidates=score, progress=False)
    assert cand.candidate_score == score
    edges, xm = brute_force(dense.coact[0], k, score, T)
    g = layer_graph(cand, 0)
    rows = np.repeat(np.arange(N), np.diff(g.counts.indptr))
    assert set(zip(rows.tolist(), g.counts.indices.tolist())) == edges
    np.testing.assert_array_equal(g.counts.data, dense.coact[0][rows, g.counts.indices])  # exact raw counts
    np.testing.assert_array_equal(cand.excluded_max(0), xm)


def test_clique_part_keeps_the_hot_pairs_a_top_k_graph_drops() -> None:
    """Four hot neurons co-fire with everyone: each neuron's top-1 partner is the hottest one (a star), so the
    pairs among the other hot neurons are dropped; ``+clique4`` stores them with their exact counts."""
    rng = np.random.default_rng(0)
    act = rng.random((400, 12)) < np.array([0.95, 0.9, 0.85, 0.8] + [0.1] * 8)
    dense = compute_stats(pack_bits(act[:, None, :]), n_neurons=12, progress=False)
    C = dense.coact[0]
    star = layer_graph(count_stats(pack_bits(act[:, None, :]), n_neurons=12, top_k=1, candidates="count",
                                   progress=False), 0)
    assert star.counts[2, 3] == 0
    g = layer_graph(count_stats(pack_bits(act[:, None, :]), n_neurons=12, top_k=1, candidates="count+clique4",
                                progress=False), 0)
    for i, j in itertools.combinations(range(4), 2):
        assert g.counts[i, j] == C[i, j] > 0
    assert g.excluded_max[2] < star.excluded_max[2]


def test_clique_spec_errors() -> None:
    assert bitcount.clique_size("clique1000") == 1000 and bitcount.clique_size("clique1") is None
    for bad in ("clique8", "jaccard+clique1", "jaccard+clique4+clique8", "jaccard+cliquex"):
        try:
            bitcount.score_parts(bad)
        except ValueError as e:
            assert bad in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_degree_bound_stays_above_the_optimum_on_a_jaccard_graph() -> None:
    """The proven bound needs only excluded_max >= every dropped raw count, whatever ranked the partners."""
    rng = np.random.default_rng(4)
    act = rng.random((200, 7)) < np.array([0.9, 0.8, 0.3, 0.3, 0.1, 0.1, 0.05])
    dense = compute_stats(pack_bits(act[:, None, :]), n_neurons=7, progress=False)
    full = layer_graph(dense, 0)
    best = max(objective(np.array(p), full) for p in itertools.permutations(range(7)))
    for k in (1, 2):
        cand = count_stats(pack_bits(act[:, None, :]), n_neurons=7, top_k=k, candidates="jaccard", progress=False)
        g = layer_graph(cand, 0)
        assert g.is_candidate
        assert degree_bound(g) >= best


def test_cli_candidates_option(tmp_path: Path) -> None:
    prof = sample_dir() / "profile"
    run = CliRunner().invoke
    res = run(app, ["stats", str(prof), "--out", str(tmp_path / "a"), "--stop", "128", "--top-k", "4",
                    "--candidates", "count", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["candidates"] == "count"
    res = run(app, ["stats", str(prof), "--out", str(tmp_path / "b"), "--stop", "128", "--top-k", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["candidates"] == DEFAULT_CANDIDATES
    res = run(app, ["stats", str(prof), "--out", str(tmp_path / "d"), "--stop", "128", "--json"])
    assert res.exit_code == 0, res.output
    assert (json.loads(res.stdout)["kind"], json.loads(res.stdout)["top_k"]) == ("candidate", DEFAULT_TOP_K)
    a, b = CoactStats.load(tmp_path / "a"), CoactStats.load(tmp_path / "b")  # the score survives a round trip
    assert (a.candidate_score, b.candidate_score) == ("count", DEFAULT_CANDIDATES)
    assert a.digest != b.digest
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["candidates"] == DEFAULT_CANDIDATES
    res = run(app, ["stats", str(prof), "--out", str(tmp_path / "c"), "--stop", "128", "--candidates", "bogus"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "bogus" in lines[0], res.output



def test_cli_clique_stats_then_solve_with_a_solver_parameter(tmp_path: Path) -> None:
    """`coact stats --candidates jaccard+lift+clique64` then `coact solve --param kicks=200`: the clique's pairs are
    stored, the parameter reaches the solver (recorded in the layout) and an unknown one is a one-line error."""
    from runtime.layout import load_layout

    prof = sample_dir() / "profile"
    run = CliRunner().invoke
    res = run(app, ["stats", str(prof), "--out", str(tmp_path / "s"), "--stop", "128", "--top-k", "2",
                    "--candidates", "jaccard+lift+clique64", "--json"])
    assert res.exit_code == 0, res.output
    st = CoactStats.load(tmp_path / "s")
    assert st.candidate_score == "jaccard+lift+clique64"
    g, freq = layer_graph(st, 0), st.freq[0]
    hot = np.sort(np.argsort(-freq.astype(np.int64), kind="stable")[:64])
    sub = g.counts.tocsr()[hot][:, hot]
    assert sub.nnz >= 0.9 * 64 * 63  # nearly every pair among the hottest neurons co-fires and is stored
    res = run(app, ["solve", str(tmp_path / "s"), "--solver", "local-search", "--param", "kicks=200",
                    "--out", str(tmp_path / "lay"), "--json"])
    assert res.exit_code == 0, res.output
    assert load_layout(tmp_path / "lay" / "local-search.safetensors").params["kicks"] == 200
    res = run(app, ["solve", str(tmp_path / "s"), "--solver", "local-search", "--param", "nosuch=1",
                    "--out", str(tmp_path / "bad")])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "nosuch" in lines[0], res.output
