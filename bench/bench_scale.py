"""The scale benchmark (issue 12): the offline side at 7B shape, and the solve at 70B shape, on this machine.

Steps (each in a fresh child process, so its peak memory is its own):

1. ``synth``   — `coact synth`: a synthetic trace L x N x T (coact.synth, fitted to SmolLM2);
2. ``stats``   — candidate statistics (top-k partners, exact counts, ``excluded_max``) through the executor;
3. ``solve:S`` — each solver S on the candidate graphs through the executor; objective on the candidate graphs
   (a lower bound of the full objective: dropped pairs count 0);
4. ``bound``   — the proven upper bound on the FULL graphs from the candidate graphs (solvers.bounds), and the gap
   of each solver to it;
4b. ``bound-exact`` — the exact-count certificate (``solvers.bounds``, ``exact=``): each layer recounted from the
   trace in a worker and the LP priced against every pair, then the Held-Karp 1-tree bound from the LP's duals
   (solvers.held_karp; the lower of the two, both proven) (``--bound-layers`` for the first layers only);
5. ``pack``    — a pack of the best layout with seeded synthetic weights at ``--d-model`` (fp16 up-down bundles:
   16 KiB at d_model 4,096), then deleted unless ``--keep-pack``;
6. ``replay``  — real O_DIRECT replay of ``--replay-tokens`` tokens of the trace against the pack (plus the I/O-free
   simulation of ``--sim-tokens`` tokens);
7. ``ray``     — the solve step of ``--ray-solver`` on 1 and 2 workers, Ray and the local pool, interleaved and
   repeated ``--ray-repeats`` times (worker start excluded), with the load next to each time;
8. ``solve70b`` — Ripple on ``--big-layers`` x ``--big-n`` candidate graphs (planted chains + noise built in the
   workers, k = ``--top-k`` partners per neuron), through the local executor.

Per step: wall time, CPU seconds (the step and its reaped pool workers), the 1-minute load before and after, and
peak RSS — of the step's process and of its whole process tree (pool/Ray workers included, sampled every 0.2 s with
psutil; the tree sum counts a memory-mapped trace once per worker). Progress bars with an ETA on stderr (rich). Results go to
``bench/results/scale.json`` and ``bench/results/scale.md``.

Run (the machine is shared: nice):
  nice -n 10 .venv/bin/python bench/bench_scale.py --layers 32 --neurons 11008 --tokens 100000
Steps already done are reused from ``--workdir`` (trace, stats, layouts); ``--steps`` picks a subset.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
# the repo, tests/ (synthetic graphs) and bench/ itself: workers (pool, Ray) import this module as `bench_scale`
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

ALL_STEPS = ["synth", "stats", "solve", "bound", "bound-exact", "pack", "replay", "ray", "solve70b"]


# ------------------------------------------------------------------------------------------------ measurement


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    tot = 0
    for q in procs:
        try:
            tot += q.memory_info().rss
        except psutil.Error:
            pass
    return tot


def _child(fn: Callable[..., dict], args: tuple, q: Any) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
    try:
        out = fn(*args)
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of the step and of its reaped children (pool workers; not Ray's, which Ray itself starts)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        q.put({"ok": True, "result": out, "self_peak_rss": me.ru_maxrss * 1024, "cpu_seconds": round(cpu, 1)})
    except BaseException as e:  # report, the parent records the failure
        import traceback

        q.put({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})


def run_step(name: str, fn: Callable[..., dict], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a spawned child; wall time, peak RSS of the child and of its process tree."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    p.start()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(p.pid))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    msg = None
    while msg is None:
        try:
            msg = q.get(timeout=1.0)
        except Exception:
            if not p.is_alive():
                msg = {"ok": False, "error": f"child died with exit code {p.exitcode}"}
    p.join()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    row = {"step": name, "seconds": round(secs, 2), "peak_rss_tree_gib": round(peak[0] / 2**30, 3),
           "peak_rss_self_gib": round(msg.get("self_peak_rss", 0) / 2**30, 3), "ok": msg["ok"],
           "cpu_seconds": msg.get("cpu_seconds"), "load_1min_before": round(load0[0], 2),
           "load_1min_after": round(os.getloadavg()[0], 2)}
    if msg["ok"]:
        row.update(msg["result"] or {})
    else:
        row["error"] = msg["error"]
        print(msg.get("trace", ""), file=sys.stderr)
    print(f"[{name}] {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


# ------------------------------------------------------------------------------------------------ the steps


def step_synth(wd: str, L: int, N: int, T: int, seed: int, d_model: int) -> dict:
    from coact.synth import write_synthetic_trace

    out = Path(wd) / "trace"
    if out.exists():
        return {"note": "reused"}
    write_synthetic_trace(out, n_layers=L, n_neurons=N, n_tokens=T, seed=seed, d_model=d_model, progress=True)
    return {"bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def step_stats(wd: str, k: int, executor: str, tokens: int | None) -> dict:
    from coact.stats import count_stats
    from coact.trace import Trace

    out = Path(wd) / "stats"
    if out.exists():
        return {"note": "reused"}
    tr = Trace.load(Path(wd) / "trace")
    stop = min(int(tokens), tr.n_tokens) if tokens else tr.n_tokens
    st = count_stats(tr, stop=stop, top_k=k, executor=executor, progress=True)
    st.save(out)
    (Path(wd) / "stats_tokens.json").write_text(json.dumps({"stop": stop}))
    return {"top_k": k, "tokens": stop, "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def _layer_loader(stats_dir: str, layer: int) -> Any:
    """A picklable lazy loader of one layer's candidate graph (a worker loads its own layer)."""
    from functools import partial

    import bench_scale  # by module name, so pool and Ray workers can unpickle it

    return partial(bench_scale._load_layer_graph, stats_dir, layer)


