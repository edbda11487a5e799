"""Commands for profiling data: `coact corpus list` (the named corpora) and `coact stats-merge` (combine statistics).

Why `stats-merge` and not `stats merge`: `coact stats TRACE --out S` takes a positional trace folder; turning
`stats` into a command group would make `coact stats merge` ambiguous with a trace folder named `merge` and break
the existing form. A separate verb keeps both unambiguous.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from coact.cli._app import command, emit_json, out_console
from coact.corpora import DEFAULT_RECIPE, PROFILE_SHARE, corpus_table
from coact.errors import CoactError
from coact.shrink import merge_stats


@command("corpus")
def corpus(
    action: str = typer.Argument("list", help="'list': the named corpora with domain, size, licence and source."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """The named profiling corpora (use them as --corpus NAME, NAME@profile, NAME@heldout, or weighted mixtures
    'a:0.5+b:0.5').

    Example: coact corpus list
    """
    if action != "list":
        raise CoactError(f"unknown corpus action {action!r}; use 'list'")
    rows = corpus_table()
    if json_out:
        emit_json({"corpora": rows, "default_recipe": DEFAULT_RECIPE, "profile_share": PROFILE_SHARE})
        return
    t = Table(title=f"named corpora (NAME@profile = first {PROFILE_SHARE:.0%} of the text, NAME@heldout = the rest)",
              caption=f"default recipe (coact trace without --corpus): {DEFAULT_RECIPE}")
    for col in ("name", "domain", "tokens", "licence", "source"):
        t.add_column(col, justify="right" if col == "tokens" else "left")
    for r in rows:
        tok = f"{r['tokens']:,}" if r["tokens"] else (f"~{r['characters'] // 4:,} (chars/4)" if r["characters"]
                                                     else "unavailable")
        t.add_row(str(r["name"]), str(r["domain"]), tok, str(r["licence"]), str(r["source"]))
    out_console.print(t)


@command("stats-merge")
def stats_merge(
    stats_dirs: List[Path] = typer.Argument(..., help="Two or more statistics folders (coact stats) of one model."),
    out: Path = typer.Option(..., help="Output statistics folder."),
    weights: Optional[str] = typer.Option(None, help="Comma-separated non-negative integers, one per input: input i "
                                                     "counts as if its tokens were seen w_i times (exact counts), "
                                                     "e.g. '2,1'; default: the plain sum."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Combine statistics without recapturing (counts of disjoint token sets add; weights re-balance domains).

    Example: coact stats-merge stats/wiki stats/code --weights 1,2 --out stats/mix
    """
    w = None
    if weights is not None:
        try:
            w = [int(x) for x in weights.split(",") if x.strip()]
        except ValueError:
            raise CoactError(f"--weights must be comma-separated integers, got {weights!r}") from None
    st = merge_stats(stats_dirs, w, out)
    info = {"out": str(out), "n_tokens": st.n_tokens, "n_layers": st.n_layers, "n_neurons": st.n_neurons,
            "digest": st.digest, "weights": w}
    if json_out:
        emit_json(info)
    else:
        out_console.print(f"merged {len(stats_dirs)} statistics ({st.n_tokens:,} tokens) -> {out}")
