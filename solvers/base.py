"""The solver protocol, the registry, the placement objective and the loop over layers.

Why a protocol plus a registry: users compare placement solvers; every solver must be selectable by name
(``coact solve --solver ripple``), composable (``leiden+local-search``), and pass one conformance suite
(:mod:`solvers.testing`), in the spirit of scikit-learn's estimators and ``scipy.optimize.minimize(method=...)``.

A solver places the neurons of ONE layer. Like a scikit-learn estimator it takes plain data — the symmetric
co-activation count matrix (scipy sparse or dense) and the per-neuron activation counts — or an already validated
:class:`solvers.graph.CoactGraph`, and returns a permutation ``perm`` with ``perm[position] = neuron``. Layers are
independent; :func:`solve_layers` runs a solver over any sequence of layers, so this package needs no statistics
object (``coact.placement.solve_model`` feeds it the layers of a ``CoactStats``).

Built-in solvers derive from :class:`SolverBase`, which does the shared part of ``solve`` once (convert the input
with :func:`solvers.graph.as_graph`, refuse a negative time limit or a bad ``init``, check the returned placement);
a third-party solver only has to satisfy the :class:`Solver` protocol.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from common.errors import RegistryError
from common.executors import get_executor
from common.perm import check_permutation as _check_permutation
from common.progress import ProgressFn, tracked
from common.registry import Registry
from solvers.errors import SolverError
from solvers.graph import CoactGraph, as_graph, resolve_graph

__all__ = ["SOLVERS", "ChainSolver", "ProgressFn", "SolveResult", "Solver", "SolverBase", "SolverError",
           "available_solvers", "check_permutation", "check_time_limit", "get_solver", "objective", "register",
           "solve_layers"]

#: The built-in solver modules; the registry imports them on first lookup (their ``@register`` adds them), so this
#: module never imports its implementations and ``base <- implementation`` is the only import edge.
BUILTIN_MODULES = (
    "solvers.simple",
    "solvers.ripple",
    "solvers.local_search",
    "solvers.path_cover",
    "solvers.ortools_tsp",
    "solvers.leiden",
    "solvers.spectral",
    "solvers.collapse",
    "solvers.device_cost",
)

#: name -> solver factory (a class or a function returning a :class:`Solver`); entry description = ``optimises``.
SOLVERS: Registry = Registry("solver", modules=BUILTIN_MODULES)


@runtime_checkable
class Solver(Protocol):
    """One placement solver.

    Attributes:
        name: registry name.
        optimises: one line saying what the solver maximises/minimises (shown by ``coact solve --list``).
    """

    name: str
    optimises: str

    def solve(
        self,
        counts: Any,
        freq: Any | None = None,
        *,
        seed: int = 0,
        time_limit: float | None = None,
        init: np.ndarray | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Return ``perm`` (int64, a permutation of range(n)).

        ``counts``: symmetric co-activation counts [n, n] (scipy sparse or dense; diagonal ignored) or a
        :class:`CoactGraph`; ``freq``: per-neuron activation counts. ``init`` is a starting placement for
        improvement solvers (others may ignore it). ``time_limit`` is a wall-clock budget in seconds for this layer
        (None = the solver's default; negative is refused); solvers must return a valid permutation within it.
        ``progress`` is an optional ``progress(description, done, total)`` callback (most solvers do not report).
        """
        ...


def check_permutation(perm: Any, n: int | None = None, *, what: str = "placement") -> np.ndarray:
    """Return ``perm`` as int64 after checking it is a permutation of range(n); raise :class:`SolverError`
    otherwise (:func:`common.perm.check_permutation`, the one check of the code base)."""
    return _check_permutation(perm, n, what=what, error=SolverError)


def check_time_limit(time_limit: float | None) -> float | None:
    """``time_limit`` as a float (None stays None); a negative or NaN budget is a :class:`SolverError`."""
    if time_limit is None:
        return None
    t = float(time_limit)
    if not t >= 0:
        raise SolverError(f"time_limit must be >= 0 seconds, got {time_limit}")
    return t


