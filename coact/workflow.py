"""The steps of coact as plain functions: the CLI, the demo, the notebooks and the tests all call these.

Why a module of its own: the CLI only parses options, calls one of these and renders the result; anything a command
can do (capture, count, solve, evaluate, pack, replay, export) a notebook can do with the same function, without
typer. (The *named pipelines* compared on real I/O are a different thing: :mod:`runtime.pipelines`.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from coact.accuracy import OperatingPoint, allocated_operating_point, calibration_activations, perplexity, \
    uniform_operating_point
from coact.corpus import load_text, text_digest, token_windows, tokenize
from coact.errors import CoactError, TraceError
from coact.export_model import MODEL_FORMATS, export_model
from coact.models import ModelHandle, load_model
from coact.placement import layout_objective, solve_model
from coact.progress import bars
from coact.sparsify import get_sparsifier
from coact.stats import CoactStats, StatsError, check_stats_output, compute_stats, count_stats
from coact.trace import CaptureConfig, Trace, capture_trace, check_trace_output
from common.atomic import check_output
from runtime.caches import CACHES, get_cache
from runtime.layout import Layout, export_layout, load_layout, save_layout
from runtime.pack import BUNDLES, DTYPES, PackError, PackFile, is_pack_file, write_pack
from runtime.pack import expert_order as expert_order_of
from runtime.replay import replay, simulate
from runtime.report import Report
from solvers import get_solver

__all__ = ["capture", "held_out_accuracy", "accuracy_line", "count", "solve_layouts", "layout_objective",
           "check_compatible", "unit_widths", "bundle_bytes", "trace_bundle_bytes", "pack", "EXPERT_ORDERS",
           "ensure_pack", "evaluate_layouts", "replay_pack", "export", "require", "measure_perplexity"]


def require(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it exists; a one-line user error naming ``what`` otherwise."""
    p = Path(path)
    if not p.exists():
        raise CoactError(f"{what} {p} not found")
    return p


def _model(model: str | ModelHandle) -> ModelHandle:
    return load_model(model) if isinstance(model, str) else model


# ----------------------------------------------------------------------------------------------------------- trace
def capture(
    model: str | ModelHandle,
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
    thresholds: Sequence[float] | None = None,
    forward: str = "dense",
    ppl_tokens: int = 512,
    progress: bool = True,
) -> Trace:
    """Capture a trace of `tokens` tokens of `corpus` from `start` (see :mod:`coact.trace`).

    Every trace records what its sparsifier costs (``meta["accuracy"]``): dense and sparse perplexity on
    ``ppl_tokens`` held-out tokens next to the captured range (:func:`held_out_range`; 0 skips the measurement).
    ``forward="sparse"`` records the active sets of the sparse forward (see :class:`coact.trace.CaptureConfig`).

    `model` is a spec (`smollm2`, a local path) or an already loaded :class:`coact.models.ModelHandle`.
    `thresholds_from` reuses the CATS thresholds of another trace of the same model (so a held-out trace is
    sparsified exactly like the profiling trace); `thresholds` gives per-layer CATS thresholds directly (e.g. those
    of an :class:`coact.accuracy.OperatingPoint`).
    """
    # Validate cheap inputs before the slow model load (and before any folder is created).
    sp = get_sparsifier(method, sparsity=sparsity)
    check_trace_output(Path(out))
    for name, value in (("--tokens", tokens), ("--ctx", ctx), ("shard_tokens", shard_tokens)):
        if int(value) < 1:
            raise TraceError(f"{name} must be >= 1, got {value}")
    if int(ppl_tokens) < 0:
        raise TraceError(f"--ppl-tokens must be >= 0, got {ppl_tokens}")
    if sp.needs_calibration and thresholds_from is None and thresholds is None and int(calib_tokens) < 1:
        raise TraceError(f"--calib-tokens must be >= 1 for {method} (its thresholds are calibrated on them), "
                         f"got {calib_tokens}")
    text = load_text(corpus)
    handle = _model(model)
    stream = tokenize(text, handle.tokenizer)
    thresholds = list(thresholds) if thresholds is not None else None
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
        forward=forward,
    )

    def accuracy(sp: Any) -> dict[str, Any]:
        return held_out_accuracy(handle, stream, sp, start=int(start), tokens=int(tokens),
                                 ppl_tokens=int(ppl_tokens), ctx=int(ctx), progress=progress)

    return capture_trace(handle, stream, cfg, out, thresholds=thresholds,
                         accuracy=accuracy if int(ppl_tokens) > 0 else None, progress=progress)


