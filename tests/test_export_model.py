"""Export of a layout into the model (coact/export_model.py): transformers folders and GGUF files with FFN neurons
in layout order compute the original logits, and carry the layout digest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coact import zoo
from coact.export_model import (ExportError, GGUF_KEY, HF_KEY, _permuted_tensor, export_gguf, export_hf,
                                export_model, is_model_export, read_model_layout)
from runtime.layout import Layout, save_layout


def _random_layout(model_id: str, n_layers: int, n: int, seed: int = 0) -> Layout:
    rng = np.random.default_rng(seed)
    return Layout([rng.permutation(n) for _ in range(n_layers)], model_id=model_id, solver="random",
                  params={"seed": seed})


def _logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.float().numpy()


#: llama: separate gate/up; gpt2: Conv1D (transposed) with biases; phi3: fused gate_up; opt: FFN on the decoder
#: layer itself, with biases. coact.families.testing randomises biases, so a bias left in place would show.
@pytest.fixture(scope="module", params=["llama", "gpt2", "phi3", "opt"])
def tiny_dir(request, tmp_path_factory) -> Path:
    from coact.families.testing import save_tiny

    return save_tiny(request.param, tmp_path_factory.mktemp(request.param) / "model")


def test_hf_export_reproduces_logits_and_carries_the_layout(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from coact.models import load_model

    h = load_model(str(tiny_dir))
    lay = _random_layout(h.model_id, h.n_layers, h.n_neurons, seed=3)
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 24))
    before = _logits(h.model, ids)
    w0 = h.ffn_weights(1)
    out = export_hf(lay, h, tmp_path / "exported")
    # the handle is restored exactly
    for k, v in h.ffn_weights(1).items():
        np.testing.assert_array_equal(v, w0[k])
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    np.testing.assert_allclose(_logits(exported, ids), before, atol=1e-5, rtol=0)
    # neuron p of the export is neuron perm[p] of the original (weights and biases)
    e = load_model(str(out))
    we, p = e.ffn_weights(1), lay.perms[1]
    np.testing.assert_array_equal(we["up"], w0["up"][p])
    np.testing.assert_array_equal(we["down"], w0["down"][:, p])
    for k in ("up_bias", "gate_bias"):
        if k in w0:
            np.testing.assert_array_equal(we[k], w0[k][p])
    if "down_bias" in w0:
        np.testing.assert_array_equal(we["down_bias"], w0["down_bias"])
    rec = json.loads((out / "config.json").read_text())[HF_KEY]
    assert rec["digest"] == lay.digest and rec["solver"] == "random" and rec["model_id"] == h.model_id
    assert read_model_layout(out)["layout"] == rec and is_model_export(out)
    assert read_model_layout(tiny_dir)["layout"] is None and not is_model_export(tiny_dir)
    assert not hasattr(h.model.config, HF_KEY)  # the metadata went to the export only


def test_hf_export_refuses_a_layout_for_another_model_or_shape(tiny_model_dir, tmp_path):
    from coact.models import load_model

    h = load_model(str(tiny_model_dir))
    with pytest.raises(ExportError, match="is for model"):
        export_hf(_random_layout("other-model", h.n_layers, h.n_neurons), h, tmp_path / "a")
    with pytest.raises(ExportError, match="layers"):
        export_hf(_random_layout(h.model_id, h.n_layers + 1, h.n_neurons), h, tmp_path / "b")
    with pytest.raises(ExportError, match="neurons"):
        export_hf(_random_layout(h.model_id, h.n_layers, h.n_neurons * 2), h, tmp_path / "c")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="refusing to replace"):
        export_hf(_random_layout(h.model_id, h.n_layers, h.n_neurons), h, foreign)
    assert not (tmp_path / "a").exists() and (foreign / "notes.txt").read_text() == "mine"


def test_export_via_workflow_and_cli_with_show(tiny_model_dir, tmp_path):
    """`coact export L --format hf --model M --out D`, then `coact verify D` names the layout it carries."""
    from typer.testing import CliRunner

    from coact.cli import app
    from coact.models import load_model

    h = load_model(str(tiny_model_dir))
    lay = _random_layout(h.model_id, h.n_layers, h.n_neurons, seed=5)
    lpath = save_layout(lay, tmp_path / "l.safetensors")
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(lpath), "--format", "hf", "--model", str(tiny_model_dir),
                              "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["verify", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["kind"] == "model" and doc["layout"]["digest"] == lay.digest
    res = runner.invoke(app, ["export", str(lpath), "--format", "gguf", "--model", str(tiny_model_dir),
                              "--out", str(tmp_path / "m.gguf")])
    assert res.exit_code == 2 and "GGUF source" in res.output


# ---------------------------------------------------------------------------------------------------------- gguf
def _write_tiny_gguf(path: Path, *, n: int = 64, d: int = 64, layers: int = 2, seed: int = 0) -> dict:
    """A minimal llama-arch GGUF: Q8_0 gate/up (blocks along d), Q4_0 down (blocks along the neuron axis), F32
    up bias and attention tensors; enough to check the tensor moves (transformers needs a full tokenizer)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(layers)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    src = {}
    for layer in range(layers):
        src[f"blk.{layer}.attn_q.weight"] = (rng.standard_normal((d, d)).astype(np.float32), None)
        for part, shape, q in (("ffn_gate", (n, d), gguf.GGMLQuantizationType.Q8_0),
                               ("ffn_up", (n, d), gguf.GGMLQuantizationType.Q8_0),
                               ("ffn_down", (d, n), gguf.GGMLQuantizationType.Q4_0)):
            x = rng.standard_normal(shape).astype(np.float32)
            src[f"blk.{layer}.{part}.weight"] = (gguf.quants.quantize(x, q), q)
        src[f"blk.{layer}.ffn_up.bias"] = (rng.standard_normal(n).astype(np.float32), None)
    for name, (data, q) in src.items():
        w.add_tensor(name, data, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return src


def test_gguf_export_moves_rows_bytewise_and_dequantises_down(tmp_path):
    import gguf

    src_path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(src_path)
    lay = _random_layout("tiny-id", 2, 64, seed=7)
    out = export_gguf(lay, src_path, tmp_path / "out.gguf", model_id="tiny-id")
    a, b = gguf.GGUFReader(str(src_path)), gguf.GGUFReader(str(out))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert list(ta) == list(tb)
    for layer, p in enumerate(lay.perms):
        for part in ("ffn_gate", "ffn_up"):
            x, y = ta[f"blk.{layer}.{part}.weight"], tb[f"blk.{layer}.{part}.weight"]
            assert y.tensor_type == x.tensor_type == gguf.GGMLQuantizationType.Q8_0
            np.testing.assert_array_equal(np.asarray(y.data), np.asarray(x.data)[p])  # whole blocks, byte-exact
        x, y = ta[f"blk.{layer}.ffn_down.weight"], tb[f"blk.{layer}.ffn_down.weight"]
        assert y.tensor_type == gguf.GGMLQuantizationType.F32
        dense = gguf.quants.dequantize(np.asarray(x.data), x.tensor_type)
        np.testing.assert_array_equal(np.asarray(y.data), dense[:, p])  # exact: the decoded values, moved
        np.testing.assert_array_equal(np.asarray(tb[f"blk.{layer}.ffn_up.bias"].data),
                                      np.asarray(ta[f"blk.{layer}.ffn_up.bias"].data)[p])
        np.testing.assert_array_equal(np.asarray(tb[f"blk.{layer}.attn_q.weight"].data),
                                      np.asarray(ta[f"blk.{layer}.attn_q.weight"].data))
    assert b.fields["general.name"].contents() == "tiny" and GGUF_KEY in b.fields and GGUF_KEY not in a.fields
    assert b.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "c"]
    rec = read_model_layout(out)
    assert rec["model_format"] == "gguf" and rec["layout"]["digest"] == lay.digest
    assert read_model_layout(src_path)["layout"] is None
    # a second export may replace the first (same kind), never the source
    export_gguf(_random_layout("tiny-id", 2, 64, seed=8), src_path, out, model_id="tiny-id")
    with pytest.raises(Exception, match="input of this run|refusing"):
        export_gguf(lay, src_path, src_path, model_id="tiny-id")
    with pytest.raises(ExportError, match="is for model"):
        export_gguf(lay, src_path, tmp_path / "x.gguf", model_id="another")
    with pytest.raises(ExportError, match="neurons"):
        export_gguf(_random_layout("tiny-id", 2, 32), src_path, tmp_path / "x.gguf", model_id="tiny-id")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), qname=st.sampled_from(["F32", "F16", "Q8_0", "Q4_1", "Q5_0"]))
