"""Named pipelines, the interleaved real comparison, the budget sweep, coact's choice, and the runtime CLI
commands (device-profile, pipelines, fio-check) on a toy model (3 layers x 256 neurons, d_model 576)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.bits import pack_bits
from common.errors import RegistryError
from runtime.caches import get_cache
from runtime.device import CostModel
from runtime.layout import Layout, save_layout
from runtime.pack import write_pack
from runtime.errors import PipelineError
from runtime.pipelines import (
    PIPELINES,
    Pipeline,
    available_pipelines,
    budget_bytes_for,
    budget_sweep,
    choose_coact,
    compare_real,
    comparison_table,
    ffn_bytes,
    get_pipeline,
    load_sets,
    plot_budget_sweep,
    register_pipeline,
    required_layouts,
    resolve_pipelines,
    speedups,
    sweep_table,
)
from runtime.replay import simulate

L, N, D = 3, 256, 576
BB = 2 * D * 2
CM = CostModel.synthetic(per_request_s=60e-6, per_byte_s=1.5e-9, queue_depths=(1, 4, 16), seq_bandwidth=1e9)


def _weights(layer: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(layer)
    return {"up": rng.standard_normal((N, D)).astype(np.float32),
            "down": rng.standard_normal((D, N)).astype(np.float32)}


def _active(T: int, seed: int) -> np.ndarray:
    """Co-activated groups (so a good layout has long runs) plus noise; bool [T, L, N]."""
    rng = np.random.default_rng(seed)
    groups = np.random.default_rng(99).permutation(N).reshape(32, 8)
    act = rng.random((T, L, N)) < 0.02
    for t in range(T):
        for layer in range(L):
            for g in rng.choice(32, size=3, replace=False):
                act[t, layer, groups[g]] = True
    return act


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from runtime.direct import direct_io_supported

    d = tmp_path_factory.mktemp("pipes")
    if not direct_io_supported(d):
        pytest.skip("no O_DIRECT in the temporary directory")
    groups = np.random.default_rng(99).permutation(N).reshape(32, 8)
    best = Layout([groups.reshape(-1).copy() for _ in range(L)], model_id="toy", solver="planted")
    rip = Layout([np.random.default_rng(5 + i).permutation(N) for i in range(L)], model_id="toy", solver="rnd")
    ident = Layout.identity(N, L, model_id="toy")
    packs = {}
    for name, lay in (("identity", ident), ("ripple", rip), ("best", best)):
        packs[name] = write_pack(d / f"{name}.pack", _weights, lay, d_model=D)
    act_prof, act_held = _active(64, 1), _active(12, 2)
    return {"dir": d, "packs": packs, "layouts": {"identity": ident, "ripple": rip, "best": best},
            "prof": pack_bits(act_prof), "held": pack_bits(act_held), "freq": act_prof.sum(axis=0)}


def test_registry_and_overrides():
    assert available_pipelines() == ["dense", "llmflash", "ripple", "coact"]
    assert set(PIPELINES) == set(available_pipelines()) and all(PIPELINES.describe().values())
    assert required_layouts(["dense", "llmflash", "ripple", "coact"]) == {
        "dense": "identity", "llmflash": "identity", "ripple": "ripple", "coact": "best"}
    with pytest.raises(RegistryError, match="registered already"):
        register_pipeline(Pipeline("dense", "identity"))
    lf = get_pipeline("llmflash")
    assert lf.layout == "identity" and lf.cache == "window" and lf.cache_params["k"] == 5 and lf.collapse == 0
    assert get_pipeline("dense").dense and get_pipeline("ripple").collapse == "auto"
    assert get_pipeline("ripple", engine="uring", queue_depth=32).engine == "uring"
    with pytest.raises(RegistryError, match="unknown pipeline"):
        get_pipeline("nope")
    with pytest.raises(PipelineError, match="bad override"):
        get_pipeline("dense", cahce="lru")
    lay = Layout.identity(N, L)
    assert ffn_bytes(lay, BB) == L * N * BB and budget_bytes_for(lay, BB, 0.1) == int(0.1 * L * N * BB)
    with pytest.raises(PipelineError, match="fraction"):
        budget_bytes_for(lay, BB, 1.5)


def test_load_sets_equal_cache_in_simulate(toy):
    lay = toy["layouts"]["best"]
    for policy in ("ripple", "window", "pinned"):
        params = {"freq": toy["freq"]} if policy == "pinned" else {}
        a = simulate(lay, toy["prof"], N, bundle_bytes=BB, collapse_gap=2,
                     cache=get_cache(policy, 40 * BB, BB, **params))
        loads = load_sets(lay, toy["prof"], get_cache(policy, 40 * BB, BB, **params))
        b = simulate(lay, loads, N, bundle_bytes=BB, collapse_gap=2)
        assert (a.loaded, a.runs, a.reads, a.bytes_read) == (b.loaded, b.runs, b.reads, b.bytes_read)


def test_choose_coact_picks_lowest_modelled_latency(toy):
    lay = toy["layouts"]["best"]
    budget = budget_bytes_for(lay, BB, 0.1)
    pipe, rows = choose_coact(lay, toy["prof"], bundle_bytes=BB, budget_bytes=budget, cost_model=CM,
                              freq=toy["freq"], queue_depth=4)
    best = min(r["model_ms_per_token"] for r in rows)
    win = [r for r in rows if r["cache"] == pipe.cache and r["collapse"] == pipe.collapse
           and r["params"] == dict(pipe.cache_params)]
    assert win and win[0]["model_ms_per_token"] == best
    assert {r["cache"] for r in rows} >= {"none", "lru", "s3fifo", "window", "ripple", "pinned", "pinned+lru"}
    assert {r["collapse"] for r in rows} >= {0, CM.collapse_gap(BB, 4)}
    _, no_freq = choose_coact(lay, toy["prof"], bundle_bytes=BB, budget_bytes=budget, cost_model=CM, queue_depth=4)
    assert not any(r["cache"].startswith("pinned") for r in no_freq)
    pipes, notes = resolve_pipelines(["coact"], layouts=toy["layouts"], bundle_bytes=BB, budget_bytes=budget,
                                     cost_model=CM)
    assert pipes[0].cache == "window" and "fallback" in notes["coact"]["selection"]
    with pytest.raises(PipelineError, match="cost model"):
        resolve_pipelines(["ripple"], layouts=toy["layouts"], bundle_bytes=BB, budget_bytes=budget)


@pytest.mark.disk
def test_compare_real_interleaved(toy):
    logs: list[str] = []
    res = compare_real(["dense", "llmflash", "ripple", "coact"], toy["held"], packs=toy["packs"], repeats=2,
                       cost_model=CM, freq=toy["freq"], profile_packed=toy["prof"], engine="threads",
                       queue_depth=4, log=logs.append)
    runs = [m.split(":")[0] for m in logs if m.startswith("[repeat")]
    assert runs == [f"[repeat {r}/2] {p}" for r in (1, 2) for p in ("dense", "llmflash", "ripple", "coact")]
    rows = {r["pipeline"]: r for r in res["pipelines"]}
    assert set(rows) == {"dense", "llmflash", "ripple", "coact"}
    cfg = res["config"]
    assert cfg["budget_bytes"] == int(0.1 * L * N * BB) and cfg["repeats"] == 2 and cfg["n_tokens"] == 12
    for name, r in rows.items():
        m = r["io_ms_per_token"]["mean"]
        assert 0 < m["min"] <= m["median"] <= m["max"] and len(r["repeats_ms_per_token"]) == 2
        assert r["io_ms_per_token"]["p99"]["median"] >= r["io_ms_per_token"]["p50"]["median"] > 0
        assert r["limit_ms_per_token"] == pytest.approx(r["bytes_requested_per_token"] / 1e9 * 1e3)
        assert r["ratio_to_limit"] > 0 and r["model_ms_per_token"] > 0 and r["config"]["queue_depth"] == 4
    assert rows["dense"]["hit_rate"] == 0 and rows["dense"]["bytes_read_per_token"] >= L * N * BB
    assert rows["llmflash"]["config"]["cache"] == "window" and rows["llmflash"]["config"]["collapse_gap"] == 0
    assert rows["ripple"]["config"]["collapse_gap"] == CM.collapse_gap(BB, 4)
    assert rows["coact"]["config"]["layout"] == "best" and "candidates" in res["notes"]["coact"]
    # the replayed counts are exactly what the simulator counts for the same configuration
    sim = simulate(toy["layouts"]["identity"], toy["held"], N, bundle_bytes=BB, collapse_gap=0,
                   cache=get_cache("window", cfg["budget_bytes"], BB, k=5))
    assert rows["llmflash"]["reads_per_token"] == sim.reads_per_token and rows["llmflash"]["hit_rate"] == sim.hit_rate
    assert rows["coact"]["mean_run_length"] > rows["llmflash"]["mean_run_length"]  # planted layout
    sp = speedups(res)
    assert set(sp) == {"dense", "llmflash", "ripple"} and all(v > 0 for v in sp.values())
    assert comparison_table(res).row_count == 4
    json.dumps(res)  # plain dicts


@pytest.mark.disk
def test_budget_sweep_real_and_modelled(toy, tmp_path: Path):
    kw = dict(packs=toy["packs"], cost_model=CM, freq=toy["freq"], profile_packed=toy["prof"][:16],
              engine="threads", queue_depth=2)
    sw = budget_sweep(["dense", "llmflash", "coact"], toy["held"][:4], fractions=(0.0, 0.2), **kw)
    assert sw["fractions"] == [0.0, 0.2]
    got = {(r["pipeline"], r["fraction"]) for r in sw["rows"]}
    assert got == {(p, f) for p in ("dense", "llmflash", "coact") for f in (0.0, 0.2)}
    d = [r for r in sw["rows"] if r["pipeline"] == "dense"]
    assert d[0]["ms_per_token"] == d[1]["ms_per_token"]  # dense takes no cache: measured once
    lf = {r["fraction"]: r for r in sw["rows"] if r["pipeline"] == "llmflash"}
    assert lf[0.0]["hit_rate"] == 0 and lf[0.2]["hit_rate"] > 0
    assert plot_budget_sweep(sw, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert sweep_table(sw).row_count == 3
    mod = budget_sweep(["llmflash", "ripple"], toy["held"][:4], fractions=(0.0, 0.4), real=False, **kw)
    assert all(r["ms_per_token"] == r["model_ms_per_token"] for r in mod["rows"])


# ------------------------------------------------------------------------------------------------------- CLI


def _write_trace(path: Path, packed: np.ndarray) -> Path:
    import datasets

    from coact.trace import FORMAT, META_FILE, _features

    T, nl, nb = packed.shape
    ds = datasets.Dataset.from_dict({"active": list(packed), "token_id": [0] * T, "pos": list(range(T))},
                                    features=_features(nl, nb))
    ds.save_to_disk(str(path))
    meta = {**FORMAT, "version": 1, "model_id": "toy", "n_layers": nl, "n_neurons": N, "d_model": D, "n_tokens": T,
            "sparsifier": {"name": "cats", "sparsity": 0.9}}  # a version-1 trace: structure checks only
    (path / META_FILE).write_text(json.dumps(meta))
    return path


@pytest.mark.disk
def test_cli_pipelines_device_profile_and_fio_check(toy, tmp_path: Path):
    from coact.cli import app
    from runtime.fio import fio_binary

    runner = CliRunner()
    d = toy["dir"]
    # device-profile on a tiny grid
    res = runner.invoke(app, ["device-profile", str(d), "--out", str(tmp_path / "cost.json"), "--sizes-kib", "4,16",
                              "--queue-depths", "1,2", "--file-mb", "2", "--seconds", "0.05", "--reads", "16",
                              "--plot", str(tmp_path / "dev.png"), "--remove-file", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["format"] == "coact-cost-model" and doc["queue_depths"] == [1, 2]
    assert (tmp_path / "dev.png").exists() and not (d / "coact-device-profile.bin").exists()
    bad = runner.invoke(app, ["device-profile", str(d), "--sizes-kib", "x"])
    assert bad.exit_code == 2 and "error:" in bad.output
    # pipelines on packs given explicitly
    held = _write_trace(tmp_path / "held", toy["held"])
    CM.save(tmp_path / "synthetic-cost.json")
    lay_dir = tmp_path / "layouts"
    lay_dir.mkdir()
    for name in ("ripple", "best"):
        save_layout(toy["layouts"][name], lay_dir / f"{name}.safetensors")
    args = ["pipelines", "--trace", str(held), "--stop", "6", "--cost", str(tmp_path / "synthetic-cost.json"),
            "--layout", f"ripple={lay_dir / 'ripple.safetensors'}", "--layout", f"best={lay_dir / 'best.safetensors'}",
            "--repeats", "1", "--engine", "threads:2", "--out", str(tmp_path / "cmp.json"), "--workdir",
            str(tmp_path / "w"), "--json"]
    for name, p in toy["packs"].items():
        args += ["--pack", f"{name}={p}"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["pipeline"] for r in out["pipelines"]] == ["dense", "llmflash", "ripple", "coact"]
    assert out["config"]["n_tokens"] == 6 and json.loads((tmp_path / "cmp.json").read_text())["pipelines"]
    assert out["speedup_of_coact"]
    res = runner.invoke(app, ["pipelines", "--trace", str(held), "--pipeline", "ripple", "--cost",
                              str(tmp_path / "synthetic-cost.json"), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2 and "--layout ripple" in res.output
    res = runner.invoke(app, ["pipelines", "--trace", str(held), "--pipeline", "warp"])
    assert res.exit_code == 2 and "unknown pipeline" in res.output
    if fio_binary() is not None:
        res = runner.invoke(app, ["fio-check", str(toy["packs"]["best"]), "--trace", str(held), "--stop", "4",
                                  "--engine", "threads", "--queue-depth", "2", "--repeats", "1", "--json"])
        assert res.exit_code == 0, res.output
        fc = json.loads(res.stdout)
        assert fc["queue_depth"] == 2 and fc["reads"] > 0 and fc["fio_ioengine"] == "libaio"
