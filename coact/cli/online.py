"""Commands that run the model from flash: ``coact generate --from PACK`` (and the flash options of
``coact perplexity --from PACK``, which lives in :mod:`coact.cli.offline` and calls :func:`flash_perplexity_cmd`).

Each command parses its options, calls one function of :mod:`coact.online` and renders its report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from coact.cli._app import command, emit_json, out_console
from coact.errors import CoactError
from coact.online import check_budget, run_flash_perplexity, run_generate
from coact.online_pipelines import pipeline_options
from runtime.pipelines import available_pipelines
from runtime.caches import CACHES
from runtime.engines import ENGINES


def _collapse(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise CoactError(f"--collapse must be an integer >= 0 or 'auto', got {text!r}") from None


def render_report(rep: dict[str, Any], title: str) -> None:
    """The speed report of a flash run as one table."""
    ms = rep["ms_per_token"]
    pt = rep["per_token"]
    pf = rep["prefetch"]
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")

    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    rows = [
        ("tokens/s", f(rep["tokens_per_s"])),
        ("ms/token (mean, p50, p99)", f"{f(ms['wall'])}, {f(ms['p50'])}, {f(ms['p99'])}"),
        ("compute ms/token (attention, gate, FFN, predict)",
         f"{f(ms['compute'])} ({f(ms['attention'])}, {f(ms['gate'])}, {f(ms['ffn'])}, {f(ms['predict'])})"),
        ("I/O wait ms/token", f(ms["io_wait"])),
        ("I/O ms/token (total, hidden by overlap)", f"{f(ms['io_total'])}, {f(ms['io_hidden'])}"),
        ("decode + cache ms/token", f(ms["decode_and_cache"])),
        ("MB read/token (requested)", f"{pt['bytes_read'] / 1e6:.2f} ({pt['bytes_requested'] / 1e6:.2f})"),
        ("reads/token", f(pt["reads"], ".1f")),
        ("cache hit rate", f(rep["hit_rate"], ".3f")),
        ("prefetch precision / recall (load set)", f"{f(pf['precision_vs_load'], '.3f')} / "
                                                   f"{f(pf['recall_vs_load'], '.3f')}"),
        ("DRAM for FFN: cache + read buffers (MB)", f"{rep['dram']['cache_bytes'] / 1e6:.1f} + "
                                                     f"{rep['dram']['read_buffers'] / 1e6:.1f}"),
        ("FFN bytes on flash (MB)", f"{rep['dram']['ffn_bytes_on_flash'] / 1e6:.1f}"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out_console.print(t)


def flash_options(budget: float, policy: str, engine: str, collapse: str, cost: Optional[Path], prefetch: bool,
                  predictor: str, *, pack: Optional[Path] = None, pipeline: Optional[str] = None,
                  profile: Optional[Path] = None) -> dict[str, Any]:
    """The flash engine's options from the command line; ``--pipeline NAME`` replaces the cache policy, collapse
    and prefetch by those of the named pipeline (coact.online_pipelines), so replay and engine agree."""
    check_budget(budget)
    if pipeline is not None:
        assert pack is not None
        opts = pipeline_options(pack, pipeline, budget=budget, cost=cost, profile_trace=profile, engine=engine)
        return {"budget": budget, "predictor": predictor, **opts}
    if profile is not None:
        raise CoactError("--profile is used only with --pipeline")
    return {"budget": budget, "policy": policy, "engine": engine, "collapse": _collapse(collapse), "cost": cost,
            "prefetch": prefetch, "predictor": predictor}


PIPELINE_HELP = ("Configure cache, collapse and prefetch as this named pipeline (overrides --policy/--collapse/"
                 "--prefetch): " + ", ".join(available_pipelines()) + ". 'coact' chooses by simulation on --profile.")
PROFILE_HELP = "With --pipeline: a profiling trace of the model (coact's choice; frequencies for pinned caches)."


@command("generate")
def generate_cmd(
    from_pack: Path = typer.Option(..., "--from", help="Pack file (up-down bundles) of the model."),
    prompt: str = typer.Option(..., help="Prompt text."),
    max_tokens: int = typer.Option(32, help="Tokens to generate (greedy)."),
    model: str = typer.Option("smollm2", help="The model the pack was written from."),
    thresholds_from: Optional[Path] = typer.Option(None, help="Use the CATS thresholds of this trace."),
    sparsity: Optional[float] = typer.Option(None, help="Calibrate CATS to this sparsity on corpus tokens "
                                                        "[0, calib-tokens) instead."),
    corpus: str = typer.Option("pydoc", help="Corpus for --sparsity calibration."),
    calib_tokens: int = typer.Option(1024, help="Calibration tokens for --sparsity."),
    budget: float = typer.Option(0.10, help="DRAM cache budget as a fraction of the FFN bytes, in [0, 1]."),
    policy: str = typer.Option("lru", help="Cache policy. " + CACHES.help_text()),
    engine: str = typer.Option("threads:16", help="I/O engine, NAME or NAME:QUEUE_DEPTH. " + ENGINES.help_text()),
    collapse: str = typer.Option("0", help="Access-collapse gap in bundles, or 'auto' (needs --cost)."),
    cost: Optional[Path] = typer.Option(None, help="Cost model JSON (coact device-profile) for --collapse auto."),
    prefetch: bool = typer.Option(True, "--prefetch/--no-prefetch", help="Read predicted neurons during attention."),
    predictor: str = typer.Option("post", help="Prefetch predictor: post (FFN norm of the residual) or input."),
    pipeline: Optional[str] = typer.Option(None, help=PIPELINE_HELP),
    profile: Optional[Path] = typer.Option(None, help=PROFILE_HELP),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Generate text with the FFN weights streamed from flash (batch 1, KV cache, O_DIRECT reads): tokens/s and
    compute / I/O per token.

    Example: coact generate --from ripple.pack --prompt "def fib(n):" --max-tokens 32 --sparsity 0.4
    """
    res = run_generate(from_pack, prompt, max_tokens, model=model, thresholds_from=thresholds_from,
                       sparsity=sparsity, corpus=corpus, calib_tokens=calib_tokens,
                       **flash_options(budget, policy, engine, collapse, cost, prefetch, predictor, pack=from_pack,
                                       pipeline=pipeline, profile=profile))
    if json_out:
        emit_json(res)
        return
    out_console.print(f"[bold]{prompt}[/bold]{res['text']}")
    render_report(res["report"], f"from flash: {len(res['tokens'])} tokens after a {res['n_prompt']}-token prompt")


def flash_perplexity_cmd(from_pack: Path, *, model: str, corpus: str, tokens: int, start: Optional[int], ctx: int,
                         method: str, sparsity: Optional[float], calib_tokens: int, thresholds_from: Optional[Path],
                         json_out: bool, **flash: Any) -> None:
    """``coact perplexity --from PACK``: perplexity computed token by token from flash, and the speed report."""
    res = run_flash_perplexity(from_pack, model=model, corpus=corpus, tokens=tokens, start=start, ctx=ctx,
                               method=None if method == "dense" else method, sparsity=sparsity,
                               calib_tokens=calib_tokens, thresholds_from=thresholds_from, **flash)
    if json_out:
        emit_json(res)
        return
    fl = res["flash"]
    out_console.print(f"perplexity from flash: {fl['ppl']:.3f} on {fl['n_predicted']:,} predictions of {corpus} "
                      f"from token {fl['token_start']:,}")
    render_report(res["report"], "from flash")
