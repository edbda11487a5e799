"""`ortools`: the maximum-weight Hamiltonian path solved as a TSP with OR-tools' routing library.

Reduction: nodes 1..N are the neurons, node 0 is a dummy depot at cost 0 to and from every neuron, so a tour
0 -> a_1 -> ... -> a_N -> 0 is exactly an open path a_1..a_N whose cost is
sum_p (C - c[a_p, a_{p+1}]) = (N-1) C - objective, with C the largest count. Minimising the tour cost therefore
maximises the docs/DESIGN.md §2 objective. Costs are int64 (exact).

Search: the first solution is `init` if given, else the Ripple greedy placement (``start="ripple"``) loaded with
``ReadAssignmentFromRoutes``, or OR-tools' own ``PATH_CHEAPEST_ARC`` (``start="cheapest-arc"``); then
``GUIDED_LOCAL_SEARCH`` (Voudouris & Tsang 1999) until the time limit or ``max_solutions`` solutions (a
deterministic work budget; OR-tools has no deterministic time). OR-tools returns the best solution seen, so the
result is never worse than the start. Measured on SmolLM2 layers (N = 1,536, dense), GLS improves the Ripple start
by only ~0.1 % in 10 s (each GLS step scans full O(N²) neighbourhoods); `path-cover+local-search` is far better
there. It is kept as the general-purpose TSP reference.

The cost matrix is handed over natively with ``RoutingModel.RegisterTransitMatrix`` (OR-tools >= 9.10): no Python
callback per arc. It is dense, (N+1)² int64 values, so the solver refuses graphs with more than ``max_n`` neurons
(default 2,000, ~32 MB of costs plus OR-tools' own copies) with a :class:`SolverError`; for larger layers use
`path-cover+local-search` or `leiden+local-search`.
"""
from __future__ import annotations

import time

import numpy as np

from solvers.base import ProgressFn, SolverBase, register
from solvers.errors import SolverError
from solvers.graph import CoactGraph
from solvers.ripple import default_start

DEFAULT_TIME_LIMIT = 10.0
DEFAULT_MAX_N = 2000
DEFAULT_MAX_SOLUTIONS = 100


@register("ortools")
class OrToolsSolver(SolverBase):
    """OR-tools routing (dummy depot, integer costs max_count - count, guided local search).

    Parameters:
        max_n: refuse larger graphs (dense cost matrix), raising SolverError.
        start: ``"ripple"`` (default; Ripple greedy placement as first solution) or ``"cheapest-arc"``.
        time_limit: default budget in seconds when `solve` gets none.
        max_solutions: stop after this many solutions of the search (a deterministic work budget: instances
            small enough to reach it before the time limit give the same placement every run); 0 = no cap.
        neighbors: if > 0, OR-tools' local-search operators only consider that many nearest neighbours per node
            (``ls_operator_min_neighbors``/``ls_operator_neighbors_ratio``); 0 = all.
    """

    name = "ortools"
    optimises = "max adjacency objective as a TSP (dummy depot, cost max_count - count), OR-tools guided local search"

    def __init__(self, max_n: int = DEFAULT_MAX_N, start: str = "ripple", time_limit: float = DEFAULT_TIME_LIMIT,
                 neighbors: int = 0, max_solutions: int = DEFAULT_MAX_SOLUTIONS):
        if start not in ("ripple", "cheapest-arc"):
            raise SolverError(f"ortools start must be 'ripple' or 'cheapest-arc', got {start!r}")
        self.max_n = int(max_n)
        self.start = start
        self.time_limit = float(time_limit)
        self.neighbors = int(neighbors)
        self.max_solutions = int(max_solutions)
        self.status = ""

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        t0 = time.perf_counter()
        limit = float(time_limit)  # SolverBase passes self.time_limit when the caller gives none
        n = int(graph.n)
        if n > self.max_n:
            raise SolverError(
                f"ortools builds a dense {n + 1}x{n + 1} cost matrix; {n} neurons exceed max_n={self.max_n} "
                "(raise max_n, or use path-cover+local-search / leiden+local-search for large layers)")
        if n <= 2 or graph.counts.nnz == 0:
            return init if init is not None else np.arange(n, dtype=np.int64)
        from ortools.constraint_solver import pywrapcp, routing_enums_pb2

        start = default_start(graph, seed=seed) if init is None and self.start == "ripple" else init

        dense = np.asarray(graph.counts.toarray(), dtype=np.int64)
        cmax = int(dense.max())
        cost = np.zeros((n + 1, n + 1), dtype=np.int64)
        cost[1:, 1:] = cmax - dense
        np.fill_diagonal(cost, 0)
        manager = pywrapcp.RoutingIndexManager(n + 1, 1, 0)
        routing = pywrapcp.RoutingModel(manager)
        transit = routing.RegisterTransitMatrix(cost.tolist())
        del dense, cost
        routing.SetArcCostEvaluatorOfAllVehicles(transit)

        params = pywrapcp.DefaultRoutingSearchParameters()
        params.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.PATH_CHEAPEST_ARC
        params.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
        if self.neighbors > 0:
            params.ls_operator_neighbors_ratio = min(1.0, self.neighbors / n)
            params.ls_operator_min_neighbors = self.neighbors
        if self.max_solutions > 0:
            params.solution_limit = self.max_solutions
        left = max(0.05, limit - (time.perf_counter() - t0) - 0.05)
        params.time_limit.FromMilliseconds(int(left * 1000))
        if start is not None:
            routing.CloseModelWithParameters(params)
            route = [manager.NodeToIndex(int(x) + 1) for x in start]
            assignment = routing.ReadAssignmentFromRoutes([route], True)
            if assignment is None:  # pragma: no cover - a permutation is always a valid route
                raise SolverError("OR-tools rejected the initial placement")
            left = max(0.05, limit - (time.perf_counter() - t0) - 0.05)
            params.time_limit.FromMilliseconds(int(left * 1000))
            sol = routing.SolveFromAssignmentWithParameters(assignment, params)
        else:
            sol = routing.SolveWithParameters(params)
        self.status = str(routing.status())
        if sol is None:
            if start is not None:
                return start
            raise SolverError(f"OR-tools found no solution (status {routing.status()})")
        perm = []
        idx = routing.Start(0)
        while not routing.IsEnd(idx):
            node = manager.IndexToNode(idx)
            if node != 0:
                perm.append(node - 1)
            idx = sol.Value(routing.NextVar(idx))
        return np.asarray(perm, dtype=np.int64)
