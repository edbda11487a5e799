"""`coact demo`: the main job on embedded defaults, end to end, as one function.

SmolLM2 + Python's own pydoc text -> trace -> statistics -> solvers -> layouts -> packs -> real O_DIRECT replay of
held-out text -> a table, ``report.json`` and ``demo.png``. Each step is a :mod:`coact.workflow` function; this
module only sequences them and writes the report.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coact.models import load_model
from coact.online import FlashModel
from coact.plots import Panel, bar_panels
from coact.progress import bars
from coact.sparsify import get_sparsifier
from coact.trace import Trace
from coact.workflow import capture, choose_operating_point, count, layout_objective, \
    measure_perplexity, pack, solve_layouts, trace_bundle_bytes
from runtime.replay import replay, simulate


# ------------------------------------------------------------------------------------------------------------ demo
@dataclass
class DemoConfig:
    """Embedded defaults of `coact demo` (each overridable on the command line)."""

    out: Path = Path("coact-out")
    model: str = "smollm2"
    corpus: str = "pydoc"
    profile_tokens: int = 16384
    heldout_tokens: int = 256
    ctx: int = 256
    method: str = "cats"
    sparsity: float = 0.9
    #: Accuracy budget: per-layer CATS thresholds chosen so that perplexity stays within +20 % of dense (a working
    #: model). None: the fixed ``sparsity`` above (0.9 is the *stress regime*: the sparsity of ReLU models, which
    #: destroys this model's accuracy).
    max_ppl_increase: float | None = 0.2
    solvers: tuple[str, ...] = ("identity", "frequency", "ripple")
    bundle: str = "up-down"
    dtype: str = "fp16"
    collapse: int = 0
    engine: str = "threads:16"
    seed: int = 0
    #: tokens generated from flash per layout at the end (greedy, after an 8-token held-out prompt; 0: skip)
    flash_tokens: int = 8
    #: DRAM cache budget of that generation, a fraction of the FFN bytes
    flash_budget: float = 0.10

    def regime(self) -> str:
        """One line naming the operating point every figure of the demo holds at."""
        if self.max_ppl_increase is not None:
            return f"accuracy budget +{self.max_ppl_increase:.0%} perplexity"
        label = f"{self.method} {self.sparsity:.0%}"
        return label + (" (stress regime: destroys this model's accuracy)" if self.sparsity >= 0.7 else "")


def run_demo(cfg: DemoConfig, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """SmolLM2 + built-in corpus -> trace -> stats -> solvers -> layouts -> packs -> real replay of held-out text.

    The trace covers tokens [0, P + H) of the corpus; statistics use [0, P) (profiling) and the replay uses
    [P, P + H) (held out), so the placement is judged on text it has never seen.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    P, H = cfg.profile_tokens, cfg.heldout_tokens
    log(f"[1/8] loading model {cfg.model}")
    handle = load_model(cfg.model)
    calib = min(1024, P)
    op = None
    thresholds = None
    if cfg.max_ppl_increase is not None:
        log(f"[2/8] operating point: CATS thresholds for +{cfg.max_ppl_increase:.0%} perplexity (calibration "
            f"[0, {calib:,}), validation [{calib:,}, {calib + 512:,}))")
        op = choose_operating_point(handle, cfg.corpus, cfg.max_ppl_increase, calib_tokens=calib,
                                    validation_tokens=512, ctx=cfg.ctx, progress=progress)
        thresholds = op.thresholds
        log(f"      mean sparsity {op.mean_sparsity:.3f}; validation perplexity {op.validation_ppl_dense:.2f} dense, "
            f"{op.validation_ppl:.2f} sparse")
    else:
        log(f"[2/8] operating point: {cfg.regime()}")
    trace_dir = out / "trace"
    if trace_dir.exists():
        trace = Trace.load(trace_dir)
        same = (trace.n_tokens == P + H and trace.model_id == handle.model_id and trace.meta["corpus"] == cfg.corpus
                and (thresholds is None or trace.meta["sparsifier"].get("thresholds") == thresholds)
                and (thresholds is not None or trace.meta["sparsifier"].get("sparsity") == cfg.sparsity))
        if not same:
            shutil.rmtree(trace_dir)
    if not trace_dir.exists():
        log(f"[3/8] capturing {P + H:,} tokens of '{cfg.corpus}' ({cfg.regime()})")
        trace = capture(handle, cfg.corpus, trace_dir, tokens=P + H, ctx=cfg.ctx, method=cfg.method,
                        sparsity=cfg.sparsity, calib_tokens=calib, thresholds=thresholds, progress=progress)
    else:
        log(f"[3/8] reusing trace {trace_dir}")
    log(f"[4/8] perplexity of the sparsified model on the held-out tokens [{P:,}, {P + H:,})")
    accuracy = measure_perplexity(handle, cfg.corpus, start=P, tokens=H, ctx=cfg.ctx, method=cfg.method,
                                  sparsity=cfg.sparsity, thresholds=trace.meta["sparsifier"].get("thresholds"),
                                  progress=progress)
    log(f"      dense {accuracy['dense']['ppl']:.2f}, sparse {accuracy['sparse']['ppl']:.2f} "
        f"({accuracy['ppl_cost']:+.1%}); achieved sparsity {np.mean(accuracy['sparse']['achieved_sparsity']):.3f}")
    log(f"[5/8] co-activation statistics on the profiling part [0, {P:,})")
    stats = count(trace, out / "stats", start=0, stop=P, progress=progress)
    log(f"[6/8] solving with {', '.join(cfg.solvers)}")
    layouts = solve_layouts(stats, cfg.solvers, out / "layouts", seed=cfg.seed, progress=progress)
    heldout = trace.packed(P, P + H)
    bb = trace_bundle_bytes(trace.meta, cfg.bundle, cfg.dtype)
    rows: list[dict[str, Any]] = []
    reports: dict[str, Any] = {}
    log(f"[7/8] packing ({cfg.bundle}, {cfg.dtype}, {bb} B/bundle), replaying {H} held-out tokens with O_DIRECT"
        + (f" and generating {cfg.flash_tokens} tokens from flash per layout" if cfg.flash_tokens > 0 else ""))
    pack_dir = out / "packs"
    pack_dir.mkdir(exist_ok=True)
    flash: list[dict[str, Any]] = []
    sp = get_sparsifier(cfg.method, sparsity=cfg.sparsity, thresholds=trace.meta["sparsifier"].get("thresholds"))
    prompt = trace.token_ids(P, min(P + 8, P + H)).tolist() if cfg.flash_tokens > 0 else []
    for spec, (layout, res) in layouts.items():
        pack_path = pack(handle, layout, pack_dir / f"{spec}.pack", bundle=cfg.bundle, dtype=cfg.dtype,
                         progress=progress)
        sim = simulate(layout, heldout, trace.unit_widths, bundle_bytes=bb, collapse_gap=cfg.collapse)
        rep = replay(pack_path, layout, heldout, collapse_gap=cfg.collapse, engine=cfg.engine, progress=bars(progress))
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
        if spec == cfg.solvers[0]:  # the baseline every sparse layout must beat: read each layer's whole FFN
            dense = replay(pack_path, layout, heldout, engine=cfg.engine, dense=True, progress=bars(progress))
            dense_row = {"solver": "dense (whole FFN)", "objective": None, "mean_run_length": None,
                         "reads_per_token": dense.reads_per_token, "bytes_read_per_token": dense.bytes_read_per_token,
                         "io_ms_per_token_mean": dense.latency_ms_mean, "io_ms_per_token_p50": dense.latency_ms_p50,
                         "io_ms_per_token_p99": dense.latency_ms_p99,
                         "effective_bandwidth_MBps": (dense.effective_bandwidth or 0) / 1e6, "solve_seconds": 0.0}
        if cfg.flash_tokens > 0:
            if spec == cfg.solvers[0]:
                flash.append(generate_from_flash(pack_path, handle, sp, prompt, cfg, "dense from flash", dense=True))
            flash.append(generate_from_flash(pack_path, handle, sp, prompt, cfg, spec))
            log(f"      {flash[-1]['layout']}: {flash[-1]['tokens_per_s']:.2f} tokens/s from flash")
        pack_path.unlink()  # packs are ~100 MB each; the layouts are the product
    rows.insert(0, dense_row)
    log("writing report and plot")
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
               "regime": cfg.regime(), "accuracy": accuracy,
               "operating_point": None if op is None else op.to_dict(),
               "trace": {k: trace.meta[k] for k in ("model_id", "n_layers", "n_neurons", "d_model")},
               "achieved_sparsity": trace.meta["achieved_sparsity"],
               "rows": rows, "flash": flash, "reports": reports}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    acc = accuracy
    plot_comparison([r for r in rows if r["mean_run_length"] is not None], out / "demo.png",
                    dense_ms=dense_row["io_ms_per_token_mean"],
                    title=f"{cfg.regime()}: perplexity {acc['dense']['ppl']:.2f} dense -> {acc['sparse']['ppl']:.2f} "
                          f"sparse ({acc['ppl_cost']:+.1%}), {H} held-out tokens, {cfg.engine}")
    return summary


