"""Whole-model gap at 7B shape: the best solver vs the exact-count certificate, per layer (issue 12, target "best
solver within 1 % of the proven bound at 32 x 11,008, in <= 15 min").

Works on a ``bench/bench_scale.py`` workdir W (``W/trace``, ``W/stats`` = candidate statistics, ``W/stats_tokens.json``).

Steps (``--steps``):

- ``solve``: ``local-search`` with ``--kicks`` iterated-local-search kicks per layer (solvers/local_search.py) through
  the executor (``--executor local:2``), ``--time-limit`` seconds per layer; wall and CPU time of the whole solve;
  permutations saved to ``W/perms_<name>.npy``.
- ``cert``: per layer (through the executor, one layer per task): the layer's full counts C recounted from the trace
  (coact.stats.count_layer, top_k=None), the objective of the saved permutations on C (every pair, exact), the
  column-generation LP certificate (``solve_two_matching_lp(g, exact=C, blossoms=True)``) and then the Held-Karp 1-tree bound warm-
  started from its duals (solvers/held_karp.py); the layer's bound is the lower of the two (both proven). ``--prior``
  JSON files (earlier runs of this script or ``bench_scale.py``'s ``bound-exact`` step on the same workdir) add their
  per-layer certificates: a proven bound of the same counts stays proven, so the minimum is kept.

Run (niced, in the background):
  nice -n 10 .venv/bin/python bench/bench_scale_gap.py --workdir /tmp/h12/s7 --kicks 40000 --time-limit 40 \
      --prior bench/results/scale_cert.json --out bench/results/scale_gap
Writes OUT.json and OUT.md (per-layer table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_scale  # noqa: E402  (workdir helpers: lazy layer loaders, the layer graph)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (pool workers included once they exit)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _stop(wd: str) -> int:
    rng = Path(wd) / "stats_tokens.json"
    return json.loads(rng.read_text())["stop"] if rng.exists() else bench_scale._trace_tokens(wd)


def _graph_file(wd: str, hot: int, layer: int) -> Path:
    return Path(wd) / f"graphs_hot{hot}" / f"layer_{layer:03d}.npz"


def hot_clique_graph(g: object, C: np.ndarray, hot: int, k: int, score: str) -> object:
    """The candidate graph of the stats (``k`` partners per neuron by ``score``) plus every pair among the ``hot``
    most frequent neurons: ``coact.bitcount.candidates`` with ``score+clique<hot>`` (what ``coact stats
    --candidates jaccard+lift+clique1000`` stores), exact counts from C, ``excluded_max`` the largest count of a pair
    still not stored (so every bound stays proven). Why the clique: see ``coact.bitcount.candidates``."""
    import scipy.sparse as sp

    from coact import bitcount
    from solvers.graph import CoactGraph

    n = g.n
    indptr, ind, data, xm = bitcount.candidates(C, n, k, f"{score}+clique{hot}", g.n_tokens)
    A = sp.csr_array((data.astype(np.int64), ind, indptr), shape=(n, n))
    return CoactGraph(counts=A, freq=np.asarray(g.freq, dtype=np.int64), n_tokens=g.n_tokens, excluded_max=xm)


def _load_graph(path: str) -> object:
    from solvers.graph import CoactGraph
    import scipy.sparse as sp

    z = np.load(path)
    n = z["freq"].size
    return CoactGraph(counts=sp.csr_array((z["data"], z["indices"], z["indptr"]), shape=(n, n)), freq=z["freq"],
                      n_tokens=int(z["n_tokens"]), excluded_max=z["excluded_max"])


def graph_job(job: tuple) -> dict:
    """One layer: recount C, the stats' candidate graph plus the hot clique, saved as npz."""
    from coact.stats import CoactStats, LayerJob, count_layer

    wd, layer, stop, hot = job
    c0 = time.process_time()
    g = bench_scale._load_layer_graph(str(Path(wd) / "stats"), layer)
    C = count_layer(LayerJob(str(Path(wd) / "trace"), layer, 0, stop, g.n, None))["coact"]
    c1 = time.process_time()
    st = CoactStats.load(Path(wd) / "stats")
    h = hot_clique_graph(g, C, hot, int(st.top_k), str(st.candidate_score))
    if (A0 := g.counts.tocsr()).nnz and not np.all(h.counts[A0.nonzero()] == A0.data):  # a superset of the stats
        raise RuntimeError(f"layer {layer}: the rebuilt graph does not contain the stats' candidate pairs")
    f = _graph_file(wd, hot, layer)
    f.parent.mkdir(parents=True, exist_ok=True)
    A = h.counts.tocsr()
    np.savez(f, indptr=A.indptr, indices=A.indices, data=A.data, freq=h.freq, n_tokens=h.n_tokens,
             excluded_max=h.excluded_max)
    return {"layer": layer, "pairs": int(A.nnz // 2), "pairs_stats": int(g.n_edges), "cpu_count_s": round(c1 - c0, 1),
            "cpu_graph_s": round(time.process_time() - c1, 1)}


def step_graphs(wd: str, executor: str, layers: list[int], hot: int) -> dict:
    import bench_scale_gap
    from coact.progress import bars
    from common.executors import get_executor

    stop = _stop(wd)
    c0, t0 = _cpu(), time.perf_counter()
    ex = get_executor(executor)
    try:
        rows = ex.map(bench_scale_gap.graph_job, [(wd, l, stop, hot) for l in layers], progress=bars(True),
                      description="graphs", total=len(layers))
    finally:
        ex.close()
    return {"hot": hot, "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu() - c0, 1),
            "per_layer": rows}


def step_solve(wd: str, name: str, executor: str, time_limit: float, kicks: int, span: int,
               layers: list[int], hot: int) -> dict:
    from functools import partial

    import bench_scale_gap
    from coact.progress import bars
    from solvers.base import solve_layers

    sd = str(Path(wd) / "stats")
    loaders = [partial(bench_scale_gap._load_graph, str(_graph_file(wd, hot, l))) if hot
               else bench_scale._layer_loader(sd, l) for l in layers]
    c0, t0 = _cpu(), time.perf_counter()
    res = solve_layers(loaders, "local-search", time_limit=time_limit,
                       executor=executor, progress=bars(True), n_layers=len(layers), kicks=kicks, span=span)
    wall = time.perf_counter() - t0
    perms = np.stack(res.perms)
    np.save(Path(wd) / f"perms_{name}.npy", perms)
    return {"solver": f"local-search kicks={kicks} span={span}", "graph": f"stats + hot clique {hot}" if hot
            else "stats", "layers": layers, "wall_s": round(wall, 1),
            "cpu_s": round(_cpu() - c0, 1), "layer_s": [round(s, 2) for s in res.seconds]}


def cert_job(job: tuple) -> dict:
    """One layer: recount, objectives of the given permutations, LP certificate, Held-Karp from its duals."""
    from coact.stats import LayerJob, count_layer
    from solvers.bounds import solve_two_matching_lp
    from solvers.held_karp import held_karp_bound

    wd, layer, stop, perms, lp_limit, lp_rounds, hk_limit, prior, blossoms = job
    c0 = time.process_time()
    g = bench_scale._load_layer_graph(str(Path(wd) / "stats"), layer)
    C = count_layer(LayerJob(str(Path(wd) / "trace"), layer, 0, stop, g.n, None))["coact"]
    c1 = time.process_time()
    objs = {k: int(C[p[:-1], p[1:]].astype(np.int64).sum()) for k, p in perms.items()}
    best_obj = max(objs.values()) if objs else 0
    lp = solve_two_matching_lp(g, exact=C, time_limit=lp_limit, max_rounds=lp_rounds, blossoms=blossoms)
    c2 = time.process_time()
    hk = held_karp_bound(C, lp.duals, lower=best_obj, time_limit=hk_limit) if lp.duals is not None else None
    c3 = time.process_time()
    cands = {"lp": lp.bound} | ({"held-karp": hk.bound} if hk else {}) | ({"prior": prior} if prior else {})
    src = min(cands, key=cands.get)
    return {"layer": layer, "objectives": objs, "bound": cands[src], "bound_source": src, "lp_bound": lp.bound,
            "lp_status": lp.status, "lp_rounds": lp.rounds, "lp_columns": lp.n_active,
            "hk_bound": hk.bound if hk else None, "hk_status": hk.status if hk else None,
            "hk_iterations": hk.iterations if hk else 0, "prior_bound": prior,
            "cpu_count_s": round(c1 - c0, 1), "cpu_lp_s": round(c2 - c1, 1), "cpu_hk_s": round(c3 - c2, 1)}


def step_cert(wd: str, executor: str, layers: list[int], perm_names: list[str], lp_limit: float, lp_rounds: int,
              hk_limit: float, prior: dict[int, float], blossoms: bool = True) -> dict:
    import bench_scale_gap  # by module name, so pool and Ray workers can unpickle cert_job
    from coact.progress import bars
    from common.executors import get_executor

    perms = {n: np.load(Path(wd) / f"perms_{n}.npy") for n in perm_names}
    stop = _stop(wd)
    jobs = [(wd, l, stop, {n: p[l] for n, p in perms.items()}, lp_limit, lp_rounds, hk_limit, prior.get(l),
             blossoms)
            for l in layers]  # perms_<name>.npy hold every layer, in layer order
    c0, t0 = _cpu(), time.perf_counter()
    ex = get_executor(executor)
    try:
        rows = ex.map(bench_scale_gap.cert_job, jobs, progress=bars(True), description="certificate", total=len(jobs))
    finally:
        ex.close()
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu() - c0, 1), "per_layer": rows}


