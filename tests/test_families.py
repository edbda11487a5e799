"""Every registered model family (coact.families), as a tiny random model saved with save_pretrained, through
trace -> stats -> solve -> pack -> replay; packs byte-exact against the model's own safetensors (in layout order,
biases included); recorded active sets equal a direct recomputation; permute_ffn keeps the logits; the flash engine
computes the same logits as the in-memory sparsified model.

Each family's model is built and loaded once per test module (a fraction of a second each).
"""
from __future__ import annotations

import copy
import gc
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from coact.accuracy import perplexity, sparsified
from coact.corpus import token_windows, tokenize
from coact.errors import ModelError
from coact.families import FAMILIES, Family, family_for
from coact.families.testing import save_tiny
from coact.models import load_model
from coact.online import FlashModel, greedy, model_step, new_kv_for, rounded_ffn
from coact.sparsify import get_sparsifier
from coact.trace import Trace, forward_activations
from coact.workflow import capture, count, pack, replay_pack, solve_layouts, trace_bundle_bytes
from common.bits import pack_bits, unpack_bits
from runtime.direct import direct_io_supported
from runtime.layout import Layout
from runtime.pack import PackFile
from conftest import wiki_excerpt

TOKENS, CTX = 96, 32
#: Every registered dense family, plus a gated family with FFN biases (Llama's mlp_bias) so gated biases are
#: covered. Mixture-of-experts families (per-expert units) run in tests/test_moe.py and, from flash, in
#: tests/test_online_moe.py.
DENSE = [f for f in FAMILIES.names() if not FAMILIES.get(f)().moe]
CASES = [(f, {}) for f in DENSE] + [("llama", {"mlp_bias": True})]
IDS = [f if not kw else f + "+" + "+".join(kw) for f, kw in CASES]


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """Move the objects alive now (torch, transformers, ...) out of the collector's view for this module: every
    FlashModel runs gc.collect() once, which otherwise scans the whole import heap (~1 s each on a loaded CI box)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return wiki_excerpt(tmp_path_factory, 4000)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder where O_DIRECT works (the replay and the flash engine read packs with it): the pytest temporary
    directory, or one inside the repository when that is on tmpfs."""
    d = tmp_path_factory.mktemp("families")
    if direct_io_supported(d):
        yield d
        return
    d = Path(tempfile.mkdtemp(prefix=".pytest-families-", dir=Path(__file__).resolve().parent.parent))
    try:
        if not direct_io_supported(d):
            pytest.skip("no directory with O_DIRECT support")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


_BUILT: dict[str, tuple[Path, object]] = {}


def _model(work: Path, family: str, overrides: dict) -> tuple[Path, object]:
    key = family + repr(sorted(overrides.items()))
    if key not in _BUILT:
        folder = save_tiny(family, work / f"{family}{len(_BUILT)}" / "model", **overrides)
        _BUILT[key] = (folder, load_model(str(folder)))
    return _BUILT[key]


def _tensor(st: dict, adapter: Family, layer: int, part: str, kind: str = "weight") -> np.ndarray | None:
    """A projection's tensor from the saved safetensors, found by its path under the adapter's layer list (None if
    the checkpoint has no such tensor, e.g. a bias of a bias-free model)."""
    mid = f"{adapter.layers}.{layer}." + (f"{adapter.ffn}." if adapter.ffn else "") + getattr(adapter, part)
    name = f"{mid}.{kind}"
    keys = [k for k in st if k == name or k.endswith("." + name)]
    assert len(keys) <= 1, keys
    return st[keys[0]] if keys else None


