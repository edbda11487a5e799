"""coact runtime: the flash side.

Layout files (:mod:`runtime.layout`), pack files of bundles in placement order (:mod:`runtime.pack`), read planning
(:mod:`runtime.planner`), O_DIRECT primitives (:mod:`runtime.direct`) and the engines sync / threads / uring that
issue the reads (:mod:`runtime.engines`), DRAM caches none / lru / window / s3fifo / ripple / pinned and pinned+X
(:mod:`runtime.caches`), simulation / real replay of traces with reports (:mod:`runtime.replay`,
:mod:`runtime.report`), the device profile and cost model (:mod:`runtime.device`), fio as the reference
(:mod:`runtime.fio`), the named pipelines compared on real I/O (:mod:`runtime.pipelines`), the user errors
(:mod:`runtime.errors`) and conformance checks for third-party caches and engines (:mod:`runtime.testing`).

Needs numpy, scipy, numba, safetensors and rich (no torch, and nothing from ``coact``), so the runtime can be used on
a machine without the model stack; matplotlib only for plots, fio and the ``liburing`` binding only for what uses
them (``liburing`` is imported when a ``uring`` engine is opened, never at import time). Long loops report progress
through a :data:`common.progress.ProgressFn` callback (None: silent).
"""
from runtime.caches import Cache, available_caches, get_cache, register_cache
from runtime.device import CostModel, DeviceProfile, cost_model_from_profile, fit_cost_model, profile_device
from runtime.direct import DirectFile, direct_io_supported, drop_page_cache, has_o_direct, resident_pages
from runtime.engines import Engine, available_engines, engine_status, get_engine, register_engine
from runtime.errors import (
    CacheError,
    DeviceError,
    DirectIOUnsupported,
    EngineError,
    EngineUnavailable,
    FioError,
    FlashError,
    LayoutError,
    PackError,
    PipelineError,
    PlanError,
)
from runtime.layout import Layout, export_layout, load_layout, save_layout
from runtime.pack import PackFile, check_layout_matches, write_pack
from runtime.pipelines import (
    Pipeline,
    available_pipelines,
    budget_sweep,
    compare_real,
    get_pipeline,
    register_pipeline,
    required_layouts,
)
from runtime.planner import byte_ranges, dense_plan, plan_reads, runs
from runtime.replay import simulate  # not `replay`: that name is the submodule (runtime.replay.replay)
from runtime.report import Report

__all__ = [
    "Cache", "available_caches", "get_cache", "register_cache",
    "CostModel", "DeviceProfile", "cost_model_from_profile", "fit_cost_model", "profile_device",
    "DirectFile", "direct_io_supported", "drop_page_cache", "has_o_direct", "resident_pages",
    "Engine", "available_engines", "engine_status", "get_engine", "register_engine",
    "CacheError", "DeviceError", "DirectIOUnsupported", "EngineError", "EngineUnavailable", "FioError", "FlashError",
    "LayoutError", "PackError", "PipelineError", "PlanError",
    "Layout", "export_layout", "load_layout", "save_layout",
    "PackFile", "check_layout_matches", "write_pack",
    "Pipeline", "available_pipelines", "budget_sweep", "compare_real", "get_pipeline", "register_pipeline",
    "required_layouts",
    "byte_ranges", "dense_plan", "plan_reads", "runs",
    "simulate", "Report",
]
