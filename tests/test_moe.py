"""Mixture-of-experts and units of different widths (issue 11): placement units (layer, expert) through trace ->
stats -> solve -> pack -> replay.

- A hand-made trace of units of different widths (padding bits 0) through stats, solve, pack and replay.
- Every MoE family the installed transformers provides (tiny random models saved with save_pretrained), and a
  mixed dense/MoE stack (Qwen2-MoE with ``mlp_only_layers``): recorded active sets equal a direct recomputation
  of the routing rule from the model's weights (router top-k AND the CATS mask with the unit's threshold); packs
  byte-exact against the per-expert tensors of the model's safetensors; replay counts per expert.
- The unit hooks' recomputed expert output equals the model's own (a mask that keeps everything changes nothing).
- ``--expert-order coactivation`` (greedy path over co-routing counts) and the HF export per expert (logits within
  1e-5); GGUF export of an MoE layout is one line.
- ``coact compare`` and the named pipelines on units of different widths.
"""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coact.compare import run_compare
from coact.corpus import token_windows, tokenize
from coact.export_model import ExportError, export_hf, export_model, read_model_layout
from coact.families import FAMILIES
from coact.families.testing import save_tiny
from coact.flash import run_pipelines
from coact.models import load_model
from coact.stats import count_stats
from coact.trace import FORMAT, Trace, TraceError, _features, content_digest, publish_trace
from coact.workflow import capture, count, pack, replay_pack, solve_layouts
from common.bits import n_packed_bytes, pack_bits, unpack_bits
from hypothesis import given, settings
from hypothesis import strategies as hst

from runtime.device import CostModel
from runtime.layout import Layout, Unit, export_layout, load_layout, save_layout
from runtime.pack import PackFile, expert_order, write_pack
from runtime.replay import replay, simulate
from conftest import wiki_excerpt

