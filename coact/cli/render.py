"""Terminal rendering shared by several commands (kept apart so command modules do not import each other)."""
from __future__ import annotations

from typing import Any

from coact.cli._app import out_console
from runtime.pipelines import comparison_table, sweep_table


def render_pipelines(result: dict[str, Any]) -> None:
    """The side-by-side pipeline table, coact's speed-ups and, when present, the budget sweep."""
    out_console.print(comparison_table(result))
    if result.get("speedup_of_coact"):
        out_console.print("coact is " + ", ".join(f"{v:.2f}x faster than {k}" for k, v in
                                                  result["speedup_of_coact"].items() if v))
    if result.get("sweep"):
        out_console.print(sweep_table(result["sweep"]))
