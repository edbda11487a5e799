"""The solver conformance suite, importable: the ``sklearn.utils.estimator_checks`` of coact.

Why importable (not only a test file): a third-party solver registered in :data:`solvers.base.SOLVERS` (or kept in
its own package) must meet the same contract as the built-ins before ``coact solve`` may trust its placements, and
its author should be able to check that with one call::

    from solvers.testing import check_solver
    check_solver("my-solver")           # a registered name or chain
    check_solver(MySolver, k=4)         # a factory (class or function) and its parameters

or, in a pytest file, one test per (solver, check)::

    @parametrize_with_checks(["ripple", MySolver])
    def test_conformance(solver, check):
        check(solver)

Contract checked (:class:`solvers.base.Solver`):

- ``name`` / ``optimises`` are non-empty strings and the object satisfies the protocol (a registered solver's
  ``name`` is its registry name);
- ``solve`` returns an int64 permutation of range(n) on random graphs, on n = 0, 1 and 2, on graphs without edges
  and on graphs with isolated or never-active neurons, and its ``objective`` equals a brute-force sum;
- the same ``seed`` gives the same placement (solvers that stop on the wall clock must converge on these small
  instances before the time limit, or use a deterministic work budget);
- a CoactGraph, a scipy sparse matrix and a dense array (with ``freq``) give the same placement;
- ``time_limit`` is respected (generously: within 5 x limit + 5 s, compilation included; no tight timing), and a
  negative one is refused with :class:`solvers.errors.SolverError`;
- ``init`` (a valid permutation) is accepted and not modified, and the chain ``random+<solver>`` works;
- a ``progress`` callback is accepted, and any report has the ``(description, done, total)`` shape.

Every check is a function ``check(make)`` of a zero-argument factory returning a fresh solver (see
:func:`as_factory`); it raises ``AssertionError`` with the reason.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from solvers.base import ChainSolver, Solver, check_permutation, get_solver, objective
from solvers.errors import SolverError
from solvers.graph import CoactGraph

__all__ = ["TIME_LIMIT", "as_factory", "brute_objective", "check_solver", "parametrize_with_checks",
           "random_graph", "salted_rng", "solver_checks"]

#: Budget (seconds) given to every solve in the checks.
DETERMINISM_TIME_LIMIT = 60.0
TIME_LIMIT = 2.0

Check = Callable[[Callable[[], Solver]], None]


# ------------------------------------------------------------------------------------------------------ instances


def salted_rng(seed: int) -> np.random.Generator:
    """``default_rng([seed, salt])``: salted so that a generated hidden order is never the permutation the
    ``random`` solver draws with the same seed (``default_rng(seed).permutation(n)`` would reproduce it)."""
    return np.random.default_rng([int(seed), 0x0C0AC7])


def random_graph(n: int, density: float = 0.3, seed: int = 0, *, max_count: int = 50) -> CoactGraph:
    """An unstructured random graph: each pair present with probability ``density``, count uniform in
    [1, max_count]; freq = row max + a random margin (consistent: freq >= counts)."""
    rng = salted_rng(seed)
    c = rng.integers(1, max_count + 1, size=(n, n)) * (rng.random((n, n)) < density)
    c = np.triu(c, 1)
    c = c + c.T
    freq = (c.max(axis=1, initial=0) + rng.integers(0, max_count, size=n)).astype(np.int64)
    return CoactGraph.from_dense(c, freq=freq, n_tokens=int(freq.max(initial=0)) + 1)


def brute_objective(perm: Iterable[int], graph: CoactGraph) -> int:
    """docs/DESIGN.md §2 objective by a plain loop over a dense copy (reference for :func:`solvers.base.objective`)."""
    dense = graph.counts.toarray()
    p = [int(x) for x in perm]
    return int(sum(int(dense[a, b]) for a, b in zip(p[:-1], p[1:])))


def _isolated_and_dead(n: int) -> CoactGraph:
    """A random graph where a third of the neurons have no partner and half of those never fire."""
    rng = np.random.default_rng(4)
    c = random_graph(n, density=0.3, seed=4).counts.toarray()
    iso = rng.choice(n, size=n // 3, replace=False)
    c[iso, :] = 0
    c[:, iso] = 0
    freq = c.max(axis=1) + 1
    freq[iso[: len(iso) // 2]] = 0
    return CoactGraph.from_dense(c, freq=freq, n_tokens=int(freq.max()) + 1)


# ------------------------------------------------------------------------------------------------------ factories


@dataclass
class _Factory:
    """A zero-argument solver factory plus what the checks need to know about it."""

    make: Callable[[], Solver]
    label: str
    name: str | None = None  # the registry name the solver must report, when known
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Solver:
        return self.make()

    def __repr__(self) -> str:
        return self.label


def as_factory(solver: Any, **params: Any) -> _Factory:
    """A zero-argument factory for a registered name or chain (``"ripple"``, ``"leiden+local-search"``), a factory
    (a solver class or a function returning a solver; called with ``params``), or a solver instance (reused)."""
    if isinstance(solver, _Factory):
        return solver
    if isinstance(solver, str):
        return _Factory(lambda: get_solver(solver, **params), solver, solver, params)
    if isinstance(solver, type) or not hasattr(solver, "solve"):
        if not callable(solver):
            raise TypeError(f"not a solver, solver name or solver factory: {solver!r}")
        label = getattr(solver, "name", None) or getattr(solver, "__name__", repr(solver))
        return _Factory(lambda: solver(**params), str(label), None, params)
    if params:
        raise TypeError("parameters can only be given with a solver name or factory, not an instance")
    return _Factory(lambda: solver, str(getattr(solver, "name", repr(solver))), None)


def _solve(make: Callable[[], Solver], counts: Any, freq: Any = None, **kw: Any) -> np.ndarray:
    """Solve with a fresh solver and the check time limit; assert the result is an int64 permutation."""
    kw.setdefault("time_limit", TIME_LIMIT)
    n = counts.n if isinstance(counts, CoactGraph) else np.shape(counts)[0]
    args = (counts,) if freq is None else (counts, freq)
    perm = make().solve(*args, **kw)
    try:
        p = check_permutation(perm, n)
    except SolverError as e:
        raise AssertionError(f"solve returned an invalid placement for n={n}: {e}") from None
    dtype = np.asarray(perm).dtype
    assert dtype == np.int64, f"solve returned dtype {dtype}, expected int64"
    return p


# ------------------------------------------------------------------------------------------------------ the checks


def check_protocol(make: Callable[[], Solver]) -> None:
    """``name`` / ``optimises`` are non-empty strings; the object satisfies the Solver protocol."""
    s = make()
    assert isinstance(s, Solver), f"{s!r} does not satisfy the Solver protocol (name, optimises, solve)"
    assert isinstance(s.name, str) and s.name.strip(), "name must be a non-empty string"
    assert isinstance(s.optimises, str) and s.optimises.strip(), "optimises must be a non-empty one-line string"
    expected = make.name if isinstance(make, _Factory) else None
    if expected is not None:
        assert s.name == expected, f"solver reports name {s.name!r}, registered as {expected!r}"


def check_valid_permutation_and_objective(make: Callable[[], Solver]) -> None:
    """A random graph: the result is a permutation and its objective equals a brute-force sum."""
    g = random_graph(120, density=0.3, seed=1)
    p = _solve(make, g, seed=0)
    assert objective(p, g) == brute_objective(p, g), "objective differs from the brute-force sum"


def check_deterministic(make: Callable[[], Solver]) -> None:
    """The same seed gives the same placement (two fresh solvers)."""
    g = random_graph(40, density=0.4, seed=2)
    # A generous limit: searches stop at a local optimum (deterministic) long before it; with the short check limit
    # a loaded machine could stop one of the two runs earlier than the other, which is not what this checks.
    a = _solve(make, g, seed=3, time_limit=DETERMINISM_TIME_LIMIT)
    b = _solve(make, g, seed=3, time_limit=DETERMINISM_TIME_LIMIT)
    assert np.array_equal(a, b), "two solves with seed=3 gave different placements"


def check_tiny_graphs(make: Callable[[], Solver]) -> None:
    """n = 0, n = 1 and every n = 2 case (with and without the edge, active or not)."""
    p0 = _solve(make, CoactGraph.from_dense(np.zeros((0, 0), dtype=np.int64)))
    assert p0.shape == (0,), f"n=0 gave shape {p0.shape}"
    p1 = _solve(make, CoactGraph.from_dense(np.array([[4]])))
    assert p1.tolist() == [0], f"n=1 gave {p1.tolist()}"
    for c in ([[3, 2], [2, 5]], [[3, 0], [0, 5]], [[0, 0], [0, 0]]):
        p = _solve(make, CoactGraph.from_dense(np.array(c)))
        assert sorted(p.tolist()) == [0, 1], f"n=2 {c} gave {p.tolist()}"


def check_graph_without_edges(make: Callable[[], Solver]) -> None:
    """No pair ever co-activates (active neurons, and never-active ones)."""
    _solve(make, CoactGraph.from_dense(np.zeros((10, 10), dtype=np.int64), freq=np.arange(10), n_tokens=20), seed=1)
    _solve(make, CoactGraph.from_dense(np.zeros((7, 7), dtype=np.int64)), seed=1)


def check_disconnected_graph(make: Callable[[], Solver]) -> None:
    """Isolated and never-active neurons (several components): valid result, objective by brute force."""
    g = _isolated_and_dead(30)
    p = _solve(make, g, seed=0)
    assert objective(p, g) == brute_objective(p, g), "objective differs from the brute-force sum"


def check_input_forms(make: Callable[[], Solver]) -> None:
    """A CoactGraph, a scipy sparse matrix and a dense array (each with freq) give the same placement."""
    g = random_graph(40, density=0.3, seed=9)
    want = _solve(make, g, seed=1)
    for form, counts in (("scipy csr_array", g.counts), ("scipy csr_matrix", sp.csr_matrix(g.counts)),
                         ("dense ndarray", g.counts.toarray())):
        got = _solve(make, counts, g.freq, seed=1)
        assert np.array_equal(got, want), f"{form} input gave a different placement than the CoactGraph"


def check_respects_time_limit(make: Callable[[], Solver]) -> None:
    """Returns within 5 x time_limit + 5 s on a dense 400-neuron graph (compilation included)."""
    g = random_graph(400, density=0.5, seed=5)
    t0 = time.perf_counter()
    _solve(make, g, seed=0, time_limit=TIME_LIMIT)
    elapsed = time.perf_counter() - t0
    assert elapsed < TIME_LIMIT * 5 + 5, f"took {elapsed:.1f}s with time_limit={TIME_LIMIT}"


def check_refuses_negative_time_limit(make: Callable[[], Solver]) -> None:
    """A negative time limit is a user error (SolverError), not a silent zero budget."""
    g = random_graph(10, density=0.5, seed=1)
    try:
        make().solve(g, time_limit=-1.0)
    except SolverError:
        return
    raise AssertionError("time_limit=-1 was accepted; expected SolverError")


def check_accepts_init(make: Callable[[], Solver]) -> None:
    """A valid ``init`` (random, identity) is accepted and left unmodified."""
    g = random_graph(50, density=0.3, seed=6)
    for init in (np.random.default_rng(0).permutation(g.n).astype(np.int64), np.arange(g.n, dtype=np.int64)):
        before = init.copy()
        _solve(make, g, seed=0, init=init)
        assert np.array_equal(init, before), "solve modified the caller's init array"


def check_chain_after_random(make: Callable[[], Solver]) -> None:
    """``random+<solver>``: the solver as an improvement stage after a random placement."""
    g = random_graph(50, density=0.3, seed=7)
    stage = make()
    chain = ChainSolver([get_solver("random"), stage])
    assert chain.name == f"random+{stage.name}", f"chain name {chain.name!r}"
    _solve(lambda: chain, g, seed=0)


def check_progress_callback(make: Callable[[], Solver]) -> None:
    """A ``progress`` callback is accepted; every report is ``(str, int, int | None)``."""
    calls: list[tuple[Any, ...]] = []
    g = random_graph(30, density=0.3, seed=3)
    _solve(make, g, seed=0, progress=lambda *a: calls.append(a))
    for c in calls:
        ok = (len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], (int, np.integer))
              and (c[2] is None or isinstance(c[2], (int, np.integer))))
        assert ok, f"progress reported {c!r}, expected (description, done, total)"


_CHECKS: tuple[Check, ...] = (
    check_protocol,
    check_valid_permutation_and_objective,
    check_deterministic,
    check_tiny_graphs,
    check_graph_without_edges,
    check_disconnected_graph,
    check_input_forms,
    check_respects_time_limit,
    check_refuses_negative_time_limit,
    check_accepts_init,
    check_chain_after_random,
    check_progress_callback,
)


def solver_checks() -> Iterator[tuple[str, Check]]:
    """``(check_name, check)`` for every check of the contract; ``check(make)`` takes a zero-argument factory."""
    for c in _CHECKS:
        yield c.__name__, c


def check_solver(solver: Any, **params: Any) -> None:
    """Run every check on ``solver`` (a registered name or chain, a factory plus ``params``, or an instance).

    Raises ``AssertionError`` naming the solver and the failed check (any other exception a check hits is
    reported the same way, chained).
    """
    make = as_factory(solver, **params)
    for check_name, check in solver_checks():
        try:
            check(make)
        except AssertionError as e:
            raise AssertionError(f"solver {make.label}: {check_name}: {e}") from None
        except Exception as e:
            raise AssertionError(f"solver {make.label}: {check_name} raised {type(e).__name__}: {e}") from e


def parametrize_with_checks(solvers: Iterable[Any]) -> Any:
    """A ``pytest.mark.parametrize("solver, check", ...)`` over every (solver, check) pair, ids ``name-check``.

    ``solvers``: names, chains, factories or instances (as :func:`check_solver` takes). The test body is
    ``check(solver)``.
    """
    import pytest  # a test-time dependency only: never imported by the library itself
    cases = []
    for s in solvers:
        make = as_factory(s)
        for check_name, check in solver_checks():
            cases.append(pytest.param(make, check, id=f"{make.label}-{check_name}"))
    return pytest.mark.parametrize("solver, check", cases)
