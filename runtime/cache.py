"""DRAM caches of neuron bundles, in front of the flash reads.

Why a cache changes the picture: the load set of a token is its active set minus what DRAM already holds
(DESIGN §2), so a cache both removes bytes and breaks runs apart. Comparisons between placements are only fair at
the same DRAM budget, so the budget is in bytes, shared by all layers (one pool, as in a real inference engine), and
every policy guarantees ``resident bundles * bundle_bytes <= budget`` at all times.

Protocol (per token, layers in order): ``S = cache.filter(layer, A)`` gives the neurons still to load (and marks the
hits as used); after reading them ``cache.admit(layer, S)`` offers them to the cache. New policies (windowing of
LLM in a flash, Ripple's S3-FIFO) register with :func:`register_cache` and become selectable by name.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Cache(Protocol):
    """A DRAM bundle cache shared by all layers.

    Attributes:
        name: registry name (reported in the configuration).
        budget_bytes: DRAM budget for cached bundles, all layers together.
        bundle_bytes: size of one bundle (so capacity = budget_bytes // bundle_bytes bundles).
    """

    name: str
    budget_bytes: int
    bundle_bytes: int

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """Neurons of `neurons` that are not resident (the load set), in input order; hits count as a use."""
        ...

    def admit(self, layer: int, loaded: np.ndarray) -> None:
        """Offer the bundles just read; the policy may keep them (evicting others) or not."""
        ...

    @property
    def resident_bundles(self) -> int:
        """Number of bundles held now (all layers)."""
        ...

    def resident(self, layer: int) -> np.ndarray:
        """Sorted neuron ids of `layer` held now."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able configuration for reports."""
        ...


CacheFactory = Callable[..., Cache]
_CACHES: dict[str, CacheFactory] = {}


def register_cache(name: str) -> Callable[[CacheFactory], CacheFactory]:
    """Decorator adding a policy `factory(budget_bytes, bundle_bytes, **params) -> Cache` under `name`."""

    def deco(factory: CacheFactory) -> CacheFactory:
        _CACHES[name] = factory
        return factory

    return deco


def available_caches() -> list[str]:
    return sorted(_CACHES)


def get_cache(name: str | None, budget_bytes: int, bundle_bytes: int, **params: Any) -> Cache:
    """A fresh cache of policy `name` (``None`` means ``"none"``). Caches are stateful: use one per replay."""
    key = "none" if name is None else str(name)
    try:
        factory = _CACHES[key]
    except KeyError:
        raise ValueError(f"unknown cache policy {key!r}; available: {', '.join(available_caches())}") from None
    if int(budget_bytes) < 0 or int(bundle_bytes) <= 0:
        raise ValueError("budget_bytes must be >= 0 and bundle_bytes > 0")
    return factory(int(budget_bytes), int(bundle_bytes), **params)


class _Base:
    name = "base"

    def __init__(self, budget_bytes: int, bundle_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self.bundle_bytes = int(bundle_bytes)
        self.capacity = self.budget_bytes // self.bundle_bytes

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "budget_bytes": self.budget_bytes, "capacity_bundles": self.capacity}


@register_cache("none")
class NoCache(_Base):
    """Holds nothing: every active neuron is loaded (the no-cache baseline)."""

    name = "none"

    def __init__(self, budget_bytes: int = 0, bundle_bytes: int = 1):
        super().__init__(budget_bytes, bundle_bytes)
        self.capacity = 0

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        return np.asarray(neurons, dtype=np.int64)

    def admit(self, layer: int, loaded: np.ndarray) -> None:
        return None

    @property
    def resident_bundles(self) -> int:
        return 0

    def resident(self, layer: int) -> np.ndarray:
        return np.empty(0, dtype=np.int64)


@register_cache("lru")
class LRUCache(_Base):
    """Least-recently-used over (layer, neuron) bundles, one pool for all layers.

    Why this shape: the simulator calls the cache once per (token, layer), so per-neuron Python work (an
    OrderedDict) dominated whole simulations. Here every call is a handful of numpy operations:
    a [layers, neurons] array holds each resident bundle's last-use stamp (-1 = absent) and a touch log (layer,
    neuron, stamp) is appended in use order. The least recently used bundle is the oldest log entry whose stamp is
    still current, so eviction scans the log from its head, skipping stale entries (amortised O(1) per use); the
    log is compacted when stale entries dominate. Within one call, neurons count as used in input order.
    """

    name = "lru"

    def __init__(self, budget_bytes: int, bundle_bytes: int):
        super().__init__(budget_bytes, bundle_bytes)
        self._stamp = np.full((0, 0), -1, dtype=np.int64)
        self._log = np.empty((3, 1024), dtype=np.int64)  # rows: layer, neuron, stamp
        self._head = 0
        self._tail = 0
        self._clock = 0
        self._count = 0

    # -- internals
    def _ensure(self, layer: int, max_neuron: int) -> None:
        rows, cols = self._stamp.shape
        if layer < rows and max_neuron < cols:
            return
        new = np.full((max(rows, layer + 1), max(cols, 1 << int(max_neuron).bit_length())), -1, dtype=np.int64)
        new[:rows, :cols] = self._stamp
        self._stamp = new

    def _live(self, lo: int, hi: int) -> np.ndarray:
        log = self._log
        return self._stamp[log[0, lo:hi], log[1, lo:hi]] == log[2, lo:hi]

    def _append(self, layer: int, neurons: np.ndarray, stamps: np.ndarray) -> None:
        k = neurons.size
        if self._tail + k > self._log.shape[1]:
            live = self._head + np.flatnonzero(self._live(self._head, self._tail))  # drop stale entries
            kept = self._log[:, live]
            cap = max(self._log.shape[1], 2 * (kept.shape[1] + k))
            self._log = np.empty((3, cap), dtype=np.int64)
            self._log[:, : kept.shape[1]] = kept
            self._head, self._tail = 0, kept.shape[1]
        t = self._tail
        self._log[0, t : t + k] = layer
        self._log[1, t : t + k] = neurons
        self._log[2, t : t + k] = stamps
        self._tail = t + k

    def _touch(self, layer: int, neurons: np.ndarray) -> None:
        stamps = self._clock + np.arange(neurons.size, dtype=np.int64)
        self._clock += neurons.size
        self._stamp[layer, neurons] = stamps
        self._append(layer, neurons, stamps)

    def _evict(self, k: int) -> None:
        while k > 0:
            lo = self._head
            hi = min(self._tail, lo + max(2 * k, 1024))
            idx = np.flatnonzero(self._live(lo, hi))[:k]
            if idx.size:
                self._stamp[self._log[0, lo + idx], self._log[1, lo + idx]] = -1
                k -= idx.size
                self._count -= idx.size
            self._head = lo + int(idx[-1]) + 1 if (k == 0 and idx.size) else hi

    # -- protocol
    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        n = np.asarray(neurons, dtype=np.int64).reshape(-1)
        if self._count == 0 or n.size == 0 or layer >= self._stamp.shape[0]:
            return n
        inside = n < self._stamp.shape[1]
        hit = np.zeros(n.size, dtype=bool)
        hit[inside] = self._stamp[layer, n[inside]] >= 0
        if hit.any():
            self._touch(layer, n[hit])
        return n[~hit]

    def admit(self, layer: int, loaded: np.ndarray) -> None:
        cap = self.capacity
        n = np.asarray(loaded, dtype=np.int64).reshape(-1)
        if cap <= 0 or n.size == 0:
            return
        if np.unique(n).size != n.size:
            raise ValueError("admit() got duplicate neuron ids")
        if n.size > cap:  # more than fits: keep the last ones offered, as a sequential LRU would
            n = n[-cap:]
        self._ensure(int(layer), int(n.max()))
        self._count += int(np.count_nonzero(self._stamp[layer, n] < 0))
        self._touch(int(layer), n)
        if self._count > cap:
            self._evict(self._count - cap)

    @property
    def resident_bundles(self) -> int:
        return self._count

    def resident(self, layer: int) -> np.ndarray:
        if layer >= self._stamp.shape[0]:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self._stamp[layer] >= 0).astype(np.int64)
