"""Pack files: exact weights back for any neuron set, alignment, and refusal of bad files."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from runtime.layout import Layout
from runtime.pack import PackError, PackFile, check_layout_matches, write_pack

L, N, D = 3, 64, 32


def make_weights(seed: int = 0, n: int = N, d: int = D) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        layer: {
            "gate": rng.standard_normal((n, d)).astype(np.float32),
            "up": rng.standard_normal((n, d)).astype(np.float32),
            "down": rng.standard_normal((d, n)).astype(np.float32),
        }
        for layer in range(L)
    }


def random_layout(seed: int = 1, n: int = N) -> Layout:
    rng = np.random.default_rng(seed)
    return Layout([rng.permutation(n) for _ in range(L)], model_id="toy")


def expected(w: dict[str, np.ndarray], neurons: np.ndarray, bundle: str, np_dtype) -> np.ndarray:
    names = ("up", "down") if bundle == "up-down" else ("gate", "up", "down")
    parts = [w[k][:, neurons].T if k == "down" else w[k][neurons] for k in names]
    return np.stack(parts, axis=1).astype(np_dtype)


@pytest.mark.parametrize("bundle", ["up-down", "gate-up-down"])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_read_neurons_gives_exact_weights(tmp_path: Path, bundle: str, dtype: str):
    weights = make_weights()
    layout = random_layout()
    path = write_pack(tmp_path / "p.pack", weights.__getitem__, layout, bundle=bundle, dtype=dtype, d_model=D)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    rng = np.random.default_rng(7)
    with PackFile(path) as pack:
        parts = 2 if bundle == "up-down" else 3
        assert pack.parts == parts and pack.d_model == D and pack.dtype == dtype
        assert pack.bundle_bytes == parts * D * np.dtype(np_dtype).itemsize
        assert pack.layout_digest == layout.digest
        pack.verify()
        for layer in range(L):
            for k in (1, 5, 30, N):
                neurons = rng.choice(N, size=k, replace=False)
                got = pack.read_neurons(layer, neurons, layout)
                assert got.shape == (k, parts, D) and got.dtype == np_dtype
                np.testing.assert_array_equal(got, expected(weights[layer], neurons, bundle, np_dtype))
                # the pack's own stored perms map ids identically
                np.testing.assert_array_equal(pack.read_neurons(layer, neurons), got)
        # duplicates and arbitrary order are fine
        neurons = np.array([5, 5, 0, 63, 17])
        np.testing.assert_array_equal(pack.read_neurons(2, neurons, layout),
                                      expected(weights[2], neurons, bundle, np_dtype))


def test_bundles_stored_in_placement_order(tmp_path: Path):
    weights = make_weights()
    layout = random_layout()
    path = write_pack(tmp_path / "p.pack", weights.__getitem__, layout, dtype="fp32", d_model=D)
    with PackFile(path) as pack:
        raw = path.read_bytes()
        off, bb = pack.layer_offset(1), pack.bundle_bytes
        p = 10  # position 10 holds neuron perm[10]
        stored = np.frombuffer(raw[off + p * bb : off + (p + 1) * bb], dtype="<f4").reshape(2, D)
        nid = layout.perms[1][p]
        np.testing.assert_array_equal(stored[0], weights[1]["up"][nid])
        np.testing.assert_array_equal(stored[1], weights[1]["down"][:, nid])


def test_alignment_and_header(tmp_path: Path):
    path = write_pack(tmp_path / "p.pack", make_weights().__getitem__, random_layout(), d_model=D)
    raw = path.read_bytes()
    assert raw[:8] == b"COACTPK2"
    (jlen, crc) = struct.unpack("<QI", raw[8:20])
    assert raw[20:24] == b"\0" * 4
    assert zlib.crc32(raw[24 : 24 + jlen], zlib.crc32(raw[:16])) == crc
    header = json.loads(raw[24 : 24 + jlen])
    assert header["version"] == 2 and header["bundle_checksum"] == "crc32"
    assert header["header_bytes"] % 4096 == 0 and 24 + jlen <= header["header_bytes"]
    assert all(o % 4096 == 0 for o in header["layer_offsets"] + [header["crc_offset"]])
    assert len(raw) % 4096 == 0 and len(raw) == header["file_bytes"]
    assert raw[24 + jlen : header["header_bytes"]] == b"\0" * (header["header_bytes"] - 24 - jlen)
    assert header["n_neurons"] == [N] * L and header["bundle"] == "up-down" and header["model_id"] == "toy"
    assert len(header["checksums"]) == L and all(len(c) == 64 for c in header["checksums"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_foreign_and_corrupt_files_raise(tmp_path: Path):
    path = write_pack(tmp_path / "p.pack", make_weights().__getitem__, random_layout(), d_model=D)
    raw = path.read_bytes()
    for name, data in {
        "trunc.pack": raw[:-4096],
        "half-header.pack": raw[:12],
        "empty.pack": b"",
        "foreign.pack": b"PK\x03\x04" + b"\0" * 5000,
        "badjson.pack": raw[:16] + b"}" * (len(raw) - 16),
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PackError) as info:
            PackFile(tmp_path / name)
        assert "\n" not in str(info.value)
    # a flipped byte in a layer region is caught by verify()
    corrupt = bytearray(raw)
    with PackFile(path) as pack:
        corrupt[pack.layer_offset(2) + 100] ^= 0xFF
    (tmp_path / "flip.pack").write_bytes(bytes(corrupt))
    with PackFile(tmp_path / "flip.pack") as pack, pytest.raises(PackError, match="layer 2: bundle at position"):
        pack.verify()
    # header sizes inconsistent with each other (with a valid header checksum: the consistency checks still run)
    (jlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[24 : 24 + jlen])
    header["bundle_bytes"] += 2
    body = json.dumps(header).encode()
    prefix = struct.pack("<8sQ", b"COACTPK2", len(body))
    prefix += struct.pack("<I4x", zlib.crc32(body, zlib.crc32(prefix)))
    (tmp_path / "incons.pack").write_bytes(prefix + body + raw[24 + len(body):])
    with pytest.raises(PackError, match="bundle_bytes"):
        PackFile(tmp_path / "incons.pack")
    # the same edit without fixing the checksum: the header protects itself
    (tmp_path / "edited.pack").write_bytes(raw[:24] + body + raw[24 + len(body):])
    with pytest.raises(PackError, match="header checksum"):
        PackFile(tmp_path / "edited.pack")


def test_layout_mismatch_and_bad_weights(tmp_path: Path):
    weights = make_weights()
    layout = random_layout()
    path = write_pack(tmp_path / "p.pack", weights.__getitem__, layout, d_model=D)
    with PackFile(path) as pack:
        check_layout_matches(pack, layout)
        assert [p.tolist() for p in pack.perms()] == [p.tolist() for p in layout.perms]
        assert pack.layout().digest == layout.digest and pack.layout().model_id == "toy"
        other = random_layout(seed=99)
        with pytest.raises(PackError, match="another layout"):
            check_layout_matches(pack, other)
        with pytest.raises(PackError):
            pack.read_neurons(0, np.array([1, 2]), other)
        with pytest.raises(PackError, match="out of range"):
            pack.read_neurons(0, np.array([N]))
    bad = {k: dict(v, up=v["up"][:, :-1]) for k, v in weights.items()}
    with pytest.raises(PackError, match="up has shape"):
        write_pack(tmp_path / "bad.pack", bad.__getitem__, layout, d_model=D)
    assert not (tmp_path / "bad.pack").exists() and not list(tmp_path.glob(".*.tmp"))  # nothing half-written
