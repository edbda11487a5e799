"""Exact co-activation counts of one layer by AND + popcount of neuron-major bitsets (the 7B-scale counting kernel).

Why not the float32 ``ssyrk`` of :func:`coact.stats.compute_stats`: counting a 32 x 11,008 layer stack over 100,000
tokens is T x N^2 = 1.2e13 multiply-adds per layer; BLAS ``ssyrk`` runs at ~90 GFLOP/s on one core of this
machine (measured), i.e. ~2 min per layer and > 1 h for the model — far over the 10-minute target. The activations
are bits, so a pair count is ``popcount(bits_i & bits_j)`` over the token axis: one 512-bit AND + ``vpopcntq``
handles 512 tokens of a pair at once (LLVM vectorises the loop below to AVX-512 VPOPCNTDQ on this CPU, AVX2 or
scalar ``popcnt`` elsewhere), ~10-20 s per 11,008-neuron layer per core, counts exact by construction (integers
all the way, no 2^24 flush).

Layout: the trace stores one packed active set per token (token-major). :func:`transpose_bits` turns a block of
tokens into neuron-major words (bit ``t % 64`` of word ``t // 64`` of row ``i`` = neuron i fired on token t);
:func:`pair_counts` fills the upper triangle with a cache-blocked 4 x 2 micro-kernel and mirrors it.

Measured per 11,008-neuron layer of 100,000 tokens (one core, CPU seconds, under load): bit transpose 2.1 -> ~0.3
(64-token tiles of 8 x 8 bit transposes), pair counts 14.2 -> ~11.7 (4 x 2 instead of 4 x 1 micro-kernel: the
AND + ``vpopcntq`` + add loop already runs at ~2 cycles per 512-bit word pair, close to this core's vector
throughput, so no blocking trick gives more than that), candidates 3.5, reading the layer out of the trace 2.2.
:func:`candidates` keeps, per neuron, its top-k partners (by a score, raw count or normalised; only pairs that
co-fire), takes the symmetric union and computes each neuron's best *excluded* count — with ``score="count"``
exactly what ``solvers.graph.CoactGraph.candidate_graph`` computes from a complete graph, without ever building a
sparse copy of all N^2/2 pairs.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

#: Cache blocking of :func:`pair_counts` (rows of the i tile, rows of the j tile, 64-bit words per pass); tuned on
#: a Zen 4 core (L1 32 KiB, L2 1 MiB): 64 x 256 rows x 256 words = 128 KiB + 512 KiB stays in L2.
TILE_I, TILE_J, TILE_W = 64, 256, 256


@intrinsic
def _popcnt64(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM ``ctpop`` on a uint64 (vectorised to ``vpopcntq`` inside loops)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return sig, codegen


def count_dtype(n_tokens: int) -> np.dtype:
    """The narrowest unsigned integer that holds any count of ``n_tokens`` tokens (a pair count is <= n_tokens)."""
    n = int(n_tokens)
    if n <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if n <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def padded_rows(n_neurons: int) -> int:
    """Rows of the bitset matrix: a multiple of 4 (the micro-kernel's row step); padding rows stay all-zero."""
    return -(-int(n_neurons) // 4) * 4


def n_words(n_tokens: int) -> int:
    return -(-int(n_tokens) // 64)


@njit(cache=True, boundscheck=False)
def _transpose_kernel(packed, n_neurons, out, t0):  # pragma: no cover - compiled
    """OR the bits of token rows ``packed[r]`` (token t0 + r) into neuron-major ``out[i, (t0 + r) // 64]``."""
    T = packed.shape[0]
    nb = packed.shape[1]
    for r in range(T):
        t = t0 + r
        w = t >> 6
        bit = np.uint64(1) << np.uint64(t & 63)
        for b in range(nb):
            v = packed[r, b]
            if v == 0:
                continue
            base = b * 8
            for k in range(8):
                if (v >> k) & 1:
                    i = base + k
                    if i < n_neurons:
                        out[i, w] |= bit


@njit(cache=True, boundscheck=False, inline="always")
def _transpose8(x):  # pragma: no cover - compiled
    """Transpose the 8 x 8 bit matrix in ``x`` (byte r = row r, bit k = column k; Hacker's Delight 7-3)."""
    t = (x ^ (x >> np.uint64(7))) & np.uint64(0x00AA00AA00AA00AA)
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & np.uint64(0x0000CCCC0000CCCC)
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & np.uint64(0x00000000F0F0F0F0)
    return x ^ t ^ (t << np.uint64(28))


@njit(cache=True, boundscheck=False)
def _transpose_tiles(packed, n_neurons, out, t0):  # pragma: no cover - compiled
    """The whole 64-token tiles of ``packed`` (``t0`` a multiple of 64): per byte column and tile, eight 8 x 8 bit
    transposes give each of the column's 8 neurons one finished 64-bit word, so ``out`` gets one write per
    (neuron, tile) instead of one read-modify-write per active bit (6x faster than :func:`_transpose_kernel` on a
    10 %-dense 11,008-neuron trace). Returns the number of tokens done."""
    T = packed.shape[0]
    nb = packed.shape[1]
    ntile = T // 64
    xs = np.zeros(8, np.uint64)
    for g in range(ntile):
        r0 = g * 64
        w = (t0 + r0) >> 6
        for b in range(nb):
            anyv = np.uint64(0)
            for q in range(8):
                x = np.uint64(0)
                for r in range(8):
                    x |= np.uint64(packed[r0 + 8 * q + r, b]) << np.uint64(8 * r)
                if x != 0:
                    x = _transpose8(x)
                xs[q] = x
                anyv |= x
            if anyv == 0:
                continue
            base = b * 8
            for k in range(8):
                i = base + k
                if i >= n_neurons:
                    break
                sh = np.uint64(8 * k)
                word = np.uint64(0)
                for q in range(8):
                    word |= ((xs[q] >> sh) & np.uint64(0xFF)) << np.uint64(8 * q)
                out[i, w] |= word
    return ntile * 64


def transpose_bits(packed: np.ndarray, n_neurons: int, out: np.ndarray, t0: int) -> None:
    """Add a block of token-major packed sets (uint8 [t, ceil(N/8)], little bit order, tokens ``t0..t0+t``) to the
    neuron-major bitsets ``out`` (uint64 [padded_rows(N), n_words(T)], zero-initialised). Whole 64-token tiles
    starting at a multiple of 64 go through the bit-matrix transpose, the rest bit by bit (same result)."""
    p = np.ascontiguousarray(packed, dtype=np.uint8)
    if not p.shape[0]:
        return
    done = 0
    if int(t0) % 64 == 0 and p.shape[0] >= 64:
        done = int(_transpose_tiles(p, int(n_neurons), out, int(t0)))
    if done < p.shape[0]:
        _transpose_kernel(p[done:], int(n_neurons), out, int(t0) + done)


@njit(cache=True, boundscheck=False, inline="always")
def _dot42(a0, a1, a2, a3, b0, b1):  # pragma: no cover - compiled
    """popcount(a_r & b_c) summed over the words, for 4 rows x 2 columns (8 accumulators: each loaded word is used
    2 or 4 times, 18 % faster than 4 x 1 on this core)."""
    s00 = np.uint64(0)
    s10 = np.uint64(0)
    s20 = np.uint64(0)
    s30 = np.uint64(0)
    s01 = np.uint64(0)
    s11 = np.uint64(0)
    s21 = np.uint64(0)
    s31 = np.uint64(0)
    for w in range(b0.shape[0]):
        x = b0[w]
        y = b1[w]
        p = a0[w]
        s00 += _popcnt64(p & x)
        s01 += _popcnt64(p & y)
        p = a1[w]
        s10 += _popcnt64(p & x)
        s11 += _popcnt64(p & y)
        p = a2[w]
        s20 += _popcnt64(p & x)
        s21 += _popcnt64(p & y)
        p = a3[w]
        s30 += _popcnt64(p & x)
        s31 += _popcnt64(p & y)
    return s00, s10, s20, s30, s01, s11, s21, s31


@njit(cache=True, boundscheck=False)
def _upper_kernel(B, C, TI, TJ, TW):  # pragma: no cover - compiled
    """C[i, j] += popcount(B[i] & B[j]) for j >= i - 3 (4-row x 2-column blocks; rows of B a multiple of 4)."""
    N, W = B.shape
    for w0 in range(0, W, TW):
        w1 = min(W, w0 + TW)
        for i0 in range(0, N, TI):
            i1 = min(N, i0 + TI)
            for j0 in range(i0, N, TJ):
                j1 = min(N, j0 + TJ)
                for i in range(i0, i1, 4):
                    a0 = B[i, w0:w1]
                    a1 = B[i + 1, w0:w1]
                    a2 = B[i + 2, w0:w1]
                    a3 = B[i + 3, w0:w1]
                    j = max(j0, i)
                    while j < j1:
                        j2 = j + 1 if j + 1 < j1 else j  # odd tail: the second column repeats the first
                        r = _dot42(a0, a1, a2, a3, B[j, w0:w1], B[j2, w0:w1])
                        C[i, j] += r[0]
                        C[i + 1, j] += r[1]
                        C[i + 2, j] += r[2]
                        C[i + 3, j] += r[3]
                        if j2 != j:
                            C[i, j2] += r[4]
                            C[i + 1, j2] += r[5]
                            C[i + 2, j2] += r[6]
                            C[i + 3, j2] += r[7]
                        j += 2


@njit(cache=True, boundscheck=False)
def _mirror_kernel(C, blk):  # pragma: no cover - compiled
    """C[j, i] = C[i, j] for i < j (blocked transpose of the upper triangle into the lower one)."""
    n = C.shape[0]
    for i0 in range(0, n, blk):
        for j0 in range(i0, n, blk):
            for i in range(i0, min(n, i0 + blk)):
                for j in range(max(j0, i + 1), min(n, j0 + blk)):
                    C[j, i] = C[i, j]


def pair_counts(bits: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Symmetric [R, R] counts (R = rows of ``bits``, a multiple of 4) in ``dtype``: ``C[i, j]`` = tokens on which
    rows i and j are both set, the diagonal = each row's popcount. Exact for any ``dtype`` that holds the token
    count (:func:`count_dtype`)."""
    R = bits.shape[0]
    if R % 4:
        raise ValueError(f"bitset rows must be a multiple of 4, got {R}")
    C = np.zeros((R, R), dtype=dtype)
    if R and bits.shape[1]:
        _upper_kernel(bits, C, TILE_I, TILE_J, TILE_W)
        _mirror_kernel(C, 64)
    return C


#: Candidate scores (how each neuron ranks its partners; see :func:`candidates`). Codes of :func:`_topk_kernel`.
SCORES = {"count": 0, "jaccard": 1, "lift": 2, "cosine": 3, "min": 4, "hot": 5}


@njit(cache=True, boundscheck=False, inline="always")
def _score(mode, c, fi, fj, t):  # pragma: no cover - compiled
    """The partner score of a pair with count ``c`` > 0 of neurons with frequencies ``fi``, ``fj`` over ``t``
    tokens (``mode``: a code of :data:`SCORES`)."""
    if mode == 0:
        return c
    if mode == 1:
        return c / (fi + fj - c)
    if mode == 2:
        return c * t / (fi * fj)
    if mode == 3:
        return c / np.sqrt(fi * fj)
    if mode == 4:
        return c / min(fi, fj)
    return fj


@njit(cache=True, boundscheck=False)
def _topk_kernel(C, f, n, k, cand, mode, t):  # pragma: no cover - compiled
    """cand[i, :] = the k partners j != i with C[i, j] > 0 and the largest score (descending, ties by larger count,
    then smaller j), -1 padded. ``f``: float64 frequencies (the diagonal of C, contiguous: no strided reads)."""
    vals = np.zeros(k, dtype=np.float64)
    cnts = np.zeros(k, dtype=np.int64)
    for i in range(n):
        m = 0
        fi = f[i]
        for j in range(n):
            if j == i:
                continue
            c = np.int64(C[i, j])
            if c <= 0:
                continue
            s = _score(mode, np.float64(c), fi, f[j], np.float64(t))
            if m == k and (s < vals[k - 1] or (s == vals[k - 1] and c <= cnts[k - 1])):
                continue
            p = m if m < k else k - 1
            while p > 0 and (vals[p - 1] < s or (vals[p - 1] == s and cnts[p - 1] < c)):
                vals[p] = vals[p - 1]
                cnts[p] = cnts[p - 1]
                cand[i, p] = cand[i, p - 1]
                p -= 1
            vals[p] = s
            cnts[p] = c
            cand[i, p] = j
            if m < k:
                m += 1


@njit(cache=True, boundscheck=False)
def _excluded_kernel(C, n, indptr, indices, out):  # pragma: no cover - compiled
    """out[i] = max C[i, j] over j != i that are not neighbours of i in the CSR pattern (0 if none)."""
    mark = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            mark[indices[e]] = True
        mx = np.int64(0)
        for j in range(n):
            if j != i and not mark[j]:
                v = np.int64(C[i, j])
                if v > mx:
                    mx = v
        out[i] = mx
        for e in range(indptr[i], indptr[i + 1]):
            mark[indices[e]] = False


def top_partners(C: np.ndarray, n: int, k: int, score: str = "count", n_tokens: int = 0) -> np.ndarray:
    """int64 [n, k]: row i = the (at most) k partners j != i with C[i, j] > 0 and the largest ``score``
    (:func:`candidates`), best first, -1 padded."""
    n, k = int(n), int(k)
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    if score not in SCORES:
        raise ValueError(f"unknown candidate score {score!r}; choose from {', '.join(SCORES)}")
    cand = np.full((n, k), -1, dtype=np.int64)
    if n:
        f = np.ascontiguousarray(np.diagonal(C)[:n], dtype=np.float64)
        _topk_kernel(C, f, n, k, cand, SCORES[score], int(n_tokens))
    return cand


def clique_size(part: str) -> int | None:
    """H of a ``clique<H>`` candidate part (every pair among the layer's H most frequent neurons), else None."""
    if part.startswith("clique") and part[6:].isdigit() and int(part[6:]) >= 2:
        return int(part[6:])
    return None


def score_parts(spec: str) -> tuple[str, ...]:
    """The parts of a candidate spec: one of :data:`SCORES`, or several joined by ``+`` (e.g. ``jaccard+lift``:
    the union of each score's top-k), optionally with ``clique<H>`` (e.g. ``jaccard+lift+clique1000``; see
    :func:`candidates`). Raises ValueError for an unknown or repeated part or a spec with only a clique."""
    parts = tuple(str(spec).split("+"))
    bad = [p for p in parts if p not in SCORES and clique_size(p) is None]
    if (bad or len(set(parts)) != len(parts) or all(clique_size(p) is not None for p in parts)
            or sum(clique_size(p) is not None for p in parts) > 1):
        raise ValueError(f"unknown candidate score {spec!r}; choose from {', '.join(SCORES)} or several joined "
                         f"by '+' (e.g. jaccard+lift), optionally with one clique<H> (e.g. jaccard+lift+clique1000)")
    return parts


def candidates(C: np.ndarray, n: int, k: int, score: str = "count",
               n_tokens: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate graph of one layer from its full count matrix ``C`` (first ``n`` rows/columns used, diagonal
    = frequencies).

    ``score`` ranks each neuron's partners (:data:`SCORES`; ``n_tokens`` is only used by ``lift``): ``count`` the raw
    co-activation count c_ij; ``jaccard`` c_ij / (f_i + f_j - c_ij); ``lift`` c_ij T / (f_i f_j); ``cosine``
    c_ij / sqrt(f_i f_j); ``min`` c_ij / min(f_i, f_j); ``hot`` f_j (the most frequent co-firing partners). The
    normalised scores discount hot neurons, whose raw counts are large with everyone (why: see
    ``coact.stats.DEFAULT_CANDIDATES``). Ties: larger count, then smaller id. ``a+b``: each neuron keeps its
    top-``k`` partners by ``a`` and its top-``k`` by ``b`` (a union of up to 2k). ``+clique<H>`` also stores every
    co-firing pair among the layer's H most frequent neurons. Whatever the score, the stored counts are exact and
    ``excluded_max`` is the largest *raw* count of a pair that is not stored, which is all the bounds of
    ``solvers.bounds`` assume.

    Why a clique (measured on the synthetic 7B-shape trace, bench/results/scale_gap.md): when a few percent of the
    neurons fire in most tokens, any two of them co-fire 5-15x more often than a typical path edge, and every
    neuron's top-k partners by *any* per-neuron score are the same few hottest neurons: a top-k graph then holds a
    star around them, never a path through them. The exact-count LP bound used 389 such missing pairs (18.1 M of
    its 70.0 M on layer 23); local-search went from 9.3 % to 1.3 % below that bound with a 1,000-neuron clique.

    Returns ``(indptr int64 [n+1], indices int32 [nnz], data C.dtype [nnz], excluded_max int64 [n])``: a symmetric
    CSR (sorted indices, no diagonal, only positive counts) of the pairs where one neuron is among the other's
    top-``k`` partners, their exact counts, and per neuron the largest count of a pair that is not stored.
    """
    n, k = int(n), int(k)
    parts = score_parts(score)
    hot = max((clique_size(p) or 0 for p in parts), default=0)
    cand = np.concatenate([top_partners(C, n, k, p, n_tokens) for p in parts if clique_size(p) is None], axis=1)
    k = cand.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = cand.ravel()
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    if hot and n > 1:  # every co-firing pair among the `hot` most frequent neurons (ties: smaller id)
        top = np.sort(np.argsort(-np.diagonal(C)[:n].astype(np.int64), kind="stable")[:hot])
        a, b = np.triu_indices(top.size, 1)
        a, b = top[a], top[b]
        pos = np.asarray(C[a, b]) > 0
        rows, cols = np.concatenate([rows, a[pos]]), np.concatenate([cols, b[pos]])
    keys = np.unique(np.concatenate([rows * n + cols, cols * n + rows]))
    r, c = keys // max(n, 1), keys % max(n, 1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    data = np.ascontiguousarray(C[r, c])
    excl = np.zeros(n, dtype=np.int64)
    if n:
        _excluded_kernel(C, n, indptr, c, excl)
    return indptr, c.astype(np.int32), data, excl
