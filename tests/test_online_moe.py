"""coact.online on mixture-of-experts models (coact.online_moe): tiny random models of every MoE family and a mixed
dense/MoE stack, run token by token with every expert's up/down streamed from a pack.

- Exactness: greedy tokens identical and max |dlogit| <= 1e-4 against the in-memory model masked by
  coact.accuracy.sparsified with the same per-(layer, expert) CATS thresholds (fp32 packs; fp16 packs against the
  fp16-rounded reference, coact.online.rounded_ffn), with and without cache, collapse and prefetch, on the exact
  and the compact path, and reading whole regions (dense).
- Routing: per token and MoE layer, the engine reads exactly the units of the experts the model's router selected.
- Memory: the fused expert tensors (gate_up_proj, down_proj) are freed; only gates, routers and shared experts stay.
- Perplexity from a pack (with a BOS model and a mixed stack) equals coact.accuracy.perplexity; the named
  pipelines (dense, llmflash, ripple, coact) and the CLI (``generate``/``perplexity --from``) run an MoE pack; bad
  input is one line.
"""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coact.accuracy import calibration_activations, perplexity, sparsified
from coact.cli import app
from coact.corpus import load_text, token_windows, tokenize
from coact.errors import CoactError
from coact.families import FAMILIES
from coact.families.testing import save_tiny
from coact.models import load_model
from coact.online import FlashModel, greedy, model_step, new_kv_for, rounded_ffn, run_flash_perplexity
from coact.online_pipelines import pipeline_options
from coact.sparsify import get_sparsifier
from coact.workflow import capture, pack
from runtime.device import CostModel
from runtime.direct import direct_io_supported
from runtime.layout import Layout
from runtime.pipelines import available_pipelines
from conftest import wiki_excerpt

