"""Solve-time benchmark at scale (docs/DESIGN.md §6): Ripple-greedy-quality placement of 32 layers x 16,384 neurons.

Synthetic co-activation graphs with planted structure (`tests/synthetic.planted_chain_graph`: hidden chains of 16
neurons plus random noise partners; ~16k nodes, sparse). Reports per solver the total solve time over all layers,
the objective relative to ripple's, and the share of planted adjacencies recovered.

Run: .venv/bin/python bench/bench_scale.py [--layers 32] [--n 16384] [--solver ripple --solver local-search]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repo (common/ may be missing from an old editable install)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--solver", action="append", default=None)
    args = ap.parse_args()
    solvers = args.solver or ["ripple", "local-search"]

    from synthetic import planted_chain_graph, recovery

    from solvers.base import objective, solve_layers

    inst = [planted_chain_graph(args.n, seed=l) for l in range(args.layers)]
    print(f"{args.layers} layers x {args.n:,} neurons, {sum(i.graph.n_edges for i in inst):,} edges in all")
    print("| solver | total solve s | objective vs ripple | planted adjacencies recovered |")
    print("|---|---:|---:|---:|")
    ripple_obj = None
    for spec in solvers:
        t0 = time.perf_counter()
        perms = solve_layers([i.graph for i in inst], spec, seed=0).perms  # layer l gets seed l
        secs = time.perf_counter() - t0
        obj = sum(objective(p, i.graph) for p, i in zip(perms, inst))
        ripple_obj = ripple_obj or (obj if spec == "ripple" else None)
        rec = sum(recovery(p, i.pairs) for p, i in zip(perms, inst)) / len(inst)
        rel = f"{obj / ripple_obj:.4f}" if ripple_obj else "-"
        print(f"| {spec} | {secs:.1f} | {rel} | {100 * rec:.1f} % |")


if __name__ == "__main__":
    main()
