"""The counting kernels of coact.bitcount against plain numpy: the tiled bit transpose (any block offset and length,
aligned or not) and the 4 x 2 pair-count micro-kernel (odd column tails, several cache tiles)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from coact import bitcount
from common.bits import pack_bits


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 70), st.lists(st.integers(0, 300), min_size=0, max_size=3),
       st.sampled_from([0.02, 0.3, 0.9]), st.integers(0, 2**31 - 1))
def test_transpose_and_counts_match_numpy(T, N, cuts, density, seed):
    act = np.random.default_rng(seed).random((T, N)) < density
    bits = np.zeros((bitcount.padded_rows(N), bitcount.n_words(T)), dtype=np.uint64)
    edges = sorted({0, T, *[c % (T + 1) for c in cuts]})  # blocks at arbitrary (often unaligned) offsets
    for a, b in zip(edges[:-1], edges[1:]):
        bitcount.transpose_bits(pack_bits(act[a:b]), N, bits, a)
    want = np.zeros(bits.shape, dtype=np.uint64)
    for t in range(T):
        want[np.flatnonzero(act[t]), t // 64] |= np.uint64(1) << np.uint64(t % 64)
    np.testing.assert_array_equal(bits, want)
    x = act.astype(np.int64)
    np.testing.assert_array_equal(bitcount.pair_counts(bits, np.dtype(np.uint16))[:N, :N], x.T @ x)


def test_pair_counts_across_tiles():
    """More rows and words than one cache tile (TILE_I x TILE_J x TILE_W), odd number of rows per tile tail."""
    rng = np.random.default_rng(0)
    R, W = 4 * 75, bitcount.TILE_W + 3
    bits = rng.integers(0, 2**63, size=(R, W), dtype=np.uint64) & rng.integers(0, 2**63, size=(R, W), dtype=np.uint64)
    dense = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little").astype(np.float64)
    want = (dense @ dense.T).astype(np.int64)  # float64 products of 0/1 are exact far beyond these counts
    np.testing.assert_array_equal(bitcount.pair_counts(bits, np.dtype(np.uint32)), want)
