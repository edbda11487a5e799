"""Perplexity of the dense and the sparsified model (coact.accuracy, `coact perplexity`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coact.accuracy import perplexity
from coact.cli import app
from coact.corpus import load_text, tokenize
from coact.errors import CoactError
from coact.sparsify import get_sparsifier
from coact.workflow import measure_perplexity

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def stream(smollm2):
    return tokenize(load_text("pydoc"), smollm2.tokenizer)


def test_keep_everything_equals_dense(smollm2, stream):
    dense = perplexity(smollm2, stream, start=0, tokens=300, ctx=128)
    keep_all = get_sparsifier("cats", sparsity=0.5, thresholds=[-1.0] * smollm2.n_layers)
    sparse = perplexity(smollm2, stream, start=0, tokens=300, ctx=128, sparsifier=keep_all)
    assert sparse.ppl == pytest.approx(dense.ppl, rel=1e-9)
    assert sparse.achieved_sparsity == [0.0] * smollm2.n_layers
    assert dense.n_predicted == 127 + 127 + 43  # windows of 128, 128, 44 tokens
    assert 1.0 < dense.ppl < 1000.0


def test_sparser_is_worse_and_matches_the_trace(smollm2, smollm2_trace, stream):
    """Layer 0 of the masked forward keeps exactly the neurons a trace records (same thresholds, same tokens);
    deeper layers differ because a trace records the activations of the *dense* forward, while the sparse model's
    later layers see inputs already changed by sparsified earlier layers. More sparsity costs perplexity."""
    thr = smollm2_trace.meta["sparsifier"]["thresholds"]
    sp = get_sparsifier("cats", sparsity=0.9, thresholds=thr)
    res = perplexity(smollm2, stream, start=0, tokens=512, ctx=256, sparsifier=sp)
    assert res.achieved_sparsity[0] == pytest.approx(smollm2_trace.meta["achieved_sparsity"][0], abs=1e-6)
    dense = perplexity(smollm2, stream, start=0, tokens=512, ctx=256)
    assert res.ppl > dense.ppl


def test_measure_refuses_overlap_with_calibration(smollm2):
    with pytest.raises(CoactError, match="overlap"):
        measure_perplexity(smollm2, "pydoc", start=0, tokens=256, calib_tokens=512, progress=False)


def test_cli_perplexity_json(smollm2):
    res = CliRunner().invoke(app, ["perplexity", "--tokens", "256", "--calib-tokens", "256", "--sparsity", "0.3",
                                   "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dense"]["ppl"] > 1 and out["sparse"]["ppl"] >= out["dense"]["ppl"] * 0.99
    assert out["ppl_cost"] == pytest.approx(out["sparse"]["ppl"] / out["dense"]["ppl"] - 1)
    assert abs(np.mean(out["sparse"]["achieved_sparsity"]) - 0.3) < 0.1


def test_cli_perplexity_bad_sparsity_is_one_line():
    res = CliRunner().invoke(app, ["perplexity", "--sparsity", "1.5"])
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