def generate_from_flash(pack_path: Path, handle: Any, sparsifier: Any, prompt: list[int], cfg: DemoConfig,
                        name: str, *, dense: bool = False) -> dict[str, Any]:
    """A short greedy generation with the FFN streamed from ``pack_path`` (coact.online): tokens/s, the compute /
    I/O split, and the text. Every layout yields the same tokens (the engine is exact); only the speed differs."""
    opts: dict[str, Any] = {"dense": True, "policy": "none", "prefetch": False} if dense else \
        {"policy": "s3fifo", "budget": cfg.flash_budget, "prefetch": True}
    with FlashModel(pack_path, handle, sparsifier=sparsifier, engine=cfg.engine, **opts) as fm:
        out = fm.generate(prompt, cfg.flash_tokens)
        rep = fm.report(skip=min(4, len(prompt)))
    ms = rep["ms_per_token"]
    return {"layout": name, "tokens_per_s": rep["tokens_per_s"], "ms_per_token": ms["wall"],
            "compute_ms": ms["compute"], "io_wait_ms": ms["io_wait"], "io_hidden_ms": ms["io_hidden"],
            "mb_read_per_token": rep["per_token"]["bytes_read"] / 1e6, "hit_rate": rep["hit_rate"],
            "tokens": out["tokens"], "text": handle.tokenizer.decode(out["tokens"])}


def plot_comparison(rows: list[dict[str, Any]], path: str | Path, *, dense_ms: float | None = None,
                    title: str | None = None) -> Path:
    """Two bar charts: mean run length (higher is better) and real I/O ms/token (lower is better), with the time
    of reading the dense FFN as a reference line and the operating point in the title."""
    return bar_panels([r["solver"] for r in rows], [
        Panel([r["mean_run_length"] for r in rows], "mean run length (bundles/read)",
              "held-out read-run length (higher is better)"),
        Panel([r["io_ms_per_token_mean"] for r in rows], "I/O ms per token (O_DIRECT)",
              "measured flash latency (lower is better)", color="tab:orange",
              reference=None if dense_ms is None else (dense_ms, f"dense FFN {dense_ms:.0f} ms")),
    ], path, suptitle=title)
