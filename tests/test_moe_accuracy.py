"""Accuracy on mixture-of-experts models (coact.accuracy with units): calibration on routed tokens, achieved sparsity,
operating points by budget and the layer-output-error proxy, on tiny random MoE models (coact.families.testing).

- The calibration samples of an expert unit are its routed tokens only, and they give exactly the thresholds
  ``coact trace`` calibrates (capture and ``--max-ppl-increase`` share one calibration).
- With a mask that keeps everything, every token counts as active in exactly k experts of a layer (top-k routing).
- A uniform operating point applies the thresholds it reports (the perplexity measured with a CATS sparsifier of
  those thresholds is the one it validated), and an allocated one gives every expert of a layer the same level.
- The output-error proxy of a unit equals the change of the model's own MoE-block output when the unit is removed
  (router weight included), with and without a BOS in front of the windows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coact.accuracy import (
    _Thresholded,
    allocated_operating_point,
    calibration_activations,
    output_error_sensitivity,
    perplexity,
    sparsified,
    thresholds_for,
    uniform_operating_point,
    unit_groups,
)
from coact.corpus import token_windows, tokenize
from coact.families.testing import save_tiny
from coact.models import load_model
from coact.sparsify import get_sparsifier
from coact.trace import forward_activations
from coact.workflow import capture, choose_operating_point
from conftest import wiki_excerpt

CTX = 32
MIXED = {"mlp_only_layers": [0]}  # Qwen2-MoE: layer 0 dense (64 wide), layer 1 four experts of 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return wiki_excerpt(tmp_path_factory, 6000)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return load_model(str(save_tiny("mixtral", tmp_path_factory.mktemp("mixtral") / "model")))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return load_model(str(save_tiny("qwen2_moe", tmp_path_factory.mktemp("mixed") / "model", bos=True, **MIXED)))


def _stream(h, corpus: str) -> np.ndarray:
    return tokenize(Path(corpus).read_text(encoding="utf-8"), h.tokenizer)


def test_calibration_is_on_routed_tokens_and_matches_capture(mixtral, corpus, tmp_path):
    h = mixtral
    windows = token_windows(_stream(h, corpus), 0, 64, CTX)
    routes: list = []
    raw = forward_activations(h, windows, routes=routes)
    acts = calibration_activations(h, windows)
    for u, unit in enumerate(h.units):
        assert unit.expert is not None
        assert acts[u].shape == (int(routes[u].sum()), unit.n) and acts[u].shape[0] < raw[u].shape[0]
        assert torch.equal(acts[u], raw[u][routes[u]])
    tr = capture(h, corpus, tmp_path / "t", tokens=96, ctx=CTX, method="cats", sparsity=0.5, calib_tokens=64,
                 shard_tokens=96, ppl_tokens=0, progress=False)
    assert tr.meta["sparsifier"]["thresholds"] == pytest.approx(thresholds_for(acts, [0.5] * h.n_layers), rel=1e-6)
    # Over all tokens (zeros of unrouted tokens included) the quantile would be lower: that was the bug.
    assert thresholds_for(raw, [0.5] * h.n_layers) < thresholds_for(acts, [0.5] * h.n_layers)


def test_keep_all_counts_every_token_in_k_experts(mixed, corpus):
    h = mixed
    keep = get_sparsifier("cats", sparsity=0.5, thresholds=[-1.0] * h.n_layers)
    res = perplexity(h, _stream(h, corpus), start=0, tokens=96, ctx=CTX, sparsifier=keep)
    dense = perplexity(h, _stream(h, corpus), start=0, tokens=96, ctx=CTX)
    assert res.ppl == pytest.approx(dense.ppl, rel=1e-6)
    by_layer: dict[int, float] = {}
    for u, unit in enumerate(h.units):
        if unit.expert is None:
            assert res.achieved_sparsity[u] == 0.0
        else:
            by_layer[unit.layer] = by_layer.get(unit.layer, 0.0) + 1.0 - res.achieved_sparsity[u]
    assert by_layer == {1: pytest.approx(h.model.config.num_experts_per_tok)}  # each token routed to k = 2 experts


def test_uniform_operating_point_applies_what_it_reports(mixed, corpus):
    h = mixed
    stream = _stream(h, corpus)
    op = choose_operating_point(h, corpus, 0.2, calib_tokens=64, validation_tokens=64, ctx=CTX, progress=False)
    acts = calibration_activations(h, token_windows(stream, 0, 64, CTX))
    assert len(op.thresholds) == h.n_layers and len(set(op.sparsity)) == 1 and op.sparsity[0] > 0
    assert op.thresholds == pytest.approx(thresholds_for(acts, op.sparsity))
    assert op.validation_ppl <= op.validation_ppl_dense * 1.2
    cats = get_sparsifier("cats", sparsity=op.mean_sparsity, thresholds=op.thresholds)
    assert perplexity(h, stream, start=64, tokens=64, ctx=CTX, sparsifier=cats).ppl == pytest.approx(
        op.validation_ppl, rel=1e-9)
    again = uniform_operating_point(h, stream, acts, 0.2, start=64, tokens=64, ctx=CTX, steps=8)
    assert again.thresholds == op.thresholds


@pytest.mark.parametrize("proxy", [True, False], ids=["proxy", "measured"])
def test_allocated_operating_point_is_per_decoder_layer(mixtral, corpus, proxy):
    h = mixtral
    stream = _stream(h, corpus)
    windows = token_windows(stream, 0, 64, CTX)
    acts = calibration_activations(h, windows)
    groups = unit_groups(h)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    levels = (0.3, 0.7)
    op, s = allocated_operating_point(h, stream, acts, 0.3, start=64, tokens=CTX, ctx=CTX, levels=levels, rounds=2,
                                      proxy=proxy, calib_windows=windows)
    assert s.shape == (2, 2) and np.all(np.isfinite(s))
    for g in groups:
        assert len({op.sparsity[u] for u in g}) == 1  # one level per decoder layer, one threshold per expert
    assert op.thresholds == pytest.approx(thresholds_for(acts, op.sparsity))
    got = perplexity(h, stream, start=64, tokens=CTX, ctx=CTX, sparsifier=_Thresholded(op.thresholds)).ppl
    assert got == pytest.approx(op.validation_ppl, rel=1e-9)


@pytest.mark.parametrize("which", ["mixtral", "mixed"])
def test_output_error_proxy_equals_the_blocks_own_change(which, mixtral, mixed, corpus):
    """Level 0 drops nothing (error 0); level 1 drops the whole unit, so its error times the layer's input norm must
    be the squared change of that layer's FFN output when the unit is masked out in the model itself."""
    h = {"mixtral": mixtral, "mixed": mixed}[which]
    windows = token_windows(_stream(h, corpus), 0, 2 * CTX, CTX)
    U = h.n_layers
    quant = np.tile([-1.0, np.inf], (U, 1))
    err = output_error_sensitivity(h, windows, quant)
    assert np.all(err[:, 0] == 0.0) and np.all(err[:, 1] > 0)
    layers = h.decoder_layers()
    x = torch.as_tensor(np.stack(windows), dtype=torch.long)

    def ffn_out_and_norm(drop: int | None) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
        outs: dict[int, torch.Tensor] = {}
        norms: dict[int, float] = {}
        hooks = []
        for li, layer in enumerate(layers):
            hooks.append(layer.mlp.register_forward_hook(lambda m, a, o, li=li: outs.__setitem__(li, (o[0] if isinstance(o, tuple) else o).detach())))
            hooks.append(layer.register_forward_pre_hook(
                lambda m, a, k, li=li: norms.__setitem__(li, float(((a[0] if a else k["hidden_states"]) ** 2).sum())),
                with_kwargs=True))

        class Drop:
            def mask(self, u, a):
                return torch.full_like(a, u != drop, dtype=torch.bool)

        try:
            with sparsified(h, Drop()), torch.inference_mode():
                h.forward(x)
        finally:
            for hk in hooks:
                hk.remove()
        return outs, norms

    base, norms = ffn_out_and_norm(None)
    bos = h.bos is not None
    for u in (0, U - 3):  # mixtral: an expert of each layer; mixed: the dense unit and an expert
        unit = h.units[u]
        outs, _ = ffn_out_and_norm(u)
        d = base[unit.layer] - outs[unit.layer]  # [B, (1 +) T, d]; the BOS position is never masked
        if bos:
            assert float(d[:, 0].abs().max()) == 0.0
        assert float((d ** 2).sum()) == pytest.approx(err[u, 1] * norms[unit.layer], rel=1e-4), (which, u)
