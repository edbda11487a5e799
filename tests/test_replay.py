"""Real O_DIRECT replay vs simulation, the O_DIRECT reader, and the DRAM caches."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bits import pack_bits
from common.errors import RegistryError
from runtime import direct as rdirect
from runtime.caches import available_caches, get_cache
from runtime.direct import DirectFile, direct_io_supported
from runtime.engines import available_engines, get_engine
from runtime.errors import DirectIOUnsupported
from runtime.layout import Layout
from runtime.pack import PackError, PackFile, write_pack
from runtime.planner import byte_ranges, plan_reads
from runtime.replay import replay, simulate

L, N = 3, 256


def weights_fn(d: int):
    def fn(layer: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(layer)
        return {
            "gate": rng.standard_normal((N, d)).astype(np.float32),
            "up": rng.standard_normal((N, d)).astype(np.float32),
            "down": rng.standard_normal((d, N)).astype(np.float32),
        }

    return fn


def sparse_trace(T: int = 40, density: float = 0.1, seed: int = 3) -> np.ndarray:
    """Active sets with some temporal reuse (so caches have something to hit)."""
    rng = np.random.default_rng(seed)
    hot = rng.random((L, N)) < 0.15
    act = (rng.random((T, L, N)) < density) | (hot[None] & (rng.random((T, L, N)) < 0.5))
    return pack_bits(act)


@pytest.fixture
def small_pack(direct_io_dir: Path):
    """up-down fp16 with d=576: bundle_bytes 2304, as in SmolLM2 (bundles straddle 4 KiB pages)."""
    layout = Layout([np.random.default_rng(10 + i).permutation(N) for i in range(L)], model_id="toy", solver="rnd")
    path = write_pack(direct_io_dir / "toy.pack", weights_fn(576), layout, d_model=576)
    return path, layout


def test_direct_file_reads_match_buffered(small_pack):
    path, _ = small_pack
    raw = path.read_bytes()
    with DirectFile(path) as f:
        assert f.size == len(raw)
        for off, n in ((0, 4096), (8192, 3 * 4096), (4096, 2 << 20)):
            assert bytes(f.read(off, n)) == raw[off : off + n]
        tail = f.read(len(raw) - 4096, 8192)  # short read at end of file
        assert bytes(tail) == raw[-4096:]
        with pytest.raises(ValueError, match="aligned"):
            f.read(100, 4096)
        with pytest.raises(ValueError, match="aligned"):
            f.read(0, 1000)
    assert direct_io_supported(path) and direct_io_supported(path.parent)
    eng = get_engine("sync", path)
    try:
        eng.submit([0, 4096], [4096, 8192])  # returns only when complete; no exception = all bytes read
        with pytest.raises(OSError, match="short read"):
            eng.submit([len(raw)], [4096])
    finally:
        eng.close()
    assert "sync" in available_engines()
    with pytest.raises(RegistryError, match="unknown I/O engine"):
        get_engine("nope", path)


def test_no_o_direct_gives_clear_error(small_pack, monkeypatch):
    path, _ = small_pack
    # emulate a platform without O_DIRECT (this kernel's tmpfs accepts O_DIRECT, so no real fs to test on)
    monkeypatch.setattr(rdirect, "O_DIRECT", None)
    with pytest.raises(DirectIOUnsupported, match="O_DIRECT reads are not supported") as info:
        DirectFile(path)
    assert isinstance(info.value, OSError) and "real disk" in str(info.value)
    assert not direct_io_supported(path)


@pytest.mark.disk
@pytest.mark.parametrize("gap", [0, 3])
@pytest.mark.parametrize("policy", ["none", "lru"])
def test_replay_counts_equal_simulate(small_pack, gap: int, policy: str):
    path, layout = small_pack
    packed = sparse_trace()
    bb = PackFile(path).bundle_bytes
    budget = 200 * bb  # a bit over one token's active sets: LRU keeps the hot neurons

    sim = simulate(layout, packed, N, bundle_bytes=bb, collapse_gap=gap, cache=get_cache(policy, budget, bb))
    rep = replay(path, layout, packed, collapse_gap=gap, cache=get_cache(policy, budget, bb))

    assert rep.counts_dict() == sim.counts_dict()
    assert [m.reads for m in rep.per_layer] == [m.reads for m in sim.per_layer]
    assert rep.n_tokens == 40 and rep.loaded > 0
    assert rep.bytes_read >= rep.bytes_requested == rep.loaded * bb
    assert rep.reads <= rep.collapsed_reads <= rep.runs <= rep.loaded
    assert rep.mean_run_length == pytest.approx(rep.loaded / rep.runs)
    assert rep.latency_ms_p99 >= rep.latency_ms_p50 > 0 and rep.latency_ms_mean > 0
    assert rep.effective_bandwidth > 0 and rep.io_time_s > 0
    assert sim.latency_ms_mean is None and sim.effective_bandwidth is None
    if policy == "none":
        assert rep.active == rep.loaded and rep.hit_rate == 0
    else:
        assert rep.loaded < rep.active and 0 < rep.hit_rate < 1
    assert rep.config["collapse_gap"] == gap and rep.config["cache"]["policy"] == policy
    assert rep.config["engine"] == "sync" and rep.config["bundle_bytes"] == bb
    doc = json.loads(json.dumps(rep.to_dict()))
    assert doc["reads"] == rep.reads and len(doc["per_layer"]) == L
    assert rep.table().row_count > 5 and rep.layer_table().row_count == L


def test_simulate_counts_match_planner_per_token(small_pack):
    """The vectorised counting equals the per-set planner applied to each (token, layer) directly."""
    _, layout = small_pack
    packed = sparse_trace(T=12, seed=5)
    from common.bits import unpack_bits

    act = unpack_bits(packed, N)
    bb, gap = 2304, 2
    rep = simulate(layout, packed, N, bundle_bytes=bb, collapse_gap=gap, chunk_tokens=5)
    runs_n = reads_n = bytes_n = 0
    for t in range(act.shape[0]):
        for layer in range(L):
            pos = np.sort(layout.inverses[layer][np.flatnonzero(act[t, layer])])
            s, n = plan_reads(pos, 0)
            runs_n += s.size
            off, nb = byte_ranges(*plan_reads(pos, gap), 0, bb)
            reads_n += off.size
            bytes_n += int(nb.sum())
    assert (rep.runs, rep.reads, rep.bytes_read) == (runs_n, reads_n, bytes_n)
    assert rep.active == rep.loaded == int(act.sum())


@pytest.mark.disk
def test_dense_replay_reads_whole_layers(small_pack):
    path, layout = small_pack
    packed = sparse_trace(T=4)
    rep = replay(path, layout, packed, dense=True)
    region = -(-N * 2304 // 4096) * 4096
    assert rep.bytes_read == 4 * L * region and rep.reads_per_token == L * 1  # 590 KiB layer < one 1 MiB read
    assert rep.counts_dict() == simulate(layout, packed, N, bundle_bytes=2304, dense=True).counts_dict()
    assert rep.latency_ms_mean > 0


@pytest.mark.disk
def test_replay_gate_up_down_fp32_page_multiple_bundles(direct_io_dir: Path):
    """With 4 KiB-multiple bundles and no collapse, every run is exactly one request."""
    layout = Layout([np.random.default_rng(i).permutation(N) for i in range(L)], model_id="toy")
    path = write_pack(direct_io_dir / "g.pack", weights_fn(1024), layout, bundle="gate-up-down", dtype="fp32",
                      d_model=1024)
    packed = sparse_trace(T=10)
    rep = replay(path, layout, packed)
    assert rep.config["bundle_bytes"] == 3 * 1024 * 4
    assert rep.reads == rep.runs and rep.bytes_read == rep.bytes_requested and rep.overread == 1.0
    with pytest.raises(PackError, match="another layout"):
        replay(path, Layout.identity(N, L), packed)


# ------------------------------------------------------------------------------------------------------ caches


class ReferenceLRU:
    """Textbook LRU over (layer, neuron) keys, to check the vectorised one against."""

    def __init__(self, capacity: int):
        self.capacity, self.od = capacity, OrderedDict()

    def filter(self, layer, neurons):
        miss = []
        for n in neurons:
            if (layer, n) in self.od:
                self.od.move_to_end((layer, n))
            else:
                miss.append(n)
        return miss

    def admit(self, layer, loaded):
        if self.capacity <= 0:
            return
        for n in loaded[-self.capacity:]:
            self.od[(layer, n)] = None
            self.od.move_to_end((layer, n))
        while len(self.od) > self.capacity:
            self.od.popitem(last=False)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 40),
    st.lists(st.tuples(st.integers(0, 2), st.lists(st.integers(0, 70), max_size=25, unique=True)), max_size=40),
)
def test_lru_budget_and_hits(capacity: int, steps):
    bb = 100
    budget = capacity * bb + 37  # a budget that is not a bundle multiple
    cache = get_cache("lru", budget, bb)
    ref = ReferenceLRU(capacity)
    ever_loaded: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for layer, active in steps:
        a = np.array(active, dtype=np.int64)  # unsorted on purpose: input order is the use order
        resident_before = set(cache.resident(layer).tolist())
        load = cache.filter(layer, a)
        hits = set(active) - set(load.tolist())
        assert set(load.tolist()) <= set(active)
        assert hits <= ever_loaded[layer] and hits <= resident_before
        assert set(load.tolist()).isdisjoint(resident_before)
        cache.admit(layer, load)
        ever_loaded[layer] |= set(load.tolist())
        assert cache.resident_bundles * bb <= budget
        assert cache.resident_bundles == sum(cache.resident(x).size for x in range(3))
        # exactly LRU: same load sets and same resident sets as the textbook implementation
        assert load.tolist() == ref.filter(layer, active)
        ref.admit(layer, load.tolist())
        for x in range(3):
            assert cache.resident(x).tolist() == sorted(n for (y, n) in ref.od if y == x)
    if capacity == 0:
        assert cache.resident_bundles == 0


def test_lru_matches_reference_over_a_long_run():
    """Long enough to wrap and compact the touch log many times, with hot neurons reused across tokens."""
    rng = np.random.default_rng(0)
    cache, ref = get_cache("lru", 150 * 8, 8), ReferenceLRU(150)
    for step in range(1500):
        layer = step % 4
        active = rng.choice(300, size=rng.integers(0, 60), replace=False)
        active = np.concatenate([active[active >= 40], rng.choice(40, size=10, replace=False)])
        load = cache.filter(layer, active)
        assert load.tolist() == ref.filter(layer, active.tolist())
        cache.admit(layer, load)
        ref.admit(layer, load.tolist())
        assert cache.resident_bundles == len(ref.od) <= 150
    assert cache.resident(1).tolist() == sorted(n for (y, n) in ref.od if y == 1)


def test_lru_evicts_least_recently_used():
    cache = get_cache("lru", 3 * 10, 10)
    cache.admit(0, cache.filter(0, np.array([1, 2, 3])))
    assert cache.filter(0, np.array([1])).size == 0  # 1 becomes most recent
    cache.admit(1, cache.filter(1, np.array([9])))  # evicts layer 0 neuron 2 (shared pool)
    assert cache.resident(0).tolist() == [1, 3] and cache.resident(1).tolist() == [9]
    assert cache.filter(0, np.array([1, 2, 3])).tolist() == [2]


def test_cache_registry_and_none():
    assert {"none", "lru"} <= set(available_caches())
    none = get_cache(None, 10**9, 100)
    a = np.array([4, 1, 7])
    np.testing.assert_array_equal(none.filter(0, a), a)
    none.admit(0, a)
    assert none.resident_bundles == 0
    with pytest.raises(RegistryError, match="unknown cache policy"):
        get_cache("bogus", 1, 1)


def test_simulate_large_cache_reloads_nothing_for_repeated_token(small_pack):
    _, layout = small_pack
    one = sparse_trace(T=1)
    packed = np.repeat(one, 5, axis=0)
    bb = 2304
    rep = simulate(layout, packed, N, bundle_bytes=bb, cache=get_cache("lru", L * N * bb, bb))
    assert rep.loaded == rep.active // 5  # only the first token loads
    assert rep.hit_rate == pytest.approx(0.8)