def _expected(st: dict, adapter: Family, layer: int, n: int) -> dict[str, np.ndarray]:
    """{part: [N, d] rows by neuron, part_bias: [N]} straight from the checkpoint (down as [N, d]: its columns)."""
    def oi(t: np.ndarray) -> np.ndarray:  # [out, in]
        return t.T if adapter.conv1d else t

    out: dict[str, np.ndarray] = {}
    if adapter.fused:
        w, b = oi(_tensor(st, adapter, layer, "gate_up")), _tensor(st, adapter, layer, "gate_up", "bias")
        out["gate"], out["up"] = w[:n], w[n:]
        if b is not None:
            out["gate_bias"], out["up_bias"] = b[:n], b[n:]
    else:
        for part in ("gate", "up") if adapter.gate else ("up",):
            out[part] = oi(_tensor(st, adapter, layer, part))
            b = _tensor(st, adapter, layer, part, "bias")
            if b is not None:
                out[f"{part}_bias"] = b
    out["down"] = oi(_tensor(st, adapter, layer, "down")).T
    return out


@pytest.mark.parametrize("family,overrides", CASES, ids=IDS)
def test_family_pipeline(family, overrides, work, corpus):
    from safetensors.numpy import load_file

    folder, h = _model(work, family, overrides)
    assert h.family == family and family_for(h.model.config).name == family
    out = folder.parent
    tr = capture(h, corpus, out / "trace", tokens=TOKENS, ctx=CTX, method="cats", sparsity=0.5,
                 calib_tokens=64, shard_tokens=64, ppl_tokens=0, progress=False)
    assert tr.n_layers == h.n_layers and tr.n_neurons == h.n_neurons

    # Recorded active sets equal a direct recomputation (dense forward, the trace's own thresholds).
    stream = tokenize(open(corpus, encoding="utf-8").read(), h.tokenizer)
    acts = forward_activations(h, token_windows(stream, 0, TOKENS, CTX))
    sp = get_sparsifier("cats", sparsity=0.5, thresholds=tr.meta["sparsifier"]["thresholds"])
    got = Trace.load(out / "trace").packed()
    for layer, a in enumerate(acts):
        want = pack_bits(sp.mask(layer, a).numpy())
        assert np.array_equal(got[:, layer], want)

    st = count(tr, progress=False)
    layout, _ = solve_layouts(st, ["ripple"], progress=False)["ripple"]
    ck = load_file(str(folder / "model.safetensors"))
    for bundle in ("up-down", "gate-up-down") if h.gated else ("up-down",):
        pf_path = pack(h, layout, out / f"{bundle}.pack", bundle=bundle, dtype="fp32", progress=False)
        with PackFile(pf_path) as pf:
            pf.verify()
            biased = any(f"{p}_bias" in h.ffn_weights(0) for p in pf.header["schema"] if p != "down")
            assert pf.biases == biased and pf.width == h.d_model + int(biased)
            for layer in range(h.n_layers):
                perm = layout.perms[layer]
                exp = _expected(ck, h.adapter, layer, h.n_neurons)
                data = pf.read_neurons(layer, perm)  # bundles in position order
                with open(pf_path, "rb") as f:  # the file's bytes are exactly these bundles
                    f.seek(pf.layer_offset(layer))
                    raw = f.read(pf.layer_nbytes(layer))
                assert np.array_equal(np.frombuffer(raw, "<f4").reshape(data.shape), data)
                for j, part in enumerate(pf.header["schema"]):
                    assert np.array_equal(data[:, j, : h.d_model], exp[part][perm]), (layer, part)
                    if biased:
                        bias = exp.get(f"{part}_bias")
                        want_b = np.zeros(len(perm)) if bias is None or part == "down" else bias[perm]
                        assert np.array_equal(data[:, j, h.d_model], want_b), (layer, part)
    rep = replay_pack(out / "up-down.pack", tr, progress=False)
    active = int(unpack_bits(got, h.n_neurons).sum())
    assert rep.n_tokens == TOKENS and rep.active == active and rep.loaded == active  # no cache: every active read
    with PackFile(out / "up-down.pack") as pf:
        assert rep.bytes_requested == active * pf.bundle_bytes
        # The simulator's byte figures use the same bundle size as the pack (biases widen every part by one value).
        assert trace_bundle_bytes(tr.meta, "up-down", "fp32") == pf.bundle_bytes


