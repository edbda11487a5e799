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

Scale (docs/ARCHITECTURE.md, issue 12): a dense N x N matrix per layer is 283 MB for SmolLM2 but 31 GB for
32 x 11,008 (int64). :func:`count_stats` is the scalable path: one job per layer (run by an executor,
:mod:`common.executors`: a process pool by default, Ray for a cluster), each job streams its layer out of the trace
(:meth:`coact.trace.Trace.layer_packed`), counts exactly with the AND + popcount kernel of :mod:`coact.bitcount`
in the narrowest safe unsigned type (uint16 below 65,536 tokens, uint32 below 2^32), and keeps only the
*candidate graph*: each neuron's top-k partners (k = ``top_k``, default :data:`DEFAULT_TOP_K`, ranked by a
score that discounts hot neurons, :data:`DEFAULT_CANDIDATES`), exact counts on
the union of those pairs (a symmetric CSR), and ``excluded_max[i]`` = the largest count of a pair of i that is not
stored, which keeps upper bounds proven (:mod:`solvers.bounds`). Only one layer's dense matrix exists at a time
per worker (485 MB as uint32 for N = 11,008). Dense exact counts stay available (``dense=True``) when all layers
fit in memory.

Files, version 3 (candidate graphs): a folder with ``meta.json`` (as above plus ``kind``, ``top_k``,
``candidates`` (the score; absent = ``count``, as written before scores existed) and one sha256 per layer),
``freq.safetensors`` and ``layers/NNNNN.safetensors`` (``indptr`` int64, ``indices`` int32, ``counts`` and
``excluded_max`` in the narrow count type), so one layer loads (and is verified) alone
(:meth:`CoactStats.load_layer`); :meth:`CoactStats.load` reads the layers lazily. Its digest covers the shape,
n_tokens, k, the score (unless ``count``), freq, every layer's sha256 and the provenance. Dense statistics keep
the version-2 single file (and its digest, so the digests recorded for the committed sample stay valid).

Units (mixture-of-experts, mixed widths; :mod:`coact.trace` "Units"): statistics have one row per placement unit
of the trace, padded to the widest unit (padding neurons never fire, so their counts are 0); ``meta["units"]``
(copied from the trace and part of the provenance digest) gives every unit's width, and :meth:`CoactStats.layer`
returns unit u cut to its N_u neurons, so layer graphs, solvers and layouts see each unit at its own width.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from scipy.linalg import blas
from safetensors.numpy import load_file, save_file

from common.atomic import atomic_dir, check_output
from common.bits import n_packed_bytes, unpack_bits
from common.executors import get_executor
from common.fileio import read_json_small, safetensors_header
from coact import bitcount
from coact.errors import CoactError
from coact.progress import bars, make_progress, track
from coact.trace import Trace
from runtime.layout import Unit, default_units, parse_units

