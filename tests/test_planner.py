"""Read planning against brute-force Python counts (runs, access collapse, aligned byte ranges)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import PlanError
from runtime.planner import (
    batch_byte_ranges,
    batch_collapse,
    batch_runs,
    byte_ranges,
    dense_plan,
    plan_reads,
    runs,
)

positions_st = st.sets(st.integers(0, 300), max_size=80).map(lambda s: np.array(sorted(s), dtype=np.int64))
FAST = settings(max_examples=150, deadline=None)


def brute_runs(pos: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for p in pos:
        if out and p == out[-1][0] + out[-1][1]:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return [(s, n) for s, n in out]


def brute_reads(pos: list[int], gap: int) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, n in brute_runs(pos):
        if out and s - (out[-1][0] + out[-1][1]) <= gap:
            out[-1][1] = s + n - out[-1][0]
        else:
            out.append([s, n])
    return [(s, n) for s, n in out]


def brute_pages(pos: list[int], gap: int, base: int, bb: int, align: int) -> set[int]:
    pages: set[int] = set()
    for s, n in brute_reads(pos, gap):
        lo, hi = base + s * bb, base + (s + n) * bb
        pages.update(range(lo // align, -(-hi // align)))
    return pages


@FAST
@given(positions_st, st.integers(0, 6))
def test_runs_and_reads_match_brute_force(pos, gap):
    s, n = runs(pos)
    assert list(zip(s.tolist(), n.tolist())) == brute_runs(pos.tolist())
    rs, rn = plan_reads(pos, gap)
    assert list(zip(rs.tolist(), rn.tolist())) == brute_reads(pos.tolist(), gap)
    assert rs.size <= s.size
    assert int(n.sum()) == pos.size  # runs partition the requested positions


@FAST
@given(positions_st)
def test_gap_zero_gives_reads_equal_runs(pos):
    s, n = runs(pos)
    rs, rn = plan_reads(pos, 0)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(n, rn)


@FAST
@given(positions_st, st.integers(0, 8), st.sampled_from([1, 7, 512, 2304, 4096, 6000]),
       st.integers(0, 3).map(lambda k: k * 4096))
def test_byte_ranges_aligned_cover_requests_and_count_bytes_once(pos, gap, bb, base):
    align = 4096
    rs, rn = plan_reads(pos, gap)
    off, nb = byte_ranges(rs, rn, base, bb, align)
    assert np.all(off % align == 0) and np.all(nb % align == 0) and np.all(nb > 0)
    # sorted, disjoint and not touching: every byte is read once and each request is a separate span
    assert np.all(off[1:] > off[:-1] + nb[:-1])
    # exactly the pages the (collapsed) reads touch
    pages = set()
    for o, n in zip(off.tolist(), nb.tolist()):
        pages.update(range(o // align, (o + n) // align))
    assert pages == brute_pages(pos.tolist(), gap, base, bb, align)
    # every requested bundle is covered by one range
    for p in pos.tolist():
        lo, hi = base + p * bb, base + (p + 1) * bb
        assert np.any((off <= lo) & (off + nb >= hi))
    # collapse and alignment never read fewer bytes than requested; reads never exceed runs
    assert int(nb.sum()) >= pos.size * bb
    assert off.size <= rs.size <= runs(pos)[0].size


@FAST
@given(st.lists(positions_st, min_size=1, max_size=6), st.integers(0, 5), st.sampled_from([100, 2304, 4096]))
def test_batched_planning_equals_per_set_planning(sets, gap, bb):
    seg = np.concatenate([np.full(p.size, i, dtype=np.int64) for i, p in enumerate(sets)])
    pos = np.concatenate(sets)
    sg, s, n = batch_runs(seg, pos)
    sg, s, n = batch_collapse(sg, s, n, gap)
    sg, off, nb = batch_byte_ranges(sg, s, n, 8192, bb)
    for i, p in enumerate(sets):
        o1, n1 = byte_ranges(*plan_reads(p, gap), 8192, bb)
        np.testing.assert_array_equal(off[sg == i], o1)
        np.testing.assert_array_equal(nb[sg == i], n1)


def test_examples_and_errors():
    s, n = runs(np.array([1, 2, 3, 7, 9, 10]))
    assert s.tolist() == [1, 7, 9] and n.tolist() == [3, 1, 2]
    s, n = plan_reads(np.array([1, 2, 3, 7, 9, 10]), 3)  # gap 3 (4,5,6) merges, gap 1 (8) merges
    assert s.tolist() == [1] and n.tolist() == [10]
    s, n = plan_reads(np.array([1, 2, 3, 7, 9, 10]), 1)
    assert s.tolist() == [1, 7] and n.tolist() == [3, 4]
    assert runs(np.array([], dtype=np.int64))[0].size == 0
    with pytest.raises(ValueError):
        runs(np.array([3, 2]))
    with pytest.raises(PlanError, match="collapse gap"):
        plan_reads(np.array([1, 2]), -1)
    # two 2304-byte bundles in the same page: one 4 KiB request, counted once
    off, nb = byte_ranges(np.array([0]), np.array([1]), 0, 2304)
    assert off.tolist() == [0] and nb.tolist() == [4096]
    off, nb = byte_ranges(np.array([0, 2]), np.array([1, 1]), 0, 1000)
    assert off.tolist() == [0] and nb.tolist() == [4096]


def test_dense_plan_covers_region_in_chunks():
    off, nb = dense_plan(1000, 2304, base=8192, chunk_bytes=1 << 20)
    assert off[0] == 8192 and np.all(off % 4096 == 0)
    assert int(nb.sum()) == -(-1000 * 2304 // 4096) * 4096
    assert np.all(nb[:-1] == 1 << 20) and 0 < nb[-1] <= 1 << 20
    np.testing.assert_array_equal(off[1:], off[:-1] + nb[:-1])
