"""coact.stats: exact counts against brute force, persistence (atomic, digest-checked), merging."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bits import pack_bits, unpack_bits
from coact.errors import CoactError
from coact.stats import CoactStats, StatsError, compute_stats
from common.errors import OutputExistsError


def random_packed(T: int, L: int, N: int, p: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return pack_bits(rng.random((T, L, N)) < p)


def brute(packed: np.ndarray, N: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    a = unpack_bits(packed[start:stop], N).astype(np.int64)  # [T, L, N]
    freq = a.sum(axis=0)
    coact = [a[:, l, :].T @ a[:, l, :] for l in range(a.shape[1])]
    return freq, coact


def assert_matches(stats: CoactStats, freq: np.ndarray, coact: list[np.ndarray]) -> None:
    assert stats.freq.dtype == np.int64
    np.testing.assert_array_equal(stats.freq, freq)
    assert len(stats.coact) == len(coact)
    for got, want in zip(stats.coact, coact):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, got.T)
    for l in range(stats.n_layers):
        np.testing.assert_array_equal(np.diagonal(stats.coact[l]), stats.freq[l])


class FakeTrace:
    """The coact.trace.Trace surface compute_stats relies on (packed and/or layer_packed, shape, meta).

    Like the real Trace, an empty range is an error, so compute_stats must not ask for one.
    """

    def __init__(self, packed: np.ndarray, n_neurons: int, *, packed_api: bool = True) -> None:
        self._p = packed
        self.n_tokens, self.n_layers, _ = packed.shape
        self.n_neurons = n_neurons
        self.meta = {"model_id": "fake/model", "n_layers": self.n_layers, "n_neurons": n_neurons, "token_start": 100}
        self.calls: list[tuple] = []
        if packed_api:
            self.packed = self._packed

    def _check(self, start: int, stop: int | None) -> int:
        stop = self.n_tokens if stop is None else stop
        assert 0 <= start < stop <= self.n_tokens
        return stop

    def _packed(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self._check(start, stop)
        self.calls.append(("packed", start, stop))
        return self._p[start:stop]

    def layer_packed(self, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self._check(start, stop)
        self.calls.append(("layer_packed", layer, start, stop))
        return self._p[start:stop, layer]


@pytest.mark.parametrize("chunk", [1, 7, 8, 37, 4096])
def test_counts_match_brute_force_across_chunk_boundaries(chunk):
    N = 13  # not a multiple of 8: padding bits must be ignored
    packed = random_packed(37, 3, N, seed=chunk)
    stats = compute_stats(packed, n_neurons=N, chunk=chunk, progress=False)
    freq, coact = brute(packed, N)
    assert_matches(stats, freq, coact)
    assert stats.n_tokens == 37 and stats.n_layers == 3 and stats.n_neurons == N
    assert stats.meta["token_range"] == [0, 37]


def test_padding_bits_are_ignored():
    N = 5
    packed = random_packed(20, 1, N, seed=3)
    packed |= np.uint8(0b11100000)  # set the 3 padding bits of the single byte
    stats = compute_stats(packed, n_neurons=N, progress=False)
    assert_matches(stats, *brute(packed, N))


@pytest.mark.parametrize("mode", ["in-memory", "streamed", "layer_packed-only"])
def test_token_range_and_trace_objects(mode, monkeypatch):
    import coact.stats as S

    N = 20
    packed = random_packed(50, 2, N, seed=1)
    want = brute(packed, N, 11, 43)
    tr = FakeTrace(packed, N, packed_api=mode != "layer_packed-only")
    if mode == "streamed":
        monkeypatch.setattr(S, "IN_MEMORY_BYTES", 0)
    stats = compute_stats(tr, start=11, stop=43, chunk=6, progress=False)
    assert_matches(stats, *want)
    assert stats.n_tokens == 32
    assert stats.meta["model_id"] == "fake/model" and stats.meta["token_start"] == 100
    assert stats.meta["token_range"] == [11, 43]
    if mode == "in-memory":
        assert tr.calls == [("packed", 11, 43)]  # the range is decoded once, not once per layer
    elif mode == "streamed":
        assert [c[1:] for c in tr.calls] == [(s, min(s + 6, 43)) for s in range(11, 43, 6)]
    if mode != "layer_packed-only":
        empty = compute_stats(tr, start=7, stop=7, progress=False)
        assert empty.n_tokens == 0 and not empty.freq.any()


def test_default_n_neurons_and_layer_view():
    packed = random_packed(10, 2, 16, seed=2)
    stats = compute_stats(packed, progress=False)
    assert stats.n_neurons == 16
    f, c, t = stats.layer(1)
    np.testing.assert_array_equal(f, stats.freq[1])
    assert c is stats.coact[1] and t == 10
    with pytest.raises(IndexError):
        stats.layer(2)


def test_bad_inputs():
    packed = random_packed(10, 1, 16)
    with pytest.raises(StatsError):
        compute_stats(packed, n_neurons=30, progress=False)  # 30 neurons need 4 bytes, not 2
    with pytest.raises(StatsError):
        compute_stats(packed, chunk=0, progress=False)
    with pytest.raises(StatsError):
        compute_stats(packed, start=5, stop=11, progress=False)
    with pytest.raises(StatsError):
        compute_stats(packed.astype(np.int16), progress=False)
    with pytest.raises(StatsError):
        compute_stats(FakeTrace(packed, 16), n_neurons=15, progress=False)
    assert issubclass(StatsError, CoactError) and issubclass(StatsError, ValueError)


def test_empty_range():
    stats = compute_stats(random_packed(10, 2, 9), n_neurons=9, start=4, stop=4, progress=False)
    assert stats.n_tokens == 0 and not stats.freq.any() and not any(c.any() for c in stats.coact)


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(0, 40),
    L=st.integers(1, 2),
    N=st.integers(1, 20),
    chunk=st.integers(1, 16),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_random_traces(T, L, N, chunk, p, seed):
    packed = random_packed(T, L, N, p=p, seed=seed)
    stats = compute_stats(packed, n_neurons=N, chunk=chunk, progress=False)
    assert_matches(stats, *brute(packed, N))


# -- persistence ---------------------------------------------------------------------------------------------------


@pytest.fixture
def stats() -> CoactStats:
    tr = FakeTrace(random_packed(30, 3, 11, seed=5), 11)
    return compute_stats(tr, progress=False)


def test_save_load_round_trip(tmp_path, stats):
    out = stats.save(tmp_path / "s")
    assert sorted(os.listdir(out)) == ["meta.json", "stats.safetensors"]
    back = CoactStats.load(out)
    assert_matches(back, stats.freq, stats.coact)
    assert back.n_tokens == stats.n_tokens
    assert back.meta == stats.meta
    assert back.digest == stats.digest
    header = json.loads((out / "meta.json").read_text())
    assert header["format"] == "coact-stats" and header["version"] == 2 and header["digest"] == stats.digest
    assert header["dtype"] == "int32"
    assert not [p for p in os.listdir(tmp_path) if p != "s"], "temporary directories left behind"


def test_save_overwrites_atomically(tmp_path, stats):
    target = tmp_path / "s"
    stats.save(target)
    other = stats + stats
    other.save(target)
    assert CoactStats.load(target).digest == other.digest != stats.digest
    assert os.listdir(tmp_path) == ["s"]


def test_save_refuses_file_target(tmp_path, stats):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError):
        stats.save(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_large_counts_stored_as_int64(tmp_path):
    from safetensors import safe_open

    c = np.array([[2**31 + 5, 3], [3, 7]], dtype=np.int64)
    s = CoactStats(freq=np.diagonal(c)[None, :].copy(), coact=[c], n_tokens=2**31 + 10, meta={"model_id": "m"})
    s.save(tmp_path / "big")
    with safe_open(str(tmp_path / "big" / "stats.safetensors"), "numpy") as f:
        assert f.get_tensor("layers.0.coact").dtype == np.int64
    back = CoactStats.load(tmp_path / "big")
    np.testing.assert_array_equal(back.coact[0], c)
    assert back.digest == s.digest


def test_digest_depends_on_counts_and_tokens(stats):
    d = stats.digest
    assert len(d) == 64 and d == stats.digest
    s2 = CoactStats(stats.freq.copy(), [c.copy() for c in stats.coact], stats.n_tokens + 1, stats.meta)
    assert s2.digest != d
    c = [x.copy() for x in stats.coact]
    c[2][0, 1] += 1
    assert CoactStats(stats.freq, c, stats.n_tokens).digest != d
    bare = CoactStats(stats.freq, stats.coact, stats.n_tokens)
    assert CoactStats(stats.freq, stats.coact, stats.n_tokens, {"other": 1}).digest == bare.digest  # not provenance


@pytest.mark.parametrize("key,value", [("model_id", "another/model"), ("sparsifier", {"method": "cats",
                                       "thresholds": [0.5]}), ("token_range", [1, 2]), ("corpus", "other"),
                                       ("content_digest", "0" * 64)])
def test_digest_covers_provenance(stats, key, value):
    """Equal counts from another model / sparsifier / threshold / token range are different statistics."""
    other = CoactStats(stats.freq, stats.coact, stats.n_tokens, {**stats.meta, key: value})
    assert other.digest != stats.digest


def test_corrupted_data_raises(tmp_path, stats):
    out = stats.save(tmp_path / "s")
    f = out / "stats.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x5A  # inside the last tensor's data: header still parses, the digest must catch it
    f.write_bytes(bytes(raw))
    with pytest.raises(StatsError, match="digest"):
        CoactStats.load(out)


def test_truncated_missing_and_garbage_raise(tmp_path, stats):
    out = stats.save(tmp_path / "s")
    f = out / "stats.safetensors"
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])
    with pytest.raises(StatsError):
        CoactStats.load(out)
    f.write_bytes(b"garbage")
    with pytest.raises(StatsError):
        CoactStats.load(out)
    f.unlink()
    with pytest.raises(StatsError, match="missing"):
        CoactStats.load(out)
    f.write_bytes(good)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(StatsError):
        CoactStats.load(out)
    (out / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(StatsError):
        CoactStats.load(out)
    with pytest.raises(StatsError):
        CoactStats.load(tmp_path / "nope")


def test_header_shape_mismatch_raises(tmp_path, stats):
    out = stats.save(tmp_path / "s")
    h = json.loads((out / "meta.json").read_text())
    h["n_layers"] = 4
    (out / "meta.json").write_text(json.dumps(h))
    with pytest.raises(StatsError):
        CoactStats.load(out)


# -- merging -------------------------------------------------------------------------------------------------------


def test_merge_equals_stats_of_concatenation():
    N = 12
    packed = random_packed(40, 2, N, seed=9)
    tr = FakeTrace(packed, N)
    a = compute_stats(tr, start=0, stop=15, progress=False)
    b = compute_stats(tr, start=15, stop=40, progress=False)
    whole = compute_stats(tr, progress=False)
    m = a + b
    assert_matches(m, whole.freq, whole.coact)
    assert m.n_tokens == 40
    assert m.digest != whole.digest  # same counts, other provenance (two parts)
    assert m.meta["model_id"] == "fake/model"
    assert [p["token_range"] for p in m.meta["parts"]] == [[0, 15], [15, 40]]
    assert len((m + a).meta["parts"]) == 3
    assert a.merge(b).digest == m.digest


def test_merge_rejects_incompatible():
    a = compute_stats(random_packed(5, 1, 8), progress=False)
    b = compute_stats(random_packed(5, 2, 8), progress=False)
    with pytest.raises(StatsError):
        a + b
    c = CoactStats(a.freq, a.coact, a.n_tokens, {"model_id": "x"})
    d = CoactStats(a.freq, a.coact, a.n_tokens, {"model_id": "y"})
    with pytest.raises(StatsError):
        c.merge(d)
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


def test_constructor_validates_shapes():
    with pytest.raises(StatsError):
        CoactStats(np.zeros((2, 3)), [np.zeros((3, 3))], 0)
    with pytest.raises(StatsError):
        CoactStats(np.zeros((1, 3)), [np.zeros((2, 2))], 0)


def test_float32_buffer_flushes_before_losing_exactness(monkeypatch):
    # Pretend float32 were exact only up to 5: the accumulator must be flushed to int64 every <= 5 tokens.
    import coact.stats as S

    monkeypatch.setattr(S, "MAX_EXACT_CHUNK", 5)
    N = 10
    packed = random_packed(23, 2, N, p=0.6, seed=11)
    for chunk in (1, 3, 5):
        assert_matches(compute_stats(packed, n_neurons=N, chunk=chunk, progress=False), *brute(packed, N))
    with pytest.raises(StatsError):
        compute_stats(packed, n_neurons=N, chunk=6, progress=False)


def test_older_stats_folders_still_load(tmp_path) -> None:
    """Version-2 folders (dense, one file; what `coact stats` wrote before the candidate graph became the default)
    and version-1 folders (counts-only digest) load, as dense statistics with nothing excluded."""
    stats = compute_stats(random_packed(40, 2, 12), n_neurons=12, progress=False)
    out = stats.save(tmp_path / "v2")
    loaded = CoactStats.load(out)
    assert loaded.kind == "dense" and loaded.digest == stats.digest
    ls = loaded.layer(1)
    assert ls.kind == "dense" and not ls.excluded_max.any() and loaded.excluded_max(1).shape == (12,)
    meta = json.loads((out / "meta.json").read_text())
    meta.update(version=1, digest=stats._digest_v1())
    (out / "meta.json").write_text(json.dumps(meta))
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(out / "stats.safetensors"))
    save_file(tensors, str(out / "stats.safetensors"), metadata={"format": "coact-stats", "digest": meta["digest"]})
    v1 = CoactStats.load(out)
    assert all((a == b).all() for a, b in zip(v1.coact, stats.coact))
