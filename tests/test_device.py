"""Device profiling, the fitted cost model, modelled latency in the simulator and collapse 'auto'."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.bits import pack_bits
from runtime.device import (
    Cell,
    CostModel,
    cost_model_from_profile,
    ensure_test_file,
    fit_cost_model,
    plot_profile,
    profile_device,
)
from runtime.errors import DeviceError, PlanError
from runtime.layout import Layout
from runtime.pack import write_pack
from runtime.replay import replay, resolve_collapse, simulate

KiB = 1024


def _cells(a: dict[int, float], b: dict[int, float], sizes=(4096, 16384, 65536, 262144)) -> list[dict]:
    return [{"size": s, "queue_depth": q, "per_request_s": a[q] + b[q] * s, "latency_mean_s": q * (a[q] + b[q] * s),
             "throughput": s / (a[q] + b[q] * s)} for q in a for s in sizes]


def test_fit_recovers_linear_costs():
    a = {1: 80e-6, 4: 30e-6}
    b = {1: 1.5e-9, 4: 1.2e-9}
    cm = fit_cost_model(_cells(a, b), seq_bandwidth=1.5e9)
    assert cm.queue_depths == [1, 4]
    for i, q in enumerate(cm.queue_depths):
        assert cm.per_request_s[i] == pytest.approx(a[q], rel=1e-6)
        assert cm.per_byte_s[i] == pytest.approx(b[q], rel=1e-6)
        assert cm.latency_a_s[i] == pytest.approx(q * a[q], rel=1e-6)
    assert cm.read_time(8192, qd=1) == pytest.approx(80e-6 + 1.5e-9 * 8192)
    assert cm.read_time(8192, qd=3) == cm.read_time(8192, qd=1)  # largest profiled depth <= 3 is 1
    assert cm.read_time(8192, qd=64) == cm.read_time(8192, qd=4)
    with pytest.raises(DeviceError, match="two distinct"):
        fit_cost_model([{"size": 4096, "queue_depth": 1, "per_request_s": 1e-4}])
    with pytest.raises(DeviceError, match="no cells"):
        fit_cost_model([])


def test_collapse_gap_is_break_even():
    cm = CostModel.synthetic(per_request_s=100e-6, per_byte_s=1e-9)
    g = cm.collapse_gap(2304)
    assert g == 43  # floor(100 us / (2304 B * 1 ns/B))
    a, b = cm.coefficients(1)
    assert g * 2304 * b <= a < (g + 1) * 2304 * b  # g extra bundles are cheaper than a request, g + 1 are not
    assert CostModel.synthetic(per_request_s=1e-6, per_byte_s=1e-9).collapse_gap(2304) == 0
    assert CostModel.synthetic(per_byte_s=0.0).collapse_gap(2304, max_gap=99) == 99
    with pytest.raises(ValueError):
        cm.collapse_gap(0)


def test_batch_time_uses_effective_depth():
    cm = fit_cost_model(_cells({1: 100e-6, 2: 60e-6, 8: 20e-6}, {1: 1e-9, 2: 1e-9, 8: 1e-9}), seq_bandwidth=1e9)
    reads = np.array([[0, 1, 2, 5, 40]])
    nbytes = np.array([[0, 4096, 8192, 20480, 163840]])
    t = cm.batch_time(reads, nbytes, qd=8)
    assert t.shape == (1, 5) and t[0, 0] == 0
    assert t[0, 1] == pytest.approx(100e-6 + 4096e-9)  # one read: depth 1
    assert t[0, 2] == pytest.approx(2 * 60e-6 + 8192e-9)  # two reads: depth 2
    assert t[0, 3] == pytest.approx(5 * 60e-6 + 20480e-9)  # five reads: largest profiled depth <= 5 is 2
    assert t[0, 4] == pytest.approx(40 * 20e-6 + 163840e-9)
    assert cm.batch_time(3, 12288, qd=1) == pytest.approx(3 * 100e-6 + 12288e-9)
    assert cm.physical_limit_s(2e9) == pytest.approx(2.0)


def test_save_load_roundtrip(tmp_path: Path):
    cm = fit_cost_model(_cells({1: 80e-6, 2: 50e-6}, {1: 1e-9, 2: 1e-9}), seq_bandwidth=2e9, meta={"path": "/x"})
    p = cm.save(tmp_path / "cost.json")
    back = CostModel.load(p)
    assert back == cm
    doc = json.loads(p.read_text())
    assert doc["format"] == "coact-cost-model" and doc["version"] == 1
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DeviceError, match="bad.json"):
        CostModel.load(tmp_path / "bad.json")
    doc["per_byte_s"] = doc["per_byte_s"][:1]
    (tmp_path / "short.json").write_text(json.dumps(doc))
    with pytest.raises(DeviceError, match="every list"):
        CostModel.load(tmp_path / "short.json")


@pytest.mark.disk
def test_profile_device_small(direct_io_dir: Path, tmp_path: Path):
    prof = profile_device(direct_io_dir, sizes=(4 * KiB, 16 * KiB), queue_depths=(1, 2), reads_per_cell=24,
                          seconds_per_cell=0.5, file_bytes=1 << 20, seq_chunk=64 * KiB, seq_bytes=512 * KiB)
    f = direct_io_dir / "coact-device-profile.bin"
    assert f.stat().st_size == 1 << 20
    head = f.read_bytes()[:65536]
    assert len(set(head)) > 200  # random data, not a sparse/zero file the device could skip
    assert len(prof.cells) == 4 and {c.queue_depth for c in prof.cells} == {1, 2}
    for c in prof.cells:
        assert 0 < c.reads <= 24 and c.bytes == c.reads * c.size
        assert c.throughput > 0 and c.latency_p99_s >= c.latency_p50_s > 0 and c.per_request_s > 0
    assert prof.seq_bandwidth > 0 and [s["queue_depth"] for s in prof.seq_cells] == [1, 2, 4]
    assert prof.meta["o_direct"] and prof.meta["file_bytes"] == 1 << 20
    cm = cost_model_from_profile(prof)
    assert cm.queue_depths == [1, 2] and cm.seq_bandwidth >= prof.seq_bandwidth
    assert all(x >= 0 for x in cm.per_request_s + cm.per_byte_s)
    png = plot_profile(prof, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plot_profile(cm, tmp_path / "q.png").exists()  # the model keeps its cells
    # an existing, big enough file is reused as is
    before = f.read_bytes()[:4096]
    ensure_test_file(f, 1 << 19)
    assert f.read_bytes()[:4096] == before
    with pytest.raises(DeviceError, match="multiples"):
        profile_device(direct_io_dir, sizes=(1000,))


# ------------------------------------------------------------------------------------------- simulator + auto


def _toy(T=20, L=2, N=128, seed=0):
    rng = np.random.default_rng(seed)
    act = rng.random((T, L, N)) < 0.15
    return pack_bits(act), Layout([rng.permutation(N) for _ in range(L)], model_id="toy"), N


def test_simulate_fills_modelled_latency():
    packed, layout, N = _toy()
    cm = CostModel.synthetic(per_request_s=50e-6, per_byte_s=2e-9, queue_depths=(1, 4))
    bb = 2304
    base = simulate(layout, packed, N, bundle_bytes=bb, collapse_gap=3)
    rep = simulate(layout, packed, N, bundle_bytes=bb, collapse_gap=3, cost_model=cm, queue_depth=4)
    assert base.latency_ms_mean is None and rep.counts_dict() == base.counts_dict()
    per_token = 50e-6 * rep.reads / rep.n_tokens + 2e-9 * rep.bytes_read / rep.n_tokens  # same a, b at every depth
    assert rep.latency_ms_mean == pytest.approx(per_token * 1e3, rel=1e-6)
    assert rep.latency_ms_p99 >= rep.latency_ms_p50 > 0
    assert rep.config["latency"] == "modelled" and rep.config["queue_depth"] == 4
    assert rep.effective_bandwidth > 0


def test_collapse_auto_resolves_through_the_cost_model():
    packed, layout, N = _toy(seed=2)
    cm = CostModel.synthetic(per_request_s=30e-6, per_byte_s=2e-9)
    gap = cm.collapse_gap(2304)
    assert gap == 6
    auto = simulate(layout, packed, N, bundle_bytes=2304, collapse_gap="auto", cost_model=cm)
    fixed = simulate(layout, packed, N, bundle_bytes=2304, collapse_gap=gap)
    assert auto.config["collapse_gap"] == gap and auto.counts_dict() == fixed.counts_dict()
    assert auto.reads < simulate(layout, packed, N, bundle_bytes=2304).reads
    with pytest.raises(PlanError, match="cost model"):
        simulate(layout, packed, N, bundle_bytes=2304, collapse_gap="auto")
    with pytest.raises(PlanError, match="integer"):
        resolve_collapse("sometimes", bundle_bytes=2304)
    assert resolve_collapse("4", bundle_bytes=2304) == 4
    with pytest.raises(PlanError, match=">= 0"):
        resolve_collapse(-1, bundle_bytes=2304)


@pytest.mark.disk
def test_replay_collapse_auto_equals_simulate(direct_io_dir: Path):
    packed, layout, N = _toy(T=8, seed=3)
    rng = np.random.default_rng(0)

    def w(layer):
        return {"up": rng.standard_normal((N, 576)).astype(np.float32),
                "down": rng.standard_normal((576, N)).astype(np.float32)}

    path = write_pack(direct_io_dir / "t.pack", w, layout, d_model=576)
    cm = CostModel.synthetic(per_request_s=60e-6, per_byte_s=1e-9, queue_depths=(1, 8))
    rep = replay(path, layout, packed, collapse_gap="auto", engine="threads:8", cost_model=cm)
    sim = simulate(layout, packed, N, bundle_bytes=2304, collapse_gap="auto", cost_model=cm, queue_depth=8)
    assert rep.counts_dict() == sim.counts_dict() and rep.config["collapse_gap"] == cm.collapse_gap(2304, 8)
    assert rep.config["cost_model"]["queue_depths"] == [1, 8]


def test_cell_dataclass_roundtrip():
    c = Cell(4096, 1, 10, 40960, 0.01, 4096000.0, 1000.0, 0.001, 0.001, 0.001, 0.002)
    from runtime.device import DeviceProfile

    p = DeviceProfile([c], 1e9, [{"queue_depth": 1, "chunk": 4096, "throughput": 1e9}], {"x": 1})
    assert DeviceProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
