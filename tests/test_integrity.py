"""Nothing lost, nothing trusted blindly: output-path rules, stale-capture reuse, pack/trace integrity, `coact
verify`, provenance, atomic saves and stale temporaries, cheap refusal of hostile inputs, input checks and
permissions. Every test here failed before the matching fix (see the issue's list of causes)."""
from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coact.cli import app
from coact.errors import CorpusError, TraceError
from coact.sample import sample_dir
from coact.stats import CoactStats, StatsError, compute_stats
from coact.trace import META_FILE, Trace, content_digest, file_digests, meta_digest, verify_trace
from coact.verify import VerifyError, detect_kind, verify_artefact
from common.atomic import TMP_MARK, atomic_dir, check_output, stale_temporaries
from common.bits import n_packed_bytes, pack_bits
from common.errors import OutputExistsError, UserError
from runtime.errors import LayoutError, PackError
from runtime.layout import Layout, export_layout, load_layout, save_layout
from runtime.pack import PackFile, write_pack

SAMPLE = sample_dir()
L, N, D = 3, 50, 32  # 50 bundles of 128 B: layer regions end with padding


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [l for l in res.output.splitlines() if l.strip() and not l.lstrip().startswith(("{", "}", '"'))]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {l: {"gate": rng.standard_normal((N, D)).astype(np.float32),
                "up": rng.standard_normal((N, D)).astype(np.float32),
                "down": rng.standard_normal((D, N)).astype(np.float32)} for l in range(L)}


def layout(seed: int = 1) -> Layout:
    rng = np.random.default_rng(seed)
    return Layout([rng.permutation(N) for _ in range(L)], model_id="toy")


def make_pack(path: Path, seed: int = 1) -> Path:
    return write_pack(path, weights().__getitem__, layout(seed), d_model=D)


def make_trace(path: Path, T: int = 40, layers: int = 2, n: int = 20, seed: int = 0) -> Path:
    """A small version-2 trace written the way capture writes one (no model needed)."""
    import datasets

    from coact.trace import _features

    rng = np.random.default_rng(seed)
    ds = datasets.Dataset.from_dict(
        {"active": pack_bits(rng.random((T, layers, n)) < 0.3), "token_id": np.arange(T, dtype=np.int32),
         "pos": np.arange(T, dtype=np.int64)}, features=_features(layers, n_packed_bytes(n)))
    ds.save_to_disk(str(path))
    meta = {"format": "coact-trace", "version": 2, "model_id": "toy", "n_layers": layers, "n_neurons": n,
            "n_tokens": T, "d_model": 8, "sparsifier": {"method": "topk"}, "corpus": "x", "token_start": 0,
            "ctx": 16}
    meta["content_digest"] = content_digest(Trace(path, meta, datasets.load_from_disk(str(path))))
    meta["files"] = file_digests(path)
    meta["meta_digest"] = meta_digest(meta)
    (path / META_FILE).write_text(json.dumps(meta, indent=1))
    return path


def flip(path: Path, pos: int) -> bytes:
    raw = bytearray(path.read_bytes())
    old = bytes(raw)
    raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))
    return old


# ---------------------------------------------------------------------------------------- 1. output paths
def test_stats_out_refuses_unrelated_folder_the_trace_and_files(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "tr")
    before = file_digests(trace)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (tmp_path / "f").write_text("x")
    for out in (mine, trace, tmp_path / "f", tmp_path):
        line = one_line_error(invoke("stats", trace, "--out", out))
        assert "refusing" in line or "input" in line, line
    assert (mine / "thesis.tex").read_text() == "years of work" and file_digests(trace) == before
    assert (tmp_path / "f").read_text() == "x"
    # an existing statistics folder and an empty folder may be replaced
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "st", tmp_path / "st", tmp_path / "empty"):
        res = invoke("stats", trace, "--out", out, "--json")
        assert res.exit_code == 0, res.output
    assert CoactStats.load(tmp_path / "empty").n_tokens == 40


