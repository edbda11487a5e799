"""The `coact` command line (typer + rich). Thin: options in, :mod:`coact.pipeline` calls, tables and JSON out.

Every command exits 0 on success and, on bad input, prints one line `error: ...` and exits 2 (no traceback).
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="coact",
    help="Place LLM FFN neurons in flash so co-activated neurons are read together.\n\n"
    "Quick start: coact demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (logs, CI, pipes) rich would wrap tables at 80 columns; 140 keeps every column readable.
out_console = Console() if Console().is_terminal else Console(width=140)
err_console = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from coact.errors import CoactError
    from runtime.io import DirectIOUnsupported
    from runtime.layout import LayoutError
    from runtime.pack import PackError

    return (CoactError, LayoutError, PackError, DirectIOUnsupported, FileNotFoundError, NotADirectoryError)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr and exit code 2; Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("interrupted (a capture resumes when run again)")
            raise typer.Exit(130)
        except _user_errors() as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            typer.echo(f"error: {msg}", err=True)  # plain echo: rich would wrap a long message over lines
            raise typer.Exit(2)

    return wrapper


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    return path


# ------------------------------------------------------------------------------------------------------------ demo
@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("coact-out"), help="Output folder (trace, stats, layouts, report.json, demo.png)."),
    profile_tokens: int = typer.Option(16384, help="Tokens profiled for co-activation statistics."),
    heldout_tokens: int = typer.Option(512, help="Held-out tokens replayed with real O_DIRECT reads."),
    solver: List[str] = typer.Option(["identity", "frequency", "ripple"], help="Solvers to compare (repeat)."),
    model: str = typer.Option("smollm2", help="'smollm2' or a local model path."),
    corpus: str = typer.Option("pydoc", help="'pydoc', a text file or a saved dataset."),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles (0: off)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The main job on embedded defaults: SmolLM2 + Python's pydoc text -> traces -> statistics -> solvers ->
    layouts -> packed flash file -> real O_DIRECT replay of held-out text, and a comparison table.

    Example: coact demo --out coact-out
    """
    from coact.pipeline import DemoConfig, run_demo

    cfg = DemoConfig(out=out, model=model, corpus=corpus, profile_tokens=profile_tokens,
                     heldout_tokens=heldout_tokens, solvers=tuple(solver), collapse=collapse)
    log = (lambda m: err_console.print(m)) if json_out else (lambda m: out_console.print(m))
    summary = run_demo(cfg, progress=not json_out, log=log)
    if json_out:
        _emit_json({k: summary[k] for k in ("config", "rows", "achieved_sparsity")})
        return
    t = Table(title=f"coact demo: {heldout_tokens} held-out tokens, {summary['trace']['n_layers']} layers; "
              "run = bundles per read (higher is better), I/O = real O_DIRECT time per token")
    t.add_column("solver", no_wrap=True)
    for col in ("objective", "mean run", "reads/tok", "KiB/tok", "I/O ms/tok", "p50 ms", "p99 ms", "MB/s"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in summary["rows"]:
        t.add_row(r["solver"], f"{r['objective']:,}", f"{r['mean_run_length']:.3f}", f"{r['reads_per_token']:.1f}",
                  f"{r['bytes_read_per_token'] / 1024:.0f}", f"{r['io_ms_per_token_mean']:.2f}",
                  f"{r['io_ms_per_token_p50']:.2f}", f"{r['io_ms_per_token_p99']:.2f}",
                  f"{r['effective_bandwidth_MBps']:.0f}")
    out_console.print(t)
    sp = summary["achieved_sparsity"]
    out_console.print(f"achieved sparsity per layer: min {min(sp):.3f}, max {max(sp):.3f}")
    out_console.print(f"outputs: {out.resolve()} (report.json, demo.png, layouts/, stats/, trace/)")


# ----------------------------------------------------------------------------------------------------------- trace
@app.command()
@friendly
def trace(
    out: Path = typer.Option(..., help="Output trace folder (a datasets dataset)."),
    model: str = typer.Option("smollm2", help="'smollm2' (bundled GGUF) or a local transformers folder / .gguf."),
    corpus: str = typer.Option("pydoc", help="'pydoc', a text file, a saved dataset, or a mixture 'a+b'."),
    tokens: int = typer.Option(4096, help="Number of tokens to capture."),
    start: int = typer.Option(0, help="First token of the corpus stream (profiling and held-out ranges must not overlap)."),
    ctx: int = typer.Option(256, help="Tokens per independent sequence."),
    sparsity: float = typer.Option(0.9, help="Target sparsity in (0, 1) for cats / topk."),
    method: str = typer.Option("cats", help="Sparsifier: cats, relu or topk."),
    calib_tokens: int = typer.Option(1024, help="Tokens used to calibrate CATS thresholds."),
    thresholds_from: Optional[Path] = typer.Option(None, help="Reuse the CATS thresholds of this trace."),
    json_out: bool = typer.Option(False, "--json", help="Print the trace metadata as JSON."),
) -> None:
    """Capture bit-packed active sets of every FFN layer. Resumes after interruption (run the same command again).

    Example: coact trace --tokens 20000 --out traces/pydoc-profile
    """
    from coact.pipeline import capture

    tr = capture(model, corpus, out, tokens=tokens, start=start, ctx=ctx, method=method, sparsity=sparsity,
                 calib_tokens=calib_tokens, thresholds_from=thresholds_from, progress=not json_out)
    if json_out:
        _emit_json(tr.meta)
        return
    sp = tr.meta["achieved_sparsity"]
    out_console.print(f"trace: {tr.n_tokens:,} tokens x {tr.n_layers} layers x {tr.n_neurons} neurons -> {out}")
    out_console.print("achieved sparsity per layer: " + " ".join(f"{x:.3f}" for x in sp))


# ----------------------------------------------------------------------------------------------------------- stats
@app.command()
@friendly
def stats(
    trace_dir: Path = typer.Argument(..., help="A trace folder from `coact trace`."),
    out: Path = typer.Option(..., help="Output statistics folder."),
    start: int = typer.Option(0, help="First token of the trace to count."),
    stop: Optional[int] = typer.Option(None, help="Token after the last one to count (default: all)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Exact per-layer activation and co-activation counts (written atomically with a digest).

    Example: coact stats traces/pydoc-profile --out stats/pydoc
    """
    from coact.stats import compute_stats
    from coact.trace import Trace

    tr = Trace.load(_require(trace_dir, "trace"))
    st = compute_stats(tr, start=start, stop=stop, progress=not json_out)
    st.save(out)
    info = {"out": str(out), "n_tokens": st.n_tokens, "n_layers": st.n_layers, "n_neurons": st.n_neurons,
            "digest": st.digest}
    if json_out:
        _emit_json(info)
    else:
        out_console.print(f"stats of {st.n_tokens:,} tokens, {st.n_layers} layers x {st.n_neurons} -> {out}")


# ----------------------------------------------------------------------------------------------------------- solve
@app.command()
@friendly
def solve(
    stats_dir: Optional[Path] = typer.Argument(None, help="A statistics folder from `coact stats`."),
    solver: List[str] = typer.Option(["ripple"], help="Solver name or chain 'a+b' (repeat for several)."),
    out: Path = typer.Option(Path("layouts"), help="Folder for one layout file per solver."),
    seed: int = typer.Option(0),
    time_limit: Optional[float] = typer.Option(None, help="Seconds per layer for solvers that search."),
    list_solvers: bool = typer.Option(False, "--list", help="List the registered solvers and exit."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Solve placements; writes OUT/{solver}.safetensors for each solver.

    Example: coact solve stats/pydoc --solver ripple --solver frequency --out layouts
    """
    from solvers.base import available_solvers, get_solver

    if list_solvers:
        rows = [{"name": n, "optimises": get_solver(n).optimises} for n in available_solvers()]
        if json_out:
            _emit_json(rows)
        else:
            for r in rows:
                out_console.print(f"{r['name']:<16} {r['optimises']}")
        return
    if stats_dir is None:
        raise FileNotFoundError("give a statistics folder (coact stats ... --out DIR)")
    from coact.pipeline import layout_objective, solve_layouts
    from coact.stats import CoactStats

    for s in solver:
        get_solver(s)  # unknown names fail before any work
    st = CoactStats.load(_require(stats_dir, "statistics"))
    res = solve_layouts(st, solver, out, seed=seed, time_limit=time_limit, progress=not json_out)
    rows = [{"solver": s, "layout": str(out / f"{s}.safetensors"), "objective": layout_objective(lay, st),
             "solve_seconds": float(sum(r.seconds))} for s, (lay, r) in res.items()]
    if json_out:
        _emit_json(rows)
        return
    t = Table(title="layouts")
    for col in ("solver", "objective", "solve s", "file"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["solver"], f"{r['objective']:,}", f"{r['solve_seconds']:.2f}", r["layout"])
    out_console.print(t)


# -------------------------------------------------------------------------------------------------------- evaluate
@app.command()
@friendly
def evaluate(
    layouts: List[Path] = typer.Argument(..., help="Layout files."),
    trace_dir: Path = typer.Option(..., "--trace", help="Trace to evaluate on (typically held out)."),
    start: int = typer.Option(0),
    stop: Optional[int] = typer.Option(None),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles."),
    bundle: str = typer.Option("up-down"),
    dtype: str = typer.Option("fp16"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Simulated metrics (runs, reads, bytes) of layouts on a trace, without disk I/O.

    Example: coact evaluate layouts/*.safetensors --trace traces/heldout
    """
    from coact.pipeline import bundle_bytes, check_compatible
    from coact.trace import Trace
    from runtime.layout import load_layout
    from runtime.replay import simulate

    tr = Trace.load(_require(trace_dir, "trace"))
    bb = bundle_bytes(bundle, dtype, int(tr.meta["d_model"]))
    packed = tr.packed(start, stop)
    rows = []
    for lp in layouts:
        lay = load_layout(_require(lp, "layout"))
        check_compatible(lay, tr)
        rep = simulate(lay, packed, tr.n_neurons, bundle_bytes=bb, collapse_gap=collapse)
        rows.append({"layout": str(lp), "solver": lay.solver, **{k: v for k, v in rep.to_dict().items()
                                                                  if k != "per_layer"}})
    if json_out:
        _emit_json(rows)
        return
    t = Table(title=f"simulated on {packed.shape[0]:,} tokens (collapse {collapse})")
    for col in ("solver", "mean run length", "reads/token", "KiB read/token", "over-read"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["solver"], f"{r['mean_run_length']:.3f}", f"{r['reads_per_token']:.1f}",
                  f"{r['bytes_read_per_token'] / 1024:.0f}", f"{r['overread']:.3f}")
    out_console.print(t)


# ------------------------------------------------------------------------------------------------------------ pack
@app.command("pack")
@friendly
def pack_cmd(
    layout: Path = typer.Option(..., help="Layout file."),
    out: Path = typer.Option(..., help="Pack file to write."),
    model: str = typer.Option("smollm2"),
    bundle: str = typer.Option("up-down", help="up-down (gate stays in DRAM) or gate-up-down."),
    dtype: str = typer.Option("fp16", help="fp16 or fp32."),
) -> None:
    """Write the model's FFN bundles in placement order into one flash file (4 KiB aligned, checksummed).

    Example: coact pack --layout layouts/ripple.safetensors --out ripple.pack
    """
    from coact.pipeline import pack
    from runtime.layout import load_layout

    lay = load_layout(_require(layout, "layout"))
    pack(model, lay, out, bundle=bundle, dtype=dtype)
    out_console.print(f"pack file -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")


# ---------------------------------------------------------------------------------------------------------- replay
@app.command("replay")
@friendly
def replay_cmd(
    pack_file: Path = typer.Argument(..., help="Pack file from `coact pack`."),
    trace_dir: Path = typer.Option(..., "--trace", help="Trace to replay (held out)."),
    start: int = typer.Option(0),
    stop: Optional[int] = typer.Option(None),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles (0: off)."),
    engine: str = typer.Option("sync", help="I/O engine."),
    cache_mb: float = typer.Option(0.0, help="DRAM cache budget in MB shared by all layers."),
    policy: str = typer.Option("none", help="Cache policy."),
    per_layer: bool = typer.Option(False, help="Also print a per-layer table."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Real O_DIRECT replay of a trace against a pack file: run lengths, reads, bytes, latency, bandwidth.

    Example: coact replay ripple.pack --trace traces/heldout --json
    """
    from coact.errors import CoactError
    from coact.trace import Trace
    from runtime.cache import get_cache
    from runtime.layout import Layout
    from runtime.pack import PackFile
    from runtime.replay import replay

    tr = Trace.load(_require(trace_dir, "trace"))
    pf = PackFile(_require(pack_file, "pack file"))
    try:
        if pf.model_id and pf.model_id != tr.model_id:
            raise CoactError(f"pack is for model {pf.model_id!r}, trace is from {tr.model_id!r}")
        layout = Layout(pf.perms(), model_id=pf.model_id, solver=pf.header.get("solver", ""))
        bb = pf.bundle_bytes
    finally:
        pf.close()
    from coact.pipeline import check_compatible

    check_compatible(layout, tr)
    cache = get_cache(policy, int(cache_mb * 1e6), bb) if policy != "none" or cache_mb else None
    rep = replay(pack_file, layout, tr.packed(start, stop), collapse_gap=collapse, engine=engine, cache=cache,
                 progress=not json_out)
    if json_out:
        _emit_json(rep.to_dict())
        return
    out_console.print(rep.table())
    if per_layer:
        out_console.print(rep.layer_table())


# --------------------------------------------------------------------------------------------------------- compare
@app.command()
@friendly
def compare(
    stats_dir: Path = typer.Option(..., "--stats", help="Profiling statistics (coact stats)."),
    trace_dir: Path = typer.Option(..., "--trace", help="Held-out trace to evaluate on."),
    start: int = typer.Option(0, help="First held-out token of the trace."),
    stop: Optional[int] = typer.Option(None),
    solver: List[str] = typer.Option([], help="Solvers beyond the baselines identity/random/frequency/ripple."),
    out: Path = typer.Option(Path("compare-out"), help="Folder for compare.json, compare.png and layouts/."),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles for the held-out simulation."),
    time_limit: Optional[float] = typer.Option(None, help="Seconds per layer for searching solvers."),
    bound: bool = typer.Option(True, help="Compute the LP upper bound (gap column)."),
    bundle: str = typer.Option("up-down"),
    dtype: str = typer.Option("fp16"),
    seed: int = typer.Option(0),
    real: bool = typer.Option(False, "--real", help="Also replay the pipelines dense/llmflash/ripple/coact "
                                                   "(coact = best solver here) with real O_DIRECT reads."),
    budget: float = typer.Option(0.10, help="With --real: DRAM budget as a fraction of all FFN bytes."),
    repeats: int = typer.Option(3, help="With --real: interleaved rounds."),
    model: str = typer.Option("smollm2", help="With --real: model to pack from."),
    cost: Optional[Path] = typer.Option(None, help="With --real: cost model JSON (coact device-profile)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Solvers x baselines on one model: objective, gap to a proven bound, held-out mean run length and
    reads/token (simulated), solve time; a table, compare.json and compare.png. With --real, the named pipelines
    are then replayed on the disk (see `coact pipelines`), coact's using the best solver of this comparison.

    Example: coact compare --stats stats/profile --trace traces/heldout --solver path-cover --solver ortools --real
    """
    from coact.compare import compare_solvers, plot_solver_comparison
    from coact.errors import CoactError
    from coact.pipeline import bundle_bytes, check_compatible
    from coact.stats import CoactStats
    from coact.trace import Trace
    from solvers.base import get_solver

    for s in solver:
        get_solver(s)
    st = CoactStats.load(_require(stats_dir, "statistics"))
    tr = Trace.load(_require(trace_dir, "trace"))
    if st.meta.get("model_id") != tr.model_id or st.n_neurons != tr.n_neurons:
        raise CoactError(f"statistics are for {st.meta.get('model_id')!r}, trace is from {tr.model_id!r}")
    bb = bundle_bytes(bundle, dtype, int(tr.meta["d_model"]))
    out.mkdir(parents=True, exist_ok=True)
    cmp = compare_solvers(st, tr.packed(start, stop), solver, bundle_bytes=bb, collapse_gap=collapse, seed=seed,
                          time_limit=time_limit, with_bound=bound, out_dir=out, progress=not json_out)
    (out / "compare.json").write_text(json.dumps(cmp.to_dict(), indent=1, default=str))
    plot_solver_comparison(cmp, out / "compare.png")
    if real:
        from coact.cli_runtime import pipelines_cmd

        best = max(cmp.rows, key=lambda r: (r["heldout_mean_run_length"] or 0, r["objective"]))["solver"]
        lay = out / "layouts"
        pipelines_cmd(trace_dir=trace_dir, start=start, stop=stop, layout=[f"ripple={lay / 'ripple.safetensors'}",
                      f"best={lay / (best + '.safetensors')}"], pack_opt=[], model=model, workdir=out, cost=cost,
                      stats_dir=stats_dir, profile_trace=None, profile_start=0, profile_stop=None, profile_tokens=256,
                      pipeline=["dense", "llmflash", "ripple", "coact"], budget=budget, repeats=repeats, engine=None,
                      sweep=False, plot=None, out=out / "real.json", json_out=False)
        out_console.print(f"coact pipeline used layout '{best}'; real results in {out / 'real.json'}")
    if json_out:
        _emit_json(cmp.rows)
        return
    t = Table(title=f"solvers on {st.n_layers} layers; bound = {cmp.bound or float('nan'):,.0f}")
    t.add_column("solver", no_wrap=True)
    for col in ("objective", "gap %", "mean run", "vs ripple", "reads/tok", "solve s"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in cmp.rows:
        gap = "-" if r["gap_pct"] is None else f"{r['gap_pct']:.2f}"
        t.add_row(r["solver"], f"{r['objective']:,}", gap, f"{r['heldout_mean_run_length']:.3f}",
                  f"{r['run_length_vs_ripple']:.3f}", f"{r['heldout_reads_per_token']:.1f}",
                  f"{r['solve_seconds']:.2f}")
    out_console.print(t)
    out_console.print(f"outputs: {out.resolve()}")


# ---------------------------------------------------------------------------------------------------------- export
@app.command()
@friendly
def export(
    layout: Path = typer.Argument(..., help="Layout file."),
    fmt: str = typer.Option("json", "--format", help="json, csv or npz."),
    out: Optional[Path] = typer.Option(None, help="Output path (default: layout path with the new suffix)."),
) -> None:
    """Export a layout for an inference engine.

    Example: coact export layouts/ripple.safetensors --format csv
    """
    from runtime.layout import export_layout, load_layout

    lay = load_layout(_require(layout, "layout"))
    target = out or layout.with_suffix("." + fmt)
    export_layout(lay, target, fmt)
    out_console.print(f"{fmt} -> {target}")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


# Runtime commands (device-profile, pipelines, fio-check) register themselves on `app`.
from coact import cli_runtime  # noqa: E402,F401
