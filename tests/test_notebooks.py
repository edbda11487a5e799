"""The analysis notebooks run from a clean state on the committed sample, and write their figures.

Each notebook is copied into a temporary directory and executed there with nbclient (so the committed notebooks are
never touched and their figures go to the copy's ``figures/``), on a kernel that runs *this* interpreter: a
kernelspec pointing at ``sys.executable`` is written to a private ``JUPYTER_PATH``, so the test does not depend on
which kernels happen to be installed. Any error in any cell fails the test. ``COACT_NOTEBOOK_DATA=sample``: the
notebooks read ``data/sample`` and never load the model.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
KERNEL = "coact-test-venv"
CELL_TIMEOUT_S = 900

FIGURES = {
    "01_coactivation.ipynb": [
        "01_frequency_powerlaw.png",
        "01_sparsity.png",
        "01_coactivation_heatmap.png",
        "01_closest_friends.png",
        "01_stability_corpora.png",
        "01_stability_tokens.png",
    ],
    "02_solver_comparison.ipynb": [
        "02_solver_summary.png",
        "02_run_length_histograms.png",
        "02_real_replay.png",
        "02_dram_budget.png",
    ],
    "03_accuracy.ipynb": [
        "03_frontier.png",
        "03_layer_sensitivity.png",
        "03_structure_vs_operating_point.png",
    ],
    "04_scale.ipynb": [
        "04_synth_fit.png",
        "04_synth_structure.png",
    ],
    "05_generalisation.ipynb": [
        "05_leave_one_domain_out.png",
    ],
}
# Figures a notebook writes only when the runtime provides what they show (guarded in the notebook).
OPTIONAL = {"02_dram_budget.png": "runtime.pipelines"}


@pytest.fixture
def jupyter_path(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "coact (tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("COACT_NOTEBOOK_DATA", "sample")
    monkeypatch.delenv("COACT_FIGURES", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return root


def _module_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("name", [
    "01_coactivation.ipynb",
    pytest.param("02_solver_comparison.ipynb", marks=pytest.mark.disk),  # real O_DIRECT replay
    "03_accuracy.ipynb",
    "04_scale.ipynb",
    "05_generalisation.ipynb",
])
def test_notebook_runs_clean_and_writes_figures(name: str, tmp_path: Path, jupyter_path: Path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(NOTEBOOKS / name, work / name)
    nb = nbformat.read(work / name, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, allow_errors=False,
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    nbformat.write(nb, work / f"executed-{name}")  # kept in the temp dir for inspection

    for fig in FIGURES[name]:
        path = work / "figures" / fig
        if fig in OPTIONAL and not _module_exists(OPTIONAL[fig]):
            continue
        assert path.is_file() and path.stat().st_size > 5_000, f"{name} did not write {fig}"

    # The answer cell prints the conclusions with the numbers measured in this run.
    last = nb.cells[-1]
    text = "".join(o.get("text", "") for o in last.get("outputs", []) if o.get("output_type") == "stream")
    assert "Measured on" in text and "1." in text, f"{name}: no answer printed by the last cell"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebooks_carry_no_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: committed with outputs; strip them"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "Question" in first.source, f"{name}: must state its question first"


# ------------------------------------------------------------------------------------------------ coact.sample


def test_sample_is_intact_and_reproducible() -> None:
    """The committed sample loads, and its statistics recomputed now have the digest recorded when it was made."""
    from coact.sample import load_notebook_data, load_sample, manifest

    trace, stats = load_sample()  # raises if the digest differs from data/sample/manifest.json
    m = manifest()["traces"]
    assert (trace.n_tokens, trace.n_layers, trace.n_neurons) == (m["profile"]["n_tokens"], 30, 1536)
    assert stats.n_tokens == trace.n_tokens and stats.freq.shape == (30, 1536)
    data = load_notebook_data("sample")
    assert data.mode == "sample" and data.model is None and data.other is not None
    for t, key in ((data.heldout, "heldout"), (data.other, "wikitext")):
        assert t.n_tokens == m[key]["n_tokens"] and t.model_id == trace.model_id
        assert t.meta["sparsifier"]["thresholds"] == trace.meta["sparsifier"]["thresholds"]
    size = sum(f.stat().st_size for f in (REPO / "data").rglob("*") if f.is_file())
    # Two operating points of the same text (90 % stress in sample/, +20 % budget in sample_b20/) at ~9 MB each.
    assert size < 20e6, f"data/ is {size / 1e6:.1f} MB; keep the committed sample small"


def test_sample_layer_subset_matches_full_statistics() -> None:
    from coact.sample import layer_stats, load_sample

    trace, full = load_sample(verify=False)
    sub = layer_stats(trace, [3, 17], stop=300)
    part = layer_stats(trace, None, stop=300)
    assert sub.meta["layers"] == [3, 17] and sub.n_layers == 2 and sub.n_tokens == 300
    for j, l in enumerate([3, 17]):
        assert (sub.coact[j] == part.coact[l]).all() and (sub.freq[j] == part.freq[l]).all()


def test_data_mode_and_token_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from coact.errors import CoactError
    from coact.sample import data_mode, token_budget

    monkeypatch.delenv("COACT_NOTEBOOK_DATA", raising=False)
    assert data_mode() == "sample"
    monkeypatch.setenv("COACT_NOTEBOOK_DATA", "Model")
    assert data_mode() == "model" and data_mode("sample") == "sample"
    monkeypatch.setenv("COACT_NOTEBOOK_DATA", "gpu")
    with pytest.raises(CoactError):
        data_mode()
    assert token_budget("") == (8192, 1024, 2048)
    assert token_budget("4096") == (4096, 1024, 2048)
    assert token_budget("512,128,256") == (512, 128, 256)
    for bad in ("1,2", "0", "x"):
        with pytest.raises(CoactError):
            token_budget(bad)
