"""Run SmolLM2 from flash at accuracy budgets: tokens/s of the named pipelines at the same DRAM budget, the same
engine and the same perplexity; a DRAM budget sweep; an accuracy-latency plot.

Operating points (docs/DESIGN.md §8, issue "Accuracy first"): CATS thresholds chosen by
``coact.workflow.choose_operating_point`` for +5 % and +20 % perplexity (uniform sparsity, calibrated on corpus
tokens [0, 1024), validated on [1024, 1536)), plus the 90 % stress regime ("the sparsity of ReLU models; destroys
this model's accuracy"). Per operating point:

1. a profiling trace of tokens [0, PROFILE) recorded with the *sparse* forward (what the engine meets; option
   ``--forward dense`` for the other), its statistics, the ripple layout and the best solver's layout;
2. fp16 up-down packs: identity (shared), ripple, best;
3. in-memory perplexity (dense and sparse) on held-out tokens [HELD, HELD + PPL): the flash engine is exact
   (tests/test_online.py), so every pipeline runs at exactly this perplexity;
4. the pipelines of :mod:`runtime.pipelines` on the engine (:mod:`coact.online_pipelines`): dense (whole regions,
   sparse compute), llmflash (identity, window k=5, no collapse), ripple (ripple layout, ripple cache, collapse at
   break-even), coact (best layout, cache and collapse chosen by simulation on the profiling trace); each
   generates TOKENS tokens after an 8-token held-out prompt, interleaved over ``--repeats`` rounds (median).

Then, at the +20 % point, the budget sweep (``--sweep``, default 0, 5, 10, 20, 40 % of the FFN bytes).
Writes bench/results/online.json, online.md, online_sweep.png, online_accuracy_latency.png.

``--workdir W`` caches each point's thresholds, perplexity, trace, layouts and packs (``point-TAG.json`` ...), so a
before/after comparison reuses the very same files; ``--flash-kw '{"exact": false}'`` runs the compact FFN path;
``--fio`` records one pipeline's request lists at ``--fio-point`` and replays them with fio
(:func:`runtime.fio.compare_with_fio`); rounds alternate the pipeline order and log the load average.
``--variants '{"off": {"lookahead": 0}, "mid": {"lookahead": "mid"}}'`` runs every pipeline once per named set of
extra FlashModel keyword arguments in the same interleaved rounds (A/B side by side in one process; "vs coact"
compares within a variant, and the look-ahead table compares each variant with the first).
Results: bench/results/online_targets.md, bench/results/online_lookahead.md.

Usage: .venv/bin/python bench/bench_online.py [--tokens 16] [--repeats 2] [--budgets 0.05,0.2] [--stress 0.9]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coact.corpus import load_text, tokenize  # noqa: E402
from coact.flash import quick_cost_model  # noqa: E402
from coact.models import load_model  # noqa: E402
from coact.online import FlashModel  # noqa: E402
from coact.online_pipelines import resolve_flash_pipeline  # noqa: E402
from coact.sparsify import get_sparsifier  # noqa: E402
from coact.trace import Trace  # noqa: E402
from coact.workflow import bundle_bytes, capture, choose_operating_point, count, ensure_pack, \
    measure_perplexity, solve_layouts  # noqa: E402
from runtime.device import CostModel  # noqa: E402
from runtime.direct import direct_io_supported  # noqa: E402
from runtime.layout import Layout, load_layout, save_layout  # noqa: E402

PIPES = ("dense", "llmflash", "ripple", "coact")
LAYOUT_OF = {"dense": "identity", "llmflash": "identity", "ripple": "ripple", "coact": "best"}
WIKITEXT = str(ROOT.parent / "shared" / "corpora" / "wikitext2-test.txt")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_engine(pack: Path, h: Any, sp: Any, opts: dict[str, Any], *, budget: float, cm: CostModel,
               prompt: list[int], tokens: int, flash_kw: dict[str, Any] | None = None,
               read_log: list | None = None) -> dict[str, Any]:
    kw = {**opts, **(flash_kw or {})}
    with FlashModel(pack, h, sparsifier=sp, budget=budget, cost_model=cm, **kw) as fm:
        if read_log is not None:
            fm.reader.read_log = read_log  # every (offsets, sizes) batch the engine issues, in order
        fm.generate(prompt, tokens)
        return fm.report(skip=4)  # the first tokens warm the cache and the kernels


def prepare_point(h: Any, args: Any, work: Path, label: str, spec: dict[str, Any], ident: Layout,
                  id_pack: Path) -> dict[str, Any]:
    """Operating point, profiling trace, perplexity, layouts and packs of one point; cached in the workdir
    (``point-TAG.json``, the trace folder, layout files, packs), so repeated runs (before/after a change) use the
    very same thresholds, layouts and packs."""
    tag = label.replace(" ", "_").replace("%", "").replace("+", "p")
    meta_f = work / f"point-{tag}.json"
    trace_dir = work / f"trace-{label.replace(' ', '_').replace('%', '')}"
    if meta_f.exists():
        m = json.loads(meta_f.read_text())
        log(f"  reusing {meta_f.name}")
        tr = Trace.load(trace_dir)
        lays = {"identity": ident, "ripple": load_layout(work / f"ripple-{tag}.layout"),
                "best": load_layout(work / f"best-{tag}.layout")}
    else:
        if "budget" in spec:
            op = choose_operating_point(h, args.corpus, spec["budget"], calib_tokens=1024, validation_tokens=1024,
                                        progress=False)
            thr, mean_sp = op.thresholds, op.mean_sparsity
        else:
            thr, mean_sp = None, spec["sparsity"]
        sparsity = min(max(mean_sp, 0.01), 0.99)
        tr = capture(h, args.corpus, trace_dir, tokens=args.profile, ctx=256, sparsity=sparsity, calib_tokens=1024,
                     thresholds=thr, forward=args.forward, ppl_tokens=0, progress=False)
        thr = tr.meta["sparsifier"]["thresholds"]
        held = max(args.profile, 2048) + 512
        acc = measure_perplexity(h, args.corpus, start=held, tokens=args.ppl_tokens, thresholds=thr,
                                 sparsity=sparsity, progress=False)
        st = count(tr, progress=False)
        lays = {"identity": ident}
        t0 = time.time()
        lays["ripple"] = solve_layouts(st, ["ripple"], progress=False)["ripple"][0]
        ripple_s = time.time() - t0
        t0 = time.time()
        lays["best"] = solve_layouts(st, [args.best_solver], time_limit=args.best_time_limit,
                                     progress=False)[args.best_solver][0]
        best_s = time.time() - t0
        save_layout(lays["ripple"], work / f"ripple-{tag}.layout")
        save_layout(lays["best"], work / f"best-{tag}.layout")
        m = {"mean_sparsity": mean_sp, "sparsity": sparsity, "thresholds": thr, "acc": acc,
             "ripple_solve_s": ripple_s, "best_solve_s": best_s}
        meta_f.write_text(json.dumps(m, default=float))
    packs = {"identity": id_pack,
             "ripple": ensure_pack(h, lays["ripple"], work / f"ripple-{tag}.pack", dtype="fp16"),
             "best": ensure_pack(h, lays["best"], work / f"best-{tag}.pack", dtype="fp16")}
    return {**m, "trace": tr, "layouts": lays, "packs": packs}


def fio_check(pack: Path, h: Any, sp: Any, opts: dict[str, Any], *, budget: float, cm: CostModel,
              prompt: list[int], tokens: int, flash_kw: dict[str, Any] | None, engine: str,
              repeats: int) -> dict[str, Any]:
    """The engine's I/O on one run against fio on the same request lists: the run records every batch it
    submits (prefetch and misses, in issue order) and its own I/O time; :func:`runtime.fio.compare_with_fio` then
    issues the list standalone through the same engine (batched as in the run, and flat) and through fio at the same
    queue depth (page cache dropped before each). ``in_run_over_fio``: the run's submit time / fio's time
    (includes the CPU contention of the running model); ``batched_over_fio``: standalone, barriers per batch;
    ``runtime_over_fio``: standalone, one flat list (like for like with fio). <= 1.25 means >= 0.8x fio's speed."""
    from runtime.fio import compare_with_fio

    batches: list = []
    rep = run_engine(pack, h, sp, opts, budget=budget, cm=cm, prompt=prompt, tokens=tokens, flash_kw=flash_kw,
                     read_log=batches)
    name, _, qd = engine.partition(":")
    res = compare_with_fio(pack, [(o, sz) for o, sz, _ in batches], engine=name, queue_depth=int(qd or 1),
                           repeats=repeats)
    res["run_io_s"] = sum(ns for _, _, ns in batches) / 1e9  # the engine's submit time inside the run
    res["in_run_over_fio"] = res["run_io_s"] / res["fio_s"]["median"] if res["fio_s"]["median"] else None
    res["tokens_run"] = rep["tokens"] + 4
    return res