FORMAT_NAME = "coact-stats"
FORMAT_VERSION = 2
#: Sharded candidate-graph statistics (see the module docstring).
CANDIDATE_VERSION = 3
READ_VERSIONS = (1, 2, 3)
#: Default partners kept per neuron and candidate score (:data:`DEFAULT_CANDIDATES` has two scores, so each neuron
#: keeps up to 2 k partners; with the other direction's picks the CSR holds ~107-156 entries per neuron on the
#: SmolLM2 samples). 48: the smallest k measured (16/24/32/48/64, bench/bench_candidates.py) at which Ripple on the
#: candidate graph stays within 1 % of Ripple on dense counts (held-out mean run length) at both SmolLM2 operating
#: points (-0.16 % at CATS 90 %, -0.54 % at +20 % perplexity; k = 32: -0.53 % / -1.10 %). Memory at 7B shape
#: (32 x 11,008, uint32 counts + int32 ids): ~160 entries x 8 B x 352k neurons = 0.45 GB on disk, instead of 15.5 GB
#: dense. Caveat: counts to hot neurons are large for everyone, so when a hot partner is left out ``excluded_max``
#: is close to a neuron's best kept count and the proven bound is looser than on dense counts. ``--top-k`` sets it.
DEFAULT_TOP_K = 48
#: How a neuron ranks its partners for the candidate graph (:func:`coact.bitcount.candidates`): ``count`` (raw
#: co-activation count), ``jaccard`` c_ij / (f_i + f_j - c_ij), ``lift`` c_ij T / (f_i f_j), ``cosine``
#: c_ij / sqrt(f_i f_j), ``min`` c_ij / min(f_i, f_j), ``hot`` f_j (the k most frequent co-firing partners: adding
#: it, e.g. ``jaccard+lift+hot``, keeps the pairs to hot neurons, whose large counts otherwise set ``excluded_max``,
#: and tightens the proven bound at ~1.7x the memory); ``a+b`` keeps the union of both top-k lists.
CANDIDATE_SCORES = tuple(bitcount.SCORES)
#: Default candidate score: ``jaccard+lift`` (each neuron's top-k by Jaccard and its top-k by lift).
#: Why not raw counts: hot neurons (firing on a large share of tokens) co-fire often with everyone, so every
#: neuron's raw-count top-k is mostly the same few hot neurons: the graph is a star around them, and Ripple's
#: greedy, which saturates each hot neuron after two links, then finds no stored pair for most neurons and chains
#: fragments blindly. Why two scores: Jaccard is best when few neurons are hot (CATS 90 %: Ripple's held-out mean
#: run length at k = 32 is 1.789 vs 1.478 by raw count, 1.309 by lift, dense 1.799) and lift when most are
#: (+20 % perplexity, 57 % mean activity: 2.797 by lift vs 2.575 by Jaccard, 2.589 by raw count, dense 2.868);
#: the union is within 1 % of dense on both (bench/results/candidates.md, bench/bench_candidates.py). The stored
#: counts stay exact and ``excluded_max`` stays the largest *raw* count left out, so the proven bounds
#: (:mod:`solvers.bounds`) hold for any score.
DEFAULT_CANDIDATES = "jaccard+lift"
FREQ_FILE = "freq.safetensors"
LAYERS_DIR = "layers"
#: Dense statistics are refused above this share of the memory available (all layers are held by ``coact``).
DENSE_MEMORY_SHARE = 0.5
#: Metadata that says where the counts come from; part of the digest from version 2 on.
PROVENANCE_KEYS = ("model_id", "sparsifier", "method", "sparsity", "corpus", "corpus_digest", "token_start", "ctx",
                   "token_range", "content_digest", "layers", "parts", "units")
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


@dataclass(frozen=True, eq=False)
class LayerStats:
    """The statistics of one layer.

    Unpacks like the former 3-tuple, ``freq, coact, n_tokens = stats.layer(l)``, so existing callers keep working.

    Attributes:
        freq: int64 [N] activation counts.
        coact: dense int64 [N, N] (diagonal = freq) for dense statistics; for candidate statistics a symmetric
            ``scipy.sparse.csr_array`` int64 with the stored pairs only (no diagonal; the solvers' convention).
        n_tokens: tokens counted.
        excluded_max: int64 [N]; the largest count of a pair of i that is not in ``coact`` (all zero when dense).
        kind: ``"dense"`` or ``"candidate"``.
    """

    freq: np.ndarray
    coact: Any
    n_tokens: int
    excluded_max: np.ndarray
    kind: str = "dense"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.freq, self.coact, self.n_tokens))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Any:
        return (self.freq, self.coact, self.n_tokens)[i]


@dataclass(frozen=True, eq=False)
class CandidateLayer:
    """One layer's candidate graph as stored: symmetric CSR (sorted int32 column ids, no diagonal, positive
    counts in the narrow count type) and ``excluded_max`` (the bound on every pair not stored)."""

    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    excluded_max: np.ndarray

    @property
    def n(self) -> int:
        return int(self.indptr.shape[0] - 1)

    def csr(self) -> sp.csr_array:
        """The stored pairs as an int64 ``csr_array`` (int64 indices, what :class:`solvers.graph.CoactGraph` wants)."""
        n = self.n
        return sp.csr_array((self.counts.astype(np.int64), self.indices.astype(np.int64),
                             self.indptr.astype(np.int64)), shape=(n, n))

    def digest(self) -> str:
        """sha256 of the canonical content (little-endian int64 everything): equal for equal counts, whatever the
        stored dtype."""
        h = hashlib.sha256(b"coact-stats-layer/3")
        for a in (self.indptr, self.indices, self.counts, self.excluded_max):
            h.update(np.array([a.shape[0]], dtype="<i8").tobytes())
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.hexdigest()

    def check(self, n_neurons: int) -> None:
        """Structural validity (a foreign or hand-edited shard must not reach the solvers)."""
        n = int(n_neurons)
        ip, ix = self.indptr, self.indices
        if ip.shape != (n + 1,) or ip[0] != 0 or np.any(np.diff(ip) < 0) or ip[-1] != ix.shape[0]:
            raise StatsError(f"candidate layer: malformed indptr for {n} neurons")
        if self.counts.shape != ix.shape or self.excluded_max.shape != (n,):
            raise StatsError("candidate layer: array lengths do not match")
        if ix.size and (ix.min() < 0 or ix.max() >= n):
            raise StatsError("candidate layer: neuron id out of range")


