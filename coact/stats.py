"""Exact co-activation statistics of a trace: per layer, how often each neuron fires and how often each pair fires
together.

Why these counts: every placement objective in coact is a function of them. Ripple / Neuralink (Wang et al.
2024/2025) place neurons by the co-activation share P(ij) = count(i, j) / sum of all pair counts; "LLM in a flash"
(Alizadeh et al. 2024) and Neuralink-S order by activation frequency; and docs/DESIGN.md §2 shows that on the profiling trace
the number of read runs equals sum|A| minus the sum of co-activation counts of adjacent positions. So the statistics
are the complete sufficient summary of a profiling trace for placement: once computed, solvers never touch the trace.

Why exact integers: objectives, upper bounds (docs/DESIGN.md §6: "within 2 % of a proven upper bound") and the identity
runs = sum|A| - objective only hold exactly with exact counts; floating-point estimates would make the bound checks
and the regression tests approximate.

How: per layer and per chunk of tokens the bit-packed active sets are unpacked to a float32 0/1 matrix X [t, N] and
X^T X is accumulated with BLAS (``ssyrk``, the symmetric rank-k update, half the flops of a general matmul). Each
entry is a count of tokens, and float32 represents every integer up to 2^24 exactly, so the float32 accumulator is
exact as long as it has seen at most 2^24 tokens; it is flushed into an int64 accumulator before that (and
``chunk <= 2^24`` makes every single chunk exact). This runs at the
machine's matmul throughput (docs/DESIGN.md §6 asks for >= 70 %) instead of a Python loop over tokens.

Files (docs/DESIGN.md §3 "Stats"): a directory with ``stats.safetensors`` (``freq`` and ``layers.{l}.coact``; int32 when
every count fits, else int64) and ``meta.json`` (format name/version, n_tokens, shape, digest, the trace metadata).
Written atomically (:func:`common.atomic.atomic_dir`) and validated on load against the content digest.

Version 2 (this one): the digest also covers the provenance (:data:`PROVENANCE_KEYS`: model id, sparsifier and
thresholds, corpus, token range, the trace's content digest), so two statistics with equal counts from different
models or thresholds are never taken for each other. Version 1 folders still load (checked against the old,
counts-only digest). An output folder is only replaced if it is a statistics folder (:func:`is_stats_dir`); the
loader checks the declared tensor shapes against ``meta.json`` and the file size before reading any tensor, and a
folder swapped by a concurrent ``save`` while being read is read again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from scipy.linalg import blas
from safetensors.numpy import load_file, save_file

from common.atomic import atomic_dir, check_output
from common.bits import n_packed_bytes, unpack_bits
from common.fileio import read_json_small, safetensors_header
from coact.errors import CoactError
from coact.progress import make_progress, track

FORMAT_NAME = "coact-stats"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
#: Metadata that says where the counts come from; part of the digest from version 2 on.
PROVENANCE_KEYS = ("model_id", "sparsifier", "method", "sparsity", "corpus", "corpus_digest", "token_start", "ctx",
                   "token_range", "content_digest", "layers", "parts")
#: Sanity bounds checked before reading tensors (a dense N x N matrix per layer).
MAX_LAYERS = 1 << 14
MAX_NEURONS = 1 << 20
TENSORS_FILE = "stats.safetensors"
META_FILE = "meta.json"
#: float32 holds every integer up to 2**24 exactly, so a chunk's X^T X is exact if it has at most this many tokens.
MAX_EXACT_CHUNK = 2**24
#: A trace's token range up to this many packed bytes (all layers) is read once and counted layer by layer;
#: larger ranges are streamed block by block (each block read once, all layers updated).
IN_MEMORY_BYTES = 1 << 30


class StatsError(CoactError):
    """Statistics are missing, corrupt (digest mismatch), malformed, or incompatible (e.g. merging two models)."""


class LayerStats(NamedTuple):
    """The statistics of one layer: activation counts, co-activation counts (diagonal = freq), token count."""

    freq: np.ndarray
    coact: np.ndarray
    n_tokens: int


@dataclass(eq=False)  # arrays: identity equality (compare ``digest`` for content equality)
class CoactStats:
    """Exact activation and co-activation counts of one trace (or a sum of traces of the same model).

    Attributes:
        freq: int64 [L, N]; ``freq[l, i]`` = number of tokens for which neuron i of layer l is active.
        coact: list of L int64 [N, N] arrays; ``coact[l][i, j]`` = number of tokens for which neurons i and j of
            layer l are both active. Symmetric, and the diagonal equals ``freq[l]``.
        n_tokens: number of tokens counted.
        meta: the trace metadata (model_id, sparsifier, thresholds, corpus, ...) plus the token range counted.
    """

    freq: np.ndarray
    coact: list[np.ndarray]
    n_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.freq = np.asarray(self.freq)
        if self.freq.ndim != 2:
            raise StatsError(f"freq must be [L, N], got shape {self.freq.shape}")
        self.freq = self.freq.astype(np.int64, copy=False)
        L, N = self.freq.shape
        if len(self.coact) != L:
            raise StatsError(f"{len(self.coact)} co-activation matrices for {L} layers")
        mats = []
        for l, c in enumerate(self.coact):
            c = np.asarray(c)
            if c.shape != (N, N):
                raise StatsError(f"layer {l}: co-activation matrix has shape {c.shape}, expected ({N}, {N})")
            mats.append(c.astype(np.int64, copy=False))
        self.coact = mats
        self.n_tokens = int(self.n_tokens)
        self.meta = dict(self.meta)

    @property
    def n_layers(self) -> int:
        return int(self.freq.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.freq.shape[1])

    def layer(self, l: int) -> LayerStats:
        """The statistics of layer ``l`` as ``(freq[N], coact[N, N], n_tokens)`` (views, not copies)."""
        if not -self.n_layers <= l < self.n_layers:
            raise IndexError(f"layer {l} out of range for {self.n_layers} layers")
        return LayerStats(self.freq[l], self.coact[l], self.n_tokens)

    @property
    def provenance(self) -> dict[str, Any]:
        """The metadata entries of :data:`PROVENANCE_KEYS` that are present (JSON-normalised)."""
        prov = {k: self.meta[k] for k in PROVENANCE_KEYS if k in self.meta}
        return json.loads(json.dumps(prov, sort_keys=True, default=_json_default))

    @property
    def digest(self) -> str:
        """sha256 (hex) over the shape, n_tokens, all counts as little-endian int64 and the provenance.

        Why: layouts record the digest of the stats they were solved on (docs/DESIGN.md §3), and :meth:`load` detects
        corruption with it. It depends on the counts and on where they come from (:attr:`provenance`: model,
        sparsifier, thresholds, corpus, token range), not on the on-disk dtype or other metadata (creation time).
        """
        h = self._counts_hash(f"{FORMAT_NAME}/{FORMAT_VERSION}")
        h.update(json.dumps(self.provenance, sort_keys=True).encode())
        return h.hexdigest()

    def _counts_hash(self, tag: str) -> Any:
        h = hashlib.sha256()
        h.update(tag.encode())
        h.update(np.array([self.n_layers, self.n_neurons, self.n_tokens], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.freq, dtype="<i8"))
        for c in self.coact:
            h.update(np.ascontiguousarray(c, dtype="<i8"))
        return h

    def _digest_v1(self) -> str:
        """The version-1 digest (counts only), to check folders written by older coact."""
        return self._counts_hash(f"{FORMAT_NAME}/1").hexdigest()

    # -- combination ---------------------------------------------------------------------------------------------

    def merge(self, other: "CoactStats") -> "CoactStats":
        """Sum of two statistics of the same model (e.g. a corpus mixture: counts of disjoint token sets add).

        Metadata keys on which both agree are kept; ``meta["parts"]`` lists the metadata of every summand.
        Raises :class:`StatsError` if the shapes or model ids differ.
        """
        if not isinstance(other, CoactStats):
            raise StatsError(f"cannot merge CoactStats with {type(other).__name__}")
        if (self.n_layers, self.n_neurons) != (other.n_layers, other.n_neurons):
            raise StatsError(
                f"cannot merge stats of shape {self.n_layers}x{self.n_neurons} and {other.n_layers}x{other.n_neurons}"
            )
        ma, mb = self.meta.get("model_id"), other.meta.get("model_id")
        if ma is not None and mb is not None and ma != mb:
            raise StatsError(f"cannot merge stats of different models ({ma!r} and {mb!r})")
        parts = _parts(self.meta) + _parts(other.meta)
        meta = {k: v for k, v in self.meta.items() if k != "parts" and k in other.meta and other.meta[k] == v}
        meta["parts"] = parts
        return CoactStats(
            freq=self.freq + other.freq,
            coact=[a + b for a, b in zip(self.coact, other.coact)],
            n_tokens=self.n_tokens + other.n_tokens,
            meta=meta,
        )

    def __add__(self, other: "CoactStats") -> "CoactStats":
        if not isinstance(other, CoactStats):
            return NotImplemented
        return self.merge(other)

    # -- persistence ---------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the statistics to directory ``path`` atomically; return the path.

        The files are written into a temporary directory next to the target and swapped into place, so a crash
        never leaves a half-written ``path`` (an existing ``path`` is replaced only once the new one is complete).
        Only an existing statistics folder (or an empty folder) is replaced; anything else is refused
        (:class:`common.errors.OutputExistsError`).
        """
        target = Path(path)
        if self.n_tokens < 1:
            raise StatsError("statistics over zero tokens carry no information; count a non-empty token range")
        check_stats_output(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        mx = max([int(self.freq.max(initial=0))] + [int(c.max(initial=0)) for c in self.coact])
        store = np.int32 if mx < 2**31 else np.int64
        tensors = {"freq": np.ascontiguousarray(self.freq, dtype=store)}
        for l, c in enumerate(self.coact):
            tensors[f"layers.{l}.coact"] = np.ascontiguousarray(c, dtype=store)
        digest = self.digest
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "n_layers": self.n_layers,
            "n_neurons": self.n_neurons,
            "n_tokens": self.n_tokens,
            "digest": digest,
            "dtype": np.dtype(store).name,
            "meta": self.meta,
        }
        with atomic_dir(target) as tmp:
            save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT_NAME, "digest": digest})
            with open(tmp / META_FILE, "w") as f:
                json.dump(header, f, indent=2, default=_json_default)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CoactStats":
        """Read statistics written by :meth:`save`; raise :class:`StatsError` if missing, malformed or corrupt.

        If a concurrent :meth:`save` swaps the folder while it is being read (the files then come from two
        versions and the digest fails), the read is repeated, so a reader always gets one complete version.
        """
        root = Path(path)
        for attempt in range(5):
            before = _dir_id(root)
            try:
                return cls._load_once(root)
            except StatsError:
                if attempt == 4 or before is None or _dir_id(root) == before:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load_once(cls, root: Path) -> "CoactStats":
        if not root.is_dir():
            raise StatsError(f"no statistics directory at {root}")
        for name in (TENSORS_FILE, META_FILE):
            if not (root / name).is_file():
                raise StatsError(f"{root}: missing {name}")
        header = read_json_small(root / META_FILE, StatsError, "statistics header")
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise StatsError(f"{root}: not a {FORMAT_NAME} directory")
        if header.get("version") not in READ_VERSIONS:
            raise StatsError(f"{root}: unsupported {FORMAT_NAME} version {header.get('version')!r}")
        try:
            L, N, T = int(header["n_layers"]), int(header["n_neurons"]), int(header["n_tokens"])
            digest = str(header["digest"])
            meta = header.get("meta") or {}
            if not isinstance(meta, dict):
                raise TypeError("'meta' is not an object")
        except (KeyError, TypeError, ValueError) as e:
            raise StatsError(f"{root / META_FILE}: malformed header ({e})") from None
        if not (1 <= L <= MAX_LAYERS and 1 <= N <= MAX_NEURONS and T >= 1):
            raise StatsError(f"{root / META_FILE}: implausible header ({L} layers x {N} neurons, {T} tokens)")
        # Shapes and sizes from the safetensors header only: a small hostile file cannot make us read gigabytes.
        st_meta, infos = safetensors_header(root / TENSORS_FILE, lambda m: StatsError(f"{root / TENSORS_FILE}: {m}"))
        want = {"freq": (L, N), **{f"layers.{l}.coact": (N, N) for l in range(L)}}
        if set(infos) != set(want):
            missing = sorted(set(want) - set(infos))[:1] or sorted(set(infos) - set(want))[:1]
            raise StatsError(f"{root / TENSORS_FILE}: tensors do not match the header ({L} layers; {missing[0]!r})")
        for name, info in infos.items():
            if info.shape != want[name] or info.dtype not in ("I32", "I64"):
                raise StatsError(f"{root}: tensor shapes do not match the header ({L} layers x {N} neurons)")
        if st_meta.get("digest", digest) != digest:
            raise StatsError(f"{root}: the digests of {META_FILE} and {TENSORS_FILE} differ (file corrupt or modified)")
        try:
            tensors = load_file(str(root / TENSORS_FILE))
        except Exception as e:  # safetensors raises its own error types on truncation/garbage
            raise StatsError(f"{root / TENSORS_FILE}: unreadable ({' '.join(str(e).split())})") from None
        stats = cls(freq=tensors["freq"], coact=[tensors[f"layers.{l}.coact"] for l in range(L)], n_tokens=T,
                    meta=meta)
        got = stats.digest if header["version"] == FORMAT_VERSION else stats._digest_v1()
        if got != digest:
            raise StatsError(f"{root}: content digest mismatch (file corrupt or modified)")
        return stats


