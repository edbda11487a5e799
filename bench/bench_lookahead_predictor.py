"""Cross-layer (look-ahead) predictors of the next layer's active set, measured offline on SmolLM2.

Why: the online engine's same-layer prefetch (:mod:`coact.online`, predictor ``post``: the gate of layer l applied
to ``post_attention_layernorm_l(h_l)``, h_l the residual entering layer l) is in flight only during layer l's
attention. A *look-ahead* predictor guesses layer l+1's active set while layer l is still running, so the reads
can be in flight during layer l's FFN and layer l+1's attention too (Deja Vu, PowerInfer: the residual stream
changes slowly from layer to layer). This script measures, on the sparse forward of held-out text (what the engine
meets), the precision and recall of each candidate against the true active set of layer l+1:

- ``same-post`` (reference, what ``lookahead=0`` uses): gate_l(post_norm_l(h_l)), known at layer l's entry;
- ``next-mid``: gate_{l+1}(post_norm_{l+1}(h_l + attn_l(h_l))), known at layer l's FFN entry (misses FFN_l's
  update only);
- ``next-x``: gate_{l+1}(x_l) with x_l = post_norm_l(h_mid) the FFN input of layer l (no re-normalisation);
- ``next-entry``: gate_{l+1}(post_norm_{l+1}(h_l)), known at layer l's entry (misses attention and FFN of l);
- ``next-mid|same-post``: the union of the look-ahead set (at the row's margin) and the same-layer set at margin 1
  (what ``lookahead="mid+post"`` reads: the look-ahead early, the same-layer top-up at layer entry).

Each with a margin (``|a| * margin > t``; < 1 keeps only confident neurons). Results: bench/results/online_lookahead_predictor.json (+ a table on
stdout).

Usage: .venv/bin/python bench/bench_lookahead_predictor.py [--workdir /tmp/online-work/bench] [--tokens 1024]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coact.accuracy import sparsified  # noqa: E402
from coact.corpus import load_text, token_windows, tokenize  # noqa: E402
from coact.models import load_model  # noqa: E402
from coact.sparsify import get_sparsifier  # noqa: E402

WIKITEXT = str(ROOT.parent / "shared" / "corpora" / "wikitext2-test.txt")


def capture_states(h: Any, sp: Any, windows: list[np.ndarray]) -> dict[str, list[torch.Tensor]]:
    """Per layer, over all tokens of the windows (sparse forward): the residual entering the layer (``h``), the
    residual after attention (``mid``, the input of post_attention_layernorm) and the FFN input (``x``)."""
    fam = h.adapter
    layers = h.decoder_layers()
    got: dict[str, list[list[torch.Tensor]]] = {k: [[] for _ in layers] for k in ("h", "mid", "x")}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: got["h"][i].append((a[0] if a else kw["hidden_states"])[0].detach().clone()),
            with_kwargs=True))
        hooks.append(fam.norm(layer, "post").register_forward_pre_hook(
            lambda m, a, i=i: got["mid"][i].append(a[0][0].detach().clone())))
        hooks.append(fam.ffn_module(layer).register_forward_pre_hook(
            lambda m, a, i=i: got["x"][i].append(a[0][0].detach().clone())))
    try:
        with torch.inference_mode(), sparsified(h, sp):
            for w in windows:
                h.forward(torch.as_tensor(np.asarray(w)[None], dtype=torch.long))
    finally:
        for hk in hooks:
            hk.remove()
    return {k: [torch.cat(v) for v in per] for k, per in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/online-work/bench", help="bench_online workdir (point-p20.json)")
    ap.add_argument("--point", default="p20")
    ap.add_argument("--start", type=int, default=2560, help="held-out tokens (after bench_online's calibration)")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--margins", default="1.0,1.1,1.25,1.5")
    ap.add_argument("--corpus", default=WIKITEXT)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "online_lookahead_predictor.json"))
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    pt = json.loads((Path(args.workdir) / f"point-{args.point}.json").read_text())
    sp = get_sparsifier("cats", sparsity=pt["sparsity"], thresholds=pt["thresholds"])
    h = load_model("smollm2")
    fam = h.adapter
    layers = h.decoder_layers()
    stream = tokenize(load_text(args.corpus), h.tokenizer)
    st = capture_states(h, sp, token_windows(stream, args.start, args.tokens, args.ctx))
    gate = [fam.module(lay, "gate") for lay in layers]
    act = [fam.module(lay, "act") for lay in layers]
    norm = [fam.norm(lay, "post") for lay in layers]

    def a_of(layer: int, x: torch.Tensor) -> torch.Tensor:
        return act[layer](gate[layer](x))

    margins = [float(m) for m in args.margins.split(",")]
    L = len(layers)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        true = [sp.mask(i, a_of(i, st["x"][i])) for i in range(L)]
        acts = {  # activation predicting layer `target` from states known earlier
            "same-post": {i: a_of(i, norm[i](st["h"][i])) for i in range(L)},
            "next-mid": {i + 1: a_of(i + 1, norm[i + 1](st["mid"][i])) for i in range(L - 1)},
            "next-x": {i + 1: a_of(i + 1, st["x"][i]) for i in range(L - 1)},
            "next-entry": {i + 1: a_of(i + 1, norm[i + 1](st["h"][i])) for i in range(L - 1)},
        }
        for m in margins:
            preds = {name: {t: sp.mask(t, a * m) for t, a in d.items()} for name, d in acts.items()}
            same1 = {t: sp.mask(t, acts["same-post"][t]) for t in range(1, L)}  # the top-up at margin 1
            preds["next-mid|same-post"] = {t: preds["next-mid"][t] | same1[t] for t in range(1, L)}
            preds["next-x|same-post"] = {t: preds["next-x"][t] | same1[t] for t in range(1, L)}
            for name, d in preds.items():
                # layers 1..L-1 for every predictor (a look-ahead cannot predict layer 0 from the same token)
                p = sum(int(d[t].sum()) for t in range(1, L))
                a = sum(int(true[t].sum()) for t in range(1, L))
                pa = sum(int((d[t] & true[t]).sum()) for t in range(1, L))
                per_layer = [float((d[t] & true[t]).sum() / max(1, int(true[t].sum()))) for t in range(1, L)]
                rows.append({"predictor": name, "margin": m, "precision": pa / p if p else None,
                             "recall": pa / a if a else None, "predicted_over_active": p / a if a else None,
                             "recall_min_layer": min(per_layer), "recall_per_layer": per_layer})
    meta = {"point": args.point, "mean_sparsity": pt["mean_sparsity"], "tokens": args.tokens, "start": args.start,
            "ctx": args.ctx, "corpus": args.corpus, "wall_s": time.time() - t0}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("| predictor | margin | precision | recall | predicted / active | worst layer recall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['predictor']} | {r['margin']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['predicted_over_active']:.2f} | {r['recall_min_layer']:.3f} |")


if __name__ == "__main__":
    main()
