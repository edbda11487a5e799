"""Run SmolLM2 from flash: tokens/s and ms/token (compute vs I/O) for dense-from-flash, identity (llmflash-like)
and ripple, at CATS 40 % (~+19 % perplexity) and 90 % (stress), fp16 packs, 10 % DRAM budget.

Steps: capture a CATS trace per sparsity (tokens [0, PROFILE) of the built-in corpus), count co-activations, solve
the ripple layout; pack fp16 (identity once, ripple per sparsity); measure in-memory perplexity of each operating
point on held-out tokens; then generate from flash with each pipeline (same prompt, same thresholds):

- dense: every layer's whole region read per token (1 MiB requests), no cache, no prefetch (sparse compute);
- identity: original order, window cache k=5, no collapse, prefetch (llmflash-like);
- ripple: ripple layout, ripple cache (run-aware S3-FIFO), collapse gap 2 bundles, prefetch.

Usage: .venv/bin/python bench/bench_online.py [--tokens 24] [--profile 2048] [--out bench/results/online.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coact.accuracy import perplexity  # noqa: E402
from coact.corpus import load_text, tokenize  # noqa: E402
from coact.models import load_model  # noqa: E402
from coact.online import FlashModel  # noqa: E402
from coact.sparsify import get_sparsifier  # noqa: E402
from coact.workflow import capture, count, ensure_pack, solve_layouts  # noqa: E402
from runtime.direct import direct_io_supported  # noqa: E402
from runtime.layout import Layout  # noqa: E402

PIPELINES = {
    "dense": dict(dense=True, policy="none", prefetch=False),
    "identity": dict(policy="window", policy_params={"k": 5}, collapse=0, prefetch=True),
    "ripple": dict(policy="ripple", collapse=2, prefetch=True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=24, help="generated tokens per run (after an 8-token prompt)")
    ap.add_argument("--profile", type=int, default=2048, help="profiling trace tokens")
    ap.add_argument("--ppl-tokens", type=int, default=1024)
    ap.add_argument("--budget", type=float, default=0.10)
    ap.add_argument("--engine", default="threads:16")
    ap.add_argument("--sparsities", default="0.4,0.9")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "online.json"))
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-online-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    if not direct_io_supported(work):
        sys.exit(f"{work}: no O_DIRECT")
    h = load_model("smollm2")
    stream = tokenize(load_text("pydoc"), h.tokenizer)
    prompt = stream[args.profile + args.ppl_tokens : args.profile + args.ppl_tokens + 8].tolist()
    ident = Layout([list(range(h.n_neurons))] * h.n_layers, model_id=h.model_id, solver="identity")
    packs = {"identity": ensure_pack(h, ident, work / "identity.pack", dtype="fp16")}
    results = []
    dense_ppl = perplexity(h, stream, start=args.profile, tokens=args.ppl_tokens, ctx=256).ppl
    for s in [float(x) for x in args.sparsities.split(",")]:
        tr = capture(h, "pydoc", work / f"trace-{s}", tokens=args.profile, ctx=256, sparsity=s,
                     calib_tokens=1024, progress=False)
        thr = tr.meta["sparsifier"]["thresholds"]
        sp = get_sparsifier("cats", sparsity=s, thresholds=thr)
        ppl = perplexity(h, stream, start=args.profile, tokens=args.ppl_tokens, ctx=256, sparsifier=sp).ppl
        st = count(tr, progress=False)
        t0 = time.time()
        lay = solve_layouts(st, ["ripple"], progress=False)["ripple"][0]
        solve_s = time.time() - t0
        packs[f"ripple-{s}"] = ensure_pack(h, lay, work / f"ripple-{s}.pack", dtype="fp16")
        for name, cfg in PIPELINES.items():
            pack = packs[f"ripple-{s}"] if name == "ripple" else packs["identity"]
            with FlashModel(pack, "smollm2", sparsifier=sp, budget=args.budget, engine=args.engine, **cfg) as fm:
                fm.generate(prompt, args.tokens)
                rep = fm.report(skip=4)  # the first tokens warm the cache and the kernels
            ms = rep["ms_per_token"]
            row = {"sparsity": s, "pipeline": name, "ppl": ppl, "ppl_dense": dense_ppl,
                   "ppl_cost": ppl / dense_ppl - 1, "tokens_per_s": rep["tokens_per_s"],
                   "ms_per_token": ms["wall"], "p50_ms": ms["p50"], "p99_ms": ms["p99"],
                   "compute_ms": ms["compute"], "attention_ms": ms["attention"], "gate_ms": ms["gate"],
                   "ffn_ms": ms["ffn"], "decode_cache_ms": ms["decode_and_cache"], "io_wait_ms": ms["io_wait"],
                   "io_total_ms": ms["io_total"], "io_hidden_ms": ms["io_hidden"],
                   "mb_read_per_token": rep["per_token"]["bytes_read"] / 1e6,
                   "reads_per_token": rep["per_token"]["reads"], "hit_rate": rep["hit_rate"],
                   "prefetch_precision": rep["prefetch"]["precision_vs_load"],
                   "prefetch_recall": rep["prefetch"]["recall_vs_load"],
                   "dram_cache_mb": rep["dram"]["cache_bytes"] / 1e6,
                   "dram_buffers_mb": rep["dram"]["read_buffers"] / 1e6, "ripple_solve_s": solve_s}
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    hdr = ("sparsity", "pipeline", "ppl", "tok/s", "ms/tok", "p99", "compute", "io_wait", "io_hidden", "MB/tok",
           "reads/tok", "hit", "pf prec/rec")
    print(" | ".join(hdr))
    for r in results:
        def f(x, spec=".2f"):
            return "-" if x is None else format(x, spec)
        print(" | ".join([f"{r['sparsity']:.0%}", r["pipeline"], f"{r['ppl']:.1f} ({r['ppl_cost']:+.0%})",
                          f(r["tokens_per_s"]), f(r["ms_per_token"], ".1f"), f(r["p99_ms"], ".1f"),
                          f(r["compute_ms"], ".1f"), f(r["io_wait_ms"], ".1f"), f(r["io_hidden_ms"], ".1f"),
                          f(r["mb_read_per_token"], ".1f"), f(r["reads_per_token"], ".0f"), f(r["hit_rate"], ".2f"),
                          f"{f(r['prefetch_precision'])}/{f(r['prefetch_recall'])}"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "rows": results}, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
