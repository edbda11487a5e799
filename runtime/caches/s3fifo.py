"""S3-FIFO and its run-aware variant Ripple, with their numba kernels.

- ``s3fifo``: S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023): a small FIFO S
  (10 % of the capacity) that filters one-hit wonders, a main FIFO M with a 2-bit use counter and CLOCK-like
  reinsertion, and a ghost FIFO G of recently evicted keys (no data, not counted in the budget) so a key that comes
  back soon goes straight to M. Defaults follow libCacheSim's S3FIFO (small 0.10, ghost 0.90 of the capacity in
  entries, promotion from S to M at >= 2 hits while in S).
- ``ripple``: S3-FIFO with run-aware admission, after Ripple (Wang et al., 2024, online stage) and Neuralink
  (Wang et al., 2025): a bundle read inside a long run of consecutive positions is cheap to read again with its
  neighbours (the request is paid anyway), while an isolated bundle costs a whole request. Exact rule: a loaded
  neuron whose run had length r is admitted to S3-FIFO with probability 1/r (r = 1, isolated: always; r = 4: one
  time in four), drawn from a generator seeded by `seed`, so a run is deterministic. A ghost hit still goes to M.

Why numba: the simulator calls a cache once per (token, layer) with ~100 misses each, and a per-key Python loop
over deques cost ~10 us per key (seconds per policy on a few hundred tokens). State lives in flat arrays indexed by
key = layer * ncols + neuron, queues are ring buffers, and the scalars sit in `st`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from runtime.caches.base import CacheBase, grow_table, register_cache, table_members, table_values
from runtime.errors import CacheError

_S_HEAD, _S_LEN, _M_HEAD, _M_LEN, _G_HEAD, _G_LEN, _G_LIVE, _SERIAL = range(8)


@njit(cache=True)
def _s3_ghost_compact(G, Gs, gser, st):  # pragma: no cover - compiled
    R = G.size
    k = 0
    for i in range(st[_G_LEN]):
        j = (st[_G_HEAD] + i) % R
        key = G[j]
        if gser[key] == Gs[j]:
            G[k] = key
            Gs[k] = Gs[j]
            k += 1
    st[_G_HEAD] = 0
    st[_G_LEN] = k


@njit(cache=True)
def _s3_ghost_push(key, G, Gs, gser, st, ghost_cap):  # pragma: no cover - compiled
    R = G.size
    if st[_G_LEN] == R:
        _s3_ghost_compact(G, Gs, gser, st)
    j = (st[_G_HEAD] + st[_G_LEN]) % R
    G[j] = key
    Gs[j] = st[_SERIAL]
    gser[key] = st[_SERIAL]
    st[_SERIAL] += 1
    st[_G_LEN] += 1
    st[_G_LIVE] += 1
    while st[_G_LIVE] > ghost_cap:
        j = st[_G_HEAD]
        old = G[j]
        st[_G_HEAD] = (j + 1) % R
        st[_G_LEN] -= 1
        if gser[old] == Gs[j]:
            gser[old] = -1
            st[_G_LIVE] -= 1


@njit(cache=True)
def _s3_evict_small(where, freq, gser, S, M, G, Gs, st, ghost_cap, thr):  # pragma: no cover - compiled
    C = S.size
    while st[_S_LEN] > 0:
        key = S[st[_S_HEAD]]
        st[_S_HEAD] = (st[_S_HEAD] + 1) % C
        st[_S_LEN] -= 1
        if freq[key] >= thr:
            freq[key] = 0
            M[(st[_M_HEAD] + st[_M_LEN]) % C] = key
            st[_M_LEN] += 1
            where[key] = 2
            continue
        where[key] = 0
        if ghost_cap > 0:
            _s3_ghost_push(key, G, Gs, gser, st, ghost_cap)
        return True
    return False


@njit(cache=True)
def _s3_evict_main(where, freq, M, st):  # pragma: no cover - compiled
    C = M.size
    while st[_M_LEN] > 0:
        key = M[st[_M_HEAD]]
        st[_M_HEAD] = (st[_M_HEAD] + 1) % C
        f = freq[key]
        if f > 0:
            freq[key] = f - 1
            M[(st[_M_HEAD] + st[_M_LEN] - 1) % C] = key
            continue
        st[_M_LEN] -= 1
        where[key] = 0
        return


@njit(cache=True)
def _s3_insert(keys, where, freq, gser, S, M, G, Gs, st, small_target, ghost_cap, thr):  # pragma: no cover
    C = S.size
    for i in range(keys.size):
        key = keys[i]
        if where[key] != 0:
            continue
        while st[_S_LEN] + st[_M_LEN] >= C:
            if st[_S_LEN] >= small_target or st[_M_LEN] == 0:
                if _s3_evict_small(where, freq, gser, S, M, G, Gs, st, ghost_cap, thr):
                    continue
            _s3_evict_main(where, freq, M, st)
        freq[key] = 0
        if gser[key] >= 0:
            gser[key] = -1
            st[_G_LIVE] -= 1
            M[(st[_M_HEAD] + st[_M_LEN]) % C] = key
            st[_M_LEN] += 1
            where[key] = 2
        else:
            S[(st[_S_HEAD] + st[_S_LEN]) % C] = key
            st[_S_LEN] += 1
            where[key] = 1


@register_cache("s3fifo", "S3-FIFO (SOSP 2023): small FIFO for one-hit wonders, main FIFO, ghost queue")
class S3FIFOCache(CacheBase):
    """S3-FIFO (Yang, Zhang, Qiu, Yue, Rashmi: "FIFO queues are all you need for cache eviction", SOSP 2023).

    Three FIFO queues over (layer, neuron) keys, one pool for all layers:

    - S, the small queue (``small_ratio`` = 10 % of the capacity): every new key enters here;
    - M, the main queue (the rest): keys that proved useful;
    - G, the ghost queue (``ghost_ratio`` = 90 % of the capacity, keys only, no bundle: not counted in the budget).

    A hit increments the key's 2-bit counter (capped at 3). To make room: if |S| >= small_ratio * capacity (or M is
    empty) the tail of S is examined - promoted to M with its counter reset if it was hit at least
    ``move_to_main_threshold`` times while in S, otherwise evicted and remembered in G - and this repeats until one
    key has left (if S runs empty first, M evicts); otherwise the tail of M is examined - reinserted at M's head
    with counter - 1 if the counter is positive (CLOCK-like), evicted otherwise. A missed key found in G is
    inserted into M directly. Defaults (0.10, 0.90, 2) are libCacheSim's S3FIFO defaults. Within one admit call,
    keys are inserted in the order given. (The queues run in numba; `tests/test_caches.py` checks them against a
    textbook deque implementation.)

    Why it fits neuron caching: most active neurons of a token are "one-hit wonders" for that token and S drops
    them quickly, while the frequently re-activated ones reach M and stay.
    """

    name = "s3fifo"

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, small_ratio: float = 0.10, ghost_ratio: float = 0.90,
                 move_to_main_threshold: int = 2):
        super().__init__(budget_bytes, bundle_bytes)
        if not 0.0 < float(small_ratio) < 1.0 or float(ghost_ratio) < 0 or int(move_to_main_threshold) < 1:
            raise CacheError("s3fifo needs 0 < small_ratio < 1, ghost_ratio >= 0, move_to_main_threshold >= 1")
        self.small_ratio = float(small_ratio)
        self.ghost_ratio = float(ghost_ratio)
        self.threshold = int(move_to_main_threshold)
        self._small_target = self.small_ratio * self.capacity
        self._ghost_cap = int(round(self.ghost_ratio * self.capacity))
        C = max(1, self.capacity)
        self._ncols = 0
        self._where = np.zeros((0, 0), dtype=np.int8)  # 0 absent, 1 in S, 2 in M
        self._freq = np.zeros((0, 0), dtype=np.int8)
        self._gser = np.full((0, 0), -1, dtype=np.int64)  # serial of the key's live ghost entry, -1 if none
        self._S = np.zeros(C, dtype=np.int64)
        self._M = np.zeros(C, dtype=np.int64)
        R = 2 * (self._ghost_cap + C) + 16
        self._G = np.zeros(R, dtype=np.int64)
        self._Gs = np.zeros(R, dtype=np.int64)
        self._st = np.zeros(8, dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "small_ratio": self.small_ratio, "ghost_ratio": self.ghost_ratio,
                "move_to_main_threshold": self.threshold}

    # -- protocol
    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        n = np.asarray(neurons, dtype=np.int64).reshape(-1)
        if n.size == 0 or self.resident_bundles == 0:
            return n
        hit = table_values(self._where, layer, n, 0) > 0
        if hit.any():
            h = n[hit]
            self._freq[layer, h] = np.minimum(self._freq[layer, h] + 1, 3)
        return n[~hit]

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        n = np.asarray(loaded, dtype=np.int64).reshape(-1)
        if self.capacity <= 0 or n.size == 0:
            return
        n = self._admission(layer, n, run_lengths)
        if n.size == 0:
            return
        self._ensure(int(layer), int(n.max()))
        keys = int(layer) * self._ncols + n
        _s3_insert(keys, self._where.reshape(-1), self._freq.reshape(-1), self._gser.reshape(-1), self._S, self._M,
                   self._G, self._Gs, self._st, float(self._small_target), int(self._ghost_cap), int(self.threshold))

    def _admission(self, layer: int, n: np.ndarray, run_lengths: np.ndarray | None) -> np.ndarray:
        """Which offered neurons enter the cache (all of them for plain S3-FIFO)."""
        return n

    @property
    def resident_bundles(self) -> int:
        return int(self._st[_S_LEN] + self._st[_M_LEN])

    def resident(self, layer: int) -> np.ndarray:
        return table_members(lambda row: row > 0, self._where, layer)

    # -- internals
    def _ensure(self, layer: int, max_neuron: int) -> None:
        rows, cols = self._where.shape
        if layer < rows and max_neuron < cols:
            return
        new_rows = max(rows, layer + 1)
        new_cols = max(cols, 1 << int(max_neuron).bit_length())
        if cols and new_cols != cols:  # re-encode every key held in the rings (layer * cols + neuron)
            for ring in (self._S, self._M, self._G):
                ring[:] = (ring // cols) * new_cols + ring % cols
        self._where = grow_table(self._where, new_rows - 1, new_cols - 1, 0)
        self._freq = grow_table(self._freq, new_rows - 1, new_cols - 1, 0)
        self._gser = grow_table(self._gser, new_rows - 1, new_cols - 1, -1)
        self._ncols = self._where.shape[1]



@register_cache("ripple", "S3-FIFO admitting a neuron read in a run of length r with probability 1/r (Ripple)")
class RippleCache(S3FIFOCache):
    """S3-FIFO whose admission is less likely for neurons inside long co-activated runs (Ripple / Neuralink).

    Rule: a loaded neuron whose run of consecutive flash positions had length r is admitted with probability 1/r
    (isolated neurons always). Why: a cached neuron only saves a request if it would otherwise be read on its
    own; a neuron in the middle of a long run is read by the same request as its neighbours, and caching it alone
    can even split that run into two requests next time. Draws come from ``numpy.random.default_rng(seed)`` in
    call order, so a replay is deterministic. Without run lengths (a caller that does not plan runs) every
    neuron counts as isolated, i.e. plain S3-FIFO.
    """

    name = "ripple"
    wants_runs = True

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, seed: int = 0, small_ratio: float = 0.10,
                 ghost_ratio: float = 0.90, move_to_main_threshold: int = 2):
        super().__init__(budget_bytes, bundle_bytes, small_ratio=small_ratio, ghost_ratio=ghost_ratio,
                         move_to_main_threshold=move_to_main_threshold)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "admission": "probability 1/run_length", "seed": self.seed}

    def _admission(self, layer: int, n: np.ndarray, run_lengths: np.ndarray | None) -> np.ndarray:
        if run_lengths is None:
            return n
        r = np.asarray(run_lengths, dtype=np.float64).reshape(-1)
        if r.shape != n.shape:
            raise ValueError("run_lengths must have one entry per loaded neuron")
        u = self._rng.random(n.size)
        return n[u * np.maximum(r, 1.0) < 1.0]


