"""Commands for 7B-scale work: ``synth`` (a synthetic trace of any shape) and ``synth-fit`` (fit its parameters to a
real trace). Thin: parse, call :mod:`coact.synth`, render."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from common.atomic import atomic_path
from coact.cli._app import command, emit_json, out_console
from coact.synth import BUILTIN_FITS, fit_synth, write_synthetic_trace

__all__ = ["synth", "synth_fit"]


@command()
def synth(
    out: Path = typer.Option(..., help="Output trace folder (must not exist)."),
    layers: int = typer.Option(32, help="Layers."),
    neurons: int = typer.Option(11008, help="FFN neurons per layer."),
    tokens: int = typer.Option(100_000, help="Tokens."),
    seed: int = typer.Option(0, help="Seed: the trace depends only on seed, shape and fit."),
    fit: str = typer.Option("smollm2", help=f"Fitted parameters: {', '.join(BUILTIN_FITS)} or a JSON file "
                                            "(coact synth-fit)."),
    d_model: int = typer.Option(4096, help="Model width recorded for packing (bundle size)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """A synthetic activation trace (ordinary `coact trace` format) fitted to a real model's statistics.

    Example: coact synth --layers 32 --neurons 11008 --tokens 100000 --out traces/synth-7b
    """
    tr = write_synthetic_trace(out, n_layers=layers, n_neurons=neurons, n_tokens=tokens, seed=seed, fit=fit,
                               d_model=d_model, progress=not json_out)
    if json_out:
        emit_json({k: v for k, v in tr.meta.items() if k not in ("files",)})
        return
    out_console.print(f"synthetic trace: {tr.n_tokens:,} tokens x {tr.n_layers} layers x {tr.n_neurons} neurons "
                      f"(fit {fit}, seed {seed}, sparsity {tr.meta['sparsity']:.3f}) -> {out}")


@command("synth-fit")
def synth_fit(
    trace_dir: Path = typer.Argument(..., help="A real trace (coact trace)."),
    out: Path = typer.Option(..., help="Output JSON with the fitted parameters."),
    depths: int = typer.Option(5, help="Layers fitted (evenly spaced; others interpolated)."),
    seed: int = typer.Option(0),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Fit the synthetic workload to a real trace (frequency curve, closest-friend curves, activity variation).

    Example: coact synth-fit data/sample/profile --out data/synth/smollm2.json
    """
    say = None if json_out else (lambda m: out_console.print(m))
    doc = fit_synth(trace_dir, n_depths=depths, seed=seed, progress=say)
    doc["command"] = f"coact synth-fit {trace_dir} --out {out} --depths {depths} --seed {seed}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    if json_out:
        emit_json(doc)
        return
    for l, t, a in zip(doc["fit_layers"], doc["targets"], doc["achieved"]):
        out_console.print(f"layer {l}: friend (no hot) target {[round(x, 2) for x in t['friend_nohot']]} "
                          f"fit {[round(x, 2) for x in a['friend_nohot']]}; activity CV {t['activity_cv']:.2f} "
                          f"-> {a['activity_cv']:.2f}")
    out_console.print(f"-> {out}")
