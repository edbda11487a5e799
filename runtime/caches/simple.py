"""The simple policies: ``none`` (the no-cache baseline), ``lru`` and ``window`` ("LLM in a flash").

Why these live together: ``window`` is LRU's machinery plus a per-layer expiry of neurons not used in the last k
tokens, and ``none`` is the reference every other policy is measured against.

- ``none``: holds nothing.
- ``lru``: least recently used over (layer, neuron).
- ``window``: the sliding window of "LLM in a flash" (Alizadeh et al., 2024, §3.3): the neurons used by the last k
  tokens (default 5) of a layer stay resident and only the difference is loaded; when the window does not fit the
  budget, the least recently used bundles are evicted first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime.caches.base import CacheBase, grow_table, register_cache, table_members, table_values
from runtime.errors import CacheError


@register_cache("none", "holds nothing: every active neuron is loaded (the no-cache baseline)")
class NoCache(CacheBase):
    """Holds nothing: every active neuron is loaded (the no-cache baseline)."""

    name = "none"

    def __init__(self, budget_bytes: int = 0, bundle_bytes: int = 1):
        super().__init__(budget_bytes, bundle_bytes)
        self.capacity = 0

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        return np.asarray(neurons, dtype=np.int64)

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        return None

    @property
    def resident_bundles(self) -> int:
        return 0

    def resident(self, layer: int) -> np.ndarray:
        return np.empty(0, dtype=np.int64)


@register_cache("lru", "least recently used over (layer, neuron) bundles, one pool for all layers")
class LRUCache(CacheBase):
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
        self._stamp = grow_table(self._stamp, layer, max_neuron, -1)

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
        if self._count == 0 or n.size == 0:
            return n
        hit = table_values(self._stamp, layer, n, -1) >= 0
        if hit.any():
            self._touch(layer, n[hit])
        return n[~hit]

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
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
        return table_members(lambda row: row >= 0, self._stamp, layer)



@register_cache("window", "LLM in a flash sliding window: neurons of the last k tokens stay (LRU over budget)")
class WindowCache(LRUCache):
    """The sliding window of "LLM in a flash" (Alizadeh et al., 2024, §3.3 "windowing").

    For each layer, the neurons active in the last `k` tokens stay in DRAM; a token loads only the difference
    between its active set and that window. Each layer counts its own tokens (one filter call per token and
    layer), and after admitting token t a layer drops the neurons last used at token t - k or earlier. When the
    window of all layers exceeds the budget, bundles are evicted least recently used first (the LRU machinery of
    :class:`LRUCache`), so the budget holds at every step; with an unbounded budget this is exactly the paper's
    window.
    """

    name = "window"

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, k: int = 5):
        super().__init__(budget_bytes, bundle_bytes)
        if int(k) < 1:
            raise CacheError(f"window size k must be >= 1, got {k}")
        self.k = int(k)
        self._tok = np.zeros(0, dtype=np.int64)  # per layer: index of the current token
        self._last = np.zeros((0, 0), dtype=np.int64)  # per (layer, neuron): last token it was used

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k}

    def _ensure_layer(self, layer: int, max_neuron: int) -> None:
        if layer >= self._tok.size:
            tok = np.zeros(layer + 1, dtype=np.int64)
            tok[: self._tok.size] = self._tok
            self._tok = tok
        self._last = grow_table(self._last, layer, max(max_neuron, 0), -(1 << 40))

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        n = np.asarray(neurons, dtype=np.int64).reshape(-1)
        self._ensure_layer(int(layer), int(n.max()) if n.size else 0)
        self._tok[layer] += 1
        t = self._tok[layer]
        miss = super().filter(layer, n)
        if miss.size != n.size:
            hit = np.setdiff1d(n, miss, assume_unique=True)
            self._last[layer, hit] = t
        return miss

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        n = np.asarray(loaded, dtype=np.int64).reshape(-1)
        self._ensure_layer(int(layer), int(n.max()) if n.size else 0)
        t = self._tok[layer]
        if n.size:
            self._last[layer, n] = t
        super().admit(layer, n)
        self._expire(int(layer), int(t))

    def _expire(self, layer: int, t: int) -> None:
        if layer >= self._stamp.shape[0]:
            return
        width = min(self._stamp.shape[1], self._last.shape[1])
        row = self._stamp[layer, :width]
        old = np.flatnonzero((row >= 0) & (self._last[layer, :width] <= t - self.k))
        if old.size:
            self._stamp[layer, old] = -1
            self._count -= int(old.size)