def held_out_range(n_stream: int, start: int, tokens: int, ppl_tokens: int) -> tuple[int, int] | None:
    """The tokens a trace's accuracy is measured on: the ``ppl_tokens`` right after the captured range
    [start, start + tokens), else the ones right before it, else as many as fit after it (at least 64); None if
    the corpus leaves no room. Why next to the range: same text, never the calibration or captured tokens."""
    after = start + tokens
    if after + ppl_tokens <= n_stream:
        return after, ppl_tokens
    if start >= ppl_tokens:
        return start - ppl_tokens, ppl_tokens
    if n_stream - after >= 64:
        return after, n_stream - after
    return None


def held_out_accuracy(handle: ModelHandle, stream: np.ndarray, sparsifier: Any, *, start: int, tokens: int,
                      ppl_tokens: int, ctx: int, progress: bool = True) -> dict[str, Any]:
    """Dense and sparse perplexity of ``sparsifier`` on the held-out tokens of :func:`held_out_range`: the
    perplexity cost a trace carries in its metadata."""
    rng = held_out_range(len(stream), start, tokens, ppl_tokens)
    if rng is None:
        return {"measured": False, "reason": f"the corpus has no {ppl_tokens} tokens outside the captured range"}
    h_start, h_tokens = rng
    prog = bars(progress)
    dense = perplexity(handle, stream, start=h_start, tokens=h_tokens, ctx=ctx, progress=prog)
    sparse = perplexity(handle, stream, start=h_start, tokens=h_tokens, ctx=ctx, sparsifier=sparsifier,
                        progress=prog)
    return {"measured": True, "token_start": h_start, "n_tokens": h_tokens, "ctx": ctx,
            "dense_ppl": round(dense.ppl, 6), "sparse_ppl": round(sparse.ppl, 6),
            "ppl_cost": round(sparse.ppl / dense.ppl - 1.0, 6),
            "sparse_mean_sparsity": round(float(np.mean(sparse.achieved_sparsity)), 6)}


def accuracy_line(meta: dict[str, Any]) -> str:
    """One line naming a trace's (or its statistics') perplexity cost, for reports: every run-length or speed
    figure is shown with the accuracy it holds at."""
    acc = meta.get("accuracy")
    if not acc or not acc.get("measured"):
        return "perplexity cost: not measured" + (f" ({acc['reason']})" if acc else " (trace from before v0.2)")
    return (f"perplexity {acc['dense_ppl']:.2f} dense -> {acc['sparse_ppl']:.2f} sparse "
            f"({acc['ppl_cost']:+.1%}) on {acc['n_tokens']} held-out tokens")


# ----------------------------------------------------------------------------------------------------------- stats
def count(trace: str | Path | Trace, out: str | Path | None = None, *, start: int = 0, stop: int | None = None,
          top_k: int | None = None, dense: bool = False, executor: Any = None,
          progress: bool = True, candidates: str | None = None) -> CoactStats:
    """Co-activation statistics of tokens [start, stop) of a trace, saved to ``out`` when given.

    ``top_k``, ``candidates`` or ``dense`` select the per-layer scalable path (:func:`coact.stats.count_stats`:
    candidate graph of the top-k partners per neuron ranked by ``candidates`` (:data:`coact.stats.CANDIDATE_SCORES`,
    default :data:`coact.stats.DEFAULT_CANDIDATES`), or dense counts, one executor job per layer); none of them:
    dense in-process counting (:func:`coact.stats.compute_stats`, small models)."""
    if out is not None:  # before counting: never replace an unrelated folder or the trace itself
        check_stats_output(out, inputs=() if isinstance(trace, Trace) else (trace,))
    tr = trace if isinstance(trace, Trace) else Trace.load(require(trace, "trace"))
    if out is not None and isinstance(trace, Trace):
        check_stats_output(out, inputs=(tr.path,))
    n = (tr.n_tokens if stop is None else int(stop)) - int(start)
    if n < 1:
        raise StatsError(f"token range [{start}, {stop if stop is not None else tr.n_tokens}) holds no tokens; "
                         "statistics over zero tokens carry no information")
    if top_k is not None or dense or candidates is not None:
        st = count_stats(tr, start=start, stop=stop, top_k=top_k, dense=dense, executor=executor, progress=progress,
                         candidates=candidates or "default")
    else:
        st = compute_stats(tr, start=start, stop=stop, progress=progress)
    if out is not None:
        st.save(out)
    return st


