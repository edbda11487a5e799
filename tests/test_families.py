"""Every registered model family (coact.families), as a tiny random model saved with save_pretrained, through
trace -> stats -> solve -> pack -> replay; packs byte-exact against the model's own safetensors (in layout order,
biases included); recorded active sets equal a direct recomputation; permute_ffn keeps the logits; the flash engine
computes the same logits as the in-memory sparsified model.

Each family's model is built and loaded once per session (a fraction of a second each).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from coact.accuracy import sparsified
from coact.corpus import token_windows, tokenize
from coact.errors import ModelError
from coact.families import FAMILIES, Family, family_for
from coact.families.testing import save_tiny
from coact.models import load_model
from coact.online import FlashModel, greedy, model_step, new_kv_for, rounded_ffn
from coact.sparsify import get_sparsifier
from coact.trace import Trace, forward_activations
from coact.workflow import capture, count, pack, replay_pack, solve_layouts
from common.bits import pack_bits, unpack_bits
from runtime.direct import direct_io_supported
from runtime.pack import PackFile

TOKENS, CTX = 96, 32
#: Every registered family, plus a gated family with FFN biases (Llama's mlp_bias) so gated biases are covered.
CASES = [(f, {}) for f in FAMILIES.names()] + [("llama", {"mlp_bias": True})]
IDS = [f if not kw else f + "+" + "+".join(kw) for f, kw in CASES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    text = (Path(__file__).resolve().parent.parent / "../shared/corpora/wikitext2-test.txt")
    body = text.read_text(encoding="utf-8")[:4000] if text.exists() else "the quick brown fox. " * 200
    p = tmp_path_factory.mktemp("corpus") / "text.txt"
    p.write_text(body, encoding="utf-8")
    return str(p)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("families")
    if not direct_io_supported(d):
        repo = Path(__file__).resolve().parent.parent
        d = Path(tmp_path_factory.mktemp("unused")).parent  # fall back below
        import tempfile
        d = Path(tempfile.mkdtemp(prefix=".pytest-families-", dir=repo))
        if not direct_io_supported(d):
            pytest.skip("no directory with O_DIRECT support")
    return d


_BUILT: dict[str, tuple[Path, object]] = {}


def _model(work: Path, family: str, overrides: dict) -> tuple[Path, object]:
    key = family + repr(sorted(overrides.items()))
    if key not in _BUILT:
        folder = save_tiny(family, work / f"{family}{len(_BUILT)}" / "model", **overrides)
        _BUILT[key] = (folder, load_model(str(folder)))
    return _BUILT[key]


def _tensor(st: dict, adapter: Family, layer: int, part: str, kind: str = "weight") -> np.ndarray:
    """A projection's tensor from the saved safetensors, found by its path under the adapter's layer list."""
    mid = f"{adapter.layers}.{layer}." + (f"{adapter.ffn}." if adapter.ffn else "") + getattr(adapter, part)
    keys = [k for k in st if k.endswith(f"{mid}.{kind}") and (k == f"{mid}.{kind}" or k[: -len(mid) - len(kind) - 1].endswith("."))]
    assert len(keys) == 1, (mid, keys)
    return st[keys[0]]


def _expected(st: dict, adapter: Family, layer: int, n: int) -> dict[str, np.ndarray]:
    """{part: [N, d] rows by neuron, part_bias: [N]} straight from the checkpoint."""
    def oi(t: np.ndarray) -> np.ndarray:  # [out, in]
        return t.T if adapter.conv1d else t

    out: dict[str, np.ndarray] = {}
    if adapter.fused:
        w = oi(_tensor(st, adapter, layer, "gate_up"))
        out["gate"], out["up"] = w[:n], w[n:]
        try:
            b = _tensor(st, adapter, layer, "gate_up", "bias")
            out["gate_bias"], out["up_bias"] = b[:n], b[n:]
        except AssertionError:
            pass
    else:
        out["up"] = oi(_tensor(st, adapter, layer, "up"))
        try:
            out["up_bias"] = _tensor(st, adapter, layer, "up", "bias")
        except AssertionError:
            pass
    out["down"] = oi(_tensor(st, adapter, layer, "down")).T  # [N, d]: column i of down is row i here
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
    for dtype in ("fp32",):
        pf_path = pack(h, layout, out / f"{dtype}.pack", dtype=dtype, progress=False)
        ck = load_file(str(folder / "model.safetensors"))
        with PackFile(pf_path) as pf:
            pf.verify()
            biased = any(k.endswith("_bias") and k != "down_bias" for k in h.ffn_weights(0))
            assert pf.biases == biased and pf.width == h.d_model + int(biased)
            for layer in range(h.n_layers):
                perm = layout.perms[layer]
                exp = _expected(ck, h.adapter, layer, h.n_neurons)
                data = pf.read_neurons(layer, perm)  # bundles in position order
                raw = open(pf_path, "rb").read()[pf.layer_offset(layer): pf.layer_offset(layer) + pf.layer_nbytes(layer)]
                assert np.array_equal(np.frombuffer(raw, "<f4").reshape(data.shape), data)
                for j, part in enumerate(pf.header["schema"]):
                    assert np.array_equal(data[:, j, : h.d_model], exp[part][perm]), (layer, part)
                    if biased:
                        bias = exp.get(f"{part}_bias")
                        want_b = bias[perm] if bias is not None and part != "down" else np.zeros(len(perm))
                        assert np.array_equal(data[:, j, h.d_model], want_b), (layer, part)
    rep = replay_pack(pf_path, tr, progress=False)
    active = int(unpack_bits(got, h.n_neurons).sum())
    assert rep.n_tokens == TOKENS and rep.active == active and rep.loaded == active  # no cache: every active read
    assert rep.bytes_requested == active * pf.bundle_bytes


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
    from runtime.layout import Layout
    rng = np.random.default_rng(2)
    lay = Layout([rng.permutation(h.n_neurons) for _ in range(h.n_layers)], model_id=h.model_id)
    prompt = stream[100:104].tolist()
    for dtype in ("fp16", "fp32"):
        pf = pack(h, lay, out / f"{dtype}.pack", dtype=dtype, progress=False)
        with rounded_ffn(h, dtype), sparsified(h, sp):
            ref = greedy(model_step(h.model), new_kv_for(h.model)(), prompt, 4, keep_logits=True)
        for kw in (dict(policy="none", prefetch=False), dict(policy="lru", budget=0.3, prefetch=True, collapse=1)):
            with FlashModel(pf, h, sparsifier=sp, engine="sync", **kw) as fm:
                got = fm.generate(prompt, 4, keep_logits=True)
            assert got["tokens"] == ref["tokens"]
            assert float((got["logits"] - ref["logits"]).abs().max()) <= 1e-5
        with FlashModel(pf, h, sparsifier=sp, engine="sync", policy="none", prefetch=False, exact=False) as fm:
            got = fm.generate(prompt, 4, keep_logits=True)
        assert float((got["logits"] - ref["logits"]).abs().max()) <= 1e-4


def test_plain_ffn_refuses_gate_up_down(work):
    _, h = _model(work, "opt", {})
    from runtime.layout import Layout
    lay = Layout.identity(h.n_neurons, h.n_layers, model_id=h.model_id)
    with pytest.raises(ModelError, match="no gate.*up-down"):
        pack(h, lay, work / "gud.pack", bundle="gate-up-down", progress=False)
    assert "gate" not in h.ffn_weights(0)  # fc1 is `up`; nothing stores it twice


def test_unknown_family_names_the_supported_ones():
    class Cfg:
        model_type = "mamba"

    with pytest.raises(ModelError, match="unsupported model family 'mamba'; supported: .*llama.*opt"):
        family_for(Cfg())
