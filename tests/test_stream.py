"""runtime.stream: the bundles a model asks for, read from a pack with O_DIRECT through a cache, with prefetch.

Every configuration (cache policy, collapse gap, prefetch with right or wrong predictions, dense mode, engine) must
return exactly the pack's weights of the requested neurons, and its counters must add up.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.caches import get_cache
from runtime.engines import engine_status
from runtime.layout import Layout
from runtime.pack import PackFile, write_pack
from runtime.stream import FlashFFNReader, StreamError, summarize

pytestmark = pytest.mark.disk

L, N, D = 3, 200, 64


def _weights(seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {x: {"gate": rng.standard_normal((N, D)).astype(np.float32),
                "up": rng.standard_normal((N, D)).astype(np.float32),
                "down": rng.standard_normal((D, N)).astype(np.float32)} for x in range(L)}


@pytest.fixture(scope="module")
def weights():
    return _weights()


def _pack(dirpath: Path, weights, dtype: str = "fp16", bundle: str = "up-down") -> Path:
    rng = np.random.default_rng(3)
    layout = Layout([rng.permutation(N) for _ in range(L)], model_id="toy")
    return write_pack(dirpath / f"p-{dtype}-{bundle}.pack", weights.__getitem__, layout, bundle=bundle, dtype=dtype,
                      d_model=D)


def _sets(seed: int = 5, tokens: int = 12) -> list[list[np.ndarray]]:
    """Per token and layer an active set with temporal locality (so caches hit)."""
    rng = np.random.default_rng(seed)
    hot = [rng.choice(N, 60, replace=False) for _ in range(L)]
    out = []
    for _ in range(tokens):
        row = []
        for x in range(L):
            a = np.union1d(rng.choice(hot[x], 25, replace=False), rng.choice(N, 10, replace=False))
            row.append(a.astype(np.int64))
        out.append(row)
    return out


CONFIGS = [
    dict(policy="none", collapse=0, prefetch=None),
    dict(policy="lru", collapse=0, prefetch=None),
    dict(policy="lru", collapse=3, prefetch="exact"),
    dict(policy="window", collapse=0, prefetch="noisy"),
    dict(policy="s3fifo", collapse=2, prefetch="noisy"),
    dict(policy="ripple", collapse=4, prefetch="exact"),
    dict(policy="pinned+lru", collapse=1, prefetch="noisy"),
    dict(policy="none", collapse=0, prefetch="noisy", dense=True),
]


_URING_OK, _URING_WHY = engine_status("uring")
# uring: the asynchronous path (prefetch and misses in flight together, no worker thread)
ENGINES = ["sync", "threads:4", pytest.param("uring:8", marks=pytest.mark.skipif(not _URING_OK, reason=_URING_WHY))]


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
@pytest.mark.parametrize("engine", ENGINES)
def test_fetch_returns_exact_bundles(direct_io_dir: Path, weights, dtype: str, cfg: dict, engine: str):
    path = _pack(direct_io_dir, weights, dtype)
    bb = 2 * D * (2 if dtype == "fp16" else 4)
    params = {"freq": np.random.default_rng(0).integers(0, 50, (L, N))} if cfg["policy"].startswith("pinned") else {}
    cache = get_cache(cfg["policy"], 150 * bb, bb, **params) if cfg["policy"] != "none" else None
    rng = np.random.default_rng(9)
    sets = _sets()
    with PackFile(path) as pf, FlashFFNReader(path, cache=cache, engine=engine, collapse_gap=cfg["collapse"],
                                              dense=cfg.get("dense", False)) as rd:
        assert rd.dram_bytes <= (cache.budget_bytes if cache else 0) + 2 * (-(-N * bb // 4096) * 4096)
        for row in sets:
            rd.begin_token()
            for x, a in enumerate(row):
                if cfg["prefetch"] == "exact":
                    rd.prefetch(x, a)
                elif cfg["prefetch"] == "noisy":  # some right, some wrong, some missing
                    guess = np.union1d(rng.choice(a, a.size // 2, replace=False), rng.choice(N, 8, replace=False))
                    rd.prefetch(x, guess)
                order = rng.permutation(a)
                got = rd.fetch(x, order)
                want = pf.read_neurons(x, order).astype(np.float32)
                assert got.dtype == np.float32 and got.shape == (a.size, 2, D)
                np.testing.assert_array_equal(got, want)
        s = summarize(rd.tokens)
    tot = s["total"]
    assert s["tokens"] == len(sets)
    assert tot["active"] == sum(a.size for row in sets for a in row)
    assert tot["hits"] + tot["loaded"] == tot["active"]
    assert tot["bytes_read"] % 4096 == 0 and tot["bytes_read"] >= (0 if cfg.get("dense") else tot["bytes_requested"])
    assert tot["wait_ns"] <= tot["io_ns"] + tot["wait_ns"]
    if cfg["policy"] != "none":
        assert tot["hits"] > 0
    if cfg["prefetch"] == "exact" and not cfg.get("dense"):
        assert tot["prefetch_used"] == tot["loaded"] and tot["wasted_bytes"] == 0  # perfect prediction
        assert s["prefetch_precision"] == 1.0 and s["prefetch_recall"] == 1.0
    if cfg.get("dense"):
        assert tot["predicted"] == 0


def test_cache_never_exceeds_budget_and_hits_match_policy(direct_io_dir: Path, weights):
    """The reader's hits are exactly the cache policy's (the same policy driven directly by ids only)."""
    path = _pack(direct_io_dir, weights, "fp16")
    bb = 2 * D * 2
    sets = _sets(tokens=20)
    ref = get_cache("lru", 30 * bb, bb)
    want_hits = 0
    for row in sets:
        for x, a in enumerate(row):
            s = ref.filter(x, a)
            want_hits += a.size - s.size
            ref.admit(x, s)
    cache = get_cache("lru", 30 * bb, bb)
    with FlashFFNReader(path, cache=cache, engine="sync") as rd:
        for row in sets:
            rd.begin_token()
            for x, a in enumerate(row):
                rd.prefetch(x, a[::2])
                rd.fetch(x, a)
                assert cache.resident_bundles <= 30
                assert rd.cache_bytes == 30 * bb
        assert summarize(rd.tokens)["total"]["hits"] == want_hits


def test_bad_input(direct_io_dir: Path, weights):
    path = _pack(direct_io_dir, weights, "fp16")
    with FlashFFNReader(path, engine="sync") as rd:
        with pytest.raises(StreamError):
            rd.fetch(0, [N])
        with pytest.raises(StreamError):
            rd.fetch(L, [0])
        assert rd.fetch(0, []).shape == (0, 2, D)
    with pytest.raises(StreamError):
        rd.fetch(0, [1])
    with pytest.raises(StreamError):
        FlashFFNReader(path, cache=get_cache("lru", 1000, 999), engine="sync")


@pytest.mark.parametrize("engine", ENGINES)
def test_fetch_raw_and_read_log(direct_io_dir: Path, weights, engine: str):
    """fetch_raw gives the pack's own dtype (no widening); the read log holds every batch issued, in order, and
    adds up to the bytes and requests the counters report."""
    path = _pack(direct_io_dir, weights, "fp16")
    bb = 2 * D * 2
    rng = np.random.default_rng(1)
    with PackFile(path) as pf, FlashFFNReader(path, cache=get_cache("lru", 40 * bb, bb), engine=engine,
                                              collapse_gap=1) as rd:
        rd.read_log = []
        assert rd.asynchronous == engine.startswith("uring")
        for row in _sets(tokens=6):
            rd.begin_token()
            for x, a in enumerate(row):
                rd.prefetch(x, np.union1d(a[::2], rng.choice(N, 5, replace=False)))
                got = rd.fetch_raw(x, a)
                assert got.dtype == np.float16
                np.testing.assert_array_equal(got, pf.read_neurons(x, a))
        tot = summarize(rd.tokens)["total"]
        log = rd.read_log
    assert sum(len(o) for o, _, _ in log) == tot["reads"] > 0
    assert sum(sum(s) for _, s, _ in log) == tot["bytes_read"]
    assert all(len(o) == len(s) and ns > 0 for o, s, ns in log)
