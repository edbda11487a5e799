"""The solver protocol, the registry, and the placement objective.

Why a protocol plus a registry: users compare placement solvers; every solver must be selectable by name
(`coact solve --solver ripple`), composable (`leiden+local-search`), and pass one conformance suite
(`tests/test_solver_conformance.py`), in the spirit of scikit-learn's estimators and
`scipy.optimize.minimize(method=...)`.

A solver places the neurons of ONE layer: it takes a :class:`coact.graph.CoactGraph` (co-activation counts as a
symmetric scipy CSR matrix with zero diagonal, per-neuron activation counts, the token count) and returns a
permutation `perm` with `perm[position] = neuron`. Layers are independent; :func:`solve_model` runs a solver over
all layers of a :class:`coact.stats.CoactStats`.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

from coact.errors import CoactError

if TYPE_CHECKING:  # pragma: no cover
    from coact.graph import CoactGraph


class SolverError(CoactError):
    """Bad solver name, bad parameters, or an instance a solver refuses (e.g. too large)."""


@runtime_checkable
class Solver(Protocol):
    """One placement solver.

    Attributes:
        name: registry name.
        optimises: one line saying what the solver maximises/minimises (shown by `coact solve --list`).
    """

    name: str
    optimises: str

    def solve(
        self,
        graph: "CoactGraph",
        *,
        seed: int = 0,
        time_limit: float | None = None,
        init: np.ndarray | None = None,
    ) -> np.ndarray:
        """Return `perm` (int64, length graph.n, a permutation of range(graph.n)).

        `init` is a starting placement for improvement solvers (others may ignore it). `time_limit` is a
        wall-clock budget in seconds for this layer; solvers must return a valid permutation within it.
        """
        ...


_REGISTRY: dict[str, Callable[..., Solver]] = {}


def register(name: str) -> Callable[[Callable[..., Solver]], Callable[..., Solver]]:
    """Class decorator: make a solver factory available as `name`."""

    def deco(factory: Callable[..., Solver]) -> Callable[..., Solver]:
        if name in _REGISTRY:
            raise SolverError(f"solver {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every built-in solver.
    import solvers  # noqa: F401


def available_solvers() -> list[str]:
    """Registered solver names, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_solver(spec: str, **params: Any) -> Solver:
    """Build a solver from a name, or a chain `a+b+c` (each stage starts from the previous stage's placement)."""
    _ensure_loaded()
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise SolverError("empty solver name")
    for p in parts:
        if p not in _REGISTRY:
            raise SolverError(f"unknown solver {p!r}; available: {', '.join(sorted(_REGISTRY))}")
    last = _REGISTRY[parts[-1]]
    try:  # a typo in a parameter name is a user error, not a TypeError traceback
        inspect.signature(last).bind(**params)
    except TypeError as e:
        raise SolverError(f"bad parameters for solver {parts[-1]!r}: {e}") from None
    except ValueError:  # no signature available (builtins); let the call itself complain
        pass
    if len(parts) == 1:
        return last(**params)
    return ChainSolver([_REGISTRY[p](**params) if i == len(parts) - 1 else _REGISTRY[p]() for i, p in enumerate(parts)])


@dataclass
class ChainSolver:
    """`a+b`: run `a`, then give its placement to `b` as `init`. The time limit is split evenly."""

    stages: list[Solver]
    name: str = field(init=False)
    optimises: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = "+".join(s.name for s in self.stages)
        self.optimises = self.stages[-1].optimises

    def solve(self, graph, *, seed=0, time_limit=None, init=None):  # type: ignore[no-untyped-def]
        perm = init
        share = None if time_limit is None else time_limit / len(self.stages)
        for s in self.stages:
            perm = s.solve(graph, seed=seed, time_limit=share, init=perm)
        return perm


def check_permutation(perm: np.ndarray, n: int) -> np.ndarray:
    """Return `perm` as int64 after checking it is a permutation of range(n); raise SolverError otherwise."""
    p = np.asarray(perm)
    if p.ndim != 1 or p.shape[0] != n:
        raise SolverError(f"placement has shape {p.shape}, expected ({n},)")
    if not np.issubdtype(p.dtype, np.integer):
        raise SolverError(f"placement dtype {p.dtype} is not integer")
    p = p.astype(np.int64, copy=False)
    seen = np.zeros(n, dtype=bool)
    if n and (p.min() < 0 or p.max() >= n):
        raise SolverError("placement has out-of-range neuron ids")
    seen[p] = True
    if not seen.all():
        raise SolverError("placement is not a permutation (repeated or missing neurons)")
    return p


def objective(perm: np.ndarray, graph: "CoactGraph") -> int:
    """DESIGN §2: sum over adjacent positions of the co-activation count.

    Runs on the profiling trace = sum|A| - objective, so maximising this minimises runs (no cache, no collapse).
    """
    p = np.asarray(perm, dtype=np.int64)
    if p.size < 2:
        return 0
    c = graph.counts
    return int(np.asarray(c[p[:-1], p[1:]]).ravel().sum())


@dataclass
class SolveResult:
    """Per-layer placements and how long each took."""

    perms: list[np.ndarray]
    seconds: list[float]
    solver: str
    params: dict[str, Any]


def solve_model(
    stats: Any,
    spec: str,
    *,
    seed: int = 0,
    time_limit: float | None = None,
    progress: bool = True,
    graph_kwargs: dict[str, Any] | None = None,
    **params: Any,
) -> SolveResult:
    """Run solver `spec` on every layer of `stats` (a :class:`coact.stats.CoactStats`)."""
    from coact.graph import CoactGraph
    from coact.progress import track

    solver = get_solver(spec, **params)
    perms: list[np.ndarray] = []
    secs: list[float] = []
    for layer in track(range(stats.n_layers), description=f"solve {spec}", disable=not progress):
        g = CoactGraph.from_stats(stats, layer, **(graph_kwargs or {}))
        t0 = time.perf_counter()
        perm = solver.solve(g, seed=seed + layer, time_limit=time_limit)
        secs.append(time.perf_counter() - t0)
        perms.append(check_permutation(perm, g.n))
    return SolveResult(perms=perms, seconds=secs, solver=spec, params=dict(params, seed=seed, time_limit=time_limit))
