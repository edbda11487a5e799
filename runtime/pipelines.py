"""Named, reproducible pipelines (layout + cache + collapse + engine) and their side-by-side real comparison.

Why named pipelines: a number like "3x faster" means nothing unless both sides are fixed, complete configurations
run on the same trace, the same DRAM budget, the same disk and the same engine (docs/DESIGN.md §5). Each pipeline
here is one such configuration; :func:`compare_real` replays them interleaved on one held-out trace and reports the
metrics of docs/DESIGN.md §2 plus the physical limit.

The pipelines (docs/DESIGN.md §5), registered in :data:`PIPELINES` with the layout each needs (``.layout``,
see :func:`required_layouts`):

- ``dense``: every layer's whole FFN region read sequentially (1 MiB requests), no sparsity, no cache: what
  running the model from flash without any predictor costs.
- ``llmflash`` ("LLM in a flash", Alizadeh et al., 2024): original neuron order (identity layout), up-down bundles,
  the windowing cache (neurons of the last k = 5 tokens stay in DRAM), no access collapse, parallel reads.
- ``ripple`` (Ripple, Wang et al., 2024; Neuralink, Wang et al., 2025): the Ripple-greedy layout, access collapse
  at the cost model's break-even gap, the Ripple cache (S3-FIFO with run-aware admission), parallel reads.
- ``coact``: the best layout given (layout key ``best``), and the cache policy and collapse gap that minimise the
  *modelled* I/O time per token (device cost model) in simulation on a part of the **profiling** trace (never the
  held-out text): candidates are every registered dynamic policy, the pinned hot set, pinned + each dynamic policy
  at pinned fractions 0.5 and 0.8, each with collapse 0 and ``auto`` (:func:`choose_coact`).

Every pipeline gets the same DRAM budget in bytes (default 10 % of the FFN bytes of all layers, i.e.
``budget_fraction * sum_l N_l * bundle_bytes``) and the same engine (``threads`` at one queue depth) unless told
otherwise, so the comparison isolates placement, cache and collapse.

The **physical limit** of a pipeline is the bytes it must load (its active bundles minus its cache hits, i.e.
``bytes_requested``) read at the disk's peak sequential bandwidth (from the device profile): no request overhead,
no over-read. ``limit_ms_per_token`` is reported per pipeline, and ``ratio_to_limit`` = measured / limit.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from rich.table import Table

from common.bits import pack_bits, unpack_bits
from common.progress import ProgressFn
from common.registry import Registry
from runtime.caches import DYNAMIC_POLICIES, available_caches, get_cache, load_masks
from runtime.direct import drop_page_cache
from runtime.errors import PipelineError
from runtime.layout import Layout
from runtime.pack import PackFile
from runtime.replay import replay, simulate
from runtime.report import rich_table, spread

DEFAULT_BUDGET_FRACTION = 0.10
DEFAULT_ENGINE = "threads"
DEFAULT_QUEUE_DEPTH = 16
SWEEP_FRACTIONS = (0.0, 0.05, 0.10, 0.20, 0.40)


@dataclass(frozen=True)
class Pipeline:
    """One complete configuration.

    Attributes:
        name: registry name.
        layout: key into the `layouts` / `packs` mappings (``identity`` is always available as a layout).
        cache: cache policy name (:mod:`runtime.caches`); ``none`` for no cache; ``auto`` for coact's choice.
        cache_params: extra policy parameters (``freq`` for pinned policies is supplied by the caller).
        collapse: access-collapse gap in bundles or ``"auto"`` (cost model break-even).
        engine: I/O engine name; queue_depth: requests in flight.
        dense: read whole layers instead of active neurons.
        note: one line saying what it reproduces.
    """

    name: str
    layout: str
    cache: str = "none"
    cache_params: Mapping[str, Any] = field(default_factory=dict)
    collapse: int | str = 0
    engine: str = DEFAULT_ENGINE
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    dense: bool = False
    note: str = ""

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["cache_params"] = {k: v for k, v in dict(self.cache_params).items() if k != "freq"}
        return d


#: name -> :class:`Pipeline` (the registry holds the configurations themselves; the description is `note`).
PIPELINES: Registry = Registry("pipeline")
_ORDER: list[str] = []  # registration order: the order comparisons run and report in


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    """Add `pipeline` under its name (a taken name is refused: :class:`common.errors.RegistryError`)."""
    PIPELINES.add(pipeline.name, pipeline, pipeline.note)
    _ORDER.append(pipeline.name)
    return pipeline


register_pipeline(Pipeline("dense", "identity", dense=True,
                           note="whole FFN regions read sequentially (no sparsity)"))
register_pipeline(Pipeline("llmflash", "identity", cache="window", cache_params={"k": 5}, collapse=0,
                           note="LLM in a flash: original order, window cache k=5, no collapse, parallel reads"))
register_pipeline(Pipeline("ripple", "ripple", cache="ripple", collapse="auto",
                           note="Ripple: greedy co-activation layout, collapse at break-even, run-aware S3-FIFO"))
register_pipeline(Pipeline("coact", "best", cache="auto", collapse="auto",
                           note="coact: best layout; cache and collapse chosen by simulation on the profiling trace"))


def available_pipelines() -> list[str]:
    """Registered pipeline names, in registration order (dense, llmflash, ripple, coact, then any added)."""
    return list(_ORDER)


def get_pipeline(name: str, **overrides: Any) -> Pipeline:
    """A registered pipeline, optionally with fields overridden (e.g. ``engine="uring", queue_depth=32``).

    Raises :class:`common.errors.RegistryError` for an unknown name and :class:`PipelineError` for an unknown field.
    """
    p: Pipeline = PIPELINES.get(name)
    if not overrides:
        return p
    try:
        return replace(p, **overrides)
    except TypeError as e:
        raise PipelineError(f"bad override for pipeline {name!r}: {e}") from None


def required_layouts(names: Sequence[str | Pipeline]) -> dict[str, str]:
    """{pipeline name: the layout key it reads} (``identity``, ``ripple``, ``best`` ...), so a front end knows which
    layouts or packs to ask for without restating it."""
    out: dict[str, str] = {}
    for item in names:
        p = item if isinstance(item, Pipeline) else get_pipeline(item)
        out[p.name] = p.layout
    return out


def ffn_bytes(layout: Layout, bundle_bytes: int) -> int:
    """Bytes of all FFN bundles of the model (the 100 % of a DRAM budget fraction)."""
    return int(sum(layout.n_neurons)) * int(bundle_bytes)


def budget_bytes_for(layout: Layout, bundle_bytes: int, fraction: float) -> int:
    """The DRAM budget in bytes for a fraction of all FFN bytes (the one budget every pipeline gets)."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise PipelineError(f"budget fraction must be in [0, 1], got {fraction}")
    return int(float(fraction) * ffn_bytes(layout, bundle_bytes))


