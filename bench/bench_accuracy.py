"""The sparsity-accuracy frontier and operating points by accuracy budget (issue "Accuracy first").

SmolLM2-135M on WikiText-2 (test split, ../shared/corpora/wikitext2-test.txt). Token ranges never overlap:
calibration [0, 1024) (CATS thresholds), validation [1024, 1024+V) (layer sensitivity, budget search), evaluation
[2048, 4096) (every reported perplexity). Windows of 256 tokens, teacher forced (coact.accuracy).

1. Frontier: perplexity vs achieved sparsity for uniform CATS and top-k at several target sparsities
   (``relu`` does not apply: SmolLM2's SiLU has no natural sparsity).
2. Operating points at +5 % and +20 % perplexity: uniform CATS (bisection on validation) vs per-layer sparsity
   allocated by measured layer sensitivity (coact.accuracy.allocated_operating_point); both then evaluated on the
   evaluation range. Target: allocated mean sparsity >= 1.5x uniform at +5 %.

Run: .venv/bin/python bench/bench_accuracy.py --out bench/out/accuracy   (about 10-15 min on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coact.accuracy import (  # noqa: E402
    SENSITIVITY_LEVELS,
    _Thresholded,
    allocated_operating_point,
    perplexity,
    thresholds_for,
    uniform_operating_point,
)
from coact.corpus import load_text, token_windows, tokenize  # noqa: E402
from coact.models import load_model  # noqa: E402
from coact.progress import bars  # noqa: E402
from coact.sparsify import get_sparsifier  # noqa: E402
from coact.trace import forward_activations  # noqa: E402

WIKI = ROOT.parent / "shared" / "corpora" / "wikitext2-test.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "accuracy")
    ap.add_argument("--validation", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--budgets", default="0.05,0.2")
    ap.add_argument("--proxy", action="store_true", help="the one-pass layer-output-error proxy instead of the "
                                                          "measured per-layer cost (worse here; see BENCHMARKS.md §0)")
    ap.add_argument("--skip-frontier", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    h = load_model("smollm2")
    stream = tokenize(load_text(str(WIKI)), h.tokenizer)
    windows = token_windows(stream, 0, 1024, 256)
    acts = forward_activations(h, windows)
    ev = dict(start=2048, tokens=args.eval_tokens, ctx=256)
    val = dict(start=1024, tokens=args.validation, ctx=256)
    dense = perplexity(h, stream, **ev).ppl
    res: dict = {"dense_ppl": dense, "ranges": {"calibration": [0, 1024], "validation": [1024, 1024 + args.validation],
                                                 "evaluation": [2048, 2048 + args.eval_tokens]}, "frontier": [],
                 "operating_points": []}
    print(f"dense perplexity {dense:.2f}", flush=True)
    for method in (() if args.skip_frontier else ("cats", "topk")):
        for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            sp = get_sparsifier(method, sparsity=s)
            if sp.needs_calibration:
                sp.calibrate(acts)
            r = perplexity(h, stream, sparsifier=sp, **ev)
            row = {"method": method, "target": s, "achieved": float(np.mean(r.achieved_sparsity)), "ppl": r.ppl,
                   "cost": r.ppl / dense - 1}
            res["frontier"].append(row)
            print(json.dumps(row), flush=True)
    sens = None
    for budget in (float(b) for b in args.budgets.split(",")):
        uni = uniform_operating_point(h, stream, acts, budget, progress=bars(True), **val)
        alloc, s = allocated_operating_point(h, stream, acts, budget, sens=sens, calib_windows=windows,
                                             proxy=args.proxy, progress=bars(True), **val)
        sens = s
        for op in (uni, alloc):
            r = perplexity(h, stream, sparsifier=_Thresholded(thresholds_for(acts, op.sparsity)), **ev)
            row = {"budget": budget, "method": op.method, "mean_sparsity_target": op.mean_sparsity,
                   "achieved": float(np.mean(r.achieved_sparsity)), "validation_ppl": op.validation_ppl,
                   "eval_ppl": r.ppl, "eval_cost": r.ppl / dense - 1, "per_layer": op.sparsity}
            res["operating_points"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_layer"}), flush=True)
        res["sensitivity"] = s.tolist()
        res["sensitivity_levels"] = list(SENSITIVITY_LEVELS)
        res["sensitivity_kind"] = "layer output error (proxy)" if args.proxy else "measured NLL increase"
    res["seconds"] = time.time() - t0
    (args.out / "accuracy.json").write_text(json.dumps(res, indent=1))
    plot(res, args.out / "frontier.png")
    print(f"-> {args.out}/accuracy.json, frontier.png ({res['seconds']:.0f} s)")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, mk in (("cats", "o-"), ("topk", "s-")):
        rows = [r for r in res["frontier"] if r["method"] == method]
        ax.plot([r["achieved"] for r in rows], [r["ppl"] for r in rows], mk, label=f"uniform {method}")
    for op in res["operating_points"]:
        ax.plot(op["achieved"], op["eval_ppl"], "*" if op["method"] == "allocated" else "D", ms=12,
                label=f"{op['method']} @ +{op['budget']:.0%}")
    ax.axhline(res["dense_ppl"], color="k", lw=0.8, ls="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("achieved sparsity (mean over layers)")
    ax.set_ylabel("perplexity (WikiText-2, held out)")
    ax.set_title("SmolLM2-135M: sparsity-accuracy frontier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
