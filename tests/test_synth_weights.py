"""Seeded synthetic FFN weights (coact/synth_weights.py): deterministic per (seed, layer), right shapes, and a pack
written with them reads back exactly the weights of each neuron at its placed position."""
from __future__ import annotations

import numpy as np
import pytest

from coact.errors import CoactError
from coact.synth_weights import pack_synthetic, synthetic_weights_fn
from runtime.layout import Layout
from runtime.pack import PackFile


def test_weights_seeded_per_layer():
    f = synthetic_weights_fn(40, 16, seed=3)
    a, b = f(1), synthetic_weights_fn(40, 16, seed=3)(1)
    assert set(a) == {"up", "down"} and a["up"].shape == (40, 16) and a["down"].shape == (16, 40)
    assert np.array_equal(a["up"], b["up"]) and np.array_equal(a["down"], b["down"])
    assert not np.array_equal(f(0)["up"], a["up"])
    assert "gate" in synthetic_weights_fn(8, 4, bundle="gate-up-down")(0)
    with pytest.raises(CoactError):
        synthetic_weights_fn(0, 4)


def test_pack_synthetic_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    perms = [rng.permutation(24), rng.permutation(24)]
    lay = Layout(perms, model_id="synthetic", solver="test")
    out = pack_synthetic(lay, tmp_path / "s.pack", d_model=32, seed=5, progress=False)
    w = synthetic_weights_fn(24, 32, seed=5)
    with PackFile(out) as pf:
        pf.verify()  # raises on any bad byte
        for layer in range(2):
            got = pf.read_neurons(layer, np.array([3, 17]))  # [k, parts (up, down), d_model]
            wl = w(layer)
            np.testing.assert_array_equal(got[:, 0], wl["up"][[3, 17]].astype(np.float16))
            np.testing.assert_array_equal(got[:, 1], wl["down"][:, [3, 17]].T.astype(np.float16))