TOKENS, CTX = 96, 32
MOE = [f for f in FAMILIES.names() if FAMILIES.get(f)().moe]
CASES = [(f, {}) for f in MOE] + [("qwen2_moe", {"mlp_only_layers": [0]})]  # the last: a mixed dense/MoE stack
IDS = [f if not kw else f + "+mixed" for f, kw in CASES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return wiki_excerpt(tmp_path_factory, 4000)


# ------------------------------------------------------------------------------------- units of different widths
def _hand_trace(path: Path, widths: list[int], T: int = 200, seed: int = 0) -> tuple[Trace, np.ndarray]:
    """A sealed version-3 trace with one unit per entry of ``widths`` (random active sets, padding bits 0)."""
    rng = np.random.default_rng(seed)
    U, N = len(widths), max(widths)
    bits = np.zeros((T, U, N), dtype=bool)
    for u, n in enumerate(widths):
        hot = rng.random(n) < 0.3
        bits[:, u, :n] = (rng.random((T, n)) < 0.15) | (hot & (rng.random((T, 1)) < 0.5))
    partial = Path(str(path) + ".partial")
    final = partial / "final"
    datasets.Dataset.from_dict({"active": pack_bits(bits), "token_id": np.zeros(T, np.int32),
                                "pos": np.arange(T, dtype=np.int64)},
                               features=_features(U, n_packed_bytes(N))).save_to_disk(str(final))
    staged = Trace(final, {"n_tokens": T, "n_layers": U, "n_neurons": N}, datasets.load_from_disk(str(final)))
    units = [Unit(u // 2, u % 2 if u else None, n).to_dict() for u, n in enumerate(widths)]
    meta = {**FORMAT, "model_id": "hand", "n_layers": U, "n_neurons": N, "n_tokens": T, "d_model": 8,
            "sparsifier": {"name": "relu"}, "units": units, "content_digest": content_digest(staged)}
    return publish_trace(final, meta, path, partial), bits


def test_units_of_different_widths_through_stats_solve_pack_replay(direct_io_dir):
    widths = [40, 24, 33]
    tr, bits = _hand_trace(direct_io_dir / "trace", widths)
    assert tr.meta["version"] == 3 and tr.unit_widths == widths and tr.n_neurons == 40
    for u, n in enumerate(widths):
        assert np.array_equal(tr.active(u), bits[:, u, :n])
    dense = count(tr, progress=False)
    cand = count_stats(tr, top_k=8, progress=False)
    for u, n in enumerate(widths):
        f, c, t = dense.layer(u)
        assert f.shape == (n,) and c.shape == (n, n) and t == 200
        x = bits[:, u, :n].astype(np.int64)
        assert np.array_equal(f, x.sum(0)) and np.array_equal(c, x.T @ x)
        lc = cand.layer(u)
        assert lc.freq.shape == (n,) and lc.coact.shape == (n, n) and lc.excluded_max.shape == (n,)
    layout, _ = solve_layouts(dense, ["ripple"], progress=False)["ripple"]
    assert layout.n_neurons == widths and [u.n for u in layout.units] == widths
    save_layout(layout, direct_io_dir / "lay.safetensors")
    assert load_layout(direct_io_dir / "lay.safetensors").units == layout.units
    for fmt in ("json", "npz"):
        export_layout(layout, direct_io_dir / f"lay.{fmt}")
        assert load_layout(direct_io_dir / f"lay.{fmt}") == layout

    d = 8
    rng = np.random.default_rng(1)
    weights = [{"up": rng.standard_normal((n, d)).astype(np.float32),
                "down": rng.standard_normal((d, n)).astype(np.float32)} for n in widths]
    path = write_pack(direct_io_dir / "p.pack", lambda u: weights[u], layout, d_model=d, dtype="fp32")
    with PackFile(path) as pf:
        pf.verify()
        assert pf.units == layout.units and pf.layout().units == layout.units
        for u, n in enumerate(widths):
            got = pf.read_neurons(u, np.arange(n))
            assert np.array_equal(got[:, 0], weights[u]["up"]) and np.array_equal(got[:, 1], weights[u]["down"].T)
        bb = pf.bundle_bytes
    rep = replay(path, layout, tr.packed())
    sim = simulate(layout, tr.packed(), widths, bundle_bytes=bb)
    assert rep.counts_dict() == sim.counts_dict()
    assert rep.active == int(bits.sum())
    assert [m.active for m in rep.per_layer] == [int(bits[:, u].sum()) for u in range(3)]
    assert [m.label for m in rep.per_layer] == ["0", "0.e1", "1.e0"]
    assert rep.expert_reads() == {"0.e1": rep.per_layer[1].reads, "1.e0": rep.per_layer[2].reads}


@settings(max_examples=15, deadline=None)
@given(widths=hst.lists(hst.integers(1, 40), min_size=1, max_size=5), seed=hst.integers(0, 2**16))
def test_pack_of_units_in_any_region_order_round_trips(tmp_path_factory, widths, seed):
    """Property: any unit widths and any region order give a pack that verifies and returns every unit's bundles
    (the regions move, unit indices and perms do not)."""
    rng = np.random.default_rng(seed)
    d = 4
    units = [Unit(0, e, n) for e, n in enumerate(widths)]
    lay = Layout([rng.permutation(n) for n in widths], units=units)
    ws = [{"up": rng.standard_normal((n, d)).astype(np.float32), "down": rng.standard_normal((d, n)).astype(np.float32)}
          for n in widths]
    order = [int(x) for x in rng.permutation(len(widths))]
    path = write_pack(tmp_path_factory.mktemp("p") / "p.pack", lambda u: ws[u], lay, d_model=d, dtype="fp32",
                      order=order)
    with PackFile(path) as pf:
        pf.verify()
        assert pf.unit_order == order and pf.units == units
        offs = [pf.layer_offset(u) for u in order]
        assert offs == sorted(offs)
        for u, n in enumerate(widths):
            got = pf.read_neurons(u, np.arange(n))
            assert np.array_equal(got[:, 0], ws[u]["up"]) and np.array_equal(got[:, 1], ws[u]["down"].T)


def test_trace_refuses_units_that_do_not_fit(tmp_path):
    tr, _ = _hand_trace(tmp_path / "t", [16, 8])
    meta = dict(tr.meta, units=[{"layer": 0, "expert": None, "n": 16}, {"layer": 0, "expert": 0, "n": 17}])
    from coact.trace import _check_meta, meta_digest

    meta["meta_digest"] = meta_digest(meta)
    with pytest.raises(TraceError, match="units whose widths do not fit"):
        _check_meta(tmp_path, meta)


def test_expert_order_is_a_greedy_path_over_co_routing():
    units = [Unit(0, None, 8)] + [Unit(1, e, 4) for e in range(4)]
    C = [[50, 1, 2, 30], [1, 40, 25, 0], [2, 25, 60, 3], [30, 0, 3, 45]]
    # start at the most routed expert (2), then its strongest partner (1), then 1's best left (0), then 3
    assert expert_order(units, {"1": C}) == [0, 3, 2, 1, 4]
    assert expert_order(units, {}) == [0, 1, 2, 3, 4]  # no counts: index order


# --------------------------------------------------------------------------------------------------- MoE families
def _expert_tensor(ck: dict, layer: int, expert: int, part: str) -> np.ndarray:
    """gate/up [I, d] and down [d, I] of one expert from the checkpoint (transformers writes experts one by one:
    Mixtral's w1/w3/w2, the others' gate_proj/up_proj/down_proj)."""
    names = {"gate": ("w1", "gate_proj"), "up": ("w3", "up_proj"), "down": ("w2", "down_proj")}[part]
    keys = [k for k in ck if f"layers.{layer}." in k and f".experts.{expert}." in k
            and k.split(".")[-2] in names]
    assert len(keys) == 1, keys
    return ck[keys[0]]


def _dense_tensor(ck: dict, layer: int, part: str) -> np.ndarray:
    keys = [k for k in ck if k.endswith(f"layers.{layer}.mlp.{part}_proj.weight")]
    assert len(keys) == 1, keys
    return ck[keys[0]]


def _by_hand(h, tr: Trace, windows: list[np.ndarray]) -> np.ndarray:
    """bool [T, U, N] from the weights: router softmax top-k AND |act(gate_e(x))| > the unit's threshold."""
    thr = tr.meta["sparsifier"]["thresholds"]
    layers = h.decoder_layers()
    xs: dict[int, torch.Tensor] = {}
    hooks = [layers[l].mlp.register_forward_pre_hook(lambda m, a, l=l: xs.__setitem__(l, a[0].detach()))
             for l in {u.layer for u in h.units}]
    try:
        with torch.inference_mode():
            h.model(torch.as_tensor(np.stack(windows)), use_cache=False)
    finally:
        for hk in hooks:
            hk.remove()
    out = np.zeros((tr.n_tokens, len(h.units), h.n_neurons), dtype=bool)
    with torch.inference_mode():
        _rule(h, layers, xs, thr, out)
    return out


def _rule(h, layers, xs, thr, out) -> None:
    for u, unit in enumerate(h.units):
        mlp = layers[unit.layer].mlp
        x = xs[unit.layer].reshape(-1, h.d_model)
        if unit.expert is None:
            a = mlp.act_fn(F.linear(x, mlp.gate_proj.weight))
            out[:, u, : unit.n] = (a.abs() > thr[u]).numpy()
            continue
        k = h.model.config.num_experts_per_tok
        top = torch.topk(torch.softmax(F.linear(x, mlp.gate.weight).float(), dim=-1), k, dim=-1).indices
        tok = (top == unit.expert).any(-1).nonzero().squeeze(1)
        gate = F.linear(x[tok], mlp.experts.gate_up_proj[unit.expert]).chunk(2, dim=-1)[0]
        out[tok.numpy(), u, : unit.n] = (mlp.experts.act_fn(gate).abs() > thr[u]).numpy()


@pytest.mark.parametrize("family,overrides", CASES, ids=IDS)
def test_moe_family_pipeline(family, overrides, direct_io_dir, corpus):
    from safetensors.numpy import load_file

    folder = save_tiny(family, direct_io_dir / "model", **overrides)
    h = load_model(str(folder))
    assert h.units is not None and h.n_layers == len(h.units)
    n_exp = 4
    want_units = ([Unit(0, None, 64)] if overrides else [Unit(0, e, 32) for e in range(n_exp)]) + \
        [Unit(1, e, 32) for e in range(n_exp)]
    assert h.units == want_units
    tr = capture(h, corpus, direct_io_dir / "trace", tokens=TOKENS, ctx=CTX, method="cats", sparsity=0.5,
                 calib_tokens=64, shard_tokens=TOKENS, ppl_tokens=0, progress=False)
    assert tr.units == want_units and tr.unit_widths == [u.n for u in want_units]

    # The routing rule, recomputed from the weights (dense forward: one batch of the trace's windows).
    stream = tokenize(open(corpus, encoding="utf-8").read(), h.tokenizer)
    windows = token_windows(stream, 0, TOKENS, CTX)
    got = unpack_bits(tr.packed(), h.n_neurons)
    want = _by_hand(h, tr, windows)
    assert np.array_equal(got, want)
    for u, unit in enumerate(h.units):  # thresholds were calibrated on routed tokens only: an expert is active
        if unit.expert is not None:      # on some of them and silent on the rest
            assert 0 < got[:, u].any(1).sum() < TOKENS
    routing = tr.meta["routing"]
    assert set(routing) == {str(u.layer) for u in h.units if u.expert is not None}
    for C in routing.values():
        C = np.asarray(C)
        assert C.shape == (n_exp, n_exp) and np.array_equal(C, C.T)
        assert int(np.trace(C)) == 2 * TOKENS  # top-2: every token routed to exactly two experts

    st = count(tr, progress=False)
    layout, _ = solve_layouts(st, ["ripple"], progress=False)["ripple"]
    assert layout.units == want_units
    ck = load_file(str(folder / "model.safetensors"))
    for order in ("index", "coactivation"):
        pf_path = pack(h, layout, direct_io_dir / f"{order}.pack", bundle="gate-up-down", dtype="fp32",
                       expert_order=order, trace=tr, progress=False)
        with PackFile(pf_path) as pf:
            pf.verify()
            assert pf.header["moe"] is True and pf.units == want_units
            for u, unit in enumerate(want_units):
                perm = layout.perms[u]
                data = pf.read_neurons(u, perm)  # bundles in position order
                with open(pf_path, "rb") as f:  # the file's bytes of the unit are exactly these bundles
                    f.seek(pf.layer_offset(u))
                    raw = f.read(pf.layer_nbytes(u))
                assert np.array_equal(np.frombuffer(raw, "<f4").reshape(data.shape), data)
                for j, part in enumerate(("gate", "up", "down")):
                    if unit.expert is None:
                        exp = _dense_tensor(ck, unit.layer, part)
                    else:
                        exp = _expert_tensor(ck, unit.layer, unit.expert, part)
                    exp = exp.T if part == "down" else exp
                    assert np.array_equal(data[:, j], exp[perm]), (u, part)
            if order == "coactivation":  # each MoE layer's experts form one block of regions, in path order
                moe_layers = sorted({un.layer for un in want_units if un.expert is not None})
                for layer in moe_layers:
                    ids = [i for i in pf.unit_order if want_units[i].layer == layer]
                    pos = [pf.unit_order.index(i) for i in ids]
                    assert pos == list(range(pos[0], pos[0] + len(ids)))
                assert pf.unit_order == expert_order(want_units, routing)

    rep = replay_pack(direct_io_dir / "coactivation.pack", tr, progress=False)
    assert rep.n_tokens == TOKENS and rep.active == int(got.sum()) and rep.loaded == rep.active
    er = rep.expert_reads()
    assert set(er) == {u.label for u in want_units if u.expert is not None}
    assert sum(m.reads for m in rep.per_layer) == rep.reads and all(v > 0 for v in er.values())


@pytest.mark.parametrize("family,overrides", [CASES[0], CASES[-1]], ids=[IDS[0], IDS[-1]])
def test_unit_hooks_recompute_the_model_and_sparse_capture_works(family, overrides, tmp_path, corpus):
    """A mask that keeps everything makes the hooks recompute every expert's output: the logits must be the
    model's own; a sparse-forward capture then runs through the same path."""
    from coact.accuracy import sparsified

    h = load_model(str(save_tiny(family, tmp_path / "model", **overrides)))
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))

    class KeepAll:
        def mask(self, layer, a):
            return torch.ones_like(a, dtype=torch.bool)

    with torch.inference_mode():
        ref = h.model(ids).logits
        with sparsified(h, KeepAll()):
            got = h.model(ids).logits
    assert float((got - ref).abs().max()) <= 1e-5
    tr = capture(h, corpus, tmp_path / "sparse", tokens=64, ctx=CTX, method="cats", sparsity=0.7, calib_tokens=64,
                 shard_tokens=64, forward="sparse", ppl_tokens=0, progress=False)
    assert tr.meta["forward"] == "sparse" and 0.5 < float(np.mean(tr.meta["achieved_sparsity"])) < 1.0


@pytest.mark.parametrize("family,overrides", [CASES[0], CASES[-1]], ids=[IDS[0], IDS[-1]])
def test_hf_export_permutes_every_expert(family, overrides, tmp_path):
    from transformers import AutoModelForCausalLM

    h = load_model(str(save_tiny(family, tmp_path / "model", **overrides)))
    rng = np.random.default_rng(3)
    lay = Layout([rng.permutation(u.n) for u in h.units], model_id=h.model_id, solver="random", units=h.units)
    before = [h.ffn_weights(u) for u in range(h.n_layers)]
    out = export_hf(lay, h, tmp_path / "export")
    assert all(np.array_equal(h.ffn_weights(u)["gate"], before[u]["gate"]) for u in range(h.n_layers))  # restored
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    exported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.inference_mode():
        diff = (exported(ids).logits - h.model(ids).logits).abs().max()
    assert float(diff) <= 1e-5
    h2 = load_model(str(out))
    for u, p in enumerate(lay.perms):  # neuron p of the export is neuron perm[p] of the original, per expert
        w = h2.ffn_weights(u)
        assert np.array_equal(w["gate"], before[u]["gate"][p]) and np.array_equal(w["down"], before[u]["down"][:, p])
    assert read_model_layout(out)["layout"]["units"] == [u.to_dict() for u in h.units]
    save_layout(lay, tmp_path / "lay.safetensors")
    with pytest.raises(ExportError, match="gguf of a mixture-of-experts layout is not supported"):
        export_model(tmp_path / "lay.safetensors", "gguf", str(tmp_path / "model"), tmp_path / "x.gguf")


def test_cli_expert_order_needs_a_trace(tmp_path):
    from typer.testing import CliRunner

    from coact.cli import app

    folder = save_tiny("mixtral", tmp_path / "model")
    h = load_model(str(folder))
    save_layout(Layout([np.arange(u.n) for u in h.units], model_id=h.model_id, units=h.units), tmp_path / "l.st")
    res = CliRunner().invoke(app, ["pack", "--layout", str(tmp_path / "l.st"), "--out", str(tmp_path / "p.pack"),
                                   "--model", str(folder), "--expert-order", "coactivation"])
    assert res.exit_code == 2 and "needs --trace" in res.output and not (tmp_path / "p.pack").exists()


def test_compare_and_pipelines_on_units_of_different_widths(direct_io_dir):
    """`coact compare` (solvers x baselines with the bound) and the named pipelines (`coact pipelines`,
    `compare --real`) on a trace whose units differ in width: every layout, the built-in identity layout too,
    has the trace's unit widths, and the replays count exactly the trace's active neurons."""
    widths = [40, 24, 33]
    tr, bits = _hand_trace(direct_io_dir / "trace", widths, T=160)
    count(tr, direct_io_dir / "stats", stop=120, progress=False)
    cmp, _ = run_compare(direct_io_dir / "stats", tr.path, out=direct_io_dir / "cmp", start=120,
                         bound_time_limit=10, progress=False)
    assert {r["solver"] for r in cmp.rows} == {"identity", "random", "frequency", "ripple"}
    for r in cmp.rows:
        assert cmp.layouts[r["solver"]].n_neurons == widths
        assert cmp.reports[r["solver"]].active == int(bits[120:].sum())
        assert r["objective"] <= r["bound"] + 1e-6
    d = 8
    rng = np.random.default_rng(2)
    weights = [{"up": rng.standard_normal((n, d)).astype(np.float32),
                "down": rng.standard_normal((d, n)).astype(np.float32)} for n in widths]
    packs = {"identity": write_pack(direct_io_dir / "id.pack", lambda u: weights[u],
                                    Layout.identity(widths, units=tr.units), d_model=d, dtype="fp32"),
             "ripple": write_pack(direct_io_dir / "rip.pack", lambda u: weights[u], cmp.layouts["ripple"],
                                  d_model=d, dtype="fp32")}
    cm = CostModel(queue_depths=[1, 16], per_request_s=[80e-6, 12e-6], per_byte_s=[1e-9, 4e-10],
                   latency_a_s=[80e-6, 100e-6], latency_b_s=[1e-9, 1e-9], seq_bandwidth=2e9)
    cm.save(direct_io_dir / "cost.json")
    res = run_pipelines(tr.path, layouts={"ripple": direct_io_dir / "cmp" / "layouts" / "ripple.safetensors"},
                        packs=packs, pipelines=("dense", "llmflash", "ripple"), workdir=direct_io_dir / "work",
                        cost=direct_io_dir / "cost.json", start=120, repeats=1)
    rows = {r["pipeline"]: r for r in res["pipelines"]}
    assert set(rows) == {"dense", "llmflash", "ripple"} and all(r["n_tokens"] == 40 for r in rows.values())