class SolverBase:
    """The shared part of every built-in solver's ``solve``: subclasses implement :meth:`_solve` on a validated
    :class:`CoactGraph` and get plain-data input, argument checks and a checked int64 result for free.

    A solver with a ``time_limit`` attribute (its constructor's default budget) gets it in :meth:`_solve` when the
    caller passes none; ``init``, when given, arrives as a checked int64 permutation."""

    name: str = ""
    optimises: str = ""

    def solve(self, counts: Any, freq: Any | None = None, *, seed: int = 0, time_limit: float | None = None,
              init: np.ndarray | None = None, progress: ProgressFn | None = None, **options: Any) -> np.ndarray:
        """See :class:`Solver`; ``options`` are solver-specific keywords (e.g. ``collapse-ls``'s ``sample``)."""
        graph = as_graph(counts, freq)
        limit = check_time_limit(time_limit)
        if limit is None:
            limit = getattr(self, "time_limit", None)
        start = None if init is None else check_permutation(init, graph.n, what="init")
        perm = self._solve(graph, seed=int(seed), time_limit=limit, init=start, progress=progress, **options)
        return check_permutation(perm, graph.n)

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<solver {self.name}>"


def register(name: str, description: str | None = None) -> Callable[[Any], Any]:
    """Class decorator: add a solver factory to :data:`SOLVERS` as ``name`` (:meth:`Registry.register`), described
    by its ``optimises`` line unless ``description`` is given."""

    def deco(factory: Any) -> Any:
        SOLVERS.add(name, factory, description if description is not None else getattr(factory, "optimises", None))
        return factory

    return deco


def available_solvers() -> list[str]:
    """Registered solver names, sorted."""
    return SOLVERS.names()


def _parse_chain(spec: str) -> list[str]:
    if not isinstance(spec, str) or not spec.strip():
        raise SolverError("empty solver name")
    parts = [p.strip() for p in spec.split("+")]
    if any(not p for p in parts):
        raise SolverError(f"malformed solver chain {spec!r}: expected names joined by '+', like 'leiden+local-search'")
    return parts


def get_solver(spec: str, **params: Any) -> Solver:
    """Build a solver from a name, or a chain ``a+b+c`` (each stage starts from the previous stage's placement).

    ``params`` go to the last stage (the one that decides the result); earlier stages use their defaults.
    Unknown names, bad parameters and malformed chains (``ripple+``, ``+ripple``, ``a++b``) raise
    :class:`SolverError`.
    """
    parts = _parse_chain(spec)
    try:
        for p in parts:
            SOLVERS.entry(p)
        SOLVERS.check_params(parts[-1], **params)
    except RegistryError as e:
        raise SolverError(str(e)) from None
    last = SOLVERS.get(parts[-1])(**params)
    if len(parts) == 1:
        return last
    return ChainSolver([SOLVERS.get(p)() for p in parts[:-1]] + [last])


@dataclass
class ChainSolver:
    """``a+b``: run ``a``, then give its placement to ``b`` as ``init``. The time limit is split evenly."""

    stages: list[Solver]
    name: str = field(init=False)
    optimises: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise SolverError("a solver chain needs at least one stage")
        self.name = "+".join(s.name for s in self.stages)
        self.optimises = self.stages[-1].optimises

    def solve(self, counts: Any, freq: Any | None = None, *, seed: int = 0, time_limit: float | None = None,
              init: np.ndarray | None = None, progress: ProgressFn | None = None) -> np.ndarray:
        graph = as_graph(counts, freq)
        limit = check_time_limit(time_limit)
        perm = init
        share = None if limit is None else limit / len(self.stages)
        extra = {} if progress is None else {"progress": progress}
        for s in self.stages:
            perm = s.solve(graph, seed=seed, time_limit=share, init=perm, **extra)
        return check_permutation(perm, graph.n)


