"""The device-cost objective and solver (solvers/device_cost.py, issue 13)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bits import pack_bits
from runtime.device import CostModel
from runtime.layout import Layout
from runtime.replay import simulate
from solvers import get_solver
from solvers.base import available_solvers
from solvers.device_cost import DeviceCostSolver, device_counts, device_time
from solvers.graph import CoactGraph


def _sample(seed: int, T: int, n: int, p: float = 0.15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 12, n)
    g = rng.random((T, 12)) < 0.25
    return g[:, groups] ^ (rng.random((T, n)) < p / 5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(8, 90), bundle=st.sampled_from([2304, 4096, 1000, 8192]),
       gap=st.integers(0, 3))
def test_counts_match_the_runtime_planner(seed: int, n: int, bundle: int, gap: int) -> None:
    act = _sample(seed, 20, n)
    perm = np.random.default_rng(seed).permutation(n)
    reqs, nbytes, runs = device_counts(perm, act, bundle_bytes=bundle, collapse_gap=gap)
    rep = simulate(Layout([perm]), pack_bits(act)[:, None, :], n, bundle_bytes=bundle, collapse_gap=gap)
    assert (reqs, nbytes, runs) == (rep.reads, rep.bytes_read, rep.runs)


def test_modelled_time_matches_the_cost_model() -> None:
    act = _sample(1, 50, 64)
    perm = np.arange(64)
    a, b = 20e-6, 1.5e-9
    cm = CostModel.synthetic(per_request_s=a, per_byte_s=b)
    rep = simulate(Layout([perm]), pack_bits(act)[:, None, :], 64, bundle_bytes=2304, cost_model=cm)
    t = device_time(perm, act, per_request_s=a, per_byte_s=b)
    assert abs(t - rep.io_time_s) < 1e-6 * max(1.0, t) + 50 * 1e-9  # per-(token, layer) ns rounding


def test_registered_and_proxy() -> None:
    assert "device-cost" in available_solvers()
    s = get_solver("device-cost", per_request_s=10e-6, per_byte_s=1.5e-9)
    assert s.proxy[0] == 1  # a 2,304 B gap never spans a whole 4 KiB page: free in requests
    assert get_solver("device-cost", collapse_gap=3).proxy[0] == 3


def test_never_worse_than_its_start_and_better_than_runs_on_a_request_bound_device() -> None:
    act = _sample(2, 400, 96)
    x = act.astype(np.int64)
    g = CoactGraph.from_dense(x.T @ x, x.sum(0), 400)
    start = get_solver("ripple").solve(g)
    kw = dict(per_request_s=50e-6, per_byte_s=1e-9)
    perm = DeviceCostSolver(**kw, time_limit=5).solve(g, sample=act, init=start)
    assert device_time(perm, act, **kw) <= device_time(start, act, **kw)
    held = _sample(3, 200, 96)  # same structure, other tokens
    assert device_time(perm, held, **kw) < device_time(np.random.default_rng(0).permutation(96), held, **kw)


def test_evaluate_reports_pages_per_token(tmp_path) -> None:
    from pathlib import Path

    from coact.trace import Trace
    from coact.workflow import evaluate_layouts
    from runtime.layout import save_layout

    tr = Trace.load(Path(__file__).resolve().parents[1] / "data" / "sample" / "heldout")
    lay = Layout([np.arange(tr.n_neurons)] * tr.n_layers, model_id=tr.model_id, solver="identity")
    save_layout(lay, tmp_path / "id.safetensors")
    row = evaluate_layouts([tmp_path / "id.safetensors"], tr, stop=64)[0]
    assert row["pages_per_token"] == row["bytes_read_per_token"] / 4096 > row["reads_per_token"] > 0
