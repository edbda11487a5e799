"""Commands of the offline side: demo, trace, stats, solve, evaluate, pack, replay, compare, export.

Each command parses its options, calls one library function (:mod:`coact.workflow`, :mod:`coact.demo`,
:mod:`coact.compare`) and renders the result as a table or, with ``--json``, as JSON only on stdout.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from coact.cli._app import command, emit_json, logger, out_console, parse_params
from coact.cli.online import PIPELINE_HELP, PROFILE_HELP, flash_options, flash_perplexity_cmd
from coact.cli.render import render_pipelines
from coact.compare import run_compare
from coact.demo import DemoConfig, run_demo
from coact.errors import CoactError
from coact.export_model import MODEL_FORMATS
from coact.shrink import solve_shrunk
from coact.sparsify import SPARSIFIERS
from coact.stats import CANDIDATE_SCORES, DEFAULT_CANDIDATES, DEFAULT_TOP_K, CoactStats
from coact.synth_weights import pack_synthetic
from coact.workflow import accuracy_line, capture, count, evaluate_layouts, export as export_layout_file, \
    layout_objective, capture_at_budget, measure_perplexity, pack, replay_pack, require, solve_layouts
from runtime.caches import CACHES
from runtime.engines import ENGINES
from runtime.layout import EXPORT_FORMATS, load_layout
from solvers import SOLVERS, available_solvers, get_solver


# ------------------------------------------------------------------------------------------------------------ demo
@command()
def demo(
    out: Path = typer.Option(Path("coact-out"), help="Output folder (trace, stats, layouts, report.json, demo.png)."),
    profile_tokens: int = typer.Option(16384, help="Tokens profiled for co-activation statistics."),
    heldout_tokens: int = typer.Option(256, help="Held-out tokens: perplexity and real O_DIRECT replay."),
    solver: List[str] = typer.Option(["identity", "frequency", "ripple"], help="Solvers to compare (repeat)."),
    model: str = typer.Option("smollm2", help="'smollm2' or a local model path."),
    corpus: str = typer.Option("pydoc", help="'pydoc', a text file or a saved dataset."),
    max_ppl_increase: float = typer.Option(0.2, help="Accuracy budget: CATS thresholds keep perplexity within "
                                                     "this fraction of dense (0.2 = +20 %)."),
    sparsity: Optional[float] = typer.Option(None, help="Fixed CATS sparsity instead of a budget (0.9 is the "
                                                        "stress regime: it destroys SmolLM2's accuracy)."),
    engine: str = typer.Option("threads:16", help="I/O engine for the replay. " + ENGINES.help_text()),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles (0: off)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The main job on embedded defaults: SmolLM2 + Python's pydoc text -> an operating point within an accuracy
    budget -> traces -> perplexity -> statistics -> solvers -> layouts -> packed flash file -> real O_DIRECT replay
    of held-out text (and of the dense FFN), and a comparison table.

    Example: coact demo --out coact-out            (stress regime: coact demo --sparsity 0.9)
    """
    cfg = DemoConfig(out=out, model=model, corpus=corpus, profile_tokens=profile_tokens,
                     heldout_tokens=heldout_tokens, solvers=tuple(solver), collapse=collapse, engine=engine,
                     max_ppl_increase=None if sparsity is not None else max_ppl_increase,
                     sparsity=0.9 if sparsity is None else sparsity)
    summary = run_demo(cfg, progress=not json_out, log=logger(json_out))
    if json_out:
        emit_json({k: summary[k] for k in ("config", "regime", "accuracy", "operating_point", "rows", "flash",
                                           "achieved_sparsity")})
        return
    acc = summary["accuracy"]
    t = Table(title=f"coact demo at {summary['regime']}: perplexity {acc['dense']['ppl']:.2f} dense -> "
              f"{acc['sparse']['ppl']:.2f} sparse ({acc['ppl_cost']:+.1%}); {heldout_tokens} held-out tokens, "
              f"{summary['trace']['n_layers']} layers; run = bundles per read (higher is better), I/O = real "
              f"O_DIRECT time per token ({engine})")
    t.add_column("layout", no_wrap=True)
    for col in ("objective", "mean run", "reads/tok", "KiB/tok", "I/O ms/tok", "p50 ms", "p99 ms", "MB/s"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in summary["rows"]:
        t.add_row(r["solver"], "-" if r["objective"] is None else f"{r['objective']:,}",
                  "-" if r["mean_run_length"] is None else f"{r['mean_run_length']:.3f}",
                  f"{r['reads_per_token']:.1f}", f"{r['bytes_read_per_token'] / 1024:.0f}",
                  f"{r['io_ms_per_token_mean']:.2f}", f"{r['io_ms_per_token_p50']:.2f}",
                  f"{r['io_ms_per_token_p99']:.2f}", f"{r['effective_bandwidth_MBps']:.0f}")
    out_console.print(t)
    if summary["flash"]:
        g = Table(title=f"the model run from flash (coact/online.py): {len(summary['flash'][0]['tokens'])} greedy "
                        f"tokens per layout, same perplexity for all, DRAM cache 10 % of the FFN")
        for col in ("layout", "tokens/s", "ms/token", "compute ms", "I/O wait ms", "I/O hidden ms", "MB/token"):
            g.add_column(col, justify="right", no_wrap=True)
        for r in summary["flash"]:
            g.add_row(r["layout"], f"{r['tokens_per_s']:.2f}", f"{r['ms_per_token']:.0f}", f"{r['compute_ms']:.0f}",
                      f"{r['io_wait_ms']:.0f}", f"{r['io_hidden_ms']:.0f}", f"{r['mb_read_per_token']:.1f}")
        out_console.print(g)
        out_console.print(f"generated: {summary['flash'][0]['text']!r}")
    sp = summary["achieved_sparsity"]
    out_console.print(f"achieved sparsity per layer (trace): min {min(sp):.3f}, max {max(sp):.3f}")
    out_console.print(f"outputs: {out.resolve()} (report.json, demo.png, layouts/, stats/, trace/)")


# ----------------------------------------------------------------------------------------------------------- trace
@command()
def trace(
    out: Path = typer.Option(..., help="Output trace folder (a datasets dataset)."),
    model: str = typer.Option("smollm2", help="'smollm2' (bundled GGUF) or a local transformers folder / .gguf."),
    corpus: str = typer.Option("default", help="A named corpus (coact corpus list; NAME@profile / NAME@heldout), "
                                               "a text file, a saved dataset, 'a+b', or a weighted mixture "
                                               "'a:0.5+b:0.5'. Default: the profiling recipe that won the "
                                               "leave-one-domain-out benchmark (README 'Profiling data')."),
    tokens: int = typer.Option(4096, help="Number of tokens to capture."),
    start: int = typer.Option(0, help="First token of the corpus stream (profiling and held-out ranges must not overlap)."),
    ctx: int = typer.Option(256, help="Tokens per independent sequence."),
    sparsity: float = typer.Option(0.9, help="Target sparsity in (0, 1) for cats / topk."),
    method: str = typer.Option("cats", help="Sparsifier. " + SPARSIFIERS.help_text()),
    calib_tokens: int = typer.Option(1024, help="Tokens used to calibrate CATS thresholds."),
    thresholds_from: Optional[Path] = typer.Option(None, help="Reuse the CATS thresholds of this trace."),
    max_ppl_increase: Optional[float] = typer.Option(None, help="Accuracy budget instead of --sparsity: per-layer "
                                                                "CATS thresholds that keep perplexity within this "
                                                                "fraction of dense (e.g. 0.05 = +5 %)."),
    allocation: str = typer.Option("uniform", help="With --max-ppl-increase: 'uniform' (one sparsity, fast) or "
                                                   "'sensitivity' (per layer, by measured layer sensitivity)."),
    forward: str = typer.Option("dense", help="'dense': record the dense model's active sets; 'sparse': record "
                                              "while the model computes sparsely (what the flash engine meets)."),
    ppl_tokens: int = typer.Option(512, help="Held-out tokens next to the captured range on which the trace's "
                                             "perplexity cost is measured and recorded (0: skip)."),
    json_out: bool = typer.Option(False, "--json", help="Print the trace metadata as JSON."),
) -> None:
    """Capture bit-packed active sets of every FFN layer. Resumes after interruption (run the same command again).

    Example: coact trace --corpus pydoc --tokens 20000 --max-ppl-increase 0.05 --out traces/pydoc-profile
    """
    op = None
    if max_ppl_increase is not None:
        tr, op = capture_at_budget(model, corpus, out, max_ppl_increase=max_ppl_increase, allocation=allocation,
                                   tokens=tokens, start=start, ctx=ctx, calib_tokens=calib_tokens,
                                   forward=forward, ppl_tokens=ppl_tokens, progress=not json_out)
    else:
        tr = capture(model, corpus, out, tokens=tokens, start=start, ctx=ctx, method=method, sparsity=sparsity,
                     calib_tokens=calib_tokens, thresholds_from=thresholds_from, forward=forward,
                     ppl_tokens=ppl_tokens, progress=not json_out)
    if json_out:
        emit_json({**tr.meta, "operating_point": None if op is None else op.to_dict()})
        return
    if op is not None:
        out_console.print(f"operating point +{max_ppl_increase:.0%} ({allocation}): mean sparsity "
                          f"{op.mean_sparsity:.3f}, validation perplexity {op.validation_ppl_dense:.2f} dense -> "
                          f"{op.validation_ppl:.2f}")
    sp = tr.meta["achieved_sparsity"]
    shape = (f"{tr.n_layers} units ({sum(u.expert is not None for u in tr.units)} experts) of up to "
             if tr.has_units else f"{tr.n_layers} layers x ")
    out_console.print(f"trace: {tr.n_tokens:,} tokens x {shape}{tr.n_neurons} neurons -> {out}")
    out_console.print("achieved sparsity per layer: " + " ".join(f"{x:.3f}" for x in sp))
    out_console.print(accuracy_line(tr.meta))


# ----------------------------------------------------------------------------------------------------------- stats
@command()
def stats(
    trace_dir: Path = typer.Argument(..., help="A trace folder from `coact trace`."),
    out: Path = typer.Option(..., help="Output statistics folder."),
    start: int = typer.Option(0, help="First token of the trace to count."),
    stop: Optional[int] = typer.Option(None, help="Token after the last one to count (default: all)."),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", help="Partners kept per neuron and score (candidate graph)."),
    candidates: str = typer.Option(DEFAULT_CANDIDATES, "--candidates",
                                   help=f"How each neuron ranks its partners: {', '.join(CANDIDATE_SCORES)}, or "
                                        "several joined by '+' (the union of each one's top-k); add '+clique<H>' to keep every pair "
                                        "among the H most frequent neurons (e.g. jaccard+lift+clique1000: when a "
                                        "few percent of neurons fire in most tokens). Counts stay exact."),
    dense: bool = typer.Option(False, "--dense", help="Keep every pair (dense counts; only if they fit in memory)."),
    executor: Optional[str] = typer.Option(None, help="Where layer jobs run: local, local:N, ray, ray:ADDRESS."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Exact per-layer activation and co-activation counts (written atomically with a digest): by default the
    candidate graph (each neuron's top-k partners by Jaccard and by lift, exact counts, sharded per layer),
    --dense for every pair.

    Example: coact stats traces/pydoc-profile --out stats/pydoc
    """
    st = count(trace_dir, out, start=start, stop=stop, top_k=top_k, dense=dense, executor=executor,
               progress=not json_out, candidates=candidates)
    info = {"out": str(out), "n_tokens": st.n_tokens, "n_layers": st.n_layers, "n_neurons": st.n_neurons,
            "kind": st.kind, "top_k": st.top_k, "candidates": st.candidate_score, "digest": st.digest}
    if json_out:
        emit_json(info)
    else:
        out_console.print(f"stats of {st.n_tokens:,} tokens, {st.n_layers} layers x {st.n_neurons} -> {out}")


# ----------------------------------------------------------------------------------------------------------- solve
@command()
def solve(
    stats_dir: Optional[Path] = typer.Argument(None, help="A statistics folder from `coact stats`."),
    solver: List[str] = typer.Option(["ripple"], help="Solver name or chain 'a+b' (repeat for several). "
                                                      + SOLVERS.help_text()),
    out: Path = typer.Option(Path("layouts"), help="Folder for one layout file per solver."),
    seed: int = typer.Option(0),
    time_limit: Optional[float] = typer.Option(None, help="Seconds per layer for solvers that search."),
    list_solvers: bool = typer.Option(False, "--list", help="List the registered solvers and exit."),
    executor: Optional[str] = typer.Option(None, help="Where layers are solved: serial (default), local[:N] "
                                                      "(process pool), ray[:N] (local Ray), ray:ADDRESS (cluster)."),
    shrink: Optional[str] = typer.Option(None, help="Shrink co-activation probabilities toward the product of "
                                                    "marginals before solving (dense statistics): a strength >= 0, "
                                                    "or 'auto' (chosen by mean run length on --validation)."),
    validation: Optional[Path] = typer.Option(None, help="For --shrink auto: a trace of profiling-kind tokens the "
                                                         "statistics did not count (never the evaluation text)."),
    param: List[str] = typer.Option([], "--param", help="KEY=VALUE solver parameter (repeat), given to every "
                                                        "--solver, e.g. --param kicks=30000 for local-search."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Solve placements; writes OUT/{solver}.safetensors for each solver.

    Example: coact solve stats/pydoc --solver ripple --solver frequency --out layouts
    """
    if list_solvers:
        rows = [{"name": n, "optimises": get_solver(n).optimises} for n in available_solvers()]
        if json_out:
            emit_json(rows)
        else:
            for r in rows:
                out_console.print(f"{r['name']:<16} {r['optimises']}")
        return
    if stats_dir is None:
        raise CoactError("give a statistics folder (coact stats ... --out DIR)")
    params = parse_params(param)
    for s in solver:
        get_solver(s, **params)  # unknown names and parameters fail before any work
    if params and shrink is not None:
        raise CoactError("--param cannot be combined with --shrink")
    st = CoactStats.load(require(stats_dir, "statistics"))
    if shrink is not None:
        res, alpha, _ = solve_shrunk(st, solver, out, shrink=shrink, validation=validation, seed=seed,
                                     time_limit=time_limit, progress=not json_out, executor=executor)
        logger(json_out)(f"shrinkage strength {alpha:g} (toward the product of marginals)")
    else:
        res = solve_layouts(st, solver, out, seed=seed, time_limit=time_limit, progress=not json_out,
                            executor=executor, params=params)
    rows = [{"solver": s, "layout": str(out / f"{s}.safetensors"), "objective": layout_objective(lay, st),
             "solve_seconds": float(sum(r.seconds))} for s, (lay, r) in res.items()]
    if shrink is not None:
        for r in rows:
            r["shrink"] = alpha
    if json_out:
        emit_json(rows)
        return
    t = Table(title="layouts")
    for col in ("solver", "objective", "solve s", "file"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["solver"], f"{r['objective']:,}", f"{r['solve_seconds']:.2f}", r["layout"])
    out_console.print(t)


# -------------------------------------------------------------------------------------------------------- evaluate
@command()
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
    rows = evaluate_layouts(layouts, trace_dir, start=start, stop=stop, collapse=collapse, bundle=bundle,
                            dtype=dtype)
    if json_out:
        emit_json(rows)
        return
    n = rows[0]["n_tokens"] if rows else 0
    t = Table(title=f"simulated on {n:,} tokens (collapse {collapse})",
              caption=accuracy_line(rows[0]) if rows else None)
    for col in ("solver", "mean run length", "reads/token", "pages/token", "KiB read/token", "over-read"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["solver"], f"{r['mean_run_length']:.3f}", f"{r['reads_per_token']:.1f}",
                  f"{r['pages_per_token']:.1f}", f"{r['bytes_read_per_token'] / 1024:.0f}", f"{r['overread']:.3f}")
    out_console.print(t)


# ------------------------------------------------------------------------------------------------------------ pack
@command("pack")
def pack_cmd(
    layout: Path = typer.Option(..., help="Layout file."),
    out: Path = typer.Option(..., help="Pack file to write."),
    model: str = typer.Option("smollm2"),
    bundle: str = typer.Option("up-down", help="up-down (gate stays in DRAM) or gate-up-down."),
    dtype: str = typer.Option("fp16", help="fp16 or fp32."),
    synthetic_weights: bool = typer.Option(False, "--synthetic-weights",
                                           help="Seeded random weights instead of a model (any shape; --d-model)."),
    d_model: int = typer.Option(4096, help="With --synthetic-weights: hidden size."),
    seed: int = typer.Option(0, help="With --synthetic-weights: weight seed."),
    expert_order: str = typer.Option("index", help="Mixture-of-experts: order of the expert regions: index, or "
                                                   "coactivation (experts routed together are neighbours; --trace)."),
    trace_dir: Optional[Path] = typer.Option(None, "--trace", help="With --expert-order coactivation: the trace "
                                                                   "whose co-routing counts order the experts."),
) -> None:
    """Write the model's FFN bundles in placement order into one flash file (4 KiB aligned, checksummed).

    Example: coact pack --layout layouts/ripple.safetensors --out ripple.pack
    """
    lay = load_layout(require(layout, "layout"))
    if synthetic_weights:
        pack_synthetic(lay, out, d_model=d_model, seed=seed, bundle=bundle, dtype=dtype)
    else:
        pack(model, lay, out, bundle=bundle, dtype=dtype, expert_order=expert_order, trace=trace_dir)
    out_console.print(f"pack file -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")


# ---------------------------------------------------------------------------------------------------------- replay
@command("replay")
def replay_cmd(
    pack_file: Path = typer.Argument(..., help="Pack file from `coact pack`."),
    trace_dir: Path = typer.Option(..., "--trace", help="Trace to replay (held out)."),
    start: int = typer.Option(0),
    stop: Optional[int] = typer.Option(None),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles (0: off)."),
    engine: str = typer.Option("sync", help="I/O engine, NAME or NAME:QUEUE_DEPTH. " + ENGINES.help_text()),
    cache_mb: float = typer.Option(0.0, help="DRAM cache budget in MB shared by all layers."),
    policy: str = typer.Option("none", help="Cache policy. " + CACHES.help_text()),
    per_layer: bool = typer.Option(False, help="Also print a per-layer table."),
    verify: bool = typer.Option(False, "--verify", help="Check every bundle read against the pack's crc32s "
                                                        "(outside the timed region)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Real O_DIRECT replay of a trace against a pack file: run lengths, reads, bytes, latency, bandwidth.

    Example: coact replay ripple.pack --trace traces/heldout --json
    """
    rep = replay_pack(pack_file, trace_dir, start=start, stop=stop, collapse=collapse, engine=engine,
                      cache_mb=cache_mb, policy=policy, verify=verify, progress=not json_out)
    if json_out:
        emit_json(rep.to_dict())
        return
    out_console.print(rep.table())
    out_console.print("trace: " + accuracy_line(rep.config))
    if per_layer:
        out_console.print(rep.layer_table())


# --------------------------------------------------------------------------------------------------------- compare
@command()
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
    bound_time_limit: float = typer.Option(60.0, help="Seconds per layer for the LP bound (the bound stays proven "
                                                      "when the LP stops early, only looser)."),
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
    log = logger(json_out)
    cmp, real_res = run_compare(stats_dir, trace_dir, solver, out=out, start=start, stop=stop, collapse=collapse,
                                time_limit=time_limit, bound=bound, bound_time_limit=bound_time_limit,
                                bundle=bundle, dtype=dtype, seed=seed,
                                real=real, budget=budget, repeats=repeats, model=model, cost=cost,
                                progress=not json_out, log=log)
    if real_res is not None:
        log(f"coact pipeline used layout '{real_res['best_solver']}'; real results in {out / 'real.json'}")
    if json_out:
        emit_json(cmp.rows if real_res is None else {"rows": cmp.rows, "real": real_res})
        return
    t = Table(title=f"solvers on {len(cmp.bound_per_layer) or '?'} layers; bound = {cmp.bound or float('nan'):,.0f}",
              caption="held-out trace: " + accuracy_line({"accuracy": cmp.accuracy}))
    t.add_column("solver", no_wrap=True)
    for col in ("objective", "gap %", "mean run", "vs ripple", "reads/tok", "solve s"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in cmp.rows:
        gap = "-" if r["gap_pct"] is None else f"{r['gap_pct']:.2f}"
        t.add_row(r["solver"], f"{r['objective']:,}", gap, f"{r['heldout_mean_run_length']:.3f}",
                  f"{r['run_length_vs_ripple']:.3f}", f"{r['heldout_reads_per_token']:.1f}",
                  f"{r['solve_seconds']:.2f}")
    out_console.print(t)
    if real_res is not None:
        render_pipelines(real_res)
    out_console.print(f"outputs: {out.resolve()}")


# ------------------------------------------------------------------------------------------------------ perplexity
@command()
def perplexity(
    model: str = typer.Option("smollm2", help="'smollm2' (bundled GGUF) or a local transformers folder / .gguf."),
    corpus: str = typer.Option("pydoc", help="'pydoc', a text file, a saved dataset, or a mixture 'a+b'."),
    tokens: int = typer.Option(2048, help="Held-out tokens evaluated."),
    start: Optional[int] = typer.Option(None, help="First evaluated token (default: after the calibration tokens)."),
    ctx: int = typer.Option(256, help="Tokens per independent window."),
    method: str = typer.Option("cats", help="Sparsifier, or 'dense' for the dense model only. "
                                            + SPARSIFIERS.help_text()),
    sparsity: float = typer.Option(0.9, help="Target sparsity in (0, 1) for cats / topk."),
    calib_tokens: int = typer.Option(1024, help="Tokens [0, N) used to calibrate CATS thresholds."),
    thresholds_from: Optional[Path] = typer.Option(None, help="Use the CATS thresholds of this trace."),
    json_out: bool = typer.Option(False, "--json"),
    from_pack: Optional[Path] = typer.Option(None, "--from", help="Run the model from this pack file (flash)."),
    budget: float = typer.Option(0.10, help="With --from: DRAM cache budget, fraction of the FFN bytes in [0, 1]."),
    policy: str = typer.Option("lru", help="With --from: cache policy."),
    engine: str = typer.Option("threads:16", help="With --from: I/O engine (NAME or NAME:QUEUE_DEPTH)."),
    collapse: str = typer.Option("0", help="With --from: access-collapse gap in bundles or 'auto' (needs --cost)."),
    cost: Optional[Path] = typer.Option(None, help="With --from: cost model JSON for --collapse auto."),
    prefetch: bool = typer.Option(True, "--prefetch/--no-prefetch", help="With --from: prefetch during attention."),
    pipeline: Optional[str] = typer.Option(None, help="With --from: " + PIPELINE_HELP),
    profile: Optional[Path] = typer.Option(None, help=PROFILE_HELP),
) -> None:
    """Teacher-forced perplexity on held-out text, dense and with a sparsifier, and the perplexity cost
    (sparse / dense - 1). Windows of CTX tokens are independent sequences; see coact/accuracy.py. With --from PACK
    the sparse model runs token by token from flash (coact/online.py) and the speed report is printed too.

    Example: coact perplexity --corpus ../shared/corpora/wikitext2-test.txt --method cats --sparsity 0.4
    """
    if from_pack is not None:
        flash_perplexity_cmd(from_pack, model=model, corpus=corpus, tokens=tokens, start=start, ctx=ctx,
                             method=method, sparsity=sparsity, calib_tokens=calib_tokens,
                             thresholds_from=thresholds_from, json_out=json_out,
                             **flash_options(budget, policy, engine, collapse, cost, prefetch, "post",
                                             pack=from_pack, pipeline=pipeline, profile=profile))
        return
    res = measure_perplexity(model, corpus, start=start, tokens=tokens, ctx=ctx,
                             method=None if method == "dense" else method, sparsity=sparsity,
                             calib_tokens=calib_tokens, thresholds_from=thresholds_from, progress=not json_out)
    if json_out:
        emit_json(res)
        return
    t = Table(title=f"perplexity on {tokens:,} tokens of {corpus} from token {res['token_start']:,} "
                    f"(windows of {ctx})")
    for col in ("model", "perplexity", "cost", "achieved sparsity"):
        t.add_column(col, justify="right")
    t.add_row("dense", f"{res['dense']['ppl']:.2f}", "-", "0")
    if "sparse" in res:
        sp = res["sparse"]["achieved_sparsity"]
        t.add_row(f"{method} {sparsity:.0%}", f"{res['sparse']['ppl']:.2f}", f"{res['ppl_cost']:+.1%}",
                  f"{np.mean(sp):.3f} (min {min(sp):.3f}, max {max(sp):.3f})")
    out_console.print(t)


# ---------------------------------------------------------------------------------------------------------- export
@command()
def export(
    layout: Path = typer.Argument(..., help="Layout file."),
    fmt: str = typer.Option("json", "--format", help=f"One of {', '.join(EXPORT_FORMATS + MODEL_FORMATS)}: the "
                            "layout itself, or (hf, gguf) the model with its FFN neurons in layout order."),
    out: Optional[Path] = typer.Option(None, help="Output path (default: layout path with the new suffix)."),
    model: Optional[str] = typer.Option(None, help="hf/gguf: the model to permute (default: the named model the "
                                                   "layout was made for); gguf needs a named model or a .gguf."),
) -> None:
    """Export a layout for an inference engine, or the model itself with its FFN neurons in layout order (the
    layout digest goes into the model's metadata; `coact verify MODEL` shows it). GGUF: gate/up keep their
    quantisation (rows move whole), ffn_down is stored de-quantised as F32 (its blocks run along the neurons).

    Example: coact export layouts/ripple.safetensors --format csv
             coact export layouts/ripple.safetensors --format gguf --model smollm2 --out smollm2-ripple.gguf
    """
    target = export_layout_file(layout, fmt, out, model=model)
    out_console.print(f"{fmt} -> {target}")
