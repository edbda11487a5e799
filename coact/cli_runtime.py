"""Runtime commands of the `coact` CLI: device profiling, named pipelines compared on real I/O, and the fio check.

Registered on the lead's typer app (imported at the end of :mod:`coact.cli`), thin like the rest of the CLI:
options in, :mod:`runtime.device` / :mod:`runtime.pipelines` / :mod:`runtime.fio` calls, tables and JSON out.
Bad input prints one ``error: ...`` line and exits 2.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.table import Table

from coact.cli import _emit_json, _require, app, err_console, friendly, out_console


def _as_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """ValueError / RuntimeError from the runtime are user-facing here (bad sizes, missing fio, ...)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from coact.errors import CoactError
        from runtime.io import EngineUnavailable

        try:
            return fn(*args, **kwargs)
        except (ValueError, RuntimeError, EngineUnavailable) as e:
            raise CoactError(str(e)) from None

    return wrapper


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    return vals


def _pairs(items: List[str], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{what} must be NAME=PATH, got {it!r}")
        out[name] = Path(path)
    return out


# ------------------------------------------------------------------------------------------------ device-profile
@app.command("device-profile")
@friendly
@_as_user_error
def device_profile(
    path: Path = typer.Argument(..., help="File (created with random data if missing or too small) or directory on "
                                          "the disk to profile (put it where the pack files will live)."),
    out: Path = typer.Option(Path("cost.json"), help="Cost model JSON to write."),
    quick: bool = typer.Option(False, "--quick", help="5 sizes x 3 queue depths, 256 MiB file, 0.1 s per cell."),
    plot: Optional[Path] = typer.Option(None, help="Also write throughput vs read size per queue depth (PNG)."),
    file_mb: Optional[int] = typer.Option(None, help="Test file size in MiB (default 1024; 256 with --quick)."),
    seconds: Optional[float] = typer.Option(None, help="Time limit per (size, queue depth) cell (default 0.25 s)."),
    reads: int = typer.Option(4096, help="Read limit per cell."),
    sizes_kib: Optional[str] = typer.Option(None, "--sizes-kib", help="Read sizes in KiB, e.g. '4,16,64'."),
    queue_depths: Optional[str] = typer.Option(None, help="Queue depths, e.g. '1,4,16'."),
    remove_file: bool = typer.Option(False, "--remove-file", help="Delete the test file afterwards."),
    json_out: bool = typer.Option(False, "--json", help="Print the cost model as JSON."),
) -> None:
    """Measure O_DIRECT random-read latency and throughput vs read size (4 KiB..1 MiB) and queue depth (1..32),
    fit the per-request / per-byte cost model and save it as JSON (used by `--collapse auto`, the simulator and the
    physical limit).

    Example: coact device-profile /var/tmp --out cost.json --plot device.png
    """
    from runtime.device import (
        DEFAULT_QDS,
        DEFAULT_SIZES,
        PROFILE_FILE,
        QUICK_QDS,
        QUICK_SIZES,
        cost_model_from_profile,
        plot_profile,
        profile_device,
    )

    sizes = [k * 1024 for k in _ints(sizes_kib, "--sizes-kib") or []] or list(QUICK_SIZES if quick else DEFAULT_SIZES)
    qds = _ints(queue_depths, "--queue-depths") or list(QUICK_QDS if quick else DEFAULT_QDS)
    mb = file_mb if file_mb is not None else (256 if quick else 1024)
    secs = seconds if seconds is not None else (0.1 if quick else 0.25)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise ValueError(f"{path} is neither a file nor a directory")
    if not path.exists() and not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} not found")
    log = (lambda m: err_console.print(m)) if json_out else (lambda m: out_console.print(m))
    prof = profile_device(path, sizes=sizes, queue_depths=qds, reads_per_cell=reads, seconds_per_cell=secs,
                          file_bytes=mb << 20, seq_bytes=min(256, mb) << 20, progress=not json_out, log=log)
    cm = cost_model_from_profile(prof)
    cm.save(out)
    if plot is not None:
        plot_profile(prof, plot)
    if remove_file:
        f = path / PROFILE_FILE if path.is_dir() else path
        f.unlink(missing_ok=True)
    if json_out:
        _emit_json({**cm.to_dict(), "out": str(out)})
        return
    t = Table(title=f"O_DIRECT random-read throughput (MB/s) on {prof.meta['path']} ({prof.meta.get('fs')})")
    t.add_column("size")
    for q in qds:
        t.add_column(f"qd {q}", justify="right")
    for s in sizes:
        row = [f"{s // 1024} KiB"]
        for q in qds:
            c = next(c for c in prof.cells if c.size == s and c.queue_depth == q)
            row.append(f"{c.throughput / 1e6:.0f}")
        t.add_row(*row)
    out_console.print(t)
    m = Table(title="cost model: t = a + b * bytes per request")
    for col in ("queue depth", "a (us)", "b (ns/KiB)", "collapse gap (2304 B bundles)"):
        m.add_column(col, justify="right")
    for i, q in enumerate(cm.queue_depths):
        m.add_row(str(q), f"{cm.per_request_s[i] * 1e6:.1f}", f"{cm.per_byte_s[i] * 1e9 * 1024:.0f}",
                  str(cm.collapse_gap(2304, q)))
    out_console.print(m)
    out_console.print(f"peak sequential bandwidth {cm.seq_bandwidth / 1e6:.0f} MB/s; cost model -> {out}"
                      + (f"; plot -> {plot}" if plot else ""))