def _needs_freq(policy: str) -> bool:
    return policy.startswith("pinned")


def make_cache(pipeline: Pipeline, budget_bytes: int, bundle_bytes: int, freq: np.ndarray | None) -> Any:
    """A fresh cache for `pipeline` (None for dense / ``none``); pinned policies get `freq`."""
    if pipeline.dense or pipeline.cache in ("none", None):
        return None
    params = dict(pipeline.cache_params)
    if _needs_freq(pipeline.cache):
        if freq is None:
            raise PipelineError(f"pipeline {pipeline.name!r} uses cache {pipeline.cache!r}, which needs activation "
                             f"frequencies (freq[L, N] from the profiling statistics)")
        params["freq"] = freq
    return get_cache(pipeline.cache, budget_bytes, bundle_bytes, **params)


# ------------------------------------------------------------------------------------------------ coact's choice


def coact_candidates() -> list[tuple[str, dict[str, Any]]]:
    """(policy, params) pairs :func:`choose_coact` tries."""
    dyn = [c for c in DYNAMIC_POLICIES if c in available_caches()]
    out: list[tuple[str, dict[str, Any]]] = [("none", {})]
    out += [(c, {}) for c in dyn]
    out.append(("pinned", {}))
    for c in dyn:
        for frac in (0.5, 0.8):
            out.append((f"pinned+{c}", {"pinned_fraction": frac}))
    return out


