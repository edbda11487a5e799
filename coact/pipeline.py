"""The steps of coact as plain functions: the CLI, the demo, the notebooks and the tests all call these.

Why a module of its own: the CLI should only parse options and print; anything a notebook may want to do
(capture, count, solve, evaluate, pack, replay) must be callable from Python without going through typer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from coact.errors import CoactError, TraceError


# ----------------------------------------------------------------------------------------------------------- trace
def capture(
    model: str | Any,
    corpus: str,
    out: str | Path,
    *,
    tokens: int,
    start: int = 0,
    ctx: int = 256,
    method: str = "cats",
    sparsity: float = 0.9,
    calib_tokens: int = 1024,
    shard_tokens: int = 2048,
    thresholds_from: str | Path | None = None,
    progress: bool = True,
) -> Any:
    """Capture a trace of `tokens` tokens of `corpus` from `start` (see :mod:`coact.trace`).

    `model` is a spec (`smollm2`, a local path) or an already loaded :class:`coact.models.ModelHandle`.
    `thresholds_from` reuses the CATS thresholds of another trace of the same model (so a held-out trace is
    sparsified exactly like the profiling trace).
    """
    from coact.corpus import load_text, text_digest, tokenize
    from coact.models import load_model
    from coact.sparsify import get_sparsifier
    from coact.trace import CaptureConfig, Trace, capture_trace

    get_sparsifier(method, sparsity=sparsity)  # validate cheap inputs before the slow model load
    text = load_text(corpus)
    handle = load_model(model) if isinstance(model, str) else model
    stream = tokenize(text, handle.tokenizer)
    thresholds = None
    if thresholds_from is not None:
        ref = Trace.load(thresholds_from)
        if ref.model_id != handle.model_id:
            raise TraceError(f"{thresholds_from} was captured from {ref.model_id!r}, not {handle.model_id!r}")
        thresholds = ref.meta["sparsifier"].get("thresholds")
    cfg = CaptureConfig(
        model_id=handle.model_id,
        corpus=corpus,
        corpus_digest=text_digest(text),
        token_start=int(start),
        n_tokens=int(tokens),
        ctx=int(ctx),
        method=method,
        sparsity=float(sparsity),
        calib_tokens=int(calib_tokens),
        shard_tokens=int(shard_tokens),
    )
    return capture_trace(handle, stream, cfg, out, thresholds=thresholds, progress=progress)


# ---------------------------------------------------------------------------------------------------------- layouts
def solve_layouts(
    stats: Any,
    solvers: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    time_limit: float | None = None,
    progress: bool = True,
) -> dict[str, tuple[Any, Any]]:
    """Run each solver spec on every layer; return {spec: (Layout, SolveResult)} and save `out_dir/{spec}.safetensors`."""
    from runtime.layout import Layout, save_layout
    from solvers.base import solve_model

    out: dict[str, tuple[Any, Any]] = {}
    for spec in solvers:
        res = solve_model(stats, spec, seed=seed, time_limit=time_limit, progress=progress)
        layout = Layout(
            res.perms,
            model_id=str(stats.meta.get("model_id", "")),
            solver=spec,
            params={**res.params, "solve_seconds": [round(s, 4) for s in res.seconds]},
            stats_digest=stats.digest,
        )
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            save_layout(layout, Path(out_dir) / f"{spec}.safetensors")
        out[spec] = (layout, res)
    return out


def layout_objective(layout: Any, stats: Any) -> int:
    """DESIGN §2 objective of a layout on statistics, summed over layers."""
    from coact.graph import CoactGraph
    from solvers.base import objective

    return int(sum(objective(p, CoactGraph.from_stats(stats, l)) for l, p in enumerate(layout.perms)))


def check_compatible(layout: Any, target: Any, what: str = "trace") -> None:
    """A layout and a trace (or a loaded model: anything with n_layers, n_neurons, model_id) must have the same
    shape, and the same model id when the layout records one."""
    if layout.n_layers != target.n_layers or any(n != target.n_neurons for n in layout.n_neurons):
        raise CoactError(
            f"layout has {layout.n_layers} layers x {layout.n_neurons[0] if layout.n_neurons else 0} neurons, "
            f"the {what} has {target.n_layers} x {target.n_neurons}"
        )
    if layout.model_id and layout.model_id != target.model_id:
        raise CoactError(f"layout is for model {layout.model_id!r}, the {what} is from {target.model_id!r}")


def bundle_bytes(bundle: str, dtype: str, d_model: int) -> int:
    """Bytes of one neuron's bundle (DESIGN §2: parts x d_model x dtype size)."""
    from runtime.pack import BUNDLES, DTYPES

    if bundle not in BUNDLES:
        raise CoactError(f"unknown bundle {bundle!r}; choose from {', '.join(BUNDLES)}")
    if dtype not in DTYPES:
        raise CoactError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return len(BUNDLES[bundle]) * int(d_model) * DTYPES[dtype].itemsize


def pack(model: str | Any, layout: Any, out: str | Path, *, bundle: str = "up-down", dtype: str = "fp16",
         progress: bool = True) -> Path:
    """Write the model's FFN bundles in `layout` order into a pack file."""
    from coact.models import load_model
    from runtime.pack import write_pack

    bundle_bytes(bundle, dtype, 1)  # validate names before loading the model
    handle = load_model(model) if isinstance(model, str) else model
    check_compatible(layout, handle, "model")
    write_pack(out, handle.ffn_weights, layout, bundle=bundle, dtype=dtype, d_model=handle.d_model,
               progress=progress)
    return Path(out)