def _load_layer_graph(stats_dir: str, layer: int) -> Any:
    from coact.graph import layer_graph
    from coact.stats import CoactStats

    return layer_graph(CoactStats.load(stats_dir), layer)


def _n_layers(stats_dir: str) -> int:
    from coact.stats import CoactStats

    return CoactStats.load(stats_dir).n_layers


def _objectives(stats_dir: str, perms: list) -> list[int]:
    from solvers.base import objective

    return [int(objective(p, _load_layer_graph(stats_dir, l))) for l, p in enumerate(perms)]


def _full_objectives(wd: str, perms: list) -> list[int]:
    """The exact objective on the FULL graph (every pair, not only candidates), straight from the trace: per layer,
    the number of (token, adjacent pair) where both neurons fire (docs/DESIGN.md §2), in token blocks."""
    import numpy as np

    from coact.trace import Trace
    from common.bits import unpack_bits

    tr = Trace.load(Path(wd) / "trace")
    rng = Path(wd) / "stats_tokens.json"
    stop = json.loads(rng.read_text())["stop"] if rng.exists() else tr.n_tokens  # the tokens the stats counted
    out = []
    for l, p in enumerate(perms):
        tot = 0
        for t0 in range(0, stop, 4096):
            a = unpack_bits(tr.layer_packed(l, t0, min(t0 + 4096, stop)), tr.n_neurons)[:, p]
            tot += int(np.count_nonzero(a[:, :-1] & a[:, 1:]))
        out.append(tot)
    return out


def step_solve(wd: str, solver: str, executor: str, time_limit: float | None, n_layers: int | None = None) -> dict:
    import numpy as np

    from coact.progress import bars
    from solvers.base import solve_layers

    sd = str(Path(wd) / "stats")
    L = min(_n_layers(sd), n_layers or 10**9)
    t0 = time.perf_counter()
    res = solve_layers([_layer_loader(sd, l) for l in range(L)], solver, time_limit=time_limit, executor=executor,
                       progress=bars(True), n_layers=L)
    secs = time.perf_counter() - t0
    np.save(Path(wd) / f"perms_{solver}.npy", np.stack(res.perms))
    obj = _objectives(sd, res.perms)
    full = _full_objectives(wd, res.perms)
    return {"solver": solver, "layers": L, "solve_seconds": round(secs, 2),
            "sum_layer_seconds": round(sum(res.seconds), 2), "objective_candidate": int(sum(obj)), "objective_full": int(sum(full)), "objective_per_layer": obj,
            "objective_full_per_layer": full}


def step_bound(wd: str, executor: str, time_limit: float, n_layers: int | None = None) -> dict:
    from coact.progress import bars
    from solvers.bounds import bound_layers, degree_bound

    sd = str(Path(wd) / "stats")
    L = min(_n_layers(sd), n_layers or 10**9)
    b = bound_layers([_layer_loader(sd, l) for l in range(L)], executor=executor, progress=bars(True),
                     n_layers=L, time_limit=time_limit)
    deg = [degree_bound(_load_layer_graph(sd, l)) for l in range(L)]
    return {"bound": float(sum(b)), "bound_per_layer": b, "degree_bound": float(sum(deg))}


