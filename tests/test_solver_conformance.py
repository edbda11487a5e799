"""Every registered solver (and a few chains) against the importable conformance suite :mod:`solvers.testing`.

A solver only has to be registered in ``solvers.base.SOLVERS`` to be picked up here; the contract itself lives in
``solvers/testing.py`` so that third-party solvers can be checked the same way (the last tests show how).
"""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import RegistryError, UserError
from common.registry import Registry
from solvers.base import (
    SOLVERS,
    SolverBase,
    available_solvers,
    check_permutation,
    check_time_limit,
    get_solver,
    objective,
    register,
)
from solvers.errors import SolverError
from solvers.graph import as_graph
from solvers.testing import brute_objective, check_solver, parametrize_with_checks, random_graph, solver_checks

NAMES = available_solvers()
CHAINS = ["random+ripple", "leiden+local-search", "path-cover+local-search"]


@parametrize_with_checks(NAMES + CHAINS)
def test_conformance(solver, check):
    check(solver)


def test_builtins_registered():
    assert {"identity", "random", "frequency", "ripple", "local-search", "path-cover", "ortools", "leiden",
            "spectral", "rcm", "collapse-ls"} <= set(NAMES)
    assert NAMES == sorted(NAMES)


def test_registry_descriptions_are_the_optimises_lines():
    desc = SOLVERS.describe()
    for name in NAMES:
        assert desc[name] == get_solver(name).optimises


def test_registry_errors():
    with pytest.raises(SolverError, match="unknown solver 'no-such-solver'; available: "):
        get_solver("no-such-solver")
    with pytest.raises(SolverError):
        get_solver("")
    with pytest.raises(SolverError, match="bad parameters"):
        get_solver("identity", no_such_param=1)
    for bad in ("ripple+", "+ripple", "random++ripple", "+", "ripple+ +random"):
        with pytest.raises(SolverError, match="malformed"):
            get_solver(bad)
    with pytest.raises(SolverError):
        get_solver("random+no-such-solver")
    with pytest.raises(RegistryError):  # a built-in name cannot be taken over silently
        register("ripple")(type("Impostor", (), {"optimises": "x"}))
    assert issubclass(SolverError, ValueError) and issubclass(SolverError, UserError)


def test_chain_passes_params_to_last_stage():
    s = get_solver("random+ripple", weight="jaccard")
    assert s.name == "random+ripple" and s.stages[-1].weight == "jaccard"


def test_negative_time_limit_refused():
    assert check_time_limit(None) is None and check_time_limit(0) == 0.0
    for bad in (-1, -0.001, float("nan")):
        with pytest.raises(SolverError):
            check_time_limit(bad)


def test_objective_brute_force_on_fixed_perms():
    g = random_graph(25, density=0.5, seed=8)
    rng = np.random.default_rng(8)
    for _ in range(5):
        p = rng.permutation(g.n)
        assert objective(p, g) == brute_objective(p, g)
        assert objective(p, g.counts) == objective(p, g.counts.toarray()) == objective(p, g)
    assert objective(np.array([0]), g) == 0


def test_check_permutation_rejects():
    for bad in ([0, 0, 1], [0, 1], [0, 1, 3], [[0, 1, 2]], [0.0, 1.0, 2.0], [-1, 0, 1]):
        with pytest.raises(SolverError):
            check_permutation(np.array(bad), 3)
    assert check_permutation([2, 0, 1], 3).dtype == np.int64


def test_solver_checks_are_named():
    names = [n for n, _ in solver_checks()]
    assert len(names) == len(set(names)) and all(n.startswith("check_") for n in names)


# -- third-party solvers ----------------------------------------------------------------------------------------------


class ReverseFrequency:
    """A third-party solver that does not derive from SolverBase: coldest neurons first. It only uses the public
    helpers (as_graph, check_time_limit) to meet the contract."""

    name = "reverse-frequency"
    optimises = "nothing (coldest neurons first; a test solver)"

    def __init__(self, stable: bool = True) -> None:
        self.stable = stable

    def solve(self, counts, freq=None, *, seed=0, time_limit=None, init=None, progress=None):
        g = as_graph(counts, freq)
        check_time_limit(time_limit)
        if progress is not None:
            progress(self.name, 1, 1)
        return np.lexsort((np.arange(g.n), g.freq)).astype(np.int64)


def test_third_party_factory_passes_check_solver():
    check_solver(ReverseFrequency, stable=False)


def test_third_party_registered_in_a_fresh_registry():
    reg = Registry("solver")
    reg.register("reverse-frequency")(ReverseFrequency)
    assert reg.names() == ["reverse-frequency"]
    check_solver(lambda: reg.create("reverse-frequency"))


def test_check_solver_reports_a_broken_solver():
    class Broken(SolverBase):
        name = "broken"
        optimises = "nothing (returns a repeated neuron)"

        def solve(self, counts, freq=None, *, seed=0, time_limit=None, init=None, progress=None):
            n = as_graph(counts, freq).n
            return np.zeros(n, dtype=np.int64)

    with pytest.raises(AssertionError, match="broken: check_valid_permutation_and_objective"):
        check_solver(Broken)
