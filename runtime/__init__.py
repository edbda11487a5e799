"""coact runtime: the flash side.

Layout files (:mod:`runtime.layout`), pack files of bundles in placement order (:mod:`runtime.pack`), read planning
(:mod:`runtime.planner`), O_DIRECT engines (:mod:`runtime.io`), DRAM caches (:mod:`runtime.cache`), and simulation /
real replay of traces with reports (:mod:`runtime.replay`, :mod:`runtime.report`). Needs numpy, safetensors and rich
only (no torch), so the runtime can be used on a machine without the model stack.
"""
from runtime.cache import Cache, available_caches, get_cache, register_cache
from runtime.io import DirectFile, DirectIOUnsupported, Engine, available_engines, direct_io_supported, get_engine
from runtime.layout import Layout, LayoutError, export_layout, load_layout, save_layout
from runtime.pack import PackError, PackFile, check_layout_matches, write_pack
from runtime.planner import byte_ranges, dense_plan, plan_reads, runs
from runtime.replay import simulate  # not `replay`: that name is the submodule (runtime.replay.replay)
from runtime.report import Report

__all__ = [
    "Cache", "available_caches", "get_cache", "register_cache",
    "DirectFile", "DirectIOUnsupported", "Engine", "available_engines", "direct_io_supported", "get_engine",
    "Layout", "LayoutError", "export_layout", "load_layout", "save_layout",
    "PackError", "PackFile", "check_layout_matches", "write_pack",
    "byte_ranges", "dense_plan", "plan_reads", "runs",
    "simulate", "Report",
]
