"""DRAM cache policies: the importable conformance suite (:mod:`runtime.testing`) run over every registered policy
and over a third-party policy, plus reference checks of the individual policies.

The suite's promises (every policy, seeded and hypothesis-generated access sequences over several layers):
- the budget holds after every call: resident bundles * bundle_bytes <= budget;
- the load set is exactly the active set minus what was resident just before, in input order;
- a hit is only ever on a neuron that was loaded (offered to admit) before, or pinned from the start;
- the same sequence gives the same load sets (determinism, seeds included); budget 0 caches nothing;
  layers are separate; describe() is JSON-able.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bits import pack_bits
from common.errors import RegistryError
from runtime.caches import CACHES, CacheBase, CacheError, available_caches, get_cache, register_cache
from runtime.layout import Layout
from runtime.planner import load_run_lengths
from runtime.replay import simulate
from runtime.testing import (
    CHECK_LAYERS,
    CHECK_NEURONS,
    cache_checks,
    check_cache,
    check_freq,
    parametrize_with_checks,
)

NL, NN = CHECK_LAYERS, CHECK_NEURONS
BB = 100

steps_strategy = st.lists(
    st.tuples(st.integers(0, NL - 1), st.lists(st.integers(0, NN - 1), max_size=20, unique=True)),
    max_size=30,
)


def _freq(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, size=(NL, NN))


def make(name: str, capacity: int, extra: int = 37, **params):
    if name.startswith("pinned"):
        params.setdefault("freq", _freq())
    return get_cache(name, capacity * BB + extra, BB, **params)


def _suite_params(name: str) -> dict[str, Any]:
    return {"freq": check_freq()} if name.startswith("pinned") else {}


@parametrize_with_checks([(name, _suite_params(name)) for name in available_caches()])
def test_cache_conformance(make, check):
    check(make)


class FifoCache(CacheBase):
    """A third-party policy (plain FIFO, not registered by coact) held to the same promises."""

    name = "fifo-example"

    def __init__(self, budget_bytes: int, bundle_bytes: int):
        super().__init__(budget_bytes, bundle_bytes)
        self._queue: deque[tuple[int, int]] = deque()
        self._held: set[tuple[int, int]] = set()

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        n = np.asarray(neurons, dtype=np.int64).reshape(-1)
        return n[[(layer, int(x)) not in self._held for x in n]] if n.size else n

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        for x in np.asarray(loaded, dtype=np.int64).tolist():
            if self.capacity <= 0 or (layer, x) in self._held:
                continue
            if len(self._queue) >= self.capacity:
                self._held.discard(self._queue.popleft())
            self._queue.append((layer, x))
            self._held.add((layer, x))

    @property
    def resident_bundles(self) -> int:
        return len(self._held)

    def resident(self, layer: int) -> np.ndarray:
        return np.array(sorted(n for (l, n) in self._held if l == layer), dtype=np.int64)


def test_third_party_cache_passes_the_suite():
    check_cache(FifoCache)
    assert len(list(cache_checks())) >= 7


def test_broken_cache_fails_the_suite():
    class Greedy(FifoCache):  # ignores its budget
        def __init__(self, budget_bytes: int, bundle_bytes: int):
            super().__init__(10**9, bundle_bytes)
            self.budget_bytes = budget_bytes

    with pytest.raises(AssertionError, match="budget"):
        check_cache(Greedy)


def test_registry_lists_all_policies_and_refuses_duplicates():
    assert {"none", "lru", "s3fifo", "window", "ripple", "pinned", "pinned+lru", "pinned+s3fifo",
            "pinned+window", "pinned+ripple"} <= set(available_caches())
    assert all(CACHES.describe().values()), "every policy has a one-line description"
    with pytest.raises(CacheError, match="freq"):
        get_cache("pinned", 1000, 10)
    with pytest.raises(CacheError, match="window size"):
        get_cache("window", 1000, 10, k=0)
    with pytest.raises(CacheError, match="budget"):
        get_cache("lru", -1, 10)
    with pytest.raises(RegistryError, match="unknown cache policy 'nope'"):
        get_cache("nope", 1000, 10)
    with pytest.raises(RegistryError, match="bad parameters"):
        get_cache("s3fifo", 1000, 10, smal_ratio=0.2)
    with pytest.raises(RegistryError, match="registered already"):
        register_cache("lru")(FifoCache)


# --------------------------------------------------------------------------------------------- S3-FIFO reference


class RefS3FIFO:
    """Textbook S3-FIFO over hashable keys (Yang et al., SOSP'23; libCacheSim defaults), one object at a time."""

    def __init__(self, cap: int, small=0.1, ghost=0.9, thr=2):
        self.cap, self.small, self.thr = cap, small * cap, thr
        self.gcap = int(round(ghost * cap))
        self.S: deque = deque()
        self.M: deque = deque()
        self.G: OrderedDict = OrderedDict()
        self.freq: dict = {}
        self.where: dict = {}

    def filter(self, keys):
        miss = []
        for k in keys:
            if k in self.where:
                self.freq[k] = min(self.freq[k] + 1, 3)
            else:
                miss.append(k)
        return miss

    def evict(self):
        if len(self.S) >= self.small or not self.M:
            while self.S:
                k = self.S.popleft()
                if self.freq[k] >= self.thr:
                    self.freq[k] = 0
                    self.M.append(k)
                    self.where[k] = "M"
                    continue
                del self.where[k]
                if self.gcap:
                    self.G[k] = None
                    if len(self.G) > self.gcap:
                        self.G.popitem(last=False)
                return
        while self.M:
            k = self.M.popleft()
            if self.freq[k] > 0:
                self.freq[k] -= 1
                self.M.append(k)
                continue
            del self.where[k]
            return

    def admit(self, keys):
        if self.cap <= 0:
            return
        for k in keys:
            if k in self.where:
                continue
            while len(self.S) + len(self.M) >= self.cap:
                self.evict()
            self.freq[k] = 0
            if k in self.G:
                del self.G[k]
                self.M.append(k)
                self.where[k] = "M"
            else:
                self.S.append(k)
                self.where[k] = "S"


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(0, 30), steps=steps_strategy)
def test_s3fifo_matches_reference(capacity: int, steps):
    cache = make("s3fifo", capacity)
    ref = RefS3FIFO(capacity)
    for layer, active in steps:
        got = cache.filter(layer, np.array(active, dtype=np.int64)).tolist()
        want = [n for (_, n) in ref.filter([(layer, n) for n in active])]
        assert got == want
        cache.admit(layer, np.array(got, dtype=np.int64))
        ref.admit([(layer, n) for n in got])
        assert cache.resident_bundles == len(ref.where)


