"""Look-ahead (cross-layer) prefetch: layer l+1's predicted bundles are read while layer l is still running.

What must hold: the true set still decides what is computed, so the logits are *identical* to the run without
look-ahead (and equal to the in-memory sparse model) for every look-ahead mode, both pack dtypes, with cache,
collapse and the dense-from-flash plan; the reader returns the pack's exact bytes whatever the interleaving of
look-aheads, misses and dropped prefetches, holds at most two layers' read buffers, and lets the reads the model
waits for overtake a look-ahead in flight (checked on the read log, not on a clock).
"""
from __future__ import annotations

import gc
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from coact.accuracy import sparsified
from coact.corpus import token_windows, tokenize
from coact.errors import CoactError
from coact.families.testing import save_tiny
from coact.models import load_model
from coact.online import LOOKAHEADS, FlashModel, greedy, model_step, new_kv_for, parse_lookahead, rounded_ffn
from coact.sparsify import get_sparsifier
from coact.trace import forward_activations
from coact.workflow import pack
from runtime.caches import get_cache
from runtime.engines import engine_status
from runtime.layout import Layout
from runtime.pack import PackFile, write_pack
from runtime.stream import FlashFFNReader, summarize
from conftest import wiki_excerpt

pytestmark = pytest.mark.disk