class _ShardedLayers(Sequence):  # type: ignore[type-arg]
    """Layers of a version-3 statistics folder, read (and checked against their sha256) on first access, then kept.

    Pickles as the folder path and digests only, so an executor worker loads just the layers it is given."""

    def __init__(self, root: Path, n_neurons: int, digests: list[str]) -> None:
        self.root, self.n_neurons, self.digests = Path(root), int(n_neurons), list(digests)
        self._cache: dict[int, CandidateLayer] = {}

    def __len__(self) -> int:
        return len(self.digests)

    def __getitem__(self, l: Any) -> Any:  # noqa: E741
        if isinstance(l, slice):
            return [self[i] for i in range(*l.indices(len(self)))]
        l = range(len(self))[l]  # noqa: E741  (negative indices, IndexError)
        if l not in self._cache:
            self._cache[l] = _read_layer(self.root, l, self.n_neurons, self.digests[l])
        return self._cache[l]

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "n_neurons": self.n_neurons, "digests": self.digests, "_cache": {}}


@dataclass(eq=False)  # arrays: identity equality (compare ``digest`` for content equality)
class CoactStats:
    """Exact activation and co-activation counts of one trace (or a sum of traces of the same model).

    Two kinds (see the module docstring): *dense* (``coact`` given: every pair) and *candidate* (``candidates``
    given: each neuron's top-``top_k`` partners and ``excluded_max``).

    Attributes:
        freq: int64 [L, N]; ``freq[l, i]`` = number of tokens for which neuron i of layer l is active.
        coact: dense only: list of L int64 [N, N] arrays; ``coact[l][i, j]`` = number of tokens for which neurons i
            and j of layer l are both active. Symmetric, and the diagonal equals ``freq[l]``. None for candidate
            statistics.
        n_tokens: number of tokens counted.
        meta: the trace metadata (model_id, sparsifier, thresholds, corpus, ...) plus the token range counted.
        candidates: candidate only: L :class:`CandidateLayer` (a lazy sequence when loaded from a folder).
        top_k: candidate only: partners kept per neuron.
        candidate_score: candidate only: how each neuron ranked its partners (:data:`CANDIDATE_SCORES`; the stored
            counts are exact raw counts and ``excluded_max`` the largest raw count left out, whatever the score).
    """

    freq: np.ndarray
    coact: Any = None
    n_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    candidates: Any = None
    top_k: int | None = None
    candidate_score: str | None = None

    def __post_init__(self) -> None:
        self.freq = np.asarray(self.freq)
        if self.freq.ndim != 2:
            raise StatsError(f"freq must be [L, N], got shape {self.freq.shape}")
        self.freq = self.freq.astype(np.int64, copy=False)
        L, N = self.freq.shape
        if (self.coact is None) == (self.candidates is None):
            raise StatsError("give either dense co-activation matrices (coact) or candidate graphs (candidates)")
        if self.coact is not None:
            if len(self.coact) != L:
                raise StatsError(f"{len(self.coact)} co-activation matrices for {L} layers")
            mats = []
            for l, c in enumerate(self.coact):
                c = np.asarray(c)
                if c.shape != (N, N):
                    raise StatsError(f"layer {l}: co-activation matrix has shape {c.shape}, expected ({N}, {N})")
                mats.append(c.astype(np.int64, copy=False))
            self.coact = mats
            self.top_k = None
            self.candidate_score = None
        else:
            if len(self.candidates) != L:
                raise StatsError(f"{len(self.candidates)} candidate graphs for {L} layers")
            if self.top_k is None or int(self.top_k) < 1:
                raise StatsError(f"candidate statistics need top_k >= 1, got {self.top_k}")
            self.top_k = int(self.top_k)
            self.candidate_score = resolve_candidates(self.candidate_score or "count")
            if not isinstance(self.candidates, _ShardedLayers):
                self.candidates = list(self.candidates)
                for c in self.candidates:
                    c.check(N)
        self.n_tokens = int(self.n_tokens)
        self.meta = dict(self.meta)

    @property
    def kind(self) -> str:
        """``"dense"`` or ``"candidate"``."""
        return "dense" if self.coact is not None else "candidate"

    @property
    def n_layers(self) -> int:
        return int(self.freq.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.freq.shape[1])

    @property
    def units(self) -> list[Unit]:
        """The placement unit of every row (:mod:`coact.trace` "Units"; one dense unit per layer by default)."""
        units = parse_units(self.meta.get("units"), error=StatsError)
        if units is None:
            return default_units([self.n_neurons] * self.n_layers)
        if len(units) != self.n_layers or any(not 0 < u.n <= self.n_neurons for u in units):
            raise StatsError(f"statistics metadata lists {len(units)} units that do not fit {self.n_layers} x "
                             f"{self.n_neurons}")
        return units

    @property
    def unit_widths(self) -> list[int]:
        """N_u of every unit (row): the statistics of unit u are its first N_u neurons (the rest is padding)."""
        return [u.n for u in self.units]

    def layer(self, l: int) -> LayerStats:
        """The statistics of layer (unit) ``l`` (:class:`LayerStats`; unpacks as ``(freq, coact, n_tokens)``; dense
        arrays are views, not copies), cut to the unit's width N_u (padding neurons of narrower units dropped)."""
        if not -self.n_layers <= l < self.n_layers:
            raise IndexError(f"layer {l} out of range for {self.n_layers} layers")
        n = self.unit_widths[l] if "units" in self.meta else self.n_neurons
        if self.coact is not None:
            if n == self.n_neurons:  # the common case: the stored arrays themselves
                return LayerStats(self.freq[l], self.coact[l], self.n_tokens, np.zeros(n, np.int64), "dense")
            return LayerStats(self.freq[l][:n], self.coact[l][:n, :n], self.n_tokens, np.zeros(n, np.int64), "dense")
        c = self.candidates[l]
        csr = c.csr()
        if n < self.n_neurons:
            csr = sp.csr_array(csr[:n, :n])
        return LayerStats(self.freq[l][:n], csr, self.n_tokens, c.excluded_max[:n].astype(np.int64), "candidate")

    def verify_layers(self) -> None:
        """Read every layer once and check it (its sha256 for sharded folders; what :meth:`load` defers), keeping
        none of them in memory beyond what was already loaded. Raises :class:`StatsError`."""
        if isinstance(self.candidates, _ShardedLayers):
            sh = self.candidates
            for l in range(len(sh)):
                if l not in sh._cache:
                    _read_layer(sh.root, l, sh.n_neurons, sh.digests[l])

    def excluded_max(self, l: int) -> np.ndarray:
        """int64 [N]: for each neuron of layer ``l`` the largest count of a pair not stored (0 for dense)."""
        return self.layer(l).excluded_max

    @property
    def provenance(self) -> dict[str, Any]:
        """The metadata entries of :data:`PROVENANCE_KEYS` that are present (JSON-normalised)."""
        prov = {k: self.meta[k] for k in PROVENANCE_KEYS if k in self.meta}
        return json.loads(json.dumps(prov, sort_keys=True, default=_json_default))

    @property
    def digest(self) -> str:
        """sha256 (hex) over the shape, n_tokens, all counts and the provenance.

        Why: layouts record the digest of the stats they were solved on (docs/DESIGN.md §3), and :meth:`load` detects
        corruption with it. It depends on the counts and on where they come from (:attr:`provenance`: model,
        sparsifier, thresholds, corpus, token range), not on the on-disk dtype or other metadata (creation time).
        Dense: every count as little-endian int64 (the version-2 digest). Candidate: ``top_k``, the candidate
        score (only when not ``count``, so folders written before scores existed keep their digest), freq and each
        layer's sha256 (:meth:`CandidateLayer.digest`), so it is checked without reading the layers.
        """
        if self.coact is None:
            digests = (self.candidates.digests if isinstance(self.candidates, _ShardedLayers)
                       else [c.digest() for c in self.candidates])
            return self._candidate_digest(digests)
        h = self._counts_hash(f"{FORMAT_NAME}/{FORMAT_VERSION}")
        h.update(json.dumps(self.provenance, sort_keys=True).encode())
        return h.hexdigest()

    def _candidate_digest(self, layer_digests: Sequence[str]) -> str:
        h = hashlib.sha256(f"{FORMAT_NAME}/{CANDIDATE_VERSION}/candidate".encode())
        h.update(np.array([self.n_layers, self.n_neurons, self.n_tokens, int(self.top_k or 0)], dtype="<i8").tobytes())
        if self.candidate_score not in (None, "count"):
            h.update(f"score={self.candidate_score}".encode())
        h.update(np.ascontiguousarray(self.freq, dtype="<i8"))
        for d in layer_digests:
            h.update(d.encode())
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
        """Sum of two statistics of the same model (:func:`merge` of the two)."""
        if not isinstance(other, CoactStats):
            raise StatsError(f"cannot merge CoactStats with {type(other).__name__}")
        return merge([self, other])

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
        (:class:`common.errors.OutputExistsError`). Dense: version 2 (one file); candidate: version 3 (sharded).
        """
        target = Path(path)
        if self.n_tokens < 1:
            raise StatsError("statistics over zero tokens carry no information; count a non-empty token range")
        check_stats_output(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.coact is None:
            return self._save_candidate(target)
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

    def _save_candidate(self, target: Path) -> Path:
        store = bitcount.count_dtype(self.n_tokens)
        digests: list[str] = []
        with atomic_dir(target) as tmp:
            (tmp / LAYERS_DIR).mkdir()
            for l in range(self.n_layers):
                c = self.candidates[l]
                d = c.digest()
                digests.append(d)
                save_file({"indptr": np.ascontiguousarray(c.indptr, dtype=np.int64),
                           "indices": np.ascontiguousarray(c.indices, dtype=np.int32),
                           "counts": np.ascontiguousarray(c.counts, dtype=store),
                           "excluded_max": np.ascontiguousarray(c.excluded_max, dtype=store)},
                          str(tmp / LAYERS_DIR / _layer_file(l)), metadata={"format": FORMAT_NAME, "digest": d})
            digest = self._candidate_digest(digests)
            save_file({"freq": np.ascontiguousarray(self.freq, dtype=store)}, str(tmp / FREQ_FILE),
                      metadata={"format": FORMAT_NAME, "digest": digest})
            header = {"format": FORMAT_NAME, "version": CANDIDATE_VERSION, "kind": "candidate",
                      "top_k": self.top_k, "candidates": self.candidate_score,
                      "n_layers": self.n_layers, "n_neurons": self.n_neurons,
                      "n_tokens": self.n_tokens, "digest": digest, "dtype": np.dtype(store).name,
                      "layer_digests": digests, "meta": self.meta}
            with open(tmp / META_FILE, "w") as f:
                json.dump(header, f, indent=2, default=_json_default)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CoactStats":
        """Read statistics written by :meth:`save`; raise :class:`StatsError` if missing, malformed or corrupt.

        If a concurrent :meth:`save` swaps the folder while it is being read (the files then come from two
        versions and the digest fails), the read is repeated, so a reader always gets one complete version.
        Candidate statistics (version 3) are checked against their digest here and their layers are read lazily,
        each checked against its own sha256 when first used.
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
    def load_layer(cls, path: str | os.PathLike[str], layer: int) -> LayerStats:
        """One layer of a statistics folder, reading only that layer (version 3; a version 1/2 file is one
        tensor file, so it is loaded whole). Equal to ``CoactStats.load(path).layer(layer)``."""
        return cls.load(path).layer(layer)

    @classmethod
    def _load_once(cls, root: Path) -> "CoactStats":
        if not root.is_dir():
            raise StatsError(f"no statistics directory at {root}")
        if not (root / META_FILE).is_file():
            raise StatsError(f"{root}: missing {META_FILE}")
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
        if header["version"] == CANDIDATE_VERSION:
            return cls._load_candidate(root, header, L, N, T, digest, meta)
        if not (root / TENSORS_FILE).is_file():
            raise StatsError(f"{root}: missing {TENSORS_FILE}")
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

    @classmethod
    def _load_candidate(cls, root: Path, header: dict[str, Any], L: int, N: int, T: int, digest: str,
                        meta: dict[str, Any]) -> "CoactStats":
        digests, k = header.get("layer_digests"), header.get("top_k")
        score = header.get("candidates", "count")  # absent: written before candidate scores existed
        if (not isinstance(digests, list) or len(digests) != L or not all(isinstance(d, str) for d in digests)
                or not isinstance(k, int) or k < 1 or not _valid_score(score)):
            raise StatsError(f"{root / META_FILE}: malformed header (layer digests, top_k or candidates)")
        fpath = root / FREQ_FILE
        st_meta, infos = safetensors_header(fpath, lambda m: StatsError(f"{fpath}: {m}"))
        if set(infos) != {"freq"} or infos["freq"].shape != (L, N):
            raise StatsError(f"{fpath}: tensors do not match the header ({L} layers x {N} neurons)")
        if st_meta.get("digest") != digest:
            raise StatsError(f"{root}: the digests of {META_FILE} and {FREQ_FILE} differ (file corrupt or modified)")
        freq = _load_tensors(fpath)["freq"]
        stats = cls(freq=freq, n_tokens=T, meta=meta, candidates=_ShardedLayers(root, N, digests), top_k=k,
                    candidate_score=score)
        if stats.digest != digest:
            raise StatsError(f"{root}: content digest mismatch (file corrupt or modified)")
        return stats