def test_s3fifo_promotes_reused_and_keeps_them_against_a_scan():
    cache = get_cache("s3fifo", 10 * BB, BB)
    hot = np.arange(5)
    for _ in range(4):  # hot neurons are hit repeatedly
        cache.admit(0, cache.filter(0, hot))
    for start in range(100, 400, 5):  # a long scan of one-hit wonders
        cache.admit(0, cache.filter(0, np.arange(start, start + 5)))
    assert cache.filter(0, hot).size == 0  # the hot set survived the scan in M


# --------------------------------------------------------------------------------------------------- window


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), steps=st.lists(st.lists(st.integers(0, NN - 1), max_size=15, unique=True), max_size=25))
def test_window_unbounded_is_last_k_tokens(k: int, steps):
    """With room for everything, a token loads exactly its active set minus the union of the last k tokens'."""
    cache = get_cache("window", 10**9, BB, k=k)
    hist: list[set[int]] = []
    for active in steps:
        window = set().union(*hist[-k:]) if hist else set()
        got = cache.filter(1, np.array(active, dtype=np.int64)).tolist()
        assert got == [a for a in active if a not in window]
        cache.admit(1, np.array(got, dtype=np.int64))
        hist.append(set(active))
        assert set(cache.resident(1).tolist()) == set().union(*hist[-k:])


def test_window_over_budget_evicts_least_recently_used():
    cache = get_cache("window", 4 * BB, BB, k=5)
    cache.admit(0, cache.filter(0, np.array([1, 2, 3])))
    cache.admit(0, cache.filter(0, np.array([1, 4, 5])))  # 2 and 3 are the least recently used
    assert cache.resident_bundles == 4
    assert set(cache.resident(0).tolist()) == {1, 3, 4, 5}  # 1 was re-used, so 2 went first


