"""coact.online_pipelines: the named pipelines run on the flash engine mean what they mean in replay, and every one
of them computes exactly what the in-memory sparse model computes (tiny model, fast)."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from coact.accuracy import sparsified
from coact.cli import app
from coact.errors import CoactError
from coact.models import load_model
from coact.online import FlashModel, greedy, model_step, new_kv_for
from coact.online_pipelines import flash_options, freq_from_packed, pipeline_options, resolve_flash_pipeline
from coact.sparsify import get_sparsifier
from coact.workflow import capture, count, solve_layouts
from runtime.device import CostModel
from runtime.direct import direct_io_supported
from runtime.pack import write_pack
from runtime.pipelines import available_pipelines, get_pipeline

pytestmark = pytest.mark.disk


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("flashpipe")
    if not direct_io_supported(d):
        pytest.skip("no O_DIRECT support in the temporary directory")
    h = load_model(str(tiny_model_dir))
    tr = capture(h, "pydoc", d / "trace", tokens=512, ctx=64, sparsity=0.6, calib_tokens=128, ppl_tokens=0,
                 progress=False)
    lay = solve_layouts(count(tr, progress=False), ["ripple"], progress=False)["ripple"][0]
    pack = write_pack(d / "ripple.pack", h.ffn_weights, lay, dtype="fp32", d_model=h.d_model)
    cm = CostModel(queue_depths=[1, 16], per_request_s=[80e-6, 12e-6], per_byte_s=[1e-9, 4e-10],
                   latency_a_s=[80e-6, 100e-6], latency_b_s=[1e-9, 1e-9], seq_bandwidth=2e9)
    cm_path = d / "cost.json"
    cm.save(cm_path)
    sp = get_sparsifier("cats", sparsity=0.6, thresholds=tr.meta["sparsifier"]["thresholds"])
    return dict(h=h, tr=tr, lay=lay, pack=pack, cm=cm, cm_path=cm_path, sp=sp, dir=d)


def test_freq_from_packed_counts_bits():
    rng = np.random.default_rng(0)
    bits = rng.random((300, 3, 20)) < 0.3
    from common.bits import pack_bits

    np.testing.assert_array_equal(freq_from_packed(pack_bits(bits), 20, chunk=7), bits.sum(axis=0))


def test_options_follow_the_registry():
    dense = flash_options(get_pipeline("dense"))
    assert dense["dense"] and dense["policy"] == "none" and not dense["prefetch"]
    llm = flash_options(get_pipeline("llmflash"))
    assert (llm["policy"], llm["policy_params"], llm["collapse"]) == ("window", {"k": 5}, 0)
    rip = flash_options(get_pipeline("ripple"))
    assert (rip["policy"], rip["collapse"], rip["prefetch"]) == ("ripple", "auto", True)
    with pytest.raises(ValueError, match="not resolved"):
        flash_options(get_pipeline("coact"))


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "compact"])
@pytest.mark.parametrize("name", available_pipelines())
def test_every_pipeline_is_exact_on_the_engine(setup, name, exact):
    """Whatever cache, collapse and prefetch a pipeline picks, the generated logits equal the in-memory sparse
    model's (fp32 pack) within 1e-4, on the exact path (the model's own modules on scattered scratch weights) and
    on the compact path (k-sized matmuls on the fetched bundles, another float32 summation order)."""
    h, sp = setup["h"], setup["sp"]
    pipe, opts, notes = resolve_flash_pipeline(name, setup["lay"], bundle_bytes=2 * h.d_model * 4, budget=0.1,
                                               cost_model=setup["cm"], profile_packed=setup["tr"].packed())
    assert pipe.cache != "auto"
    if name == "coact":
        assert notes["selection"].startswith("simulation") and len(notes["candidates"]) > 1
    prompt = list(range(40, 44))
    with sparsified(h, sp):
        ref = greedy(model_step(h.model), new_kv_for(h.model)(), prompt, 6, keep_logits=True)
    import torch

    threads = torch.get_num_threads()
    with FlashModel(setup["pack"], h, sparsifier=sp, budget=0.1, cost_model=setup["cm"], exact=exact, **opts) as fm:
        got = fm.generate(prompt, 6, keep_logits=True)
        rep = fm.report()
    assert torch.get_num_threads() == threads  # the per-token thread setting is restored
    assert got["tokens"] == ref["tokens"]
    assert float((got["logits"] - ref["logits"]).abs().max()) <= 1e-4
    if name == "dense":
        assert rep["per_token"]["bytes_read"] >= h.n_layers * h.n_neurons * 2 * h.d_model * 4
    assert rep["prefetch"]["on"] == (name != "dense")


def test_pipeline_options_checks_inputs(setup, tmp_path):
    with pytest.raises(CoactError, match="unknown pipeline"):
        pipeline_options(setup["pack"], "fastest", budget=0.1)
    with pytest.raises(Exception, match="cost model"):
        pipeline_options(setup["pack"], "ripple", budget=0.1)
    opts = pipeline_options(setup["pack"], "coact", budget=0.1, cost=setup["cm_path"], profile_trace=setup["tr"].path,
                            engine="threads:4")
    assert opts["engine"] == "threads:4" and opts["cost"] == setup["cm_path"]


def test_cli_generate_with_pipeline(setup, tiny_model_dir):
    r = CliRunner().invoke(app, ["generate", "--from", str(setup["pack"]), "--model", str(tiny_model_dir),
                                 "--prompt", "def f(x):", "--max-tokens", "3", "--sparsity", "0.6",
                                 "--pipeline", "llmflash", "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["generate", "--from", str(setup["pack"]), "--model", str(tiny_model_dir),
                                 "--prompt", "x", "--max-tokens", "2", "--sparsity", "0.6", "--pipeline", "nope"])
    assert r.exit_code == 2 and "unknown pipeline" in r.output
    r = CliRunner().invoke(app, ["generate", "--from", str(setup["pack"]), "--model", str(tiny_model_dir),
                                 "--prompt", "x", "--max-tokens", "2", "--sparsity", "0.6",
                                 "--profile", str(setup["tr"].path)])
    assert r.exit_code == 2 and "--profile is used only with --pipeline" in r.output


def test_moe_pack_header_is_accepted_and_its_bundle_checked():
    """MoE packs run from flash (coact.online_moe; exactness in tests/test_online_moe.py); their bundle schema is
    checked like any pack's, in one line."""
    from coact.online import check_pack_header

    base = {"bundle": "up-down"}
    for header in (base, {**base, "moe": True}, {**base, "units": [{"layer": 0, "expert": 3, "n": 8}]}):
        check_pack_header("p.pack", header)
    with pytest.raises(CoactError, match="bundle schema 'gate-up-down'") as e:
        check_pack_header("p.pack", {**base, "moe": True, "bundle": "gate-up-down"})
    assert "\n" not in str(e.value)
