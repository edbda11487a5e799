"""The synthetic workload (coact.synth, `coact synth`): an ordinary, verifiable trace; deterministic; exact marginals;
summary curves close to the SmolLM2 targets it was fitted to; every command works on it (stats -> solve)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coact import synth
from coact.cli import app
from coact.stats import CoactStats
from coact.trace import Trace, verify_trace
from common.bits import unpack_bits

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", sorted(synth.BUILTIN_FITS))
def test_builtin_fits_load_and_say_how_they_were_made(name: str) -> None:
    fit = synth.load_fit(name)
    assert fit["command"].startswith("coact synth-fit") and fit["method"]
    assert len(fit["targets"]) == len(fit["achieved"]) == len(fit["depths"])


def test_synth_cli_writes_an_ordinary_trace_every_command_reads(tmp_path: Path) -> None:
    out = tmp_path / "t"
    res = invoke("synth", "--layers", 3, "--neurons", 70, "--tokens", 700, "--seed", 3, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = verify_trace(out)  # every file digest and the content digest
    assert (summary["n_layers"], summary["n_neurons"], summary["n_tokens"]) == (3, 70, 700)
    tr = Trace.load(out)
    assert tr.meta["synth"]["seed"] == 3 and tr.meta["d_model"] == 4096
    assert 0.0 < tr.meta["sparsity"] < 1.0
    # the default statistics are the candidate graph; a solver takes it
    assert invoke("stats", out, "--out", tmp_path / "s", "--top-k", 8).exit_code == 0
    st = CoactStats.load(tmp_path / "s")
    assert st.kind == "candidate" and st.top_k == 8 and st.n_neurons == 70
    res = invoke("solve", tmp_path / "s", "--solver", "ripple", "--out", tmp_path / "lay", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["objective"] > 0
    # same seed and shape -> same content; the output is never written over
    again = invoke("synth", "--layers", 3, "--neurons", 70, "--tokens", 700, "--seed", 3, "--out", tmp_path / "u")
    assert again.exit_code == 0
    assert Trace.load(tmp_path / "u").meta["content_digest"] == tr.meta["content_digest"]
    assert invoke("synth", "--layers", 1, "--neurons", 8, "--tokens", 8, "--out", out).exit_code == 2


def test_generation_does_not_depend_on_block_boundaries() -> None:
    m = synth.SyntheticModel(synth.load_fit("smollm2"), 2, 45, seed=1)
    whole = m.block(0, 300)
    parts = np.concatenate([m.block(0, 37), m.block(37, 64), m.block(64, 300)])
    np.testing.assert_array_equal(whole, parts)
    assert not np.array_equal(whole, synth.SyntheticModel(synth.load_fit("smollm2"), 2, 45, seed=2).block(0, 300))


def test_marginals_are_the_drawn_probabilities() -> None:
    """P(neuron i fires) = p_i exactly in the model; over 20,000 tokens within 5 binomial standard errors."""
    T = 20_000
    m = synth.SyntheticModel(synth.load_fit("smollm2"), 1, 64, seed=0)
    f = unpack_bits(m.block(0, T)[:, 0, :], 64).mean(axis=0)
    p = m.p[0]
    # the level table quantises each probability to 2^-32; the hash is 32 bits
    assert np.all(np.abs(f - p) <= 5 * np.sqrt(p * (1 - p) / T) + 2e-4), np.max(np.abs(f - p))


@pytest.mark.parametrize("name", sorted(synth.BUILTIN_FITS))
def test_summary_curves_match_the_fit_targets(name: str) -> None:
    """A fresh synthetic layer (other seed) at the reference shape reproduces the fitted summaries; the tolerance
    is the fit's own residual plus the seed-to-seed noise of these estimators at 1,024 tokens."""
    fit = synth.load_fit(name)
    N, T = fit["source"]["n_neurons"], fit["source"]["n_tokens"]
    L = fit["source"]["n_layers"]
    fitted = list(zip(fit["fit_layers"], fit["depths"], fit["targets"], fit["achieved"]))
    for layer, depth, tgt, ach in fitted[::2]:  # first, middle and last of the 5 fitted depths (time)
        assert abs(depth - layer / max(1, L - 1)) < 1e-9
        got = synth.simulate_layer(synth.layer_params(fit, depth), N, T, seed=123)
        resid = np.nanmax(np.abs(np.subtract(ach["friend_nohot"], tgt["friend_nohot"])))
        err = np.nanmax(np.abs(np.subtract(got["friend_nohot"], tgt["friend_nohot"])))
        assert err <= resid + 0.1, (layer, got["friend_nohot"], tgt["friend_nohot"])
        cv_resid = abs(ach["activity_cv"] - tgt["activity_cv"])
        assert abs(got["activity_cv"] - tgt["activity_cv"]) <= cv_resid + 0.25 * tgt["activity_cv"] + 0.02
        assert abs(got["density"] - tgt["density"]) <= 0.1 * tgt["density"] + 0.005
        assert abs(got["hot_share"] - tgt["hot_share"]) <= 0.02


def test_bad_fit_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(synth.SynthError):
        synth.load_fit(tmp_path / "x.json")
    with pytest.raises(synth.SynthError):
        synth.load_fit(tmp_path / "missing.json")
    res = invoke("synth", "--layers", 1, "--neurons", 8, "--tokens", 8, "--fit", tmp_path / "x.json",
                 "--out", tmp_path / "o")
    assert res.exit_code == 2 and not (tmp_path / "o").exists()
