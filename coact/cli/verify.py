"""`coact verify PATH`: check any coact artefact (trace, statistics, layout, pack) completely.

Thin: :func:`coact.verify.verify_artefact` does the work. Prints ``OK <kind> <path>`` (or, with ``--json``, a JSON
summary with ``"ok": true``); a foreign or corrupt artefact prints one line ``error: ...`` and exits 2 (with
``--json`` the JSON ``{"ok": false, "error": ...}`` is printed on stdout too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from coact.cli._app import command, emit_json, one_line, out_console
from coact.verify import KINDS, verify_artefact
from common.errors import UserError


@command()
def verify(
    path: Path = typer.Argument(..., help="A trace or statistics folder, a layout file or export, or a pack file."),
    kind: Optional[str] = typer.Option(None, help=f"Expected kind ({', '.join(KINDS)}); default: detected."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Check an artefact completely: its kind is detected from its metadata, then every digest and checksum is
    recomputed (a single flipped byte in a trace or pack is found). Exit 2 if it is corrupt or foreign.

    Example: coact verify ripple.pack --json
    """
    try:
        res = verify_artefact(path, kind)
    except UserError as exc:
        if json_out:
            emit_json({"path": str(path), "kind": kind, "ok": False, "error": one_line(exc)})
        raise
    if json_out:
        emit_json(res)
        return
    extra = {k: res[k] for k in ("n_tokens", "n_layers", "n_neurons") if k in res}
    out_console.print(f"OK {res['kind']} {path}" + (" (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
                                                      if extra else ""))
    if res.get("note"):
        out_console.print(f"note: {res['note']}")