def is_stats_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder whose ``meta.json`` says ``coact-stats`` (what ``stats --out`` may replace)."""
    try:
        header = read_json_small(Path(path) / META_FILE, StatsError, "statistics header")
    except (StatsError, OSError):
        return False
    return isinstance(header, dict) and header.get("format") == FORMAT_NAME


def check_stats_output(path: str | os.PathLike[str], inputs: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    """Refuse (:class:`common.errors.OutputExistsError`) an output folder that is not missing, empty or a statistics
    folder, or that is (or contains) one of ``inputs`` (e.g. the trace being counted)."""
    return check_output(path, kind="statistics folder", is_kind=is_stats_dir, folder=True, inputs=inputs)


def _dir_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _parts(meta: dict[str, Any]) -> list[dict[str, Any]]:
    if "parts" in meta:
        return list(meta["parts"])
    return [dict(meta)]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# -- counting ------------------------------------------------------------------------------------------------------


def _syrk(x: np.ndarray, buf: np.ndarray, *, accumulate: bool) -> np.ndarray:
    """Upper triangle of ``buf (+)= x^T x`` for float32 C-contiguous x [t, N] and float32 Fortran buf [N, N].

    BLAS ``ssyrk`` (symmetric rank-k update) computes one triangle only: half the flops of ``x.T @ x``. ``x.T`` is
    Fortran-contiguous, so BLAS reads x without a copy, and ``buf`` is updated in place.
    """
    if x.shape[0] == 0 or x.shape[1] == 0:
        if not accumulate:
            buf[:] = 0
        return buf
    return blas.ssyrk(1.0, x.T, beta=1.0 if accumulate else 0.0, c=buf, trans=0, lower=0, overwrite_c=1)


def _symmetrize(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(diagonal, full symmetric matrix) from an int64 matrix whose upper triangle holds the counts."""
    up = np.triu(acc)
    d = np.diagonal(up).copy()
    full = up + up.T
    full[np.diag_indices(acc.shape[0])] = d
    return d, full