@pytest.mark.parametrize("family,overrides", CASES, ids=IDS)
def test_permute_ffn_keeps_logits(family, overrides, work):
    _, h = _model(work, family, overrides)
    h2 = copy.copy(h)
    h2.model = copy.deepcopy(h.model)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = h.model(ids).logits
    rng = np.random.default_rng(1)
    perms = [rng.permutation(h.n_neurons) for _ in range(h.n_layers)]
    before = [h.ffn_weights(l) for l in range(h.n_layers)]
    for layer, p in enumerate(perms):
        h2.permute_ffn(layer, p)
    with torch.no_grad():
        got = h2.model(ids).logits
    assert float((got - ref).abs().max()) <= 1e-5
    for layer, p in enumerate(perms):
        w = h2.ffn_weights(layer)
        for k, v in before[layer].items():
            want = v if k == "down_bias" else (v[:, p] if k == "down" else v[p])
            assert np.array_equal(w[k], want), k
    with pytest.raises(ModelError):
        h2.permute_ffn(0, np.zeros(h.n_neurons, dtype=int))


@pytest.mark.parametrize("family,overrides", CASES, ids=IDS)
def test_flash_engine_equals_in_memory_sparse_model(family, overrides, work, corpus):
    _, h = _model(work, family, overrides)
    stream = tokenize(open(corpus, encoding="utf-8").read(), h.tokenizer)
    sp = get_sparsifier("cats", sparsity=0.5)
    sp.calibrate(forward_activations(h, token_windows(stream, 0, 64, CTX)))
    out = work / f"flash-{family}-{len(overrides)}"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    lay = Layout([rng.permutation(h.n_neurons) for _ in range(h.n_layers)], model_id=h.model_id)
    prompt = stream[100:104].tolist()
    pf = pack(h, lay, out / "fp16.pack", dtype="fp16", progress=False)
    with rounded_ffn(h, "fp16"), sparsified(h, sp):
        ref = greedy(model_step(h.model), new_kv_for(h.model)(), prompt, 4, keep_logits=True)
    # exact mode runs the model's own kernels on the fetched bundles (bit-identical FFN outputs); k-sized
    # matmuls (exact=False) differ in the float32 summation order only.
    for kw, tol in ((dict(policy="none", prefetch=False), 1e-5),
                    (dict(policy="lru", budget=0.3, prefetch=True, collapse=1, exact=False), 1e-4)):
        with FlashModel(pf, h, sparsifier=sp, engine="sync", **kw) as fm:
            got = fm.generate(prompt, 4, keep_logits=True)
        assert got["tokens"] == ref["tokens"]
        assert float((got["logits"] - ref["logits"]).abs().max()) <= tol, kw


def test_plain_ffn_refuses_gate_up_down(work):
    _, h = _model(work, "opt", {})
    lay = Layout.identity(h.n_neurons, h.n_layers, model_id=h.model_id)
    with pytest.raises(ModelError, match="no gate.*up-down"):
        pack(h, lay, work / "gud.pack", bundle="gate-up-down", progress=False)
    assert "gate" not in h.ffn_weights(0)  # fc1 is `up`; nothing stores it twice


def test_unknown_family_names_the_supported_ones():
    class Cfg:
        model_type = "mamba"

    with pytest.raises(ModelError, match="unsupported model family 'mamba'; supported: .*llama.*opt"):
        family_for(Cfg())


