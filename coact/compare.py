"""Solver comparison on one model: objective, gap to a proven bound, held-out runs/reads, solve time.

Why here and not in solvers/: a comparison needs statistics (coact), solvers, the bound (solvers.bounds) and the
read simulator (runtime.replay) together; this module only glues them, each number comes from its own module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from coact.errors import CoactError
from coact.flash import run_pipelines
from coact.graph import layer_graph
from coact.plots import Panel, bar_panels
from coact.progress import track
from coact.stats import CoactStats
from coact.trace import Trace
from coact.workflow import layout_objective, require, solve_layouts, trace_bundle_bytes
from runtime.replay import simulate
from solvers import get_solver
from solvers.bounds import adjacency_upper_bound, gap_to_bound

BASELINES = ("identity", "random", "frequency", "ripple")


@dataclass
class Comparison:
    """Per-solver rows plus the per-layer bound they were measured against."""

    rows: list[dict[str, Any]]
    bound: float | None
    bound_per_layer: list[float] = field(default_factory=list)
    layouts: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    #: the held-out trace's perplexity cost (``meta["accuracy"]``): the accuracy every figure here holds at
    accuracy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bound": self.bound, "bound_per_layer": self.bound_per_layer,
                "accuracy": self.accuracy,
                "reports": {k: {kk: vv for kk, vv in v.to_dict().items() if kk != "per_layer"}
                            for k, v in self.reports.items()}}


def model_bound(stats: CoactStats, *, progress: bool = True, time_limit: float | None = 60.0) -> list[float]:
    """Per-layer proven upper bound on the adjacency objective (solvers.bounds)."""
    return [float(adjacency_upper_bound(layer_graph(stats, l), time_limit=time_limit))
            for l in track(range(stats.n_layers), description="upper bound (LP)", disable=not progress)]


def compare_solvers(
    stats: CoactStats,
    heldout_packed: np.ndarray,
    solvers: Sequence[str],
    *,
    bundle_bytes: int,
    collapse_gap: int = 0,
    seed: int = 0,
    time_limit: float | None = None,
    with_bound: bool = True,
    bound_time_limit: float | None = 60.0,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> Comparison:
    """Solve with every spec in `solvers` (baselines first), then score each layout on the profiling statistics
    (objective, gap to the bound) and on held-out tokens (simulated mean run length, reads/token, bytes read)."""
    specs = list(dict.fromkeys([*BASELINES, *solvers]))
    bounds = model_bound(stats, progress=progress, time_limit=bound_time_limit) if with_bound else []
    bound = float(sum(bounds)) if bounds else None
    layouts = solve_layouts(stats, specs, None if out_dir is None else Path(out_dir) / "layouts", seed=seed,
                            time_limit=time_limit, progress=progress)
    rows, reports, lays = [], {}, {}
    for spec, (layout, res) in layouts.items():
        obj = layout_objective(layout, stats)
        rep = simulate(layout, heldout_packed, stats.unit_widths, bundle_bytes=bundle_bytes,
                       collapse_gap=collapse_gap)  # per unit: units of an MoE / mixed stack differ in width
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
    rows = cmp.rows
    return bar_panels([r["solver"] for r in rows], [
        Panel([r["gap_pct"] for r in rows], "gap to LP bound (%)", "placement objective (lower gap is better)",
              color="tab:red"),
        Panel([r["heldout_mean_run_length"] for r in rows], "bundles per read", "held-out mean run length"),
        Panel([r["solve_seconds"] for r in rows], "seconds (all layers)", "solve time", color="tab:gray", log=True),
    ], path, rotation=35)


def best_solver(cmp: Comparison) -> str:
    """The solver with the longest held-out mean run length (ties: larger objective)."""
    return max(cmp.rows, key=lambda r: (r["heldout_mean_run_length"] or 0, r["objective"]))["solver"]


def run_compare(
    stats: str | Path,
    trace: str | Path,
    solvers: Sequence[str] = (),
    *,
    out: str | Path = "compare-out",
    start: int = 0,
    stop: int | None = None,
    collapse: int = 0,
    time_limit: float | None = None,
    bound: bool = True,
    bound_time_limit: float | None = 60.0,
    bundle: str = "up-down",
    dtype: str = "fp16",
    seed: int = 0,
    real: bool = False,
    budget: float = 0.10,
    repeats: int = 3,
    model: str = "smollm2",
    cost: str | Path | None = None,
    progress: bool = True,
    log: Any = None,
) -> tuple[Comparison, dict[str, Any] | None]:
    """`coact compare` as a function: the solver comparison on files (``out/compare.json``, ``out/compare.png``,
    ``out/layouts/``) and, with ``real``, the named pipelines replayed on the disk with coact's pipeline using the
    best solver found here (``out/real.json``). Returns (comparison, real result or None)."""
    for s in solvers:
        get_solver(s)
    st = CoactStats.load(require(stats, "statistics"))
    tr = Trace.load(require(trace, "trace"))
    if st.meta.get("model_id") != tr.model_id:
        raise CoactError(f"statistics are for {st.meta.get('model_id')!r}, trace is from {tr.model_id!r}")
    if st.unit_widths != tr.unit_widths:
        raise CoactError(f"statistics have {st.n_layers} units of widths {st.unit_widths[:8]}..., the trace "
                         f"{tr.n_layers} of {tr.unit_widths[:8]}...: not the same model's units")
    bb = trace_bundle_bytes(tr.meta, bundle, dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmp = compare_solvers(st, tr.packed(start, stop), solvers, bundle_bytes=bb, collapse_gap=collapse, seed=seed,
                          time_limit=time_limit, with_bound=bound, bound_time_limit=bound_time_limit, out_dir=out,
                          progress=progress)
    cmp.accuracy = tr.meta.get("accuracy")
    (out / "compare.json").write_text(json.dumps(cmp.to_dict(), indent=1, default=str))
    plot_solver_comparison(cmp, out / "compare.png")
    if not real:
        return cmp, None
    best = best_solver(cmp)
    lay = out / "layouts"
    result = run_pipelines(trace, start=start, stop=stop, layouts={"ripple": lay / "ripple.safetensors",
                                                                     "best": lay / f"{best}.safetensors"},
                           model=model, workdir=out, cost=cost, stats=stats, budget=budget, repeats=repeats,
                           out=out / "real.json", log=log or (lambda m: None))
    result["best_solver"] = best
    return cmp, result
