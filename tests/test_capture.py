"""Capture on the real SmolLM2-135M: shapes, sparsity, and active sets equal to a direct MLP recomputation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.bits import unpack_bits
from coact.corpus import load_text, token_windows, tokenize

pytestmark = pytest.mark.model


def test_shapes_and_metadata(smollm2, smollm2_trace):
    tr = smollm2_trace
    assert (smollm2.n_layers, smollm2.n_neurons, smollm2.d_model) == (30, 1536, 576)
    assert tr.n_tokens == 512
    assert tr.packed().shape == (512, 30, 192)
    assert tr.packed().dtype == np.uint8
    assert tr.meta["model_id"] == smollm2.model_id
    assert len(tr.meta["sparsifier"]["thresholds"]) == 30
    assert tr.token_ids().shape == (512,)


def test_sparsity_within_one_percent(smollm2_trace):
    tr = smollm2_trace
    act = unpack_bits(tr.packed(), tr.n_neurons)  # [T, L, N]
    achieved = 1.0 - act.mean(axis=(0, 2))
    assert np.allclose(achieved, tr.meta["achieved_sparsity"], atol=1e-5)
    assert np.all(np.abs(achieved - 0.9) <= 0.01), achieved


def test_active_sets_match_direct_mlp_recomputation(smollm2, smollm2_trace):
    """Recompute act(gate(x)) from the MLP input with the layer's own weights and the stored thresholds."""
    tr = smollm2_trace
    stream = tokenize(load_text("pydoc"), smollm2.tokenizer)
    window = token_windows(stream, 0, 512, 256)[1]  # tokens [256, 512)
    assert np.array_equal(window, tr.token_ids(256, 512))
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        smollm2.mlp(l).register_forward_pre_hook(lambda m, a, l=l: inputs.__setitem__(l, a[0].detach()))
        for l in range(smollm2.n_layers)
    ]
    try:
        with torch.inference_mode():
            smollm2.model(torch.as_tensor(window)[None], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    thresholds = tr.meta["sparsifier"]["thresholds"]
    rng = np.random.default_rng(0)
    sample = rng.choice(256, size=24, replace=False)
    stored = unpack_bits(tr.packed(256, 512), tr.n_neurons)
    for l in range(smollm2.n_layers):
        gate = torch.from_numpy(smollm2.ffn_weights(l)["gate"])
        a = F.silu(F.linear(inputs[l][0, sample], gate)).numpy()
        expect = np.abs(a) > thresholds[l]
        got = stored[sample, l]
        diff = expect != got
        # Any disagreement must be a float tie at the threshold, never a real difference.
        assert np.all(np.abs(np.abs(a[diff]) - thresholds[l]) < 1e-4 * max(thresholds[l], 1e-6)), (l, diff.sum())
        assert diff.sum() <= 2


def test_capture_resumes_after_interruption(smollm2, tmp_path, monkeypatch):
    import coact.trace as trace_mod
    from coact.workflow import capture

    kwargs = dict(tokens=384, ctx=128, sparsity=0.9, calib_tokens=128, shard_tokens=128, ppl_tokens=0,
                  progress=False)
    real = trace_mod.forward_activations
    calls = {"n": 0}

    def flaky(handle, windows, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # calibration, shard 0, then "crash" in shard 1
            raise KeyboardInterrupt
        return real(handle, windows, **kw)

    monkeypatch.setattr(trace_mod, "forward_activations", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture(smollm2, "pydoc", tmp_path / "t", **kwargs)
    assert not (tmp_path / "t").exists()
    assert (tmp_path / "t.partial" / "shard_00000" / "done").exists()
    monkeypatch.setattr(trace_mod, "forward_activations", real)
    resumed = capture(smollm2, "pydoc", tmp_path / "t", **kwargs)
    fresh = capture(smollm2, "pydoc", tmp_path / "u", **kwargs)
    assert not (tmp_path / "t.partial").exists()
    assert np.array_equal(resumed.packed(), fresh.packed())


def test_relu_and_topk(smollm2, tmp_path):
    from coact.workflow import capture

    tk = capture(smollm2, "pydoc", tmp_path / "k", tokens=64, ctx=64, method="topk", sparsity=0.9, progress=False)
    act = unpack_bits(tk.packed(), tk.n_neurons)
    assert np.all(act.sum(axis=2) == round(0.1 * 1536))
    rl = capture(smollm2, "pydoc", tmp_path / "r", tokens=64, ctx=64, method="relu", progress=False)
    sp = np.array(rl.meta["achieved_sparsity"])
    assert np.all((sp > 0.2) & (sp < 0.8))  # SiLU models are ~half positive


def test_local_transformers_folder(smollm2, tmp_path):
    """`--model PATH`: a small randomly initialised Llama saved locally with the SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from coact.models import load_model
    from coact.workflow import capture

    cfg = LlamaConfig(vocab_size=smollm2.tokenizer.vocab_size + 64, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    smollm2.tokenizer.save_pretrained(tmp_path / "tiny")
    h = load_model(str(tmp_path / "tiny"))
    assert (h.n_layers, h.n_neurons, h.d_model, h.gated) == (2, 96, 64, True)
    tr = capture(h, "pydoc", tmp_path / "tt", tokens=128, ctx=64, sparsity=0.5, calib_tokens=128, progress=False)
    assert tr.packed().shape == (128, 2, 12)
    assert np.all(np.abs(np.array(tr.meta["achieved_sparsity"]) - 0.5) <= 0.01)