def test_permuted_tensor_is_the_permutation_of_the_decoded_tensor(seed, qname):
    """For any type and permutation: decode(export) == decode(source) with rows (gate/up) or columns (down) moved."""
    import gguf

    qt = gguf.GGMLQuantizationType[qname]
    rng = np.random.default_rng(seed)
    n, d = 64, 32
    perm = rng.permutation(n)

    class T:  # the two ReaderTensor attributes the export uses
        def __init__(self, x):
            self.data = gguf.quants.quantize(x, qt) if qname not in ("F32", "F16") else x.astype(
                np.float16 if qname == "F16" else np.float32)
            self.tensor_type, self.name = qt, "t"

    up = T(rng.standard_normal((n, d)).astype(np.float32))
    data, t = _permuted_tensor(up, "ffn_up.weight", perm, n)
    assert t == qt
    np.testing.assert_array_equal(gguf.quants.dequantize(data, t), gguf.quants.dequantize(up.data, qt)[perm])
    down = T(rng.standard_normal((d, n)).astype(np.float32))
    data, t = _permuted_tensor(down, "ffn_down.weight", perm, n)
    assert t == (qt if qname in ("F32", "F16") else gguf.GGMLQuantizationType.F32)
    np.testing.assert_array_equal(gguf.quants.dequantize(data, t), gguf.quants.dequantize(down.data, qt)[:, perm])


