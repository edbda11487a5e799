"""Operating points shared by the benchmarks: every benchmark runs at a stated accuracy budget (issue "Accuracy
first"): ``b05`` (+5 % perplexity), ``b20`` (+20 %), or ``stress`` (CATS 90 %: the sparsity of ReLU models, which
destroys this model's accuracy; kept only as a labelled stress regime).

The budget points are chosen by :func:`coact.workflow.choose_operating_point` (uniform CATS sparsity, calibrated on
corpus tokens [0, 1024), validated on [1024, 1536)) and cached as JSON in the benchmark's work folder, keyed by the
model id and the corpus, so later runs reuse them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

POINTS = {"b05": 0.05, "b20": 0.20, "stress": None}
STRESS_SPARSITY = 0.9


def label(name: str) -> str:
    return {"b05": "+5 % perplexity budget", "b20": "+20 % perplexity budget",
            "stress": "CATS 90 % stress regime (destroys accuracy)"}[name]


def operating_point(handle: Any, corpus: str, name: str, folder: Path) -> dict[str, Any]:
    """{"name", "label", "sparsity" (mean), "thresholds" (per layer, or None for the stress regime: calibrated by
    the capture itself), "validation": {...}} for point ``name``."""
    from coact.workflow import choose_operating_point

    if name not in POINTS:
        raise SystemExit(f"unknown operating point {name!r}; choose from {', '.join(POINTS)}")
    if POINTS[name] is None:
        return {"name": name, "label": label(name), "sparsity": STRESS_SPARSITY, "thresholds": None}
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / f"op-{name}.json"
    key = {"model_id": handle.model_id, "corpus": corpus, "budget": POINTS[name]}
    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            return got
    op = choose_operating_point(handle, corpus, POINTS[name], calib_tokens=1024, validation_tokens=512,
                                progress=False)
    out = {"name": name, "label": label(name), "sparsity": op.mean_sparsity, "thresholds": op.thresholds,
           "validation": op.to_dict(), "key": key}
    cache.write_text(json.dumps(out, indent=1))
    return out