def _layer_file(layer: int) -> str:
    return f"{int(layer):05d}.safetensors"


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on truncation/garbage
        raise StatsError(f"{path}: unreadable ({' '.join(str(e).split())})") from None


def _read_layer(root: Path, layer: int, n_neurons: int, digest: str) -> CandidateLayer:
    """One version-3 layer shard, checked (header before reading, then structure and sha256)."""
    path = root / LAYERS_DIR / _layer_file(layer)
    st_meta, infos = safetensors_header(path, lambda m: StatsError(f"{path}: {m}"))
    if set(infos) != {"indptr", "indices", "counts", "excluded_max"} or infos["indptr"].shape != (n_neurons + 1,):
        raise StatsError(f"{path}: not a candidate layer of {n_neurons} neurons")
    if st_meta.get("digest") != digest:
        raise StatsError(f"{path}: its digest differs from {META_FILE} (file corrupt or modified)")
    t = _load_tensors(path)
    c = CandidateLayer(t["indptr"], t["indices"], t["counts"], t["excluded_max"])
    c.check(n_neurons)
    if c.digest() != digest:
        raise StatsError(f"{path}: content digest mismatch (file corrupt or modified)")
    return c


def merge(stats_list: Sequence[CoactStats], weights: Sequence[int] | None = None) -> CoactStats:
    """The weighted sum of statistics of the same model: counts of disjoint token sets add (a corpus mixture).

    Args:
        stats_list: one or more :class:`CoactStats` of the same shape (and model id, where recorded).
        weights: optional non-negative integer weight per part (default all 1): part i counts as if its tokens were
            seen ``weights[i]`` times (e.g. to rebalance a mixture). Integers keep every count exact.

    Returns:
        Dense statistics with ``freq``, ``coact`` and ``n_tokens`` the weighted sums; metadata keys on which all
        parts agree are kept and ``meta["parts"]`` lists the metadata of every summand (with its weight if not 1).

    Why only dense parts: a candidate graph stores each neuron's top-k pairs of *its* tokens; a pair that is in
    the top-k of the sum may be missing from a part (only bounded there by ``excluded_max``), so its exact sum is
    unknown. Exact merging therefore needs dense parts (``count_stats(..., dense=True)``; the narrow-int dense
    layers of small models), or recounting the concatenated traces, which is as fast as counting the parts.
    Raises :class:`StatsError` for candidate parts, shapes or model ids that differ, or bad weights.
    """
    parts = list(stats_list)
    if not parts:
        raise StatsError("merge needs at least one statistics object")
    if not all(isinstance(s, CoactStats) for s in parts):
        raise StatsError("merge takes CoactStats objects")
    w = [1] * len(parts) if weights is None else [int(x) for x in weights]
    if len(w) != len(parts) or any(x < 0 for x in w) or (weights is not None and
                                                         any(int(x) != x for x in weights)):
        raise StatsError("merge weights must be one non-negative integer per part")
    first = parts[0]
    for s in parts[1:]:
        if (s.n_layers, s.n_neurons) != (first.n_layers, first.n_neurons):
            raise StatsError(f"cannot merge stats of shape {first.n_layers}x{first.n_neurons} and "
                             f"{s.n_layers}x{s.n_neurons}")
    ids = {s.meta.get("model_id") for s in parts} - {None}
    if len(ids) > 1:
        a, b = sorted(ids)[:2]
        raise StatsError(f"cannot merge stats of different models ({a!r} and {b!r})")
    if any(s.kind != "dense" for s in parts):
        raise StatsError("candidate (top-k) statistics cannot be merged exactly: a pair kept in the sum may be "
                         "missing from a part; count the parts with --dense, or count the traces together")
    meta = {k: v for k, v in first.meta.items() if k != "parts" and all(k in s.meta and s.meta[k] == v
                                                                        for s in parts[1:])}
    meta["parts"] = []
    for s, wi in zip(parts, w):
        for p in _parts(s.meta):
            meta["parts"].append(p if wi == 1 else {**p, "weight": wi})
    freq = sum(wi * s.freq for s, wi in zip(parts, w))
    coact = []
    for l in range(first.n_layers):
        acc = np.zeros((first.n_neurons, first.n_neurons), dtype=np.int64)
        for s, wi in zip(parts, w):
            acc += wi * s.coact[l]
        coact.append(acc)
    return CoactStats(freq=freq, coact=coact, n_tokens=sum(wi * s.n_tokens for s, wi in zip(parts, w)), meta=meta)


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