def test_gguf_refuses_moe_tensors(tmp_path):
    import gguf

    path = tmp_path / "moe.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tensor("blk.0.ffn_up_exps.weight", np.zeros((2, 8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ExportError, match="mixture-of-experts"):
        export_gguf(_random_layout("", 1, 8), path, tmp_path / "o.gguf")


@pytest.mark.model
@pytest.mark.skipif(zoo.available("smollm2") is not None, reason=str(zoo.available("smollm2")))
def test_smollm2_gguf_export_reproduces_logits(smollm2, tmp_path):
    """The real Q4_1 GGUF, exported with a random layout and loaded back by transformers: same logits (ffn_down
    is kept float, so only the FFN's summation order differs)."""
    import torch
    from transformers import AutoModelForCausalLM

    lay = _random_layout(smollm2.model_id, smollm2.n_layers, smollm2.n_neurons, seed=11)
    out = export_model(lay, "gguf", "smollm2", tmp_path / "smollm2-permuted.gguf")
    assert read_model_layout(out)["layout"]["digest"] == lay.digest
    ids = smollm2.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="np").input_ids
    # the model only: the tokenizer is the unchanged GGUF vocabulary, and converting it takes ~15 s
    exported = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, dtype=torch.float32)
    a, b = _logits(smollm2.model, ids), _logits(exported.eval(), ids)
    # float rounding only (the FFN sums its neurons in another order, through 30 layers): 1e-5 of the largest
    # logit (measured 7.4e-5 absolute at logits up to 35 on another prompt)
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a))
    assert (a.argmax(-1) == b.argmax(-1)).all()