def _count_layer(get_chunk: Any, n_tokens: int, n_neurons: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """freq [N] and the full symmetric co-activation matrix [N, N] (int64) of one layer.

    Chunks are accumulated by ``ssyrk`` in a float32 buffer. Every partial sum is an integer <= the tokens
    accumulated so far, so the buffer is exact while it has seen at most 2**24 tokens; it is flushed into the int64
    result before that bound could be crossed.
    """
    acc = np.zeros((n_neurons, n_neurons), dtype=np.int64)
    buf = np.zeros((n_neurons, n_neurons), dtype=np.float32, order="F")
    in_buf = 0
    for s in range(0, n_tokens, chunk):
        e = min(s + chunk, n_tokens)
        if in_buf + (e - s) > MAX_EXACT_CHUNK:
            np.add(acc, buf, out=acc, casting="unsafe")  # exact: integers < 2**24
            buf[:] = 0
            in_buf = 0
        x = np.ascontiguousarray(unpack_bits(get_chunk(s, e), n_neurons), dtype=np.float32)
        buf = _syrk(x, buf, accumulate=True)
        in_buf += e - s
    np.add(acc, buf, out=acc, casting="unsafe")
    return _symmetrize(acc)


def compute_stats(
    trace_or_packed: Any,
    *,
    n_neurons: int | None = None,
    start: int = 0,
    stop: int | None = None,
    chunk: int = 4096,
    progress: bool = True,
) -> CoactStats:
    """Count activations and co-activations of every layer over tokens ``[start, stop)``.

    Args:
        trace_or_packed: a :class:`coact.trace.Trace` (anything with ``layer_packed(layer, start, stop)`` or
            ``packed(start, stop)``, ``n_layers``, ``n_neurons``, ``n_tokens``, ``meta``), or a raw bit-packed
            uint8 array [T, L, ceil(N/8)] (little bit order, :mod:`common.bits`).
        n_neurons: N for a raw array (default: 8 * its last dimension); checked against a trace's ``n_neurons``.
        start, stop: token range (relative to the trace), default all tokens.
        chunk: tokens per matmul block; at most 2**24 so that float32 products stay exact.
        progress: show a progress bar (across layers; across token blocks when a huge trace is streamed).

    Returns:
        :class:`CoactStats` with exact int64 counts; ``meta`` copies the trace metadata (``n_layers`` and
        ``n_neurons`` for a raw array) and adds ``token_range = [start, stop]`` (relative to the trace).
    """
    chunk = int(chunk)
    if not 1 <= chunk <= MAX_EXACT_CHUNK:
        raise StatsError(f"chunk must be in [1, 2**24] for exact float32 counting, got {chunk}")

    tr = None
    if isinstance(trace_or_packed, np.ndarray) or not (
        hasattr(trace_or_packed, "layer_packed") or hasattr(trace_or_packed, "packed")
    ):
        packed = np.asarray(trace_or_packed)
        if packed.dtype != np.uint8 or packed.ndim != 3:
            raise StatsError(f"expected a trace or a uint8 array [T, L, nb], got {packed.dtype} {packed.shape}")
        T, L, nb = packed.shape
        N = int(n_neurons) if n_neurons is not None else 8 * nb
        if n_packed_bytes(N) != nb:
            raise StatsError(f"{N} neurons need {n_packed_bytes(N)} packed bytes, array has {nb}")
        base_meta: dict[str, Any] = {"n_layers": L, "n_neurons": N}
    else:
        tr = trace_or_packed
        T, L, N = int(tr.n_tokens), int(tr.n_layers), int(tr.n_neurons)
        if n_neurons is not None and int(n_neurons) != N:
            raise StatsError(f"n_neurons={n_neurons} but the trace has {N}")
        base_meta = dict(getattr(tr, "meta", {}) or {})
        for k in ("files", "meta_digest"):  # integrity data of the trace's files, not provenance of the counts
            base_meta.pop(k, None)

    stop = T if stop is None else int(stop)
    start = int(start)
    if not 0 <= start <= stop <= T:
        raise StatsError(f"token range [{start}, {stop}) is outside [0, {T}]")
    n = stop - start
    meta = dict(base_meta)
    meta["token_range"] = [start, stop]

    freq = np.zeros((L, N), dtype=np.int64)
    coact: list[np.ndarray] = []
    if tr is not None and hasattr(tr, "packed"):
        if n == 0:
            packed, start, stop = np.zeros((0, L, n_packed_bytes(N)), dtype=np.uint8), 0, 0
        elif n * L * n_packed_bytes(N) <= IN_MEMORY_BYTES:
            # A Trace decodes all layers of a token range at once: read the range once, then count layer by layer.
            packed = np.asarray(tr.packed(start, stop), dtype=np.uint8)
            if packed.shape != (n, L, n_packed_bytes(N)):
                raise StatsError(f"trace returned packed shape {packed.shape}, expected {(n, L, n_packed_bytes(N))}")
            start, stop = 0, n
        else:
            # Too large to hold: stream token blocks once, updating every layer's counts per block.
            coact = [np.zeros((N, N), dtype=np.int64) for _ in range(L)]
            scratch = np.zeros((N, N), dtype=np.float32, order="F")
            n_blocks = -(-n // chunk)
            with make_progress(disable=not progress) as prog:
                task = prog.add_task("co-activation counts", total=n_blocks)
                for s in range(start, stop, chunk):
                    block = np.asarray(tr.packed(s, min(s + chunk, stop)), dtype=np.uint8)
                    for layer in range(L):
                        x = np.ascontiguousarray(unpack_bits(block[:, layer, :], N), dtype=np.float32)
                        scratch = _syrk(x, scratch, accumulate=False)
                        np.add(coact[layer], scratch, out=coact[layer], casting="unsafe")  # exact: < 2**24
                    prog.advance(task)
            for layer in range(L):
                freq[layer], coact[layer] = _symmetrize(coact[layer])
            return CoactStats(freq=freq, coact=coact, n_tokens=n, meta=meta)

    for layer in track(range(L), description="co-activation counts", disable=not progress):
        if tr is None or hasattr(tr, "packed"):
            get = lambda s, e, layer=layer: packed[s:e, layer, :]  # noqa: E731
        else:
            get = lambda s, e, layer=layer: tr.layer_packed(layer, s, e)  # noqa: E731
        f, c = _count_layer(lambda s, e, get=get: get(start + s, start + e), n, N, chunk)
        freq[layer] = f
        coact.append(c)
    return CoactStats(freq=freq, coact=coact, n_tokens=n, meta=meta)