def objective(perm: np.ndarray, counts: Any) -> int:
    """docs/DESIGN.md §2: sum over adjacent positions of the co-activation count.

    Runs on the profiling trace = sum|A| - objective, so maximising this minimises runs (no cache, no collapse).
    ``counts``: a :class:`CoactGraph` or a symmetric count matrix (scipy sparse or dense).
    """
    p = np.asarray(perm, dtype=np.int64)
    if p.size < 2:
        return 0
    c = counts.counts if isinstance(counts, CoactGraph) else counts
    c = sp.csr_array(c) if sp.issparse(c) else np.asarray(c)
    return int(np.asarray(c[p[:-1], p[1:]]).ravel().sum())


@dataclass
class SolveResult:
    """Per-layer placements and how long each took."""

    perms: list[np.ndarray]
    seconds: list[float]
    solver: str
    params: dict[str, Any]


def _solve_job(job: tuple[str, dict[str, Any], Any, int, float | None]) -> tuple[np.ndarray, float]:
    """One layer's work for an executor (module level so it pickles): build the solver, solve, time it."""
    spec, params, item, seed, limit = job
    g = resolve_graph(item)
    solver = get_solver(spec, **params)
    t0 = time.perf_counter()
    perm = solver.solve(g, seed=seed, time_limit=limit)
    return check_permutation(perm, g.n), time.perf_counter() - t0


def solve_layers(
    graphs: Iterable[Any],
    spec: str,
    *,
    seed: int = 0,
    time_limit: float | None = None,
    progress: ProgressFn | None = None,
    n_layers: int | None = None,
    executor: Any = None,
    **params: Any,
) -> SolveResult:
    """Run solver ``spec`` (built once, with ``params``) on every layer of ``graphs``.

    ``graphs`` yields one layer at a time — a :class:`CoactGraph`, a ``(counts, freq)`` pair, or a zero-argument
    callable returning one (built where the layer is solved) — so a caller can build each layer lazily and only one
    (per worker) is in memory. Layer ``l`` is solved with ``seed + l`` (layers get different tie-breaking, the whole
    model stays reproducible). ``n_layers`` is the total for the progress report when ``graphs`` has no ``len``.
    Times exclude building the graph.

    ``executor``: None or ``"serial"`` = this process, one layer after another (per-layer progress from the solver
    is passed through); otherwise an executor spec or object (:func:`common.executors.get_executor`: ``"local"``,
    ``"local:2"``, ``"ray"``, ``"ray:ADDRESS"``) that solves layers in parallel. Every layer's result depends only
    on its graph, the solver spec and its seed, so the placements are identical whichever executor runs them
    (tests/test_executors.py checks it).
    """
    solver = get_solver(spec, **params)  # validate the spec and the parameters here, before any worker starts
    limit = check_time_limit(time_limit)
    if n_layers is None and hasattr(graphs, "__len__"):
        n_layers = len(graphs)  # type: ignore[arg-type]
    perms: list[np.ndarray] = []
    secs: list[float] = []
    if executor is not None and executor != "serial":
        ex = get_executor(executor)
        owned = ex is not executor  # built from a spec here: close it here
        try:
            jobs = ((spec, params, item, seed + layer, limit) for layer, item in enumerate(graphs))
            out = ex.map(_solve_job, jobs, progress=progress, description=f"solve {spec}", total=n_layers)
        finally:
            if owned:
                ex.close()
        perms = [p for p, _ in out]
        secs = [t for _, t in out]
    else:
        extra = {} if progress is None else {"progress": progress}
        for layer, item in enumerate(tracked(graphs, progress, f"solve {spec}", total=n_layers)):
            g = resolve_graph(item)
            t0 = time.perf_counter()
            perm = solver.solve(g, seed=seed + layer, time_limit=limit, **extra)
            secs.append(time.perf_counter() - t0)
            perms.append(check_permutation(perm, g.n))
    return SolveResult(perms=perms, seconds=secs, solver=spec, params=dict(params, seed=seed, time_limit=time_limit))