# --------------------------------------------------------------------------------------------------- ripple


def test_ripple_admission_prefers_isolated_neurons():
    rng_runs = np.array([1] * 50 + [10] * 50)
    cache = get_cache("ripple", 1000 * BB, BB, seed=3)
    neurons = np.arange(100)
    cache.admit(0, cache.filter(0, neurons), rng_runs)
    res = set(cache.resident(0).tolist())
    assert set(range(50)) <= res  # isolated: always admitted
    assert 0 < len(res - set(range(50))) < 20  # run length 10: about one in ten
    # without run lengths it behaves as plain S3-FIFO
    plain, rip = get_cache("s3fifo", 20 * BB, BB), get_cache("ripple", 20 * BB, BB)
    for t in range(10):
        a = np.arange(t, t + 15)
        x, y = plain.filter(0, a), rip.filter(0, a)
        assert x.tolist() == y.tolist()
        plain.admit(0, x)
        rip.admit(0, y)
    with pytest.raises(ValueError, match="one entry per"):
        rip.admit(1, np.array([1, 2]), np.array([1]))


def test_load_run_lengths():
    inv = np.array([5, 0, 1, 2, 9, 7, 6])  # neuron -> position
    n = np.array([4, 0, 2, 1, 3, 6])  # positions 9, 5, 1, 0, 2, 6
    assert load_run_lengths(inv, n).tolist() == [1, 2, 3, 3, 3, 2]
    assert load_run_lengths(inv, np.array([], dtype=np.int64)).size == 0


# --------------------------------------------------------------------------------------------------- pinned


def test_pinned_holds_top_frequency_globally():
    freq = np.array([[5, 0, 9, 1], [9, 3, 3, 0]])
    cache = get_cache("pinned", 3 * BB + 50, BB, freq=freq)
    assert cache.resident(0).tolist() == [0, 2] and cache.resident(1).tolist() == [0]
    assert cache.filter(0, np.array([3, 2, 0, 1])).tolist() == [3, 1]
    cache.admit(0, np.array([3, 1]))
    assert cache.resident_bundles == 3
    assert get_cache("pinned", 100 * BB, BB, freq=freq).resident_bundles == 6  # zero counts are not pinned


def test_pinned_plus_dynamic_splits_the_budget():
    freq = _freq(1)
    c = get_cache("pinned+lru", 20 * BB, BB, freq=freq, pinned_fraction=0.25)
    assert c.pinned.resident_bundles == 5 and c.dynamic.capacity == 15
    assert c.describe()["dynamic"]["policy"] == "lru"
    pinned = c.pinned.resident(0)
    s = c.filter(0, np.arange(NN))
    assert not set(pinned.tolist()) & set(s.tolist())
    c.admit(0, s)
    assert c.resident_bundles == 20
    assert get_cache("pinned+ripple", 10 * BB, BB, freq=freq).wants_runs


# ------------------------------------------------------------------------------------------ through simulate


@pytest.mark.parametrize("policy", ["s3fifo", "window", "ripple", "pinned", "pinned+s3fifo"])
def test_simulate_with_every_policy_respects_counts(policy: str):
    rng = np.random.default_rng(7)
    T, L, N = 30, 2, 64
    hot = rng.random((L, N)) < 0.2
    act = (rng.random((T, L, N)) < 0.08) | (hot[None] & (rng.random((T, L, N)) < 0.6))
    packed = pack_bits(act)
    layout = Layout([rng.permutation(N) for _ in range(L)])
    bb = 2304
    params = {"freq": act.sum(axis=0)} if policy.startswith("pinned") else {}
    budget = 20 * bb
    rep = simulate(layout, packed, N, bundle_bytes=bb, cache=get_cache(policy, budget, bb, **params))
    again = simulate(layout, packed, N, bundle_bytes=bb, cache=get_cache(policy, budget, bb, **params))
    none = simulate(layout, packed, N, bundle_bytes=bb)
    assert rep.counts_dict() == again.counts_dict()
    assert rep.active == none.active and 0 < rep.loaded < rep.active
    assert rep.config["cache"]["policy"] == policy
