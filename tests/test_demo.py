"""`coact demo` end to end on a small budget: an accuracy-budget operating point, perplexity reported, a dense row."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coact.cli import app


@pytest.mark.model
@pytest.mark.disk
def test_demo_at_an_accuracy_budget(direct_io_dir):
    out = direct_io_dir / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--profile-tokens", "1536", "--heldout-tokens", "64",
                                   "--max-ppl-increase", "0.2", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    summary = json.loads(res.stdout)
    assert summary["regime"] == "accuracy budget +20% perplexity"
    op = summary["operating_point"]
    assert op["validation_ppl"] <= op["validation_ppl_dense"] * 1.2 + 1e-9
    assert 0.05 < op["mean_sparsity"] < 0.9
    acc = summary["accuracy"]
    assert acc["ppl_cost"] == pytest.approx(acc["sparse"]["ppl"] / acc["dense"]["ppl"] - 1)
    rows = {r["solver"]: r for r in summary["rows"]}
    assert set(rows) == {"dense (whole FFN)", "identity", "frequency", "ripple"}
    assert rows["ripple"]["mean_run_length"] > rows["identity"]["mean_run_length"]
    assert rows["dense (whole FFN)"]["bytes_read_per_token"] > rows["ripple"]["bytes_read_per_token"]
    assert (out / "report.json").exists() and (out / "demo.png").stat().st_size > 0
    # ... and it ends with the model generating from flash per layout: the same tokens (the engine is exact).
    flash = {r["layout"]: r for r in summary["flash"]}
    assert set(flash) == {"dense from flash", "identity", "frequency", "ripple"}
    assert len({tuple(r["tokens"]) for r in flash.values()}) == 1 and len(flash["ripple"]["tokens"]) == 8
    assert all(r["tokens_per_s"] > 0 for r in flash.values())
    assert flash["dense from flash"]["mb_read_per_token"] > flash["ripple"]["mb_read_per_token"]