def test_pack_layout_and_export_outputs_replace_only_their_kind(tmp_path: Path) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\x7fELF precious")
    with pytest.raises(OutputExistsError):
        make_pack(victim)
    with pytest.raises(OutputExistsError):
        save_layout(layout(), victim)
    with pytest.raises(OutputExistsError):
        export_layout(layout(), victim, "json")
    assert victim.read_bytes() == b"\x7fELF precious"
    p = make_pack(tmp_path / "a.pack", seed=1)
    make_pack(p, seed=2)  # an existing pack is replaced
    with PackFile(p) as pf:
        assert pf.layout_digest == layout(2).digest
    lay = save_layout(layout(), tmp_path / "l.safetensors")
    save_layout(layout(3), lay)
    for fmt in ("json", "csv", "npz"):
        export_layout(layout(), tmp_path / f"e.{fmt}", fmt)
        export_layout(layout(3), tmp_path / f"e.{fmt}", fmt)
    with pytest.raises(OutputExistsError):  # a layout file is not a pack
        make_pack(lay)
    # the CLI refuses before loading any model
    line = one_line_error(invoke("pack", "--layout", lay, "--out", victim, "--model", tmp_path / "no-model"))
    assert "refusing" in line


def test_symlink_outputs_are_refused(tmp_path: Path) -> None:
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(OutputExistsError, match="dangling"):
        check_output(dangling, kind="pack file", is_kind=lambda p: True)
    with pytest.raises(OutputExistsError):
        save_layout(layout(), dangling)
    assert not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------------------------------- 2. capture reuse
CAP = dict(tokens=256, ctx=64, calib_tokens=64, shard_tokens=64, progress=False)