def same_runs(variants: dict[str, dict[str, Any]]) -> dict[str, str]:
    """For the dense-from-flash pipeline, the first variant that runs the same configuration as each variant:
    the dense plan has no predictor, so only whether a look-ahead is on matters (the other look-ahead options
    and the margins change nothing); those variants share one set of runs."""
    from coact.online import parse_lookahead

    def key(kw: dict[str, Any]) -> str:
        k = {a: b for a, b in kw.items() if a not in ("lookahead", "lookahead_margin", "margin", "predictor")}
        return json.dumps([k, parse_lookahead(kw.get("lookahead", 0)) != "off"], sort_keys=True, default=str)

    first: dict[str, str] = {}
    return {v: first.setdefault(key(kw), v) for v, kw in variants.items()}


def row_of(rep: dict[str, Any]) -> dict[str, Any]:
    ms = rep["ms_per_token"]
    io = ms["io_total"] or 0.0
    over = ms["wall"] / max(ms["compute"] or 0.0, io) if ms["wall"] and max(ms["compute"] or 0.0, io) > 0 else None
    pf = rep["prefetch"]
    return {"tokens_per_s": rep["tokens_per_s"], "ms_per_token": ms["wall"], "p50_ms": ms["p50"],
            "p99_ms": ms["p99"], "compute_ms": ms["compute"], "attention_ms": ms["attention"], "gate_ms": ms["gate"],
            "ffn_ms": ms["ffn"], "decode_cache_ms": ms["decode_and_cache"], "io_wait_ms": ms["io_wait"],
            "io_total_ms": ms["io_total"], "io_hidden_ms": ms["io_hidden"],
            "mb_read_per_token": rep["per_token"]["bytes_read"] / 1e6, "reads_per_token": rep["per_token"]["reads"],
            "hit_rate": rep["hit_rate"], "prefetch_precision": pf["precision_vs_load"],
            "prefetch_recall": pf["recall_vs_load"], "predictor_precision": pf["predictor_precision"],
            "predictor_recall": pf["predictor_recall"], "lookahead_precision": pf.get("lookahead_precision"),
            "lookahead_recall": pf.get("lookahead_recall"), "wall_over_max": over,
            "predict_ms": ms["predict"], "attention_ms_total": ms["attention"],
            "wasted_mb_per_token": rep["per_token"]["wasted_bytes"] / 1e6,
            "covered_per_token": rep["per_token"].get("covered"), "loaded_per_token": rep["per_token"]["loaded"],
            "dram_cache_mb": rep["dram"]["cache_bytes"] / 1e6, "read_buffers_mb": rep["dram"]["read_buffers"] / 1e6}


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16, help="generated tokens per run (after an 8-token prompt)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds per pipeline (median)")
    ap.add_argument("--profile", type=int, default=4096, help="profiling trace tokens")
    ap.add_argument("--ppl-tokens", type=int, default=1024)
    ap.add_argument("--budget", type=float, default=0.10)
    ap.add_argument("--budgets", default="0.05,0.2", help="accuracy budgets (perplexity increase)")
    ap.add_argument("--stress", type=float, default=0.9, help="stress-regime sparsity (0: skip)")
    ap.add_argument("--sweep", default="0,0.05,0.1,0.2,0.4", help="DRAM budgets swept at the +20 %% point")
    ap.add_argument("--engine", default="threads:16")
    ap.add_argument("--best-solver", default="local-search")
    ap.add_argument("--best-time-limit", type=float, default=2.0)
    ap.add_argument("--forward", default="sparse", choices=("dense", "sparse"))
    ap.add_argument("--corpus", default=WIKITEXT)
    ap.add_argument("--cost", default=None, help="cost model JSON (default: a quick profile in the workdir)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "online.json"))
    ap.add_argument("--flash-kw", default="", help="extra FlashModel keyword arguments as JSON, e.g. "
                    "'{\"exact\": false}' (the k-sized compute path)")
    ap.add_argument("--variants", default="", help="JSON {name: extra FlashModel kwargs}: every pipeline runs once "
                    "per variant in the same interleaved rounds, e.g. '{\"off\": {}, \"mid\": {\"lookahead\": 1}}'")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads for the run (0: leave)")
    ap.add_argument("--fio", action="store_true", help="replay one pipeline's request lists with fio")
    ap.add_argument("--fio-point", type=float, default=0.2, help="accuracy budget of the fio check")
    ap.add_argument("--fio-pipeline", default="coact")
    ap.add_argument("--fio-repeats", type=int, default=3)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-online-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    if not direct_io_supported(work):
        sys.exit(f"{work}: no O_DIRECT")
    t_start = time.time()
    load0 = os.getloadavg()
    h = load_model("smollm2")
    stream = tokenize(load_text(args.corpus), h.tokenizer)
    held = max(args.profile, 2048) + 512  # held-out tokens: after the profile and the calibration + validation tokens
    prompt = stream[held + args.ppl_tokens : held + args.ppl_tokens + 8].tolist()
    cached_cm = work / "cost.json"
    cm = CostModel.load(args.cost or cached_cm) if (args.cost or cached_cm.exists()) else quick_cost_model(work, log)
    bb = bundle_bytes("up-down", "fp16", h.d_model)
    ident = Layout.identity(h.n_neurons, h.n_layers, model_id=h.model_id)
    id_pack = ensure_pack(h, ident, work / "identity.pack", dtype="fp16")

    points: list[tuple[str, dict[str, Any]]] = []
    for b in [float(x) for x in args.budgets.split(",") if x]:
        points.append((f"+{b:.0%}", {"budget": b}))
    if args.stress:
        points.append((f"stress {args.stress:.0%}", {"sparsity": args.stress}))

    flash_kw = json.loads(args.flash_kw) if args.flash_kw else {}
    variants: dict[str, dict[str, Any]] = json.loads(args.variants) if args.variants else {"": {}}
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    results: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    fio: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    for label, spec in points:
        log(f"operating point {label}")
        pt = prepare_point(h, args, work, label, spec, ident, id_pack)
        mean_sp, acc, lays, packs = pt["mean_sparsity"], pt["acc"], pt["layouts"], pt["packs"]
        sp = get_sparsifier("cats", sparsity=pt["sparsity"], thresholds=pt["thresholds"])
        log(f"  perplexity {acc['dense']['ppl']:.2f} -> {acc['sparse']['ppl']:.2f} ({acc['ppl_cost']:+.1%}), "
            f"mean sparsity {mean_sp:.3f}")
        prof = pt["trace"].packed()

        def configs(budget: float) -> dict[str, tuple[Path, dict[str, Any], Any]]:
            # coact's cache and collapse choice simulates the profiling trace (minutes on a loaded machine): the
            # resolved options are cached in the workdir next to the layouts and packs they were chosen for
            tag = label.replace(" ", "_").replace("%", "").replace("+", "p")
            cached = work / f"configs-{tag}-{budget}-{args.engine.replace(':', '_')}.pkl"
            if cached.exists():
                log(f"  reusing {cached.name}")
                return pickle.loads(cached.read_bytes())
            out = {}
            for name in PIPES:
                key = LAYOUT_OF[name]
                pipe, opts, notes = resolve_flash_pipeline(name, lays[key], bundle_bytes=bb, budget=budget,
                                                           cost_model=cm, profile_packed=prof,
                                                           engine=args.engine.split(":")[0],
                                                           queue_depth=int(args.engine.split(":")[1]))
                out[name] = (packs[key], opts, pipe.describe())
            cached.write_bytes(pickle.dumps(out))
            return out

        cfgs = configs(args.budget)
        same = same_runs(variants)
        runs = [(v, name) for name in PIPES for v in variants if name != "dense" or same[v] == v]
        per: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in runs}
        for r in range(args.repeats):
            order = runs if r % 2 == 0 else runs[::-1]  # interleaved, alternating order
            for v, name in order:
                pack, opts, _ = cfgs[name]
                la = os.getloadavg()[0]
                per[v, name].append(row_of(run_engine(pack, h, sp, opts, budget=args.budget, cm=cm, prompt=prompt,
                                                      tokens=args.tokens, flash_kw={**flash_kw, **variants[v]})))
                per[v, name][-1]["load1"] = la
                rounds.append({"point": label, "round": r, "pipeline": name, "variant": v, "load1": la,
                               "tokens_per_s": per[v, name][-1]["tokens_per_s"],
                               "wall_over_max": per[v, name][-1]["wall_over_max"]})
                log(f"  round {r} {name}{' ' + v if v else ''}: {per[v, name][-1]['tokens_per_s']:.2f} tok/s "
                    f"(load {la:.1f})")
        for v, name in [(v, name) for name in PIPES for v in variants]:
            src = (same[v] if name == "dense" else v, name)  # dense: the variant it shares its runs with
            tps = [x["tokens_per_s"] for x in per[src]]
            results.append({"point": label, "pipeline": name, "variant": v, "flash_kw": {**flash_kw, **variants[v]},
                            "runs_of": src[0],
                            "budget": args.budget, "mean_sparsity": mean_sp,
                            "ppl_dense": acc["dense"]["ppl"], "ppl": acc["sparse"]["ppl"],
                            "ppl_cost": acc["ppl_cost"], "config": cfgs[name][2],
                            "ripple_solve_s": pt["ripple_solve_s"], "best_solve_s": pt["best_solve_s"],
                            "tokens_per_s_rounds": tps, **median_row(per[src])})
        if args.fio and label == f"+{args.fio_point:.0%}":
            pack, opts, _ = cfgs[args.fio_pipeline]
            fio = fio_check(pack, h, sp, opts, budget=args.budget, cm=cm, prompt=prompt, tokens=args.tokens,
                            flash_kw=flash_kw, engine=args.engine, repeats=args.fio_repeats)
            fio["point"], fio["pipeline"] = label, args.fio_pipeline
            log(f"  fio: in-run I/O / fio {fio['in_run_over_fio']:.2f}, standalone batched / fio "
                f"{fio['batched_over_fio']:.2f}, flat / fio {fio['runtime_over_fio']:.2f}")
        if "budget" in spec and abs(spec["budget"] - 0.2) < 1e-9 and args.sweep:
            for b in [float(x) for x in args.sweep.split(",") if x]:
                cfg_b = configs(b)
                for name in PIPES:
                    if name == "dense" and b > 0:
                        continue  # no cache: the budget does not change it
                    pack, opts, desc = cfg_b[name]
                    row = row_of(run_engine(pack, h, sp, opts, budget=b, cm=cm, prompt=prompt, tokens=args.tokens,
                                            flash_kw=flash_kw))
                    sweep.append({"point": label, "pipeline": name, "budget": b, "ppl": acc["sparse"]["ppl"],
                                  "config": desc, **row})
                    log(f"  sweep {b:.0%} {name}: {row['tokens_per_s']:.2f} tok/s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": vars(args), "command": " ".join(sys.argv), "load_avg_start": load0,
            "load_avg_end": os.getloadavg(),
            "wall_s": time.time() - t_start, "prompt_tokens": len(prompt)}
    out.write_text(json.dumps({"meta": meta, "rows": results, "sweep": sweep, "rounds": rounds, "fio": fio},
                              indent=1, default=str))
    md = render(results, sweep, meta)
    out.with_suffix(".md").write_text(md)
    if not args.no_plot:
        plot([r for r in results if r["variant"] == next(iter(variants))], sweep, out.parent)
    print(md)