# ---------------------------------------------------------------------------------------------------------- layouts
def solve_layouts(
    stats: CoactStats,
    solvers: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    time_limit: float | None = None,
    progress: bool = True,
    executor: Any = None,
    params: dict[str, Any] | None = None,
) -> dict[str, tuple[Layout, Any]]:
    """Run each solver spec on every layer; return {spec: (Layout, SolveResult)} and save
    `out_dir/{spec}.safetensors`. Every spec (with ``params``, given to each spec's deciding stage) is checked
    before any work starts. ``executor``: where layers are solved (:func:`common.executors.get_executor` spec;
    None = in this process); the layouts are identical."""
    params = dict(params or {})
    for spec in solvers:
        get_solver(spec, **params)
    out: dict[str, tuple[Layout, Any]] = {}
    for spec in solvers:
        res = solve_model(stats, spec, seed=seed, time_limit=time_limit, progress=bars(progress),
                          executor=executor, **params)
        layout = Layout(
            res.perms,
            model_id=str(stats.meta.get("model_id", "")),
            solver=spec,
            params={**res.params, "solve_seconds": [round(s, 4) for s in res.seconds]},
            stats_digest=stats.digest,
            units=stats.units if "units" in stats.meta else None,  # MoE / mixed widths: one perm per unit
        )
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            save_layout(layout, Path(out_dir) / f"{spec}.safetensors")
        out[spec] = (layout, res)
    return out


def unit_widths(target: Any) -> list[int]:
    """N of every placement unit of a trace, statistics or model handle (one per layer for dense models)."""
    units = getattr(target, "units", None)
    if units is not None:
        return [int(u.n) for u in units]
    return [int(target.n_neurons)] * int(target.n_layers)


def check_compatible(layout: Layout, target: Any, what: str = "trace") -> None:
    """A layout and a trace (or a loaded model: anything with n_layers, n_neurons, model_id, optionally units) must
    have the same shape (the same width for every unit), and the same model id when the layout records one."""
    widths = unit_widths(target)
    if layout.n_layers != target.n_layers or layout.n_neurons != widths:
        def shape(sizes: list[int]) -> str:
            return f"{len(sizes)} x {sizes[0]}" if len(set(sizes)) <= 1 and sizes else f"{len(sizes)} units of {sizes}"
        raise CoactError(f"layout has {shape(layout.n_neurons)} neurons, the {what} has {shape(widths)}")
    if layout.model_id and layout.model_id != target.model_id:
        raise CoactError(f"layout is for model {layout.model_id!r}, the {what} is from {target.model_id!r}")


def bundle_bytes(bundle: str, dtype: str, d_model: int, bias_parts: Sequence[str] = ()) -> int:
    """Bytes of one neuron's bundle (docs/DESIGN.md §2: parts x width x dtype size), as :mod:`runtime.pack` writes
    it: width = d_model, plus one value per part when a stored part (gate, up) has a per-neuron bias
    (`bias_parts`, recorded in a trace's ``neuron_bias_parts``)."""
    if bundle not in BUNDLES:
        raise CoactError(f"unknown bundle {bundle!r}; choose from {', '.join(BUNDLES)}")
    if dtype not in DTYPES:
        raise CoactError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    width = int(d_model) + int(any(p in bias_parts for p in BUNDLES[bundle] if p != "down"))
    return len(BUNDLES[bundle]) * width * DTYPES[dtype].itemsize


def trace_bundle_bytes(meta: dict[str, Any], bundle: str, dtype: str) -> int:
    """:func:`bundle_bytes` of the model a trace was captured from (traces older than ``neuron_bias_parts``:
    no biases)."""
    return bundle_bytes(bundle, dtype, int(meta["d_model"]), meta.get("neuron_bias_parts") or ())