def _packed_array(arr: Any, n_neurons: int | None) -> tuple[np.ndarray, int, int, int]:
    """A bit-packed active-set array [T, L, nb] checked against ``n_neurons`` (default 8 * nb): (array, T, L, N)."""
    packed = np.asarray(arr)
    if packed.dtype != np.uint8 or packed.ndim != 3:
        raise StatsError(f"expected a trace or a uint8 array [T, L, nb], got {packed.dtype} {packed.shape}")
    T, L, nb = packed.shape
    N = int(n_neurons) if n_neurons is not None else 8 * nb
    if n_packed_bytes(N) != nb:
        raise StatsError(f"{N} neurons need {n_packed_bytes(N)} packed bytes, array has {nb}")
    return packed, int(T), int(L), N

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
        packed, T, L, N = _packed_array(trace_or_packed, n_neurons)
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


# -- counting at scale: one job per layer ----------------------------------------------------------------------------

#: Below this many pair-token updates (T x L x N^2) the default executor is ``serial``: ~1 s of counting, less
#: than starting a process pool.
SERIAL_BELOW = 10**12
#: Tokens per block when a layer job streams its trace (a multiple of 64: whole bitset words).
LAYER_BLOCK_TOKENS = 1 << 14


@dataclass(frozen=True)
class LayerJob:
    """One layer's counting work, picklable for any executor.

    ``source`` is a trace folder (the worker opens it and reads only this layer; on a cluster the path must be
    visible to the workers, e.g. a shared file system) or the layer's packed sets uint8 [T, ceil(N/8)] themselves.
    """

    source: Any
    layer: int
    start: int
    stop: int
    n_neurons: int
    top_k: int | None  # None: dense counts
    score: str = "count"  # candidate score (CANDIDATE_SCORES)


