"""The CLI end to end on the real model and disk, and its one-line errors on bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coact.cli import app

runner = CliRunner()


def run(*args: str, ok: bool = True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, (args, res.output, res.exception)
    return res


def one_line_error(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_help_lists_commands():
    out = run("--help").output
    for cmd in ("demo", "trace", "stats", "solve", "evaluate", "pack", "replay", "export"):
        assert cmd in out


def test_solve_list():
    out = run("solve", "--list").output
    for name in ("identity", "random", "frequency", "ripple"):
        assert name in out


@pytest.mark.model
@pytest.mark.disk
def test_pipeline_through_cli(smollm2_trace, tmp_path, direct_io_dir):
    tr = smollm2_trace
    run("stats", tr.path, "--out", tmp_path / "stats", "--stop", "384")
    res = run("solve", tmp_path / "stats", "--solver", "ripple", "--solver", "identity", "--out", tmp_path / "lay",
              "--json")
    rows = json.loads(res.output)
    assert {r["solver"] for r in rows} == {"ripple", "identity"}
    obj = {r["solver"]: r["objective"] for r in rows}
    assert obj["ripple"] > obj["identity"]
    pack = direct_io_dir / "ripple.pack"
    run("pack", "--layout", tmp_path / "lay" / "ripple.safetensors", "--out", pack)
    real = json.loads(run("replay", pack, "--trace", tr.path, "--start", "384", "--json").output)
    sim = json.loads(run("evaluate", tmp_path / "lay" / "ripple.safetensors", "--trace", tr.path, "--start", "384",
                         "--json").output)[0]
    for key in ("n_tokens", "active", "loaded", "runs", "reads", "bytes_requested", "bytes_read"):
        assert real[key] == sim[key], key
    assert real["n_tokens"] == 128
    assert real["latency_ms_mean"] > 0 and real["bytes_read"] >= real["bytes_requested"] > 0
    for fmt in ("json", "csv", "npz"):
        run("export", tmp_path / "lay" / "ripple.safetensors", "--format", fmt, "--out", tmp_path / f"l.{fmt}")
        assert (tmp_path / f"l.{fmt}").stat().st_size > 0


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_model(tmp_path):
    one_line_error(run("trace", "--model", tmp_path / "nope", "--out", tmp_path / "t", ok=False))
    assert not (tmp_path / "t").exists()


def test_missing_corpus(tmp_path):
    line = one_line_error(run("trace", "--corpus", tmp_path / "nope.txt", "--out", tmp_path / "t", ok=False))
    assert "corpus" in line


@pytest.mark.parametrize("sp", ["0", "1", "1.5", "-0.1"])
def test_sparsity_outside_unit_interval(tmp_path, sp):
    line = one_line_error(run("trace", "--sparsity", sp, "--out", tmp_path / "t", ok=False))
    assert "sparsity" in line
    assert not (tmp_path / "t").exists()


def test_unknown_solver(tmp_path):
    one_line_error(run("solve", tmp_path, "--solver", "nosuch", ok=False))


def _tiny_layout(tmp_path: Path, model_id: str, n: int = 1536, layers: int = 30) -> Path:
    from runtime.layout import Layout, save_layout

    rng = np.random.default_rng(0)
    p = tmp_path / f"{model_id.replace('/', '_')}.safetensors"
    save_layout(Layout([rng.permutation(n) for _ in range(layers)], model_id=model_id, solver="random"), p)
    return p


@pytest.mark.model
def test_layout_for_another_model(smollm2_trace, tmp_path):
    other = _tiny_layout(tmp_path, "some/other-model")
    line = one_line_error(run("evaluate", other, "--trace", smollm2_trace.path, ok=False))
    assert "model" in line
    small = _tiny_layout(tmp_path, smollm2_trace.model_id, n=100)
    one_line_error(run("evaluate", small, "--trace", smollm2_trace.path, ok=False))
    one_line_error(run("pack", "--layout", other, "--out", tmp_path / "x.pack", ok=False))
    assert not (tmp_path / "x.pack").exists()


def test_non_permutation_layout(tmp_path):
    from safetensors.numpy import save_file

    from runtime.layout import Layout

    meta = Layout([np.arange(4)], model_id="m").metadata()
    save_file({"layers.0.perm": np.array([0, 1, 1, 3], dtype=np.int32)}, str(tmp_path / "bad.safetensors"), meta)
    line = one_line_error(run("export", tmp_path / "bad.safetensors", ok=False))
    assert "permutation" in line or "bijection" in line


@pytest.mark.model
def test_truncated_and_foreign_pack(smollm2_trace, tmp_path):
    foreign = tmp_path / "foreign.pack"
    foreign.write_bytes(b"\x00" * 8192)
    one_line_error(run("replay", foreign, "--trace", smollm2_trace.path, ok=False))
    from runtime.layout import Layout
    from runtime.pack import write_pack

    rng = np.random.default_rng(1)
    w = {"gate": rng.standard_normal((8, 4), dtype=np.float32), "up": rng.standard_normal((8, 4), dtype=np.float32),
         "down": rng.standard_normal((4, 8), dtype=np.float32)}
    good = tmp_path / "good.pack"
    write_pack(good, lambda l: w, Layout([np.arange(8)], model_id="m"), d_model=4, progress=False)
    data = good.read_bytes()
    (tmp_path / "trunc.pack").write_bytes(data[: len(data) // 2])
    one_line_error(run("replay", tmp_path / "trunc.pack", "--trace", smollm2_trace.path, ok=False))
    # A valid pack of another model against this trace
    one_line_error(run("replay", good, "--trace", smollm2_trace.path, ok=False))


@pytest.mark.model
def test_trace_from_another_model(smollm2_trace, tmp_path):
    """A trace whose metadata names another model is refused by thresholds reuse and by evaluate."""
    import shutil

    fake = tmp_path / "fake"
    shutil.copytree(smollm2_trace.path, fake)
    meta = json.loads((fake / "coact_trace.json").read_text())
    meta["model_id"] = "another/model"
    (fake / "coact_trace.json").write_text(json.dumps(meta))
    lay = _tiny_layout(tmp_path, smollm2_trace.model_id)
    line = one_line_error(run("evaluate", lay, "--trace", fake, ok=False))
    assert "model" in line
    one_line_error(run("trace", "--thresholds-from", fake, "--tokens", "64", "--out", tmp_path / "t2", ok=False))
    assert not (tmp_path / "t2").exists()


def test_not_a_trace(tmp_path):
    (tmp_path / "x").mkdir()
    one_line_error(run("stats", tmp_path / "x", "--out", tmp_path / "s", ok=False))
    one_line_error(run("stats", tmp_path / "missing", "--out", tmp_path / "s", ok=False))


@pytest.mark.model
def test_compare_solvers(smollm2_trace, tmp_path):
    tr = smollm2_trace
    run("stats", tr.path, "--out", tmp_path / "stats", "--stop", "384")
    res = run("compare", "--stats", tmp_path / "stats", "--trace", tr.path, "--start", "384", "--solver",
              "local-search", "--out", tmp_path / "cmp", "--time-limit", "1", "--bound-time-limit", "3", "--json")
    rows = {r["solver"]: r for r in json.loads(res.output)}
    assert set(rows) == {"identity", "random", "frequency", "ripple", "local-search"}
    for r in rows.values():
        assert r["objective"] <= r["bound"]  # the bound is proven
    assert rows["local-search"]["objective"] >= rows["ripple"]["objective"] > rows["identity"]["objective"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    assert (tmp_path / "cmp" / "layouts" / "local-search.safetensors").exists()


@pytest.mark.model
@pytest.mark.disk
def test_compare_real_replays_the_pipelines(smollm2_trace, tmp_path, direct_io_dir):
    """`coact compare --real`: the solver comparison, then dense/llmflash/ripple/coact replayed on the disk."""
    tr = smollm2_trace
    run("stats", tr.path, "--out", tmp_path / "stats", "--stop", "384")
    out = direct_io_dir / "cmp"
    res = run("compare", "--stats", tmp_path / "stats", "--trace", tr.path, "--start", "384", "--stop", "448",
              "--no-bound", "--real", "--repeats", "1", "--out", out)
    assert "coact pipeline used layout" in res.output
    real = {p["pipeline"]: p for p in json.loads((out / "real.json").read_text())["pipelines"]}
    assert set(real) == {"dense", "llmflash", "ripple", "coact"}
    for p in real.values():
        assert p["n_tokens"] == 64
        assert p["repeats_ms_per_token"] and all(ms > 0 for ms in p["repeats_ms_per_token"])
    assert real["dense"]["mean_run_length"] == 1536.0  # whole layer regions
    assert real["coact"]["reads_per_token"] < real["llmflash"]["reads_per_token"]
    assert (out / "compare.json").exists() and (out / "compare.png").exists()
