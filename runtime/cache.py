"""DRAM caches of neuron bundles, in front of the flash reads.

Why a cache changes the picture: the load set of a token is its active set minus what DRAM already holds
(DESIGN §2), so a cache both removes bytes and breaks runs apart. Comparisons between placements are only fair at
the same DRAM budget, so the budget is in bytes, shared by all layers (one pool, as in a real inference engine), and
every policy guarantees ``resident bundles * bundle_bytes <= budget`` at all times.

Protocol (per token, layers in order): ``S = cache.filter(layer, A)`` gives the neurons still to load (and marks the
hits as used); after reading them ``cache.admit(layer, S, run_lengths)`` offers them to the cache. `run_lengths`
(optional, same length as S) is, for every loaded neuron, the length in bundles of the run of consecutive flash
positions it was read in; the planner computes it only for policies that set ``wants_runs = True`` (``ripple``), so
existing callers that pass two arguments keep working.

Policies (all registered by name, all share one byte budget over all layers):

- ``none``: holds nothing.
- ``lru``: least recently used over (layer, neuron).
- ``s3fifo``: S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023): a small FIFO S
  (10 % of the capacity) that filters one-hit wonders, a main FIFO M with a 2-bit use counter and CLOCK-like
  reinsertion, and a ghost FIFO G of recently evicted keys (no data, not counted in the budget) so a key that comes
  back soon goes straight to M. Defaults follow libCacheSim's S3FIFO (small 0.10, ghost 0.90 of the capacity in
  entries, promotion from S to M at >= 2 hits while in S).
- ``window``: the sliding window of "LLM in a flash" (Alizadeh et al., 2024, §3.3): the neurons used by the last k
  tokens (default 5) of a layer stay resident and only the difference is loaded; when the window does not fit the
  budget, the least recently used bundles are evicted first.
- ``ripple``: S3-FIFO with run-aware admission, after Ripple (Wang et al., 2024, online stage) and Neuralink
  (Wang et al., 2025): a bundle read inside a long run of consecutive positions is cheap to read again with its
  neighbours (the request is paid anyway), while an isolated bundle costs a whole request. Exact rule: a loaded
  neuron whose run had length r is admitted to S3-FIFO with probability 1/r (r = 1, isolated: always; r = 4: one
  time in four), drawn from a generator seeded by `seed`, so a run is deterministic. A ghost hit still goes to M.
- ``pinned``: PowerInfer's hot set (Song et al., SOSP 2024): the neurons with the highest activation frequency
  (``freq[L, N]`` from profiling statistics) fill the budget and are held permanently; the choice is global over
  layers (frequencies are counts over the same tokens, so they compare across layers), ties broken by (layer,
  neuron). Nothing else is ever admitted.
- ``pinned+lru``, ``pinned+s3fifo``, ``pinned+window``, ``pinned+ripple``: a fraction of the budget (default 0.5)
  pinned as above, the rest managed by the dynamic policy; a pinned neuron is never offered to the dynamic part.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
from numba import njit


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

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        """Offer the bundles just read; the policy may keep them (evicting others) or not.

        `run_lengths[i]` (optional) is the length in bundles of the run of positions `loaded[i]` was read in.
        """
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
    wants_runs = False  # whether admit() uses run_lengths (the planner only computes them when asked)

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

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
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
        if layer >= self._stamp.shape[0]:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self._stamp[layer] >= 0).astype(np.int64)


# ------------------------------------------------------------------------------------------------------- helpers


def _grow2d(arr: np.ndarray, layer: int, max_neuron: int, fill: int) -> np.ndarray:
    rows, cols = arr.shape
    if layer < rows and max_neuron < cols:
        return arr
    new = np.full((max(rows, layer + 1), max(cols, 1 << int(max_neuron).bit_length())), fill, dtype=arr.dtype)
    new[:rows, :cols] = arr
    return new


_SHIFT = 32  # key = layer << 32 | neuron


# ------------------------------------------------------------------------------------------------------- S3-FIFO


# The S3-FIFO core runs in numba: the simulator calls a cache once per (token, layer) with ~100 misses each, and a
# per-key Python loop over deques cost ~10 us per key (seconds per policy on a few hundred tokens). State lives in
# flat arrays indexed by key = layer * ncols + neuron, queues are ring buffers, and the scalars sit in `st`.
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


@register_cache("s3fifo")
class S3FIFOCache(_Base):
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
            raise ValueError("s3fifo needs 0 < small_ratio < 1, ghost_ratio >= 0, move_to_main_threshold >= 1")
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
        if n.size == 0 or layer >= self._where.shape[0] or self.resident_bundles == 0:
            return n
        inside = n < self._where.shape[1]
        hit = np.zeros(n.size, dtype=bool)
        hit[inside] = self._where[layer, n[inside]] > 0
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
        if layer >= self._where.shape[0]:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self._where[layer] > 0).astype(np.int64)

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
        self._where = _grow2d(self._where, new_rows - 1, new_cols - 1, 0)
        self._freq = _grow2d(self._freq, new_rows - 1, new_cols - 1, 0)
        self._gser = _grow2d(self._gser, new_rows - 1, new_cols - 1, -1)
        self._ncols = self._where.shape[1]


@register_cache("ripple")
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

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, seed: int = 0, **params: Any):
        super().__init__(budget_bytes, bundle_bytes, **params)
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


# ------------------------------------------------------------------------------------------------------- window


@register_cache("window")
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
            raise ValueError("window size k must be >= 1")
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
        self._last = _grow2d(self._last, layer, max(max_neuron, 0), -(1 << 40))

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


# ------------------------------------------------------------------------------------------------------- pinned


def _top_frequent(freq: np.ndarray, capacity: int) -> np.ndarray:
    """bool [L, N]: the `capacity` entries of `freq` with the highest counts (> 0), ties by (layer, neuron)."""
    f = np.asarray(freq)
    if f.ndim != 2:
        raise ValueError(f"freq must be a [layers, neurons] array of activation counts, got shape {f.shape}")
    mask = np.zeros(f.shape, dtype=bool)
    if capacity <= 0:
        return mask
    flat = f.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:capacity]
    order = order[flat[order] > 0]
    mask.reshape(-1)[order] = True
    return mask


@register_cache("pinned")
class PinnedCache(_Base):
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
            raise ValueError("the pinned cache needs per-layer activation counts: pass freq=[layers, neurons] "
                             "(e.g. CoactStats.freq from the profiling trace)")
        self._pinned = _top_frequent(freq, self.capacity)
        self._count = int(self._pinned.sum())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pinned_bundles": self._count, "selection": "global top-frequency"}

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        n = np.asarray(neurons, dtype=np.int64).reshape(-1)
        if n.size == 0 or layer >= self._pinned.shape[0]:
            return n
        inside = n < self._pinned.shape[1]
        hit = np.zeros(n.size, dtype=bool)
        hit[inside] = self._pinned[layer, n[inside]]
        return n[~hit]

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        return None

    @property
    def resident_bundles(self) -> int:
        return self._count

    def resident(self, layer: int) -> np.ndarray:
        if layer >= self._pinned.shape[0]:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self._pinned[layer]).astype(np.int64)


class PinnedPlusCache(_Base):
    """A pinned hot set (a fraction of the budget) in front of a dynamic policy (the rest of the budget).

    Why combine: the hot set catches the neurons that fire for almost every token, with no churn; the dynamic part
    catches the temporal locality of the current text (what windowing and S3-FIFO exploit). The budgets add up to
    at most `budget_bytes`; pinned neurons are hits and never reach the dynamic part.
    """

    def __init__(self, budget_bytes: int, bundle_bytes: int, *, dynamic: str, freq: np.ndarray | None = None,
                 pinned_fraction: float = 0.5, **params: Any):
        super().__init__(budget_bytes, bundle_bytes)
        if not 0.0 <= float(pinned_fraction) <= 1.0:
            raise ValueError("pinned_fraction must be in [0, 1]")
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


for _dyn in ("lru", "s3fifo", "window", "ripple"):
    register_cache(f"pinned+{_dyn}")(_pinned_plus(_dyn))