def evaluate_layouts(layouts: Sequence[str | Path], trace: str | Path | Trace, *, start: int = 0,
                     stop: int | None = None, collapse: int = 0, bundle: str = "up-down",
                     dtype: str = "fp16") -> list[dict[str, Any]]:
    """Simulated metrics (runs, reads, bytes; no disk I/O) of each layout file on tokens [start, stop) of a trace:
    one row per layout with the report's overall figures."""
    tr = trace if isinstance(trace, Trace) else Trace.load(require(trace, "trace"))
    bb = trace_bundle_bytes(tr.meta, bundle, dtype)
    lays = []
    for lp in layouts:
        lay = load_layout(require(lp, "layout"))
        check_compatible(lay, tr)
        lays.append((lp, lay))
    packed = tr.packed(start, stop)
    rows = []
    for lp, lay in lays:
        rep = simulate(lay, packed, tr.unit_widths, bundle_bytes=bb, collapse_gap=collapse)
        rows.append({"layout": str(lp), "solver": lay.solver, "n_tokens": int(packed.shape[0]),
                     "accuracy": tr.meta.get("accuracy"),
                     **{k: v for k, v in rep.to_dict().items() if k != "per_layer"},
                     # 4 KiB pages read per token: with bundles smaller than a page, pages and requests (not runs)
                     # set the device time (solvers/device_cost.py)
                     "pages_per_token": (rep.bytes_read_per_token or 0) / 4096})
    return rows


# ------------------------------------------------------------------------------------------------------------ packs
EXPERT_ORDERS = ("index", "coactivation")


def pack(model: str | ModelHandle, layout: Layout, out: str | Path, *, bundle: str = "up-down", dtype: str = "fp16",
         expert_order: str = "index", trace: str | Path | Trace | None = None, progress: bool = True) -> Path:
    """Write the model's FFN bundles in `layout` order into a pack file (one region per placement unit: an MoE
    layer's experts each get their own).

    ``expert_order``: ``index`` (unit regions in unit order) or ``coactivation`` (inside every MoE layer, experts
    routed together are neighbours in the file, :func:`runtime.pack.expert_order`, from the co-routing counts
    ``trace`` recorded at capture)."""
    bundle_bytes(bundle, dtype, 1)  # validate names before loading the model
    if expert_order not in EXPERT_ORDERS:
        raise CoactError(f"unknown --expert-order {expert_order!r}; choose from {', '.join(EXPERT_ORDERS)}")
    order = None
    if expert_order == "coactivation":
        if not layout.has_experts:
            raise CoactError("--expert-order coactivation needs a layout of a mixture-of-experts model")
        if trace is None:
            raise CoactError("--expert-order coactivation needs --trace (its co-routing counts order the experts)")
        tr = trace if isinstance(trace, Trace) else Trace.load(require(trace, "trace"))
        if "routing" not in tr.meta:
            raise CoactError(f"{tr.path} records no expert co-routing counts (not a mixture-of-experts capture)")
        if layout.model_id and tr.model_id != layout.model_id:
            raise CoactError(f"trace is from {tr.model_id!r}, the layout for {layout.model_id!r}")
        order = expert_order_of(layout.unit_list, tr.meta["routing"])
    check_output(out, kind="pack file", is_kind=is_pack_file)  # only an existing pack may be replaced
    handle = _model(model)
    check_compatible(layout, handle, "model")
    handle.check_bundle(bundle)  # a plain FFN has no gate: gate-up-down would store fc1 twice
    if getattr(handle, "units", None) is not None and layout.units is None:  # a layout written without units
        layout = Layout(layout.perms, model_id=layout.model_id, solver=layout.solver, params=layout.params,
                        stats_digest=layout.stats_digest, created=layout.created, units=handle.units)
    write_pack(out, handle.ffn_weights, layout, bundle=bundle, dtype=dtype, d_model=handle.d_model,
               progress=bars(progress), order=order)
    return Path(out)


def ensure_pack(model: str | ModelHandle, layout: Layout, path: str | Path, *, log: Any = None, **kw: Any) -> Path:
    """`path` holding `layout`'s pack: reused when the file there already holds exactly that layout (same digest),
    else (re)written. Packs are ~100 MB each; benchmarks and `coact pipelines` call this to avoid re-packing."""
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


