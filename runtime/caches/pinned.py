"""PowerInfer's pinned hot set (``pinned``) and its combinations with a dynamic policy (``pinned+lru``,
``pinned+s3fifo``, ``pinned+window``, ``pinned+ripple``).

- ``pinned``: the neurons with the highest activation frequency (``freq[L, N]`` from profiling statistics) fill the
  budget and are held permanently; the choice is global over layers (frequencies are counts over the same tokens,
  so they compare across layers), ties broken by (layer, neuron). Nothing else is ever admitted.
- ``pinned+X``: a fraction of the budget (default 0.5) pinned as above, the rest managed by the dynamic policy X;
  a pinned neuron is never offered to the dynamic part.

Why a family of its own: these are the only policies that need profiling statistics (``freq``), so callers that
have none (the simulator on a bare trace) can tell them apart by name.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime.caches.base import (
    Cache,
    CacheBase,
    CacheFactory,
    get_cache,
    register_cache,
    table_members,
    table_values,
)
from runtime.errors import CacheError

#: The dynamic policies a pinned hot set is combined with (each gives a ``pinned+X`` policy).
DYNAMIC_POLICIES = ("lru", "s3fifo", "window", "ripple")


def _top_frequent(freq: np.ndarray, capacity: int) -> np.ndarray:
    """bool [L, N]: the `capacity` entries of `freq` with the highest counts (> 0), ties by (layer, neuron)."""
    f = np.asarray(freq)
    if f.ndim != 2:
        raise CacheError(f"freq must be a [layers, neurons] array of activation counts, got shape {f.shape}")
    mask = np.zeros(f.shape, dtype=bool)
    if capacity <= 0:
        return mask
    flat = f.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:capacity]
    order = order[flat[order] > 0]
    mask.reshape(-1)[order] = True
    return mask


@register_cache("pinned", "PowerInfer hot set: the most frequently activated neurons, pinned (needs freq)")
class PinnedCache(CacheBase):
    """PowerInfer's hot set (Song et al., "PowerInfer", SOSP 2024): the most frequently activated neurons are
    held permanently in DRAM, chosen once from profiling statistics.

    `freq` is int [L, N] (``CoactStats.freq``); the top ``budget // bundle_bytes`` entries with a positive count,
    over all layers, are pinned (ties broken by (layer, neuron) order). ``admit`` never adds anything.
    Any non-negative score works in place of counts (the top scores are pinned).
    """

    name = "pinned"

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, freq: np.ndarray | None = None):
        super().__init__(budget_bytes, bundle_bytes)
        if freq is None:
            raise CacheError("the pinned cache needs per-layer activation counts: pass freq=[layers, neurons] "
                             "(e.g. CoactStats.freq from the profiling trace)")
        self._pinned = _top_frequent(freq, self.capacity)
        self._count = int(self._pinned.sum())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pinned_bundles": self._count, "selection": "global top-frequency"}

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        n = np.asarray(neurons, dtype=np.int64).reshape(-1)
        if n.size == 0:
            return n
        return n[~table_values(self._pinned, layer, n, False)]

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        return None

    @property
    def resident_bundles(self) -> int:
        return self._count

    def resident(self, layer: int) -> np.ndarray:
        return table_members(lambda row: row, self._pinned, layer)


class PinnedPlusCache(CacheBase):
    """A pinned hot set (a fraction of the budget) in front of a dynamic policy (the rest of the budget).

    Why combine: the hot set catches the neurons that fire for almost every token, with no churn; the dynamic part
    catches the temporal locality of the current text (what windowing and S3-FIFO exploit). The budgets add up to
    at most `budget_bytes`; pinned neurons are hits and never reach the dynamic part.
    """

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, dynamic: str, freq: np.ndarray | None = None,
                 pinned_fraction: float = 0.5, **params: Any):
        super().__init__(budget_bytes, bundle_bytes)
        if not 0.0 <= float(pinned_fraction) <= 1.0:
            raise CacheError(f"pinned_fraction must be in [0, 1], got {pinned_fraction}")
        self.name = f"pinned+{dynamic}"
        self.pinned_fraction = float(pinned_fraction)
        pin_cap = int(self.capacity * self.pinned_fraction)
        self.pinned = PinnedCache(pin_cap * self.bundle_bytes, self.bundle_bytes, freq=freq)
        rest = self.budget_bytes - self.pinned.resident_bundles * self.bundle_bytes
        self.dynamic = get_cache(dynamic, rest, self.bundle_bytes, **params)
        self.wants_runs = bool(getattr(self.dynamic, "wants_runs", False))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pinned_fraction": self.pinned_fraction,
                "pinned": self.pinned.describe(), "dynamic": self.dynamic.describe()}

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        return self.dynamic.filter(layer, self.pinned.filter(layer, neurons))

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        self.dynamic.admit(layer, loaded, run_lengths)

    @property
    def resident_bundles(self) -> int:
        return self.pinned.resident_bundles + self.dynamic.resident_bundles

    def resident(self, layer: int) -> np.ndarray:
        return np.union1d(self.pinned.resident(layer), self.dynamic.resident(layer)).astype(np.int64)


def _pinned_plus(dynamic: str) -> CacheFactory:
    def factory(budget_bytes: int, bundle_bytes: int, **params: Any) -> Cache:
        return PinnedPlusCache(budget_bytes, bundle_bytes, dynamic=dynamic, **params)

    factory.__doc__ = f"pinned hot set + {dynamic} (see PinnedPlusCache)"
    return factory


for _dyn in DYNAMIC_POLICIES:
    register_cache(f"pinned+{_dyn}", f"pinned hot set + {_dyn} for the rest of the budget (needs freq)")(
        _pinned_plus(_dyn))
