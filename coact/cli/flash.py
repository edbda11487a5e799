"""Commands of the real-disk side: device-profile, pipelines, fio-check (thin wrappers of :mod:`coact.flash`)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from coact.cli._app import command, emit_json, logger, out_console, parse_ints, parse_pairs
from coact.cli.render import render_pipelines
from coact.flash import fio_check, profile_disk, run_pipelines
from runtime.pipelines import PIPELINES


# ------------------------------------------------------------------------------------------------ device-profile
@command("device-profile")
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
    sizes = [k * 1024 for k in parse_ints(sizes_kib, "--sizes-kib") or []]
    prof, cm = profile_disk(path, out, quick=quick, plot=plot, file_mb=file_mb, seconds=seconds, reads=reads,
                            sizes=sizes, queue_depths=parse_ints(queue_depths, "--queue-depths"),
                            remove_file=remove_file, progress=not json_out, log=logger(json_out))
    if json_out:
        emit_json({**cm.to_dict(), "out": str(out)})
        return
    sizes_done = sorted({c.size for c in prof.cells})
    qds = sorted({c.queue_depth for c in prof.cells})
    t = Table(title=f"O_DIRECT random-read throughput (MB/s) on {prof.meta['path']} ({prof.meta.get('fs')})")
    t.add_column("size")
    for q in qds:
        t.add_column(f"qd {q}", justify="right")
    for s in sizes_done:
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
@command("pipelines")
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
    pipeline: List[str] = typer.Option(["dense", "llmflash", "ripple", "coact"],
                                       help="Pipelines to run. " + PIPELINES.help_text()),
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
    result = run_pipelines(trace_dir, layouts=parse_pairs(layout, "--layout"), packs=parse_pairs(pack_opt, "--pack"),
                           pipelines=pipeline, model=model, workdir=workdir, cost=cost, stats=stats_dir,
                           profile_trace=profile_trace, profile_start=profile_start, profile_stop=profile_stop,
                           profile_tokens=profile_tokens, start=start, stop=stop, budget=budget, repeats=repeats,
                           engine=engine, sweep=sweep, plot=plot, out=out, log=logger(json_out))
    if json_out:
        emit_json(result)
        return
    render_pipelines(result)


# ------------------------------------------------------------------------------------------------------ fio-check
@command("fio-check")
def fio_check_cmd(
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
    and report runtime time / fio time (docs/DESIGN.md §6 target: runtime at >= 80 % of fio's speed, i.e. ratio
    <= 1.25).

    Example: coact fio-check ripple.pack --trace traces/heldout --engine threads --queue-depth 8
    """
    res = fio_check(pack_file, trace_dir, start=start, stop=stop, collapse=collapse, engine=engine,
                    queue_depth=queue_depth, repeats=repeats)
    if json_out:
        emit_json(res)
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