def _exact_bound_job(job: tuple) -> dict:
    """One layer's exact-count certificate (solvers.bounds, ``exact=``): the layer's full counts are recounted from
    the trace in the worker (coact.stats.count_layer with top_k=None; ~N^2 x 4 bytes, never a CSR of all pairs)."""
    from coact.stats import LayerJob, count_layer

    from solvers.bounds import solve_two_matching_lp
    from solvers.held_karp import held_karp_bound

    wd, layer, stop, time_limit = job
    g = _load_layer_graph(str(Path(wd) / "stats"), layer)
    t0 = time.perf_counter()
    C = count_layer(LayerJob(str(Path(wd) / "trace"), layer, 0, stop, g.n, None))["coact"]
    t1 = time.perf_counter()
    res = solve_two_matching_lp(g, exact=C, time_limit=time_limit)
    t2 = time.perf_counter()
    # Held-Karp 1-tree bound from the LP's duals: proven for any multipliers, rescues a non-converged LP
    hk = held_karp_bound(C, res.duals, time_limit=min(60.0, time_limit / 5)) if res.duals is not None else None
    bound = min(float(res.bound), hk.bound if hk else math.inf)
    return {"bound": bound, "lp_bound": float(res.bound), "hk_bound": hk.bound if hk else None,
            "count_s": round(t1 - t0, 2), "lp_s": round(t2 - t1, 2), "hk_s": round(time.perf_counter() - t2, 2),
            "status": res.status, "rounds": res.rounds, "lp_columns": res.n_active,
            "edges_priced_in": int(res.edges.u.size - g.n_edges)}


def step_bound_exact(wd: str, executor: str, time_limit: float, n_layers: int | None) -> dict:
    """The exact-count certificate of every layer (or the first ``n_layers``) through the executor."""
    import bench_scale
    from coact.progress import bars
    from common.executors import get_executor

    sd = str(Path(wd) / "stats")
    L = min(_n_layers(sd), n_layers or 10**9)
    rng = Path(wd) / "stats_tokens.json"
    stop = json.loads(rng.read_text())["stop"] if rng.exists() else _trace_tokens(wd)
    ex = get_executor(executor)
    try:
        rows = ex.map(bench_scale._exact_bound_job, [(wd, l, stop, time_limit) for l in range(L)],
                      progress=bars(True), description="exact bound", total=L)
    finally:
        ex.close()
    return {"layers": L, "bound_exact": float(sum(r["bound"] for r in rows)), "per_layer": rows}


def _trace_tokens(wd: str) -> int:
    from coact.trace import Trace

    return Trace.load(Path(wd) / "trace").n_tokens


def step_pack(wd: str, solver: str, d_model: int) -> dict:
    import numpy as np

    from coact.synth_weights import pack_synthetic
    from runtime.layout import Layout

    from coact.trace import Trace

    perms = np.load(Path(wd) / f"perms_{solver}.npy")
    model_id = str(Trace.load(Path(wd) / "trace").meta.get("model_id", "synthetic"))
    lay = Layout(list(perms), model_id=model_id, solver=solver)
    out = Path(wd) / "scale.pack"
    pack_synthetic(lay, out, d_model=d_model, seed=0, progress=True)
    return {"pack_bytes": out.stat().st_size, "layout": solver}


def step_replay(wd: str, tokens: int, sim_tokens: int) -> dict:
    from coact.trace import Trace
    from coact.workflow import replay_pack
    from runtime.pack import PackFile
    from runtime.replay import simulate

    tr = Trace.load(Path(wd) / "trace")
    T = tr.n_tokens
    pack = Path(wd) / "scale.pack"
    rep = replay_pack(pack, tr, start=T - tokens, stop=T, progress=True)
    with PackFile(pack) as pf:
        lay, bb = pf.layout(), pf.bundle_bytes
    sim = simulate(lay, tr.packed(max(0, T - sim_tokens), T), tr.n_neurons, bundle_bytes=bb)
    keys = ("n_tokens", "reads_per_token", "bytes_read_per_token", "mean_run_length", "io_time_s",
            "effective_bandwidth", "latency_ms_p50", "latency_ms_p99")
    return {"bundle_bytes": bb, "replay": {k: getattr(rep, k) for k in keys},
            "simulate": {k: getattr(sim, k) for k in keys[:4]}}


