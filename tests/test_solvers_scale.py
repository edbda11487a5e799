"""Solvers and the LP bound on candidate graphs (top-k partners kept, ``excluded_max`` for the rest): valid
placements, objectives measured on the candidate graph never above the full ones, the warm-started HiGHS LP and the
cold linprog LP both proven, and the best solver close to the bound on planted structure. Small shapes, no timing."""
from __future__ import annotations

import numpy as np
import pytest

from solvers.base import get_solver, objective
from solvers.bounds import adjacency_upper_bound, degree_bound, solve_two_matching_lp

try:
    from tests.synthetic import planted_chain_graph
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from synthetic import planted_chain_graph


@pytest.fixture(scope="module")
def inst():
    g = planted_chain_graph(1500, seed=7).graph
    return g, g.candidate_graph(6)


@pytest.mark.parametrize("name", ["ripple", "local-search", "path-cover"])
def test_solvers_on_candidate_graph(inst, name):
    g, cg = inst
    perm = get_solver(name).solve(cg, seed=0, time_limit=20)
    assert np.array_equal(np.sort(perm), np.arange(g.n))
    assert objective(perm, cg) <= objective(perm, g)


def test_lp_backends_both_proven_and_close(inst):
    g, cg = inst
    best = max(objective(get_solver(s).solve(cg, seed=0, time_limit=20), g) for s in ("ripple", "path-cover"))
    warm = solve_two_matching_lp(cg, backend="highs", time_limit=60)
    cold = solve_two_matching_lp(cg, backend="linprog", time_limit=60)
    for r in (warm, cold):
        assert best <= r.bound <= degree_bound(cg)
    # same LP relaxation (the highs one also prices the dropped pairs inside the LP): bounds within 1 % of each other
    assert abs(warm.bound - cold.bound) <= 0.01 * max(warm.bound, cold.bound)


def test_best_solver_within_one_percent_of_candidate_bound_on_planted_chains(inst):
    g, cg = inst
    b = adjacency_upper_bound(cg, time_limit=60)
    obj = objective(get_solver("path-cover").solve(cg, seed=0, time_limit=20), cg)
    assert b >= obj
    assert (b - obj) <= 0.01 * b


def test_complete_graph_bound_unchanged_by_candidate_machinery(inst):
    """With nothing dropped (excluded_max all 0) the candidate graph is the graph: same bound."""
    g, _ = inst
    full = g.candidate_graph(g.n)
    assert not full.is_candidate
    assert adjacency_upper_bound(full, time_limit=60) == adjacency_upper_bound(g, time_limit=60)
