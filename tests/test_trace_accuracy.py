"""Every trace records the perplexity cost of its sparsifier; `forward="sparse"` records the sparse model's sets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from coact.accuracy import perplexity
from coact.corpus import load_text, tokenize
from coact.models import load_model
from coact.sparsify import get_sparsifier
from coact.workflow import accuracy_line, capture, evaluate_layouts, held_out_range, solve_layouts, count
from common.bits import unpack_bits


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_trace_records_held_out_perplexity_cost(tiny, tmp_path):
    tr = capture(tiny, "pydoc", tmp_path / "t", tokens=256, ctx=64, sparsity=0.5, calib_tokens=128, ppl_tokens=128,
                 progress=False)
    acc = tr.meta["accuracy"]
    assert acc["measured"] and (acc["token_start"], acc["n_tokens"]) == (256, 128)
    # An independent measurement with the trace's own thresholds gives the same numbers.
    stream = tokenize(load_text("pydoc"), tiny.tokenizer)
    sp = get_sparsifier("cats", sparsity=0.5, thresholds=tr.meta["sparsifier"]["thresholds"])
    dense = perplexity(tiny, stream, start=256, tokens=128, ctx=64)
    sparse = perplexity(tiny, stream, start=256, tokens=128, ctx=64, sparsifier=sp)
    assert acc["dense_ppl"] == pytest.approx(dense.ppl, rel=1e-5)
    assert acc["sparse_ppl"] == pytest.approx(sparse.ppl, rel=1e-5)
    assert acc["ppl_cost"] == pytest.approx(sparse.ppl / dense.ppl - 1, abs=1e-5)
    assert "held-out tokens" in accuracy_line(tr.meta)
    # ... and it reaches the statistics, the evaluation rows and stays in the verified metadata.
    st = count(tr, tmp_path / "s", progress=False)
    assert st.meta["accuracy"] == acc
    lay = solve_layouts(st, ["frequency"], tmp_path / "l", progress=False)
    rows = evaluate_layouts([tmp_path / "l" / "frequency.safetensors"], tr)
    assert rows[0]["accuracy"] == acc
    assert json.loads((tmp_path / "t" / "coact_trace.json").read_text())["accuracy"] == acc
    assert lay


def test_ppl_tokens_zero_skips_and_says_so(tiny, tmp_path):
    tr = capture(tiny, "pydoc", tmp_path / "t", tokens=128, ctx=64, sparsity=0.5, calib_tokens=64, ppl_tokens=0,
                 progress=False)
    assert tr.meta["accuracy"] is None
    assert "not measured" in accuracy_line(tr.meta)


def test_held_out_range_never_overlaps_the_trace():
    assert held_out_range(10_000, 0, 1000, 512) == (1000, 512)
    assert held_out_range(1200, 600, 500, 512) == (88, 512)        # no room after: the tokens before
    assert held_out_range(1200, 100, 1000, 512) == (1100, 100)     # what fits after
    assert held_out_range(1100, 100, 1000, 512) is None
    for n, s, t, p in [(5000, 0, 4000, 512), (5000, 3000, 1000, 2048), (700, 100, 500, 90)]:
        rng = held_out_range(n, s, t, p)
        if rng is not None:
            a, k = rng
            assert a + k <= s or a >= s + t
            assert 0 <= a and a + k <= n


def test_sparse_forward_records_what_the_sparse_model_meets(tiny, tmp_path):
    """forward='sparse': the trace's per-layer sparsity equals the sparse model's own mask counts on the same
    windows (accuracy.perplexity counts them through a different code path); the dense forward differs beyond
    layer 0 and equals it at layer 0, whose input no mask has touched."""
    kw = dict(tokens=256, ctx=64, sparsity=0.6, calib_tokens=128, ppl_tokens=0, progress=False)
    dense_tr = capture(tiny, "pydoc", tmp_path / "d", **kw)
    sparse_tr = capture(tiny, "pydoc", tmp_path / "s", forward="sparse", **kw)
    assert sparse_tr.meta["forward"] == "sparse" and dense_tr.meta["forward"] == "dense"
    th = sparse_tr.meta["sparsifier"]["thresholds"]
    stream = tokenize(load_text("pydoc"), tiny.tokenizer)
    sp = get_sparsifier("cats", sparsity=0.6, thresholds=th)
    ref = perplexity(tiny, stream, start=0, tokens=256, ctx=64, sparsifier=sp)
    np.testing.assert_allclose(sparse_tr.meta["achieved_sparsity"], ref.achieved_sparsity, atol=1e-6)
    d = unpack_bits(dense_tr.packed(0, 256), tiny.n_neurons)
    s = unpack_bits(sparse_tr.packed(0, 256), tiny.n_neurons)
    np.testing.assert_array_equal(d[:, 0], s[:, 0])
    assert not np.array_equal(d[:, 1:], s[:, 1:])


def test_bad_forward_is_a_user_error(tiny, tmp_path):
    from coact.errors import TraceError

    with pytest.raises(TraceError, match="forward"):
        capture(tiny, "pydoc", tmp_path / "x", tokens=64, ctx=64, forward="both", progress=False)
    assert not (tmp_path / "x.partial").exists()