def load_sets(layout: Layout, packed: np.ndarray, cache: Any, *, chunk: int = 256) -> np.ndarray:
    """The bit-packed load sets (active minus resident) of `packed` [T, L, nb] through `cache` (None: a copy).

    Same cache protocol and order as the planner (tokens in order, layers in order, run lengths for run-aware
    policies), so ``simulate(layout, load_sets(...))`` without a cache counts exactly what
    ``simulate(layout, packed, cache=...)`` counts, except ``active`` (which becomes the loaded count).
    """
    if cache is None:
        return np.array(packed, copy=True)
    out = np.zeros_like(np.asarray(packed))
    L = layout.n_layers
    for a in range(0, packed.shape[0], chunk):
        block = np.asarray(packed[a : a + chunk])
        Tc = block.shape[0]
        active = [unpack_bits(block[:, l, :], layout.n_neurons[l]) for l in range(L)]
        load = load_masks(cache, active, range(L), layout.inverses)
        for l in range(L):
            bits = pack_bits(load[l])
            out[a : a + Tc, l, : bits.shape[1]] = bits
    return out


def choose_coact(
    layout: Layout,
    profile_packed: np.ndarray,
    *,
    bundle_bytes: int,
    budget_bytes: int,
    cost_model: Any,
    freq: np.ndarray | None = None,
    queue_depth: int = DEFAULT_QUEUE_DEPTH,
    candidates: Sequence[tuple[str, dict[str, Any]]] | None = None,
    collapses: Sequence[int | str] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Pipeline, list[dict[str, Any]]]:
    """Pick coact's cache policy and collapse gap: the candidate with the lowest modelled I/O ms/token.

    Simulated (no disk) with `cost_model` at `queue_depth` on `profile_packed` (bit-packed active sets of
    profiling tokens, NOT the held-out trace). Pinned candidates are skipped when `freq` is None. Collapse gaps
    tried: 0, the cost model's break-even gap g ("auto"), g // 2 and 2 g (the break-even ignores 4 KiB alignment
    and how runs cluster, so its neighbours are worth a look). Ties go to the earlier candidate (simpler policies
    come first). Returns (the pipeline, one row per candidate).
    """
    if collapses is None:
        g = int(cost_model.collapse_gap(bundle_bytes, queue_depth))
        collapses = list(dict.fromkeys([0, max(1, g // 2) if g else 0, g, 2 * g]))
    rows: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    cands = list(candidates if candidates is not None else coact_candidates())
    n = layout.n_neurons
    active_total = None
    for policy, params in cands:
        if _needs_freq(policy) and freq is None:
            continue
        p = Pipeline("coact", "best", cache=policy, cache_params=dict(params), queue_depth=queue_depth)
        # the cache does not depend on the collapse gap: filter once, then plan every gap on the load sets
        loads = load_sets(layout, profile_packed, make_cache(p, budget_bytes, bundle_bytes, freq))
        for col in collapses:
            rep = simulate(layout, loads, n, bundle_bytes=bundle_bytes, collapse_gap=col,
                           cost_model=cost_model, queue_depth=queue_depth)
            if active_total is None and policy == "none":
                active_total = rep.active
            if active_total is None:
                active_total = simulate(layout, profile_packed, n, bundle_bytes=bundle_bytes).active
            row = {"cache": policy, "params": dict(params), "collapse": col,
                   "collapse_gap": rep.config["collapse_gap"], "model_ms_per_token": rep.latency_ms_mean,
                   "reads_per_token": rep.reads_per_token,
                   "hit_rate": 1.0 - rep.loaded / active_total if active_total else None}
            rows.append(row)
            if log:
                log(f"  coact candidate {policy} {params or ''} collapse={col}: "
                    f"{rep.latency_ms_mean:.3f} ms/token (model)")
            key = (float(rep.latency_ms_mean or 0.0), len(rows) - 1)
            if best is None or key < best:
                best = key
    if best is None:
        raise PipelineError("no coact candidate could be simulated (pinned policies need freq)")
    win = rows[best[1]]
    pipe = Pipeline("coact", "best", cache=win["cache"], cache_params=win["params"], collapse=win["collapse"],
                    queue_depth=queue_depth,
                    note=f"coact: best layout, {win['cache']} cache, collapse {win['collapse']} "
                         f"(chosen by modelled latency on profiling tokens)")
    return pipe, rows


# ---------------------------------------------------------------------------------------------- real comparison


def _pack_info(path: str | os.PathLike[str]) -> tuple[int, Layout]:
    with PackFile(path) as pf:
        return pf.bundle_bytes, pf.layout()


def resolve_pipelines(
    names: Sequence[str | Pipeline],
    *,
    layouts: Mapping[str, Layout],
    bundle_bytes: int,
    budget_bytes: int,
    cost_model: Any = None,
    freq: np.ndarray | None = None,
    profile_packed: np.ndarray | None = None,
    engine: str | None = None,
    queue_depth: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[Pipeline], dict[str, Any]]:
    """Concrete pipelines: engine/queue depth overrides applied, coact's ``auto`` cache chosen by simulation.

    Without `profile_packed` (or a cost model), coact falls back to ``pinned+window`` (pinned fraction 0.5) with
    collapse ``auto`` (or 0 without a cost model), and says so in the returned notes.
    """
    out: list[Pipeline] = []
    notes: dict[str, Any] = {}
    for item in names:
        p = item if isinstance(item, Pipeline) else get_pipeline(item)
        over: dict[str, Any] = {}
        if engine is not None:
            over["engine"] = engine
        if queue_depth is not None:
            over["queue_depth"] = int(queue_depth)
        p = replace(p, **over) if over else p
        if p.cache == "auto":
            if p.layout not in layouts:
                raise PipelineError(f"pipeline {p.name!r} needs layout {p.layout!r}; given: {', '.join(layouts)}")
            if profile_packed is not None and cost_model is not None:
                chosen, rows = choose_coact(layouts[p.layout], profile_packed, bundle_bytes=bundle_bytes,
                                            budget_bytes=budget_bytes, cost_model=cost_model, freq=freq,
                                            queue_depth=p.queue_depth, log=log)
                p = replace(chosen, name=p.name, layout=p.layout, engine=p.engine)
                notes[p.name] = {"selection": "simulation on profiling tokens", "candidates": rows}
            else:
                policy = "pinned+window" if freq is not None else "window"
                p = replace(p, cache=policy, cache_params={"pinned_fraction": 0.5} if freq is not None else {},
                            collapse="auto" if cost_model is not None else 0)
                notes[p.name] = {"selection": f"fixed fallback ({policy}); no profiling trace or cost model given"}
        if p.collapse == "auto" and cost_model is None:
            raise PipelineError(f"pipeline {p.name!r} uses collapse 'auto', which needs a device cost model")
        out.append(p)
    return out, notes


def compare_real(
    pipelines: Sequence[str | Pipeline],
    heldout_packed: np.ndarray,
    *,
    packs: Mapping[str, str | os.PathLike[str]],
    layouts: Mapping[str, Layout] | None = None,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
    repeats: int = 3,
    cost_model: Any = None,
    freq: np.ndarray | None = None,
    profile_packed: np.ndarray | None = None,
    engine: str | None = None,
    queue_depth: int | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay every pipeline on the same held-out trace with real O_DIRECT reads, interleaved, `repeats` times.

    Args:
        pipelines: names from :data:`PIPELINES` (or :class:`Pipeline` objects).
        heldout_packed: uint8 [T, L, nb] bit-packed active sets of held-out tokens.
        packs: pack file per layout key (``identity``, ``ripple``, ``best`` ...); the layout is read from the pack
            unless `layouts` gives it.
        budget_fraction: DRAM budget as a fraction of all FFN bytes (one budget for every pipeline).
        repeats: rounds; in each round every pipeline runs once, in the given order (round-robin), with the page
            cache of its pack dropped first and a fresh cache.
        cost_model: :class:`runtime.device.CostModel` (needed for collapse ``auto``, coact's choice and the
            physical limit).
        freq: int [L, N] activation counts of the profiling trace (pinned policies).
        profile_packed: profiling tokens for coact's choice (see :func:`choose_coact`).
        engine / queue_depth: override every pipeline's engine / depth.
        progress: passed to every :func:`runtime.replay.replay` (None: silent).

    Returns a plain dict: ``config`` (budget, repeats, tokens, cost model summary), ``pipelines`` (one dict per
    pipeline: its configuration, counts, I/O ms/token mean/p50/p99 as min/median/max over repeats, reads/token,
    bytes read, effective bandwidth, hit rate, physical limit), and ``notes`` (coact's selection).
    """
    if not packs:
        raise PipelineError("no pack files given")
    lays: dict[str, Layout] = dict(layouts or {})
    bbs = {}
    for key, path in packs.items():
        bb, lay = _pack_info(path)
        bbs[key] = bb
        lays.setdefault(key, lay)
    if len(set(bbs.values())) != 1:
        raise PipelineError(f"pack files have different bundle sizes: {bbs}")
    bb = next(iter(bbs.values()))
    ref = next(iter(lays.values()))
    if "identity" not in lays:
        lays["identity"] = Layout.identity(ref.n_neurons, model_id=ref.model_id)
    budget = budget_bytes_for(ref, bb, budget_fraction)
    pipes, notes = resolve_pipelines(pipelines, layouts=lays, bundle_bytes=bb, budget_bytes=budget,
                                     cost_model=cost_model, freq=freq, profile_packed=profile_packed,
                                     engine=engine, queue_depth=queue_depth, log=log)
    for p in pipes:
        if p.layout not in packs:
            raise PipelineError(f"pipeline {p.name!r} needs a pack for layout {p.layout!r}; given: {', '.join(packs)}")
    reports: dict[str, list[Any]] = {p.name: [] for p in pipes}
    T = int(heldout_packed.shape[0])
    for r in range(int(repeats)):
        for p in pipes:
            path = packs[p.layout]
            drop_page_cache(path)
            cache = make_cache(p, budget, bb, freq)
            if log:
                log(f"[repeat {r + 1}/{repeats}] {p.name}: {p.layout} layout, cache {p.cache}, collapse {p.collapse}, "
                    f"{p.engine}:{p.queue_depth}{' (dense)' if p.dense else ''}")
            t0 = time.perf_counter()
            rep = replay(path, lays[p.layout], heldout_packed, collapse_gap=p.collapse, engine=p.engine,
                         engine_params={"queue_depth": p.queue_depth} if p.engine != "sync" else None,
                         cache=cache, dense=p.dense, cost_model=cost_model, progress=progress)
            rep.config["wall_s"] = time.perf_counter() - t0
            if reports[p.name] and rep.counts_dict() != reports[p.name][0].counts_dict():
                raise RuntimeError(f"pipeline {p.name}: counts differ between repeats (a non-deterministic cache?)")
            reports[p.name].append(rep)
    rows = []
    for p in pipes:
        reps = reports[p.name]
        first = reps[0]
        sim_ms = None
        if cost_model is not None:
            sim = simulate(lays[p.layout], heldout_packed, lays[p.layout].n_neurons, bundle_bytes=bb,
                           collapse_gap=p.collapse, cache=make_cache(p, budget, bb, freq), dense=p.dense,
                           cost_model=cost_model, queue_depth=p.queue_depth)
            sim_ms = sim.latency_ms_mean
        limit_ms = (cost_model.physical_limit_s(first.bytes_requested_per_token or 0.0) * 1e3
                    if cost_model is not None else None)
        mean = spread([x.latency_ms_mean for x in reps])
        rows.append({
            "pipeline": p.name,
            "config": {**p.describe(), "collapse_gap": first.config["collapse_gap"],
                       "cache_config": first.config["cache"]},
            "n_tokens": T,
            "io_ms_per_token": {"mean": mean, "p50": spread([x.latency_ms_p50 for x in reps]),
                                "p99": spread([x.latency_ms_p99 for x in reps])},
            "reads_per_token": first.reads_per_token,
            "runs_per_token": first.runs_per_token,
            "mean_run_length": first.mean_run_length,
            "bytes_requested_per_token": first.bytes_requested_per_token,
            "bytes_read_per_token": first.bytes_read_per_token,
            "bytes_read": first.bytes_read,
            "overread": first.overread,
            "hit_rate": first.hit_rate,
            "effective_bandwidth": spread([x.effective_bandwidth for x in reps]),
            "read_bandwidth": spread([x.read_bandwidth for x in reps]),
            "model_ms_per_token": sim_ms,
            "limit_ms_per_token": limit_ms,
            "ratio_to_limit": (mean["median"] / limit_ms if limit_ms and mean["median"] is not None else None),
            "repeats_ms_per_token": [x.latency_ms_mean for x in reps],
        })
    return {
        "config": {"budget_fraction": float(budget_fraction), "budget_bytes": budget, "ffn_bytes": ffn_bytes(ref, bb),
                   "bundle_bytes": bb, "repeats": int(repeats), "n_tokens": T, "interleaved": "round-robin",
                   "cost_model": cost_model.summary() if cost_model is not None else None,
                   "seq_bandwidth": cost_model.seq_bandwidth if cost_model is not None else None,
                   "o_direct": True, "page_cache": "dropped (posix_fadvise DONTNEED) before every run"},
        "pipelines": rows,
        "notes": notes,
    }


def speedups(result: dict[str, Any], reference: str = "coact") -> dict[str, float | None]:
    """Median I/O ms/token of every pipeline divided by the reference pipeline's (how many times faster it is)."""
    by = {r["pipeline"]: r["io_ms_per_token"]["mean"]["median"] for r in result["pipelines"]}
    ref = by.get(reference)
    return {k: (v / ref if ref and v is not None else None) for k, v in by.items() if k != reference}


def _f(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def comparison_rows(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, one formatted row per pipeline) of :func:`compare_real`'s result: plain data for any front
    end (:func:`comparison_table` wraps it in a rich Table)."""
    cfg = result["config"]
    title = (f"real O_DIRECT replay: {cfg['n_tokens']} held-out tokens, DRAM budget "
             f"{100 * cfg['budget_fraction']:.0f} % ({cfg['budget_bytes'] / 2**20:.1f} MiB), "
             f"{cfg['repeats']} repeats (min/median/max)")
    cols = ["pipeline", "ms/token mean", "p50", "p99", "reads/token", "KiB read/token", "hit rate", "eff. MB/s",
            "limit ms", "x limit"]
    rows = []
    for r in result["pipelines"]:
        m = r["io_ms_per_token"]
        rows.append([r["pipeline"], f"{_f(m['mean']['median'])} [{_f(m['mean']['min'])}-{_f(m['mean']['max'])}]",
                     _f(m["p50"]["median"]), _f(m["p99"]["median"]), _f(r["reads_per_token"], ".1f"),
                     _f((r["bytes_read_per_token"] or 0) / 1024, ".0f"),
                     _f(None if r["hit_rate"] is None else 100 * r["hit_rate"], ".1f"),
                     _f((r["effective_bandwidth"]["median"] or 0) / 1e6, ".0f"), _f(r["limit_ms_per_token"], ".3f"),
                     _f(r["ratio_to_limit"], ".2f")])
    return title, cols, rows


def comparison_table(result: dict[str, Any]) -> Table:
    """A rich Table of :func:`comparison_rows` (one row per pipeline)."""
    return rich_table(*comparison_rows(result))


# ------------------------------------------------------------------------------------------------- budget sweep


def budget_sweep(
    pipelines: Sequence[str | Pipeline],
    heldout_packed: np.ndarray,
    *,
    packs: Mapping[str, str | os.PathLike[str]],
    fractions: Sequence[float] = SWEEP_FRACTIONS,
    repeats: int = 1,
    real: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """I/O ms/token of every pipeline at every DRAM budget fraction (real replays, or modelled with
    ``real=False``). The ``dense`` pipeline takes no cache, so it is measured once and repeated in every column.
    coact's cache/collapse is re-chosen at every budget. Other keyword arguments go to :func:`compare_real`.

    Returns {"fractions": [...], "rows": [{"pipeline", "fraction", "ms_per_token" (median), "min", "max",
    "model_ms_per_token", "reads_per_token", "hit_rate", "limit_ms_per_token"}], "results": {fraction: result}}.
    """
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    names = [p if isinstance(p, str) else p.name for p in pipelines]
    dense_row: dict[str, Any] | None = None
    for frac in fractions:
        todo = [p for p, n in zip(pipelines, names) if not (n == "dense" and dense_row is not None)]
        res = compare_real(todo, heldout_packed, packs=packs, budget_fraction=frac,
                           repeats=repeats if real else 0, **kwargs) if real else \
            _modelled(todo, heldout_packed, packs=packs, budget_fraction=frac, **kwargs)
        results[f"{frac:g}"] = res
        for r in res["pipelines"]:
            row = {"pipeline": r["pipeline"], "fraction": float(frac),
                   "ms_per_token": r["io_ms_per_token"]["mean"]["median"],
                   "min": r["io_ms_per_token"]["mean"]["min"], "max": r["io_ms_per_token"]["mean"]["max"],
                   "model_ms_per_token": r["model_ms_per_token"], "reads_per_token": r["reads_per_token"],
                   "hit_rate": r["hit_rate"], "limit_ms_per_token": r["limit_ms_per_token"],
                   "cache": r["config"]["cache"], "collapse_gap": r["config"]["collapse_gap"]}
            if r["pipeline"] == "dense":
                dense_row = row
            rows.append(row)
        if dense_row is not None and "dense" in names and not any(
                x["pipeline"] == "dense" and x["fraction"] == float(frac) for x in rows):
            rows.append({**dense_row, "fraction": float(frac)})
    return {"fractions": [float(f) for f in fractions], "rows": rows, "results": results}


def _modelled(pipelines: Sequence[str | Pipeline], heldout_packed: np.ndarray, *,
              packs: Mapping[str, str | os.PathLike[str]], budget_fraction: float, cost_model: Any = None,
              freq: np.ndarray | None = None, profile_packed: np.ndarray | None = None,
              layouts: Mapping[str, Layout] | None = None, engine: str | None = None,
              queue_depth: int | None = None, log: Callable[[str], None] | None = None,
              **_: Any) -> dict[str, Any]:
    """Like :func:`compare_real` but simulated with the cost model (no disk reads)."""
    if cost_model is None:
        raise PipelineError("a modelled sweep needs a device cost model")
    lays: dict[str, Layout] = dict(layouts or {})
    bb = None
    for key, path in packs.items():
        b, lay = _pack_info(path)
        bb = b
        lays.setdefault(key, lay)
    assert bb is not None
    ref = next(iter(lays.values()))
    lays.setdefault("identity", Layout.identity(ref.n_neurons, model_id=ref.model_id))
    budget = budget_bytes_for(ref, bb, budget_fraction)
    pipes, notes = resolve_pipelines(pipelines, layouts=lays, bundle_bytes=bb, budget_bytes=budget,
                                     cost_model=cost_model, freq=freq, profile_packed=profile_packed,
                                     engine=engine, queue_depth=queue_depth, log=log)
    rows = []
    for p in pipes:
        sim = simulate(lays[p.layout], heldout_packed, lays[p.layout].n_neurons, bundle_bytes=bb,
                       collapse_gap=p.collapse, cache=make_cache(p, budget, bb, freq), dense=p.dense,
                       cost_model=cost_model, queue_depth=p.queue_depth)
        ms = sim.latency_ms_mean
        rows.append({"pipeline": p.name, "config": {**p.describe(), "collapse_gap": sim.config["collapse_gap"]},
                     "io_ms_per_token": {"mean": {"min": ms, "median": ms, "max": ms}},
                     "model_ms_per_token": ms, "reads_per_token": sim.reads_per_token, "hit_rate": sim.hit_rate,
                     "limit_ms_per_token": cost_model.physical_limit_s(sim.bytes_requested_per_token or 0) * 1e3})
    return {"config": {"budget_fraction": budget_fraction, "budget_bytes": budget, "mode": "modelled"},
            "pipelines": rows, "notes": notes}


def sweep_rows(sweep: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, rows) of a budget sweep: one row per pipeline, one column per budget fraction (median
    ms/token); plain data for any front end (:func:`sweep_table` wraps it in a rich Table)."""
    fr = sweep["fractions"]
    cols = ["pipeline", *[f"{100 * f:g} %" for f in fr]]
    rows = []
    for n in dict.fromkeys(r["pipeline"] for r in sweep["rows"]):
        vals = {r["fraction"]: r["ms_per_token"] for r in sweep["rows"] if r["pipeline"] == n}
        rows.append([n, *[("-" if vals.get(f) is None else f"{vals[f]:.2f}") for f in fr]])
    return "I/O ms/token vs DRAM budget (median over repeats)", cols, rows


def sweep_table(sweep: dict[str, Any]) -> Table:
    """A rich Table of :func:`sweep_rows`."""
    return rich_table(*sweep_rows(sweep), first_left=True)


def plot_budget_sweep(sweep: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Line plot of I/O ms/token vs DRAM budget (% of FFN bytes), one line per pipeline (min-max as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = list(dict.fromkeys(r["pipeline"] for r in sweep["rows"]))
    for n in names:
        rs = sorted((r for r in sweep["rows"] if r["pipeline"] == n and r["ms_per_token"] is not None),
                    key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rs]
        y = [r["ms_per_token"] for r in rs]
        lo = [r["ms_per_token"] - (r["min"] if r["min"] is not None else r["ms_per_token"]) for r in rs]
        hi = [(r["max"] if r["max"] is not None else r["ms_per_token"]) - r["ms_per_token"] for r in rs]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=n)
    ax.set_xlabel("DRAM budget (% of FFN bytes)")
    ax.set_ylabel("I/O ms per token")
    ax.set_yscale("log")
    ax.set_title("flash I/O latency vs DRAM budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
