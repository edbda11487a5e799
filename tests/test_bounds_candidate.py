"""The bounds stay *proven* on candidate graphs (pairs dropped, ``excluded_max`` given): never below the optimum of the
FULL graph, for random small graphs with edges dropped by top-k (solvers.bounds module docstring has the proof)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.base import get_solver, objective
from solvers.bounds import adjacency_upper_bound, degree_bound, excluded_correction, solve_two_matching_lp
from solvers.errors import SolverError
from solvers.graph import CoactGraph, GraphError

try:
    from tests.test_bounds import brute_optimum, small_graphs
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from test_bounds import brute_optimum, small_graphs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_graphs(), st.integers(min_value=0, max_value=4), st.booleans())
def test_candidate_bounds_at_least_full_optimum(g, k, cuts):
    cg = g.candidate_graph(k)
    opt = brute_optimum(g)  # optimum of the FULL graph
    assert cg.n_edges <= g.n_edges
    assert degree_bound(cg) >= opt
    b = adjacency_upper_bound(cg, k=2, cuts=cuts)
    assert b >= opt
    assert b <= degree_bound(cg)
    # dropping edges can only loosen the bound (the complete graph's LP bound is never above the candidate one's
    # degree bound, and objectives measured on the candidate graph are lower bounds of the full ones)
    assert adjacency_upper_bound(g, k=2, cuts=cuts) <= degree_bound(cg)


def test_candidate_graph_excluded_max_is_exact():
    rng = np.random.default_rng(3)
    n = 30
    c = np.triu(rng.integers(0, 50, size=(n, n)), 1)
    g = CoactGraph.from_dense(c + c.T)
    cg = g.candidate_graph(3)
    full, kept = g.counts.toarray(), cg.counts.toarray()
    assert np.all((kept == 0) | (kept == full))  # exact counts on the kept pairs
    dropped = np.where(kept == 0, full, 0)
    np.testing.assert_array_equal(cg.excluded_max, dropped.max(axis=1))
    assert cg.is_candidate and not g.is_candidate
    for i in range(n):  # every neuron keeps its top-3 partners
        top = np.sort(full[i])[::-1][:3]
        assert np.all(np.isin(top[top > 0], kept[i]))


def test_correction_zero_without_dropped_pairs_and_bad_excluded_refused():
    assert excluded_correction(None, np.ones(3), 1.0) == 0.0
    xm = np.array([10, 0, 4])
    # (a): sum max(0, xm - 2 lam - mu) = 10 - 2 - 1 + 0 + 4 - 2 - 1 = 8; (b): 2 * (10-1-1-1 + 0 + 4-1-1-1) = 16
    assert excluded_correction(xm, np.ones(3), 1.0) == 8.0
    with pytest.raises(GraphError):
        CoactGraph.from_dense(np.zeros((3, 3), dtype=np.int64)).__class__(
            counts=np.zeros((3, 3), dtype=np.int64), freq=np.zeros(3), n_tokens=0, excluded_max=np.array([-1, 0, 0]))


@pytest.mark.parametrize("k", [4, 8])
def test_gap_per_solver_on_candidate_graph(k):
    """Medium random graph with structure: each solver's objective ON THE CANDIDATE GRAPH (a lower bound of its
    full objective) is at most its full objective, which is at most the candidate bound."""
    try:
        from tests.synthetic import planted_chain_graph
    except ImportError:
        from synthetic import planted_chain_graph
    inst = planted_chain_graph(300, seed=1)
    g = inst.graph
    cg = g.candidate_graph(k)
    b = adjacency_upper_bound(cg, time_limit=20)
    full_b = adjacency_upper_bound(g, time_limit=20)
    assert b >= full_b
    for name in ("ripple", "local-search", "path-cover"):
        perm = get_solver(name, time_limit=2.0).solve(cg, seed=0) if name != "ripple" else \
            get_solver(name).solve(cg, seed=0)
        on_cand, on_full = objective(perm, cg), objective(perm, g)
        assert on_cand <= on_full <= full_b <= b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_graphs(), st.integers(min_value=0, max_value=3), st.booleans(), st.sampled_from([0, 1, 4]))
def test_exact_count_bound_at_least_full_optimum(g, k, cuts, price_r):
    """The exact-count certificate (``exact=`` full matrix, pairs outside the LP priced from it) is still >= the
    brute-force optimum of the FULL graph, whatever the candidate graph and however few pairs are priced per round."""
    cg = g.candidate_graph(k)
    full = g.counts.toarray().astype(np.uint32)
    opt = brute_optimum(g)
    b = solve_two_matching_lp(cg, k=2, cuts=cuts, exact=full, price_r=price_r).bound
    assert opt <= b <= degree_bound(cg)


def test_exact_count_bound_matches_dense_lp_on_flat_graph():
    """A flat graph (every neuron's dropped partners as strong as its kept ones): 6 hubs co-fire ~100 times with
    everyone, other pairs 1-3 times; each neuron keeps 3 hubs and its best dropped pair is another hub, so the
    excluded_max bound must allow a path of ~100s, while a path can touch the hubs only 12 times. The exact-count
    bound comes back to the dense LP bound (both proven, so neither is below the best solver's full objective)."""
    rng = np.random.default_rng(5)
    n = 80
    c = np.triu(rng.integers(1, 4, size=(n, n)), 1)
    c[:6, 6:] = rng.integers(95, 105, size=(6, n - 6))
    full = c + c.T
    g = CoactGraph.from_dense(full)
    cg = g.candidate_graph(3)
    dense = adjacency_upper_bound(g, time_limit=20)
    cand = adjacency_upper_bound(cg, time_limit=20)
    res = solve_two_matching_lp(cg, exact=full, time_limit=20)
    best = max(objective(get_solver(s, time_limit=2.0).solve(cg, seed=0), g) for s in ("local-search", "path-cover"))
    assert best <= dense <= res.bound < cand
    assert res.bound <= dense * 1.01  # priced to the dense optimum (to the LP's tolerance)
    assert res.edges.u.size > cg.n_edges  # pairs outside the candidate graph were priced in


def test_exact_counts_must_match_the_graph():
    g = CoactGraph.from_dense(np.array([[0, 3, 1], [3, 0, 2], [1, 2, 0]]))
    cg = g.candidate_graph(1)
    wrong = g.counts.toarray()
    wrong[0, 1] = wrong[1, 0] = 4
    with pytest.raises(SolverError):
        solve_two_matching_lp(cg, exact=wrong)
    with pytest.raises(SolverError):
        solve_two_matching_lp(cg, exact=np.zeros((2, 2), dtype=np.int64))
