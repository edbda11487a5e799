"""Placement of a whole model from its statistics: the glue between :mod:`coact.stats` and :mod:`solvers`.

Why here: ``solvers/`` places one layer from plain data and never imports ``coact/`` (docs/ARCHITECTURE.md);
walking the layers of a :class:`coact.stats.CoactStats` and cutting each layer's graph out of it
(:func:`coact.graph.layer_graph`) is the statistics side's job. Layers are built lazily, one at a time, so only one
layer's graph is in memory while the solver runs.
"""
from __future__ import annotations

from typing import Any, Iterator

from coact.graph import layer_graph
from coact.progress import bars
from common.progress import ProgressFn
from solvers.base import SolveResult, objective, solve_layers
from solvers.graph import CoactGraph

__all__ = ["layout_objective", "solve_model"]


def _layers(stats: Any, graph_kwargs: dict[str, Any]) -> Iterator[CoactGraph]:
    for layer in range(stats.n_layers):
        yield layer_graph(stats, layer, **graph_kwargs)


def solve_model(
    stats: Any,
    spec: str,
    *,
    seed: int = 0,
    time_limit: float | None = None,
    progress: ProgressFn | bool | None = None,
    graph_kwargs: dict[str, Any] | None = None,
    executor: Any = None,
    **params: Any,
) -> SolveResult:
    """Run solver ``spec`` on every layer of ``stats`` (layer ``l`` with seed ``seed + l``).

    Args:
        stats: a :class:`coact.stats.CoactStats` (duck-typed: ``n_layers``, ``layer(l)``, ``meta``).
        spec: a solver name or chain (``"leiden+local-search"``); ``params`` go to it.
        progress: a ``progress(description, done, total)`` callback, None for silence, or a bool (True = rich bars
            on stderr, :func:`coact.progress.bars`).
        graph_kwargs: passed to :func:`coact.graph.layer_graph` (``min_count``, ``block``).
        executor: where layers are solved (:func:`solvers.base.solve_layers`); None = in this process.
    """
    if isinstance(progress, bool):
        progress = bars(progress)
    return solve_layers(_layers(stats, dict(graph_kwargs or {})), spec, seed=seed, time_limit=time_limit,
                        progress=progress, n_layers=stats.n_layers, executor=executor, **params)


def layout_objective(layout: Any, stats: Any) -> int:
    """docs/DESIGN.md §2 objective of a layout (anything with ``perms``, one per layer) on statistics, summed over
    layers."""
    return int(sum(objective(p, layer_graph(stats, l)) for l, p in enumerate(layout.perms)))