def _warm(i: int) -> int:
    """Import the solvers and load their compiled kernels in a worker (kept busy 1 s so every worker gets one)."""
    from synthetic import planted_chain_graph

    from solvers.base import get_solver

    g = planted_chain_graph(64, seed=i).graph
    for s in ("ripple", "local-search", "path-cover"):
        get_solver(s).solve(g, seed=0)
    time.sleep(1.0)
    return i


def step_ray(wd: str, solver: str, time_limit: float | None, repeats: int = 3, n_layers: int | None = None) -> dict:
    """The solve step of ``solver`` on 1 and 2 workers, Ray and the local pool, interleaved and repeated: on a shared
    machine only runs that see the same background load can be compared, so every repetition runs ray:1, ray:2,
    local:1, local:2 back to back (order reversed every other repetition) and reports the load with each time."""
    import numpy as np

    import bench_scale
    from common.executors import get_executor
    from solvers.base import solve_layers

    sd = str(Path(wd) / "stats")
    L = min(_n_layers(sd), n_layers or 10**9)
    specs = ["ray:1", "ray:2", "local:1", "local:2"]
    runs: list[dict] = []
    perms: dict[str, list] = {}
    for rep in range(int(repeats)):
        for spec in (specs if rep % 2 == 0 else specs[::-1]):
            ex = get_executor(spec)
            try:
                ex.map(bench_scale._warm, range(2 * ex.workers))  # start every worker, load the solvers first
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                res = solve_layers([_layer_loader(sd, l) for l in range(L)], solver, time_limit=time_limit,
                                   executor=ex)
                runs.append({"rep": rep, "executor": spec, "seconds": round(time.perf_counter() - t0, 2),
                             "sum_layer_seconds": round(sum(res.seconds), 2), "load_before": round(load0, 2),
                             "load_after": round(os.getloadavg()[0], 2)})
                perms.setdefault(spec, res.perms)
            finally:
                ex.close()
    out: dict[str, Any] = {"solver": solver, "layers": L, "runs": runs}
    for kind in ("ray", "local"):
        ratios = []
        for rep in range(int(repeats)):
            t = {r["executor"]: r["seconds"] for r in runs if r["rep"] == rep}
            ratios.append(round(t[f"{kind}:1"] / t[f"{kind}:2"], 3))
        out[f"{kind}_speedups"] = ratios
        out[f"{kind}_speedup_median"] = float(np.median(ratios))
    ref = perms["ray:1"]
    out["identical"] = all(all(np.array_equal(a, b) for a, b in zip(ref, p)) for p in perms.values())
    return out


def _big_graph(n: int, k: int, seed: int) -> Any:
    """A candidate graph of n neurons (planted chains + noise partners, tests/synthetic.py) cut to top-k."""
    from synthetic import planted_chain_graph

    return planted_chain_graph(n, seed=seed, noise_degree=k).graph.candidate_graph(k)


def step_solve70b(L: int, N: int, k: int, executor: str) -> dict:
    from functools import partial

    import bench_scale
    from coact.progress import bars
    from solvers.base import solve_layers

    t0 = time.perf_counter()
    res = solve_layers([partial(bench_scale._big_graph, N, k, l) for l in range(L)], "ripple", executor=executor,
                       progress=bars(True), n_layers=L)
    return {"shape": f"{L} x {N}", "top_k": k, "wall_seconds_incl_graph_build": round(time.perf_counter() - t0, 2),
            "sum_ripple_seconds": round(sum(res.seconds), 2)}


# ------------------------------------------------------------------------------------------------ main


