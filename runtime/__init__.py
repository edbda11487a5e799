"""coact runtime: the flash side.

Layout files (:mod:`runtime.layout`), pack files of bundles in placement order (:mod:`runtime.pack`), read planning
(:mod:`runtime.planner`), O_DIRECT engines sync / threads / uring (:mod:`runtime.io`), DRAM caches none / lru /
s3fifo / window / ripple / pinned and pinned+X (:mod:`runtime.cache`), simulation / real replay of traces with reports
(:mod:`runtime.replay`, :mod:`runtime.report`), the device profile and cost model (:mod:`runtime.device`), fio as the
reference (:mod:`runtime.fio`) and the named pipelines compared on real I/O (:mod:`runtime.pipelines`). Needs numpy,
scipy, numba, safetensors and rich (no torch), so the runtime can be used on a machine without the model stack;
matplotlib only for plots, fio and the ``liburing`` binding only for what uses them.
"""
from runtime.cache import Cache, available_caches, get_cache, register_cache
from runtime.device import CostModel, DeviceProfile, cost_model_from_profile, fit_cost_model, profile_device
from runtime.io import (
    DirectFile,
    DirectIOUnsupported,
    Engine,
    EngineUnavailable,
    available_engines,
    direct_io_supported,
    drop_page_cache,
    engine_status,
    get_engine,
    has_o_direct,
    resident_pages,
)
from runtime.layout import Layout, LayoutError, export_layout, load_layout, save_layout
from runtime.pack import PackError, PackFile, check_layout_matches, write_pack
from runtime.planner import byte_ranges, dense_plan, plan_reads, runs
from runtime.pipelines import Pipeline, available_pipelines, budget_sweep, compare_real, get_pipeline
from runtime.replay import simulate  # not `replay`: that name is the submodule (runtime.replay.replay)
from runtime.report import Report

__all__ = [
    "Cache", "available_caches", "get_cache", "register_cache",
    "CostModel", "DeviceProfile", "cost_model_from_profile", "fit_cost_model", "profile_device",
    "DirectFile", "DirectIOUnsupported", "Engine", "EngineUnavailable", "available_engines", "direct_io_supported",
    "drop_page_cache", "engine_status", "get_engine", "has_o_direct", "resident_pages",
    "Pipeline", "available_pipelines", "budget_sweep", "compare_real", "get_pipeline",
    "Layout", "LayoutError", "export_layout", "load_layout", "save_layout",
    "PackError", "PackFile", "check_layout_matches", "write_pack",
    "byte_ranges", "dense_plan", "plan_reads", "runs",
    "simulate", "Report",
]
