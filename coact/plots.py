"""One plotting helper: a row of bar charts over the same names (demo and solver comparison share it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass
class Panel:
    """One bar chart: values per name, axis label, title, colour, and whether the y axis is logarithmic."""

    values: Sequence[float]
    ylabel: str
    title: str
    color: str = "tab:blue"
    log: bool = False
    #: an optional (value, label) drawn as a dashed horizontal line, e.g. the dense baseline
    reference: tuple[float, str] | None = None


def bar_panels(names: Sequence[str], panels: Sequence[Panel], path: str | Path, *, rotation: int = 20,
               width_per_panel: float = 4.4, suptitle: str | None = None) -> Path:
    """Draw `panels` side by side (headless, Agg) and save them as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width_per_panel * len(panels), 3.7), squeeze=False)
    for ax, p in zip(axes[0], panels):
        ax.bar(list(names), [v or 0 for v in p.values], color=p.color)
        if p.log:
            ax.set_yscale("log")
        ax.set_ylabel(p.ylabel)
        ax.set_title(p.title)
        ax.tick_params(axis="x", rotation=rotation)
        if p.reference is not None:
            ax.axhline(p.reference[0], color="k", ls="--", lw=1)
            ax.annotate(p.reference[1], (0.01, p.reference[0]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 3), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