def _interrupted(monkeypatch, model, out: Path, **kw) -> None:
    import coact.trace as trace_mod
    from coact.workflow import capture

    real, calls = trace_mod.forward_activations, {"n": 0}

    def flaky(handle, windows, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # calibration, shard 0, then "killed" in shard 1
            raise KeyboardInterrupt
        return real(handle, windows, *a, **k)

    monkeypatch.setattr(trace_mod, "forward_activations", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture(model, "pydoc", out, **{**CAP, **kw})
    monkeypatch.setattr(trace_mod, "forward_activations", real)


def test_stale_shards_without_run_record_are_not_reused(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from coact.models import load_model
    from coact.workflow import capture

    model = load_model(str(tiny_model_dir))
    _interrupted(monkeypatch, model, tmp_path / "t", sparsity=0.5)
    assert (tmp_path / "t.partial" / "shard_00000" / "done").exists()
    (tmp_path / "t.partial" / "run.json").unlink()  # killed before / while the record was written
    resumed = capture(model, "pydoc", tmp_path / "t", sparsity=0.9, **CAP)
    fresh = capture(model, "pydoc", tmp_path / "u", sparsity=0.9, **CAP)
    assert resumed.meta["content_digest"] == fresh.meta["content_digest"]
    assert np.all(np.abs(np.array(resumed.meta["achieved_sparsity"]) - 0.9) < 0.05)
    # a complete record with other settings is refused (delete to start over)
    _interrupted(monkeypatch, model, tmp_path / "v", sparsity=0.5)
    with pytest.raises(TraceError, match="other settings"):
        capture(model, "pydoc", tmp_path / "v", sparsity=0.9, **CAP)
    # the same settings resume and equal an uninterrupted run
    again = capture(model, "pydoc", tmp_path / "v", sparsity=0.5, **CAP)
    assert again.meta["content_digest"] == capture(model, "pydoc", tmp_path / "w", sparsity=0.5,
                                                   **CAP).meta["content_digest"]


def test_concurrent_capture_is_refused(tiny_model_dir, tmp_path) -> None:
    from coact.models import load_model
    from coact.workflow import capture

    partial = tmp_path / "t.partial"
    partial.mkdir()
    fd = os.open(partial / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another capture holds the lock
    try:
        with pytest.raises(TraceError, match="another capture"):
            capture(load_model(str(tiny_model_dir)), "pydoc", tmp_path / "t", sparsity=0.5, **CAP)
    finally:
        os.close(fd)
    assert not (tmp_path / "t").exists()


def test_capture_input_checks_come_first(tmp_path: Path) -> None:
    from coact.workflow import capture

    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "gone")
    # refused before the (here impossible) model load, and before any folder is created
    with pytest.raises(TraceError, match="dangling"):
        capture(str(tmp_path / "no-such-model"), "pydoc", dangling, tokens=64)
    with pytest.raises(TraceError, match="calib-tokens must be >= 1"):
        capture(str(tmp_path / "no-such-model"), "pydoc", tmp_path / "t", tokens=64, calib_tokens=0)
    assert not (tmp_path / "t.partial").exists() and not (tmp_path / "gone").exists()
    line = one_line_error(invoke("trace", "--out", tmp_path / "t", "--calib-tokens", "0", "--model",
                                 tmp_path / "no-such-model"))
    assert "calib-tokens" in line and not (tmp_path / "t.partial").exists()


# -------------------------------------------------------------------------------------------- 3. pack integrity
def test_flipped_byte_anywhere_in_a_pack_is_detected(tmp_path: Path) -> None:
    p = make_pack(tmp_path / "p.pack")
    with PackFile(p) as pf:
        h = pf.header
    size = p.stat().st_size
    jlen = struct.unpack("<Q", p.read_bytes()[8:16])[0]
    rng = np.random.default_rng(0)
    positions = {0, 9, 17, 21, 24 + jlen // 2, 24 + jlen + 5, h["perm_offset"] + 3, h["perm_offset"] + h["perm_nbytes"],
                 h["crc_offset"] + 1, h["crc_offset"] + h["crc_nbytes"] + 7, size - 1}
    for off, nb in zip(h["layer_offsets"], h["layer_nbytes"]):
        positions |= {off, off + nb // 2, off + nb - 1, off + nb + 10}  # data start/middle/end, padding
    positions |= set(rng.integers(0, size, 20).tolist())
    for pos in sorted(positions):
        old = flip(p, pos)
        with pytest.raises(PackError):
            with PackFile(p) as pf:
                pf.verify()
        assert invoke("verify", p).exit_code == 2, pos
        p.write_bytes(old)
    assert invoke("verify", p).exit_code == 0


def test_read_neurons_verifies_what_it_reads(tmp_path: Path) -> None:
    p = make_pack(tmp_path / "p.pack")
    lay = layout()
    with PackFile(p) as pf:
        pos = 7
        off = pf.layer_offset(1) + pos * pf.bundle_bytes + 3
    flip(p, off)
    neuron = int(lay.perms[1][pos])
    with PackFile(p) as pf:
        with pytest.raises(PackError, match="layer 1: bundle at position 7"):
            pf.read_neurons(1, [neuron])
        pf.read_neurons(1, [neuron], verify=False)  # the opt-out reads without checking
        pf.read_neurons(0, np.arange(N))  # other layers are fine
        other = [int(x) for x in lay.perms[1] if x != neuron]
        pf.read_neurons(1, other)  # other bundles of the same layer are fine


def test_replay_verify_detects_corrupt_bundles(direct_io_dir: Path) -> None:
    from runtime.replay import replay

    p = make_pack(direct_io_dir / "p.pack")
    lay = layout()
    packed = pack_bits(np.random.default_rng(3).random((20, L, N)) < 0.3)
    rep = replay(p, lay, packed, verify=True)
    assert rep.config["verified"] is True
    plain = replay(p, lay, packed)
    assert (rep.reads_per_token, rep.bytes_read_per_token) == (plain.reads_per_token, plain.bytes_read_per_token)
    with PackFile(p) as pf:
        off = pf.layer_offset(2) + 4 * pf.bundle_bytes
    flip(p, off)
    replay(p, lay, packed)  # unverified replay does not notice
    with pytest.raises(PackError, match="layer 2: bundle at position 4"):
        replay(p, lay, packed, verify=True)


def test_version_1_packs_ask_for_a_repack(tmp_path: Path) -> None:
    p = tmp_path / "old.pack"
    body = json.dumps({"format": "coact-pack", "version": 1}).encode()
    p.write_bytes(b"COACTPK1" + struct.pack("<Q", len(body)) + body + b"\0" * 4000)
    with pytest.raises(PackError, match="re-pack"):
        PackFile(p)
    assert "re-pack" in one_line_error(invoke("verify", p))
    make_pack(p)  # an old pack may be replaced by a new one
    PackFile(p).close()


# ------------------------------------------------------------------------------------------------ 4. coact verify
def test_verify_every_kind(tmp_path: Path) -> None:
    tr = make_trace(tmp_path / "tr")
    st = tmp_path / "st"
    assert invoke("stats", tr, "--out", st).exit_code == 0
    lay = save_layout(layout(), tmp_path / "l.safetensors")
    exports = [export_layout(layout(), tmp_path / f"l.{f}", f) for f in ("json", "csv", "npz")]
    pk = make_pack(tmp_path / "p.pack")
    want = {tr: "trace", st: "stats", lay: "layout", pk: "pack", **{e: "layout" for e in exports}}
    for path, kind in want.items():
        assert detect_kind(path) == kind
        res = invoke("verify", path, "--json")
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["ok"] is True and out["kind"] == kind
        assert invoke("verify", path).stdout.startswith(f"OK {kind}")
    # foreign files and folders: one line, exit 2 (and JSON with ok=false under --json)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    (tmp_path / "x.json").write_text('{"a": 1}')
    (tmp_path / "garbage").write_bytes(os.urandom(5000))
    for bad in (tmp_path / "foreign", tmp_path / "x.json", tmp_path / "garbage", tmp_path / "missing"):
        one_line_error(invoke("verify", bad))
        res = invoke("verify", bad, "--json")
        assert res.exit_code == 2 and json.loads(res.stdout)["ok"] is False
    with pytest.raises(VerifyError):
        verify_artefact(tmp_path / "garbage")


def test_flipped_byte_anywhere_in_a_trace_is_detected(tmp_path: Path) -> None:
    tr = make_trace(tmp_path / "tr")
    verify_trace(tr)
    rng = np.random.default_rng(1)
    for f in sorted(tr.iterdir()):
        size = f.stat().st_size
        for pos in sorted({0, size // 2, size - 2, *rng.integers(0, size, 6).tolist()}):
            old = flip(f, pos)
            with pytest.raises(UserError):
                verify_trace(tr)
            assert invoke("verify", tr).exit_code == 2, (f.name, pos)
            f.write_bytes(old)
    verify_trace(tr)


def test_stats_verify_detects_corruption(tmp_path: Path) -> None:
    st = compute_stats(pack_bits(np.random.default_rng(0).random((30, 2, 12)) < 0.4), n_neurons=12,
                       progress=False)
    out = st.save(tmp_path / "s")
    f = out / "stats.safetensors"
    size = f.stat().st_size
    for pos in (size - 1, size - 40, size // 2):
        old = flip(f, pos)
        one_line_error(invoke("verify", out))
        f.write_bytes(old)
    assert invoke("verify", out).exit_code == 0


# --------------------------------------------------------------------------------------------- 5. trace metadata
def _edit_meta(tr: Path, **changes) -> None:
    meta = json.loads((tr / META_FILE).read_text())
    meta.update(changes)
    meta["meta_digest"] = meta_digest(meta)  # a consistent (deliberate) edit, not a flipped byte
    (tr / META_FILE).write_text(json.dumps(meta))


def test_trace_metadata_must_match_the_data(tmp_path: Path) -> None:
    tr = make_trace(tmp_path / "tr", layers=2, n=256)
    _edit_meta(tr, n_layers=1, n_neurons=512)  # 1 x 512 metadata over 2 x 256 data
    with pytest.raises(TraceError, match="metadata says 1 layers"):
        Trace.load(tr)
    for bad in ({"n_neurons": 10**15}, {"n_tokens": -1}, {"n_layers": "2"}, {"sparsifier": None}):
        tr2 = make_trace(tmp_path / f"t{len(list(tmp_path.iterdir()))}")
        _edit_meta(tr2, **bad)
        with pytest.raises(TraceError):
            Trace.load(tr2)
    tr3 = make_trace(tmp_path / "t3")
    (tr3 / META_FILE).write_text("{garbage")
    assert "not valid JSON" in one_line_error(invoke("stats", tr3, "--out", tmp_path / "s3"))
    meta = json.loads((tr / META_FILE).read_text())
    del meta["model_id"]
    (tr3 / META_FILE).write_text(json.dumps(meta))
    one_line_error(invoke("stats", tr3, "--out", tmp_path / "s3"))


def test_state_json_cannot_point_outside(tmp_path: Path) -> None:
    outside = make_trace(tmp_path / "outside")
    tr = make_trace(tmp_path / "tr")
    state = json.loads((tr / "state.json").read_text())
    data_name = state["_data_files"][0]["filename"]
    for name in ("../outside/" + data_name, str(outside / data_name), "..", ""):
        state["_data_files"][0]["filename"] = name
        (tr / "state.json").write_text(json.dumps(state))
        with pytest.raises(TraceError, match="state.json"):
            Trace.load(tr)
    state["_data_files"][0]["filename"] = "link.arrow"
    (tr / "link.arrow").symlink_to(outside / data_name)
    (tr / "state.json").write_text(json.dumps(state))
    with pytest.raises(TraceError, match="state.json"):
        Trace.load(tr)


# ------------------------------------------------------------------------------------------------- 6. provenance
def test_local_model_id_is_a_digest_of_config_and_weights(tmp_path: Path) -> None:
    from conftest import save_tiny_model

    from coact.models import load_model

    a = load_model(str(save_tiny_model(tmp_path / "a" / "model", seed=0))).model_id
    b = load_model(str(save_tiny_model(tmp_path / "b" / "model", seed=1))).model_id  # same folder name
    c = load_model(str(save_tiny_model(tmp_path / "c" / "other", seed=0))).model_id  # same model, other name
    assert a != b and a == c and a.startswith("local:") and "model" not in a


def test_stats_digest_covers_provenance_on_disk(tmp_path: Path) -> None:
    st = compute_stats(pack_bits(np.random.default_rng(0).random((30, 2, 12)) < 0.4), n_neurons=12,
                       progress=False)
    st.meta.update(model_id="m1", sparsifier={"method": "cats", "thresholds": [0.1, 0.2]})
    out = st.save(tmp_path / "s")
    meta = json.loads((out / "meta.json").read_text())
    meta["meta"]["sparsifier"]["thresholds"] = [0.1, 0.3]  # provenance edited, counts untouched
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StatsError, match="digest"):
        CoactStats.load(out)


# ------------------------------------------------------------------------------------------------- 7. atomicity
def test_concurrent_stats_saves_are_atomic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = compute_stats(pack_bits(rng.random((40, 3, 64)) < 0.3), n_neurons=64, progress=False)
    b = compute_stats(pack_bits(rng.random((50, 3, 64)) < 0.3), n_neurons=64, progress=False)
    target = tmp_path / "s"
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def writer(st: CoactStats) -> None:
        try:
            for _ in range(15):
                st.save(target)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(CoactStats.load(target).digest)
            except StatsError as e:
                if "no statistics directory" not in str(e):
                    errors.append(e)

    ws = [threading.Thread(target=writer, args=(s,)) for s in (a, b, a, b)]
    r = threading.Thread(target=reader)
    r.start()
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    stop.set()
    r.join()
    assert not errors, errors[:3]
    assert seen <= {a.digest, b.digest} and CoactStats.load(target).digest in {a.digest, b.digest}
    assert os.listdir(tmp_path) == ["s"]  # no temporaries left


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = tmp_path / f".s{TMP_MARK}{dead.pid}-abc"
    stale_dir.mkdir()
    (stale_dir / "big").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".l.safetensors{TMP_MARK}{dead.pid}-xyz.tmp"
    stale_file.write_bytes(b"half")
    alive = tmp_path / f".s{TMP_MARK}{os.getpid()}-live"  # a concurrent writer's: kept
    alive.mkdir()
    foreign = tmp_path / ".not-ours"
    foreign.mkdir()
    assert set(stale_temporaries(tmp_path)) == {stale_dir, stale_file}
    with atomic_dir(tmp_path / "s") as tmp:
        assert str(os.getpid()) in tmp.name
        (tmp / "f").write_text("ok")
    assert not stale_dir.exists() and not stale_file.exists() and alive.exists() and foreign.exists()


# ---------------------------------------------------------------------------------------------- 8. cheap refusal
def _st_file(path: Path, tensors: dict, meta: dict, data_len: int) -> None:
    header = json.dumps({"__metadata__": meta, **tensors}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + data_len)  # sparse: the data is never written


def test_hostile_layout_headers_are_refused_before_reading(tmp_path: Path) -> None:
    n = 10**9
    meta = {"format": "coact-layout", "version": "1", "n_layers": "1", "n_neurons": json.dumps([n])}
    _st_file(tmp_path / "huge.safetensors", {"layers.0.perm": {"dtype": "I32", "shape": [n],
                                                               "data_offsets": [0, 4 * n]}}, meta, 4 * n)
    meta_small = {**meta, "n_neurons": json.dumps([8])}
    _st_file(tmp_path / "lie.safetensors", {"layers.0.perm": {"dtype": "I32", "shape": [n],
                                                              "data_offsets": [0, 4 * n]}}, meta_small, 4096)
    # a zip "bomb": a small npz whose member inflates to 200 MB while the metadata declares 8 neurons
    lay_meta = Layout.identity(8, 1).metadata()
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("meta.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps(lay_meta)))
        with z.open("perm_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i4", "fortran_order": False, "shape": (50_000_000,)})
            chunk = bytes(1 << 20)
            for _ in range(200):
                f.write(chunk)
    assert (tmp_path / "bomb.npz").stat().st_size < 2 << 20
    for name in ("huge.safetensors", "lie.safetensors", "bomb.npz"):
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(LayoutError):
            load_layout(tmp_path / name)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 << 20 and time.perf_counter() - t0 < 5, (name, peak)


def test_hostile_stats_tensors_are_refused_before_reading(tmp_path: Path) -> None:
    st = compute_stats(pack_bits(np.random.default_rng(0).random((30, 2, 12)) < 0.4), n_neurons=12,
                       progress=False)
    out = st.save(tmp_path / "s")
    meta = json.loads((out / "meta.json").read_text())
    big = 40_000  # 40,000^2 int32 = 6.4 GB declared
    meta.update(n_neurons=big)
    (out / "meta.json").write_text(json.dumps(meta))
    tensors = {"freq": {"dtype": "I32", "shape": [2, big], "data_offsets": [0, 8 * big]}}
    off = 8 * big
    for l in range(2):
        tensors[f"layers.{l}.coact"] = {"dtype": "I32", "shape": [big, big], "data_offsets": [off, off + 4 * big * big]}
        off += 4 * big * big
    _st_file(out / "stats.safetensors", tensors, {"format": "coact-stats"}, 4096)  # only 4 KiB of data
    tracemalloc.start()
    with pytest.raises(StatsError, match="file holds"):
        CoactStats.load(out)
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
    tracemalloc.stop()


def test_fifos_are_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    results: list[type] = []

    def attempt() -> None:
        for fn in (load_layout, PackFile, verify_artefact):
            try:
                fn(fifo)
            except UserError as e:
                results.append(type(e))

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert results == [LayoutError, PackError, VerifyError]


# ---------------------------------------------------------------------------------------------- 9. input checks
def test_binary_corpus_is_refused(tmp_path: Path) -> None:
    from coact.corpus import load_text

    with pytest.raises(CorpusError, match="binary"):
        load_text(sys.executable)
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(range(128, 256)) * 100)
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_text(str(noise))
    ok = tmp_path / "latin.txt"
    ok.write_bytes(("plain text " * 200).encode() + b"caf\xe9\n")  # one stray Latin-1 byte is fine
    assert load_text(str(ok)).startswith("plain text")


def test_stats_over_zero_tokens_are_refused(tmp_path: Path) -> None:
    tr = make_trace(tmp_path / "tr")
    line = one_line_error(invoke("stats", tr, "--start", "5", "--stop", "5", "--out", tmp_path / "s"))
    assert "zero tokens" in line and not (tmp_path / "s").exists()
    empty = compute_stats(pack_bits(np.zeros((4, 1, 8), bool)), start=2, stop=2, progress=False)
    with pytest.raises(StatsError, match="zero tokens"):
        empty.save(tmp_path / "s")


def test_malformed_chains_and_negative_time_limit_still_refused(tmp_path: Path) -> None:
    tr = make_trace(tmp_path / "tr")
    assert invoke("stats", tr, "--out", tmp_path / "st").exit_code == 0
    one_line_error(invoke("solve", tmp_path / "st", "--solver", "ripple+", "--out", tmp_path / "lay"))
    one_line_error(invoke("solve", tmp_path / "st", "--solver", "local-search", "--time-limit", "-1",
                          "--out", tmp_path / "lay"))


# ----------------------------------------------------------------------------------------------- 10. permissions
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_artefacts_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        lay = save_layout(layout(), tmp_path / "l.safetensors")
        pk = make_pack(tmp_path / "p.pack")
        st = compute_stats(pack_bits(np.random.default_rng(0).random((10, 1, 8)) < 0.5), progress=False)
        sd = st.save(tmp_path / "s")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(lay) == mode(pk) == 0o666 & ~umask
    assert mode(sd) == 0o777 & ~umask
    assert all(mode(f) == 0o666 & ~umask for f in sd.iterdir())


def test_cost_model_never_replaces_an_unrelated_file(tmp_path):
    """`device-profile --out` (CostModel.save) may replace a cost model, never another file."""
    from common.errors import UserError
    from runtime.device import CostModel

    cm = CostModel.synthetic(queue_depths=(1, 16))
    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    with pytest.raises(UserError):
        cm.save(other)
    assert other.read_text() == '{"mine": 1}'
    ok = tmp_path / "cost.json"
    cm.save(ok)
    cm.save(ok)  # replacing a cost model is fine
    assert CostModel.load(ok).per_request_s == cm.per_request_s
