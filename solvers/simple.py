"""Reference placements that ignore co-activation: the baselines every real solver must beat.

- ``identity``: the model's original neuron order — what "LLM in a flash" (Alizadeh et al. 2024) stores on flash
  (row-column bundling, no reordering). Trained FFNs have no reason to put co-activated neurons next to each other, so
  this is the "no placement" anchor of docs/DESIGN.md §5 (llmflash).
- ``random``: a seeded random permutation; the expected objective of a placement that knows nothing. A solver that
  does not clearly beat it has learned nothing from the statistics.
- ``frequency``: neurons by decreasing activation count (ties by id) — Neuralink-S / Ripple's frequency baseline
  (Wang et al. 2024/2025). Hot neurons cluster at the front, so tokens' active sets overlap the same region, which
  lengthens runs without looking at pairs at all.
"""
from __future__ import annotations

import numpy as np

from solvers.base import ProgressFn, SolverBase, register
from solvers.graph import CoactGraph


@register("identity")
class IdentitySolver(SolverBase):
    """The original order: ``perm = arange(n)``. Ignores seed, time_limit and init."""

    name = "identity"
    optimises = "nothing (original neuron order; the LLM-in-a-flash baseline)"

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        return np.arange(graph.n, dtype=np.int64)


@register("random")
class RandomSolver(SolverBase):
    """A uniformly random permutation from ``numpy.random.default_rng(seed)``. Ignores time_limit and init."""

    name = "random"
    optimises = "nothing (seeded random permutation; the chance baseline)"

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        return np.random.default_rng(seed).permutation(graph.n).astype(np.int64)


@register("frequency")
class FrequencySolver(SolverBase):
    """Decreasing activation count, ties by smaller neuron id (deterministic; seed, time_limit, init ignored)."""

    name = "frequency"
    optimises = "activation frequency, hottest first (Neuralink-S baseline)"

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None) -> np.ndarray:
        freq = np.asarray(graph.freq, dtype=np.int64)
        # lexsort: last key is primary -> sort by -freq, then by id.
        return np.lexsort((np.arange(graph.n), -freq)).astype(np.int64)