def markdown(rows: list[dict], cfg: dict) -> str:
    lines = [f"Scale benchmark: {cfg['layers']} x {cfg['neurons']:,} neurons, {cfg['tokens']:,} tokens "
             f"(statistics on {cfg.get('stats_tokens') or cfg['tokens']:,}), "
             f"top-k {cfg['top_k']}, executor {cfg['executor']}, d_model {cfg['d_model']} "
             f"(`{cfg['command']}`; 2 cores shared with other agents, times are upper bounds).", "",
             "| step | wall s | CPU s | load (1 min, before/after) | peak RSS (tree) GiB | peak RSS (step process) GiB "
             "| notes |", "|---|---:|---:|---|---:|---:|---|"]
    brow = next((r for r in rows if r["step"] == "bound" and r["ok"]), None)
    bound = None
    exact = next((r for r in rows if r["step"] == "bound-exact" and r["ok"]), None)
    for r in rows:
        note = ""
        if not r["ok"]:
            note = "FAILED: " + r.get("error", "")[:120]
        elif r["step"].startswith("solve:"):
            obj, full = r["objective_candidate"], r.get("objective_full", 0)
            if brow:  # the bound over the same layers as the solve
                bound = float(sum(brow["bound_per_layer"][:r.get("layers", len(brow["bound_per_layer"]))]))
            note = (f"solve {r['solve_seconds']} s; objective {full:,} on all pairs (exact, from the trace), "
                    f"{obj:,} on candidate pairs"
                    + (f"; gap to the proven bound {100 * (bound - full) / bound:.1f} %" if bound else ""))
            if exact and r.get("objective_full_per_layer"):
                m = min(exact["layers"], len(r["objective_full_per_layer"]))
                eb = sum(x["bound"] for x in exact["per_layer"][:m])
                of = sum(r["objective_full_per_layer"][:m])
                note += f"; gap to the exact-count certificate (layers 0-{m - 1}) {100 * (eb - of) / eb:.2f} %"
        elif r["step"] == "bound":
            note = (f"bound {r['bound']:,.0f} over {len(r['bound_per_layer'])} layers "
                    f"(degree bound {r['degree_bound']:,.0f})")
        elif r["step"] == "bound-exact":
            pl = r["per_layer"]
            note = (f"exact-count certificate of {r['layers']} layers: {r['bound_exact']:,.0f} (recount + LP, "
                    f"summed over layers: {sum(x['count_s'] for x in pl):.0f} s + {sum(x['lp_s'] for x in pl):.0f} s)")
        elif r["step"] == "pack":
            note = f"{r['pack_bytes'] / 1e9:.2f} GB, layout {r['layout']}"
        elif r["step"] == "replay":
            rp = r["replay"]
            note = (f"{rp['n_tokens']} tokens O_DIRECT: {rp['reads_per_token']:.0f} reads/token, "
                    f"{(rp['bytes_read_per_token'] or 0) / 2**20:.1f} MiB/token, p50 {rp['latency_ms_p50']} ms; "
                    f"bundle {r['bundle_bytes']} B")
        elif r["step"] == "ray":
            note = (f"{r['solver']} on {r['layers']} layers, 2 workers vs 1 per repetition: Ray "
                    f"{', '.join(f'{x}x' for x in r['ray_speedups'])} (median {r['ray_speedup_median']}x), local "
                    f"{', '.join(f'{x}x' for x in r['local_speedups'])} (median {r['local_speedup_median']}x); "
                    "runs (s, load): " + "; ".join(f"{x['executor']} {x['seconds']} ({x['load_before']})"
                                                   for x in r["runs"]) + f"; identical {r['identical']}")
        elif r["step"] == "solve70b":
            note = f"ripple {r['shape']} (k={r['top_k']}), sum of per-layer solve {r['sum_ripple_seconds']} s"
        elif "note" in r:
            note = r["note"]
        cpu = r.get("cpu_seconds")
        load = (f"{r['load_1min_before']} / {r['load_1min_after']}" if "load_1min_before" in r else "")
        lines.append(f"| {r['step']} | {r['seconds']} | {cpu if cpu is not None else ''} | {load} "
                     f"| {r['peak_rss_tree_gib']} | {r['peak_rss_self_gib']} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--neurons", type=int, default=11008)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--top-k", type=int, default=48, help="candidates per neuron (coact stats default: jaccard+lift top-48; the scale table in BENCHMARKS.md §7 was measured with 32)")
    ap.add_argument("--stats-tokens", type=int, default=None, help="Count only the first tokens (default all).")
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--executor", default="local:2")
    ap.add_argument("--solver", action="append", default=None)
    ap.add_argument("--time-limit", type=float, default=20.0, help="Seconds per layer for searching solvers.")
    ap.add_argument("--bound-time-limit", type=float, default=120.0)
    ap.add_argument("--solve-layers", type=int, default=None, help="solve: only the first layers.")
    ap.add_argument("--bound-layers", type=int, default=None,
                    help="bound-exact: only the first layers (the certificate recounts each layer from the trace)")
    ap.add_argument("--replay-tokens", type=int, default=16)
    ap.add_argument("--sim-tokens", type=int, default=2000)
    ap.add_argument("--ray-solver", default="local-search",
                    help="Solver of the Ray step (deterministic when it converges within --time-limit).")
    ap.add_argument("--ray-repeats", type=int, default=3, help="Interleaved repetitions of the ray step.")
    ap.add_argument("--ray-layers", type=int, default=None, help="Ray step: only the first layers.")
    ap.add_argument("--big-layers", type=int, default=80)
    ap.add_argument("--big-n", type=int, default=28672)
    ap.add_argument("--steps", default=",".join(ALL_STEPS))
    ap.add_argument("--workdir", default="/tmp/coact_scale")
    ap.add_argument("--keep-pack", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale"))
    ap.add_argument("--merge", nargs="*", default=None,
                    help="Only merge the steps of these result JSON files (runs of step subsets) into --out.")
    a = ap.parse_args()
    if a.merge is not None:
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        rows_m = [r for p_ in parts for r in p_["steps"]]
        cfg_m = dict(parts[0]["config"], command=" + ".join(p_["config"]["command"] for p_ in parts))
        Path(a.out + ".json").write_text(json.dumps({"config": cfg_m, "steps": rows_m}, indent=1, default=float))
        Path(a.out + ".md").write_text(markdown(rows_m, cfg_m))
        print(Path(a.out + ".md").read_text())
        return
    solvers = a.solver or ["ripple", "local-search", "path-cover"]
    steps = a.steps.split(",")
    wd = Path(a.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    cfg = {"layers": a.layers, "neurons": a.neurons, "tokens": a.tokens, "stats_tokens": a.stats_tokens, "top_k": a.top_k, "d_model": a.d_model,
           "executor": a.executor, "time_limit": a.time_limit, "command": " ".join(["bench/bench_scale.py"] + sys.argv[1:]),
           "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"free disk at {wd}: {shutil.disk_usage(wd).free / 2**30:.1f} GiB", file=sys.stderr)
    rows: list[dict] = []
    out_json, out_md = Path(a.out + ".json"), Path(a.out + ".md")
    out_json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out_json.write_text(json.dumps({"config": cfg, "steps": rows}, indent=1, default=float))
        out_md.write_text(markdown(rows, cfg))

    if "synth" in steps:
        rows.append(run_step("synth", step_synth, str(wd), a.layers, a.neurons, a.tokens, a.seed, a.d_model)); save()
    if "stats" in steps:
        rows.append(run_step("stats", step_stats, str(wd), a.top_k, a.executor, a.stats_tokens)); save()
    if "solve" in steps:
        for s in solvers:
            rows.append(run_step(f"solve:{s}", step_solve, str(wd), s, a.executor, a.time_limit, a.solve_layers))
            save()
    if "bound" in steps:
        rows.append(run_step("bound", step_bound, str(wd), a.executor, a.bound_time_limit, a.bound_layers)); save()
        bl = rows[-1].get("bound_per_layer")
        for r in rows:
            if r["step"].startswith("solve:") and r["ok"] and bl:
                b = float(sum(bl[:r.get("layers", len(bl))]))
                r["gap_percent"] = round(100 * (b - r.get("objective_full", r["objective_candidate"])) / b, 3)
        save()
    if "bound-exact" in steps:
        rows.append(run_step("bound-exact", step_bound_exact, str(wd), a.executor, a.bound_time_limit,
                             a.bound_layers)); save()
    best = max((r for r in rows if r["step"].startswith("solve:") and r["ok"]),
               key=lambda r: r["objective_candidate"], default=None)
    if "pack" in steps:
        rows.append(run_step("pack", step_pack, str(wd), best["solver"] if best else solvers[0], a.d_model)); save()
    if "replay" in steps:
        rows.append(run_step("replay", step_replay, str(wd), a.replay_tokens, a.sim_tokens)); save()
    if "pack" in steps and not a.keep_pack and (wd / "scale.pack").exists():  # only a pack this run wrote
        (wd / "scale.pack").unlink()
    if "ray" in steps:
        rows.append(run_step("ray", step_ray, str(wd), a.ray_solver, a.time_limit, a.ray_repeats, a.ray_layers)); save()
    if "solve70b" in steps:
        rows.append(run_step("solve70b", step_solve70b, a.big_layers, a.big_n, a.top_k, a.executor)); save()
    save()
    print(out_md.read_text())


if __name__ == "__main__":
    main()