def _f(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render(results: list[dict[str, Any]], sweep: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    variants = list(dict.fromkeys(r.get("variant", "") for r in results))
    lines = [f"load average {meta['load_avg_start'][0]:.1f} -> {meta['load_avg_end'][0]:.1f}; "
             f"{meta['wall_s'] / 60:.0f} min", "",
             "| point | variant | pipeline | ppl (cost) | tok/s | vs coact | ms/tok | p99 | compute | I/O wait | "
             "I/O total | I/O hidden | wall / max(compute, I/O) | MB/tok | reads/tok | hit | prefetch prec/rec | "
             "look-ahead prec/rec |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_point: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        by_point.setdefault((r["point"], r.get("variant", "")), {})[r["pipeline"]] = r
    for (point, variant), rows in by_point.items():
        c = rows.get("coact", {}).get("tokens_per_s")
        for name, r in rows.items():
            vs = (c / r["tokens_per_s"]) if c and r["tokens_per_s"] else None
            lines.append(f"| {point} | {variant or '-'} | {name} | {r['ppl']:.2f} ({r['ppl_cost']:+.1%}) | "
                         f"{_f(r['tokens_per_s'])} | {_f(vs)}x | {_f(r['ms_per_token'], '.0f')} | "
                         f"{_f(r['p99_ms'], '.0f')} | {_f(r['compute_ms'], '.0f')} | {_f(r['io_wait_ms'], '.0f')} | "
                         f"{_f(r['io_total_ms'], '.0f')} | {_f(r['io_hidden_ms'], '.0f')} | "
                         f"{_f(r.get('wall_over_max'))} | {_f(r['mb_read_per_token'], '.1f')} | "
                         f"{_f(r['reads_per_token'], '.0f')} | {_f(r['hit_rate'])} | "
                         f"{_f(r['prefetch_precision'])}/{_f(r['prefetch_recall'])} | "
                         f"{_f(r.get('lookahead_precision'))}/{_f(r.get('lookahead_recall'))} |")
    if len(variants) > 1:
        lines += ["", f"Each variant against `{variants[0]}` (median over rounds of the per-round tok/s ratio, the "
                  "two runs of a round being adjacent in time):", "",
                  "| point | pipeline | " + " | ".join(f"{v} tok/s" for v in variants) + " | "
                  + " | ".join(f"{v} / {variants[0]}" for v in variants[1:]) + " |",
                  "|---|---|" + "---|" * (2 * len(variants) - 1)]
        for point in dict.fromkeys(r["point"] for r in results):
            for name in PIPES:
                rs = [by_point.get((point, v), {}).get(name) for v in variants]
                if rs[0] is None or any(x is None for x in rs):
                    continue
                ratios = [statistics.median(a / b for a, b in zip(x["tokens_per_s_rounds"],
                                                                  rs[0]["tokens_per_s_rounds"])) for x in rs[1:]]
                lines.append(f"| {point} | {name} | " + " | ".join(_f(x["tokens_per_s"]) for x in rs) + " | "
                             + " | ".join(f"{q:.2f}x" for q in ratios) + " |")
        lines += ["", "Targets (coact over the other pipeline, median tok/s; per variant, and coact of each variant "
                  f"over dense-from-flash of `{variants[0]}`):", "",
                  "| point | variant | coact / llmflash | coact / ripple | coact / dense | coact / dense "
                  f"({variants[0]}) | wall / max(compute, I/O) coact | dense |", "|---|---|---|---|---|---|---|---|"]
        for (point, variant), rows in by_point.items():
            c = rows.get("coact", {}).get("tokens_per_s")
            d0 = by_point.get((point, variants[0]), {}).get("dense", {}).get("tokens_per_s")

            def over(name: str) -> str:
                t = rows.get(name, {}).get("tokens_per_s")
                return f"{c / t:.2f}x" if c and t else "-"

            lines.append(f"| {point} | {variant} | {over('llmflash')} | {over('ripple')} | {over('dense')} | "
                         f"{_f(c / d0 if c and d0 else None)}x | {_f(rows.get('coact', {}).get('wall_over_max'))} | "
                         f"{_f(rows.get('dense', {}).get('wall_over_max'))} |")
    if sweep:
        lines += ["", "| DRAM budget | pipeline | tok/s | ms/tok | MB/tok | hit |", "|---|---|---|---|---|---|"]
        for r in sweep:
            lines.append(f"| {r['budget']:.0%} | {r['pipeline']} | {_f(r['tokens_per_s'])} | "
                         f"{_f(r['ms_per_token'], '.0f')} | {_f(r['mb_read_per_token'], '.1f')} | {_f(r['hit_rate'])} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], sweep: list[dict[str, Any]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in PIPES:
            pts = sorted((r["budget"], r["tokens_per_s"]) for r in sweep if r["pipeline"] == name)
            if name == "dense" and pts:
                ax.axhline(pts[0][1], ls="--", color="grey", label="dense from flash")
            elif pts:
                ax.plot([100 * b for b, _ in pts], [t for _, t in pts], marker="o", label=name)
        ax.set_xlabel("DRAM cache budget (% of FFN bytes)")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"SmolLM2 from flash at {sweep[0]['point']} perplexity (ppl {sweep[0]['ppl']:.1f})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "online_sweep.png", dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in PIPES:
        pts = sorted((r["ms_per_token"], r["ppl"], r["point"]) for r in results if r["pipeline"] == name
                     and r["ms_per_token"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    dense_ppl = results[0]["ppl_dense"] if results else None
    if dense_ppl:
        ax.axhline(dense_ppl, ls=":", color="black", label=f"dense model ({dense_ppl:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("ms per token (wall)")
    ax.set_ylabel("perplexity (held-out WikiText-2)")
    ax.set_title("accuracy vs latency per pipeline (10 % DRAM)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "online_accuracy_latency.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
