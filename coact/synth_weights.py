"""Seeded synthetic FFN weights, so a pack at any model shape can be written without the model.

Why: the flash side at 7B shape (32 x 11,008 neurons, d_model 4,096: fp16 up-down bundles of 16 KiB, larger than a
4 KiB page, as on the anchors' models) must be measured on a machine that has no such model. Replay only reads
bytes, so any weights of the right shape exercise the same I/O; seeded weights make the pack reproducible (the
same seed, shape and layout give the same file, checksums included).

Layer l's weights depend only on ``(seed, l)`` (numpy's PCG64 seeded with both), never on which process or in
which order layers are generated. Values are N(0, 1/d_model) in float32, like an initialised FFN.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from coact.errors import CoactError
from coact.progress import bars
from runtime.layout import Layout
from runtime.pack import BUNDLES, is_pack_file, write_pack
from common.atomic import check_output

__all__ = ["pack_synthetic", "synthetic_weights_fn"]


def synthetic_weights_fn(n_neurons: int, d_model: int, *, seed: int = 0,
                         bundle: str = "up-down") -> Callable[[int], Mapping[str, np.ndarray]]:
    """A ``runtime.pack.WeightsFn``: ``fn(layer)`` -> {"up": f32[N, d], "down": f32[d, N]} (+ "gate" for
    ``gate-up-down``), seeded per layer (see the module docstring)."""
    n, d = int(n_neurons), int(d_model)
    if n < 1 or d < 1:
        raise CoactError(f"synthetic weights need n_neurons >= 1 and d_model >= 1, got {n_neurons} and {d_model}")
    parts = [p for p in BUNDLES.get(bundle, ("up", "down"))]
    scale = np.float32(1.0 / np.sqrt(d))

    def fn(layer: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([int(seed), int(layer)])
        out: dict[str, np.ndarray] = {}
        for name in ("gate", "up", "down"):
            if name not in parts:
                continue
            shape = (d, n) if name == "down" else (n, d)
            w = rng.standard_normal(shape, dtype=np.float32)
            w *= scale
            out[name] = w
        return out

    return fn


def pack_synthetic(layout: Layout, out: str | Path, *, d_model: int, seed: int = 0, bundle: str = "up-down",
                   dtype: str = "fp16", progress: bool = True) -> Path:
    """Write the pack of ``layout`` with seeded synthetic weights of hidden size ``d_model`` (no model needed)."""
    check_output(out, kind="pack file", is_kind=is_pack_file)
    n = int(layout.perms[0].size) if layout.n_layers else 0
    fn = synthetic_weights_fn(n, d_model, seed=seed, bundle=bundle)
    write_pack(out, fn, layout, bundle=bundle, dtype=dtype, d_model=int(d_model), progress=bars(progress))
    return Path(out)