def replay_pack(pack_file: str | Path, trace: str | Path | Trace, *, start: int = 0, stop: int | None = None,
                collapse: int | str = 0, engine: str = "sync", cache_mb: float = 0.0, policy: str = "none",
                verify: bool = False, progress: bool = True) -> Report:
    """Real O_DIRECT replay of tokens [start, stop) of a trace against a pack file (the pack embeds its layout).

    ``cache_mb`` is the DRAM budget in MB (10^6 bytes) shared by all layers, managed by cache ``policy``.
    ``verify`` checks every bundle read against the pack's crc32s (outside the timed region).
    """
    CACHES.entry(policy)  # an unknown policy fails before any file is opened
    tr = trace if isinstance(trace, Trace) else Trace.load(require(trace, "trace"))
    with PackFile(require(pack_file, "pack file")) as pf:
        if pf.model_id and pf.model_id != tr.model_id:
            raise CoactError(f"pack is for model {pf.model_id!r}, trace is from {tr.model_id!r}")
        layout = pf.layout()
        bb = pf.bundle_bytes
    check_compatible(layout, tr)
    if cache_mb < 0:
        raise CoactError(f"--cache-mb must be >= 0, got {cache_mb}")
    cache = get_cache(policy, int(cache_mb * 1e6), bb) if policy != "none" or cache_mb else None
    rep = replay(pack_file, layout, tr.packed(start, stop), collapse_gap=collapse, engine=engine, cache=cache,
                 verify=verify, progress=bars(progress))
    rep.config["accuracy"] = tr.meta.get("accuracy")  # the accuracy these reads serve (coact.workflow.capture)
    return rep


def export(layout: str | Path, fmt: str = "json", out: str | Path | None = None, model: str | None = None,
           progress: bool = True) -> Path:
    """Export a layout file for an inference engine (json, csv, npz), or the model with its FFN neurons in layout
    order (hf, gguf: :mod:`coact.export_model`; default `model`: the named model the layout was made for)."""
    lay = load_layout(require(layout, "layout"))
    if fmt in MODEL_FORMATS:
        target = Path(out) if out is not None else Path(layout).with_suffix(".gguf" if fmt == "gguf" else ".hf")
        return export_model(lay, fmt, model, target, progress=bars(progress))
    target = Path(out) if out is not None else Path(layout).with_suffix("." + fmt)
    return export_layout(lay, target, fmt)


# --------------------------------------------------------------------------------------------------------- accuracy
ALLOCATIONS = ("uniform", "sensitivity")


def choose_operating_point(
    model: str | ModelHandle,
    corpus: str,
    max_ppl_increase: float,
    *,
    start: int = 0,
    calib_tokens: int = 1024,
    validation_tokens: int = 512,
    ctx: int = 256,
    allocation: str = "uniform",
    progress: bool = True,
) -> OperatingPoint:
    """Per-layer CATS sparsities and thresholds that keep perplexity within ``+max_ppl_increase`` of dense.

    Thresholds are calibrated on corpus tokens [start, start + calib_tokens) (where ``coact trace`` calibrates) and
    the budget is checked on the next ``validation_tokens`` tokens. ``allocation``: ``uniform`` (one sparsity for
    every layer, by bisection) or ``sensitivity`` (per-layer sparsities allocated by measured layer sensitivity;
    slower: one perplexity run per layer and level). Never uses tokens a held-out evaluation should use: take
    held-out text after ``start + calib_tokens + validation_tokens``.
    """
    if not 0.0 < float(max_ppl_increase) < 10.0:
        raise CoactError(f"--max-ppl-increase must be in (0, 10), got {max_ppl_increase}")
    if allocation not in ALLOCATIONS:
        raise CoactError(f"unknown allocation {allocation!r}; choose from {', '.join(ALLOCATIONS)}")
    handle = _model(model)
    stream = tokenize(load_text(corpus), handle.tokenizer)
    windows = token_windows(stream, int(start), int(calib_tokens), int(ctx))
    acts = calibration_activations(handle, windows)  # per unit; an expert's routed tokens only
    val = dict(start=int(start) + int(calib_tokens), tokens=int(validation_tokens), ctx=int(ctx))
    if allocation == "uniform":
        return uniform_operating_point(handle, stream, acts, float(max_ppl_increase), progress=bars(progress), **val)
    op, _ = allocated_operating_point(handle, stream, acts, float(max_ppl_increase), calib_windows=windows,
                                      progress=bars(progress), **val)
    return op