def count_layer(job: LayerJob) -> dict[str, Any]:
    """Exact counts of one layer (module level so executors can pickle it): ``freq`` and either ``coact`` (dense,
    narrow type) or the candidate graph (``indptr``, ``indices``, ``counts``, ``excluded_max``).

    Memory: the neuron-major bitsets (N x T / 8 bytes) and one N x N matrix in the narrowest type that holds
    ``stop - start`` (:func:`coact.bitcount.count_dtype`); the trace is streamed in blocks of
    :data:`LAYER_BLOCK_TOKENS` tokens.
    """
    N, T = int(job.n_neurons), int(job.stop - job.start)
    bits = np.zeros((bitcount.padded_rows(N), bitcount.n_words(T)), dtype=np.uint64)
    tr = Trace.load(job.source) if isinstance(job.source, (str, os.PathLike)) else None
    for s in range(0, T, LAYER_BLOCK_TOKENS):
        e = min(T, s + LAYER_BLOCK_TOKENS)
        if tr is not None:
            block = tr.layer_packed(job.layer, job.start + s, job.start + e)
        else:
            block = np.asarray(job.source)[job.start + s: job.start + e]
        bitcount.transpose_bits(block, N, bits, s)
    C = bitcount.pair_counts(bits, bitcount.count_dtype(T))
    del bits
    freq = np.diagonal(C)[:N].astype(np.int64)
    if job.top_k is None:
        return {"freq": freq, "coact": np.ascontiguousarray(C[:N, :N])}
    indptr, indices, counts, excl = bitcount.candidates(C, N, int(job.top_k), job.score, T)
    return {"freq": freq, "indptr": indptr, "indices": indices, "counts": counts, "excluded_max": excl}


