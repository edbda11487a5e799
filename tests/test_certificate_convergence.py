"""The Held-Karp 1-tree bound (solvers.held_karp) is proven for ANY multipliers, so a certificate stopped at any
iteration is still an upper bound; and the iterated local search (local-search ``kicks``) never loses objective.
Brute force on small instances (every permutation)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.base import get_solver, objective
from solvers.bounds import solve_two_matching_lp
from solvers.graph import CoactGraph
from solvers.held_karp import held_karp_bound, one_tree_value

try:
    from tests.test_bounds import brute_optimum, small_graphs
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from test_bounds import brute_optimum, small_graphs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_graphs(), st.integers(min_value=0, max_value=2**31 - 1), st.sampled_from([0.1, 10.0, 1000.0]))
def test_one_tree_value_bounds_every_path_for_any_multipliers(g, seed, scale):
    """L(λ) >= the brute-force optimum for random λ of either sign (weak duality, solvers/held_karp.py docstring),
    and the subgradient run (from the default start or from random λ) returns a bound >= the optimum."""
    C = g.counts.toarray().astype(np.uint32)
    opt = brute_optimum(g)
    rng = np.random.default_rng(seed)
    lam = rng.normal(0.0, scale, g.n)
    assert one_tree_value(C, lam)[0] >= opt - 1e-6
    assert held_karp_bound(C, max_iter=30).bound >= opt
    assert held_karp_bound(C, lam, lower=opt, max_iter=30).bound >= opt


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_graphs(), st.integers(min_value=0, max_value=3))
def test_held_karp_from_lp_duals_is_proven_on_candidate_graphs(g, k):
    """The certificate chain of bench/bench_scale_gap.py: LP on a candidate graph with exact counts, then Held-Karp
    warm-started from its duals; both >= the optimum of the FULL graph, and the warm start is at least as good as
    the LP's own 1-tree value (the best value seen is kept)."""
    full = g.counts.toarray().astype(np.uint32)
    opt = brute_optimum(g)
    lp = solve_two_matching_lp(g.candidate_graph(k), k=2, exact=full)
    assert lp.bound >= opt
    if lp.duals is None:
        return
    hk = held_karp_bound(full, lp.duals, lower=opt, max_iter=40)
    assert opt <= hk.bound <= np.floor(one_tree_value(full, lp.duals)[0] + 1e-6)


def test_held_karp_is_exact_on_a_planted_path():
    """A heavy planted Hamiltonian path over light noise: the 1-tree becomes that path (status "path") and the
    bound equals its weight, i.e. the optimum is proven."""
    rng = np.random.default_rng(2)
    n = 60
    c = np.triu(rng.integers(0, 3, size=(n, n)), 1)
    order = rng.permutation(n)
    c[np.minimum(order[:-1], order[1:]), np.maximum(order[:-1], order[1:])] = rng.integers(50, 100, n - 1)
    C = c + c.T
    w = int(C[order[:-1], order[1:]].sum())
    res = held_karp_bound(C, max_iter=200)
    assert res.bound == w and res.status in ("path", "gap")


def test_kicks_never_lose_and_are_reproducible():
    """local-search with kicks: a valid permutation, objective >= plain local search from the same start, and
    the same result twice (the kick count, not the clock, decides)."""
    rng = np.random.default_rng(0)
    n = 300
    c = np.triu(rng.integers(0, 100, (n, n)) * (rng.random((n, n)) < 0.05), 1)
    g = CoactGraph.from_dense(c + c.T)
    plain = get_solver("local-search", time_limit=60).solve(g, seed=1)
    a = get_solver("local-search", kicks=3000, time_limit=60).solve(g, seed=1)
    b = get_solver("local-search", kicks=3000, time_limit=60).solve(g, seed=1)
    assert sorted(a.tolist()) == list(range(n))
    assert np.array_equal(a, b)
    assert objective(a, g) >= objective(plain, g)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_graphs(), st.integers(min_value=0, max_value=3))
def test_blossom_cuts_keep_the_bound_proven(g, k):
    """With 2-matching blossom inequalities (``blossoms=True``) the LP bound, on the full graph and on a candidate
    graph with exact counts, is still >= the brute-force optimum."""
    opt = brute_optimum(g)
    full = g.counts.toarray().astype(np.uint32)
    assert solve_two_matching_lp(g, k=2, blossoms=True).bound >= opt
    assert solve_two_matching_lp(g.candidate_graph(k), k=1, exact=full, blossoms=True).bound >= opt


def test_blossom_cut_closes_a_fractional_gap():
    """A 6-neuron graph (found by search) where the subtour-cut LP stays 1 above the optimum: the blossom
    cut (handle = a fractional triangle, odd teeth) brings the bound down to the optimum."""
    c = np.array([[0, 0, 7, 0, 4, 5], [0, 0, 0, 0, 1, 5], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 3, 0],
                  [0, 0, 0, 0, 0, 5], [0, 0, 0, 0, 0, 0]])
    g = CoactGraph.from_dense(c + c.T)
    opt = brute_optimum(g)
    assert solve_two_matching_lp(g, k=None).bound > opt
    assert solve_two_matching_lp(g, k=None, blossoms=True).bound == opt