def measure_perplexity(
    model: str | ModelHandle = "smollm2",
    corpus: str = "pydoc",
    *,
    start: int | None = None,
    tokens: int = 2048,
    ctx: int = 256,
    method: str | None = "cats",
    sparsity: float = 0.9,
    calib_tokens: int = 1024,
    thresholds_from: str | Path | None = None,
    thresholds: Sequence[float] | None = None,
    dense: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Dense and sparse teacher-forced perplexity on tokens [start, start + tokens) of ``corpus``
    (:mod:`coact.accuracy`), and the perplexity cost ``sparse / dense - 1``.

    Thresholds are given (``thresholds``), come from ``thresholds_from`` (a trace of the same model) or are
    calibrated on corpus tokens
    [0, calib_tokens), exactly as ``coact trace`` calibrates; ``start`` defaults to ``calib_tokens`` so that the
    evaluated tokens never include the calibration tokens (an overlapping range is refused).
    """
    sp = None if method is None else get_sparsifier(method, sparsity=sparsity)
    text = load_text(corpus)
    handle = _model(model)
    stream = tokenize(text, handle.tokenizer)
    if sp is not None and thresholds is not None:
        sp = get_sparsifier(method, sparsity=sparsity, thresholds=list(thresholds))  # type: ignore[arg-type]
    elif sp is not None and thresholds_from is not None:
        ref = Trace.load(require(thresholds_from, "trace"))
        if ref.model_id != handle.model_id:
            raise TraceError(f"{thresholds_from} was captured from {ref.model_id!r}, not {handle.model_id!r}")
        thresholds = ref.meta["sparsifier"].get("thresholds")
        sp = get_sparsifier(method, sparsity=sparsity, thresholds=thresholds)  # type: ignore[arg-type]
    start = int(calib_tokens if start is None else start)
    if sp is not None and sp.needs_calibration:
        if start < calib_tokens:
            raise CoactError(f"evaluated tokens [{start}, {start + tokens}) overlap the calibration tokens "
                             f"[0, {calib_tokens}); use --start >= {calib_tokens} or --thresholds-from")
        sp.calibrate(calibration_activations(handle, token_windows(stream, 0, int(calib_tokens), int(ctx))))
    prog = bars(progress)
    out: dict[str, Any] = {"model_id": handle.model_id, "corpus": corpus, "token_start": start,
                           "n_tokens": int(tokens), "ctx": int(ctx),
                           "sparsifier": None if sp is None else sp.params()}
    if dense:
        out["dense"] = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx, progress=prog).to_dict()
    if sp is not None:
        out["sparse"] = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx, sparsifier=sp,
                                   progress=prog).to_dict()
    if dense and sp is not None:
        out["ppl_cost"] = out["sparse"]["ppl"] / out["dense"]["ppl"] - 1.0
    return out


def capture_at_budget(model: str | ModelHandle, corpus: str, out: str | Path, *, max_ppl_increase: float,
                      allocation: str = "uniform", tokens: int, start: int = 0, ctx: int = 256,
                      calib_tokens: int = 1024, validation_tokens: int = 512, shard_tokens: int = 2048,
                      forward: str = "dense", ppl_tokens: int = 512,
                      progress: bool = True) -> tuple[Trace, OperatingPoint]:
    """`coact trace --max-ppl-increase B`: choose the CATS operating point within the budget
    (:func:`choose_operating_point`, calibrated where the trace starts) and capture with its per-layer thresholds.
    """
    handle = _model(model)
    op = choose_operating_point(handle, corpus, max_ppl_increase, start=start, calib_tokens=calib_tokens,
                                validation_tokens=validation_tokens, ctx=ctx, allocation=allocation,
                                progress=progress)
    tr = capture(handle, corpus, out, tokens=tokens, start=start, ctx=ctx, method="cats",
                 sparsity=min(max(op.mean_sparsity, 0.01), 0.99), calib_tokens=calib_tokens,
                 shard_tokens=shard_tokens, thresholds=op.thresholds, forward=forward, ppl_tokens=ppl_tokens,
                 progress=progress)
    return tr, op