def resolve_candidates(candidates: str | None) -> str:
    """The candidate score a user asked for (``None`` / ``"default"`` = :data:`DEFAULT_CANDIDATES`; one of
    :data:`CANDIDATE_SCORES` or several joined by ``+``, :func:`coact.bitcount.score_parts`); raises
    :class:`StatsError` for an unknown one."""
    score = DEFAULT_CANDIDATES if candidates in (None, "default") else str(candidates)
    try:
        bitcount.score_parts(score)
    except ValueError as e:
        raise StatsError(str(e)) from None
    return score


def _valid_score(score: Any) -> bool:
    try:
        return isinstance(score, str) and bool(bitcount.score_parts(score))
    except ValueError:
        return False


def dense_bytes(n_layers: int, n_neurons: int) -> int:
    """Memory of dense int64 statistics (what ``coact`` holds for dense stats: every layer, every pair)."""
    return int(n_layers) * int(n_neurons) ** 2 * 8


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_dense_fits(n_layers: int, n_neurons: int, available: int | None = None) -> None:
    """Refuse dense statistics that would not fit in memory (:data:`DENSE_MEMORY_SHARE` of what is available)."""
    need = dense_bytes(n_layers, n_neurons)
    avail = _available_memory() if available is None else int(available)
    if need > DENSE_MEMORY_SHARE * avail:
        raise StatsError(f"dense statistics of {n_layers} x {n_neurons} neurons need {need / 2**30:.1f} GiB "
                         f"(int64, all layers) but only {avail / 2**30:.1f} GiB is available; use the candidate "
                         f"graph (the default, --top-k K) instead of --dense")


