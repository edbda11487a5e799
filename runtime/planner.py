"""Read planning: from the flash positions a token needs to the byte ranges the disk is asked for.

Three steps, each a pure vectorised numpy function (docs/DESIGN.md §2):

1. :func:`runs` - maximal blocks of consecutive positions (what a placement is judged by).
2. :func:`plan_reads` - *access collapse* (Ripple): two neighbouring runs become one read when at most `gap`
   unrequested bundles lie between them; reading and discarding a few bundles is cheaper than another request.
3. :func:`byte_ranges` - bundles to bytes, aligned outward to the O_DIRECT block (4 KiB), and ranges that then
   overlap or touch merged, so every byte is read (and counted) once and one request is issued per contiguous span.

Each step also has a *batched* form (``batch_*``) that plans many (token) sets at once: the positions of all tokens
are concatenated with a non-decreasing segment id, and no run, read or range ever crosses a segment boundary.
The single-set functions are the batched ones with one segment, so the brute-force tests of the former also
cover the latter, and the replay/simulate counting (which uses the batched forms) is the same code.

:func:`load_run_lengths` gives, per loaded neuron, the length of the run it is read in: what a run-aware cache
(``ripple``) admits by. It lives here, with the other run arithmetic, so the caches and the replay share it.
"""
from __future__ import annotations

import numpy as np

from runtime.errors import PlanError

ALIGN = 4096
DENSE_CHUNK = 1 << 20

_I64 = np.int64


def _empty() -> np.ndarray:
    return np.empty(0, dtype=_I64)


def _check_sorted(seg: np.ndarray, positions: np.ndarray) -> None:
    if positions.size > 1:
        same = seg[1:] == seg[:-1]
        if np.any(seg[1:] < seg[:-1]) or np.any(same & (positions[1:] <= positions[:-1])):
            raise ValueError("positions must be strictly increasing within each segment (sort and deduplicate first)")


