"""Solver comparison on one model: objective, gap to a proven bound, held-out runs/reads, solve time.

Why here and not in solvers/: a comparison needs statistics (coact), solvers, the bound (solvers.bounds) and the
read simulator (runtime.replay) together; this module only glues them, each number comes from its own module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BASELINES = ("identity", "random", "frequency", "ripple")


@dataclass
class Comparison:
    """Per-solver rows plus the per-layer bound they were measured against."""

    rows: list[dict[str, Any]]
    bound: float | None
    bound_per_layer: list[float] = field(default_factory=list)
    layouts: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bound": self.bound, "bound_per_layer": self.bound_per_layer,
                "reports": {k: {kk: vv for kk, vv in v.to_dict().items() if kk != "per_layer"}
                            for k, v in self.reports.items()}}


def model_bound(stats: Any, *, progress: bool = True, time_limit: float | None = 60.0) -> list[float]:
    """Per-layer proven upper bound on the adjacency objective (solvers.bounds)."""
    from coact.graph import CoactGraph
    from coact.progress import track
    from solvers.bounds import adjacency_upper_bound

    return [float(adjacency_upper_bound(CoactGraph.from_stats(stats, l), time_limit=time_limit))
            for l in track(range(stats.n_layers), description="upper bound (LP)", disable=not progress)]


def compare_solvers(
    stats: Any,
    heldout_packed: np.ndarray,
    solvers: Sequence[str],
    *,
    bundle_bytes: int,
    collapse_gap: int = 0,
    seed: int = 0,
    time_limit: float | None = None,
    with_bound: bool = True,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> Comparison:
    """Solve with every spec in `solvers` (baselines first), then score each layout on the profiling statistics
    (objective, gap to the bound) and on held-out tokens (simulated mean run length, reads/token, bytes read)."""
    from coact.pipeline import layout_objective, solve_layouts
    from runtime.replay import simulate
    from solvers.bounds import gap_to_bound

    specs = list(dict.fromkeys([*BASELINES, *solvers]))
    bounds = model_bound(stats, progress=progress) if with_bound else []
    bound = float(sum(bounds)) if bounds else None
    layouts = solve_layouts(stats, specs, None if out_dir is None else Path(out_dir) / "layouts", seed=seed,
                            time_limit=time_limit, progress=progress)
    rows, reports, lays = [], {}, {}
    for spec, (layout, res) in layouts.items():
        obj = layout_objective(layout, stats)
        rep = simulate(layout, heldout_packed, stats.n_neurons, bundle_bytes=bundle_bytes, collapse_gap=collapse_gap)
        reports[spec], lays[spec] = rep, layout
        rows.append({
            "solver": spec,
            "objective": obj,
            "bound": bound,
            "gap_pct": None if bound is None else gap_to_bound(obj, bound),
            "heldout_mean_run_length": rep.mean_run_length,
            "heldout_reads_per_token": rep.reads_per_token,
            "heldout_bytes_read_per_token": rep.bytes_read_per_token,
            "solve_seconds": float(sum(res.seconds)),
        })
    ripple = next(r for r in rows if r["solver"] == "ripple")
    for r in rows:
        r["run_length_vs_ripple"] = (r["heldout_mean_run_length"] / ripple["heldout_mean_run_length"]
                                     if ripple["heldout_mean_run_length"] else None)
    return Comparison(rows, bound, bounds, lays, reports)


def plot_solver_comparison(cmp: Comparison, path: str | Path) -> Path:
    """Gap to the bound (lower is better), held-out mean run length (higher is better) and solve time per solver."""
    from coact.plots import Panel, bar_panels

    rows = cmp.rows
    return bar_panels([r["solver"] for r in rows], [
        Panel([r["gap_pct"] for r in rows], "gap to LP bound (%)", "placement objective (lower gap is better)",
              color="tab:red"),
        Panel([r["heldout_mean_run_length"] for r in rows], "bundles per read", "held-out mean run length"),
        Panel([r["solve_seconds"] for r in rows], "seconds (all layers)", "solve time", color="tab:gray", log=True),
    ], path, rotation=35)
