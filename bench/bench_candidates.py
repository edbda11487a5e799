"""Ripple's held-out mean run length on candidate graphs (top-k partners per neuron by a score) vs dense counts.

Why: issue 12 makes the candidate graph the default input of the solvers; on Gemma 3 the raw-count top-32 graph
lost a third of Ripple's run length (hot neurons fill every neuron's raw-count top-k). This compares the candidate
scores of :func:`coact.bitcount.candidates` on the committed SmolLM2 samples (no model run): candidate graphs are
cut from the dense counts of the profile (identical to what ``coact stats --candidates S --top-k K`` stores, without
recounting), Ripple solves each, and the layouts are simulated on the held-out trace.

    .venv/bin/python bench/bench_candidates.py [--regimes sample sample_b20] [--k 16 32 64 128]
        [--scores count jaccard lift cosine min jaccard+lift] [--out bench/out/candidates.json]
        [--trace DIR --profile-tokens P]   # one trace: profile [0, P), held-out [P, end) (e.g. a Gemma 3 trace)
        [--bound-layers 3 15 27]           # also the LP bound on these layers, and dense Ripple's gap to it
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
from coact.graph import layer_graph
from coact.workflow import bundle_bytes, solve_layouts
from runtime.replay import simulate
from solvers.base import objective
from solvers.bounds import adjacency_upper_bound
from solvers.ripple import RippleSolver


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


def bound_gap(stats: CoactStats, layers: list[int], ripple_objective: int) -> tuple[float, float]:
    """(LP bound summed over ``layers``, gap of dense Ripple's objective to it): what the proven bound loses when
    pairs are dropped (every bound is >= the dense optimum, so a larger bound is a looser one)."""
    b = float(sum(adjacency_upper_bound(layer_graph(stats, l)) for l in layers))
    return b, 1.0 - ripple_objective / b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regimes", nargs="+", default=["sample", "sample_b20"])
    ap.add_argument("--k", nargs="+", type=int, default=[16, 32, 48, 64, 128])
    ap.add_argument("--scores", nargs="+", default=["count", "jaccard", "lift", "cosine", "min", "jaccard+lift"])
    ap.add_argument("--out", type=Path, default=Path("bench/out/candidates/candidates.json"))
    ap.add_argument("--trace", type=Path, help="Measure this trace instead of the committed samples.")
    ap.add_argument("--profile-tokens", type=int, default=4096)
    ap.add_argument("--bound-layers", nargs="*", type=int, default=[])
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for regime in [str(args.trace)] if args.trace else args.regimes:
        if args.trace:
            prof = held = Trace.load(args.trace)
            packed = held.packed(args.profile_tokens, held.n_tokens)
            dense = compute_stats(prof, stop=args.profile_tokens, progress=False)
        else:
            prof = Trace.load(Path("data") / regime / "profile")
            held = Trace.load(Path("data") / regime / "heldout")
            packed = held.packed(0, held.n_tokens)
            dense = compute_stats(prof, progress=False)
        row: dict[str, float] = {}
        t0 = time.time()
        row["dense"], _ = heldout_run_length(dense, held, packed)
        print(f"{regime} dense: {row['dense']:.4f} ({time.time() - t0:.1f} s)", flush=True)
        rip = 0
        if args.bound_layers:
            for l in args.bound_layers:
                g = layer_graph(dense, l)
                rip += objective(RippleSolver().solve(g, seed=0), g)
            row["dense/bound"], row["dense/gap"] = bound_gap(dense, args.bound_layers, rip)
            print(f"{regime} dense: LP bound {row['dense/bound']:,.0f}, gap {row['dense/gap']:.2%}", flush=True)
        for score in args.scores:
            for k in args.k:
                t0 = time.time()
                st = candidate_stats(dense, k, score)
                edges = sum(int(c.indices.size) for c in st.candidates) / (st.n_layers * st.n_neurons)
                mrl, _ = heldout_run_length(st, held, packed)
                row[f"{score}/{k}"] = mrl
                row[f"{score}/{k}/edges_per_neuron"] = edges
                print(f"{regime} {score:8s} k={k:4d}: {mrl:.4f} ({mrl / row['dense'] - 1:+.2%}; "
                      f"{edges:.1f} CSR entries/neuron; {time.time() - t0:.1f} s)", flush=True)
                if args.bound_layers:
                    b, gap = bound_gap(st, args.bound_layers, rip)
                    row[f"{score}/{k}/bound"], row[f"{score}/{k}/gap"] = b, gap
                    print(f"{regime} {score} k={k}: LP bound {b:,.0f}, dense ripple's gap {gap:.2%}", flush=True)
        results[regime] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