def batch_runs(seg: np.ndarray, positions: np.ndarray, *, check: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of many position sets at once.

    Args:
        seg: non-decreasing segment id of every position (e.g. the token index).
        positions: positions, strictly increasing inside each segment.

    Returns:
        (seg, starts, lengths) of every run, in input order.
    """
    seg = np.asarray(seg, dtype=_I64)
    p = np.asarray(positions, dtype=_I64)
    if seg.shape != p.shape or p.ndim != 1:
        raise ValueError("seg and positions must be 1-D arrays of the same length")
    if p.size == 0:
        return _empty(), _empty(), _empty()
    if check:
        _check_sorted(seg, p)
    new = np.empty(p.size, dtype=bool)
    new[0] = True
    new[1:] = (np.diff(p) != 1) | (seg[1:] != seg[:-1])
    first = np.flatnonzero(new)
    lengths = np.diff(np.append(first, p.size))
    return seg[first], p[first], lengths


def batch_collapse(
    seg: np.ndarray, starts: np.ndarray, lengths: np.ndarray, gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge neighbouring runs of the same segment whose gap (unrequested bundles between them) is <= `gap`."""
    gap = int(gap)
    if gap < 0:
        raise PlanError(f"collapse gap must be >= 0, got {gap}")
    seg = np.asarray(seg, dtype=_I64)
    starts = np.asarray(starts, dtype=_I64)
    lengths = np.asarray(lengths, dtype=_I64)
    if gap == 0 or starts.size <= 1:
        return seg, starts, lengths
    ends = starts + lengths
    new = np.empty(starts.size, dtype=bool)
    new[0] = True
    new[1:] = ((starts[1:] - ends[:-1]) > gap) | (seg[1:] != seg[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], starts.size) - 1
    return seg[first], starts[first], ends[last] - starts[first]


def batch_byte_ranges(
    seg: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    base: int,
    bundle_bytes: int,
    align: int = ALIGN,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte ranges of reads (sorted within each segment), aligned outward, merged when they overlap or touch.

    Returns:
        (seg, offsets, nbytes): absolute file offsets (`base` is the layer region's offset) and sizes, all
        multiples of `align` when `base` is.
    """
    if align < 1 or bundle_bytes < 1:
        raise ValueError("align and bundle_bytes must be positive")
    seg = np.asarray(seg, dtype=_I64)
    starts = np.asarray(starts, dtype=_I64)
    lengths = np.asarray(lengths, dtype=_I64)
    if starts.size == 0:
        return _empty(), _empty(), _empty()
    off = int(base) + starts * int(bundle_bytes)
    end = off + lengths * int(bundle_bytes)
    a_off = (off // align) * align
    a_end = -((-end) // align) * align
    new = np.empty(starts.size, dtype=bool)
    new[0] = True
    # Reads are sorted and disjoint inside a segment, so aligned ends are non-decreasing: comparing with the
    # previous range's end is enough to detect overlap or contact.
    new[1:] = (a_off[1:] > a_end[:-1]) | (seg[1:] != seg[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], starts.size) - 1
    return seg[first], a_off[first], a_end[last] - a_off[first]


def runs(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the maximal blocks of consecutive values in a strictly increasing int array."""
    p = np.asarray(positions, dtype=_I64)
    _, s, n = batch_runs(np.zeros(p.size, dtype=_I64), p)
    return s, n


def plan_reads(positions: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the reads after access collapse with threshold `gap` (0 disables: reads = runs).

    A read covers its requested bundles and the <= `gap` unrequested ones inside it, which are read and discarded.
    """
    p = np.asarray(positions, dtype=_I64)
    seg, s, n = batch_runs(np.zeros(p.size, dtype=_I64), p)
    _, s, n = batch_collapse(seg, s, n, gap)
    return s, n


def byte_ranges(
    starts: np.ndarray, lengths: np.ndarray, base: int, bundle_bytes: int, align: int = ALIGN
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, nbytes) of the I/O requests for reads given in bundles (sorted, disjoint).

    Offsets are `base + start * bundle_bytes` rounded down to `align`, ends rounded up; ranges that then overlap or
    touch are merged, so `nbytes.sum()` counts every byte once and there is one request per contiguous span.
    """
    s = np.asarray(starts, dtype=_I64)
    _, o, n = batch_byte_ranges(np.zeros(s.size, dtype=_I64), s, lengths, base, bundle_bytes, align)
    return o, n


def dense_plan(
    n_neurons: int, bundle_bytes: int, base: int = 0, *, chunk_bytes: int = DENSE_CHUNK, align: int = ALIGN
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, nbytes) reading a whole layer region sequentially in `chunk_bytes` requests (the `dense` baseline).

    The region is the layer's `n_neurons * bundle_bytes` bytes aligned outward to `align`.
    """
    if chunk_bytes < align or chunk_bytes % align:
        raise ValueError(f"chunk_bytes must be a positive multiple of {align}")
    if n_neurons <= 0:
        return _empty(), _empty()
    start = (int(base) // align) * align
    end = -((-(int(base) + int(n_neurons) * int(bundle_bytes))) // align) * align
    offsets = np.arange(start, end, chunk_bytes, dtype=_I64)
    nbytes = np.minimum(offsets + chunk_bytes, end) - offsets
    return offsets, nbytes


def segment_sums(seg: np.ndarray, values: np.ndarray | None, n_segments: int) -> np.ndarray:
    """Exact int64 per-segment sums (counts if `values` is None) of a segment-sorted array."""
    seg = np.asarray(seg, dtype=_I64)
    if values is None:
        return np.bincount(seg, minlength=n_segments).astype(_I64)
    ptr = np.searchsorted(seg, np.arange(n_segments + 1))
    csum = np.concatenate([[0], np.cumsum(np.asarray(values, dtype=_I64))])
    return csum[ptr[1:]] - csum[ptr[:-1]]


def load_run_lengths(inverse: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """For every neuron of a load set, the length (in bundles) of the run of consecutive positions it lies in.

    Runs are those of docs/DESIGN.md §2 (before access collapse): what a run-aware cache (``ripple``) admits by.
    `inverse[neuron]` is the neuron's flash position (``Layout.inverses[layer]``).
    """
    n = np.asarray(neurons, dtype=_I64)
    if n.size == 0:
        return _empty()
    pos = np.asarray(inverse)[n]
    order = np.argsort(pos, kind="stable")
    _, _, lengths = batch_runs(np.zeros(n.size, dtype=_I64), pos[order], check=False)
    out = np.empty(n.size, dtype=_I64)
    out[order] = np.repeat(lengths, lengths)
    return out
