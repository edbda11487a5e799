"""Layout files: round trips, exports, and every validation failure a user can hit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.layout import Layout, LayoutError, export_layout, load_layout, read_csv_export, save_layout


def make_layout(sizes=(16, 16, 24), seed=0) -> Layout:
    rng = np.random.default_rng(seed)
    return Layout(
        [rng.permutation(n) for n in sizes],
        model_id="toy/model",
        solver="ripple+local-search",
        params={"seed": np.int64(3), "gap": 2.5, "names": ("a", "b")},
        stats_digest="abc123",
    )


def assert_same(a: Layout, b: Layout, *, meta: bool = True) -> None:
    assert a.n_layers == b.n_layers and a.n_neurons == b.n_neurons
    for p, q in zip(a.perms, b.perms):
        np.testing.assert_array_equal(p, q)
        assert q.dtype == np.int64
    assert a.digest == b.digest
    if meta:
        assert (b.model_id, b.solver, b.stats_digest, b.created) == (a.model_id, a.solver, a.stats_digest, a.created)
        assert b.params == {"seed": 3, "gap": 2.5, "names": ["a", "b"]}


def test_save_load_round_trip(tmp_path: Path):
    lay = make_layout()
    path = save_layout(lay, tmp_path / "l.safetensors")
    back = load_layout(path, model_id="toy/model", n_neurons=[16, 16, 24])
    assert_same(lay, back)
    assert back == lay and back != Layout(lay.perms[::-1])
    for perm, inv in zip(back.perms, back.inverses):
        np.testing.assert_array_equal(inv[perm], np.arange(perm.size))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_safetensors_content_is_int32_with_metadata(tmp_path: Path):
    from safetensors import safe_open

    lay = make_layout()
    save_layout(lay, tmp_path / "l.safetensors")
    with safe_open(str(tmp_path / "l.safetensors"), framework="np") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["layers.0.perm", "layers.1.perm", "layers.2.perm"]
        assert f.get_tensor("layers.2.perm").dtype == np.int32
    assert meta["format"] == "coact-layout" and meta["version"] == "1"
    assert json.loads(meta["n_neurons"]) == [16, 16, 24] and meta["n_layers"] == "3"
    assert json.loads(meta["params"])["seed"] == 3


@pytest.mark.parametrize("fmt", ["json", "npz"])
def test_exports_load_back(tmp_path: Path, fmt: str):
    lay = make_layout()
    path = export_layout(lay, tmp_path / f"l.{fmt}", fmt)
    assert_same(lay, load_layout(path, model_id="toy/model", n_neurons=[16, 16, 24]))


def test_json_export_is_plain_json(tmp_path: Path):
    lay = make_layout()
    doc = json.loads(export_layout(lay, tmp_path / "l.json", "json").read_text())
    assert doc["perms"][1] == lay.perms[1].tolist() and doc["model_id"] == "toy/model"


def test_csv_export_round_trip(tmp_path: Path):
    lay = make_layout()
    path = export_layout(lay, tmp_path / "l.csv", "csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "layer,position,neuron" and len(lines) == 1 + sum(lay.n_neurons)
    assert lines[1] == f"0,0,{lay.perms[0][0]}"
    for p, q in zip(lay.perms, read_csv_export(path)):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(LayoutError, match="CSV"):
        load_layout(path)


def test_rejects_non_permutation(tmp_path: Path):
    with pytest.raises(LayoutError, match="not a permutation"):
        Layout([np.array([0, 1, 1, 3])])
    with pytest.raises(LayoutError, match="layer 0 perm has out-of-range neuron ids"):
        Layout([np.array([0, 1, 2, 4])])
    # a file written by someone else with a repeated neuron
    from safetensors.numpy import save_file

    lay = make_layout()
    meta = lay.metadata()
    del meta["digest"]
    bad = {f"layers.{i}.perm": p.astype(np.int32) for i, p in enumerate(lay.perms)}
    bad["layers.1.perm"][3] = bad["layers.1.perm"][4]
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(LayoutError, match=r"layer 1 perm is not a permutation"):
        load_layout(tmp_path / "bad.safetensors")


def test_rejects_wrong_model_and_sizes(tmp_path: Path):
    path = save_layout(make_layout(), tmp_path / "l.safetensors")
    with pytest.raises(LayoutError, match="model"):
        load_layout(path, model_id="other/model")
    with pytest.raises(LayoutError, match="layer 0: layout has 16 neurons, the model has 32"):
        load_layout(path, n_neurons=32)
    with pytest.raises(LayoutError, match="layers"):
        load_layout(path, n_neurons=[16, 16])
    with pytest.raises(LayoutError, match="layer 2"):
        load_layout(path, n_neurons=[16, 16, 16])


def test_rejects_corrupt_and_foreign_files(tmp_path: Path):
    path = save_layout(make_layout(), tmp_path / "l.safetensors")
    raw = path.read_bytes()
    cases = {
        "truncated.safetensors": raw[: len(raw) // 2],
        "garbage.safetensors": b"\x00\x01garbage" * 10,
        "empty.safetensors": b"",
        "bad.json": b"{not json",
        "bad.npz": b"PK\x03\x04broken",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LayoutError) as info:
            load_layout(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(LayoutError):
        load_layout(tmp_path / "missing.safetensors")
    # a valid safetensors file that is not a layout
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros(3, dtype=np.float32)}, str(tmp_path / "w.safetensors"), metadata={"x": "y"})
    with pytest.raises(LayoutError, match="not a coact layout"):
        load_layout(tmp_path / "w.safetensors")
    # wrong version
    from safetensors.numpy import save_file as sf

    lay = make_layout()
    meta = dict(lay.metadata(), version="99")
    sf({f"layers.{i}.perm": p.astype(np.int32) for i, p in enumerate(lay.perms)}, str(tmp_path / "v.safetensors"),
       metadata=meta)
    with pytest.raises(LayoutError, match="version"):
        load_layout(tmp_path / "v.safetensors")


def test_identity_layout_and_digest_depends_on_perms_only():
    a = Layout.identity([4, 5], model_id="m")
    assert a.n_neurons == [4, 5] and a.solver == "identity"
    b = Layout([np.arange(4), np.arange(5)], model_id="other", solver="x")
    c = Layout([np.arange(4), np.array([1, 0, 2, 3, 4])])
    assert a.digest == b.digest != c.digest


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 70), min_size=1, max_size=4), st.integers(0, 2**31))
def test_random_perms_round_trip_every_format(tmp_path: Path, sizes, seed):
    rng = np.random.default_rng(seed)
    lay = Layout([rng.permutation(n) for n in sizes], model_id="m", solver="s", params={"k": 1})
    for suffix, write in (("safetensors", save_layout), ("json", export_layout), ("npz", export_layout)):
        path = write(lay, tmp_path / f"r.{suffix}")
        back = load_layout(path, model_id="m", n_neurons=sizes)
        assert [p.tolist() for p in back.perms] == [p.tolist() for p in lay.perms]
        assert back.digest == lay.digest
