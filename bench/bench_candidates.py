"""Ripple's held-out mean run length on candidate graphs (top-k partners per neuron by a score) vs dense counts.

Why: issue 12 makes the candidate graph the default input of the solvers; on Gemma 3 the raw-count top-32 graph
lost a third of Ripple's run length (hot neurons fill every neuron's raw-count top-k). This compares the candidate
scores of :func:`coact.bitcount.candidates` on the committed SmolLM2 samples (no model run): candidate graphs are
cut from the dense counts of the profile (identical to what ``coact stats --candidates S --top-k K`` stores, without
recounting), Ripple solves each, and the layouts are simulated on the held-out trace.

    .venv/bin/python bench/bench_candidates.py [--regimes sample sample_b20] [--k 16 32 64 128]
        [--scores count jaccard lift cosine min] [--out bench/out/candidates.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from coact import bitcount
from coact.stats import CandidateLayer, CoactStats, compute_stats
from coact.trace import Trace
from coact.workflow import bundle_bytes, solve_layouts
from runtime.replay import simulate


def candidate_stats(dense: CoactStats, k: int, score: str) -> CoactStats:
    """The candidate statistics of ``dense`` (what count_stats stores for ``top_k=k, candidates=score``)."""
    layers = []
    for c in dense.coact:
        ip, ix, cnt, xm = bitcount.candidates(c, dense.n_neurons, k, score, dense.n_tokens)
        layers.append(CandidateLayer(ip, ix, cnt, xm))
    return CoactStats(freq=dense.freq, n_tokens=dense.n_tokens, meta=dict(dense.meta, candidates=score),
                      candidates=layers, top_k=k)


def heldout_run_length(stats: CoactStats, held: Trace, packed: np.ndarray) -> tuple[float, int]:
    lay, res = solve_layouts(stats, ["ripple"], progress=False)["ripple"]
    rep = simulate(lay, packed, held.n_neurons, bundle_bytes=bundle_bytes("up-down", "fp16", int(held.meta["d_model"])))
    return float(rep.mean_run_length), int(sum(res.objectives)) if hasattr(res, "objectives") else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regimes", nargs="+", default=["sample", "sample_b20"])
    ap.add_argument("--k", nargs="+", type=int, default=[16, 32, 64, 128])
    ap.add_argument("--scores", nargs="+", default=["count", "jaccard", "lift", "cosine", "min"])
    ap.add_argument("--out", type=Path, default=Path("bench/out/candidates.json"))
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for regime in args.regimes:
        prof = Trace.load(Path("data") / regime / "profile")
        held = Trace.load(Path("data") / regime / "heldout")
        packed = held.packed(0, held.n_tokens)
        dense = compute_stats(prof, progress=False)
        row: dict[str, float] = {}
        t0 = time.time()
        row["dense"], _ = heldout_run_length(dense, held, packed)
        print(f"{regime} dense: {row['dense']:.4f} ({time.time() - t0:.1f} s)", flush=True)
        for score in args.scores:
            for k in args.k:
                t0 = time.time()
                st = candidate_stats(dense, k, score)
                edges = sum(int(c.indices.size) for c in st.candidates) / (st.n_layers * st.n_neurons)
                mrl, _ = heldout_run_length(st, held, packed)
                row[f"{score}/{k}"] = mrl
                row[f"{score}/{k}/edges_per_neuron"] = edges
                print(f"{regime} {score:8s} k={k:4d}: {mrl:.4f} ({mrl / row['dense'] - 1:+.2%}; "
                      f"{edges:.1f} stored pairs/neuron; {time.time() - t0:.1f} s)", flush=True)
        results[regime] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
