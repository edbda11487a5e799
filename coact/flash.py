"""Real-disk steps as plain functions: the device profile, the named pipelines compared side by side, and the fio
check. The CLI commands `device-profile`, `pipelines`, `fio-check` and `compare --real` are thin wrappers of these.

Why here and not in runtime/: each step joins application artefacts (traces, statistics, the model to pack from)
with the runtime; runtime/ itself never sees a trace folder or a model (docs/ARCHITECTURE.md, import rule).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from coact.errors import CoactError
from coact.models import ModelHandle, load_model
from coact.progress import bars
from coact.stats import CoactStats
from coact.trace import Trace
from coact.workflow import check_compatible, ensure_pack, require
from runtime.device import (
    DEFAULT_QDS,
    DEFAULT_SIZES,
    PROFILE_FILE,
    QUICK_QDS,
    QUICK_SIZES,
    CostModel,
    DeviceProfile,
    cost_model_from_profile,
    plot_profile,
    profile_device,
)
from runtime.fio import compare_with_fio, fio_binary
from runtime.layout import Layout, load_layout
from runtime.pack import PackFile
from runtime.pipelines import available_pipelines, budget_sweep, compare_real, get_pipeline, plot_budget_sweep, \
    speedups
from runtime.replay import replay

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ------------------------------------------------------------------------------------------------ device profile
def profile_disk(path: str | Path, out: str | Path | None = None, *, quick: bool = False,
                 plot: str | Path | None = None, file_mb: int | None = None, seconds: float | None = None,
                 reads: int = 4096, sizes: Sequence[int] | None = None, queue_depths: Sequence[int] | None = None,
                 remove_file: bool = False, progress: bool = True, log: Log = _quiet
                 ) -> tuple[DeviceProfile, CostModel]:
    """Measure O_DIRECT random-read latency/throughput on the disk holding ``path`` and fit the cost model
    (saved to ``out`` when given; plotted to ``plot`` when given). ``sizes`` in bytes."""
    path = Path(path)
    sizes = list(sizes) if sizes else list(QUICK_SIZES if quick else DEFAULT_SIZES)
    qds = list(queue_depths) if queue_depths else list(QUICK_QDS if quick else DEFAULT_QDS)
    mb = file_mb if file_mb is not None else (256 if quick else 1024)
    secs = seconds if seconds is not None else (0.1 if quick else 0.25)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise CoactError(f"{path} is neither a file nor a directory")
    if not path.exists() and not path.parent.exists():
        raise CoactError(f"directory {path.parent} not found")
    prof = profile_device(path, sizes=sizes, queue_depths=qds, reads_per_cell=reads, seconds_per_cell=secs,
                          file_bytes=mb << 20, seq_bytes=min(256, mb) << 20, progress=bars(progress), log=log)
    cm = cost_model_from_profile(prof)
    if out is not None:
        cm.save(out)
    if plot is not None:
        plot_profile(prof, plot)
    if remove_file:
        (path / PROFILE_FILE if path.is_dir() else path).unlink(missing_ok=True)
    return prof, cm


def quick_cost_model(workdir: Path, log: Log = _quiet) -> CostModel:
    """A quick device profile in ``workdir`` (cost model saved as ``workdir/cost.json``, test file removed)."""
    log(f"no cost model given: quick device profile in {workdir}")
    prof = profile_device(workdir, sizes=QUICK_SIZES, queue_depths=QUICK_QDS, seconds_per_cell=0.1,
                          file_bytes=256 << 20, seq_bytes=128 << 20, log=log)
    cm = cost_model_from_profile(prof)
    cm.save(workdir / "cost.json")
    (workdir / PROFILE_FILE).unlink(missing_ok=True)
    return cm


# ----------------------------------------------------------------------------------------------------- pipelines
def run_pipelines(
    trace: str | Path,
    *,
    layouts: Mapping[str, str | Path] | None = None,
    packs: Mapping[str, str | Path] | None = None,
    pipelines: Sequence[str] = ("dense", "llmflash", "ripple", "coact"),
    model: str | ModelHandle = "smollm2",
    workdir: str | Path = "coact-pipelines",
    cost: str | Path | None = None,
    stats: str | Path | None = None,
    profile_trace: str | Path | None = None,
    profile_start: int = 0,
    profile_stop: int | None = None,
    profile_tokens: int = 256,
    start: int = 0,
    stop: int | None = None,
    budget: float = 0.10,
    repeats: int = 3,
    engine: str | None = None,
    sweep: bool = False,
    plot: str | Path | None = None,
    out: str | Path | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Replay the named pipelines (:mod:`runtime.pipelines`) interleaved on tokens [start, stop) of a held-out
    trace with real O_DIRECT reads at one DRAM budget; returns the comparison (and the budget sweep with
    ``sweep``).

    ``layouts`` maps layout keys (``ripple``, ``best``; ``identity`` is built in) to layout files; each pipeline
    needs the layout named by its ``layout`` field. Missing packs are packed from ``model`` into
    ``workdir/packs`` (reused when they already hold the layout).
    """
    for p in pipelines:
        if p not in available_pipelines():
            raise CoactError(f"unknown pipeline {p!r}; available: {', '.join(available_pipelines())}")
    tr = Trace.load(require(trace, "trace"))
    held = tr.packed(start, stop)
    if held.shape[0] == 0:
        raise CoactError("the held-out token range is empty")
    lays: dict[str, Layout] = {}
    for name, lp in (layouts or {}).items():
        lay = load_layout(require(lp, "layout"))
        check_compatible(lay, tr)
        lays[name] = lay
    lays.setdefault("identity", Layout.identity(tr.unit_widths, model_id=tr.model_id,  # per unit (MoE, mixed)
                                                units=tr.units if tr.has_units else None))
    pack_paths = {k: require(v, "pack file") for k, v in (packs or {}).items()}
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    handle: ModelHandle | None = None if isinstance(model, str) else model
    for p in pipelines:
        key = get_pipeline(p).layout
        if key in pack_paths:
            continue
        if key not in lays:
            raise CoactError(f"pipeline {p!r} needs --layout {key}=PATH (or --pack {key}=PATH)")
        if handle is None:
            handle = load_model(str(model))
        pack_paths[key] = ensure_pack(handle, lays[key], workdir / "packs" / f"{key}.pack", log=log)
    cm = CostModel.load(require(cost, "cost model")) if cost is not None else quick_cost_model(workdir, log)
    freq = CoactStats.load(require(stats, "statistics")).freq if stats is not None else None
    prof_packed = None
    if profile_trace is not None:
        ptr = Trace.load(require(profile_trace, "profiling trace"))
        hi = ptr.n_tokens if profile_stop is None else int(profile_stop)
        prof_packed = ptr.packed(max(int(profile_start), hi - int(profile_tokens)), hi)
    kwargs: dict[str, Any] = dict(packs=pack_paths, layouts=lays, cost_model=cm, freq=freq,
                                  profile_packed=prof_packed, engine=engine, log=log)
    result = compare_real(list(pipelines), held, budget_fraction=budget, repeats=repeats, **kwargs)
    result["speedup_of_coact"] = speedups(result) if "coact" in pipelines else None
    if sweep:
        sw = budget_sweep(list(pipelines), held, repeats=1, **kwargs)
        result["sweep"] = {"fractions": sw["fractions"], "rows": sw["rows"]}
        if plot is not None:
            plot_budget_sweep(sw, plot)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, default=str))
    return result


# ------------------------------------------------------------------------------------------------------ fio check
def fio_check(pack_file: str | Path, trace: str | Path, *, start: int = 0, stop: int | None = None,
              collapse: int = 0, engine: str = "sync", queue_depth: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Issue a replay's exact read list through our engine and through fio (iolog v2, O_DIRECT, same queue depth);
    the result holds runtime time / fio time (docs/DESIGN.md §6: ratio <= 1.25)."""
    if fio_binary() is None:
        raise CoactError("fio is not installed (apt-get install -y fio)")
    tr = Trace.load(require(trace, "trace"))
    with PackFile(require(pack_file, "pack file")) as pf:
        layout = pf.layout()
    batches: list = []
    replay(pack_file, layout, tr.packed(start, stop), collapse_gap=collapse, engine="sync", read_log=batches)
    return compare_with_fio(pack_file, batches, engine=engine, queue_depth=queue_depth, repeats=repeats)