def load_prior(files: list[str]) -> dict[int, float]:
    """Per-layer certificates of earlier runs (this script's JSON or bench_scale.py's bound-exact step)."""
    out: dict[int, float] = {}
    for f in files:
        d = json.loads(Path(f).read_text())
        rows = []
        for s in d.get("steps", []):
            if s.get("step") == "bound-exact" and s.get("ok"):
                rows += [(i, r["bound"]) for i, r in enumerate(s["per_layer"])]
        if "cert" in d:
            rows += [(r["layer"], r["bound"]) for r in d["cert"]["per_layer"]]
        for l, b in rows:
            out[l] = min(out.get(l, float("inf")), float(b))
    return out


def markdown(res: dict) -> str:
    """Per-layer table: the solver's exact objective, the best proven bound (this run's certificate or a prior one),
    the gap, and how the certificate ended."""
    cfg, cert = res["config"], res.get("cert")
    lines = ["# Whole-model gap at 32 x 11,008: solver vs exact-count certificate", "",
             f"Command: `{cfg['command']}` (started {cfg['started']}, load {cfg['load_before']}; 2 cores shared "
             "with other agents, times are upper bounds).", ""]
    if res.get("merged_from"):
        lines += ["Merged from these runs (all `nice -n 10 .venv/bin/python ...`):", ""]
        lines += [f"- `{c}`" for c in res["merged_from"]] + [""]
    if "graphs" in res:
        gr = res["graphs"]
        lines += [f"Candidate graphs: the stats' jaccard+lift top-48 pairs plus the clique of the {gr['hot']} most "
                  f"frequent neurons ({sum(r['pairs'] for r in gr['per_layer']):,} pairs over "
                  f"{len(gr['per_layer'])} layers, stats alone {sum(r['pairs_stats'] for r in gr['per_layer']):,}); "
                  f"built with the recount in {gr['wall_s']} s wall, {gr['cpu_s']} CPU-s.", ""]
    if "solve" in res:
        s = res["solve"]
        lines += [f"Solve ({s['solver']} on {s.get('graph', 'stats')}, executor {cfg['executor']}, time limit "
                  f"{cfg['time_limit']} s per layer): **{s['wall_s']} s wall**, {s['cpu_s']} CPU-s, "
                  f"{len(s['layers'])} layers.", ""]
    prior = res.get("prior_bounds", {})
    old = res.get("prior_objectives", {})
    objs = dict(enumerate(res["objective"]["per_layer"])) if "objective" in res else {}
    cert_rows = {r["layer"]: r for r in cert["per_layer"]} if cert else {}
    for l, r in cert_rows.items():
        objs.setdefault(l, max(r["objectives"].values()))
    if not objs:
        return "\n".join(lines) + "\n"
    lines += ["| layer | objective (this solve) | previous solver | bound | bound from | gap % | previous gap % "
              "| this run's LP bound (status, rounds) | Held-Karp (status, iters) | CPU s count/LP/HK |",
              "|---:|---:|---:|---:|---|---:|---:|---|---|---|"]
    tb = to = tp = 0.0
    for l in sorted(objs):
        o = objs[l]
        r = cert_rows.get(l)
        cands = {"prior": prior.get(str(l), prior.get(l))} | ({"this run": r["bound"]} if r else {})
        cands = {k: v for k, v in cands.items() if v is not None}
        if not cands:
            continue
        src = min(cands, key=cands.get)
        b = cands[src]
        po = old.get(str(l), old.get(l))
        tb, to, tp = tb + b, to + o, tp + (po or 0)
        lp = f"{r['lp_bound']:,.0f} ({r['lp_status']}, {r['lp_rounds']})" if r else ""
        hk = f"{r['hk_bound']:,.0f} ({r['hk_status']}, {r['hk_iterations']})" if r and r["hk_bound"] else ""
        cpu = f"{r['cpu_count_s']}/{r['cpu_lp_s']}/{r['cpu_hk_s']}" if r else ""
        lines.append(f"| {l} | {o:,} | {'' if po is None else f'{po:,}'} | {b:,.0f} | {src} | {100 * (b - o) / b:.2f} "
                     f"| {'' if po is None else f'{100 * (b - po) / b:.2f}'} | {lp} | {hk} | {cpu} |")
    lines.append(f"| **all** | **{to:,.0f}** | {tp:,.0f} | **{tb:,.0f}** | | **{100 * (tb - to) / tb:.2f}** "
                 f"| {100 * (tb - tp) / tb:.2f} | | | {cert['cpu_s'] if cert else ''} CPU-s (certificate) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", default="solve,cert")
    ap.add_argument("--layers", default=None, help="comma list (default all)")
    ap.add_argument("--executor", default="local:2")
    ap.add_argument("--name", default="local-search-ils", help="perms_<name>.npy written by the solve step")
    ap.add_argument("--kicks", type=int, default=40000)
    ap.add_argument("--hot", type=int, default=1000, help="hot-clique size added to the candidate graph (0 = none)")
    ap.add_argument("--cert-layers", default=None, help="cert step: only these layers (comma list, in this order)")
    ap.add_argument("--span", type=int, default=30)
    ap.add_argument("--time-limit", type=float, default=40.0, help="solver seconds per layer")
    ap.add_argument("--perms", default=None, help="comma list of perms_<name>.npy to evaluate (default --name)")
    ap.add_argument("--lp-time-limit", type=float, default=300.0)
    ap.add_argument("--lp-rounds", type=int, default=40)
    ap.add_argument("--hk-time-limit", type=float, default=60.0)
    ap.add_argument("--no-blossoms", action="store_true", help="certificate LP without blossom cuts")
    ap.add_argument("--prior", nargs="*", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale_gap"))
    ap.add_argument("--merge", nargs="*", default=[],
                    help="earlier outputs of this script (e.g. the solve run and certificate runs on layer subsets): "
                         "their graphs/solve/objective parts are taken, their certificate rows united")
    a = ap.parse_args()
    wd = a.workdir
    layers = ([int(x) for x in a.layers.split(",")] if a.layers
              else list(range(bench_scale._n_layers(str(Path(wd) / "stats")))))
    res: dict = {"config": {k: v for k, v in vars(a).items()}, "layers": layers}
    pb, po = load_prior(a.prior), {}
    for f in a.prior:
        for st_ in json.loads(Path(f).read_text()).get("steps", []):
            if st_.get("step") == "solve:local-search" and st_.get("ok"):
                po = dict(enumerate(st_["objective_full_per_layer"]))
    res["prior_bounds"], res["prior_objectives"] = pb, po
    res["config"].update(command=" ".join(["bench/bench_scale_gap.py"] + sys.argv[1:]),
                         started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         load_before=round(os.getloadavg()[0], 2))
    out = Path(a.out)

    def save() -> None:
        out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
        out.with_suffix(".md").write_text(markdown(res))

    for f in a.merge:
        part = json.loads(Path(f).read_text())
        res.setdefault("merged_from", []).append(part["config"]["command"])
        for key in ("graphs", "solve", "objective"):
            if key in part:
                res[key] = part[key]
        if "cert" in part:
            c = res.setdefault("cert", {"wall_s": 0.0, "cpu_s": 0.0, "per_layer": [], "runs": []})
            have = {r["layer"] for r in part["cert"]["per_layer"]}
            c["per_layer"] = [r for r in c["per_layer"] if r["layer"] not in have] + part["cert"]["per_layer"]
            c["wall_s"] = round(c["wall_s"] + part["cert"]["wall_s"], 1)
            c["cpu_s"] = round(c["cpu_s"] + part["cert"]["cpu_s"], 1)
            c["runs"].append(part["config"]["command"])
    steps = a.steps.split(",")
    if "graphs" in steps:
        res["graphs"] = step_graphs(wd, a.executor, layers, a.hot)
        save()
    if "solve" in steps:
        res["solve"] = step_solve(wd, a.name, a.executor, a.time_limit, a.kicks, a.span, layers, a.hot)
        save()
    if "objective" in steps:  # exact objectives on every pair, straight from the trace
        perms = np.load(Path(wd) / f"perms_{a.name}.npy")
        res["objective"] = {"name": a.name, "per_layer": bench_scale._full_objectives(wd, list(perms))}
        save()
    if "cert" in steps:
        names = a.perms.split(",") if a.perms else [a.name]
        cl = [int(x) for x in a.cert_layers.split(",")] if a.cert_layers else layers
        res["cert"] = step_cert(wd, a.executor, cl, names, a.lp_time_limit, a.lp_rounds, a.hk_time_limit,
                                pb, not a.no_blossoms)
        save()
    res["config"]["load_after"] = round(os.getloadavg()[0], 2)
    save()
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