def count_stats(
    trace_or_packed: Any,
    *,
    n_neurons: int | None = None,
    start: int = 0,
    stop: int | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    candidates: str = "default",
    dense: bool = False,
    executor: Any = None,
    progress: bool = True,
) -> CoactStats:
    """Statistics of tokens ``[start, stop)``, one job per layer through an executor (the scalable path).

    Args:
        trace_or_packed: a :class:`coact.trace.Trace`, a trace folder, or a raw packed uint8 array [T, L, nb].
        n_neurons: N for a raw array (default 8 * nb).
        start, stop: token range (relative to the trace), default all tokens.
        top_k: partners kept per neuron in the candidate graph (ignored with ``dense``).
        candidates: how each neuron ranks its partners (:data:`CANDIDATE_SCORES`; ``"default"`` =
            :data:`DEFAULT_CANDIDATES`); counts stay exact and ``excluded_max`` stays the largest raw count left out.
        dense: keep every pair (dense int64 :class:`CoactStats`, equal to :func:`compute_stats`); refused when
            all layers would not fit in memory (:func:`check_dense_fits`).
        executor: where layer jobs run (:func:`common.executors.get_executor` spec or object; None = ``serial``
            for a raw array or a small trace (below :data:`SERIAL_BELOW` pair-token updates), ``local`` (a
            process pool) for a large trace). Results are identical whichever runs them.
        progress: progress bar (per finished layer, with an ETA).

    Returns:
        :class:`CoactStats`, candidate (default) or dense, ``meta`` as :func:`compute_stats` makes it.
    """
    if isinstance(trace_or_packed, (str, os.PathLike)):
        trace_or_packed = Trace.load(trace_or_packed)
    if isinstance(trace_or_packed, Trace):
        tr = trace_or_packed
        T, L, N = tr.n_tokens, tr.n_layers, tr.n_neurons
        if n_neurons is not None and int(n_neurons) != N:
            raise StatsError(f"n_neurons={n_neurons} but the trace has {N}")
        base_meta = {k: v for k, v in tr.meta.items() if k not in ("files", "meta_digest")}
        source: Any = str(tr.path)
        # Starting worker processes costs seconds: worth it only for real work.
        default_ex = "local" if T * L * N * N >= SERIAL_BELOW else "serial"
    else:
        packed, T, L, N = _packed_array(trace_or_packed, n_neurons)
        base_meta = {"n_layers": L, "n_neurons": N}
        source = packed
        default_ex = "serial"
    stop = T if stop is None else int(stop)
    start = int(start)
    if not 0 <= start < stop <= T:
        raise StatsError(f"token range [{start}, {stop}) is outside [0, {T}] or holds no tokens")
    k = None if dense else int(top_k if top_k is not None else DEFAULT_TOP_K)
    if k is not None and k < 1:
        raise StatsError(f"--top-k must be >= 1, got {top_k}")
    score = resolve_candidates(candidates)
    if dense:
        check_dense_fits(L, N)
    meta = dict(base_meta)
    meta["token_range"] = [start, stop]

    def jobs() -> Iterator[LayerJob]:
        for l in range(L):
            src = source if isinstance(source, str) else np.ascontiguousarray(source[start:stop, l, :])
            s0, s1 = (start, stop) if isinstance(source, str) else (0, stop - start)
            yield LayerJob(src, l, s0, s1, N, k, score)

    ex = get_executor(executor if executor is not None else default_ex)
    try:
        results = ex.map(count_layer, jobs(), progress=bars(progress), description="co-activation counts", total=L)
    finally:
        if ex is not executor:
            ex.close()
    freq = np.stack([r["freq"] for r in results]) if results else np.zeros((0, N), np.int64)
    if dense:
        return CoactStats(freq=freq, coact=[r["coact"] for r in results], n_tokens=stop - start, meta=meta)
    cands = [CandidateLayer(r["indptr"], r["indices"], r["counts"], r["excluded_max"]) for r in results]
    return CoactStats(freq=freq, n_tokens=stop - start, meta=meta, candidates=cands, top_k=k,
                      candidate_score=score)