def test_one_line_model_errors_leave_nothing_behind(work, corpus, tmp_path):
    folder, h = _model(work, "llama", {})
    out = tmp_path / "trace"
    with pytest.raises(ModelError, match=r"--ctx 512 is longer than the model's position table \(256 positions"):
        capture(h, corpus, out, tokens=1024, ctx=512, sparsity=0.5, calib_tokens=64, ppl_tokens=0, progress=False)
    assert not out.exists() and not Path(str(out) + ".partial").exists()

    bare = tmp_path / "no-tokenizer"
    shutil.copytree(folder, bare)
    for f in bare.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            f.unlink()
    with pytest.raises(ModelError, match="has no tokenizer: .* holds none of tokenizer.json") as err:
        load_model(str(bare))
    assert "\n" not in str(err.value)

    small = save_tiny("llama", tmp_path / "small-vocab", vocab_size=100)
    with pytest.raises(ModelError, match="the tokenizer has 256 tokens but the model's vocabulary only 100"):
        load_model(str(small))


def test_bos_in_front_of_every_window(work, corpus, tmp_path):
    """A model whose tokenizer adds BOS gets it in front of every window: traces record the window's own tokens
    (activations equal a direct forward of [BOS] + window), perplexity predicts the same c - 1 tokens from the
    BOS-prefixed context, and the flash engine (BOS position in the KV cache, dense) agrees with it."""
    folder = save_tiny("llama", tmp_path / "bos-model", bos=True)
    h = load_model(str(folder))
    assert h.bos == 256 and load_model(str(_model(work, "llama", {})[0])).bos is None
    tr = capture(h, corpus, tmp_path / "trace", tokens=64, ctx=CTX, sparsity=0.5, calib_tokens=64, ppl_tokens=0,
                 progress=False)
    stream = tokenize(open(corpus, encoding="utf-8").read(), h.tokenizer)
    assert 256 not in stream  # the corpus stream itself has no BOS
    wins = token_windows(stream, 0, 64, CTX)
    x = torch.as_tensor(np.stack([np.concatenate([[256], w]) for w in wins]))
    seen: list[list[torch.Tensor]] = [[] for _ in range(h.n_layers)]
    hooks = [h.act_module(l).register_forward_hook(lambda m, i, o, l=l: seen[l].append(o[:, 1:].reshape(-1, o.shape[-1])))
             for l in range(h.n_layers)]
    with torch.no_grad():
        logits = h.model(x, use_cache=False).logits
    for hk in hooks:
        hk.remove()
    sp = get_sparsifier("cats", sparsity=0.5, thresholds=tr.meta["sparsifier"]["thresholds"])
    got = Trace.load(tmp_path / "trace").packed()
    for layer in range(h.n_layers):
        assert np.array_equal(got[:, layer], pack_bits(sp.mask(layer, torch.cat(seen[layer])).numpy()))

    ppl = perplexity(h, stream, start=0, tokens=64, ctx=CTX)
    logp = torch.log_softmax(logits[:, 1:-1].double(), -1)
    tgt = x[:, 2:]
    want = float(-logp.gather(-1, tgt.unsqueeze(-1)).mean())
    assert ppl.n_predicted == 62 and ppl.nll == pytest.approx(want, rel=1e-9)

    with pytest.raises(ModelError, match="one taken by BOS.*--ctx 255"):
        h.check_inputs(ctx=256)


    lay = Layout.identity(h.n_neurons, h.n_layers, model_id=h.model_id)
    pf = pack(h, lay, work / "bos.pack", dtype="fp32", progress=False)
    sp_eval = get_sparsifier("cats", sparsity=0.5, thresholds=tr.meta["sparsifier"]["thresholds"])
    want_sparse = perplexity(h, stream, start=64, tokens=2 * CTX, ctx=CTX, sparsifier=sp_eval)
    with FlashModel(pf, h, sparsifier=sp_eval, engine="sync", policy="none", prefetch=False) as fm:
        res = fm.perplexity(stream, start=64, tokens=2 * CTX, ctx=CTX)
        assert fm.report()["tokens"] == 2 * (CTX - 1)  # the BOS step is not a measured token
    assert res["n_predicted"] == want_sparse.n_predicted and res["ppl"] == pytest.approx(want_sparse.ppl, rel=1e-5)
