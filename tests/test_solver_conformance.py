"""The shared solver conformance suite (the scikit-learn ``check_estimator`` of coact, DESIGN §7).

Every solver in the registry is checked automatically: a solver module only has to be imported by
``solvers/__init__.py`` to be picked up here. Contract checked (solvers.base.Solver):

- ``name`` / ``optimises`` are non-empty strings; the object satisfies the ``Solver`` protocol;
- ``solve`` returns a permutation of range(n) (int64) on random graphs, N = 1, N = 2, graphs without edges and graphs
  with isolated or never-active neurons;
- the same ``seed`` gives the same placement (solvers that stop on the wall clock must converge on these small
  instances before the time limit, or use a deterministic work budget);
- ``time_limit`` is respected (generously: within 5 x limit + 5 s, compilation included; no tight timing);
- ``init`` (a valid permutation) is accepted, and chaining ``random+<solver>`` works;
- ``objective`` of the result equals a brute-force sum.

Slow solvers can be capped to smaller instances (or given parameters) in ``OVERRIDES``.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from coact.graph import CoactGraph
from solvers.base import Solver, SolverError, available_solvers, check_permutation, get_solver, objective

try:
    from tests.synthetic import brute_objective, random_graph
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from synthetic import brute_objective, random_graph

SOLVERS = available_solvers()

#: name -> {"max_n": cap on instance size, "params": constructor parameters}. Keep entries rare and justified.
OVERRIDES: dict[str, dict] = {}

TIME_LIMIT = 2.0


def make(name: str) -> Solver:
    return get_solver(name, **OVERRIDES.get(name, {}).get("params", {}))


def size(name: str, n: int) -> int:
    return min(n, OVERRIDES.get(name, {}).get("max_n", n))


def solve(name: str, graph: CoactGraph, **kw) -> np.ndarray:
    kw.setdefault("time_limit", TIME_LIMIT)
    perm = make(name).solve(graph, **kw)
    p = check_permutation(perm, graph.n)
    assert np.asarray(perm).dtype == np.int64, f"{name} returned dtype {np.asarray(perm).dtype}, expected int64"
    return p


def test_builtins_registered():
    assert {"identity", "random", "frequency", "ripple"} <= set(SOLVERS)
    assert SOLVERS == sorted(SOLVERS)


def test_registry_errors():
    with pytest.raises(SolverError):
        get_solver("no-such-solver")
    with pytest.raises(SolverError):
        get_solver("")
    with pytest.raises(SolverError):
        get_solver("identity", no_such_param=1)
    assert issubclass(SolverError, ValueError)


@pytest.mark.parametrize("name", SOLVERS)
def test_protocol(name):
    s = make(name)
    assert isinstance(s, Solver)
    assert s.name == name
    assert isinstance(s.optimises, str) and s.optimises.strip()


@pytest.mark.parametrize("name", SOLVERS)
def test_random_graph_valid_and_objective_matches_brute_force(name):
    g = random_graph(size(name, 120), density=0.3, seed=1)
    p = solve(name, g, seed=0)
    assert objective(p, g) == brute_objective(p, g)


@pytest.mark.parametrize("name", SOLVERS)
def test_deterministic_for_fixed_seed(name):
    g = random_graph(size(name, 40), density=0.4, seed=2)
    a = solve(name, g, seed=3)
    b = solve(name, g, seed=3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", SOLVERS)
def test_n1_and_n2(name):
    g1 = CoactGraph.from_dense(np.array([[4]]))
    np.testing.assert_array_equal(solve(name, g1), [0])
    for c in ([[3, 2], [2, 5]], [[3, 0], [0, 5]], [[0, 0], [0, 0]]):
        g2 = CoactGraph.from_dense(np.array(c))
        p = solve(name, g2)
        assert sorted(p.tolist()) == [0, 1]


@pytest.mark.parametrize("name", SOLVERS)
def test_graph_without_edges(name):
    g = CoactGraph.from_dense(np.zeros((10, 10), dtype=np.int64), freq=np.arange(10), n_tokens=20)
    solve(name, g, seed=1)
    gz = CoactGraph.from_dense(np.zeros((7, 7), dtype=np.int64))  # never-active neurons too
    solve(name, gz, seed=1)


@pytest.mark.parametrize("name", SOLVERS)
def test_isolated_and_dead_neurons(name):
    n = size(name, 30)
    rng = np.random.default_rng(4)
    c = random_graph(n, density=0.3, seed=4).counts.toarray()
    iso = rng.choice(n, size=n // 3, replace=False)
    c[iso, :] = 0
    c[:, iso] = 0
    freq = c.max(axis=1) + 1
    freq[iso[: len(iso) // 2]] = 0  # some never fire at all
    g = CoactGraph.from_dense(c, freq=freq, n_tokens=int(freq.max()) + 1)
    p = solve(name, g, seed=0)
    assert objective(p, g) == brute_objective(p, g)


@pytest.mark.parametrize("name", SOLVERS)
def test_respects_time_limit(name):
    g = random_graph(size(name, 400), density=0.5, seed=5)
    t0 = time.perf_counter()
    solve(name, g, seed=0, time_limit=TIME_LIMIT)
    elapsed = time.perf_counter() - t0
    assert elapsed < TIME_LIMIT * 5 + 5, f"{name} took {elapsed:.1f}s with time_limit={TIME_LIMIT}"


@pytest.mark.parametrize("name", SOLVERS)
def test_accepts_init(name):
    g = random_graph(size(name, 50), density=0.3, seed=6)
    for init in (np.random.default_rng(0).permutation(g.n), np.arange(g.n)):
        solve(name, g, seed=0, init=init.astype(np.int64))


@pytest.mark.parametrize("name", SOLVERS)
def test_chain_after_random(name):
    g = random_graph(size(name, 50), density=0.3, seed=7)
    s = get_solver(f"random+{name}", **OVERRIDES.get(name, {}).get("params", {}))
    assert s.name == f"random+{name}"
    check_permutation(s.solve(g, seed=0, time_limit=TIME_LIMIT), g.n)


def test_objective_brute_force_on_fixed_perms():
    g = random_graph(25, density=0.5, seed=8)
    rng = np.random.default_rng(8)
    for _ in range(5):
        p = rng.permutation(g.n)
        assert objective(p, g) == brute_objective(p, g)
    assert objective(np.array([0]), g) == 0


def test_check_permutation_rejects():
    for bad in ([0, 0, 1], [0, 1], [0, 1, 3], [[0, 1, 2]], [0.0, 1.0, 2.0], [-1, 0, 1]):
        with pytest.raises(SolverError):
            check_permutation(np.array(bad), 3)
