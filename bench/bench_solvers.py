"""Placement-quality benchmark (issue 3 / DESIGN §6): SmolLM2, all 30 layers, at an operating point (``--point``:
b05 = +5 % perplexity, b20 = +20 % (default), stress = CATS 90 %; see bench/oppoint.py).

Profiles on 20,480 tokens of the built-in pydoc corpus, evaluates on 2,048 held-out tokens that follow them, and
reports per solver: objective, gap to the LP bound, held-out mean run length (and vs ripple), reads and bytes read
per token (simulated, no collapse, no cache), solve time for the whole model. Then the cross-corpus table
(Neuralink Table 8 style): layouts profiled on pydoc or WikiText-2 (8,192 tokens each), evaluated on held-out text
of both.

Run:  .venv/bin/python bench/bench_solvers.py [--point b20] [--out bench/out] [--quick]
Writes bench/out/solvers-POINT.json and prints markdown tables (pasted into BENCHMARKS.md), headed by the
perplexity the traces record (held-out tokens next to each trace).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
WIKI = ROOT.parent / "shared" / "corpora" / "wikitext2-test.txt"
SOLVERS = ["path-cover", "local-search", "leiden+local-search", "ortools", "spectral", "rcm"]


def trace_once(handle, corpus, out, **kw):
    from coact.workflow import capture
    from coact.trace import Trace

    if (out / "coact_trace.json").exists():
        return Trace.load(out)
    return capture(handle, corpus, out, **kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per layer for searching solvers")
    ap.add_argument("--point", default="b20", help="operating point: b05, b20 or stress")
    ap.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated solver specs beyond the baselines")
    args = ap.parse_args()
    P, H, X = (2048, 512, 1024) if args.quick else (20480, 2048, 8192)
    args.out.mkdir(parents=True, exist_ok=True)

    from coact.compare import compare_solvers, plot_solver_comparison
    from coact.models import load_model
    from coact.workflow import bundle_bytes, solve_layouts
    from coact.stats import compute_stats
    from runtime.replay import simulate

    from oppoint import operating_point
    from coact.workflow import accuracy_line

    t0 = time.time()
    handle = load_model("smollm2")
    op = operating_point(handle, "pydoc", args.point, args.out)
    pt = args.point
    pydoc = trace_once(handle, "pydoc", args.out / f"trace-{pt}-pydoc-{P + H}", tokens=P + H, calib_tokens=1024,
                       sparsity=op["sparsity"], thresholds=op["thresholds"])
    wiki = trace_once(handle, str(WIKI), args.out / f"trace-{pt}-wiki-{X + H}", tokens=X + H,
                      thresholds_from=pydoc.path, sparsity=op["sparsity"])
    t_capture = time.time() - t0
    stats = compute_stats(pydoc, start=0, stop=P)
    bb = bundle_bytes("up-down", "fp16", handle.d_model)
    solvers = [x for x in args.solvers.split(",") if x]
    cmp = compare_solvers(stats, pydoc.packed(P, P + H), solvers, bundle_bytes=bb, time_limit=args.time_limit)
    plot_solver_comparison(cmp, args.out / f"solvers-{pt}.png")

    # Cross-corpus: profile on X tokens of each corpus, evaluate on held-out H tokens of each.
    prof = {"pydoc": compute_stats(pydoc, start=0, stop=X), "wikitext2": compute_stats(wiki, start=0, stop=X)}
    held = {"pydoc": pydoc.packed(P, P + H), "wikitext2": wiki.packed(X, X + H)}
    cross = []
    for pname, st in prof.items():
        lays = solve_layouts(st, ["identity", "ripple", "path-cover"], time_limit=args.time_limit)
        for spec, (lay, _) in lays.items():
            for hname, packed in held.items():
                rep = simulate(lay, packed, stats.n_neurons, bundle_bytes=bb)
                cross.append({"profile": pname, "solver": spec, "heldout": hname,
                              "mean_run_length": rep.mean_run_length, "reads_per_token": rep.reads_per_token})
    result = {"point": op, "accuracy_pydoc": pydoc.meta.get("accuracy"), "accuracy_wiki": wiki.meta.get("accuracy"),
              "profile_tokens": P, "heldout_tokens": H, "cross_profile_tokens": X, "time_limit": args.time_limit,
              "capture_seconds": t_capture, **cmp.to_dict(), "cross_corpus": cross,
              "achieved_sparsity_pydoc": pydoc.meta["achieved_sparsity"],
              "achieved_sparsity_wiki": wiki.meta["achieved_sparsity"]}
    (args.out / f"solvers-{pt}.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\n## Operating point: {op['label']} (mean sparsity {op['sparsity']:.3f})\n")
    print(f"- pydoc trace: {accuracy_line(pydoc.meta)}")
    print(f"- WikiText-2 trace: {accuracy_line(wiki.meta)}")

    print(f"\n### Solvers (profile {P:,} pydoc tokens, held-out {H:,}; bound {cmp.bound:,.0f})\n")
    print("| solver | objective | gap to bound % | held-out mean run | vs ripple | reads/token | KiB read/token | solve s (30 layers) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in cmp.rows:
        print(f"| {r['solver']} | {r['objective']:,} | {r['gap_pct']:.2f} | {r['heldout_mean_run_length']:.3f} | "
              f"{r['run_length_vs_ripple']:.3f} | {r['heldout_reads_per_token']:.1f} | "
              f"{r['heldout_bytes_read_per_token'] / 1024:.0f} | {r['solve_seconds']:.1f} |")
    print(f"\n### Cross-corpus mean run length (profile {X:,} tokens, held-out {H:,})\n")
    print("| profiled on | solver | held-out pydoc | held-out wikitext2 |")
    print("|---|---|---:|---:|")
    for pname in prof:
        for spec in ("identity", "ripple", "path-cover"):
            v = {c["heldout"]: c["mean_run_length"] for c in cross if c["profile"] == pname and c["solver"] == spec}
            print(f"| {pname} | {spec} | {v['pydoc']:.3f} | {v['wikitext2']:.3f} |")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