# ----------------------------------------------------------------------------------------------------- pipelines
def _ensure_pack(name: str, layout: Any, model: Any, workdir: Path, log: Callable[[str], None]) -> Path:
    """workdir/packs/NAME.pack for `layout` (reused when it already holds exactly that layout)."""
    from coact.pipeline import ensure_pack

    return ensure_pack(model, layout, workdir / "packs" / f"{name}.pack", log=log)


@app.command("pipelines")
@friendly
@_as_user_error
def pipelines_cmd(
    trace_dir: Path = typer.Option(..., "--trace", help="Held-out trace to replay."),
    start: int = typer.Option(0, help="First held-out token of the trace."),
    stop: Optional[int] = typer.Option(None, help="Token after the last held-out one."),
    layout: List[str] = typer.Option([], "--layout", help="NAME=PATH layout files: ripple=..., best=... "
                                                           "(identity is built in). Repeat."),
    pack_opt: List[str] = typer.Option([], "--pack", help="NAME=PATH existing pack files (else packed from "
                                                          "--model into WORKDIR/packs)."),
    model: str = typer.Option("smollm2", help="Model to pack from when a pack is missing."),
    workdir: Path = typer.Option(Path("coact-pipelines"), help="Folder for packs, a quick device profile, outputs."),
    cost: Optional[Path] = typer.Option(None, help="Cost model JSON (coact device-profile); default: a quick "
                                                   "profile in WORKDIR."),
    stats_dir: Optional[Path] = typer.Option(None, "--stats", help="Profiling statistics (frequencies for "
                                                                   "pinned caches)."),
    profile_trace: Optional[Path] = typer.Option(None, help="Trace of profiling tokens for coact's cache choice."),
    profile_start: int = typer.Option(0),
    profile_stop: Optional[int] = typer.Option(None),
    profile_tokens: int = typer.Option(256, help="Profiling tokens simulated to choose coact's cache (the last "
                                                 "ones of the range)."),
    pipeline: List[str] = typer.Option(["dense", "llmflash", "ripple", "coact"], help="Pipelines to run."),
    budget: float = typer.Option(0.10, help="DRAM budget as a fraction of all FFN bytes."),
    repeats: int = typer.Option(3, help="Interleaved rounds."),
    engine: Optional[str] = typer.Option(None, help="Engine for every pipeline, e.g. threads:16 or uring:32."),
    sweep: bool = typer.Option(False, help="Also sweep the DRAM budget (0, 5, 10, 20, 40 %)."),
    plot: Optional[Path] = typer.Option(None, help="Budget-sweep plot (PNG), with --sweep."),
    out: Optional[Path] = typer.Option(None, help="Write the full result JSON here."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Compare named pipelines (dense, llmflash, ripple, coact) on one held-out trace with real O_DIRECT reads,
    interleaved, at one DRAM budget: I/O ms/token mean/p50/p99 (min/median/max over repeats), reads/token, bytes,
    bandwidth, hit rate and the physical limit.

    Example: coact pipelines --trace traces/heldout --layout ripple=layouts/ripple.safetensors
    --layout best=layouts/best.safetensors --stats stats/pydoc --profile-trace traces/profile --cost cost.json
    """
    from coact.pipeline import check_compatible
    from coact.trace import Trace
    from runtime.device import CostModel, QUICK_QDS, QUICK_SIZES, cost_model_from_profile, profile_device
    from runtime.layout import Layout, load_layout
    from runtime.pipelines import (
        available_pipelines,
        budget_sweep,
        compare_real,
        comparison_table,
        plot_budget_sweep,
        speedups,
        sweep_table,
    )

    log = (lambda m: err_console.print(m)) if json_out else (lambda m: out_console.print(m))
    for p in pipeline:
        if p not in available_pipelines():
            raise ValueError(f"unknown pipeline {p!r}; available: {', '.join(available_pipelines())}")
    tr = Trace.load(_require(trace_dir, "trace"))
    held = tr.packed(start, stop)
    if held.shape[0] == 0:
        raise ValueError("the held-out token range is empty")
    layouts: dict[str, Layout] = {}
    for name, lp in _pairs(layout, "--layout").items():
        lay = load_layout(_require(lp, "layout"))
        check_compatible(lay, tr)
        layouts[name] = lay
    layouts.setdefault("identity", Layout.identity(tr.n_neurons, tr.n_layers, model_id=tr.model_id))
    packs = {k: _require(v, "pack file") for k, v in _pairs(pack_opt, "--pack").items()}
    workdir.mkdir(parents=True, exist_ok=True)
    need = {"dense": "identity", "llmflash": "identity", "ripple": "ripple", "coact": "best"}
    handle = None
    for p in pipeline:
        key = need[p]
        if key in packs:
            continue
        if key not in layouts:
            raise ValueError(f"pipeline {p!r} needs --layout {key}=PATH (or --pack {key}=PATH)")
        if handle is None:
            from coact.models import load_model

            handle = load_model(model)
        packs[key] = _ensure_pack(key, layouts[key], handle, workdir, log)
    if cost is not None:
        cm = CostModel.load(_require(cost, "cost model"))
    else:
        log(f"no --cost given: quick device profile in {workdir}")
        prof = profile_device(workdir, sizes=QUICK_SIZES, queue_depths=QUICK_QDS, seconds_per_cell=0.1,
                              file_bytes=256 << 20, seq_bytes=128 << 20, log=log)
        cm = cost_model_from_profile(prof)
        cm.save(workdir / "cost.json")
        (workdir / "coact-device-profile.bin").unlink(missing_ok=True)
    freq = None
    if stats_dir is not None:
        from coact.stats import CoactStats

        freq = CoactStats.load(_require(stats_dir, "statistics")).freq
    prof_packed = None
    if profile_trace is not None:
        ptr = Trace.load(_require(profile_trace, "profiling trace"))
        hi = ptr.n_tokens if profile_stop is None else int(profile_stop)
        prof_packed = ptr.packed(max(int(profile_start), hi - int(profile_tokens)), hi)
    kwargs = dict(packs=packs, layouts=layouts, cost_model=cm, freq=freq, profile_packed=prof_packed, engine=engine,
                  log=log)
    result = compare_real(pipeline, held, budget_fraction=budget, repeats=repeats, **kwargs)
    result["speedup_of_coact"] = speedups(result) if "coact" in pipeline else None
    if sweep:
        sw = budget_sweep(pipeline, held, repeats=1, **kwargs)
        result["sweep"] = {"fractions": sw["fractions"], "rows": sw["rows"]}
        if plot is not None:
            plot_budget_sweep(sw, plot)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))
    if json_out:
        _emit_json(result)
        return
    out_console.print(comparison_table(result))
    if result["speedup_of_coact"]:
        out_console.print("coact is " + ", ".join(f"{v:.2f}x faster than {k}" for k, v in
                                                  result["speedup_of_coact"].items() if v))
    if sweep:
        out_console.print(sweep_table(result["sweep"]))


# ------------------------------------------------------------------------------------------------------ fio-check
@app.command("fio-check")
@friendly
@_as_user_error
def fio_check(
    pack_file: Path = typer.Argument(..., help="Pack file from `coact pack`."),
    trace_dir: Path = typer.Option(..., "--trace", help="Trace whose read list is issued."),
    start: int = typer.Option(0),
    stop: Optional[int] = typer.Option(None),
    collapse: int = typer.Option(0, help="Access-collapse gap in bundles."),
    engine: str = typer.Option("sync", help="Our engine: sync, threads or uring."),
    queue_depth: int = typer.Option(1, help="Queue depth for ours and fio's (psync at 1, libaio above)."),
    repeats: int = typer.Option(3),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Issue a replay's exact read list through our engine and through fio (iolog v2, O_DIRECT, same queue depth)
    and report runtime time / fio time (DESIGN target: runtime at >= 80 % of fio's speed, i.e. ratio <= 1.25).

    Example: coact fio-check ripple.pack --trace traces/heldout --engine threads --queue-depth 8
    """
    from coact.trace import Trace
    from runtime.fio import compare_with_fio, fio_binary
    from runtime.pack import PackFile
    from runtime.replay import replay

    if fio_binary() is None:
        raise RuntimeError("fio is not installed (apt-get install -y fio)")
    tr = Trace.load(_require(trace_dir, "trace"))
    with PackFile(_require(pack_file, "pack file")) as pf:
        layout = pf.layout()
    batches: list = []
    replay(pack_file, layout, tr.packed(start, stop), collapse_gap=collapse, engine="sync", progress=False,
           read_log=batches)
    res = compare_with_fio(pack_file, batches, engine=engine, queue_depth=queue_depth, repeats=repeats)
    if json_out:
        _emit_json(res)
        return
    t = Table(title=f"{res['reads']:,} reads ({res['bytes'] / 2**20:.1f} MiB) at queue depth {queue_depth}: "
                    f"{engine} vs fio {res['fio_ioengine']} (min/median/max of {repeats})")
    for col in ("run", "seconds"):
        t.add_column(col)
    for k in ("runtime_batched_s", "runtime_flat_s", "fio_s"):
        s = res[k]
        t.add_row(k, f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]")
    out_console.print(t)
    out_console.print(f"runtime / fio = {res['runtime_over_fio']:.2f} (flat), {res['batched_over_fio']:.2f} "
                      f"(batched per token and layer, as in a replay)")