_URING_OK, _URING_WHY = engine_status("uring")
ENGINES = ["sync", "threads:4", pytest.param("uring:8", marks=pytest.mark.skipif(not _URING_OK, reason=_URING_WHY))]


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """Every FlashModel runs gc.collect() once; keep the import heap out of its view (as tests/test_families.py)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


# ------------------------------------------------------------------------------------------- the reader alone
L, N, D = 4, 160, 32


@pytest.fixture(scope="module")
def toy_pack(tmp_path_factory) -> Path:
    from runtime.direct import direct_io_supported

    d = tmp_path_factory.mktemp("la-reader")
    if not direct_io_supported(d):
        pytest.skip("no O_DIRECT in the temporary directory")
    rng = np.random.default_rng(0)
    w = {x: {"up": rng.standard_normal((N, D)).astype(np.float32),
             "down": rng.standard_normal((D, N)).astype(np.float32)} for x in range(L)}
    lay = Layout([rng.permutation(N) for _ in range(L)], model_id="toy")
    return write_pack(d / "toy.pack", w.__getitem__, lay, dtype="fp16", d_model=D)


HOT = [np.random.default_rng(7 + x).choice(N, 45, replace=False) for x in range(L)]


def _active(rng: np.random.Generator) -> list[np.ndarray]:
    """Per layer an active set with temporal locality (so the cache hits)."""
    return [np.union1d(rng.choice(HOT[x], 30, replace=False), rng.choice(N, 10, replace=False)) for x in range(L)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("chunk", [0, 3])
def test_reader_lookahead_pattern_is_exact(toy_pack, engine, chunk):
    """Per layer x: a look-ahead of x+1 (noisy guess) goes in flight *before* x is fetched, plus a same-layer
    top-up; every fetch returns the pack's bytes, counters add up, DRAM stays the cache + two region buffers."""
    bb = 2 * D * 2
    rng = np.random.default_rng(1)
    with PackFile(toy_pack) as pf, FlashFFNReader(toy_pack, cache=get_cache("lru", 120 * bb, bb), engine=engine,
                                                  collapse_gap=1) as rd:
        rd.prefetch_chunk = chunk
        rd.read_log = []
        region = -(-N * bb // 4096) * 4096
        assert rd.dram_bytes == 120 * bb + 2 * region
        n_active = 0
        for _ in range(5):
            act = _active(rng)
            rd.begin_token()
            rd.prefetch(0, act[0][::2])
            for x in range(L):
                if x + 1 < L:  # the look-ahead: some right, some wrong
                    guess = np.union1d(rng.choice(act[x + 1], 25, replace=False), rng.choice(N, 6, replace=False))
                    rd.prefetch(x + 1, guess)
                rd.prefetch(x, act[x][1::3])  # a top-up of the layer itself (adds what is not in flight)
                assert len(rd._buf_of) <= 2
                ids = rng.permutation(act[x])
                np.testing.assert_array_equal(rd.fetch_raw(x, ids), pf.read_neurons(x, ids))
                n_active += ids.size
        s = summarize(rd.tokens)
        log = rd.read_log
    tot = s["total"]
    assert tot["hits"] + tot["loaded"] == tot["active"] == n_active
    assert tot["hits"] > 0
    assert 0 < tot["prefetch_used"] <= tot["predicted"] and tot["prefetch_used"] <= tot["loaded"]
    assert sum(len(o) for o, _, _ in log) == tot["reads"]
    assert sum(sum(sz) for _, sz, _ in log) == tot["bytes_read"]


def test_reader_order_and_exact_rows(toy_pack):
    """fetch_raw returns rows in the order asked, with look-aheads in flight (threads engine, small chunks)."""
    with PackFile(toy_pack) as pf, FlashFFNReader(toy_pack, engine="threads:4") as rd:
        rd.prefetch_chunk = 2
        rng = np.random.default_rng(4)
        for _ in range(3):
            act = _active(rng)
            rd.begin_token()
            for x in range(L):
                if x + 1 < L:
                    rd.prefetch(x + 1, act[x + 1][::2])
                ids = rng.permutation(act[x])
                np.testing.assert_array_equal(rd.fetch_raw(x, ids), pf.read_neurons(x, ids))


def test_misses_overtake_a_lookahead_in_flight(toy_pack):
    """While layer 1's look-ahead is being read chunk by chunk, fetching layer 0 (all misses) must not wait for
    the rest of it: the read log shows layer 0's reads right after the chunk that was in flight."""
    with PackFile(toy_pack) as pf, FlashFFNReader(toy_pack, engine="sync", collapse_gap=0) as rd:
        rd.prefetch_chunk = 1
        rd.read_log = []
        in_flight, release = threading.Event(), threading.Event()
        submit, read = rd._engine.submit, rd._read
        base1 = rd.bases[1]

        def slow_submit(offs, sizes, out=None):
            if threading.current_thread().name == "coact-prefetch" and offs[0] >= base1 and not release.is_set():
                in_flight.set()
                release.wait(30)
            return submit(offs, sizes, out=out)

        def read_now(layer, positions, buf):  # the model's blocking read: the worker is told first
            assert rd._urgent == layer
            release.set()
            return read(layer, positions, buf)

        rd._engine.submit = slow_submit
        rd._read = read_now
        rd.begin_token()
        spread = np.arange(0, N, 64)  # 8 KiB apart: one request each
        ids1 = np.argsort(pf.inverse(1))[spread]  # the neurons at positions 0, 64, 128 of layer 1
        assert rd.prefetch(1, ids1) == spread.size
        assert in_flight.wait(30)
        ids0 = np.argsort(pf.inverse(0))[spread]
        np.testing.assert_array_equal(rd.fetch_raw(0, ids0), pf.read_neurons(0, ids0))
        np.testing.assert_array_equal(rd.fetch_raw(1, ids1), pf.read_neurons(1, ids1))
        layers = [0 if o[0] < base1 else 1 for o, _, _ in rd.read_log]
    # one layer-1 chunk was in flight, then layer 0's reads (one batch), then the rest of layer 1
    assert layers[0] == 1 and layers[1] == 0 and set(layers[2:]) == {1}
    assert len(layers) == 1 + 1 + (spread.size - 1)


def test_third_layer_gives_up_the_oldest(toy_pack):
    """At most two layers hold a read buffer: a prefetch for a third one gives up the oldest (counted wasted)."""
    bb = 2 * D * 2
    with PackFile(toy_pack) as pf, FlashFFNReader(toy_pack, engine="threads:4") as rd:
        rd.begin_token()
        for x in range(3):
            rd.prefetch(x, np.arange(10))
            assert len(rd._buf_of) <= 2
        assert sorted(rd._buf_of) == [1, 2]
        np.testing.assert_array_equal(rd.fetch_raw(2, np.arange(10)), pf.read_neurons(2, np.arange(10)))
        tok = rd.tokens[-1]
    assert tok.wasted_bytes >= 10 * bb and tok.prefetch_used == 10


@pytest.mark.parametrize("engine", ENGINES)
def test_dense_lookahead_reads_every_region_once_per_token(toy_pack, engine):
    """Dense mode with look-ahead: the next layer's region (after the last layer: the first, for the next token)
    is read in the background; each token still reads each region exactly once and gets the pack's bytes."""
    plain_reads = None
    for la in (0, 1):
        with PackFile(toy_pack) as pf, FlashFFNReader(toy_pack, engine=engine, dense=True) as rd:
            rd.lookahead = la
            rng = np.random.default_rng(2)
            for _ in range(3):
                act = _active(rng)
                rd.begin_token()
                for x in range(L):
                    np.testing.assert_array_equal(rd.fetch_raw(x, act[x]), pf.read_neurons(x, act[x]))
            reads = [t.reads for t in rd.tokens]
            assert all(t.predicted == 0 for t in rd.tokens)
        plain_reads = plain_reads or reads
        assert reads == plain_reads  # the same requests per token, with or without look-ahead


# ------------------------------------------------------------------------------ tiny models of three families
FAMILY_CASES = {  # a gated FFN with a post-attention norm, a plain one (GPT-2), one with no FFN norm (OLMo-2)
    "llama": dict(num_hidden_layers=3),
    "gpt2": dict(n_layer=3),
    "olmo2": dict(num_hidden_layers=3),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from runtime.direct import direct_io_supported

    work = tmp_path_factory.mktemp("la-tiny")
    if not direct_io_supported(work):
        pytest.skip("no O_DIRECT in the temporary directory")
    corpus = wiki_excerpt(tmp_path_factory, 3000)
    out = {}
    for fam, over in FAMILY_CASES.items():
        h = load_model(str(save_tiny(fam, work / fam / "model", **over)))
        stream = tokenize(open(corpus, encoding="utf-8").read(), h.tokenizer)
        sp = get_sparsifier("cats", sparsity=0.5)
        sp.calibrate(forward_activations(h, token_windows(stream, 0, 64, 32)))
        rng = np.random.default_rng(3)
        lay = Layout([rng.permutation(h.n_neurons) for _ in range(h.n_layers)], model_id=h.model_id)
        packs = {dt: pack(h, lay, work / fam / f"{dt}.pack", dtype=dt, progress=False) for dt in ("fp16", "fp32")}
        out[fam] = (h, sp, packs, stream[100:105].tolist())
    return out


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("family", list(FAMILY_CASES))
def test_lookahead_keeps_logits_identical(tiny, family, dtype):
    h, sp, packs, prompt = tiny[family]
    with rounded_ffn(h, dtype), sparsified(h, sp):
        ref = greedy(model_step(h.model), new_kv_for(h.model)(), prompt, 5, keep_logits=True)
    runs = {}
    base = dict(policy="lru", budget=0.3, collapse=1, prefetch=True, engine="threads:4")
    modes = [(la, None) for la in LOOKAHEADS] + [("mid+post", 0.8)]
    if dtype == "fp32":  # every mode once (fp16); fp32: the default, a top-up and a confident look-ahead
        modes = [("off", None), ("mid", None), ("x+post", None), ("mid+post", 0.8)]
    for la, m in modes:
        with FlashModel(packs[dtype], h, sparsifier=sp, lookahead=la, lookahead_margin=m, **base) as fm:
            runs[la, m] = (fm.generate(prompt, 5, keep_logits=True), fm.report())
    off = runs["off", None][0]["logits"]
    assert runs["off", None][0]["tokens"] == ref["tokens"]
    assert float((off - ref["logits"]).abs().max()) <= 1e-5
    for (la, m), (got, rep) in runs.items():
        assert got["tokens"] == ref["tokens"], la
        assert torch.equal(got["logits"], off), la  # look-ahead changes when bytes are read, never the values
        pf = rep["prefetch"]
        assert pf["lookahead"] == la and pf["lookahead_margin"] == (m or 1.0)
        if la != "off":  # 3 layers: layers 1 and 2 are predicted one layer ahead
            assert pf["lookahead_recall"] is not None  # scored (a random tiny model may predict no neuron)
            assert 0 <= pf["lookahead_recall"] <= 1 and rep["per_token"]["bytes_read"] > 0
        else:
            assert pf["lookahead_recall"] is None
    # dense-from-flash with and without its look-ahead (the next layer's whole region in flight)
    dense = {}
    for la in (0, 1):
        with FlashModel(packs[dtype], h, sparsifier=sp, dense=True, policy="none", engine="threads:4",
                        lookahead=la) as fm:
            dense[la] = fm.generate(prompt, 5, keep_logits=True)
            assert fm.reader.lookahead == la
    assert dense[0]["tokens"] == dense[1]["tokens"] == ref["tokens"]
    assert torch.equal(dense[0]["logits"], dense[1]["logits"])


def test_compact_path_with_lookahead_equals_without(tiny):
    h, sp, packs, prompt = tiny["llama"]
    got = {}
    for la in (0, 1):
        with FlashModel(packs["fp16"], h, sparsifier=sp, policy="lru", budget=0.2, collapse=2, exact=False,
                        engine="sync", lookahead=la) as fm:
            got[la] = fm.generate(prompt, 4, keep_logits=True)
    assert torch.equal(got[0]["logits"], got[1]["logits"])


def test_bad_lookahead(tiny):
    h, sp, packs, _ = tiny["llama"]
    assert parse_lookahead(0) == "off" and parse_lookahead(1) == "mid" and parse_lookahead("x+post") == "x+post"
    for bad in ("sideways", 2, True, 1.5):
        with pytest.raises(CoactError, match="lookahead"):
            FlashModel(packs["fp16"], h, sparsifier=sp, engine="sync", lookahead=bad)
    with pytest.raises(CoactError, match="lookahead margin"):
        FlashModel(packs["fp16"], h, sparsifier=sp, engine="sync", lookahead=1, lookahead_margin=0)


# ---------------------------------------------------------------------------------------------- real SmolLM2
@pytest.mark.model
def test_smollm2_lookahead_equals_in_memory_sparse_model(smollm2, tmp_path_factory):
    """SmolLM2, fp16 pack, look-ahead on (cache, collapse): greedy tokens and logits equal the in-memory sparse
    model's; the look-ahead predictor's recall is what it is offline (bench/results/online_lookahead.md)."""
    from runtime.direct import direct_io_supported

    d = tmp_path_factory.mktemp("la-smollm2")
    if not direct_io_supported(d):
        pytest.skip("no O_DIRECT in the temporary directory")
    from coact.corpus import load_text

    stream = tokenize(load_text("pydoc"), smollm2.tokenizer)
    sp = get_sparsifier("cats", sparsity=0.4)
    sp.calibrate(forward_activations(smollm2, token_windows(stream, 0, 256, 256)))
    lay = Layout.identity(smollm2.n_neurons, smollm2.n_layers, model_id=smollm2.model_id)
    pf = write_pack(d / "fp16.pack", smollm2.ffn_weights, lay, dtype="fp16", d_model=smollm2.d_model)
    prompt = stream[3000:3004].tolist()
    with rounded_ffn(smollm2, "fp16"), sparsified(smollm2, sp):
        ref = greedy(model_step(smollm2.model), new_kv_for(smollm2.model)(), prompt, 8, keep_logits=True)
    with FlashModel(pf, "smollm2", sparsifier=sp, policy="lru", budget=0.1, collapse=2, engine="threads:8",
                    lookahead=1) as fm:
        got = fm.generate(prompt, 8, keep_logits=True)
        rep = fm.report()
    assert got["tokens"] == ref["tokens"]
    assert float((got["logits"] - ref["logits"]).abs().max()) <= 1e-4
    assert rep["prefetch"]["lookahead_recall"] > 0.5 and rep["prefetch"]["lookahead_precision"] > 0.5


def test_bundles_a_prefetch_reads_anyway_need_no_read(toy_pack):
    """A miss whose bytes a prefetch of the same layer reads anyway (same 4 KiB page) is served from the layer's
    buffer: no request of its own; a top-up prefetch skips it too."""
    with PackFile(toy_pack) as pf, FlashFFNReader(toy_pack, engine="threads:4") as rd:
        perm = np.argsort(pf.inverse(0))  # the neuron at each position of layer 0
        rd.begin_token()
        assert rd.prefetch(0, perm[[0]]) == 1
        assert rd.prefetch(0, perm[[1, 2]]) == 0  # same page as position 0: already on its way
        ids = perm[[2, 0, 1]]
        np.testing.assert_array_equal(rd.fetch_raw(0, ids), pf.read_neurons(0, ids))
        tok = rd.tokens[-1]
    assert tok.reads == 1 and tok.covered == 2 and tok.loaded == 3 and tok.prefetch_used == 1