CTX = 32
MOE = [f for f in FAMILIES.names() if FAMILIES.get(f)().moe]
#: Every MoE family, plus a mixed stack (Qwen2-MoE: layer 0 dense and 64 wide, layer 1 four experts of 32, shared
#: expert resident) whose tokenizer adds a BOS (the flash engine keeps it in the KV cache, computed dense).
CASES = {f: (f, {}, False) for f in MOE} | {"qwen2_moe+mixed+bos": ("qwen2_moe", {"mlp_only_layers": [0]}, True)}
PROMPT, STEPS = slice(100, 104), 8


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """Every FlashModel runs gc.collect() once; freezing the import heap keeps that cheap (as tests/test_families)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("online-moe")
    if not direct_io_supported(d):
        pytest.skip("no O_DIRECT support in the temporary directory")
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return wiki_excerpt(tmp_path_factory, 4000)


_BUILT: dict[str, dict] = {}


def _case(name: str, work, corpus) -> dict:
    """The tiny model of case ``name``, its CATS-50 % sparsifier (per unit, calibrated on routed tokens), its
    token stream and fp16/fp32 packs of a random layout."""
    if name not in _BUILT:
        family, overrides, bos = CASES[name]
        folder = save_tiny(family, work / name / "model", bos=bos, **overrides)
        h = load_model(str(folder))
        assert h.units is not None and any(u.expert is not None for u in h.units)
        stream = tokenize(load_text(corpus), h.tokenizer)
        sp = get_sparsifier("cats", sparsity=0.5)
        sp.calibrate(calibration_activations(h, token_windows(stream, 0, 64, CTX)))
        rng = np.random.default_rng(3)
        lay = Layout([rng.permutation(u.n) for u in h.units], model_id=h.model_id, units=h.units)
        packs = {dt: pack(h, lay, work / name / f"{dt}.pack", dtype=dt, progress=False) for dt in ("fp16", "fp32")}
        _BUILT[name] = {"h": h, "sp": sp, "stream": stream, "packs": packs, "folder": folder, "layout": lay,
                        "refs": {}}
        gc.collect()
        gc.freeze()  # the model classes imported and the model built here stay out of every later gc.collect()
    return _BUILT[name]


def _reference(c: dict, dtype: str) -> dict:
    """Greedy decoding of the in-memory sparse model (FFN weights rounded to the pack dtype); a BOS model starts
    from a KV cache holding the BOS position computed dense, as FlashModel.new_kv does."""
    if dtype not in c["refs"]:
        h = c["h"]
        with rounded_ffn(h, dtype):
            kv = new_kv_for(h.model)()
            if h.bos is not None:
                model_step(h.model)(h.bos, kv)
            with sparsified(h, c["sp"]):
                c["refs"][dtype] = greedy(model_step(h.model), kv, c["stream"][PROMPT].tolist(), STEPS,
                                          keep_logits=True)
    return c["refs"][dtype]


CONFIGS = {
    "plain": dict(policy="none", collapse=0, prefetch=False),
    "lru-collapse-prefetch": dict(policy="lru", budget=0.3, collapse=2, prefetch=True),
    "s3fifo-input-margin": dict(policy="s3fifo", budget=0.2, prefetch=True, predictor="input", margin=1.5),
    "dense-read": dict(policy="none", dense=True),
    "compact-lru-prefetch": dict(policy="lru", budget=0.3, collapse=1, prefetch=True, exact=False),
}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_in_memory_sparse_model(name, cfg, dtype, work, corpus):
    c = _case(name, work, corpus)
    ref = _reference(c, dtype)
    with FlashModel(c["packs"][dtype], c["h"], sparsifier=c["sp"], engine="sync", **CONFIGS[cfg]) as fm:
        got = fm.generate(c["stream"][PROMPT].tolist(), STEPS, keep_logits=True)
        rep = fm.report()
    assert got["tokens"] == ref["tokens"]
    assert float((got["logits"] - ref["logits"]).abs().max()) <= 1e-4
    assert rep["tokens"] == 4 + STEPS - 1 and rep["per_token"]["bytes_read"] > 0
    assert rep["moe"]["moe_layers"] == len({u.layer for u in c["h"].units if u.expert is not None})
    if CONFIGS[cfg].get("prefetch"):
        pf = rep["prefetch"]
        assert pf["predictor_precision"] is not None and 0 < pf["predictor_recall"] <= 1
        assert rep["ms_per_token"]["io_hidden"] >= 0


def test_reads_exactly_the_routed_experts(work, corpus):
    """Per token and MoE layer the engine fetches the units of the top-k experts the router chose (recorded from
    the model's own router), each once, and the neurons the sparsifier keeps for that unit."""
    c = _case("mixtral", work, corpus)
    h, sp = c["h"], c["sp"]
    with FlashModel(c["packs"]["fp32"], h, sparsifier=sp, engine="sync", policy="none", prefetch=False) as fm:
        routed: list[list[int]] = []
        for li, layer in enumerate(fm.model.model.layers):
            layer.mlp.gate.register_forward_hook(
                lambda m, a, o, li=li: routed.append(sorted(fm._layer_units[li][int(e)] for e in o[2][0])))
        fetched: list[tuple[int, int]] = []
        inner = fm.reader.fetch_raw

        def spy(unit, ids):
            fetched.append((int(unit), len(ids)))
            return inner(unit, ids)

        fm.reader.fetch_raw = spy
        fm.generate(c["stream"][PROMPT].tolist(), 3)
    k = h.model.config.num_experts_per_tok
    assert len(routed) == (4 + 2) * 2 and all(len(r) == k for r in routed)
    assert sorted(u for u, _ in fetched) == sorted(u for r in routed for u in r)
    assert 0 < sum(n for _, n in fetched) < sum(h.units[u].n for u, _ in fetched)  # CATS 50 %: subsets


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe+mixed+bos"])
def test_expert_weights_are_not_held(name, work, corpus):
    c = _case(name, work, corpus)
    h = c["h"]
    with FlashModel(c["packs"]["fp16"], h, sparsifier=c["sp"], engine="sync", policy="lru", budget=0.1) as fm:
        gc.collect()
        moe_layers = {u.layer for u in h.units if u.expert is not None}
        dense_layers = {u.layer for u in h.units if u.expert is None}
        assert len(fm.dropped) == 2 * (len(moe_layers) + len(dense_layers))
        assert all(ref() is None for ref in fm.dropped)  # the fused expert tensors (and dense up/down) were freed
        names = [n for n, _ in fm.model.named_parameters()]
        assert not any("experts.gate_up_proj" in n or "experts.down_proj" in n for n in names)
        d = h.d_model
        cfg = h.model.config
        resident = sum(u.n * d for u in h.units)  # one gate per unit (a dense layer's gate_proj, every expert's)
        resident += sum(d for u in h.units if u.expert is not None)  # router rows, one per expert
        if h.family == "qwen2_moe":  # shared expert (gate, up, down) and its sigmoid gate
            resident += len(moe_layers) * (3 * cfg.shared_expert_intermediate_size * d + d)
        assert sum(p.numel() for nm, p in fm.model.named_parameters() if ".mlp." in nm) == resident
        region = -(-max(u.n for u in h.units) * fm.reader.bundle_bytes // 4096) * 4096
        assert fm.reader.cache_bytes <= int(0.1 * fm.reader.ffn_bytes)
        assert fm.reader.dram_bytes <= int(0.1 * fm.reader.ffn_bytes) + 2 * region
        fm.generate([1, 2, 3], 2)


@pytest.mark.parametrize("name", ["qwen3_moe", "qwen2_moe+mixed+bos"])
def test_flash_perplexity_equals_in_memory(name, work, corpus):
    c = _case(name, work, corpus)
    h, sp, stream = c["h"], c["sp"], c["stream"]
    want = perplexity(h, stream, start=256, tokens=2 * CTX, ctx=CTX, sparsifier=sp)
    with FlashModel(c["packs"]["fp32"], h, sparsifier=sp, engine="sync", policy="lru", budget=0.2,
                    prefetch=True) as fm:
        got = fm.perplexity(stream, start=256, tokens=2 * CTX, ctx=CTX)
    assert got["n_predicted"] == want.n_predicted == 2 * (CTX - 1)
    assert got["ppl"] == pytest.approx(want.ppl, rel=1e-5)


@pytest.fixture(scope="module")
def mixtral_trace(work, corpus):
    """A CATS-50 % trace of the tiny Mixtral (thresholds per (layer, expert), co-routing counts)."""
    return capture(_case("mixtral", work, corpus)["h"], corpus, work / "mixtral-trace", tokens=96, ctx=CTX,
                   method="cats", sparsity=0.5, calib_tokens=64, shard_tokens=96, ppl_tokens=0, progress=False)


def test_perplexity_from_pack_with_thresholds_of_a_trace(work, corpus, mixtral_trace):
    """``coact perplexity --from PACK --thresholds-from TRACE`` on an MoE model: the trace's per-unit thresholds,
    and the perplexity of the in-memory sparse model with them."""
    c = _case("mixtral", work, corpus)
    res = run_flash_perplexity(c["packs"]["fp32"], model=str(c["folder"]), thresholds_from=mixtral_trace.path,
                               corpus=corpus, tokens=2 * CTX, start=128, ctx=CTX, engine="sync", policy="lru",
                               budget=0.2)
    thresholds = mixtral_trace.meta["sparsifier"]["thresholds"]
    assert len(thresholds) == len(c["h"].units) and res["sparsifier"]["thresholds"] == thresholds
    want = perplexity(c["h"], c["stream"], start=128, tokens=2 * CTX, ctx=CTX,
                      sparsifier=get_sparsifier("cats", sparsity=0.5, thresholds=thresholds))
    assert res["flash"]["ppl"] == pytest.approx(want.ppl, rel=1e-5)


def test_named_pipelines_run_an_moe_pack(work, corpus, mixtral_trace):
    """dense-from-flash, llmflash, ripple and coact (configured from a profiling trace, as ``--pipeline``) run the
    same MoE pack and give the reference's greedy tokens."""
    c = _case("mixtral", work, corpus)
    h = c["h"]
    tr = mixtral_trace
    sp = get_sparsifier("cats", sparsity=0.5, thresholds=tr.meta["sparsifier"]["thresholds"])
    cm = CostModel(queue_depths=[1, 16], per_request_s=[80e-6, 12e-6], per_byte_s=[1e-9, 4e-10],
                   latency_a_s=[80e-6, 100e-6], latency_b_s=[1e-9, 1e-9], seq_bandwidth=2e9)
    cm.save(work / "cost.json")
    prompt = c["stream"][PROMPT].tolist()
    with rounded_ffn(h, "fp16"), sparsified(h, sp):
        want = greedy(model_step(h.model), new_kv_for(h.model)(), prompt, 3)["tokens"]
    for name in available_pipelines():
        opts = pipeline_options(c["packs"]["fp16"], name, budget=0.2, cost=work / "cost.json",
                                profile_trace=tr.path, engine="threads:4")
        opts.pop("cost")
        with FlashModel(c["packs"]["fp16"], h, sparsifier=sp, budget=0.2, cost_model=cm, **opts) as fm:
            assert fm.generate(prompt, 3)["tokens"] == want, name
            assert fm.report()["per_token"]["bytes_read"] > 0


def test_cli_generate_and_perplexity_from_an_moe_pack(work, corpus):
    c = _case("olmoe", work, corpus)
    common = ["--model", str(c["folder"]), "--sparsity", "0.5", "--corpus", corpus, "--calib-tokens", "64",
              "--engine", "sync", "--json"]
    r = CliRunner().invoke(app, ["generate", "--from", str(c["packs"]["fp16"]), "--prompt", "The cat",
                                 "--max-tokens", "3", *common])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["tokens"]) == 3 and res["report"]["tokens_per_s"] > 0 and res["report"]["moe"]["moe_layers"] == 2
    r = CliRunner().invoke(app, ["perplexity", "--from", str(c["packs"]["fp16"]), "--tokens", "20", "--ctx", "10",
                                 *common])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["flash"]["n_predicted"] == 18 and np.isfinite(res["flash"]["ppl"])
    # the thresholds are per (layer, expert), calibrated on the tokens routed to each expert
    acts = calibration_activations(c["h"], token_windows(c["stream"], 0, 64, 256))
    assert res["sparsifier"]["thresholds"] == pytest.approx(
        [float(np.quantile(a.abs().numpy().ravel(), 0.5)) for a in acts], rel=1e-6)


def test_bad_input_is_one_line(work, corpus):
    mixed, mixtral, olmoe = (_case(n, work, corpus) for n in ("qwen2_moe+mixed+bos", "mixtral", "olmoe"))
    with pytest.raises(CoactError, match="not .*olmoe|pack is for model"):
        FlashModel(mixtral["packs"]["fp16"], olmoe["h"], sparsifier=olmoe["sp"])
    dense_pack = pack(mixtral["h"], mixtral["layout"], work / "gud.pack", bundle="gate-up-down", progress=False)
    with pytest.raises(CoactError, match="bundle schema 'gate-up-down'"):
        FlashModel(dense_pack, mixtral["h"], sparsifier=mixtral["sp"])
    # same model id, other units: a pack of the mixed stack refused for a model with four experts in both layers
    other = Layout(mixed["layout"].perms, model_id=mixtral["h"].model_id, units=mixed["layout"].units)
    from runtime.pack import write_pack

    wrong = write_pack(work / "wrong.pack", mixed["h"].ffn_weights, other, dtype="fp16", d_model=mixed["h"].d_model)
    with pytest.raises(CoactError, match=r"pack has 5 units \(2 layers, 4 experts\).*the model 8 units "
                                         r"\(2 layers, 8 experts\)"):
        FlashModel(wrong, mixtral["h"], sparsifier=mixtral["sp"])
    with pytest.raises(CoactError, match="missing thresholds"):
        FlashModel(mixtral["packs"]["fp16"], mixtral["h"], sparsifier=get_sparsifier("cats", sparsity=0.5))
    r = CliRunner().invoke(app, ["generate", "--from", str(mixtral["packs"]["fp16"]), "--prompt", "hi",
                                 "--model", str(olmoe["folder"]), "--sparsity", "0.5", "--corpus", corpus,
                                 "--calib-tokens", "64"])
    assert r.exit_code == 2 and "pack is for model" in r.output and "Traceback" not in r.output
