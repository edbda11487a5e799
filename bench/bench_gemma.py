"""Gemma 3 270M beside SmolLM2: the placement-quality benchmark (bench_solvers.py's table) and real O_DIRECT replays
of packs, on any named model.

Profiles P tokens of the built-in pydoc corpus at an operating point (``--point``: ``b05``/``b20``, the +5 %/+20 %
perplexity budgets chosen by bench/oppoint.py, or ``stress``, CATS 90 %), evaluates on the next H held-out tokens,
and reports per solver: objective, gap to the proven LP bound, held-out mean run length (and vs ripple), simulated
reads and bytes per token, solve time. Windows carry the BOS token when the model's tokenizer adds one (Gemma;
:meth:`coact.models.ModelHandle.forward`). With ``--replay``, packs the identity and ripple layouts (fp16 up-down)
and replays the held-out tokens with real O_DIRECT reads (no cache, no collapse), so the runtime figures can be set
beside SmolLM2's. Perplexity on WikiText-2 [2048, 2048 + --ppl-tokens) (windows of 256), dense and at the
operating point's thresholds, is recorded too (the same tokens as BENCHMARKS.md section 0), as is the trace's own
held-out pydoc perplexity cost.

Run:  .venv/bin/python bench/bench_gemma.py [--model gemma3-270m] [--point b20] [--profile-tokens 8192] [--replay]
Writes bench/out/gemma/<model>-<point>.json and prints markdown tables (pasted into BENCHMARKS.md). Gemma 3 is
optional (Gemma terms): without its package the script exits with the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT.parent / "shared" / "corpora" / "wikitext2-test.txt"
SOLVERS = ["ripple+local-search", "path-cover"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--point", default="b20", help="operating point: b05, b20 or stress (bench/oppoint.py)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gemma")
    ap.add_argument("--profile-tokens", type=int, default=8192)
    ap.add_argument("--heldout-tokens", type=int, default=1024)
    ap.add_argument("--solver", action="append", default=None, help=f"extra solvers (default {SOLVERS})")
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per layer for searching solvers")
    ap.add_argument("--bound-time-limit", type=float, default=30.0, help="seconds per layer for the LP bound")
    ap.add_argument("--replay", action="store_true", help="also pack identity/ripple and replay with O_DIRECT")
    ap.add_argument("--replay-tokens", type=int, default=128)
    ap.add_argument("--no-ppl", action="store_true", help="skip the WikiText-2 perplexity")
    ap.add_argument("--ppl-tokens", type=int, default=2048, help="WikiText-2 tokens for the perplexity")
    ap.add_argument("--trace", type=Path, default=None,
                    help="reuse this trace (pydoc at the same --point, at least P + H tokens) instead of capturing")
    args = ap.parse_args()

    from coact import zoo

    reason = zoo.available(args.model) if zoo.is_named(args.model) else None
    if reason:
        sys.exit(f"skipped: {reason}")
    from coact.compare import compare_solvers
    from coact.models import load_model
    from coact.stats import compute_stats
    from coact.trace import Trace
    from coact.workflow import accuracy_line, bundle_bytes, capture, measure_perplexity, pack, replay_pack
    from oppoint import operating_point

    P, H = args.profile_tokens, args.heldout_tokens
    work = args.out / args.model
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    handle = load_model(args.model)
    t_load = time.time() - t0
    t1 = time.time()
    op = operating_point(handle, "pydoc", args.point, work)  # cached in work/op-<point>.json
    t_op = time.time() - t1
    tdir = args.trace or work / f"trace-{args.point}-pydoc-{P + H}"
    t1 = time.time()
    tr = Trace.load(tdir) if (tdir / "coact_trace.json").exists() else capture(
        handle, "pydoc", tdir, tokens=P + H, ctx=256, sparsity=op["sparsity"], thresholds=op["thresholds"],
        calib_tokens=1024)
    t_capture = time.time() - t1
    if tr.model_id != handle.model_id or tr.n_tokens < P + H:
        sys.exit(f"{tdir}: a trace of {tr.model_id!r} with {tr.n_tokens} tokens; need {handle.model_id!r}, {P + H}")
    stats = compute_stats(tr, start=0, stop=P)
    bb = bundle_bytes("up-down", "fp16", handle.d_model)
    cmp = compare_solvers(stats, tr.packed(P, P + H), args.solver or SOLVERS, bundle_bytes=bb,
                          time_limit=args.time_limit, bound_time_limit=args.bound_time_limit)
    cmp.accuracy = tr.meta.get("accuracy")  # the trace's held-out perplexity cost (kept by cmp.to_dict())
    result = {"model": args.model, "model_id": handle.model_id, "point": args.point, "label": op["label"],
              "operating_point": op, "bos": handle.bos,
              "op_seconds": t_op, "n_layers": handle.n_layers,
              "n_neurons": handle.n_neurons, "d_model": handle.d_model, "profile_tokens": P, "heldout_tokens": H,
              "time_limit": args.time_limit, "load_seconds": t_load, "capture_seconds": t_capture,
              "achieved_sparsity": tr.meta.get("achieved_sparsity"), **cmp.to_dict()}
    if not args.no_ppl:
        res = measure_perplexity(handle, str(WIKI), start=2048, tokens=args.ppl_tokens, ctx=256, method="cats",
                                 sparsity=op["sparsity"], thresholds=tr.meta["sparsifier"].get("thresholds"),
                                 progress=False)
        result["wikitext2_dense_ppl"] = res["dense"]["ppl"]
        result["wikitext2_sparse_ppl"] = res["sparse"]["ppl"]
        result["wikitext2_ppl_tokens"] = args.ppl_tokens
    if args.replay:
        result["replay"] = {}
        for spec in ("identity", "ripple"):
            pk = pack(handle, cmp.layouts[spec], work / f"{spec}.pack", progress=False)
            rep = replay_pack(pk, tr, start=P, stop=P + min(H, args.replay_tokens), engine="threads:16",
                              progress=False)
            result["replay"][spec] = {k: getattr(rep, k) for k in (
                "mean_run_length", "reads_per_token", "bytes_read_per_token", "latency_ms_mean", "latency_ms_p50")}
    (args.out / f"{args.model}-{args.point}.json").write_text(json.dumps(result, indent=1, default=str))

    ach = tr.meta.get("achieved_sparsity") or [float("nan")]
    print(f"\n### {args.model}: {handle.n_layers} layers x {handle.n_neurons:,} neurons, {op['label']} (mean "
          f"sparsity {op['sparsity']:.3f}, achieved {min(ach):.3f}-{max(ach):.3f} per layer; "
          f"{'BOS ' + str(handle.bos) + ' in front of every window' if handle.bos is not None else 'no BOS'}; "
          f"profile {P:,} pydoc tokens, held-out {H:,}; bound {cmp.bound:,.0f})\n")
    print(f"pydoc held-out: {accuracy_line(tr.meta)}\n")
    if "wikitext2_dense_ppl" in result:
        print(f"WikiText-2 [2048, {2048 + args.ppl_tokens}), windows of 256: perplexity "
              f"{result['wikitext2_dense_ppl']:.2f} dense, {result['wikitext2_sparse_ppl']:.2f} sparse "
              f"({result['wikitext2_sparse_ppl'] / result['wikitext2_dense_ppl'] - 1:+.1%})\n")
    print("| solver | objective | gap to bound % | held-out mean run | vs ripple | reads/token | KiB read/token | "
          f"solve s ({handle.n_layers} layers) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in cmp.rows:
        print(f"| {r['solver']} | {r['objective']:,} | {r['gap_pct']:.2f} | {r['heldout_mean_run_length']:.3f} | "
              f"{r['run_length_vs_ripple']:.3f} | {r['heldout_reads_per_token']:.1f} | "
              f"{r['heldout_bytes_read_per_token'] / 1024:.0f} | {r['solve_seconds']:.1f} |")
    if args.replay:
        print("\n| layout | real I/O ms/token | reads/token | MiB read/token |")
        print("|---|---:|---:|---:|")
        for spec, r in result["replay"].items():
            print(f"| {spec} | {r['latency_ms_p50']:.2f} | {r['reads_per_token']:.1f} | "
                  f"{r['bytes_read_per_token'] / 2**20:.2f} |")
    print(f"\ntotal {time.time() - t0:.0f} s (load {t_load:.0f} s, operating point {t_op:.0f} s, "
          f"capture {t_capture:.0f} s)")


if __name__ == "__main__":
    main()
