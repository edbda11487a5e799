"""The named runtime pipelines (:mod:`runtime.pipelines`) as configurations of the flash engine (:mod:`coact.online`).

Why a module of its own: ``coact pipelines`` replays recorded active sets and ``coact generate --pipeline`` runs
the model; both must mean the same thing by ``dense``, ``llmflash``, ``ripple`` and ``coact`` so that replay
figures and tokens/s figures describe the same configurations. The registry in :mod:`runtime.pipelines` stays the
one definition (layout key, cache policy, collapse, engine); this module only resolves coact's ``auto`` choices
(by simulation on a profiling trace, as ``coact pipelines`` does) and maps a resolved pipeline onto the keyword
arguments of :class:`coact.online.FlashModel`.

What differs between replay and the engine, by design: the engine always prefetches (the predictor's reads overlap
attention) except for ``dense``, which reads every layer's whole region per token and computes sparsely from it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from coact.errors import CoactError
from coact.trace import Trace
from coact.workflow import check_compatible
from common.bits import unpack_bits
from runtime.device import CostModel
from runtime.layout import Layout
from runtime.pack import PackFile
from runtime.pipelines import Pipeline, available_pipelines, budget_bytes_for, get_pipeline, resolve_pipelines

__all__ = ["flash_options", "resolve_flash_pipeline", "freq_from_packed", "pipeline_options"]


def freq_from_packed(packed: np.ndarray, n_neurons: int | Sequence[int], *, chunk: int = 1024) -> np.ndarray:
    """int64 [L, N] activation counts of bit-packed active sets [T, L, nb] (what pinned caches rank by), counted
    in chunks so a long profiling trace never unpacks at once. ``n_neurons``: N, or N per layer (the largest is
    used: the trace's rows are padded to it)."""
    n_neurons = n_neurons if isinstance(n_neurons, int) else max(n_neurons)
    T, L = packed.shape[:2]
    freq = np.zeros((L, n_neurons), dtype=np.int64)
    for i in range(0, T, chunk):
        freq += unpack_bits(packed[i : i + chunk], n_neurons).sum(axis=0, dtype=np.int64)
    return freq


def flash_options(pipeline: Pipeline, freq: np.ndarray | None = None) -> dict[str, Any]:
    """:class:`coact.online.FlashModel` keyword arguments for a resolved pipeline (no ``auto`` cache left).

    ``collapse`` may stay ``"auto"`` (the engine resolves it with its cost model); pinned policies get ``freq``.
    """
    if pipeline.cache == "auto":
        raise ValueError(f"pipeline {pipeline.name!r} is not resolved (cache 'auto'); use resolve_flash_pipeline")
    engine = f"{pipeline.engine}:{pipeline.queue_depth}"
    if pipeline.dense:
        return {"dense": True, "policy": "none", "prefetch": False, "engine": engine, "collapse": 0}
    params = dict(pipeline.cache_params)
    if pipeline.cache.startswith("pinned"):
        if freq is None:
            raise ValueError(f"pipeline {pipeline.name!r} uses cache {pipeline.cache!r}, which needs frequencies")
        params["freq"] = freq
    return {"dense": False, "policy": pipeline.cache, "policy_params": params, "collapse": pipeline.collapse,
            "engine": engine, "prefetch": True}


def resolve_flash_pipeline(
    name: str,
    layout: Layout,
    *,
    bundle_bytes: int,
    budget: float,
    cost_model: Any = None,
    profile_packed: np.ndarray | None = None,
    engine: str | None = None,
    queue_depth: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Pipeline, dict[str, Any], dict[str, Any]]:
    """Resolve pipeline ``name`` for the pack's ``layout`` at DRAM ``budget`` (a fraction of the FFN bytes).

    ``profile_packed`` (bit-packed active sets of profiling tokens, never the evaluated ones) lets coact choose its
    cache and collapse by simulation and gives pinned caches their frequencies; without it (or without a cost
    model) coact falls back to the fixed choice of :func:`runtime.pipelines.resolve_pipelines`.
    Returns (the resolved pipeline, FlashModel keyword arguments, notes on the choice).
    """
    p = get_pipeline(name)
    freq = None if profile_packed is None else freq_from_packed(profile_packed, layout.n_neurons)
    budget_bytes = budget_bytes_for(layout, bundle_bytes, budget)
    (resolved,), notes = resolve_pipelines(
        [replace(p, layout="pack")], layouts={"pack": layout}, bundle_bytes=bundle_bytes, budget_bytes=budget_bytes,
        cost_model=cost_model, freq=freq, profile_packed=profile_packed, engine=engine, queue_depth=queue_depth,
        log=log)
    return resolved, flash_options(resolved, freq), notes.get(resolved.name, {})


def pipeline_options(pack: str | Path, name: str, *, budget: float, cost: str | Path | None = None,
                     profile_trace: str | Path | None = None, engine: str | None = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``coact generate/perplexity --pipeline NAME``: the :func:`coact.online.open_flash_model` options of a named
    pipeline for the layout stored in ``pack``. ``profile_trace`` (a trace of the same model, profiling tokens)
    lets coact choose its cache and collapse by simulation and gives pinned caches their frequencies; ``cost``
    (a cost model JSON) is needed for collapse ``auto``."""
    if name not in available_pipelines():
        raise CoactError(f"unknown pipeline {name!r}; available: {', '.join(available_pipelines())}")
    cm = None if cost is None else CostModel.load(cost)
    with PackFile(pack) as pf:
        bb, layout = pf.bundle_bytes, pf.layout()
    prof = None
    if profile_trace is not None:
        tr = Trace.load(profile_trace)
        check_compatible(layout, tr)
        prof = tr.packed()
    eng, _, qd = (engine or "").partition(":")
    _, opts, _ = resolve_flash_pipeline(name, layout, bundle_bytes=bb, budget=budget, cost_model=cm,
                                        profile_packed=prof, engine=eng or None,
                                        queue_depth=int(qd) if qd else None, log=log)
    return {**opts, "cost": cost}