def ensure_pack(model: str | Any, layout: Any, path: str | Path, *, log: Any = None, **kw: Any) -> Path:
    """`path` holding `layout`'s pack: reused when the file there already holds exactly that layout (same digest),
    else (re)written. Packs are ~100 MB each; benchmarks and `coact pipelines` call this to avoid re-packing."""
    from runtime.pack import PackError, PackFile

    path = Path(path)
    if path.exists():
        try:
            with PackFile(path) as pf:
                if pf.layout_digest == layout.digest:
                    return path
        except PackError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    if log is not None:
        log(f"packing {layout.solver or 'layout'} -> {path}")
    return pack(model, layout, path, progress=False, **kw)


# ------------------------------------------------------------------------------------------------------------ demo
@dataclass
class DemoConfig:
    """Embedded defaults of `coact demo` (each overridable on the command line)."""

    out: Path = Path("coact-out")
    model: str = "smollm2"
    corpus: str = "pydoc"
    profile_tokens: int = 16384
    heldout_tokens: int = 512
    ctx: int = 256
    method: str = "cats"
    sparsity: float = 0.9
    solvers: tuple[str, ...] = ("identity", "frequency", "ripple")
    bundle: str = "up-down"
    dtype: str = "fp16"
    collapse: int = 0
    engine: str = "sync"
    seed: int = 0


def run_demo(cfg: DemoConfig, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """SmolLM2 + built-in corpus -> trace -> stats -> solvers -> layouts -> packs -> real replay of held-out text.

    The trace covers tokens [0, P + H) of the corpus; statistics use [0, P) (profiling) and the replay uses
    [P, P + H) (held out), so the placement is judged on text it has never seen.
    """
    import shutil

    from coact.models import load_model
    from coact.stats import compute_stats
    from runtime.replay import replay, simulate

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    P, H = cfg.profile_tokens, cfg.heldout_tokens
    log(f"[1/6] loading model {cfg.model}")
    handle = load_model(cfg.model)
    trace_dir = out / "trace"
    if trace_dir.exists():
        from coact.trace import Trace

        trace = Trace.load(trace_dir)
        if trace.n_tokens != P + H or trace.model_id != handle.model_id or trace.meta["corpus"] != cfg.corpus:
            shutil.rmtree(trace_dir)
    if not trace_dir.exists():
        log(f"[2/6] capturing {P + H:,} tokens of '{cfg.corpus}' ({cfg.method} {cfg.sparsity:.0%})")
        trace = capture(handle, cfg.corpus, trace_dir, tokens=P + H, ctx=cfg.ctx, method=cfg.method,
                        sparsity=cfg.sparsity, calib_tokens=min(1024, P), progress=progress)
    else:
        log(f"[2/6] reusing trace {trace_dir}")
    log(f"[3/6] co-activation statistics on the profiling part [0, {P:,})")
    stats = compute_stats(trace, start=0, stop=P, progress=progress)
    stats.save(out / "stats")
    log(f"[4/6] solving with {', '.join(cfg.solvers)}")
    layouts = solve_layouts(stats, cfg.solvers, out / "layouts", seed=cfg.seed, progress=progress)
    heldout = trace.packed(P, P + H)
    bb = bundle_bytes(cfg.bundle, cfg.dtype, handle.d_model)
    rows: list[dict[str, Any]] = []
    reports: dict[str, Any] = {}
    log(f"[5/6] packing ({cfg.bundle}, {cfg.dtype}, {bb} B/bundle) and replaying {H} held-out tokens with O_DIRECT")
    pack_dir = out / "packs"
    pack_dir.mkdir(exist_ok=True)
    for spec, (layout, res) in layouts.items():
        pack_path = pack(handle, layout, pack_dir / f"{spec}.pack", bundle=cfg.bundle, dtype=cfg.dtype,
                         progress=progress)
        sim = simulate(layout, heldout, trace.n_neurons, bundle_bytes=bb, collapse_gap=cfg.collapse)
        rep = replay(pack_path, layout, heldout, collapse_gap=cfg.collapse, engine=cfg.engine, progress=progress)
        if rep.counts_dict() != sim.counts_dict():
            raise RuntimeError(f"{spec}: replay counts differ from the simulator's; this is a bug")
        reports[spec] = rep.to_dict()
        rows.append({
            "solver": spec,
            "objective": layout_objective(layout, stats),
            "mean_run_length": rep.mean_run_length,
            "reads_per_token": rep.reads_per_token,
            "bytes_read_per_token": rep.bytes_read_per_token,
            "io_ms_per_token_mean": rep.latency_ms_mean,
            "io_ms_per_token_p50": rep.latency_ms_p50,
            "io_ms_per_token_p99": rep.latency_ms_p99,
            "effective_bandwidth_MBps": (rep.effective_bandwidth or 0) / 1e6,
            "solve_seconds": float(sum(res.seconds)),
        })
        pack_path.unlink()  # packs are ~100 MB each; the layouts are the product
    log("[6/6] writing report and plot")
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
               "trace": {k: trace.meta[k] for k in ("model_id", "n_layers", "n_neurons", "d_model")},
               "achieved_sparsity": trace.meta["achieved_sparsity"],
               "rows": rows, "reports": reports}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    plot_comparison(rows, out / "demo.png")
    return summary


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Two bar charts: mean run length (higher is better) and real I/O ms/token (lower is better)."""
    from coact.plots import Panel, bar_panels

    return bar_panels([r["solver"] for r in rows], [
        Panel([r["mean_run_length"] for r in rows], "mean run length (bundles/read)",
              "held-out read-run length (higher is better)"),
        Panel([r["io_ms_per_token_mean"] for r in rows], "I/O ms per token (O_DIRECT)",
              "measured flash latency (lower is better)", color="tab:orange"),
    ], path)
