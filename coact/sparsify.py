"""Sparsifiers: which neurons of a layer fire for a token.

All three act on `a = act(gate(x))` (act(fc1(x)) for plain MLPs), the value that decides in a gated MLP whether
neuron i contributes (its output is a_i * up_i(x) projected by down[:, i]).

- `relu`: a > 0 (ReLU-fied models, OPT; on SiLU models this gives ~50 % sparsity).
- `cats`: |a| > t_l, with t_l a per-layer threshold calibrated on profiling tokens so that a fraction `sparsity`
  of the values fall below it (Lee et al., "CATS: Contextually-Aware Thresholding for Sparsity", 2024).
- `topk`: the k = round((1 - sparsity) * N) largest |a| per token (exact sparsity on every token).

A sparsifier is a small object with `calibrate(samples)`, `mask(layer, a)` and `params()`, and a registry by name,
like the solvers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from common.registry import Registry
from coact.errors import CoactError


class Sparsifier(Protocol):
    name: str
    needs_calibration: bool

    def calibrate(self, samples: list[torch.Tensor]) -> None:
        """`samples[l]` is a float tensor [T, N] of activations of layer l on calibration tokens."""

    def mask(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        """Boolean [T, N]: which neurons fire."""

    def params(self) -> dict[str, Any]:
        """JSON-able description, recorded in trace metadata."""


def _check_sparsity(sparsity: float) -> float:
    if not 0.0 < float(sparsity) < 1.0:
        raise CoactError(f"sparsity must be in (0, 1), got {sparsity}")
    return float(sparsity)


@dataclass
class Relu:
    name: str = "relu"
    needs_calibration: bool = False

    def calibrate(self, samples: list[torch.Tensor]) -> None:
        return None

    def mask(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        return a > 0

    def params(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class Cats:
    sparsity: float = 0.9
    thresholds: list[float] | None = None
    name: str = "cats"
    needs_calibration: bool = True

    def __post_init__(self) -> None:
        self.sparsity = _check_sparsity(self.sparsity)
        self.needs_calibration = self.thresholds is None

    def calibrate(self, samples: list[torch.Tensor]) -> None:
        # np.quantile: torch.quantile refuses inputs above 16M elements.
        self.thresholds = [float(np.quantile(s.abs().float().numpy().ravel(), self.sparsity)) for s in samples]
        self.needs_calibration = False

    def mask(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        if self.thresholds is None:
            raise CoactError("cats sparsifier used before calibration")
        return a.abs() > self.thresholds[layer]

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "sparsity": self.sparsity, "thresholds": self.thresholds}


@dataclass
class TopK:
    sparsity: float = 0.9
    name: str = "topk"
    needs_calibration: bool = False
    k: int | None = field(default=None)

    def __post_init__(self) -> None:
        self.sparsity = _check_sparsity(self.sparsity)

    def calibrate(self, samples: list[torch.Tensor]) -> None:
        return None

    def mask(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        n = a.shape[-1]
        k = self.k or max(1, int(round((1.0 - self.sparsity) * n)))
        idx = a.abs().topk(k, dim=-1).indices
        out = torch.zeros_like(a, dtype=torch.bool)
        out.scatter_(-1, idx, True)
        return out

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "sparsity": self.sparsity, "k": self.k}


SPARSIFIERS: Registry[Callable[..., Sparsifier]] = Registry("sparsifier")
SPARSIFIERS.add("relu", lambda sparsity=None, thresholds=None: Relu(),
                "act(gate(x)) > 0: the natural sparsity of ReLU models")
SPARSIFIERS.add("cats", lambda sparsity=0.9, thresholds=None: Cats(sparsity=sparsity, thresholds=thresholds),
                "|act(gate(x))| above a per-layer threshold calibrated to a target sparsity (CATS)")
SPARSIFIERS.add("topk", lambda sparsity=0.9, thresholds=None: TopK(sparsity=sparsity),
                "the k largest |act(gate(x))| per token (exact sparsity on every token)")


def get_sparsifier(name: str, *, sparsity: float = 0.9, thresholds: list[float] | None = None) -> Sparsifier:
    """Build a sparsifier by name (`relu`, `cats`, `topk`)."""
    if name not in SPARSIFIERS:
        raise CoactError(f"unknown sparsifier {name!r}; available: {', '.join(SPARSIFIERS.names())}")
    _check_sparsity(sparsity)
    return SPARSIFIERS.create(name, sparsity=sparsity, thresholds=thresholds)
